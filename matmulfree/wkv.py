"""The RWKV-4 WKV recurrence in plain PyTorch: one step, the sequential loop and a chunked parallel form.

Per channel, with decay ``w > 0`` and bonus ``u`` (both ``(d,)``), keys ``k`` and values ``v``
``(B, T, d)``::

    wkv_t = (sum_{i<t} e^{-(t-1-i) w + k_i} v_i + e^{u + k_t} v_t)
          / (sum_{i<t} e^{-(t-1-i) w + k_i}     + e^{u + k_t})

The sums are kept as a state ``(aa, bb, pp)`` (each ``(B, d)``, fp32) with the running maximum
``pp`` of the exponents factored out, so nothing overflows however large ``k`` gets: the real
numerator is ``aa e^pp`` and the denominator ``bb e^pp``. The state before the first token is
:func:`wkv_initial_state` (``aa = bb = 0``, ``pp = -1e38``). Every function computes in fp32 and
returns fp32.

* :func:`wkv_step` — one token (decode), the same operations as the ``rwkv`` package's RWKV-4;
* :func:`wkv_sequential` — the loop of steps (the reference everything else is compared with);
* :func:`wkv_chunked` — the training / prefill form: inside chunks of :data:`CHUNK` tokens a
  masked ``CHUNK x CHUNK`` table of exponents (max-shifted like the state), across chunks the
  state is carried by a short loop; memory ``O(B T CHUNK d)``, autograd through plain ops.

The Triton kernel (``matmulfree.triton_kernels.wkv``) computes the same as :func:`wkv_sequential`.
"""

from __future__ import annotations

import torch

#: Exponent of an empty sum (the state's ``pp`` before the first token); ``e^{-1e38 - x} = 0``.
EMPTY_EXPONENT = -1e38
#: Tokens per chunk of :func:`wkv_chunked`.
CHUNK = 16

WKVState = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def wkv_initial_state(batch: int, d: int, device: torch.device | str = "cpu") -> WKVState:
    """``(aa, bb, pp)`` of an empty history, each ``(batch, d)`` fp32."""
    zeros = torch.zeros(batch, d, dtype=torch.float32, device=device)
    return zeros, zeros.clone(), torch.full_like(zeros, EMPTY_EXPONENT)


def wkv_step(
    w: torch.Tensor, u: torch.Tensor, k: torch.Tensor, v: torch.Tensor, state: WKVState
) -> tuple[torch.Tensor, WKVState]:
    """One token: ``k, v (B, d)``, state ``(aa, bb, pp)`` -> ``(wkv (B, d), next state)`` (fp32)."""
    aa, bb, pp = state
    k, v = k.float(), v.float()
    ww = u.float() + k
    p = torch.maximum(pp, ww)
    e1, e2 = torch.exp(pp - p), torch.exp(ww - p)
    out = (e1 * aa + e2 * v) / (e1 * bb + e2)
    ww = pp - w.float()
    p = torch.maximum(ww, k)
    e1, e2 = torch.exp(ww - p), torch.exp(k - p)
    return out, (e1 * aa + e2 * v, e1 * bb + e2, p)


def wkv_sequential(
    w: torch.Tensor, u: torch.Tensor, k: torch.Tensor, v: torch.Tensor, state: WKVState | None = None
) -> tuple[torch.Tensor, WKVState]:
    """All outputs by the loop of :func:`wkv_step`: ``k, v (B, T, d)`` -> ``(wkv (B, T, d), state)``."""
    B, T, d = k.shape
    if state is None:
        state = wkv_initial_state(B, d, k.device)
    outs = []
    for t in range(T):
        o, state = wkv_step(w, u, k[:, t], v[:, t], state)
        outs.append(o)
    out = torch.stack(outs, 1) if outs else k.new_zeros(B, 0, d, dtype=torch.float32)
    return out, state


def _shift(e1: torch.Tensor, e2: torch.Tensor) -> torch.Tensor:
    """Elementwise ``max(e1, e2)``, detached: a shift that cancels out of every ratio (and of the
    state's ``aa e^pp``), so treating it as a constant leaves all gradients exact."""
    return torch.maximum(e1, e2).detach()


def wkv_chunked(
    w: torch.Tensor, u: torch.Tensor, k: torch.Tensor, v: torch.Tensor, state: WKVState | None = None,
    chunk: int = CHUNK,
) -> tuple[torch.Tensor, WKVState]:  # fmt: skip
    """Parallel form of :func:`wkv_sequential` (same result up to fp32 rounding), differentiable
    w.r.t. ``w``, ``u``, ``k``, ``v`` and the state. ``k, v (B, T, d)`` -> ``(wkv (B, T, d), state)``.
    """
    B, T, d = k.shape
    if state is None:
        state = wkv_initial_state(B, d, k.device)
    if T == 0:
        return k.new_zeros(B, 0, d, dtype=torch.float32), state
    w, u, k, v = w.float(), u.float(), k.float(), v.float()
    C = min(chunk, T)
    n = -(-T // C)
    pad = n * C - T
    if pad:  # padded keys get an empty exponent: they add nothing to any sum
        k = torch.nn.functional.pad(k, (0, 0, 0, pad), value=EMPTY_EXPONENT)
        v = torch.nn.functional.pad(v, (0, 0, 0, pad))
    kc, vc = k.view(B, n, C, d), v.view(B, n, C, d)
    j = torch.arange(C, device=k.device, dtype=torch.float32)
    # Intra-chunk table E[b, c, j, l, :] = -(j-1-l) w + k_l for l < j, u + k_j for l = j.
    lag = (j[:, None] - 1 - j[None, :])  # (C, C)
    below = (lag >= 0)[None, None, :, :, None]
    diag = torch.eye(C, dtype=torch.bool, device=k.device)[None, None, :, :, None]
    e_off = -lag[None, None, :, :, None] * w + kc[:, :, None, :, :]
    e_diag = (u + kc)[:, :, None, :, :].expand(B, n, C, C, d)
    E = torch.where(below, e_off, torch.where(diag, e_diag, torch.full_like(e_off, float("-inf"))))
    m_in = E.amax(dim=3).detach()  # (B, n, C, d), finite (the diagonal)
    P = torch.exp(E - m_in[:, :, :, None, :])
    num_in = (P * vc[:, :, None, :, :]).sum(3)
    den_in = P.sum(3)
    # Chunk summaries: its own contribution to the state at its end, exponents -(C-1-l) w + k_l.
    e_end = -(C - 1 - j)[None, None, :, None] * w + kc  # (B, n, C, d)
    p_sum = e_end.amax(dim=2).detach()
    q = torch.exp(e_end - p_sum[:, :, None, :])
    a_sum, b_sum = (q * vc).sum(2), q.sum(2)
    # Carry the state across chunks: S_in[c+1] = e^{-C w} S_in[c] + summary[c].
    aa, bb, pp = state
    carried = []
    for c in range(n):
        carried.append((aa, bb, pp))
        decayed = pp - C * w
        p = _shift(decayed, p_sum[:, c])
        e1, e2 = torch.exp(decayed - p), torch.exp(p_sum[:, c] - p)
        aa, bb, pp = e1 * aa + e2 * a_sum[:, c], e1 * bb + e2 * b_sum[:, c], p
    a_in = torch.stack([s[0] for s in carried], 1)  # (B, n, d)
    b_in = torch.stack([s[1] for s in carried], 1)
    p_in = torch.stack([s[2] for s in carried], 1)
    # Combine the carried state (exponent p_in - j w) with the intra-chunk sums.
    e_state = p_in[:, :, None, :] - j[None, None, :, None] * w  # (B, n, C, d)
    M = _shift(e_state, m_in)
    s1, s2 = torch.exp(e_state - M), torch.exp(m_in - M)
    out = (s1 * a_in[:, :, None, :] + s2 * num_in) / (s1 * b_in[:, :, None, :] + s2 * den_in)
    out = out.reshape(B, n * C, d)[:, :T]
    if pad:  # the padding added nothing but decayed the state by e^{-pad w}: undo that in the exponent
        pp = pp + pad * w
    return out, (aa, bb, pp)


__all__ = ["CHUNK", "EMPTY_EXPONENT", "WKVState", "wkv_chunked", "wkv_initial_state", "wkv_sequential", "wkv_step"]
