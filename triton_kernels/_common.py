"""Shared pieces of the Triton kernels: interpreter detection, autotune choice, rounding, checks."""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from matmulfree.quant import ACT_ABSMAX

#: True when Triton runs kernels through its CPU interpreter (``TRITON_INTERPRET=1``, read at import).
INTERPRET: bool = os.environ.get("TRITON_INTERPRET", "0") == "1"
#: ``MATMULFREE_AUTOTUNE=0`` runs the first config of every kernel without tuning (faster GPU tests).
AUTOTUNE: bool = os.environ.get("MATMULFREE_AUTOTUNE", "1") != "0" and not INTERPRET
_INTERPRET_C = tl.constexpr(INTERPRET)
_ABSMAX = tl.constexpr(ACT_ABSMAX)


def autotune(configs: list[triton.Config], key: list[str], interpret: triton.Config | None = None, **kwargs):
    """``@triton.autotune`` over ``configs`` on a GPU; one fixed config under ``TRITON_INTERPRET=1``.

    The interpreter cannot benchmark, so there the autotuner gets a single config (``interpret``,
    default the first of ``configs``), which it runs without timing anything. With
    ``MATMULFREE_AUTOTUNE=0`` a GPU also runs the first config untuned.
    """
    if INTERPRET:
        chosen = [interpret if interpret is not None else configs[0]]
    else:
        chosen = configs if AUTOTUNE else configs[:1]
    return triton.autotune(configs=chosen, key=key, **kwargs)


def check_device(*tensors: torch.Tensor) -> None:
    """Kernels run on CUDA tensors, or on CPU tensors only under the interpreter."""
    for t in tensors:
        if t is None:
            continue
        if not (t.is_cuda or INTERPRET):
            raise RuntimeError(
                f"Triton kernels need CUDA tensors (got a tensor on {t.device}); set TRITON_INTERPRET=1 "
                "before importing matmulfree.triton_kernels to run them on CPU, or use the torch backend"
            )


def next_pow2(n: int) -> int:
    return triton.next_power_of_2(max(int(n), 1))


def row_warps(block: int) -> list[int]:
    """Warp counts worth trying for a kernel that keeps one row of ``block`` elements in registers."""
    if block <= 512:
        return [1, 2, 4]
    if block <= 2048:
        return [4, 8]
    return [8, 16]


@triton.jit
def round_half_even(x):
    """``torch.round`` (half to even) of fp32 ``x`` with ``|x| < 2**22``, exact, interpreter-safe."""
    r = tl.floor(x)
    d = x - r  # exact: x and floor(x) share the exponent range
    odd = (r - 2.0 * tl.floor(r * 0.5)) != 0.0
    up = (d > 0.5) | ((d == 0.5) & odd)
    return tl.where(up, r + 1.0, r)


@triton.jit
def dot_acc(a, b, acc, IEEE: tl.constexpr):
    """``acc + a @ b`` for floating operands (fp32 accumulation); ``IEEE``: exact fp32 products
    instead of TF32. Under the interpreter 16-bit operands are widened to fp32 first (its
    ``tl.dot`` multiplies the raw bits of bf16 values); the products are exact either way."""
    if _INTERPRET_C:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc)
    elif IEEE:
        return tl.dot(a, b, acc, input_precision="ieee")
    else:
        return tl.dot(a, b, acc)


@triton.jit
def round_to(x, DTYPE: tl.constexpr):
    """fp32 ``x`` rounded to ``DTYPE`` (round to nearest even), returned as fp32.

    bf16 rounding is done on the bits, because the interpreter's own fp32 -> bf16 cast truncates;
    the result is exactly representable, so a following ``.to(DTYPE)`` is exact everywhere.
    """
    if DTYPE == tl.bfloat16:
        u = x.to(tl.int32, bitcast=True)
        u = (u + 0x7FFF + ((u >> 16) & 1)) & -65536
        return u.to(tl.float32, bitcast=True)
    elif DTYPE == tl.float16:
        return x.to(tl.float16).to(tl.float32)
    else:
        return x


@triton.jit
def cast_to(x, DTYPE: tl.constexpr):
    """fp32 ``x`` -> ``DTYPE`` with round-to-nearest-even on GPU and interpreter alike."""
    return round_to(x, DTYPE).to(DTYPE)


@triton.jit
def activation_scale(amax, qeps):
    """``s_x = 127 / max(amax, eps)`` evaluated as ``quant.activation_scale`` does in PyTorch
    (``scalar / tensor`` is ``reciprocal(tensor) * scalar``), with a correctly rounded reciprocal."""
    one = tl.full(amax.shape, 1.0, tl.float32)
    return tl.math.div_rn(one, tl.maximum(amax, qeps)) * _ABSMAX


@triton.jit
def quantize_activation(xn, sx, STE_DTYPE: tl.constexpr):
    """int8 code (as fp32 integers in [-128, 127]) of normalised activations ``xn`` (fp32 holding
    values of the layer dtype) with per-token scale ``sx``.

    ``STE_DTYPE`` mirrors ``quant.activation_quantize_ste``, whose product ``x * s_x`` is taken in the
    activation dtype (for bf16: ``s_x`` rounded to bf16 and the product rounded to bf16; the fp32
    product of two bf16 values is exact, so rounding it once gives the bf16 product). Pass
    ``tl.float32`` for ``quant.activation_quantize`` (fp32 product).
    """
    s = round_to(sx, STE_DTYPE)
    p = round_to(xn * s, STE_DTYPE)
    return tl.minimum(tl.maximum(round_half_even(p), -128.0), 127.0)
