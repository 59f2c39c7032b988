"""How the trainer spreads one model over several processes: DDP, FSDP2 or DeepSpeed ZeRO-2.

The recipe's ``distributed.strategy`` picks one (``matmulfree.recipe.STRATEGIES``); the launcher (``accelerate
launch``, ``torchrun``, SLURM) only starts the processes. Every strategy uses an existing engine:

* ``ddp`` — accelerate's ``prepare`` (DistributedDataParallel; one process: no wrapper).
* ``fsdp`` — PyTorch's FSDP2 ``fully_shard`` on every block and then the root, applied here rather
  than through accelerate's FSDP plugin because accelerate 1.16 enables that plugin only on GPU
  device types (on CPU it silently falls back to DDP), and the CPU tests must run the same code as a
  GPU run. Latent fp32 weights and optimizer state are sharded; before a block's forward FSDP
  gathers the whole weight matrix, so the ternary absmean scale is computed over the full matrix.
  ``train.mixed_precision: bf16`` becomes FSDP's mixed-precision policy (bf16 compute, fp32 master
  weights, fp32 gradient reduction) instead of autocast.
  Checkpoints are ``torch.distributed.checkpoint`` folders (``sharded/``): each rank writes its own
  shard of model and optimizer state; resume needs the same number of processes, and
  ``matmulfree checkpoint consolidate`` joins the shards into one ``model.safetensors``.
* ``deepspeed`` — accelerate's DeepSpeed plugin with the ZeRO config of :func:`deepspeed_config`
  (stage, bucket sizes, gradient accumulation, clipping and precision carried over from the recipe).
  The engine reduces, clips and steps the optimizer once per optimizer step (at the last
  micro-batch); the trainer keeps the LR schedule. Checkpoints are DeepSpeed's ``pytorch_model/``
  folder (one ZeRO optimizer partition per rank); the final model holds the gathered fp32 masters.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

#: Folder inside a checkpoint holding the FSDP shards (torch.distributed.checkpoint format).
SHARDED_DIR = "sharded"


class StrategyError(RuntimeError):
    """A distributed setting that cannot work (named with the recipe key and the reason)."""


def blocks(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks of a language model (FSDP wraps each one as a unit): ``model.layers``."""
    layers = getattr(model, "layers", None)
    if not isinstance(layers, nn.ModuleList) or len(layers) == 0:
        raise StrategyError(f"{type(model).__name__} has no 'layers' ModuleList to shard block by block")
    return list(layers)


# -- FSDP2 ------------------------------------------------------------------------------------
def fsdp_mixed_precision(mixed_precision: str):
    """FSDP2 ``MixedPrecisionPolicy``: compute in bf16/fp16 (or fp32 for ``no``); master weights
    stay fp32 (the sharded parameters keep their dtype) and gradients are reduced in fp32."""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    param_dtype = {"no": None, "bf16": torch.bfloat16, "fp16": torch.float16}[mixed_precision]
    return MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)


def fully_shard_model(model: nn.Module, device: torch.device, mixed_precision: str = "no",
                      reshard_after_forward: bool = True) -> nn.Module:
    """Shard ``model`` in place: one FSDP2 unit per block, the rest (embedding, head, norms) in the root unit."""
    from torch.distributed.fsdp import fully_shard

    if not torch.distributed.is_initialized():
        raise StrategyError("distributed.strategy=fsdp needs a process group (start with torchrun or accelerate)")
    model.to(device)
    policy = fsdp_mixed_precision(mixed_precision)
    for block in blocks(model):
        fully_shard(block, mp_policy=policy, reshard_after_forward=reshard_after_forward)
    fully_shard(model, mp_policy=policy, reshard_after_forward=reshard_after_forward)
    return model


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole (unsharded) fp32 state dict on CPU on rank 0, ``{}`` elsewhere. Collective: every rank calls it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(model, options=options)


def save_sharded(model: nn.Module, optimizer: torch.optim.Optimizer, directory: Path) -> Path:
    """Write model + optimizer shards of every rank to ``directory/sharded`` (collective)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_sd, optim_sd = get_state_dict(model, optimizer)
    path = Path(directory) / SHARDED_DIR
    dcp.save({"model": model_sd, "optimizer": optim_sd}, checkpoint_id=str(path))
    return path


def load_sharded(model: nn.Module, optimizer: torch.optim.Optimizer, directory: Path) -> None:
    """Restore the shards written by :func:`save_sharded` (same number of processes)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    path = Path(directory) / SHARDED_DIR
    if not (path / ".metadata").is_file():
        raise StrategyError(f"{path}: no sharded (FSDP) checkpoint here; was the run trained with strategy fsdp?")
    model_sd, optim_sd = get_state_dict(model, optimizer)
    state = {"model": model_sd, "optimizer": optim_sd}
    dcp.load(state, checkpoint_id=str(path))
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])


def consolidate_sharded(model: nn.Module, directory: Path) -> nn.Module:
    """Load the model part of an FSDP checkpoint folder into the unsharded ``model`` (one process, no
    process group needed)."""
    import torch.distributed.checkpoint as dcp

    path = Path(directory) / SHARDED_DIR
    if not (path / ".metadata").is_file():
        raise StrategyError(f"{path}: missing (not a sharded checkpoint)")
    state = {"model": model.state_dict()}
    dcp.load(state, checkpoint_id=str(path))
    model.load_state_dict(state["model"], strict=True)
    return model


# -- DeepSpeed --------------------------------------------------------------------------------
def deepspeed_config(recipe) -> dict[str, Any]:
    """The DeepSpeed config of a recipe: ZeRO stage and bucket sizes from ``distributed``, micro-batch,
    gradient accumulation, clipping and precision from ``train`` (the trainer hands DeepSpeed its own
    AdamW, so betas, eps and weight decay stay the recipe's)."""
    t, d = recipe.train, recipe.distributed
    bucket = int(d.bucket_mb * 1_000_000)
    return {
        "train_micro_batch_size_per_gpu": t.batch_size,
        "gradient_accumulation_steps": t.grad_accum,
        "gradient_clipping": float(t.grad_clip) if t.grad_clip else 0.0,
        "bf16": {"enabled": t.mixed_precision == "bf16"},
        "fp16": {"enabled": t.mixed_precision == "fp16"},
        "zero_optimization": {
            "stage": d.zero_stage,
            "allgather_partitions": True,
            "allgather_bucket_size": bucket,
            "reduce_scatter": True,
            "reduce_bucket_size": bucket,
            "overlap_comm": True,
            "contiguous_gradients": True,
        },
        "zero_allow_untested_optimizer": True,
        "steps_per_print": max(1, recipe.log.every),
        "wall_clock_breakdown": False,
    }


def single_process_group_env() -> None:
    """Describe a world of one process in the environment, as ``torchrun --nproc_per_node 1`` would.

    Started without a launcher, accelerate selects DeepSpeed but forms no process group, and its
    first barrier fails; with these variables it takes the same path as a launched run."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for key, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1",
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}.items():
        os.environ.setdefault(key, value)


def rebuilt_model(config, state: dict[str, torch.Tensor], device) -> nn.Module:
    """A plain (unwrapped) model of ``config`` holding the full ``state``, on ``device``."""
    from .models import build_model

    full = build_model(config)
    full.load_state_dict(state, strict=True)
    return full.to(device)


# -- the strategy the trainer talks to ----------------------------------------------------------
class Strategy:
    """What the trainer asks of a strategy; ``Strategy.for_recipe(recipe)`` picks the class."""

    name = "ddp"
    sharded_checkpoints = False

    def __init__(self, recipe) -> None:
        self.recipe = recipe

    @staticmethod
    def for_recipe(recipe) -> Strategy:
        cls = {"ddp": Strategy, "fsdp": FSDPStrategy, "deepspeed": DeepSpeedStrategy}[recipe.distributed.strategy]
        return cls(recipe)

    def accelerator_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``accelerate.Accelerator``."""
        return {"mixed_precision": self.recipe.train.mixed_precision, "cpu": not torch.cuda.is_available()}

    def check(self, acc) -> None:
        """Refuse a launcher that contradicts the recipe (an accelerate FSDP/DeepSpeed config with strategy ddp)."""
        kind = str(acc.distributed_type)
        if "FSDP" in kind or "DEEPSPEED" in kind:
            raise StrategyError(
                f"{self.recipe.source}: launched with an accelerate {kind} config but distributed.strategy="
                f"{self.name!r}; set distributed.strategy in the recipe and launch with a plain multi-GPU config")

    def prepare(self, acc, model: nn.Module,
                make_optimizer: Callable[[nn.Module], torch.optim.Optimizer]) -> tuple[nn.Module, Any]:
        """Wrap the model and build its optimizer."""
        self.check(acc)
        return acc.prepare(model, make_optimizer(model))

    def loss_scale(self, acc) -> float:
        """Factor on the loss normalised by the global batch's targets (undoes the engine's averaging)."""
        return float(acc.num_processes)

    def no_sync(self, acc, model: nn.Module, last_micro_batch: bool) -> contextlib.AbstractContextManager:
        """Skip the gradient reduction on every micro-batch but the last."""
        return contextlib.nullcontext() if last_micro_batch else acc.no_sync(model)

    def clip(self, acc, model: nn.Module, max_norm: float | None) -> float:
        """Clip the global gradient norm; returns the norm before clipping (nan if not clipped)."""
        if not max_norm:
            return float("nan")
        return float(acc.clip_grad_norm_(model.parameters(), max_norm))

    def save(self, acc, model: nn.Module, optimizer, directory: Path) -> None:
        """Write model, optimizer, registered objects and RNG states (every rank calls it)."""
        acc.save_state(str(directory), safe_serialization=True)

    def load(self, acc, model: nn.Module, optimizer, directory: Path) -> None:
        acc.load_state(str(directory))

    def full_model(self, acc, model: nn.Module) -> nn.Module | None:
        """The whole model for sampling and the final save: on the main process, ``None`` on others
        (every rank calls it)."""
        return acc.unwrap_model(model) if acc.is_main_process else None


class FSDPStrategy(Strategy):
    name = "fsdp"
    sharded_checkpoints = True

    def accelerator_kwargs(self) -> dict[str, Any]:
        # Precision is FSDP's mixed-precision policy; accelerate must not autocast on top of it.
        return {"mixed_precision": "no", "cpu": not torch.cuda.is_available()}

    def prepare(self, acc, model, make_optimizer):
        self.check(acc)
        fully_shard_model(model, acc.device, self.recipe.train.mixed_precision,
                          self.recipe.distributed.reshard_after_forward)
        return model, make_optimizer(model)  # built on the sharded parameters

    @contextlib.contextmanager
    def _no_sync(self, model) -> Iterator[None]:
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)

    def no_sync(self, acc, model, last_micro_batch):
        return contextlib.nullcontext() if last_micro_batch else self._no_sync(model)

    def save(self, acc, model, optimizer, directory):
        save_sharded(model, optimizer, directory)
        acc.save_state(str(directory), safe_serialization=True)  # RNG states and the scheduler

    def load(self, acc, model, optimizer, directory):
        load_sharded(model, optimizer, directory)
        acc.load_state(str(directory))

    def full_model(self, acc, model):
        state = full_state_dict(model)
        return rebuilt_model(model.config, state, acc.device) if acc.is_main_process else None


class DeepSpeedStrategy(Strategy):
    name = "deepspeed"

    def accelerator_kwargs(self) -> dict[str, Any]:
        try:
            from accelerate.utils import DeepSpeedPlugin
        except ImportError as e:  # pragma: no cover - accelerate always has it
            raise StrategyError(f"distributed.strategy=deepspeed: {e}") from None
        try:
            import deepspeed  # noqa: F401
        except ImportError:
            raise StrategyError('distributed.strategy=deepspeed needs DeepSpeed: pip install "matmulfree[deepspeed]"') \
                from None
        if int(os.environ.get("LOCAL_RANK", -1)) == -1:
            single_process_group_env()
        plugin = DeepSpeedPlugin(hf_ds_config=deepspeed_config(self.recipe))
        kwargs: dict[str, Any] = {"mixed_precision": self.recipe.train.mixed_precision, "deepspeed_plugin": plugin}
        if not torch.cuda.is_available() and int(os.environ.get("LOCAL_RANK", -1)) != -1:
            # Several CPU processes: accelerate 1.16 knows no default process-group backend for the CPU
            # device type, and ``cpu=True`` would switch DeepSpeed off. Without a backend it reports one
            # process of index 0 on every rank: every rank reads the same batch, believes it is the main
            # process (racing in checkpoint folders) and sums the loss over a world it thinks has one rank.
            from accelerate.utils import InitProcessGroupKwargs

            kwargs["kwargs_handlers"] = [InitProcessGroupKwargs(backend="gloo")]
        return kwargs

    def check(self, acc) -> None:
        if "DEEPSPEED" not in str(acc.distributed_type):
            raise StrategyError(f"distributed.strategy=deepspeed but accelerate runs {acc.distributed_type}")

    def loss_scale(self, acc) -> float:
        # DeepSpeed divides the loss by gradient_accumulation_steps and averages over ranks.
        return float(acc.num_processes * self.recipe.train.grad_accum)

    @contextlib.contextmanager
    def _boundary(self, acc, last_micro_batch: bool) -> Iterator[None]:
        acc.sync_gradients = last_micro_batch
        try:
            yield
        finally:
            acc.sync_gradients = True

    def no_sync(self, acc, model, last_micro_batch):
        # accelerate's ``backward`` marks every micro-batch whose ``sync_gradients`` is set as the
        # engine's accumulation boundary and then calls ``engine.step()`` (reduction, clipping,
        # optimizer step, zero_grad): only the last micro-batch of a step may be one.
        return self._boundary(acc, last_micro_batch)

    def full_model(self, acc, model):
        """The fp32 master weights, gathered from every rank's ZeRO partition (collective); with bf16
        the module itself holds only bf16 copies, so this is what ``final/`` and consolidation agree on."""
        from deepspeed.utils import safe_get_full_fp32_param

        module = acc.unwrap_model(model)
        state = {}
        for name, p in module.named_parameters():
            master = safe_get_full_fp32_param(p)  # every rank takes part in the same order
            state[name] = (master if master is not None else p.detach()).float().cpu()
        if not acc.is_main_process:
            return None
        for name, buf in module.state_dict().items():
            state.setdefault(name, buf.detach().cpu())
        return rebuilt_model(module.config, state, acc.device)
