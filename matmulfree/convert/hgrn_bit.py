"""Convert a released MMfreeLM checkpoint (``model_type: "hgrn_bit"``) into our model directory.

No ``transformers`` needed: the release folder is read as files -- ``config.json`` plus
``model.safetensors``, sharded safetensors with ``model.safetensors.index.json``, or
``pytorch_model.bin`` (opened with ``torch.load(weights_only=True)``; no other pickle is read).

How the release computes, and the config that makes our :class:`~matmulfree.models.MatMulFreeLM`
compute the same (see ``docs/checkpoints.md``):

* blocks: ``x += MLGRU(RMSNorm(x)); x += GLU(RMSNorm(x))``, final RMSNorm, ternary LM head -- as ours;
  every release BitLinear (head included) has its own RMSNorm inside, whose epsilon is the fused
  kernel's hard-coded ``1e-6`` (not ``rms_norm_eps``): ``bitlinear_eps = 1e-6``;
* token mixer: ``i/f/g/o_proj`` -> our ``c/f/g/o_proj``; ``f = sigmoid``, optionally
  ``lb + (1 - lb) f`` with the cumulative-softmax lower bounds; output ``RMSNorm(g) * SiLU(h)``
  (``gate = "released"``; ``g_norm`` uses ``rms_norm_eps``); ``num_heads`` only reshapes an
  element-wise recurrence, so any value is accepted;
* channel mixer: ``gate_proj`` (width ``2 l``, gate rows first, one absmean scale for the whole
  matrix) -> our fused ``w_in`` (same layout, same single scale), ``down_proj`` -> ``w_down``;
* 8-bit activations: same absmax formula and clamp; ties rounded away from zero
  (``act_rounding = "half_away"``, libdevice ``roundf`` of the release's Triton kernel);
* a tied head (``tie_word_embeddings``) is written as a copy of the embedding;
* a ``tokenizer.json`` in the release folder becomes our tokenizer (``tokenizer.model`` alone is
  not read: without ``tokenizer.json`` our commands assume the byte tokenizer).

Refused, naming the config key: ``use_short_conv``, ``expand_ratio != 1``, an ``attn_mode`` other
than ``fused_recurrent``. Every release tensor must map to one of ours: an unknown tensor, a missing
tensor or a wrong shape is an error naming the file and the tensor.
"""

from __future__ import annotations

import json
import math
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..config import ConfigError, MatMulFreeConfig

MODEL_TYPE = "hgrn_bit"
CONFIG_FILE = "config.json"
SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
TORCH_FILE = "pytorch_model.bin"
#: epsilon the release's fused BitLinear kernel uses for its inner RMSNorm (``layer_norm_linear_quant_fn``).
RELEASE_BITLINEAR_EPS = 1e-6

#: release tensor name (regex) -> our name (``{i}`` = layer index).
_LAYER_MAP = {
    "attn_norm.weight": "mixer_norm.weight",
    "attn.i_proj.weight": "mixer.c_proj.weight",
    "attn.i_proj.norm.weight": "mixer.c_proj.norm.weight",
    "attn.f_proj.weight": "mixer.f_proj.weight",
    "attn.f_proj.norm.weight": "mixer.f_proj.norm.weight",
    "attn.g_proj.weight": "mixer.g_proj.weight",
    "attn.g_proj.norm.weight": "mixer.g_proj.norm.weight",
    "attn.o_proj.weight": "mixer.o_proj.weight",
    "attn.o_proj.norm.weight": "mixer.o_proj.norm.weight",
    "attn.g_norm.weight": "mixer.g_norm.weight",
    "mlp_norm.weight": "mlp_norm.weight",
    "mlp.gate_proj.weight": "mlp.w_in.weight",
    "mlp.gate_proj.norm.weight": "mlp.w_in.norm.weight",
    "mlp.down_proj.weight": "mlp.w_down.weight",
    "mlp.down_proj.norm.weight": "mlp.w_down.norm.weight",
}
_TOP_MAP = {
    "model.embeddings.weight": "embed.weight",
    "model.lower_bounds": "lower_bounds",
    "model.norm.weight": "norm.weight",
    "lm_head.weight": "lm_head.weight",
    "lm_head.norm.weight": "lm_head.norm.weight",
}
_LAYER_RE = re.compile(r"model\.layers\.(\d+)\.(.+)")


class ConversionError(ValueError):
    """A release folder that cannot be converted; the message names the file, tensor or config key."""


@dataclass
class Release:
    """A release folder as read from disk: its ``config.json`` and every tensor with the file it came from."""

    folder: Path
    config: dict[str, Any]
    tensors: dict[str, torch.Tensor]
    origin: dict[str, str]


# -- reading -----------------------------------------------------------------------------------
def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConversionError(f"{path}: missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConversionError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ConversionError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of one safetensors file, each read on its own so that a bad one is named."""
    from safetensors import SafetensorError, safe_open

    size = path.stat().st_size if path.is_file() else 0
    try:
        f = safe_open(str(path), framework="pt")
    except FileNotFoundError:
        raise ConversionError(f"{path}: missing weight file") from None
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise ConversionError(f"{path}: unreadable or truncated safetensors file ({size} bytes): {e}") from None
    out = {}
    with f:
        for name in f.keys():
            try:
                out[name] = f.get_tensor(name)
            except (SafetensorError, OSError, ValueError, RuntimeError) as e:
                raise ConversionError(f"{path}: tensor '{name}' unreadable (truncated or corrupt file, "
                                      f"{size} bytes): {e}") from None
    return out


def _read_torch_bin(path: Path) -> dict[str, torch.Tensor]:
    """A ``pytorch_model.bin`` state dict through ``torch.load(weights_only=True)`` (no arbitrary pickle)."""
    size = path.stat().st_size
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception as e:  # torch raises many types for bad pickles / zips
        raise ConversionError(f"{path}: unreadable, truncated or not a weights-only state dict ({size} bytes): "
                              f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConversionError(f"{path}: expected a dict of tensors (a state dict)")
    return dict(state)


def read_release(src: str | Path) -> Release:
    """Read ``config.json`` and all weights of a release folder (single file, shards + index, or .bin)."""
    folder = Path(src)
    if not folder.is_dir():
        raise ConversionError(f"{folder}: not a directory (expected a released hgrn_bit folder)")
    config = _read_json(folder / CONFIG_FILE)
    tensors: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    if (folder / SAFETENSORS_INDEX).is_file():
        index_path = folder / SAFETENSORS_INDEX
        index = _read_json(index_path)
        weight_map = index.get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ConversionError(f"{index_path}: no 'weight_map' object")
        for shard in sorted(set(weight_map.values())):
            path = folder / str(shard)
            if not path.is_file():
                raise ConversionError(f"{index_path}: shard '{shard}' (holding e.g. tensor "
                                      f"'{next(k for k, v in weight_map.items() if v == shard)}') is missing")
            for name, t in _read_safetensors(path).items():
                if name in tensors:
                    raise ConversionError(f"{path}: tensor '{name}' also in {origin[name]}")
                tensors[name], origin[name] = t, path.name
        for name, shard in weight_map.items():
            if name not in tensors:
                raise ConversionError(f"{folder / str(shard)}: tensor '{name}' listed in {SAFETENSORS_INDEX} "
                                      f"is not in the shard")
    elif (folder / SAFETENSORS_FILE).is_file():
        tensors = _read_safetensors(folder / SAFETENSORS_FILE)
        origin = dict.fromkeys(tensors, SAFETENSORS_FILE)
    elif (folder / TORCH_FILE).is_file():
        tensors = _read_torch_bin(folder / TORCH_FILE)
        origin = dict.fromkeys(tensors, TORCH_FILE)
    else:
        raise ConversionError(f"{folder}: no weights found (expected {SAFETENSORS_FILE}, {SAFETENSORS_INDEX} "
                              f"with shards, or {TORCH_FILE})")
    return Release(folder, config, tensors, origin)


# -- config ------------------------------------------------------------------------------------
def _release_intermediate_size(hidden: int, ratio: int | None, given: int | None) -> int:
    """The release's GLU width rule: ``int(h * ratio * 2 / 3)`` rounded up to a multiple of 256."""
    if given is not None:
        return int(given)
    ratio = 4 if ratio is None else ratio
    width = int(hidden * ratio * 2 / 3)
    return 256 * math.ceil(width / 256)


def config_from_release(cfg: dict[str, Any], source: str = CONFIG_FILE) -> MatMulFreeConfig:
    """Our :class:`MatMulFreeConfig` computing what a release ``config.json`` computes, or a
    :class:`ConversionError` naming the key that cannot be represented."""
    model_type = cfg.get("model_type")
    if model_type != MODEL_TYPE:
        raise ConversionError(f"{source}: model_type {model_type!r} is not supported; expected '{MODEL_TYPE}' "
                              "(the released MMfreeLM checkpoints)")

    def get(key: str, default: Any = None) -> Any:
        return cfg.get(key, default)

    for key, want in (("use_short_conv", False), ("expand_ratio", 1), ("attn_mode", "fused_recurrent")):
        value = get(key, want)
        if value is not None and value != want:
            raise ConversionError(f"{source}: config key '{key}'={value!r} cannot be represented "
                                  f"(our MLGRU needs {want!r})")
    try:
        hidden = int(cfg["hidden_size"])
        n_layers = int(cfg["num_hidden_layers"])
        vocab = int(cfg["vocab_size"])
    except KeyError as e:
        raise ConversionError(f"{source}: config key {e} is missing") from None
    heads = get("num_heads") or 1
    if hidden % heads:
        raise ConversionError(f"{source}: config key 'num_heads'={heads} does not divide hidden_size={hidden}")
    eps = float(get("rms_norm_eps", 1e-6))
    try:
        return MatMulFreeConfig(
            vocab_size=vocab, d_model=hidden, n_layers=n_layers,
            intermediate_size=_release_intermediate_size(hidden, get("hidden_ratio"), get("intermediate_size")),
            max_seq_len=int(get("max_position_embeddings", 2048)),
            norm_eps=eps, init_std=float(get("initializer_range", 0.02)),
            tie_embeddings=bool(get("tie_word_embeddings", False)),
            gate="released", forget_lower_bound=bool(get("use_lower_bound", True)), ternary_head=True,
            bitlinear_eps=RELEASE_BITLINEAR_EPS, act_rounding="half_away",
        )  # fmt: skip
    except (ConfigError, TypeError, ValueError) as e:
        raise ConversionError(f"{source}: {e}") from None


# -- tensors -----------------------------------------------------------------------------------
def our_name(release_name: str) -> str | None:
    """Our state-dict key for a release tensor name (``None``: not a tensor of the hgrn_bit model)."""
    if release_name in _TOP_MAP:
        return _TOP_MAP[release_name]
    m = _LAYER_RE.fullmatch(release_name)
    if m and m.group(2) in _LAYER_MAP:
        return f"layers.{m.group(1)}.{_LAYER_MAP[m.group(2)]}"
    return None


def map_release_tensors(release: Release, expected: dict[str, torch.Size]) -> dict[str, torch.Tensor]:
    """Rename every release tensor to our key, as fp32, checking names and shapes.

    ``expected``: our state-dict key -> shape. Raises :class:`ConversionError` naming the file and
    the tensor for an unknown tensor, a missing one or a shape mismatch.
    """
    where = release.folder
    out: dict[str, torch.Tensor] = {}
    for name, tensor in release.tensors.items():
        ours = our_name(name)
        file = where / release.origin.get(name, "?")
        if ours is None or ours not in expected:
            raise ConversionError(f"{file}: tensor '{name}' has no counterpart in our model "
                                  f"(config.json: {release.config.get('num_hidden_layers')} layers, "
                                  f"use_lower_bound={release.config.get('use_lower_bound', True)}); "
                                  "refusing to drop it")
        if tuple(tensor.shape) != tuple(expected[ours]):
            raise ConversionError(f"{file}: tensor '{name}' has shape {tuple(tensor.shape)}, config.json implies "
                                  f"{tuple(expected[ours])}")
        if not tensor.is_floating_point():
            raise ConversionError(f"{file}: tensor '{name}' has dtype {tensor.dtype}, expected a float tensor")
        out[ours] = tensor.float().contiguous()
    if "lm_head.weight" not in out and "embed.weight" in out and release.config.get("tie_word_embeddings"):
        out["lm_head.weight"] = out["embed.weight"].clone()  # tied head: save_pretrained drops the copy
    missing = [k for k in expected if k not in out]
    if missing:
        back = {v: k for k, v in _TOP_MAP.items()}
        names = []
        for k in missing:
            m = re.fullmatch(r"layers\.(\d+)\.(.+)", k)
            rel = back.get(k) or (next(r for r, o in _LAYER_MAP.items() if o == m.group(2)) if m else k)
            names.append(f"model.layers.{m.group(1)}.{rel}" if m and k not in back else rel)
        files = sorted(set(release.origin.values())) or ["(no weight file)"]
        raise ConversionError(f"{where}: tensor(s) {names[:5]}{'...' if len(names) > 5 else ''} missing from "
                              f"{', '.join(files)}")
    return out


# -- conversion --------------------------------------------------------------------------------
def convert_hgrn_bit(src: str | Path, out: str | Path, packed: bool = False):
    """Convert the release folder ``src`` into our model directory ``out`` (written atomically, file
    by file); with ``packed`` also ``model.packed.safetensors``. Returns the loaded model."""
    from ..checkpoint import save_model
    from ..models import build_model

    release = read_release(src)
    config = config_from_release(release.config, str(release.folder / CONFIG_FILE))
    with torch.device("meta"):
        skeleton = build_model(config)
    expected = {k: v.shape for k, v in skeleton.state_dict().items()}
    state = map_release_tensors(release, expected)
    release.tensors.clear()
    skeleton.load_state_dict(state, strict=True, assign=True)
    model = skeleton.eval()
    save_model(model, out, packed=packed)
    copy_tokenizer(release.folder, out)
    return model


def copy_tokenizer(src: str | Path, out: str | Path) -> bool:
    """Save the release's ``tokenizer.json`` (Hugging Face ``tokenizers`` format) as our tokenizer of
    ``out``; ``False`` when the release has none (our commands then assume the byte tokenizer)."""
    path = Path(src) / "tokenizer.json"
    if not path.is_file():
        return False
    from tokenizers import Tokenizer as RawTokenizer

    from ..data.tokenizer import HFTokenizer

    try:
        tok = RawTokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises a bare Exception on malformed files
        raise ConversionError(f"{path}: unreadable tokenizer ({str(e).splitlines()[0] if str(e) else e!r})") from None
    HFTokenizer(f"hf:{path}", tok).save(out)
    return True


__all__ = ["ConversionError", "Release", "config_from_release", "convert_hgrn_bit", "copy_tokenizer",
           "map_release_tensors", "our_name", "read_release"]
