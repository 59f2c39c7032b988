"""``transformers`` model folders from our checkpoints and back.

An exported folder holds ``config.json`` (``model_type`` of the architecture, every field of our
config), ``model.safetensors`` (our state dict under the prefix ``model.``),
``generation_config.json`` and the tokenizer files (:mod:`.tokenizer`); ``AutoModelForCausalLM``
and ``AutoTokenizer`` open it after ``import matmulfree.hf``.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from ..checkpoint import CheckpointError, load_model, save_model
from ..data import load_tokenizer
from .modeling import MatmulfreeForCausalLM, from_matmulfree
from .tokenizer import from_hf_folder, to_hf_tokenizer


def _replace_dir(tmp: Path, out: Path) -> None:
    """Move the finished folder ``tmp`` to ``out`` (an existing ``out`` is replaced only at the end)."""
    if out.exists():
        old = out.with_name(f".{out.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(out)


def export_hf(checkpoint: str | Path, out: str | Path) -> Path:
    """Write the ``transformers`` folder of ``checkpoint`` to ``out`` (built beside it, then moved in)."""
    checkpoint, out = Path(checkpoint), Path(out)
    if out.resolve() == checkpoint.resolve():
        raise CheckpointError(f"{out}: the output folder must differ from the checkpoint")
    model = load_model(checkpoint)
    if model.is_packed:
        raise CheckpointError(f"{checkpoint}: holds packed 2-bit weights only; 'export hf' needs the latent weights")
    tokenizer = load_tokenizer(checkpoint)
    if tokenizer.vocab_size > model.config.vocab_size:
        raise CheckpointError(f"{checkpoint}: tokenizer has {tokenizer.vocab_size} tokens, more than the model's "
                              f"vocab_size {model.config.vocab_size}")
    hf_model = from_matmulfree(model.eval())
    hf_tok = to_hf_tokenizer(tokenizer, model.config.max_seq_len)
    for key in ("eos_token_id", "pad_token_id"):
        value = getattr(hf_tok, key)
        setattr(hf_model.config, key, value)
        setattr(hf_model.generation_config, key, value)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        hf_model.save_pretrained(tmp, safe_serialization=True)
        hf_tok.save_pretrained(tmp)
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def load_hf(directory: str | Path) -> MatmulfreeForCausalLM:
    """``AutoModelForCausalLM.from_pretrained(directory)`` for our model types, with a clear error for others."""
    import json

    from transformers import AutoModelForCausalLM

    from . import register

    register()
    directory = Path(directory)
    cfg = directory / "config.json"
    if not cfg.is_file():
        raise CheckpointError(f"{cfg}: missing (not a transformers model folder)")
    try:
        data = json.loads(cfg.read_text())
    except ValueError as e:
        raise CheckpointError(f"{cfg}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{cfg}: expected a JSON object, got {type(data).__name__}")
    if "architecture" in data and "model_type" not in data:
        raise CheckpointError(f"{cfg}: this is already a matmulfree checkpoint (architecture "
                              f"{data['architecture']!r}); 'export hf' writes the transformers form")
    model_type = data.get("model_type")
    from .configuration import CONFIG_CLASSES_HF

    known = sorted(c.model_type for c in CONFIG_CLASSES_HF.values())
    if model_type not in known:
        raise CheckpointError(f"{cfg}: model_type {model_type!r} is not one of ours; expected one of {known}"
                              + (" (convert released hgrn_bit folders with 'matmulfree convert hgrn-bit')"
                                 if model_type == "hgrn_bit" else ""))
    try:
        model = AutoModelForCausalLM.from_pretrained(directory)
    except (OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{directory}: cannot load ({str(e).splitlines()[0]})") from None
    return model


def import_hf(directory: str | Path, out: str | Path) -> Path:
    """Write our checkpoint (config.json, model.safetensors, tokenizer) for a ``transformers`` folder."""
    hf_model = load_hf(directory)
    tokenizer = from_hf_folder(directory)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        save_model(hf_model.model, tmp)
        tokenizer.save(tmp)
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
