"""Fused BitLinear for training: RMSNorm + int8 activations + ternary weights + int8 product.

Forward (``x (M, K)``, norm gain ``g (K,)``, latent weights ``W (N, K)`` fp32):

1. :func:`~.norm_quant.rmsnorm_quantize`: ``x_q`` int8, ``s_x (M,)``, ``rstd (M,)`` in one pass;
2. ``W_q = clamp(round(W s_w), -1, 1)`` int8 with ``s_w`` the absmean scale of ``matmulfree.quant``,
   cached across micro-batches while ``W`` is unchanged (keyed by its version counter and
   storage pointer);
3. ``acc = x_q W_q^T`` on int8 tensor cores (int32 accumulation, exact) and
   ``y = acc / (s_x s_w)``, rounded like the reference for bf16/fp16 outputs.

Only ``x`` (the autograd input), ``rstd`` and ``s_x`` (``M`` floats each) and the shared ``W_q``
are kept for backward; the straight-through backward recomputes the int8 activations (one pass of
the forward's own kernel, so bit-identical) instead of storing them:

* ``dx_n = (dy W_q) / s_w`` (cuBLAS on the exact ternary values), then the RMSNorm backward
  kernel gives ``dx`` (in place) and ``dg``;
* ``dW = sum_m (dy[m] / s_x[m])^T x_q[m]`` (Triton, reading the int8 codes, split over tokens).
"""

from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from matmulfree.quant import ternary_quantize_ste, weight_scale

from ._common import (
    INTERPRET,
    autotune,
    cast_to,
    check_device,
    dot_acc,
    next_pow2,
    round_half_even,
    round_to,
)
from .norm_quant import rmsnorm_quantize, rmsnorm_quantize_naive, rows_per_program, tl_dtype

# ----------------------------------------------------------------------------------------------
# ternary weights
# ----------------------------------------------------------------------------------------------


@autotune([triton.Config({"BLOCK": b}, num_warps=4) for b in (1024, 4096)], key=["numel"],
          interpret=triton.Config({"BLOCK": 256}))  # fmt: skip
@triton.jit
def _ternary_kernel(w_ptr, sw_ptr, q_ptr, numel, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    w = tl.load(w_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    sw = tl.load(sw_ptr)
    q = tl.minimum(tl.maximum(round_half_even(w * sw), -1.0), 1.0)
    tl.store(q_ptr + offs, q.to(tl.int8), mask=mask)


def ternary_weight(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Kernel: ``W (N, K)`` -> ``(W_q int8 (N, K), s_w fp32 0-d)``, equal to ``quant.ternary_quantize``."""
    check_device(w)
    sw = weight_scale(w).reshape(())
    w = w.detach().contiguous()
    q = torch.empty(w.shape, dtype=torch.int8, device=w.device)
    if w.numel():
        _ternary_kernel[lambda m: (triton.cdiv(w.numel(), m["BLOCK"]),)](w, sw, q, w.numel())
    return q, sw


class _WeightCache:
    """Quantized copies of latent weights, reused while the weight is unchanged.

    An entry (held by ``id`` with a weak reference, dropped when the parameter dies) is valid while
    ``(w._version, w.data_ptr(), shape, dtype)`` match, so an optimizer step (an in-place update
    bumps the version) or a new tensor invalidates it. Micro-batches of one step (gradient
    accumulation) share one quantization.
    """

    def __init__(self) -> None:
        self._entries: dict[int, tuple] = {}
        self._converted: dict[int, tuple] = {}
        self.hits = self.misses = 0

    def get(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        key = (w._version, w.data_ptr(), tuple(w.shape), w.dtype)
        entry = self._entries.get(id(w))
        if entry is not None and entry[0]() is w and entry[1] == key:
            self.hits += 1
            return entry[2], entry[3]
        self.misses += 1
        q, sw = ternary_weight(w)
        ident = id(w)
        ref = weakref.ref(w, lambda _r, ident=ident, entries=self._entries: entries.pop(ident, None))
        self._entries[ident] = (ref, key, q, sw)
        return q, sw

    def as_dtype(self, wq: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """``wq`` (int8 ternary) in a float dtype (exact), cached beside ``wq`` while it is alive."""
        key = (wq.data_ptr(), wq._version, dtype)
        hit = self._converted.get(id(wq))
        if hit is not None and hit[0]() is wq and hit[1] == key:
            return hit[2]
        out = wq.to(dtype)
        ident = id(wq)
        ref = weakref.ref(wq, lambda _r, ident=ident, d=self._converted: d.pop(ident, None))
        self._converted[ident] = (ref, key, out)
        return out

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        self._entries.clear()
        self._converted.clear()
        self.hits = self.misses = 0


#: Process-wide cache of quantized weights used by the training path (a ``_WeightCache``).
weight_cache = _WeightCache()

# ----------------------------------------------------------------------------------------------
# int8 x int8 -> int32 product with rescale
# ----------------------------------------------------------------------------------------------


def _mm_configs() -> list[triton.Config]:
    out = []
    for bm, bn, bk, w, s in [(128, 128, 128, 8, 3), (128, 256, 128, 8, 3), (256, 128, 128, 8, 3),
                              (128, 256, 64, 8, 4), (128, 128, 128, 4, 4), (64, 128, 128, 4, 4)]:  # fmt: skip
        out.append(triton.Config({"BM": bm, "BN": bn, "BK": bk, "GROUP_M": 8}, num_warps=w, num_stages=s))
    return out


@triton.jit
def _tile_pids(M, N, BM: tl.constexpr, BN: tl.constexpr, GROUP_M: tl.constexpr):
    """Grouped ordering of output tiles (better L2 reuse of the B operand)."""
    pid = tl.program_id(0)
    n_m = tl.cdiv(M, BM)
    n_n = tl.cdiv(N, BN)
    per_group = GROUP_M * n_n
    group = pid // per_group
    first_m = group * GROUP_M
    size_m = tl.minimum(n_m - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % size_m
    pid_n = (pid % per_group) // size_m
    return pid_m, pid_n


@autotune(_mm_configs(), key=["M", "N", "K"],
          interpret=triton.Config({"BM": 32, "BN": 32, "BK": 64, "GROUP_M": 2}))  # fmt: skip
@triton.jit
def _int8_mm_kernel(
    a_ptr, b_ptr, c_ptr, sa_ptr, sb_ptr, M, N, K,
    stride_am, stride_bn, stride_cm,
    ROUND: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GROUP_M: tl.constexpr,
):  # fmt: skip
    """``c = (a @ b^T) / (sa[m] * sb)``; a int8 (M, K), b int8 (N, K); ROUND: dtype the scale product
    is rounded to first (as the reference's ``(s_x * s_w).to(dtype)``). The exact int32 sum is
    rescaled in fp32 and rounded once to the output dtype (the reference rounds the sum to bf16
    before dividing, so bf16 outputs differ from it by at most about one bf16 ulp)."""
    pid_m, pid_n = _tile_pids(M, N, BM, BN, GROUP_M)
    rm = pid_m * BM + tl.arange(0, BM)
    rn = pid_n * BN + tl.arange(0, BN)
    rk = tl.arange(0, BK)
    a_ptrs = a_ptr + rm[:, None].to(tl.int64) * stride_am + rk[None, :]
    b_ptrs = b_ptr + rn[None, :].to(tl.int64) * stride_bn + rk[:, None]
    acc = tl.zeros((BM, BN), dtype=tl.int32)
    for k in range(0, tl.cdiv(K, BK)):
        kmask = rk < K - k * BK
        a = tl.load(a_ptrs, mask=(rm[:, None] < M) & kmask[None, :], other=0)
        b = tl.load(b_ptrs, mask=(rn[None, :] < N) & kmask[:, None], other=0)
        acc = tl.dot(a, b, acc, out_dtype=tl.int32)
        a_ptrs += BK
        b_ptrs += BK
    sa = tl.load(sa_ptr + rm, mask=rm < M, other=1.0)
    sb = tl.load(sb_ptr)
    inv = 1.0 / round_to(sa * sb, ROUND)  # one reciprocal per row, a multiply per element
    y = acc.to(tl.float32) * inv[:, None]
    c_ptrs = c_ptr + rm[:, None].to(tl.int64) * stride_cm + rn[None, :]
    tl.store(c_ptrs, cast_to(y, c_ptr.dtype.element_ty), mask=(rm[:, None] < M) & (rn[None, :] < N))


def int8_matmul(
    a: torch.Tensor, b: torch.Tensor, sa: torch.Tensor, sb: torch.Tensor, out_dtype: torch.dtype,
    round_like_reference: bool = True,
) -> torch.Tensor:  # fmt: skip
    """Kernel: ``a`` int8 ``(M, K)``, ``b`` int8 ``(N, K)``, ``sa (M,)``, ``sb`` 0-d ->
    ``(a @ b^T) / (sa sb)`` in ``out_dtype`` (the int32 sum is exact; fp32 rescale, one rounding)."""
    check_device(a, b)
    if a.dtype != torch.int8 or b.dtype != torch.int8:
        raise TypeError(f"int8_matmul expects int8 operands, got {a.dtype} and {b.dtype}")
    a, b = a.contiguous(), b.contiguous()
    M, K = a.shape
    N = b.shape[0]
    c = torch.empty(M, N, dtype=out_dtype, device=a.device)
    if M == 0 or N == 0:
        return c
    rnd = tl_dtype(out_dtype) if round_like_reference else tl.float32
    grid = lambda m: (triton.cdiv(M, m["BM"]) * triton.cdiv(N, m["BN"]),)  # noqa: E731
    _int8_mm_kernel[grid](a, b, c, sa.float().contiguous(), sb.float().reshape(1), M, N, K,
                          a.stride(0), b.stride(0), c.stride(0), ROUND=rnd)  # fmt: skip
    return c


def int8_matmul_naive(a, b, sa, sb, out_dtype: torch.dtype) -> torch.Tensor:
    """Reference of :func:`int8_matmul`: the reference BitLinear's arithmetic in ``out_dtype``."""
    num = (a.double() @ b.double().T).to(out_dtype)  # exact integer sum, rounded once (as cuBLAS does)
    return num / (sa.float().reshape(-1, 1) * sb.float()).to(out_dtype)


# ----------------------------------------------------------------------------------------------
# backward kernels
# ----------------------------------------------------------------------------------------------


def _bwd_mm_configs() -> list[triton.Config]:
    return [triton.Config({"BM": bm, "BN": bn, "BK": bk, "GROUP_M": 8}, num_warps=w, num_stages=s)
            for bm, bn, bk, w, s in [(128, 128, 64, 8, 3), (128, 64, 64, 4, 4), (64, 128, 64, 4, 4),
                                      (64, 64, 64, 4, 4)]]  # fmt: skip


@autotune([triton.Config({}, num_warps=w) for w in (2, 4, 8, 16)], key=["M", "K", "RB", "ITERS"],
          interpret=triton.Config({}, num_warps=4))  # fmt: skip
@triton.jit
def _norm_bwd_kernel(
    x_ptr, g_ptr, rstd_ptr, gx_ptr, dg_ptr, sw_ptr, M, K, stride_xm, stride_gm,
    RB: tl.constexpr, ITERS: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    """RMSNorm backward, in place: ``gx`` holds ``(dL/dx_n) s_w`` (the product ``dy W_q``) on entry
    and ``dL/dx`` on exit; each program does ``ITERS`` blocks of ``RB`` rows and writes its partial
    sum of ``dL/dg`` to ``dg[program] (K,)``."""
    pid = tl.program_id(0)
    inv_sw = 1.0 / tl.load(sw_ptr)
    cols = tl.arange(0, BLOCK_K)
    cmask = cols < K
    g = tl.load(g_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
    dg = tl.zeros((RB, BLOCK_K), dtype=tl.float32)
    for it in range(ITERS):
        rows = (pid * ITERS + it) * RB + tl.arange(0, RB)
        rmask = rows < M
        mask = rmask[:, None] & cmask[None, :]
        r64 = rows[:, None].to(tl.int64)
        x = tl.load(x_ptr + r64 * stride_xm + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        gy = tl.load(gx_ptr + r64 * stride_gm + cols[None, :], mask=mask, other=0.0).to(tl.float32) * inv_sw
        rstd = tl.load(rstd_ptr + rows, mask=rmask, other=0.0)
        xh = x * rstd[:, None]
        wg = gy * g[None, :]
        c = tl.sum(wg * xh, axis=1) / K
        dx = rstd[:, None] * (wg - xh * c[:, None])
        tl.store(gx_ptr + r64 * stride_gm + cols[None, :], cast_to(dx, gx_ptr.dtype.element_ty), mask=mask)
        dg += gy * xh
    tl.store(dg_ptr + pid.to(tl.int64) * K + cols, tl.sum(dg, axis=0), mask=cmask)


@autotune(_bwd_mm_configs(), key=["M", "N", "K", "IEEE"],
          interpret=triton.Config({"BM": 32, "BN": 32, "BK": 32, "GROUP_M": 2}))  # fmt: skip
@triton.jit
def _dw_kernel(
    dy_ptr, q_ptr, sx_ptr, out_ptr, M, N, K, SPLIT, stride_dym, stride_qm,
    IEEE: tl.constexpr, DTYPE: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GROUP_M: tl.constexpr,
):  # fmt: skip
    """``out[s] (N, K) = sum_{m in split s} dy[m]^T (x_q[m] / s_x[m])`` with the int8 codes ``x_q``
    recomputed for the backward pass (the reference's ``grad_W = grad_w_int s_w``)."""
    pid_n, pid_k = _tile_pids(N, K, BN, BK, GROUP_M)
    split = tl.program_id(1)
    rn = pid_n * BN + tl.arange(0, BN)
    rk = pid_k * BK + tl.arange(0, BK)
    kmask = rk < K
    per = tl.cdiv(tl.cdiv(M, SPLIT), BM) * BM
    m_start = split * per
    m_end = tl.minimum(m_start + per, M)
    acc = tl.zeros((BN, BK), dtype=tl.float32)
    for m0 in range(m_start, m_end, BM):
        rm = m0 + tl.arange(0, BM)
        mmask = rm < m_end
        rm64 = rm.to(tl.int64)
        dy = tl.load(dy_ptr + rm64[:, None] * stride_dym + rn[None, :],
                     mask=mmask[:, None] & (rn[None, :] < N), other=0.0)  # fmt: skip
        inv_sx = 1.0 / tl.load(sx_ptr + rm, mask=mmask, other=1.0)
        q = tl.load(q_ptr + rm64[:, None] * stride_qm + rk[None, :], mask=mmask[:, None] & kmask[None, :], other=0)
        b = cast_to(q.to(tl.float32) * inv_sx[:, None], DTYPE)  # x_q / s_x: the dequantized activations
        acc = dot_acc(tl.trans(dy), b, acc, IEEE)
    o = out_ptr + split.to(tl.int64) * N * K + rn[:, None].to(tl.int64) * K + rk[None, :]
    tl.store(o, acc, mask=(rn[:, None] < N) & kmask[None, :])


def _dw_split(M: int, N: int, K: int, device: torch.device) -> int:
    """Split of the token dimension so that the weight-gradient grid fills the GPU."""
    if INTERPRET or device.type != "cuda":
        return 2 if M >= 64 else 1
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    tiles = triton.cdiv(N, 128) * triton.cdiv(K, 128)
    return max(1, min(triton.cdiv(2 * sms, tiles), triton.cdiv(M, 1024)))


#: How :func:`weight_grad` computes ``dW``: ``"triton"`` (reads the int8 codes, no extra buffer) or
#: ``"cublas"`` (dequantizes the codes to the activation dtype, one ``(M, K)`` temporary, then cuBLAS).
DW_IMPL = "triton"


def weight_grad(dy: torch.Tensor, q: torch.Tensor, sx: torch.Tensor, dtype: torch.dtype,
                impl: str | None = None) -> torch.Tensor:  # fmt: skip
    """``dW (N, K) fp32 = sum_m dy[m]^T (x_q[m] / s_x[m])`` for ``dy (M, N)``, int8 ``x_q (M, K)``;
    products in ``dtype`` (bf16/fp16 tensor cores, or IEEE fp32). ``impl``: see :data:`DW_IMPL`."""
    if (impl or DW_IMPL) == "cublas":
        xdq = (q.to(torch.float32) / sx[:, None]).to(dtype)
        return torch.matmul(dy.t(), xdq).float()
    M, N = dy.shape
    K = q.shape[1]
    split = _dw_split(M, N, K, dy.device)
    part = torch.empty(split, N, K, dtype=torch.float32, device=dy.device)
    grid = lambda m: (triton.cdiv(N, m["BN"]) * triton.cdiv(K, m["BK"]), split)  # noqa: E731
    _dw_kernel[grid](dy, q, sx, part, M, N, K, split, dy.stride(0), q.stride(0),
                     IEEE=dtype == torch.float32, DTYPE=tl_dtype(dtype))  # fmt: skip
    return part[0] if split == 1 else part.sum(0)


# ----------------------------------------------------------------------------------------------
# autograd
# ----------------------------------------------------------------------------------------------


class _BitLinearFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, g, w, eps, cache):  # type: ignore[override]
        K = x.shape[-1]
        x2 = x.reshape(-1, K)
        if x2.stride(-1) != 1 or (x2.shape[0] > 1 and x2.stride(0) != K):
            x2 = x2.contiguous()
        q, sx, rstd = rmsnorm_quantize(x2, g, eps, ste=True)
        wq, sw = weight_cache.get(w) if cache else ternary_weight(w)
        y = int8_matmul(q, wq, sx, sw, x.dtype)
        del q
        ctx.save_for_backward(x2, g, rstd, sx, wq, sw)
        ctx.x_shape, ctx.w_dtype, ctx.eps = x.shape, w.dtype, eps
        return y.reshape(*x.shape[:-1], w.shape[0])

    @staticmethod
    def backward(ctx, dy):  # type: ignore[override]
        x2, g, rstd, sx, wq, sw = ctx.saved_tensors
        M, K = x2.shape
        N = wq.shape[0]
        dy2 = dy.reshape(-1, N).to(x2.dtype).contiguous()
        dx = dg = dw = None
        if M == 0:
            zeros = torch.zeros
            return (zeros(ctx.x_shape, dtype=x2.dtype, device=x2.device),
                    None if g is None else torch.zeros_like(g),
                    zeros(N, K, dtype=ctx.w_dtype, device=x2.device), None, None)  # fmt: skip
        if g is None and ctx.needs_input_grad[0]:  # no inner norm: dL/dx = (dy W_q) / s_w
            dx = (torch.matmul(dy2, weight_cache.as_dtype(wq, x2.dtype)) / sw.to(x2.dtype)).reshape(ctx.x_shape)
        elif ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
            # dy W_q: the exact ternary weights in the activation dtype, on cuBLAS (1/s_w is applied
            # inside the norm backward kernel, which then overwrites this buffer with dL/dx)
            gx = torch.matmul(dy2, weight_cache.as_dtype(wq, x2.dtype))
            rb = rows_per_program(M, next_pow2(K))  # fixed on the host: it sizes the dg partial sums
            iters = 1 if INTERPRET else max(1, min(32, M // (rb * 1024)))
            dg_part = torch.empty(triton.cdiv(M, rb * iters), K, dtype=torch.float32, device=x2.device)
            _norm_bwd_kernel[(dg_part.shape[0],)](x2, g, rstd, gx, dg_part, sw.reshape(1), M, K, x2.stride(0),
                                                  gx.stride(0), RB=rb, ITERS=iters, BLOCK_K=next_pow2(K))  # fmt: skip
            dx = gx.reshape(ctx.x_shape)
            dg = dg_part.sum(0).to(g.dtype)
        if ctx.needs_input_grad[2]:
            # recompute the int8 codes (bit-identical to the forward's) instead of having stored them
            q, _, _ = rmsnorm_quantize(x2, g, ctx.eps, ste=True)
            dw = weight_grad(dy2, q, sx, x2.dtype).to(ctx.w_dtype)
            del q
        return dx, dg, dw, None, None


def bitlinear_train(
    x: torch.Tensor, norm_weight: torch.Tensor | None, weight: torch.Tensor, eps: float, cache: bool = True
) -> torch.Tensor:
    """Fused BitLinear (latent weights), differentiable w.r.t. ``x``, ``norm_weight`` and ``weight``.

    ``x (..., K)``, ``norm_weight (K,)`` (``None``: no inner RMSNorm), ``weight (N, K)`` ->
    ``y (..., N)`` in ``x``'s dtype.
    ``cache``: reuse the quantized weights while ``weight`` is unchanged (see :data:`weight_cache`).
    """
    check_device(x, weight)
    gain_ok = norm_weight is None or norm_weight.shape == (weight.shape[1],)
    if weight.dim() != 2 or x.shape[-1] != weight.shape[1] or not gain_ok:
        gshape = None if norm_weight is None else tuple(norm_weight.shape)
        raise ValueError(f"bitlinear_train: x {tuple(x.shape)}, norm weight {gshape} and "
                         f"weight {tuple(weight.shape)} do not fit")  # fmt: skip
    return _BitLinearFunction.apply(x, norm_weight, weight, eps, cache)


def bitlinear_train_naive(x: torch.Tensor, norm_weight: torch.Tensor | None, weight: torch.Tensor, eps: float):
    """Reference of :func:`bitlinear_train` (the arithmetic of ``BitLinear.forward_reference``)."""
    from matmulfree.functional import rms_norm
    from matmulfree.quant import activation_quantize_ste

    x_n = x if norm_weight is None else rms_norm(x, norm_weight, eps)
    x_int, s_x = activation_quantize_ste(x_n)
    w_int, s_w = ternary_quantize_ste(weight)
    return F.linear(x_int, w_int.to(x_int.dtype)) / (s_x * s_w).to(x_int.dtype)


__all__ = [
    "bitlinear_train",
    "bitlinear_train_naive",
    "int8_matmul",
    "int8_matmul_naive",
    "ternary_weight",
    "weight_cache",
    "rmsnorm_quantize_naive",
]
