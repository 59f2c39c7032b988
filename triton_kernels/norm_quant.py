"""Fused RMSNorm + per-token int8 activation quantization (one row per program).

``x (M, K)`` -> ``x_q`` int8 ``(M, K)``, ``s_x`` fp32 ``(M,)`` and the norm's ``rstd`` fp32 ``(M,)``
with ``x_n = RMSNorm(x) * g`` rounded to ``x``'s dtype (as :func:`matmulfree.layers.rms_norm`) and
``x_q = clamp(round(x_n * s_x), -128, 127)``, ``s_x = 127 / max(max|x_n|, eps)`` (``matmulfree.quant``).

The same kernel serves the fused decode step: ``P`` gains applied to one input (the f/c/g
projections of an MLGRU share their input but each BitLinear has its own norm gain), an optional
outer RMSNorm first (the block's pre-norm), and an optional GLU prologue ``SiLU(g) * u``.
Without a gain (``weight=None``, BitLinears built with ``norm=False``) the inner norm is skipped:
``x_n = x`` and ``rstd`` is 1.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from matmulfree.functional import rms_norm
from matmulfree.quant import QUANT_EPS, activation_quantize, activation_quantize_ste

from ._common import INTERPRET, activation_scale, autotune, check_device, next_pow2, quantize_activation, round_to

_TL_DTYPE = {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}


def tl_dtype(dtype: torch.dtype):
    if dtype not in _TL_DTYPE:
        raise TypeError(f"Triton kernels support float32/bfloat16/float16 activations, got {dtype}")
    return _TL_DTYPE[dtype]


def _row_configs() -> list[triton.Config]:
    return [triton.Config({}, num_warps=w) for w in (1, 2, 4, 8, 16)]


@autotune(_row_configs(), key=["K", "BLOCK_K", "RB", "HAS_OUTER", "GLU", "NORM"],
          interpret=triton.Config({}, num_warps=4))  # fmt: skip
@triton.jit
def _norm_quant_kernel(
    x_ptr, g_ptr, outer_ptr, q_ptr, sx_ptr, rstd_ptr,
    M, K, stride_xm, stride_gp, stride_qp, stride_qm,
    eps, qeps,
    RB: tl.constexpr, BLOCK_K: tl.constexpr, HAS_OUTER: tl.constexpr, GLU: tl.constexpr,
    STORE_RSTD: tl.constexpr, DTYPE: tl.constexpr, STE_DTYPE: tl.constexpr, NORM: tl.constexpr,
):  # fmt: skip
    """``RB`` rows per program (a ``(RB, BLOCK_K)`` block), projection ``p = program_id(1)``."""
    rows = tl.program_id(0) * RB + tl.arange(0, RB)
    p = tl.program_id(1)
    cols = tl.arange(0, BLOCK_K)
    rmask = rows < M
    cmask = cols < K
    mask = rmask[:, None] & cmask[None, :]
    xp = x_ptr + rows[:, None].to(tl.int64) * stride_xm + cols[None, :]
    if GLU:  # input row is [g | u], width 2K
        gate = tl.load(xp, mask=mask, other=0.0).to(tl.float32)
        up = tl.load(xp + K, mask=mask, other=0.0).to(tl.float32)
        x = round_to(round_to(gate * tl.sigmoid(gate), DTYPE) * up, DTYPE)
    else:
        x = tl.load(xp, mask=mask, other=0.0).to(tl.float32)
    if HAS_OUTER:
        g0 = tl.load(outer_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
        r0 = tl.rsqrt(tl.sum(x * x, axis=1) / K + eps)
        x = round_to(x * r0[:, None] * g0[None, :], DTYPE)
    if NORM:
        g = tl.load(g_ptr + p * stride_gp + cols, mask=cmask, other=0.0).to(tl.float32)
        rstd = tl.rsqrt(tl.sum(x * x, axis=1) / K + eps)
        xn = round_to(x * rstd[:, None] * g[None, :], DTYPE)
    else:
        rstd = tl.full((RB,), 1.0, tl.float32)
        xn = x
    sx = activation_scale(tl.max(tl.abs(xn), axis=1), qeps)
    q = quantize_activation(xn, sx[:, None], STE_DTYPE)
    tl.store(q_ptr + p * stride_qp + rows[:, None].to(tl.int64) * stride_qm + cols[None, :], q.to(tl.int8), mask=mask)
    tl.store(sx_ptr + p * M + rows, sx, mask=rmask)
    if STORE_RSTD:
        tl.store(rstd_ptr + p * M + rows, rstd, mask=rmask)


def rows_per_program(M: int, block: int) -> int:
    """Rows a row-wise kernel handles per program: enough to keep ~4K elements per program on a GPU
    (one row for wide rows); under the interpreter as many as possible (per-program cost dominates)."""
    if INTERPRET:
        return min(64, next_pow2(M))
    return max(1, min(16, 4096 // block, next_pow2(M)))


def rmsnorm_quantize(
    x: torch.Tensor, weight: torch.Tensor | None, eps: float, ste: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fused kernel. ``x (M, K)``, gain ``weight (K,)`` -> ``(x_q int8 (M, K), s_x (M,), rstd (M,))``;
    ``weight=None``: no norm, only the quantization (``rstd`` all ones).

    ``ste=True`` rounds like the training path (``activation_quantize_ste``: product in ``x``'s
    dtype), ``ste=False`` like the packed inference path (``activation_quantize``: fp32 product).
    """
    weights = weight.unsqueeze(0) if weight is not None else None
    q, sx, rstd = rmsnorm_quantize_multi(x, weights, eps, ste=ste, store_rstd=True)
    return q[0], sx[0], rstd[0]


def rmsnorm_quantize_multi(
    x: torch.Tensor,
    weights: torch.Tensor | None,
    eps: float,
    outer: torch.Tensor | None = None,
    glu: bool = False,
    ste: bool = False,
    store_rstd: bool = False,
    out: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``P`` norms of one input: ``x (M, K)`` (``(M, 2K)`` with ``glu``), ``weights (P, K)`` ->
    ``(x_q int8 (P, M, K), s_x fp32 (P, M), rstd fp32 (P, M) or None)``.

    ``outer (K,)``: an RMSNorm gain applied first (output rounded to ``x``'s dtype, like a separate
    :class:`~matmulfree.layers.RMSNorm` module). ``glu``: the input is ``[g | u]`` and the normalised value is
    ``SiLU(g) * u``. ``out``: preallocated ``(x_q, s_x)`` (for CUDA graphs). ``weights=None``: one
    projection without an inner norm (``P = 1``).
    """
    norm = weights is not None
    if not norm:
        weights = torch.empty(1, x.shape[-1] // (2 if glu else 1), dtype=torch.float32, device=x.device)
    check_device(x, weights, outer)
    if x.dim() != 2 or weights.dim() != 2:
        raise ValueError(f"rmsnorm_quantize_multi: x must be (M, K), weights (P, K); got {tuple(x.shape)}, "
                         f"{tuple(weights.shape)}")
    M, width = x.shape
    P, K = weights.shape
    if width != (2 * K if glu else K):
        raise ValueError(f"rmsnorm_quantize_multi: x has width {width}, weights expect {K}{' x2 (GLU)' if glu else ''}")
    if x.stride(-1) != 1:
        x = x.contiguous()
    weights = weights.contiguous()
    dt = tl_dtype(x.dtype)
    if out is None:
        q = torch.empty(P, M, K, dtype=torch.int8, device=x.device)
        sx = torch.empty(P, M, dtype=torch.float32, device=x.device)
    else:
        q, sx = out
    rstd = torch.empty(P, M, dtype=torch.float32, device=x.device) if store_rstd else sx
    if M == 0:
        return q, sx, (rstd if store_rstd else None)
    rb = rows_per_program(M, next_pow2(K))
    _norm_quant_kernel[(triton.cdiv(M, rb), P)](
        x, weights, outer if outer is not None else weights, q, sx, rstd,
        M, K, x.stride(0), weights.stride(0), q.stride(0), q.stride(1),
        float(eps), QUANT_EPS,
        RB=rb, BLOCK_K=next_pow2(K), HAS_OUTER=outer is not None, GLU=glu, STORE_RSTD=store_rstd,
        DTYPE=dt, STE_DTYPE=dt if ste else tl.float32, NORM=norm,
    )  # fmt: skip
    return q, sx, (rstd if store_rstd else None)


def rmsnorm_quantize_naive(
    x: torch.Tensor, weight: torch.Tensor | None, eps: float, ste: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Plain PyTorch reference of :func:`rmsnorm_quantize` (``matmulfree.layers`` + ``matmulfree.quant``)."""
    if weight is None:
        xn = x
        q, sx = activation_quantize_ste(xn) if ste else activation_quantize(xn)
        q = q.detach().to(torch.int8)
        return q, sx.squeeze(-1), torch.ones(x.shape[:-1], dtype=torch.float32, device=x.device)
    xn = rms_norm(x, weight, eps)
    if ste:
        x_int, sx = activation_quantize_ste(xn)
        q = x_int.detach().to(torch.int8)
    else:
        q, sx = activation_quantize(xn)
    rstd = torch.rsqrt(x.float().pow(2).mean(dim=-1) + eps)
    return q, sx.squeeze(-1), rstd


__all__ = ["rmsnorm_quantize", "rmsnorm_quantize_multi", "rmsnorm_quantize_naive", "tl_dtype", "INTERPRET"]
