"""Integer primitives of the FPGA reference (see ``fpga/FORMATS.md`` section 2).

Every function works on NumPy ``int64`` arrays (any shape; per-row quantities broadcast as
``(B, 1)``) and uses only what the hardware has: add/sub, compare, shifts, leading-one detection
and small multiplies. The single rounding rule is *round half up*: add half an LSB, then shift
right arithmetically (:func:`round_shift`).
"""

from __future__ import annotations

import math

import numpy as np

#: Mantissa width of the per-token pseudo-float scales: mantissas lie in [2**16, 2**17).
MANT_BITS = 17
#: Width of a normalized vector (leading-one normalization): signed 16 bits.
NORM_BITS = 16


def i64(x) -> np.ndarray:
    """``x`` as an ``int64`` array (no copy when it already is one)."""
    return np.asarray(x, dtype=np.int64)


def bitlength(x) -> np.ndarray:
    """Position of the leading one of a non-negative integer (0 for 0): ``floor(log2 x) + 1``.

    Exact for ``0 <= x < 2**53`` (the hardware: a leading-one detector / priority encoder).
    """
    x = i64(x)
    if x.size and (int(x.min()) < 0 or int(x.max()) >= 1 << 53):
        raise OverflowError(f"bitlength: operand outside [0, 2**53): [{int(x.min())}, {int(x.max())}]")
    return np.frexp(x.astype(np.float64))[1].astype(np.int64)


def round_shift(x, s) -> np.ndarray:
    """``x * 2**-s`` rounded half up: ``(x + 2**(s-1)) >> s`` for ``s > 0``; ``x << -s`` for ``s <= 0``.

    ``s`` is a scalar or an array broadcastable to ``x`` (per-row shift amounts).
    """
    x, s = i64(x), i64(s)
    pos = s > 0
    sr = np.where(pos, s, 0)
    half = np.where(pos, np.left_shift(1, np.maximum(sr - 1, 0)), 0)
    right = np.right_shift(x + half, sr)
    left = np.left_shift(x, np.where(pos, 0, np.minimum(-s, 62)))
    return np.where(pos, right, left)


def saturate(x, bits: int) -> np.ndarray:
    """Clamp to the signed ``bits``-bit range ``[-2**(bits-1), 2**(bits-1) - 1]``."""
    lim = 1 << (bits - 1)
    return np.clip(i64(x), -lim, lim - 1)


def fits(x, bits: int, signed: bool = True) -> bool:
    """Whether every element fits a ``bits``-bit (signed or unsigned) integer."""
    x = i64(x)
    if x.size == 0:
        return True
    if signed:
        lim = 1 << (bits - 1)
        return bool(int(x.min()) >= -lim and int(x.max()) <= lim - 1)
    return bool(int(x.min()) >= 0 and int(x.max()) <= (1 << bits) - 1)


def check_width(name: str, x, bits: int, signed: bool = True) -> None:
    """Raise ``OverflowError`` naming ``name`` if ``x`` does not fit the documented width."""
    if not fits(x, bits, signed):
        x = i64(x)
        kind = "signed" if signed else "unsigned"
        raise OverflowError(f"{name}: range [{int(x.min())}, {int(x.max())}] exceeds {kind} {bits} bits")


def fp_norm(p) -> tuple[np.ndarray, np.ndarray]:
    """Normalize a non-negative integer to a pseudo-float ``p ~= m * 2**e``, ``m`` in [2**16, 2**17).

    ``m = round_shift(p, bitlength(p) - 17)``; if rounding carries to ``2**17`` then ``m = 2**16``
    and ``e`` grows by one. ``p == 0`` gives ``(0, 0)``.
    """
    p = i64(p)
    e = bitlength(p) - MANT_BITS
    m = round_shift(p, e)
    carry = (m >> MANT_BITS) & 1
    m = np.where(carry == 1, m >> 1, m)
    e = e + carry
    zero = p == 0
    return np.where(zero, 0, m), np.where(zero, 0, e)


def fp_const(k: float) -> tuple[int, int]:
    """A positive float constant as ``(m, e)`` with ``k ~= m * 2**e``, ``m`` in [2**16, 2**17)."""
    if not (k > 0 and math.isfinite(k)):
        raise ValueError(f"fp_const: constant must be positive and finite, got {k!r}")
    f, x = math.frexp(k)  # k = f * 2**x, f in [0.5, 1)
    m, e = int(round(f * (1 << MANT_BITS))), x - MANT_BITS
    if m == 1 << MANT_BITS:
        m, e = m >> 1, e + 1
    return m, e


def normalize16(x) -> tuple[np.ndarray, np.ndarray]:
    """Leading-one normalization of each row of ``x (..., n)`` to signed 16 bits.

    ``k = bitlength(max|x|) - 15`` per row, ``x' = clamp(round_shift(x, k), -2**15, 2**15-1)``,
    so ``max|x'|`` lies in [2**14, 2**15 - 1] (all-zero rows stay zero, ``k = 0``).
    Returns ``(x', k)`` with ``k`` shaped ``(..., 1)``. Values need not fit any width on input
    (up to 2**53).
    """
    x = i64(x)
    mx = np.abs(x).max(axis=-1, keepdims=True)
    k = np.where(mx == 0, 0, bitlength(mx) - (NORM_BITS - 1))
    return saturate(round_shift(x, k), NORM_BITS), k
