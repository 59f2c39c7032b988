"""Turn a training checkpoint of any strategy into one model directory for inference.

``matmulfree checkpoint consolidate RUN_DIR OUT`` calls :func:`consolidate`: the FSDP shards of
every rank (``sharded/``, torch.distributed.checkpoint) are read in one process without a process
group, DeepSpeed ZeRO partitions (``pytorch_model/``) are merged by DeepSpeed's own
``zero_to_fp32``, and a DDP / single-process checkpoint's ``model.safetensors`` is read as is. The
result is our usual ``config.json`` + ``model.safetensors`` (+ tokenizer), fp32 latent weights.
"""

from __future__ import annotations

import json
from pathlib import Path

from .checkpoint import WEIGHTS_FILE, CheckpointError, save_model
from .config import config_from_dict
from .data import load_tokenizer
from .distributed import SHARDED_DIR, consolidate_sharded
from .models import LanguageModel, build_model
from .train import STATE_FILE, latest_checkpoint

#: Folder in which accelerate stores a DeepSpeed engine checkpoint.
DEEPSPEED_DIR = "pytorch_model"


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder (holds ``trainer_state.json``) or a run folder (its latest checkpoint)."""
    path = Path(path)
    if (path / STATE_FILE).is_file():
        return path
    found = latest_checkpoint(path) if path.is_dir() else None
    if found is None:
        raise CheckpointError(f"{path}: neither a checkpoint folder (no {STATE_FILE}) nor a run folder "
                              f"with checkpoints/step-*/")
    return found


def load_checkpoint_model(checkpoint: Path) -> LanguageModel:
    """The unsharded fp32 model held by a training checkpoint folder."""
    state = json.loads((checkpoint / STATE_FILE).read_text())
    model = build_model(config_from_dict(state["model_config"], str(checkpoint / STATE_FILE)))
    if (checkpoint / SHARDED_DIR).is_dir():
        return consolidate_sharded(model, checkpoint)
    if (checkpoint / DEEPSPEED_DIR).is_dir():
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        weights = get_fp32_state_dict_from_zero_checkpoint(str(checkpoint), tag=DEEPSPEED_DIR)
        model.load_state_dict({k.removeprefix("module."): v for k, v in weights.items()}, strict=True)
        return model
    if (checkpoint / WEIGHTS_FILE).is_file():
        from .checkpoint import _read_weights

        weights, _ = _read_weights(checkpoint / WEIGHTS_FILE)
        model.load_state_dict(weights, strict=True)
        return model
    raise CheckpointError(f"{checkpoint}: no {SHARDED_DIR}/, {DEEPSPEED_DIR}/ or {WEIGHTS_FILE} to consolidate")


def consolidate(run_or_checkpoint: str | Path, out: str | Path) -> Path:
    """Write ``out/config.json`` + ``out/model.safetensors`` (+ the run's tokenizer); returns ``out``."""
    checkpoint = resolve_checkpoint(run_or_checkpoint)
    model = load_checkpoint_model(checkpoint)
    out = save_model(model, out)
    run = checkpoint.parent.parent
    if (run / "tokenizer_config.json").is_file():
        load_tokenizer(run).save(out)
    return out
