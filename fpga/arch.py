"""Which integer reference serves a model or a parameter dict: the MLGRU's
(:mod:`matmulfree.fpga.intref`) or RWKV-4's (:mod:`matmulfree.fpga.intref_rwkv`).

The exports, the fidelity bench and the CLI go through these three functions, so they never
branch on the architecture themselves.
"""

from __future__ import annotations

from typing import Any

from . import convert_rwkv, intref, intref_rwkv
from .convert import ConversionError

#: Model architectures (``config.architecture``) with an integer reference.
SUPPORTED = ("matmulfree", "rwkv")


def convert_model(model, calib_ids=None, **fmt: int) -> dict[str, Any]:
    """The integer parameter dict of a float model (``matmulfree`` or ``rwkv``)."""
    arch = getattr(getattr(model, "config", None), "architecture", type(model).__name__)
    if arch == "rwkv":
        return convert_rwkv.convert(model, calib_ids=calib_ids, **fmt)
    if arch != "matmulfree":
        raise ConversionError(f"fpga converter: architecture {arch!r} has no integer reference; "
                              f"supported: {', '.join(SUPPORTED)}")
    return intref.convert(model, calib_ids=calib_ids, **fmt)


def int_model(P: dict[str, Any], check: bool = True) -> intref.IntModel:
    """The integer model of a parameter dict (``P["arch"]``: absent/0 MLGRU, 1 RWKV)."""
    return intref_rwkv.RWKVIntModel(P, check) if P.get("arch") == intref_rwkv.ARCH_RWKV else intref.IntModel(P, check)


def memory_bits(P: dict[str, Any]) -> dict[str, int]:
    """On-chip memory of the integer model in bits, by architecture."""
    return intref_rwkv.memory_bits(P) if P.get("arch") == intref_rwkv.ARCH_RWKV else intref.memory_bits(P)


def architecture(P: dict[str, Any]) -> str:
    """``"rwkv"`` or ``"matmulfree"`` for a parameter dict."""
    return "rwkv" if P.get("arch") == intref_rwkv.ARCH_RWKV else "matmulfree"


__all__ = ["SUPPORTED", "architecture", "convert_model", "int_model", "memory_bits"]
