"""Our RWKV models in the RWKV-4 checkpoint format of the ``rwkv`` package (``.pth``), for an
independent check of the model against the reference implementation of RWKV's author.

The format is a flat ``{name: tensor}`` dict saved with ``torch.save``; the names and layouts are
the ones RWKV-4 training writes and ``rwkv.model.RWKV`` reads:

=====================================  ==================================================
``emb.weight``                          ``(V, d)``
``blocks.0.ln0.{weight,bias}``          LayerNorm after the embedding (block 0 only)
``blocks.N.ln1.*``, ``blocks.N.ln2.*``  the block's pre-norms
``blocks.N.att.time_mix_{k,v,r}``       ``(1, 1, d)``
``blocks.N.att.time_decay``             ``(d,)`` raw: the package computes ``-exp(time_decay)``
``blocks.N.att.time_first``             ``(d,)`` the bonus ``u`` as is
``blocks.N.att.{key,value,receptance,output}.weight``  ``(out, in)`` (``nn.Linear`` layout)
``blocks.N.ffn.time_mix_{k,r}``         ``(1, 1, d)``
``blocks.N.ffn.{key,receptance,value}.weight``  ``(l, d)``, ``(d, d)``, ``(d, l)``
``ln_out.*``, ``head.weight``           final LayerNorm, ``(V, d)`` head
=====================================  ==================================================

Each ternary weight is written dequantised, ``W_q / s_w`` (the per-tensor scale times
{-1, 0, +1}), in fp32. The package's projections are plain products of float activations, so the
two agree exactly (up to fp32 rounding) only for a model with ``quantize_activations: false``;
with quantised activations the export is still valid, but its logits differ by the int8 rounding.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .config import ConfigError
from .layers import BitLinear

#: The LayerNorm epsilon the ``rwkv`` package hard-codes (``F.layer_norm``'s default).
PACKAGE_LAYERNORM_EPS = 1e-5


def _weight(m: nn.Module) -> torch.Tensor:
    """Dense fp32 ``(out, in)`` weight of a BitLinear (dequantised) or a full-precision linear."""
    if isinstance(m, BitLinear):
        w_q, s_w = m.ternary_weight()
        return (w_q.float() / s_w.float()).contiguous()
    return m.weight.detach().float().contiguous()


def _ln(prefix: str, ln: nn.LayerNorm) -> dict[str, torch.Tensor]:
    return {f"{prefix}.weight": ln.weight.detach().float().clone(), f"{prefix}.bias": ln.bias.detach().float().clone()}


def _mix(p: torch.Tensor) -> torch.Tensor:
    return p.detach().float().reshape(1, 1, -1).clone()


def check_exportable(model) -> None:
    """Raise :class:`ConfigError` naming the config field the RWKV-4 format cannot represent."""
    cfg = model.config
    if cfg.architecture != "rwkv":
        raise ConfigError(f"rwkv4 export: needs an RWKV checkpoint, got architecture {cfg.architecture!r}")
    if cfg.rwkv_gate:
        raise ConfigError("rwkv4 export: config field 'rwkv_gate'=true has no RWKV-4 equivalent "
                          "(the package would read a gate as RWKV-5.1)")
    if cfg.norm_eps != PACKAGE_LAYERNORM_EPS:
        raise ConfigError(f"rwkv4 export: config field 'norm_eps'={cfg.norm_eps} differs from the "
                          f"{PACKAGE_LAYERNORM_EPS} that the rwkv package's LayerNorms use")


@torch.no_grad()
def rwkv4_state_dict(model) -> dict[str, torch.Tensor]:
    """``{name: fp32 tensor}`` of ``model`` (an :class:`~matmulfree.models.RWKVLM`) in RWKV-4 layout."""
    check_exportable(model)
    sd = {"emb.weight": model.embed.weight.detach().float().clone()}
    sd.update(_ln("blocks.0.ln0", model.ln_in))
    for i, block in enumerate(model.layers):
        b = f"blocks.{i}"
        sd.update(_ln(f"{b}.ln1", block.ln1))
        sd.update(_ln(f"{b}.ln2", block.ln2))
        att, ffn = block.att, block.ffn
        for name in ("k", "v", "r"):
            sd[f"{b}.att.time_mix_{name}"] = _mix(getattr(att, f"time_mix_{name}"))
        sd[f"{b}.att.time_decay"] = att.time_decay.detach().float().clone()
        sd[f"{b}.att.time_first"] = att.time_first.detach().float().clone()
        for name in ("key", "value", "receptance", "output"):
            sd[f"{b}.att.{name}.weight"] = _weight(getattr(att, name))
        for name in ("k", "r"):
            sd[f"{b}.ffn.time_mix_{name}"] = _mix(getattr(ffn, f"time_mix_{name}"))
        for name in ("key", "receptance", "value"):
            sd[f"{b}.ffn.{name}.weight"] = _weight(getattr(ffn, name))
    sd.update(_ln("ln_out", model.norm))
    sd["head.weight"] = _weight(model.lm_head)
    return sd


def save_rwkv4(model, path: str | Path) -> Path:
    """Write :func:`rwkv4_state_dict` to ``path`` (``.pth``, atomically: temporary file + rename)."""
    from .checkpoint import atomic_write

    sd = rwkv4_state_dict(model)
    return atomic_write(path, lambda tmp: torch.save(sd, tmp))


__all__ = ["PACKAGE_LAYERNORM_EPS", "check_exportable", "rwkv4_state_dict", "save_rwkv4"]
