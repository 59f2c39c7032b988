"""Warm start: initialise a new run's model from an earlier checkpoint, also into a changed architecture.

``matmulfree train RECIPE --init-from CKPT`` builds the recipe's model as usual, then copies every
tensor of ``CKPT`` whose name and shape match. Each tensor of either side ends up in one class:

* **loaded**: same name and shape, copied;
* **new**: only in the new model; it keeps its fresh initialisation, except where the model can
  make it start as a no-op (:meth:`~matmulfree.models.base.LanguageModel.preserve_function`:
  an added residual block gets zero output projections, so the block adds nothing at step 0);
* **dropped**: only in the source, ignored;
* **resized**: same name, different shape: an error unless ``allow_resize`` says what to do,
  ``"overlap"`` (copy the overlapping corner ``source[:n0, :n1, ...]`` into the new tensor, the
  rest keeps its fresh initialisation: a larger vocabulary keeps the learnt rows) or ``"fresh"``
  (keep the fresh initialisation, ignore the source tensor).

The optimizer and the schedule start fresh (unlike ``--resume``, which continues a run exactly).
``WarmStart.preserved`` says whether the new model computes the source's function at step 0;
the trainer checks it by evaluating both models on the validation batches before the first step.

``CKPT`` is a model directory (``config.json`` + ``model.safetensors``, e.g. ``runs/X/final``), a
training checkpoint (``runs/X/checkpoints/step-N``) or a run folder (its ``final/`` is used).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .checkpoint import WEIGHTS_FILE, CheckpointError, _read_weights, load_config
from .config import _BaseConfig, config_from_dict
from .models import build_model
from .models.base import LanguageModel

#: Values of ``--init-from-allow-resize``.
RESIZE_MODES = ("overlap", "fresh")
#: The training checkpoint's state file (written by the trainer).
TRAINER_STATE = "trainer_state.json"


class WarmStartError(ValueError):
    """The source cannot initialise the new model (unreadable, packed, or shapes differ without a resize mode)."""


@dataclass
class TensorRow:
    """One tensor of the warm-start table."""

    name: str
    status: str  # loaded | new | dropped | resized
    source_shape: tuple[int, ...] | None
    new_shape: tuple[int, ...] | None
    note: str = ""


@dataclass
class WarmStart:
    """What :func:`warm_start` did: the table, the source and whether the step-0 function is preserved."""

    source: str
    source_config: dict[str, Any]
    rows: list[TensorRow] = field(default_factory=list)
    config_changes: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    preserved: bool = True
    reasons: list[str] = field(default_factory=list)  # why the function is not preserved

    def count(self, status: str) -> int:
        return sum(r.status == status for r in self.rows)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready record for the run's metadata."""
        return {
            "source": self.source, "source_config": self.source_config,
            "counts": {s: self.count(s) for s in ("loaded", "new", "dropped", "resized")},
            "config_changes": {k: list(v) for k, v in self.config_changes.items()},
            "function_preserved": self.preserved, "reasons": self.reasons,
            "tensors": [{"name": r.name, "status": r.status, "source_shape": r.source_shape,
                         "new_shape": r.new_shape, "note": r.note} for r in self.rows],
        }

    def table(self) -> str:
        """The printed table; tensors that differ only by layer index share a row (``layers.*``)."""
        groups: dict[tuple, list[str]] = {}
        for r in self.rows:
            pattern = re.sub(r"\.(\d+)\.", ".*.", r.name)
            index = re.search(r"\.(\d+)\.", r.name)
            key = (r.status, pattern, r.source_shape, r.new_shape, r.note)
            groups.setdefault(key, []).append(index.group(1) if index else "")
        order = {"loaded": 0, "new": 1, "resized": 2, "dropped": 3}
        lines = [f"warm start from {self.source}",
                 f"{'status':<8} {'tensor':<34} {'source shape':<14} {'new shape':<14} note"]
        ordered = sorted(groups.items(), key=lambda kv: (order[kv[0][0]], kv[0][1]))
        for (status, pattern, src, new, note), idx in ordered:
            where = f" (layers {_ranges(idx)})" if "*" in pattern else ""
            lines.append(f"{status:<8} {pattern:<34} {_shape(src):<14} {_shape(new):<14} {note}{where}".rstrip())
        counts = ", ".join(f"{self.count(s)} {s}" for s in ("loaded", "new", "resized", "dropped"))
        lines.append(f"tensors: {counts}")
        for k, (a, b) in self.config_changes.items():
            lines.append(f"config change: {k} {a!r} -> {b!r}")
        if self.preserved:
            lines.append("step 0: the new model computes the source model's function")
        else:
            lines.append("step 0: the function differs from the source's: " + "; ".join(self.reasons))
        return "\n".join(lines)


def _shape(shape: tuple[int, ...] | None) -> str:
    return "-" if shape is None else "x".join(map(str, shape)) or "scalar"


def _ranges(indices: list[str]) -> str:
    nums = sorted(int(i) for i in indices if i)
    if not nums:
        return ""
    out, start, prev = [], nums[0], nums[0]
    for n in nums[1:] + [None]:
        if n is not None and n == prev + 1:
            prev = n
            continue
        out.append(str(start) if start == prev else f"{start}-{prev}")
        if n is not None:
            start = prev = n
    return ",".join(out)


def read_source(path: str | Path) -> tuple[_BaseConfig, dict[str, torch.Tensor], Path]:
    """Config, latent state dict and weight file of a model directory, training checkpoint or run folder."""
    path = Path(path)
    if not path.exists():
        raise WarmStartError(f"--init-from {path}: no such file or directory")
    if path.is_dir() and not (path / "config.json").is_file() and not (path / TRAINER_STATE).is_file() \
            and (path / "final" / "config.json").is_file():
        path = path / "final"
    try:
        if (path / "config.json").is_file():
            config = load_config(path)
        elif (path / TRAINER_STATE).is_file():
            state = json.loads((path / TRAINER_STATE).read_text())
            config = config_from_dict(state["model_config"], f"{path / TRAINER_STATE}: model_config")
        else:
            raise WarmStartError(f"--init-from {path}: not a model directory (config.json), a training "
                                 f"checkpoint ({TRAINER_STATE}) or a run folder with final/")
        weights, meta = _read_weights(path / WEIGHTS_FILE)
    except CheckpointError as e:
        raise WarmStartError(f"--init-from: {e}") from None
    if meta.get("packed") == "1" or any(k.endswith("weight_packed") for k in weights):
        raise WarmStartError(f"--init-from {path / WEIGHTS_FILE}: holds packed 2-bit inference weights; "
                             "a warm start needs the latent weights (model.safetensors of a training run)")
    return config, weights, path / WEIGHTS_FILE


def warm_start(model: LanguageModel, source: str | Path, allow_resize: str | None = None) -> WarmStart:
    """Copy the matching tensors of ``source`` into ``model`` (in place) and return the table.

    Raises :class:`WarmStartError` on shape mismatches when ``allow_resize`` is None, naming every
    mismatched tensor and both shapes.
    """
    if allow_resize is not None and allow_resize not in RESIZE_MODES:
        raise WarmStartError(f"--init-from-allow-resize {allow_resize!r}: expected one of {RESIZE_MODES}")
    src_config, src_state, src_file = read_source(source)
    report = WarmStart(str(src_file.parent), src_config.to_dict())
    new_config = model.config.to_dict()
    for k in sorted(set(new_config) | set(report.source_config)):
        a, b = report.source_config.get(k), new_config.get(k)
        if a != b:
            report.config_changes[k] = (a, b)
    target = model.state_dict()
    mismatched = [n for n in target if n in src_state and tuple(src_state[n].shape) != tuple(target[n].shape)]
    if mismatched and allow_resize is None:
        detail = ", ".join(f"{n} {tuple(src_state[n].shape)} -> {tuple(target[n].shape)}" for n in mismatched[:6])
        more = f" and {len(mismatched) - 6} more" if len(mismatched) > 6 else ""
        raise WarmStartError(f"--init-from {src_file}: {len(mismatched)} tensor(s) change shape: {detail}{more}; "
                             f"pass --init-from-allow-resize {{{','.join(RESIZE_MODES)}}} to accept")
    new_names: set[str] = set()
    with torch.no_grad():
        for name, tensor in target.items():
            shape = tuple(tensor.shape)
            if name not in src_state:
                new_names.add(name)
                continue
            src = src_state[name]
            if tuple(src.shape) == shape:
                tensor.copy_(src.to(tensor.dtype))
                report.rows.append(TensorRow(name, "loaded", shape, shape))
            elif allow_resize == "overlap" and src.dim() == tensor.dim():
                corner = tuple(slice(0, min(a, b)) for a, b in zip(src.shape, shape))
                tensor[corner].copy_(src[corner].to(tensor.dtype))
                report.rows.append(TensorRow(name, "resized", tuple(src.shape), shape,
                                             "overlap copied, rest freshly initialised"))
            else:
                report.rows.append(TensorRow(name, "resized", tuple(src.shape), shape, "fresh initialisation"))
    notes = model.preserve_function(new_names) if new_names else {}
    for name in sorted(new_names):
        report.rows.append(TensorRow(name, "new", None, tuple(target[name].shape),
                                     notes.get(name, "fresh initialisation")))
    for name in sorted(set(src_state) - set(target)):
        report.rows.append(TensorRow(name, "dropped", tuple(src_state[name].shape), None))
    _judge(report, new_names - set(notes), model, set(notes))
    return report


#: Config fields that do not change what the model computes on a training-length sequence.
_NEUTRAL_FIELDS = {"max_seq_len", "tie_embeddings", "init_std", "n_layers"}


def _judge(report: WarmStart, unexplained_new: set[str], model: LanguageModel, handled: set[str]) -> None:
    """Fill ``preserved`` and ``reasons`` (conservative: anything not proven neutral counts)."""
    reasons = []
    absorbed = {k for k, tensor in model.warm_start_fields.items() if tensor in handled}
    changed = sorted(k for k in report.config_changes if k not in _NEUTRAL_FIELDS | absorbed)
    if changed:
        reasons.append("config field(s) " + ", ".join(changed) + " changed")
    old_layers, new_layers = report.source_config.get("n_layers"), model.config.n_layers
    if old_layers is not None and new_layers < old_layers:
        reasons.append(f"blocks removed ({old_layers} -> {new_layers})")
    if unexplained_new:
        reasons.append(f"{len(unexplained_new)} new tensor(s) start from a fresh initialisation")
    if report.count("resized"):
        reasons.append(f"{report.count('resized')} tensor(s) resized")
    if report.count("dropped"):
        reasons.append(f"{report.count('dropped')} source tensor(s) dropped")
    report.reasons = reasons
    report.preserved = not reasons


def build_source_model(report: WarmStart) -> LanguageModel:
    """The source model itself (for the step-0 comparison)."""
    config = config_from_dict(report.source_config, report.source)
    model = build_model(config)
    _, state, _ = read_source(report.source)
    model.load_state_dict(state, strict=True)
    return model
