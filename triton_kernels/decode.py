"""Fused MLGRU decode step: one token's recurrence, output gate and the o-projection's RMSNorm +
int8 quantization in one kernel (:func:`mlgru_step`), beside its reference :func:`mlgru_step_naive`.

The model-level decoders that chain these kernels per token and capture the step in a CUDA graph
live in :mod:`matmulfree.inference.gpu`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from matmulfree.functional import rms_norm
from matmulfree.quant import QUANT_EPS, activation_quantize

from ._common import activation_scale, autotune, check_device, next_pow2, quantize_activation, round_to
from .norm_quant import tl_dtype

# ----------------------------------------------------------------------------------------------
# MLGRU single-step kernel
# ----------------------------------------------------------------------------------------------


def _step_configs() -> list[triton.Config]:
    return [triton.Config({}, num_warps=w) for w in (1, 2, 4, 8, 16)]


@autotune(_step_configs(), key=["D", "HAS_LB", "RELEASED"], interpret=triton.Config({}, num_warps=4),
          restore_value=["h_ptr"])  # fmt: skip
@triton.jit
def _mlgru_step_kernel(
    y_ptr, h_ptr, lb_ptr, gn_ptr, og_ptr, q_ptr, sx_ptr, D, stride_y, eps, qeps,
    HAS_LB: tl.constexpr, RELEASED: tl.constexpr, DTYPE: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    """One token: pre-activations ``y = [y_f | y_c | y_g]`` and state ``h`` (updated in place) ->
    int8 input of the o-projection (its RMSNorm and per-token quantization fused)."""
    row = tl.program_id(0).to(tl.int64)
    d = tl.arange(0, BLOCK_D)
    m = d < D
    yb = y_ptr + row * stride_y
    yf = tl.load(yb + d, mask=m, other=0.0).to(tl.float32)
    yc = tl.load(yb + D + d, mask=m, other=0.0).to(tl.float32)
    yg = tl.load(yb + 2 * D + d, mask=m, other=0.0).to(tl.float32)
    f = tl.sigmoid(yf)
    if HAS_LB:
        lb = tl.load(lb_ptr + d, mask=m, other=0.0).to(tl.float32)
        f = lb + (1 - lb) * f
    c = yc * tl.sigmoid(yc)
    h = tl.load(h_ptr + row * D + d, mask=m, other=0.0)
    h = f * h + (1 - f) * c
    tl.store(h_ptr + row * D + d, h, mask=m)
    if RELEASED:  # o' = RMSNorm(g) * SiLU(h)
        gw = tl.load(gn_ptr + d, mask=m, other=0.0).to(tl.float32)
        yg = round_to(yg, DTYPE)
        rg = tl.rsqrt(tl.sum(yg * yg, axis=0) / D + eps)
        o = round_to(yg * rg * gw, DTYPE) * (h * tl.sigmoid(h))
    else:  # o' = g * sigmoid(h)
        o = yg * tl.sigmoid(h)
    o = round_to(o, DTYPE)
    og = tl.load(og_ptr + d, mask=m, other=0.0).to(tl.float32)
    r = tl.rsqrt(tl.sum(o * o, axis=0) / D + eps)
    xn = round_to(o * r * og, DTYPE)
    sx = activation_scale(tl.max(tl.abs(xn), axis=0), qeps)
    q = quantize_activation(xn, sx, tl.float32)
    tl.store(q_ptr + row * D + d, q.to(tl.int8), mask=m)
    tl.store(sx_ptr + row, sx)


def mlgru_step(
    y: torch.Tensor,
    h: torch.Tensor,
    o_gain: torch.Tensor,
    eps: float,
    lower_bound: torch.Tensor | None = None,
    g_norm: torch.Tensor | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused MLGRU decode step (kernel).

    Args:
        y: ``(B, 3D)`` outputs of the f, c and g projections (concatenated).
        h: fp32 state ``(B, D)``, updated in place to ``f h + (1 - f) SiLU(c)``.
        o_gain: RMSNorm gain ``(D,)`` of the o-projection; ``eps`` its epsilon.
        lower_bound: forget-gate lower bound ``(D,)`` or None; ``g_norm``: gain of the output-gate
            RMSNorm (the "released" gate ``RMSNorm(g) SiLU(h)``), None for the paper's ``g sigmoid(h)``.
        dtype: activation dtype the reference rounds ``o'`` and the normalised input to.
    Returns:
        ``(x_q int8 (1, B, D), s_x fp32 (1, B))``: the o-projection's quantized input.
    """
    check_device(y, h)
    B, D = h.shape
    if h.dtype != torch.float32 or not h.is_contiguous() or y.shape != (B, 3 * D) or y.stride(-1) != 1:
        raise ValueError(f"mlgru_step: need y (B, 3D) and a contiguous fp32 state h (B, D); got {tuple(y.shape)}, "
                         f"{tuple(h.shape)} {h.dtype}")  # fmt: skip
    q = torch.empty(1, B, D, dtype=torch.int8, device=h.device)
    sx = torch.empty(1, B, dtype=torch.float32, device=h.device)
    _mlgru_step_kernel[(B,)](
        y, h, lower_bound if lower_bound is not None else h, g_norm if g_norm is not None else o_gain, o_gain,
        q, sx, D, y.stride(0), float(eps), QUANT_EPS,
        HAS_LB=lower_bound is not None, RELEASED=g_norm is not None, DTYPE=tl_dtype(dtype), BLOCK_D=next_pow2(D),
    )  # fmt: skip
    return q, sx


def mlgru_step_naive(y, h, o_gain, eps, lower_bound=None, g_norm=None, dtype=torch.float32):
    """Reference of :func:`mlgru_step` (the arithmetic of ``MLGRU.step``); returns ``(h', x_q, s_x)``
    without modifying ``h``."""
    yf, yc, yg = y.float().chunk(3, dim=-1)
    f = torch.sigmoid(yf)
    if lower_bound is not None:
        f = lower_bound + (1 - lower_bound) * f
    h = f * h + (1 - f) * F.silu(yc)
    o = rms_norm(yg.to(dtype), g_norm, eps) * F.silu(h) if g_norm is not None else yg * torch.sigmoid(h)
    q, sx = activation_quantize(rms_norm(o.to(dtype), o_gain, eps))
    return h, q.unsqueeze(0), sx.reshape(1, -1)


__all__ = ["mlgru_step", "mlgru_step_naive"]
