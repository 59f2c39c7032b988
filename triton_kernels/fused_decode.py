"""Decode-step BitLinear with its norms, quantization and element-wise epilogue in one launch.

:func:`fused_bitlinear` computes, for ``M <= 16`` rows (one token per sequence), one or more
BitLinears that read the same input, in a single kernel:

* **prologue** (every program, redundantly, from the L2-resident input rows): the optional outer
  RMSNorm (a block's pre-norm), the BitLinear RMSNorm and the per-token int8 quantization of each
  projection (its own gain, so its own scale). The input is a row of activations, an embedding row
  gathered by token id (``tokens``), or the released MLGRU gate ``RMSNorm(g) * SiLU(h)`` built
  from ``g`` and ``SiLU(h)`` (``gate_in``). Row statistics are reduced over the full row in one block,
  as :func:`~matmulfree.triton_kernels.norm_quant.rmsnorm_quantize_multi` does; the int8 codes are
  recomputed element-wise in the product loop, so they never go through memory.
* **product**: ``P`` packed 2-bit projections (``matmulfree.quant`` storage code) of the same output
  columns, int32 multiply-adds (exact), as :mod:`.packed`'s GEMV.
* **epilogue** (``epilogue=``): ``"store"`` (``y`` of each projection), ``"residual"``
  (``out = residual + y``, in place allowed), ``"mlgru"`` (``P = 3``: f, c, g; the recurrence
  ``h = f h + (1 - f) SiLU(c)`` in place and the output gate ``g sigmoid(h)``, or with
  ``released_gate`` the two halves ``g`` and ``SiLU(h)`` of the released gate for the next
  launch), ``"glu"`` (``P = 2``: ``SiLU(g) * u``).

So an MLGRU block is four launches (f/c/g with the recurrence, o with the residual, the GLU's
``w_in``, ``w_down`` with the residual) and the whole step ``4 L + 1``; see
:class:`matmulfree.inference.gpu.FusedMatMulFreeDecoder`. :func:`fused_bitlinear_naive` is the
PyTorch reference (the arithmetic of ``BitLinear.forward_reference`` and ``MLGRU.step``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from matmulfree.functional import rms_norm
from matmulfree.quant import QUANT_EPS, activation_quantize, packed_row_bytes

from ._common import activation_scale, autotune, cast_to, check_device, next_pow2, quantize_activation, round_to
from .norm_quant import tl_dtype
from .packed import GEMV_MAX_BATCH, packed_matmul_naive

#: Epilogues of :func:`fused_bitlinear` and the projection count each needs (``None``: any).
EPILOGUES = {"store": None, "residual": 1, "mlgru": 3, "glu": 2}
_EPI_ID = {name: i for i, name in enumerate(EPILOGUES)}


@triton.jit
def _raw_input(x_ptr, tok_ptr, hs_ptr, gn_ptr, outer_ptr, rows, cols, M, K, stride_x, rg, r0, eps,
               EMBED: tl.constexpr, GATE_IN: tl.constexpr, HAS_OUTER: tl.constexpr, DTYPE: tl.constexpr):  # fmt: skip
    """The BitLinear input (before its own norm) at ``rows (R, 1)`` x ``cols (1, C)``, fp32 (0 outside
    ``M`` x ``K``). ``rg``, ``r0`` (R, 1): the gate-norm and outer-norm factors (used with GATE_IN /
    HAS_OUTER)."""
    cmask = cols < K
    mask = (rows < M) & cmask
    if EMBED:
        tok = tl.load(tok_ptr + rows, mask=rows < M, other=0)
        x = tl.load(x_ptr + tok.to(tl.int64) * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    else:
        x = tl.load(x_ptr + rows.to(tl.int64) * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    if GATE_IN:  # o' = RMSNorm(g) * SiLU(h), x holding g
        x = round_to(x, DTYPE)
        gw = tl.load(gn_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
        hs = tl.load(hs_ptr + rows.to(tl.int64) * stride_x + cols, mask=mask, other=0.0)
        x = round_to(round_to(x * rg * gw, DTYPE) * hs, DTYPE)
    if HAS_OUTER:
        g0 = tl.load(outer_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
        x = round_to(x * r0 * g0, DTYPE)
    return x


@triton.jit
def _fused_bitlinear_kernel(
    x_ptr, tok_ptr, hs_ptr, gn_ptr, outer_ptr, gain_ptr, w_ptr, sw_ptr,
    out_ptr, res_ptr, h_ptr, lb_ptr, aux_ptr, xcopy_ptr,
    M, N, K, KB, stride_x, stride_out, eps, qeps,
    P: tl.constexpr, EPI: tl.constexpr, EMBED: tl.constexpr, GATE_IN: tl.constexpr, HAS_OUTER: tl.constexpr,
    HAS_LB: tl.constexpr, GATE_OUT: tl.constexpr, DTYPE: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, BKB: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    rm = tl.arange(0, BM)
    rn = pid * BN + tl.arange(0, BN)
    mmask = rm < M
    nmask = rn < N
    kk = tl.arange(0, BLOCK_K)
    kmask = kk < K
    zero = tl.zeros((BM,), dtype=tl.float32)
    rg, r0, rs, sx0, sx1, sx2 = zero, zero, zero, zero, zero, zero
    # ---- prologue: per-row statistics over the full row (one block per row)
    for m in tl.static_range(BM):
        row = tl.full((1, 1), m, tl.int32)
        mk = kmask[None, :] & (row < M)
        if GATE_IN:
            g = tl.load(x_ptr + row.to(tl.int64) * stride_x + kk[None, :], mask=mk, other=0.0).to(tl.float32)
            g = round_to(g, DTYPE)
            rg_m = tl.rsqrt(tl.sum(g * g, axis=1) / K + eps)  # (1,)
        else:
            rg_m = tl.zeros((1,), dtype=tl.float32)
        x = _raw_input(x_ptr, tok_ptr, hs_ptr, gn_ptr, outer_ptr, row, kk[None, :], M, K, stride_x, rg_m[:, None],
                       rg_m[:, None], eps, EMBED, GATE_IN, False, DTYPE)  # fmt: skip
        if EMBED:  # the residual stream starts as the embedding rows (written by program 0)
            first = (row * 0 + pid) == 0
            tl.store(xcopy_ptr + row.to(tl.int64) * K + kk[None, :], cast_to(x, DTYPE), mask=mk & first)
        if HAS_OUTER:
            r0_m = tl.rsqrt(tl.sum(x * x, axis=1) / K + eps)
            g0 = tl.load(outer_ptr + kk, mask=kmask, other=0.0).to(tl.float32)
            x = round_to(x * r0_m[:, None] * g0[None, :], DTYPE)
        else:
            r0_m = tl.zeros((1,), dtype=tl.float32)
        rs_m = tl.rsqrt(tl.sum(x * x, axis=1) / K + eps)
        sel = rm == m
        rg = tl.where(sel, tl.sum(rg_m, axis=0), rg)
        r0 = tl.where(sel, tl.sum(r0_m, axis=0), r0)
        rs = tl.where(sel, tl.sum(rs_m, axis=0), rs)
        for p in tl.static_range(P):
            gp = tl.load(gain_ptr + p * K + kk, mask=kmask, other=0.0).to(tl.float32)
            xn = round_to(x * rs_m[:, None] * gp[None, :], DTYPE)
            s = tl.sum(activation_scale(tl.max(tl.abs(xn), axis=1), qeps), axis=0)
            if p == 0:
                sx0 = tl.where(sel, s, sx0)
            elif p == 1:
                sx1 = tl.where(sel, s, sx1)
            else:
                sx2 = tl.where(sel, s, sx2)
    # ---- product: int8 codes recomputed per column block, P packed projections
    rb = tl.arange(0, BKB)
    acc0 = tl.zeros((BM, BN), dtype=tl.int32)
    acc1 = tl.zeros((BM, BN), dtype=tl.int32)
    acc2 = tl.zeros((BM, BN), dtype=tl.int32)
    for kb in range(0, tl.cdiv(KB, BKB)):
        bmask = rb < KB - kb * BKB
        for j in tl.static_range(4):
            col = (kb * BKB + rb) * 4 + j
            amask = mmask[:, None] & (col < K)[None, :]
            x = _raw_input(x_ptr, tok_ptr, hs_ptr, gn_ptr, outer_ptr, rm[:, None], col[None, :], M, K, stride_x,
                           rg[:, None], r0[:, None], eps, EMBED, GATE_IN, HAS_OUTER, DTYPE)  # fmt: skip
            for p in tl.static_range(P):
                if p == 0:
                    sx = sx0
                elif p == 1:
                    sx = sx1
                else:
                    sx = sx2
                gp = tl.load(gain_ptr + p * K + col, mask=col < K, other=0.0).to(tl.float32)
                xn = round_to(x * rs[:, None] * gp[None, :], DTYPE)
                q = tl.where(amask, quantize_activation(xn, sx[:, None], tl.float32), 0.0).to(tl.int32)  # (BM, BKB)
                wp = w_ptr + (p * N + rn[:, None]).to(tl.int64) * KB + kb * BKB + rb[None, :]
                byte = tl.load(wp, mask=nmask[:, None] & bmask[None, :], other=0).to(tl.int32)  # (BN, BKB)
                code = (byte >> (2 * j)) & 3
                w = code - ((code >> 1) << 2)
                part = tl.sum(q[:, None, :] * w[None, :, :], axis=2)  # (BM, BN)
                if p == 0:
                    acc0 += part
                elif p == 1:
                    acc1 += part
                else:
                    acc2 += part
    # ---- epilogue
    cmask = mmask[:, None] & nmask[None, :]
    orow = rm[:, None].to(tl.int64) * stride_out
    y0 = tl.math.div_rn(acc0.to(tl.float32), (sx0 * tl.load(sw_ptr))[:, None])
    if P > 1:
        y1 = tl.math.div_rn(acc1.to(tl.float32), (sx1 * tl.load(sw_ptr + 1))[:, None])
    if P > 2:
        y2 = tl.math.div_rn(acc2.to(tl.float32), (sx2 * tl.load(sw_ptr + 2))[:, None])
    if EPI == 0:  # store every projection
        tl.store(out_ptr + orow + rn[None, :], cast_to(y0, DTYPE), mask=cmask)
        if P > 1:
            tl.store(out_ptr + orow + N + rn[None, :], cast_to(y1, DTYPE), mask=cmask)
        if P > 2:
            tl.store(out_ptr + orow + 2 * N + rn[None, :], cast_to(y2, DTYPE), mask=cmask)
    elif EPI == 1:  # residual
        res = tl.load(res_ptr + orow + rn[None, :], mask=cmask, other=0.0).to(tl.float32)
        tl.store(out_ptr + orow + rn[None, :], cast_to(y0 + res, DTYPE), mask=cmask)
    elif EPI == 2:  # MLGRU: f, c, g
        f = tl.sigmoid(y0)
        if HAS_LB:
            lb = tl.load(lb_ptr + rn, mask=nmask, other=0.0).to(tl.float32)[None, :]
            f = lb + (1 - lb) * f
        c = y1 * tl.sigmoid(y1)
        hp = h_ptr + rm[:, None].to(tl.int64) * N + rn[None, :]
        h = tl.load(hp, mask=cmask, other=0.0)
        h = f * h + (1 - f) * c
        tl.store(hp, h, mask=cmask)
        if GATE_OUT:  # released gate: g (rounded) and SiLU(h); the o launch normalises g
            tl.store(out_ptr + orow + rn[None, :], cast_to(y2, DTYPE), mask=cmask)
            tl.store(aux_ptr + orow + rn[None, :], h * tl.sigmoid(h), mask=cmask)
        else:
            tl.store(out_ptr + orow + rn[None, :], cast_to(y2 * tl.sigmoid(h), DTYPE), mask=cmask)
    else:  # GLU: SiLU(g) * u
        g = round_to(y0, DTYPE)
        u = round_to(y1, DTYPE)
        tl.store(out_ptr + orow + rn[None, :], cast_to(round_to(g * tl.sigmoid(g), DTYPE) * u, DTYPE), mask=cmask)


def _configs() -> list[triton.Config]:
    return [triton.Config({"BN": bn, "BKB": bkb}, num_warps=w)
            for bn, bkb, w in [(16, 64, 4), (8, 128, 4), (32, 32, 4), (16, 128, 8), (8, 64, 2), (32, 64, 8),
                               (4, 128, 2)]]  # fmt: skip


_kernel = autotune(_configs(), ["M", "N", "K", "P", "EPI", "GATE_IN", "HAS_OUTER"],
                   interpret=triton.Config({"BN": 16, "BKB": 8}), restore_value=["out_ptr", "h_ptr"])(
    _fused_bitlinear_kernel
)  # fmt: skip


def _check(x, gains, w_packed, scales, in_features, epilogue, tokens, out):
    if epilogue not in EPILOGUES:
        raise ValueError(f"fused_bitlinear: epilogue must be one of {tuple(EPILOGUES)}, got {epilogue!r}")
    P, K = gains.shape
    need = EPILOGUES[epilogue]
    if need is not None and P != need:
        raise ValueError(f"fused_bitlinear: epilogue {epilogue!r} takes {need} projections, got {P}")
    if P > 3:
        raise ValueError(f"fused_bitlinear: at most 3 projections per launch, got {P}")
    if K != in_features or w_packed.dtype != torch.uint8 or w_packed.shape[1] != packed_row_bytes(K) or \
            w_packed.shape[0] % P or scales.numel() != P:  # fmt: skip
        raise ValueError(f"fused_bitlinear: gains {tuple(gains.shape)}, packed {tuple(w_packed.shape)} "
                         f"{w_packed.dtype}, scales {tuple(scales.shape)} and in_features={in_features} do not fit")
    M = tokens.shape[0] if tokens is not None else x.shape[0]
    if M > GEMV_MAX_BATCH:
        raise ValueError(f"fused_bitlinear: decode rows M={M} > {GEMV_MAX_BATCH}")
    if tokens is None and x.shape[1] != K:
        raise ValueError(f"fused_bitlinear: input width {x.shape[1]} != in_features {K}")
    if out.stride(-1) != 1 or (x is not None and x.stride(-1) != 1):
        raise ValueError("fused_bitlinear: input and output rows must be contiguous")
    return M, P, K, w_packed.shape[0] // P


def fused_bitlinear(
    x: torch.Tensor,
    gains: torch.Tensor,
    w_packed: torch.Tensor,
    scales: torch.Tensor,
    in_features: int,
    eps: float,
    out: torch.Tensor,
    *,
    epilogue: str = "store",
    outer: torch.Tensor | None = None,
    tokens: torch.Tensor | None = None,
    x_copy: torch.Tensor | None = None,
    gate_in: tuple[torch.Tensor, torch.Tensor] | None = None,
    residual: torch.Tensor | None = None,
    h: torch.Tensor | None = None,
    lower_bound: torch.Tensor | None = None,
    gate_out: torch.Tensor | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """One decode launch (kernel; see the module docs). Writes ``out`` (and ``h``, ``gate_out``,
    ``x_copy``) in place and returns ``out``.

    Args:
        x: input rows ``(M, K)``; with ``tokens``, the embedding table ``(V, K)``; with ``gate_in``,
            the gate pre-activations ``g (M, K)``.
        gains: BitLinear RMSNorm gains ``(P, K)``; ``w_packed`` uint8 ``(P N, ceil(K / 4))``;
            ``scales`` fp32 ``(P,)`` weight scales; ``eps`` every norm's epsilon.
        out: ``(M, N)`` (``"store"``: ``(M, P N)``) in ``dtype``, the activation dtype the reference
            rounds to.
        outer: gain ``(K,)`` of an RMSNorm applied first. ``tokens``: ``(M,)`` ids (embedding gather);
            ``x_copy``: ``(M, K)`` receives the gathered rows (the residual stream).
        gate_in: ``(g_norm gain (K,), SiLU(h) fp32 (M, K))``: the input is ``RMSNorm(g) SiLU(h)``.
        residual: ``(M, N)`` added by ``"residual"`` (may be ``out`` itself).
        h: fp32 state ``(M, N)`` updated by ``"mlgru"``; ``lower_bound`` ``(N,)`` or None;
            ``gate_out``: fp32 ``(M, N)``: store the released gate's ``g`` in ``out`` and
            ``SiLU(h)`` here instead of ``g sigmoid(h)``.
    """
    M, P, K, N = _check(x, gains, w_packed, scales, in_features, epilogue, tokens, out)
    check_device(x, gains, w_packed, out, h)
    if epilogue == "mlgru" and (h is None or h.dtype != torch.float32 or tuple(h.shape) != (M, N)):
        raise ValueError(f"fused_bitlinear: 'mlgru' needs an fp32 state h ({M}, {N})")
    if epilogue == "residual" and residual is None:
        raise ValueError("fused_bitlinear: 'residual' needs residual=")
    if M == 0 or N == 0:
        return out
    gn, hs = gate_in if gate_in is not None else (gains, out)
    dummy = out
    _kernel[lambda m: (triton.cdiv(N, m["BN"]),)](
        x, tokens if tokens is not None else dummy, hs, gn, outer if outer is not None else gains, gains.contiguous(),
        w_packed, scales.float().contiguous(),
        out, residual if residual is not None else dummy, h if h is not None else dummy,
        lower_bound if lower_bound is not None else dummy, gate_out if gate_out is not None else dummy,
        x_copy if x_copy is not None else dummy,
        M, N, K, w_packed.shape[1], x.stride(0), out.stride(0), float(eps), QUANT_EPS,
        P=P, EPI=_EPI_ID[epilogue], EMBED=tokens is not None, GATE_IN=gate_in is not None,
        HAS_OUTER=outer is not None, HAS_LB=lower_bound is not None, GATE_OUT=gate_out is not None,
        DTYPE=tl_dtype(dtype), BM=next_pow2(M), BLOCK_K=next_pow2(K),
    )  # fmt: skip
    return out


def fused_bitlinear_naive(
    x, gains, w_packed, scales, in_features, eps, out, *, epilogue="store", outer=None, tokens=None, x_copy=None,
    gate_in=None, residual=None, h=None, lower_bound=None, gate_out=None, dtype=torch.float32,
):  # fmt: skip
    """Reference of :func:`fused_bitlinear` in PyTorch (same arguments, same in-place writes): the
    input as the model builds it, ``BitLinear.forward_reference`` per projection, then the epilogue."""
    P, K = gains.shape
    N = w_packed.shape[0] // P
    v = x[tokens].to(dtype) if tokens is not None else x
    if x_copy is not None:
        x_copy.copy_(v)
    if gate_in is not None:
        gn, hs = gate_in
        v = (rms_norm(v.to(dtype), gn, eps) * hs).to(dtype)
    if outer is not None:
        v = rms_norm(v.to(dtype), outer, eps)
    ys = []
    for p in range(P):
        q, sx = activation_quantize(rms_norm(v.to(dtype), gains[p], eps))
        ys.append(packed_matmul_naive(q, w_packed[p * N : (p + 1) * N], sx, scales[p], K))  # fp32
    if epilogue == "store":
        out.copy_(torch.cat(ys, dim=1).to(dtype))
    elif epilogue == "residual":
        out.copy_((ys[0] + residual.float()).to(dtype))
    elif epilogue == "mlgru":
        f = torch.sigmoid(ys[0])
        if lower_bound is not None:
            f = lower_bound + (1 - lower_bound) * f
        h.copy_(f * h + (1 - f) * F.silu(ys[1]))
        if gate_out is not None:
            out.copy_(ys[2].to(dtype))
            gate_out.copy_(F.silu(h))
        else:
            out.copy_((ys[2] * torch.sigmoid(h)).to(dtype))
    else:
        out.copy_((F.silu(ys[0].to(dtype)) * ys[1].to(dtype)).to(dtype))
    return out


__all__ = ["EPILOGUES", "fused_bitlinear", "fused_bitlinear_naive"]
