"""Packed ternary inference: GEMV (batch 1-16) and GEMM (prefill) on 2-bit weights.

Weights stay in the storage code of ``matmulfree.quant`` (``docs/design.md``, "Ternary storage"): uint8
``(N, ceil(K/4))``, weight ``k`` of a row in bits ``2 (k mod 4)`` of byte ``k // 4``, ``+1 -> 01``,
``-1 -> 11``, ``0 -> 00``. The kernel loads bytes, decodes each of the four 2-bit lanes to int8
in registers (``v = c - 4 (c >> 1)``) and multiplies it with the int8 activations at columns
``4 k + j`` (int32 accumulation, exact), so weights are read from memory at 2 bits each. The GEMM
(prefill) multiplies on int8 tensor cores; the GEMV (decode, batch <= 16) with int32 multiply-adds
on CUDA cores, since at batch 1 the tensor-core path only adds layout shuffles. Output
``y = acc / (s_x s_w)`` (+ an optional residual), as ``BitLinear.forward_reference`` in packed mode.

``P`` projections of the same width may be stacked (rows ``p N .. (p+1) N - 1`` of the packed
matrix, activations ``x_q[p]``), so one launch computes e.g. the MLGRU's f, c and g projections.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from matmulfree.quant import packed_row_bytes, unpack_ternary

from ._common import autotune, cast_to, check_device
from .norm_quant import rmsnorm_quantize_multi, rmsnorm_quantize_naive

#: Largest batch handled by the GEMV configurations; larger batches use the GEMM ones.
GEMV_MAX_BATCH = 16


@triton.jit
def _rescale_store(acc, rm, rn, mmask, nmask, p, M, N, c_ptr, sa_ptr, sw_ptr, res_ptr, stride_cm, stride_rm,
                   HAS_RES: tl.constexpr):
    """Shared epilogue: ``y = acc / (s_x s_w)`` (+ residual) stored in projection ``p``'s columns."""
    sa = tl.load(sa_ptr + p * M + rm, mask=mmask, other=1.0)
    sw = tl.load(sw_ptr + p)
    y = tl.math.div_rn(acc.to(tl.float32), (sa * sw)[:, None])
    cmask = mmask[:, None] & nmask[None, :]
    if HAS_RES:
        y += tl.load(res_ptr + rm[:, None].to(tl.int64) * stride_rm + p * N + rn[None, :], mask=cmask,
                     other=0.0).to(tl.float32)  # fmt: skip
    tl.store(c_ptr + rm[:, None].to(tl.int64) * stride_cm + p * N + rn[None, :],
             cast_to(y, c_ptr.dtype.element_ty), mask=cmask)  # fmt: skip


def _packed_mm_body(
    a_ptr, w_ptr, c_ptr, sa_ptr, sw_ptr, res_ptr, M, N, K, KB,
    stride_ap, stride_am, stride_wn, stride_cm, stride_rm,
    HAS_RES: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BKB: tl.constexpr,
):  # fmt: skip
    pid_n = tl.program_id(0)
    p = tl.program_id(1)
    pid_m = tl.program_id(2)
    rm = pid_m * BM + tl.arange(0, BM)
    rn = pid_n * BN + tl.arange(0, BN)  # output column within projection p
    rb = tl.arange(0, BKB)  # byte index within the K tile
    mmask = rm < M
    nmask = rn < N
    a_base = a_ptr + p * stride_ap + rm[:, None].to(tl.int64) * stride_am
    w_ptrs = w_ptr + (p * N + rn[None, :]).to(tl.int64) * stride_wn + rb[:, None]
    acc = tl.zeros((BM, BN), dtype=tl.int32)
    for kb in range(0, tl.cdiv(KB, BKB)):
        bmask = rb < KB - kb * BKB
        byte = tl.load(w_ptrs, mask=bmask[:, None] & nmask[None, :], other=0).to(tl.int32)  # (BKB, BN)
        col = (kb * BKB + rb) * 4
        for j in tl.static_range(4):
            code = (byte >> (2 * j)) & 3
            w = (code - ((code >> 1) << 2)).to(tl.int8)
            a = tl.load(a_base + (col + j)[None, :], mask=mmask[:, None] & ((col + j) < K)[None, :], other=0)
            acc = tl.dot(a, w, acc, out_dtype=tl.int32)
        w_ptrs += BKB
    _rescale_store(acc, rm, rn, mmask, nmask, p, M, N, c_ptr, sa_ptr, sw_ptr, res_ptr, stride_cm, stride_rm, HAS_RES)


def _packed_gemv_body(
    a_ptr, w_ptr, c_ptr, sa_ptr, sw_ptr, res_ptr, M, N, K, KB,
    stride_ap, stride_am, stride_wn, stride_cm, stride_rm,
    HAS_RES: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BKB: tl.constexpr,
):  # fmt: skip
    """GEMV for a few rows (``BM`` = batch padded to a power of two, at most 16) without tensor
    cores: each program decodes ``BN`` packed weight rows and multiply-adds them with the int8
    activations in int32 registers (decode is bandwidth-bound; the weight bytes are read once)."""
    pid_n = tl.program_id(0)
    p = tl.program_id(1)
    rm = tl.arange(0, BM)
    rn = pid_n * BN + tl.arange(0, BN)
    rb = tl.arange(0, BKB)
    mmask = rm < M
    nmask = rn < N
    a_base = a_ptr + p * stride_ap + rm[:, None].to(tl.int64) * stride_am  # (BM, 1)
    w_ptrs = w_ptr + (p * N + rn[:, None]).to(tl.int64) * stride_wn + rb[None, :]  # (BN, BKB)
    if BM == 1:
        part = tl.zeros((BN, BKB), dtype=tl.int32)
    else:
        acc = tl.zeros((BM, BN), dtype=tl.int32)
    for kb in range(0, tl.cdiv(KB, BKB)):
        bmask = rb < KB - kb * BKB
        byte = tl.load(w_ptrs, mask=nmask[:, None] & bmask[None, :], other=0).to(tl.int32)
        col = (kb * BKB + rb) * 4
        for j in tl.static_range(4):
            code = (byte >> (2 * j)) & 3
            w = code - ((code >> 1) << 2)  # (BN, BKB) in {-1, 0, 1}
            a = tl.load(a_base + (col + j)[None, :], mask=mmask[:, None] & ((col + j) < K)[None, :], other=0)
            a = a.to(tl.int32)  # (BM, BKB)
            if BM == 1:
                part += w * a
            else:
                acc += tl.sum(a[:, None, :] * w[None, :, :], axis=2)
        w_ptrs += BKB
    if BM == 1:
        acc = tl.sum(part, axis=1)[None, :]
    _rescale_store(acc, rm, rn, mmask, nmask, p, M, N, c_ptr, sa_ptr, sw_ptr, res_ptr, stride_cm, stride_rm, HAS_RES)


def _gemv_configs() -> list[triton.Config]:
    return [triton.Config({"BN": bn, "BKB": bkb}, num_warps=w)
            for bn, bkb, w in [(4, 256, 2), (8, 128, 2), (8, 256, 4), (16, 128, 4), (16, 64, 2),
                               (32, 64, 4), (4, 512, 4), (2, 512, 2)]]  # fmt: skip


def _gemm_configs() -> list[triton.Config]:
    return [triton.Config({"BM": bm, "BN": bn, "BKB": bkb}, num_warps=w, num_stages=s)
            for bm, bn, bkb, w, s in [(128, 128, 32, 8, 3), (128, 64, 32, 4, 4), (64, 128, 32, 4, 4),
                                      (128, 256, 32, 8, 3), (64, 64, 64, 4, 4)]]  # fmt: skip


_KEY = ["M", "N", "K", "HAS_RES", "BM"]
# Interpreter: BKB=8 (32 columns per step) so that the small test shapes cross several K tiles.
_gemv_kernel = autotune(_gemv_configs(), _KEY, interpret=triton.Config({"BN": 16, "BKB": 8}))(
    triton.jit(_packed_gemv_body)
)
_gemm_kernel = autotune(_gemm_configs(), _KEY[:4], interpret=triton.Config({"BM": 32, "BN": 32, "BKB": 8}))(
    triton.jit(_packed_mm_body)
)


def packed_matmul(
    x_q: torch.Tensor,
    w_packed: torch.Tensor,
    s_x: torch.Tensor,
    s_w: torch.Tensor,
    in_features: int,
    out_dtype: torch.dtype = torch.float32,
    residual: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Kernel: int8 activations times packed ternary weights.

    Args:
        x_q: int8 ``(M, K)``, or ``(P, M, K)`` for ``P`` stacked projections.
        w_packed: uint8 ``(P N, ceil(K / 4))`` (code of ``matmulfree.quant.pack_ternary``).
        s_x: fp32 ``(M,)`` or ``(P, M)``; ``s_w``: fp32 0-d or ``(P,)``.
        in_features: ``K``.
        residual: optional ``(M, P N)`` added to the result.
    Returns:
        ``(M, P N)`` in ``out_dtype``: ``y[:, p N + n] = (x_q[p] @ W_q[p N + n]) / (s_x[p] s_w[p])``.
    Up to ``M = 16`` a CUDA-core GEMV kernel (int32 multiply-adds of the decoded weights), above
    that the tensor-core GEMM.
    """
    check_device(x_q, w_packed)
    if x_q.dtype != torch.int8 or w_packed.dtype != torch.uint8:
        raise TypeError(f"packed_matmul expects int8 activations and uint8 packed weights, got {x_q.dtype}, "
                        f"{w_packed.dtype}")  # fmt: skip
    xq3 = x_q if x_q.dim() == 3 else x_q.unsqueeze(0)
    P, M, K = xq3.shape
    if K != in_features or w_packed.shape[1] != packed_row_bytes(K) or w_packed.shape[0] % P:
        raise ValueError(f"packed_matmul: activations {tuple(x_q.shape)} do not fit packed weights "
                         f"{tuple(w_packed.shape)} with in_features={in_features}")  # fmt: skip
    N = w_packed.shape[0] // P
    if xq3.stride(2) != 1 or xq3.stride(1) != K:
        xq3 = xq3.contiguous()
    sx = s_x.reshape(P, M).float().contiguous()
    sw = s_w.reshape(-1).float().expand(P).contiguous() if s_w.numel() == 1 else s_w.reshape(P).float()
    c = out if out is not None else torch.empty(M, P * N, dtype=out_dtype, device=x_q.device)
    if M == 0 or N == 0:
        return c
    res = residual if residual is not None else c
    args = (xq3, w_packed, c, sx, sw, res, M, N, K, w_packed.shape[1],
            xq3.stride(0), xq3.stride(1), w_packed.stride(0), c.stride(0), res.stride(0))  # fmt: skip
    if M <= GEMV_MAX_BATCH:
        grid = lambda m: (triton.cdiv(N, m["BN"]), P)  # noqa: E731
        _gemv_kernel[grid](*args, HAS_RES=residual is not None, BM=triton.next_power_of_2(M))
    else:
        grid = lambda m: (triton.cdiv(N, m["BN"]), P, triton.cdiv(M, m["BM"]))  # noqa: E731
        _gemm_kernel[grid](*args, HAS_RES=residual is not None)
    return c


def packed_matmul_naive(x_q, w_packed, s_x, s_w, in_features, out_dtype=torch.float32, residual=None):
    """Reference of :func:`packed_matmul` (unpack, integer product, rescale)."""
    xq3 = x_q if x_q.dim() == 3 else x_q.unsqueeze(0)
    P = xq3.shape[0]
    w = unpack_ternary(w_packed, in_features, torch.int8)
    N = w.shape[0] // P
    sw = s_w.reshape(-1).float().expand(P)
    sx = s_x.reshape(P, -1).float()
    # float64 products of small integers are exact (and CUDA has no int64 matmul)
    ys = [(xq3[p].double() @ w[p * N : (p + 1) * N].double().T).float() / (sx[p][:, None] * sw[p])
          for p in range(P)]  # fmt: skip
    y = torch.cat(ys, dim=1)
    if residual is not None:
        y = y + residual.float()
    return y.to(out_dtype)


def packed_matmul_int32(x_q: torch.Tensor, w_packed: torch.Tensor, in_features: int) -> torch.Tensor:
    """The exact integer part of :func:`packed_matmul` through the kernel: ``x_q @ W_q^T`` as int64
    (via unit scales; exact while ``|sum| < 2**24``). Used by the tests."""
    M = x_q.shape[0]
    ones = torch.ones(M, dtype=torch.float32, device=x_q.device)
    y = packed_matmul(x_q, w_packed, ones, torch.ones((), device=x_q.device), in_features)
    return y.round().long()


def packed_bitlinear(
    x: torch.Tensor, norm_weight: torch.Tensor | None, eps: float, w_packed: torch.Tensor, w_scale: torch.Tensor,
    in_features: int,
) -> torch.Tensor:  # fmt: skip
    """Packed BitLinear forward: ``x (..., K)`` -> ``(..., N)`` in ``x``'s dtype (norm + int8
    quantization kernel, then the packed GEMV/GEMM; ``norm_weight=None``: no inner norm)."""
    x2 = x.reshape(-1, in_features)
    q, sx, _ = rmsnorm_quantize_multi(x2, None if norm_weight is None else norm_weight.unsqueeze(0), eps, ste=False)
    y = packed_matmul(q, w_packed, sx, w_scale, in_features, out_dtype=x.dtype)
    return y.reshape(*x.shape[:-1], w_packed.shape[0])


def packed_bitlinear_naive(x, norm_weight, eps, w_packed, w_scale, in_features):
    """Reference of :func:`packed_bitlinear` (``BitLinear.forward_reference`` in packed mode)."""
    q, sx, _ = rmsnorm_quantize_naive(x.reshape(-1, in_features), norm_weight, eps, ste=False)
    y = packed_matmul_naive(q, w_packed, sx, w_scale, in_features, out_dtype=torch.float32)
    return y.to(x.dtype).reshape(*x.shape[:-1], w_packed.shape[0])


__all__ = [
    "GEMV_MAX_BATCH",
    "packed_bitlinear",
    "packed_bitlinear_naive",
    "packed_matmul",
    "packed_matmul_int32",
    "packed_matmul_naive",
]
