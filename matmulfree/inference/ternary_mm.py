"""Exact grouped products of int8 activations with ternary weights on the CPU.

:class:`TernaryMatmul` holds ``P`` ternary matrices ``W_p (N, K)`` and computes
``acc_p = x_p @ W_p^T`` for int8 activations ``x (P, M, K)``; the result ``(P, M, N)`` holds the
exact integers (int32, or fp32 that is exact while ``|acc| < 2**24``, i.e. ``K <= 131,072``).

Backends, fastest first (``"auto"`` takes the first that works here):

* ``"c"``: the 2-bit C kernel of :mod:`.ckernel` (weights stay at 2 bits per weight; the fastest
  dispatch path of this CPU, one thread).
* ``"int8"``: int8 x int8 -> int32 on FBGEMM through ``torch.ops.quantized.linear_dynamic``.
  That op quantizes its float input with a per-tensor scale and zero point taken from the input's
  min and max, so one constant row holding -128 and 127 is appended: the scale is then exactly 1
  and the zero point 128, the integers pass through unchanged and the int32 result is rescaled by
  ``1 x 1``. Weights are int8 (1 byte per weight). PyTorch 2.13 marks its quantized-tensor
  constructors deprecated; if they go, this backend reports itself unavailable.
* ``"float"``: ``bmm`` on the same integers in fp32 (exact, reads fp32 weights).

Every backend is checked against an integer reference at construction; ``"auto"`` moves on to
the next backend (keeping the reason in ``TernaryMatmul.fallback_reason``) if one disagrees.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F

from ..quant import ACT_QMAX, ACT_QMIN
from . import ckernel

#: Largest reduction length for which fp32 holds every partial sum exactly (128 * K <= 2**24).
MAX_EXACT_K = (1 << 24) // 128
#: Backend names, ``"auto"`` first (see the module docstring).
BACKENDS = ("auto", "c", "int8", "float")
#: ``int8`` backend: one stacked call for all groups (P x the multiply work) up to this K.
STACK_MAX_K = 512


def int8_backend_reason() -> str | None:
    """``None`` when the FBGEMM int8 path is usable here, else why not (one line)."""
    engines = torch.backends.quantized.supported_engines
    if not any(e in engines for e in ("x86", "fbgemm")):
        return f"no FBGEMM quantized engine in this PyTorch build (engines: {engines})"
    if not hasattr(torch.ops.quantized, "linear_dynamic"):
        return "torch.ops.quantized.linear_dynamic is missing"
    return None


def _prepack_int8(w_q: torch.Tensor):
    """FBGEMM-packed int8 weights ``(N, K)`` (scale 1, zero point 0)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qw = torch.quantize_per_tensor(w_q.float(), 1.0, 0, torch.qint8)
    return torch.ops.quantized.linear_prepack(qw, None)


class TernaryMatmul:
    """``x (P, M, K)`` int8 -> ``x_p @ W_p^T`` ``(P, M, N)`` (exact integers, int32 or fp32).

    Args:
        weights: ``P`` ternary matrices ``(N, K)`` with values in {-1, 0, 1} (any dtype).
        backend: one of :data:`BACKENDS`.
    """

    def __init__(self, weights: list[torch.Tensor], backend: str = "auto") -> None:
        if backend not in BACKENDS:
            raise ValueError(f"TernaryMatmul backend must be one of {BACKENDS}, got {backend!r}")
        shapes = {tuple(w.shape) for w in weights}
        if len(shapes) != 1:
            raise ValueError(f"TernaryMatmul: all matrices of a group need one shape, got {sorted(shapes)}")
        self.P = len(weights)
        self.out_features, self.in_features = weights[0].shape
        if self.in_features > MAX_EXACT_K:
            raise ValueError(f"in_features {self.in_features} > {MAX_EXACT_K}: fp32 results would not be exact")
        order = ["c", "int8", "float"] if backend == "auto" else [backend]
        reasons = []
        for name in order:
            reason = getattr(self, f"_init_{name}")(weights)
            if reason is None:
                reason = self._self_check(weights)
            if reason is None:
                self.backend = name
                break
            reasons.append(f"{name}: {reason}")
        else:
            raise RuntimeError(f"TernaryMatmul: backend {backend!r} unavailable ({'; '.join(reasons)})")
        self.fallback_reason = "; ".join(reasons) or None

    # -- backends ----------------------------------------------------------------------------
    def _init_c(self, weights) -> str | None:
        kernel, reason = ckernel.load()
        if kernel is None:
            return reason
        self._kernel = kernel
        self._path = kernel.best_path()
        self._kp = ckernel.padded(self.in_features)
        lut = kernel.lut_layout(self._path)
        self._tiles = torch.stack([ckernel.pack_tiles(w, lut) for w in weights]).contiguous()
        self.backend = "c"
        return None

    def _init_int8(self, weights) -> str | None:
        reason = int8_backend_reason() or (None if self.in_features >= 2 else "in_features < 2")
        if reason is not None:
            return reason
        try:
            self._stacked = self.P > 1 and self.in_features <= STACK_MAX_K
            if self._stacked:
                self._packed = [_prepack_int8(torch.cat(list(weights)))]
            else:
                self._packed = [_prepack_int8(w) for w in weights]
        except RuntimeError as e:  # engine present but the op refuses
            return f"FBGEMM prepack failed: {str(e).splitlines()[0]}"
        pad = torch.zeros(1, self.in_features)
        pad[0, 0], pad[0, 1] = ACT_QMIN, ACT_QMAX
        self._pad = pad
        self.backend = "int8"
        return None

    def _init_float(self, weights) -> str | None:
        self._w_t = torch.stack([w.float().t() for w in weights]).contiguous()  # (P, K, N)
        self.backend = "float"
        return None

    def _self_check(self, weights) -> str | None:
        g = torch.Generator().manual_seed(0)
        x = torch.randint(ACT_QMIN, ACT_QMAX + 1, (self.P, 3, self.in_features), generator=g, dtype=torch.int8)
        x[:, 0], x[:, 1] = ACT_QMAX, ACT_QMIN
        want = torch.stack([x[p].double() @ w.double().t() for p, w in enumerate(weights)])
        try:
            got = self(x)
        except RuntimeError as e:
            return f"failed on a test product: {str(e).splitlines()[0]}"
        if not torch.equal(got.double(), want):
            return "results differ from the integer reference"
        return None

    # -- product -------------------------------------------------------------------------------
    def __call__(self, x_q: torch.Tensor) -> torch.Tensor:
        """``x_q`` int8 ``(P, M, K)`` -> ``(P, M, N)`` int32 (``"c"``) or fp32 (exact integers)."""
        if self.backend == "c":
            if self._kp != self.in_features:
                x_q = F.pad(x_q, (0, self._kp - self.in_features))
            return self._kernel.mm(self._tiles, x_q.contiguous(), self.out_features, self._path)
        if self.backend == "int8":
            P, M, _ = x_q.shape
            xf = x_q.float()
            if self._stacked:  # (P*M + 1, K) x (P*N, K): keep the diagonal blocks
                acc = torch.ops.quantized.linear_dynamic(torch.cat([xf.reshape(P * M, -1), self._pad]),
                                                         self._packed[0], False)
                N = self.out_features
                return torch.stack([acc[p * M:(p + 1) * M, p * N:(p + 1) * N] for p in range(P)])
            return torch.stack([torch.ops.quantized.linear_dynamic(torch.cat([xf[p], self._pad]), pk, False)[:M]
                                for p, pk in enumerate(self._packed)])  # fmt: skip
        return torch.bmm(x_q.float(), self._w_t)

    def weight_bytes(self) -> int:
        """Bytes of weights read per call (``c``: 2 bits per padded weight, ``int8``: 1 byte,
        ``float``: 4 bytes), all groups."""
        n = self.P * self.out_features
        if self.backend == "c":
            return self._tiles.numel()
        return n * self.in_features * (1 if self.backend == "int8" else 4)


__all__ = ["BACKENDS", "MAX_EXACT_K", "STACK_MAX_K", "TernaryMatmul", "int8_backend_reason"]
