"""RWKV-4 WKV recurrence, forward and backward, in fp32 (the math: :mod:`matmulfree.wkv`).

Inputs: decay ``w > 0`` and bonus ``u`` ``(D,)``, keys and values ``k, v (B, T, D)``, the state
before the first token ``(aa, bb, pp)`` (each ``(B, D)``). Every program owns ``BD`` channels of one
sequence and walks through time with fp32 registers (parallel over batch x channel, sequential
over time); all loads along a time step are contiguous.

Forward: the running-max step of :func:`matmulfree.wkv.wkv_step` for every ``t``, storing
``wkv_t`` and the final state; with ``STORE_STATES`` it also stores the state *before* each token
(``3 x (B, T, D)``), which only the backward pass asks for (it recomputes the forward instead of
keeping that history alive between the passes).

Backward, walking time backwards with the gradients of the true sums ``A_t = aa_t e^{pp_t}`` and
``B_t = bb_t e^{pp_t}`` held as ``(ga, gb) e^{n}`` with their own running maximum ``n`` (so no
``e^{k}`` is ever formed on its own; every factor below is at most 1 or ``e^w``), with
``Z_t = B_{t-1} + e^{u + k_t}`` and ``y_t = wkv_t``:

* ``dk_t = dy_t e^{u+k_t} (v_t - y_t) / Z_t + dA_t e^{k_t} v_t + dB_t e^{k_t}``,
  ``dv_t = dy_t e^{u+k_t} / Z_t + dA_t e^{k_t}``;
* ``du = sum_t dy_t e^{u+k_t} (v_t - y_t) / Z_t``, ``dw = -sum_t e^{-w} (dA_t A_{t-1} + dB_t B_{t-1})``;
* ``dA_{t-1} = dy_t / Z_t + e^{-w} dA_t``, ``dB_{t-1} = -dy_t y_t / Z_t + e^{-w} dB_t``.

The returned ``pp`` is a shift (the gradients of ``aa`` and ``bb`` are taken with it constant, as
in :func:`matmulfree.wkv.wkv_chunked`); gradients flow into ``aa``, ``bb`` and ``pp`` of the
initial state. Reference: :func:`wkv_naive` (the sequential PyTorch loop).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from matmulfree.wkv import WKVState, wkv_initial_state, wkv_sequential

from ._common import autotune, check_device


def _configs() -> list[triton.Config]:
    return [triton.Config({"BD": bd}, num_warps=w) for bd, w in [(32, 1), (64, 1), (64, 2), (128, 2), (128, 4)]]


_INTERP = triton.Config({"BD": 16})


@autotune(_configs(), key=["T", "D", "STORE_STATES"], interpret=_INTERP)
@triton.jit
def _wkv_fwd_kernel(
    w_ptr, u_ptr, k_ptr, v_ptr, s0_ptr, y_ptr, s1_ptr, hist_ptr, B, T, D,
    STORE_STATES: tl.constexpr, BD: tl.constexpr,
):  # fmt: skip
    bi = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1) * BD + tl.arange(0, BD)
    cm = c < D
    w = tl.load(w_ptr + c, mask=cm, other=1.0)
    u = tl.load(u_ptr + c, mask=cm, other=0.0)
    so = bi * D + c  # state (3, B, D): aa, bb, pp
    aa = tl.load(s0_ptr + so, mask=cm, other=0.0)
    bb = tl.load(s0_ptr + B * D + so, mask=cm, other=0.0)
    pp = tl.load(s0_ptr + 2 * B * D + so, mask=cm, other=-1e38)
    base = bi * T * D + c
    for t in range(T):
        off = base + t * D
        if STORE_STATES:
            tl.store(hist_ptr + off, aa, mask=cm)
            tl.store(hist_ptr + B * T * D + off, bb, mask=cm)
            tl.store(hist_ptr + 2 * B * T * D + off, pp, mask=cm)
        k = tl.load(k_ptr + off, mask=cm, other=0.0)
        v = tl.load(v_ptr + off, mask=cm, other=0.0)
        ww = u + k
        p = tl.maximum(pp, ww)
        e1 = tl.exp(pp - p)
        e2 = tl.exp(ww - p)
        tl.store(y_ptr + off, (e1 * aa + e2 * v) / (e1 * bb + e2), mask=cm)
        ww = pp - w
        p = tl.maximum(ww, k)
        e1 = tl.exp(ww - p)
        e2 = tl.exp(k - p)
        aa = e1 * aa + e2 * v
        bb = e1 * bb + e2
        pp = p
    tl.store(s1_ptr + so, aa, mask=cm)
    tl.store(s1_ptr + B * D + so, bb, mask=cm)
    tl.store(s1_ptr + 2 * B * D + so, pp, mask=cm)


@autotune(_configs(), key=["T", "D"], interpret=_INTERP)
@triton.jit
def _wkv_bwd_kernel(
    w_ptr, u_ptr, k_ptr, v_ptr, hist_ptr, s0_ptr, s1_ptr, gy_ptr, gs1_ptr,
    gk_ptr, gv_ptr, gw_ptr, gu_ptr, gs0_ptr, B, T, D, BD: tl.constexpr,
):  # fmt: skip
    bi = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1) * BD + tl.arange(0, BD)
    cm = c < D
    w = tl.load(w_ptr + c, mask=cm, other=1.0)
    u = tl.load(u_ptr + c, mask=cm, other=0.0)
    so = bi * D + c
    # gradients of the final true sums A_T = aa e^pp, B_T = bb e^pp: (g_aa, g_bb) e^{-pp}
    ga = tl.load(gs1_ptr + so, mask=cm, other=0.0)
    gb = tl.load(gs1_ptr + B * D + so, mask=cm, other=0.0)
    n = -tl.load(s1_ptr + 2 * B * D + so, mask=cm, other=0.0)
    gw = tl.zeros((BD,), dtype=tl.float32)
    gu = tl.zeros((BD,), dtype=tl.float32)
    base = bi * T * D + c
    for i in range(T):
        off = base + (T - 1 - i) * D
        aa = tl.load(hist_ptr + off, mask=cm, other=0.0)
        bb = tl.load(hist_ptr + B * T * D + off, mask=cm, other=0.0)
        pp = tl.load(hist_ptr + 2 * B * T * D + off, mask=cm, other=0.0)
        k = tl.load(k_ptr + off, mask=cm, other=0.0)
        v = tl.load(v_ptr + off, mask=cm, other=0.0)
        gy = tl.load(gy_ptr + off, mask=cm, other=0.0)
        # the output y_t = (A + e^{u+k} v) / Z, shifted by M
        ww = u + k
        m = tl.maximum(pp, ww)
        e1 = tl.exp(pp - m)
        e2 = tl.exp(ww - m)
        z = e1 * bb + e2
        y = (e1 * aa + e2 * v) / z
        cy = gy / z  # dy / Z, times e^{M}
        # what the state after t sends back: dA_t e^{k} = ga e^{n + k}
        ek = tl.exp(n + k)
        gk = ga * ek * v + gb * ek + cy * e2 * (v - y)
        gv = ga * ek + cy * e2
        gu += cy * e2 * (v - y)
        gw -= (ga * aa + gb * bb) * tl.exp(n + pp - w)
        tl.store(gk_ptr + off, gk, mask=cm)
        tl.store(gv_ptr + off, gv, mask=cm)
        # dA_{t-1} = dy / Z + e^{-w} dA_t (and dB alike), re-shifted to the larger exponent
        n_new = tl.maximum(-m, n - w)
        f1 = tl.exp(-m - n_new)
        f2 = tl.exp(n - w - n_new)
        ga = cy * f1 + ga * f2
        gb = -cy * y * f1 + gb * f2
        n = n_new
    aa0 = tl.load(s0_ptr + so, mask=cm, other=0.0)
    bb0 = tl.load(s0_ptr + B * D + so, mask=cm, other=0.0)
    pp0 = tl.load(s0_ptr + 2 * B * D + so, mask=cm, other=0.0)
    scale = tl.exp(n + pp0)
    tl.store(gs0_ptr + so, ga * scale, mask=cm)
    tl.store(gs0_ptr + B * D + so, gb * scale, mask=cm)
    tl.store(gs0_ptr + 2 * B * D + so, (ga * aa0 + gb * bb0) * scale, mask=cm)
    tl.store(gw_ptr + so, gw, mask=cm)
    tl.store(gu_ptr + so, gu, mask=cm)


def _grid(B: int, D: int):
    return lambda m: (B, triton.cdiv(D, m["BD"]))


def wkv_forward(w, u, k, v, s0: torch.Tensor, store_states: bool = False):
    """Kernel (no autograd): ``s0 (3, B, D)`` -> ``(y (B, T, D), s1 (3, B, D), history or None)``."""
    B, T, D = k.shape
    y = torch.empty_like(k)
    s1 = torch.empty_like(s0)
    hist = torch.empty(3, B, T, D, dtype=torch.float32, device=k.device) if store_states else y
    if B * D:
        _wkv_fwd_kernel[_grid(B, D)](w, u, k, v, s0, y, s1, hist, B, T, D, STORE_STATES=store_states)
    return y, s1, (hist if store_states else None)


class _WKVFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w, u, k, v, s0):  # type: ignore[override]
        y, s1, _ = wkv_forward(w, u, k, v, s0)
        ctx.save_for_backward(w, u, k, v, s0, s1)
        return y, s1

    @staticmethod
    def backward(ctx, gy, gs1):  # type: ignore[override]
        w, u, k, v, s0, s1 = ctx.saved_tensors
        B, T, D = k.shape
        gy = torch.zeros_like(k) if gy is None else gy.float().contiguous()
        gs1 = torch.zeros_like(s1) if gs1 is None else gs1.float().contiguous()
        _, _, hist = wkv_forward(w, u, k, v, s0, store_states=True)
        gk, gv = torch.empty_like(k), torch.empty_like(v)
        gw, gu = torch.empty(B, D, dtype=torch.float32, device=k.device), torch.empty(B, D, dtype=torch.float32,
                                                                                  device=k.device)  # fmt: skip
        gs0 = torch.empty_like(s0)
        if B * D:
            _wkv_bwd_kernel[_grid(B, D)](w, u, k, v, hist, s0, s1, gy, gs1, gk, gv, gw, gu, gs0, B, T, D)
        return gw.sum(0), gu.sum(0), gk, gv, gs0


def wkv(w: torch.Tensor, u: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
        state: WKVState | None = None) -> tuple[torch.Tensor, WKVState]:  # fmt: skip
    """Fused WKV: ``w, u (D,)``, ``k, v (B, T, D)``, ``state (aa, bb, pp)`` each ``(B, D)`` or None ->
    ``(wkv (B, T, D) fp32, state after the last token)``; differentiable w.r.t. all inputs."""
    check_device(w, u, k, v)
    B, T, D = k.shape
    if v.shape != k.shape or w.shape != (D,) or u.shape != (D,):
        raise ValueError(f"wkv: k {tuple(k.shape)} and v {tuple(v.shape)} must be (B, T, D), w {tuple(w.shape)} "
                         f"and u {tuple(u.shape)} (D,)")  # fmt: skip
    if state is None:
        state = wkv_initial_state(B, D, k.device)
    if any(s.shape != (B, D) for s in state):
        raise ValueError(f"wkv: state tensors must be (B, D) = ({B}, {D}), got {[tuple(s.shape) for s in state]}")
    s0 = torch.stack([s.float() for s in state]).contiguous()
    f32 = [t.float().contiguous() for t in (w, u, k, v)]
    y, s1 = _WKVFunction.apply(*f32, s0)
    return y, (s1[0], s1[1], s1[2])


def wkv_naive(w: torch.Tensor, u: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
              state: WKVState | None = None) -> tuple[torch.Tensor, WKVState]:  # fmt: skip
    """Reference of :func:`wkv`: the sequential running-max loop in PyTorch, fp32."""
    return wkv_sequential(w.float(), u.float(), k.float(), v.float(), state)


__all__ = ["wkv", "wkv_forward", "wkv_naive"]
