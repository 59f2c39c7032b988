"""The CPU training path: BitLinear and the MLGRU scan as autograd functions with hand-written backwards.

The reference layers (:meth:`matmulfree.layers.BitLinear.forward_reference`,
:func:`matmulfree.functional.linear_recurrence_scan`) build their straight-through estimators
and the associative scan out of many small tensor ops, each of which autograd records and
replays. On a CPU that bookkeeping and the extra passes over the activations cost as much as
the matrix products. Here the same mathematics runs as three functions:

* :func:`bitlinear_train`: RMSNorm + per-token int8 activation quantisation + the product with
  the ternary weights in one forward; the backward applies the straight-through rules directly
  (``dL/dx_n = dL/dy · W_q / s_w``, ``dL/dW = (dL/dy / s_x)ᵀ · x_q``) and the RMSNorm backward
  in a few fused passes.
* :func:`cached_ternary`: each latent weight is quantised once per optimizer step and reused by
  every micro-batch and call until the optimizer changes it (keyed by its version counter).
* :func:`scan_train`: the forward is a work-efficient odd-even scan (:func:`odd_even_scan`) without
  a recorded graph, the backward one reverse scan (``dh_t = g_t + f_{t+1} dh_{t+1}``); no
  per-timestep Python loop.

Values and gradients equal the reference up to fp32 rounding (``tests/test_cpu_train.py``).
The layers use this path for fp32 CPU tensors while gradients are recorded, outside autocast;
``MATMULFREE_KERNELS=torch`` forces the plain reference.
"""

from __future__ import annotations

import weakref

import torch

from .quant import ACT_ABSMAX, QUANT_EPS, ternary_quantize


class WeightCache:
    """Ternary copies ``(W_q as fp32, s_w)`` of latent weights, valid while the weight is unchanged.

    An entry is keyed by ``(w._version, w.data_ptr(), shape)``: an optimizer step updates the weight
    in place, which bumps the version and invalidates it. Entries die with their parameter.
    """

    def __init__(self) -> None:
        self._entries: dict[int, tuple] = {}
        self.hits = self.misses = 0

    def get(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        key = (w._version, w.data_ptr(), tuple(w.shape))
        entry = self._entries.get(id(w))
        if entry is not None and entry[0]() is w and entry[1] == key:
            self.hits += 1
            return entry[2], entry[3]
        self.misses += 1
        w_q, s_w = ternary_quantize(w)
        w_q = w_q.to(torch.float32)
        ident = id(w)
        ref = weakref.ref(w, lambda _r, ident=ident, entries=self._entries: entries.pop(ident, None))
        self._entries[ident] = (ref, key, w_q, s_w)
        return w_q, s_w

    def clear(self) -> None:
        self._entries.clear()
        self.hits = self.misses = 0


#: The process-wide cache used by :func:`bitlinear_train`.
weight_cache = WeightCache()


def cached_ternary(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(W_q (out, in) fp32 in {-1, 0, 1}, s_w fp32 scalar)`` of ``w``, quantised once per weight version."""
    return weight_cache.get(w)


class _BitLinearFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, gain, weight, w_q, s_w, eps):  # noqa: D102 (documented on bitlinear_train)
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        r = torch.rsqrt(x2.pow(2).mean(dim=-1, keepdim=True) + eps)  # (N, 1)
        x_n = x2 * r * gain
        s_x = ACT_ABSMAX / x_n.abs().amax(dim=-1, keepdim=True).clamp_(min=QUANT_EPS)
        # |x_n s_x| <= 127 by construction, so the int8 clamp of quant.activation_quantize is a no-op.
        x_q = x_n.mul_(s_x).round_()
        y = torch.mm(x_q, w_q.t()).div_(s_x * s_w)
        ctx.save_for_backward(x2, r, gain, x_q, s_x, w_q, s_w)
        ctx.shape = shape
        return y.reshape(*shape[:-1], y.shape[-1])

    @staticmethod
    def backward(ctx, grad_y):
        x2, r, gain, x_q, s_x, w_q, s_w = ctx.saved_tensors
        gy = grad_y.reshape(-1, grad_y.shape[-1])
        grad_weight = torch.mm((gy / s_x).t(), x_q)  # straight through W_q = W s_w
        grad_xn = torch.mm(gy, w_q).div_(s_w)  # straight through x_q = x_n s_x
        # RMSNorm backward with x_hat = x r: d gain = sum_rows(grad_xn x_hat) and
        # dx = r (grad_xn gain) - x r^3 mean(grad_xn gain x), written with few passes over (N, d).
        u = grad_xn * x2
        grad_gain = torch.mm(r.t(), u).reshape(-1)
        c = r.pow(3) * torch.mv(u, gain).unsqueeze(-1) / x2.shape[-1]
        grad_x = torch.addcmul((grad_xn * gain).mul_(r), x2, c, value=-1)
        return grad_x.reshape(ctx.shape), grad_gain, grad_weight, None, None, None


def bitlinear_train(x: torch.Tensor, gain: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Training forward of a BitLinear: ``x (..., in)`` -> ``(..., out)``.

    ``RMSNorm(x) · gain`` -> per-token int8 fake quantisation -> product with the absmean-ternary
    ``weight (out, in)`` -> rescale by ``1 / (s_x s_w)``; straight-through gradients to ``x``,
    ``gain`` and ``weight``. Equals :meth:`~matmulfree.layers.BitLinear.forward_reference`.
    """
    w_q, s_w = cached_ternary(weight)
    return _BitLinearFn.apply(x, gain, weight, w_q, s_w, eps)


def odd_even_scan(f: torch.Tensor, b: torch.Tensor, h0: torch.Tensor | None = None) -> torch.Tensor:
    """All states of ``h_t = f_t h_{t-1} + b_t`` (``(B, T, d)``), work-efficient: pairs of steps are
    combined into one (``T/2`` elements), the half-length recurrence is solved recursively, and the
    states between are filled in. ``O(T)`` work in ``log2 T`` levels (the Hillis-Steele scan of
    :mod:`matmulfree.functional` does ``O(T log T)``); for use without autograd."""
    if h0 is not None:
        b = b.clone()
        b[:, 0] += f[:, 0] * h0
    return _odd_even(f, b)


def _odd_even(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    T = a.shape[1]
    if T == 1:
        return b.clone()
    n = T - T % 2
    a_odd = a[:, 1:n:2]
    h_odd = _odd_even(a_odd * a[:, 0:n:2], torch.addcmul(b[:, 1:n:2], a_odd, b[:, 0:n:2]))  # h_1, h_3, ...
    h = torch.empty_like(b)
    h[:, 1:n:2] = h_odd
    h[:, 0] = b[:, 0]
    if n > 2:
        h[:, 2:n:2] = torch.addcmul(b[:, 2:n:2], a[:, 2:n:2], h_odd[:, :-1])
    if T % 2:
        h[:, T - 1] = torch.addcmul(b[:, T - 1], a[:, T - 1], h[:, T - 2])
    return h


class _ScanFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, f, b, h0):  # noqa: D102 (documented on scan_train)
        with torch.no_grad():
            h = odd_even_scan(f, b, h0)
        ctx.save_for_backward(f, h, h0 if h0 is not None else torch.zeros(0))
        ctx.has_h0 = h0 is not None
        return h

    @staticmethod
    def backward(ctx, grad_h):
        f, h, h0 = ctx.saved_tensors
        # dh_t = grad_h_t + f_{t+1} dh_{t+1}: the same recurrence run backwards in time.
        f_next = torch.cat([f[:, 1:], torch.zeros_like(f[:, :1])], dim=1)
        dh = odd_even_scan(f_next.flip(1), grad_h.flip(1)).flip(1)
        first = h0.unsqueeze(1) if ctx.has_h0 else torch.zeros_like(h[:, :1])
        h_prev = torch.cat([first, h[:, :-1]], dim=1)
        grad_h0 = dh[:, 0] * f[:, 0] if ctx.has_h0 else None
        return dh * h_prev, dh, grad_h0


def scan_train(f: torch.Tensor, b: torch.Tensor, h0: torch.Tensor | None = None) -> torch.Tensor:
    """All states of ``h_t = f_t h_{t-1} + b_t`` for ``f, b (B, T, d)`` (``h0 (B, d)`` or zero),
    with an analytic backward: equals :func:`~matmulfree.functional.linear_recurrence_scan`."""
    return _ScanFn.apply(f, b, h0)


def use_cpu_train_path(x: torch.Tensor) -> bool:
    """Whether a layer should take this path for input ``x`` (fp32 CPU, gradients on, no autocast)."""
    return (not x.is_cuda and x.dtype == torch.float32 and torch.is_grad_enabled()
            and not torch.is_autocast_enabled("cpu"))
