"""Chunked linear recurrence ``h_t = f_t h_{t-1} + b_t`` (the MLGRU state update), fp32 state.

Inputs ``f, b (B, T, D)``, optional ``h0 (B, D)``; output all states ``h (B, T, D)``. The sequence
is cut into chunks of ``L`` steps and run in three launches, parallel over chunks, batch and
channels (each program owns ``BD`` contiguous channels, so every load is coalesced):

1. per chunk, from a zero state: the end state ``H_c`` and the decay product ``A_c = prod f``;
2. per (batch, channel block), sequentially over the ``T / L`` chunks: the carry into chunk
   ``c``: ``C_c = A_{c-1} C_{c-1} + H_{c-1}``, ``C_0 = h0``;
3. per chunk, the recurrence again from ``C_c``, storing every state.

The backward pass is the same recurrence run backwards, ``g_t = f_{t+1} g_{t+1} + dh_t``, with
``db_t = g_t``, ``df_t = g_t h_{t-1}`` fused into its third launch and ``dh0 = f_1 g_1``. Only
``f`` and the output ``h`` are saved. Reference: :func:`matmulfree.functional.linear_recurrence_naive`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from matmulfree.functional import linear_recurrence_naive

from ._common import INTERPRET, autotune, cast_to, check_device

#: Steps per chunk (the sequential length inside one program); short under the interpreter so
#: that small test sequences still span several chunks.
CHUNK = 16 if INTERPRET else 64


def _configs() -> list[triton.Config]:
    return [triton.Config({"BD": bd}, num_warps=w) for bd, w in [(64, 1), (128, 1), (128, 2), (256, 2), (512, 4)]]


_INTERP = triton.Config({"BD": 32})


@autotune(_configs(), key=["T", "D", "L", "REVERSE"], interpret=_INTERP)
@triton.jit
def _summary_kernel(f_ptr, x_ptr, a_ptr, h_ptr, T, D, NC, L: tl.constexpr, BD: tl.constexpr, REVERSE: tl.constexpr):
    """Per chunk from a zero state: ``H`` (end state) and ``A`` (product of the coefficients)."""
    c = tl.program_id(0)
    bi = tl.program_id(1).to(tl.int64)
    d = tl.program_id(2) * BD + tl.arange(0, BD)
    dm = d < D
    base = bi * T * D
    a = tl.full((BD,), 1.0, tl.float32)
    h = tl.zeros((BD,), dtype=tl.float32)
    zero = tl.zeros((BD,), dtype=tl.int32)  # masks are built on vectors (the interpreter needs it)
    for i in range(L):
        if REVERSE:
            t = zero + c * L + (L - 1 - i)
            coef = tl.load(f_ptr + base + (t + 1).to(tl.int64) * D + d, mask=dm & (t + 1 < T), other=0.0)
        else:
            t = zero + c * L + i
            coef = tl.load(f_ptr + base + t.to(tl.int64) * D + d, mask=dm & (t < T), other=1.0)
        x = tl.load(x_ptr + base + t.to(tl.int64) * D + d, mask=dm & (t < T), other=0.0)
        coef = coef.to(tl.float32)
        h = coef * h + x.to(tl.float32)
        a = a * coef
    o = (bi * NC + c) * D + d
    tl.store(a_ptr + o, a, mask=dm)
    tl.store(h_ptr + o, h, mask=dm)


@autotune(_configs(), key=["D", "NC", "REVERSE"], interpret=_INTERP)
@triton.jit
def _carry_kernel(a_ptr, h_ptr, c_ptr, h0_ptr, D, NC, HAS_H0: tl.constexpr, BD: tl.constexpr, REVERSE: tl.constexpr):
    """Sequential over chunks: the state entering each chunk."""
    bi = tl.program_id(0).to(tl.int64)
    d = tl.program_id(1) * BD + tl.arange(0, BD)
    dm = d < D
    if HAS_H0:
        carry = tl.load(h0_ptr + bi * D + d, mask=dm, other=0.0).to(tl.float32)
    else:
        carry = tl.zeros((BD,), dtype=tl.float32)
    for i in range(NC):
        c = NC - 1 - i if REVERSE else i
        o = (bi * NC + c) * D + d
        tl.store(c_ptr + o, carry, mask=dm)
        carry = tl.load(a_ptr + o, mask=dm, other=0.0) * carry + tl.load(h_ptr + o, mask=dm, other=0.0)


@autotune(_configs(), key=["T", "D", "L"], interpret=_INTERP)
@triton.jit
def _apply_fwd_kernel(f_ptr, b_ptr, c_ptr, out_ptr, T, D, NC, L: tl.constexpr, BD: tl.constexpr):
    """Every state of chunk ``c`` from its carry."""
    c = tl.program_id(0)
    bi = tl.program_id(1).to(tl.int64)
    d = tl.program_id(2) * BD + tl.arange(0, BD)
    dm = d < D
    base = bi * T * D
    h = tl.load(c_ptr + (bi * NC + c) * D + d, mask=dm, other=0.0)
    zero = tl.zeros((BD,), dtype=tl.int32)
    for i in range(L):
        t = zero + c * L + i
        m = dm & (t < T)
        off = base + t.to(tl.int64) * D + d
        f = tl.load(f_ptr + off, mask=m, other=1.0).to(tl.float32)
        h = f * h + tl.load(b_ptr + off, mask=m, other=0.0).to(tl.float32)
        tl.store(out_ptr + off, cast_to(h, out_ptr.dtype.element_ty), mask=m)


@autotune(_configs(), key=["T", "D", "L", "HAS_H0"], interpret=_INTERP)
@triton.jit
def _apply_bwd_kernel(
    f_ptr, h_ptr, h0_ptr, dh_ptr, c_ptr, df_ptr, db_ptr, T, D, NC,
    HAS_H0: tl.constexpr, L: tl.constexpr, BD: tl.constexpr,
):  # fmt: skip
    """Adjoint states ``g`` of chunk ``c`` backwards from its carry; ``db = g``, ``df = g h_{t-1}``."""
    c = tl.program_id(0)
    bi = tl.program_id(1).to(tl.int64)
    d = tl.program_id(2) * BD + tl.arange(0, BD)
    dm = d < D
    base = bi * T * D
    g = tl.load(c_ptr + (bi * NC + c) * D + d, mask=dm, other=0.0)
    zero = tl.zeros((BD,), dtype=tl.int32)
    for i in range(L):
        t = zero + c * L + (L - 1 - i)
        m = dm & (t < T)
        off = base + t.to(tl.int64) * D + d
        coef = tl.load(f_ptr + off + D, mask=dm & (t + 1 < T), other=0.0).to(tl.float32)
        g = coef * g + tl.load(dh_ptr + off, mask=m, other=0.0).to(tl.float32)
        h_prev = tl.load(h_ptr + off - D, mask=m & (t > 0), other=0.0).to(tl.float32)
        if HAS_H0:
            h_first = tl.load(h0_ptr + bi * D + d, mask=m & (t == 0), other=0.0).to(tl.float32)
            h_prev = tl.where(t == 0, h_first, h_prev)
        tl.store(db_ptr + off, cast_to(g, db_ptr.dtype.element_ty), mask=m)
        tl.store(df_ptr + off, cast_to(g * h_prev, df_ptr.dtype.element_ty), mask=m)


def _chunk(T: int) -> int:
    return min(CHUNK, triton.next_power_of_2(max(T, 1)))


def _carries(coef: torch.Tensor, x: torch.Tensor, h0: torch.Tensor | None, L: int, reverse: bool) -> torch.Tensor:
    """Launches 1 and 2: the carry entering every chunk, fp32 ``(B, NC, D)``."""
    B, T, D = x.shape
    NC = triton.cdiv(T, L)
    A = torch.empty(B, NC, D, dtype=torch.float32, device=x.device)
    H = torch.empty_like(A)
    C = torch.empty_like(A)
    _summary_kernel[lambda m: (NC, B, triton.cdiv(D, m["BD"]))](coef, x, A, H, T, D, NC, L=L, REVERSE=reverse)
    _carry_kernel[lambda m: (B, triton.cdiv(D, m["BD"]))](
        A, H, C, h0 if h0 is not None else C, D, NC, HAS_H0=h0 is not None, REVERSE=reverse
    )
    return C


def scan_forward(f: torch.Tensor, b: torch.Tensor, h0: torch.Tensor | None = None) -> torch.Tensor:
    """Kernel (no autograd): all states ``(B, T, D)`` in the promoted dtype of ``f`` and ``b``."""
    B, T, D = b.shape
    out = torch.empty(B, T, D, dtype=torch.promote_types(f.dtype, b.dtype), device=b.device)
    if out.numel() == 0:
        return out
    L = _chunk(T)
    C = _carries(f, b, h0, L, reverse=False)
    _apply_fwd_kernel[lambda m: (C.shape[1], B, triton.cdiv(D, m["BD"]))](f, b, C, out, T, D, C.shape[1], L=L)
    return out


def scan_backward(
    f: torch.Tensor, h: torch.Tensor, h0: torch.Tensor | None, dh: torch.Tensor, b_dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """Kernel: gradients ``(df, db)`` of all states given ``dh (B, T, D)``."""
    B, T, D = h.shape
    df = torch.empty(B, T, D, dtype=f.dtype, device=f.device)
    db = torch.empty(B, T, D, dtype=b_dtype, device=f.device)
    if h.numel() == 0:
        return df, db
    L = _chunk(T)
    C = _carries(f, dh, None, L, reverse=True)
    _apply_bwd_kernel[lambda m: (C.shape[1], B, triton.cdiv(D, m["BD"]))](
        f, h, h0 if h0 is not None else h, dh, C, df, db, T, D, C.shape[1], HAS_H0=h0 is not None, L=L
    )
    return df, db


class _ScanFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, f, b, h0):  # type: ignore[override]
        h = scan_forward(f, b, h0)
        ctx.save_for_backward(f, h, h0)
        ctx.b_dtype = b.dtype
        return h

    @staticmethod
    def backward(ctx, dh):  # type: ignore[override]
        f, h, h0 = ctx.saved_tensors
        df, db = scan_backward(f, h, h0, dh.contiguous(), ctx.b_dtype)
        dh0 = None
        if h0 is not None and ctx.needs_input_grad[2]:
            dh0 = (f[:, 0].float() * db[:, 0].float()).to(h0.dtype) if f.shape[1] else torch.zeros_like(h0)
        return df, db, dh0


def mlgru_scan(f: torch.Tensor, b: torch.Tensor, h0: torch.Tensor | None = None) -> torch.Tensor:
    """All states of ``h_t = f_t h_{t-1} + b_t``: ``f, b (B, T, D)``, ``h0 (B, D)`` or None ->
    ``h (B, T, D)``; fp32 state, output in the promoted input dtype; differentiable w.r.t.
    ``f``, ``b`` and ``h0``."""
    check_device(f, b, h0)
    if f.shape != b.shape or f.dim() != 3 or (h0 is not None and h0.shape != (b.shape[0], b.shape[2])):
        raise ValueError(f"mlgru_scan: f {tuple(f.shape)} and b {tuple(b.shape)} must be (B, T, D) and h0 "
                         f"{None if h0 is None else tuple(h0.shape)} (B, D)")  # fmt: skip
    return _ScanFunction.apply(f.contiguous(), b.contiguous(), None if h0 is None else h0.contiguous())


def mlgru_scan_naive(f: torch.Tensor, b: torch.Tensor, h0: torch.Tensor | None = None) -> torch.Tensor:
    """Reference of :func:`mlgru_scan`: the sequential loop, in fp32."""
    out = linear_recurrence_naive(f.float(), b.float(), None if h0 is None else h0.float())
    return out.to(torch.promote_types(f.dtype, b.dtype))


__all__ = ["CHUNK", "mlgru_scan", "mlgru_scan_naive", "scan_backward", "scan_forward"]
