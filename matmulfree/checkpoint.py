"""Saving and loading model directories (``config.json`` + safetensors, never pickle).

Layout of a model directory::

    config.json               architecture and every config field
    model.safetensors         the model's state dict (latent fp32 weights, or packed weights if
                              the model was packed; metadata ``packed`` says which)
    model.packed.safetensors  optional: 2-bit packed ternary weights + scales + the rest

Every file is written to a temporary name in the same directory and renamed into place, so an
interrupted save never leaves a half-written file under the final name.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .config import ConfigError, config_from_dict
from .models import LanguageModel, build_model

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
PACKED_WEIGHTS_FILE = "model.packed.safetensors"


class CheckpointError(ValueError):
    """A model directory is missing, truncated, corrupt or does not match its config."""


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` then atomically rename ``tmp_path`` to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give the usual umask permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda p: p.write_text(text))


def _contiguous_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}


def save_model(model: LanguageModel, directory: str | Path, packed: bool | None = None) -> Path:
    """Write ``config.json`` and ``model.safetensors``; with ``packed=True`` (default for packed
    models) also ``model.packed.safetensors``. Returns the directory."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write_text(directory / CONFIG_FILE, json.dumps(model.config.to_dict(), indent=2) + "\n")
    meta = {"format": "pt", "packed": "1" if model.is_packed else "0"}
    state = _contiguous_state(model)
    atomic_write(directory / WEIGHTS_FILE, lambda p: save_file(state, str(p), metadata=meta))
    if packed and not model.is_packed:
        import copy

        packed_model = copy.deepcopy(model).cpu().pack()
        pstate = _contiguous_state(packed_model)
        pmeta = {"format": "pt", "packed": "1"}
        atomic_write(directory / PACKED_WEIGHTS_FILE, lambda p: save_file(pstate, str(p), metadata=pmeta))
    return directory


def load_config(directory: str | Path):
    """Read and validate ``config.json`` of a model directory."""
    path = Path(directory) / CONFIG_FILE
    if not Path(directory).is_dir():
        raise CheckpointError(f"{directory}: not a directory")
    if not path.is_file():
        raise CheckpointError(f"{path}: missing (a model directory needs {CONFIG_FILE} and {WEIGHTS_FILE})")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(data).__name__}")
    try:
        return config_from_dict(data, source=str(path))
    except ConfigError as e:
        raise CheckpointError(str(e)) from None


def _read_weights(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    if not path.is_file():
        raise CheckpointError(f"{path}: missing weight file")
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        return load_file(str(path)), meta
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        size = path.stat().st_size
        raise CheckpointError(f"{path}: unreadable or truncated safetensors file ({size} bytes): {e}") from None


def load_model(directory: str | Path, map_location: str | torch.device = "cpu", packed: bool = False) -> LanguageModel:
    """Open a model directory of either architecture.

    ``packed=True`` loads ``model.packed.safetensors`` when present (2-bit inference weights).
    Raises :class:`CheckpointError` naming the file and the problem on any mismatch.
    """
    directory = Path(directory)
    config = load_config(directory)
    path = directory / WEIGHTS_FILE
    if packed and (directory / PACKED_WEIGHTS_FILE).is_file():
        path = directory / PACKED_WEIGHTS_FILE
    state, meta = _read_weights(path)
    model = build_model(config)
    if meta.get("packed") == "1":
        model.pack()
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: weights do not match {CONFIG_FILE} ({config.architecture}); "
            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
        )
    for name, tensor in state.items():
        want = expected[name]
        if tuple(tensor.shape) != tuple(want.shape) or tensor.dtype != want.dtype:
            raise CheckpointError(
                f"{path}: tensor '{name}' has shape {tuple(tensor.shape)} {tensor.dtype}, "
                f"config expects {tuple(want.shape)} {want.dtype}"
            )
    model.load_state_dict(state, strict=True)
    return model.to(map_location)
