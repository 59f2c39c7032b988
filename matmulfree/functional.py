"""Plain tensor functions shared by the layers, the kernels' references and the inference engines.

No modules, no state: :func:`rms_norm` and the linear recurrence ``h_t = f_t * h_{t-1} + b_t``
(an associative scan for training, a sequential loop as the reference). Shapes: ``B`` batch,
``T`` time, ``d`` width.
"""

from __future__ import annotations

import torch


def rms_norm(x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
    """``x / sqrt(mean(x^2) + eps) * weight`` over the last dim, computed in fp32."""
    xf = x.float()
    y = xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + eps)
    if weight is not None:
        y = y * weight.float()
    return y.to(x.dtype)


def linear_recurrence_scan(f: torch.Tensor, b: torch.Tensor, h0: torch.Tensor | None = None) -> torch.Tensor:
    """All states of ``h_t = f_t * h_{t-1} + b_t`` for inputs ``(B, T, d)``; ``h0 (B, d)`` or zero.

    A Hillis-Steele associative scan over time: ``ceil(log2 T)`` vectorised steps combining
    ``(a1, b1) . (a2, b2) = (a1 a2, a2 b1 + b2)``. It uses only products and sums of fp32 values
    (no ``exp``/``log``), so it cannot overflow; decays below fp32's range flush to zero as they
    would in the sequential loop. The result equals the sequential recurrence up to fp32 rounding
    of a different summation order (relative error ~1e-6; see tests). Autograd memory grows as
    ``O(B T d log T)``; the Triton kernel (``matmulfree.triton_kernels``) avoids that on GPU.
    """
    a, h = f, b
    if h0 is not None:
        h = torch.cat([h[:, :1] + a[:, :1] * h0.unsqueeze(1), h[:, 1:]], dim=1)
    T, step = f.shape[1], 1
    while step < T:
        h = torch.cat([h[:, :step], h[:, step:] + a[:, step:] * h[:, :-step]], dim=1)
        a = torch.cat([a[:, :step], a[:, step:] * a[:, :-step]], dim=1)
        step *= 2
    return h


def linear_recurrence_naive(f: torch.Tensor, b: torch.Tensor, h0: torch.Tensor | None = None) -> torch.Tensor:
    """Sequential reference of :func:`linear_recurrence_scan` (a Python loop over time)."""
    h = torch.zeros_like(b[:, 0]) if h0 is None else h0
    out = []
    for t in range(f.shape[1]):
        h = f[:, t] * h + b[:, t]
        out.append(h)
    return torch.stack(out, dim=1)
