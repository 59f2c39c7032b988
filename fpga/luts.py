"""Lookup tables of the FPGA reference: generation (by the converter) and lookup (at run time).

Formats are documented in ``fpga/FORMATS.md`` section 3. Every table is an ``int64`` NumPy array
of non-negative or signed integers that fit the stated widths; HLS/RTL read them from
:func:`matmulfree.fpga.convert.export_params`.
"""

from __future__ import annotations

import numpy as np

from .fixed import bitlength, i64, round_shift

#: Reciprocal table: index ``m - 1024`` for an 11-bit mantissa ``m`` in [1024, 2048).
RECIP_BITS, RECIP_FRAC = 10, 20
#: Reciprocal-square-root table: index ``ms - 256`` for ``ms`` in [256, 1024).
RSQRT_LO, RSQRT_HI, RSQRT_FRAC = 256, 1024, 21
#: Sigmoid outputs are unsigned Q15 (``32768`` is 1.0).
SIG_FRAC = 15
#: RWKV exponent domain: ``exp`` arguments are Q(EXP_IN_FRAC); ``exp`` values are Q(EXP_OUT_FRAC).
EXP_IN_FRAC, EXP_OUT_FRAC = 16, 16
#: Two-level ``exp(-n)`` table: index step ``2**-EXP_STEP_FRAC``, low table ``2**EXP_LO_BITS``
#: entries (fine steps), high table ``EXP_HI_ENTRIES`` entries (coarse steps, range [0, 16)).
EXP_STEP_FRAC, EXP_LO_BITS, EXP_HI_ENTRIES = 10, 5, 512
#: Division table: index ``m - 1024`` for an 11-bit mantissa ``m``; ``DIV[i] ~ 2**27 / m``.
DIV_FRAC = 27


def make_recip_table() -> np.ndarray:
    """``RECIP[i] = round(127 * 2**20 / (1024 + i + 0.5))``, 1024 entries, in [65040, 129985]."""
    m = np.arange(1 << RECIP_BITS, dtype=np.float64) + (1 << RECIP_BITS) + 0.5
    return np.floor(127.0 * 2.0**RECIP_FRAC / m + 0.5).astype(np.int64)


def make_rsqrt_table() -> np.ndarray:
    """``RSQRT[i] = round(2**21 / sqrt(256 + i + 0.5))``, 768 entries, in [65552, 130944]."""
    ms = np.arange(RSQRT_LO, RSQRT_HI, dtype=np.float64) + 0.5
    return np.floor(2.0**RSQRT_FRAC / np.sqrt(ms) + 0.5).astype(np.int64)


def make_exp_tables() -> tuple[np.ndarray, np.ndarray]:
    """``(EXP_HI, EXP_LO)``: ``EXP_HI[i] = round(exp(-i * 2**-5) * 2**16)`` (512 entries, in
    [0, 65536]) and ``EXP_LO[i] = round(exp(-i * 2**-10) * 2**16)`` (32 entries, in [63582, 65536])."""
    hi = np.arange(EXP_HI_ENTRIES, dtype=np.float64) * 2.0 ** (EXP_LO_BITS - EXP_STEP_FRAC)
    lo = np.arange(1 << EXP_LO_BITS, dtype=np.float64) * 2.0**-EXP_STEP_FRAC
    one = 2.0**EXP_OUT_FRAC
    return np.floor(np.exp(-hi) * one + 0.5).astype(np.int64), np.floor(np.exp(-lo) * one + 0.5).astype(np.int64)


def make_div_table() -> np.ndarray:
    """``DIV[i] = round(2**27 / (1024 + i + 0.5))``, 1024 entries, in [65552, 131008]."""
    m = np.arange(1 << RECIP_BITS, dtype=np.float64) + (1 << RECIP_BITS) + 0.5
    return np.floor(2.0**DIV_FRAC / m + 0.5).astype(np.int64)


def exp_neg_lut(n, exp_hi, exp_lo) -> np.ndarray:
    """``exp(-n)`` in unsigned Q16 (``65536`` is 1.0) for ``n >= 0`` in Q16.

    ``j = round_shift(n, 6)`` (steps of ``2**-10``), ``hi = j >> 5``, ``lo = j & 31``;
    ``0`` if ``hi >= 512`` (``n >= 16``), else ``round_shift(EXP_HI[hi] * EXP_LO[lo], 16)``
    (u17 x u17).
    """
    n = i64(n)
    if n.size and int(n.min()) < 0:
        raise ValueError(f"exp_neg_lut: argument must be >= 0, got {int(n.min())}")
    j = round_shift(n, EXP_IN_FRAC - EXP_STEP_FRAC)
    hi, lo = j >> EXP_LO_BITS, j & ((1 << EXP_LO_BITS) - 1)
    inside = hi < EXP_HI_ENTRIES
    prod = i64(exp_hi)[np.where(inside, hi, 0)] * i64(exp_lo)[lo]
    return np.where(inside, round_shift(prod, EXP_OUT_FRAC), 0)


def div_lookup(a, table) -> tuple[np.ndarray, np.ndarray]:
    """For a positive integer ``a``: ``e = bitlength(a)``, 11-bit mantissa ``m = a >> (e - 11)``
    (truncating; ``a << (11 - e)`` when ``e < 11``) and ``DIV[m - 1024]``, so that
    ``1 / a ~= DIV[m - 1024] * 2**(-16 - e)``. Returns ``(div, e)``; ``a == 0`` gives ``e = 0``
    (callers zero the quotient)."""
    a = i64(a)
    e = bitlength(a)
    sh = e - (RECIP_BITS + 1)
    m = np.where(sh >= 0, np.right_shift(a, np.maximum(sh, 0)), np.left_shift(a, np.maximum(-sh, 0)))
    m = np.where(a == 0, 1 << RECIP_BITS, m)
    return i64(table)[m - (1 << RECIP_BITS)], e


def lut_grid(lut_bits: int, lut_frac: int) -> np.ndarray:
    """Input values of the sigma/SiLU tables: ``(i - 2**(lut_bits-1)) * 2**-lut_frac`` (float64)."""
    n = 1 << lut_bits
    return (np.arange(n, dtype=np.float64) - n // 2) / float(1 << lut_frac)


def make_sigmoid_table(lut_bits: int, lut_frac: int) -> np.ndarray:
    """``SIG[i] = round(sigmoid(v_i) * 2**15)`` over :func:`lut_grid`, values in [0, 32768]."""
    v = lut_grid(lut_bits, lut_frac)
    return np.floor(2.0**SIG_FRAC / (1.0 + np.exp(-v)) + 0.5).astype(np.int64)


def make_silu_table(lut_bits: int, lut_frac: int, act_frac: int) -> np.ndarray:
    """``SILU[i] = round(silu(v_i) * 2**act_frac)`` over :func:`lut_grid` (signed)."""
    v = lut_grid(lut_bits, lut_frac)
    return np.floor(v / (1.0 + np.exp(-v)) * 2.0**act_frac + 0.5).astype(np.int64)


def lut_index(y, act_frac: int, lut_bits: int, lut_frac: int) -> tuple[np.ndarray, np.ndarray]:
    """Table index of ``y`` in Q(act_frac): ``j = round_shift(y, act_frac - lut_frac)``.

    Returns ``(idx, j)`` with ``idx = clamp(j, -2**(lut_bits-1), 2**(lut_bits-1)-1) + 2**(lut_bits-1)``
    and the unclamped ``j`` (SiLU needs it for its pass-through rule).
    """
    half = 1 << (lut_bits - 1)
    j = round_shift(y, act_frac - lut_frac)
    return np.clip(j, -half, half - 1) + half, j


def sigmoid_lut(y, table, act_frac: int, lut_bits: int, lut_frac: int) -> np.ndarray:
    """sigma(y) in unsigned Q15 for ``y`` in Q(act_frac); inputs outside the table clamp to its ends."""
    idx, _ = lut_index(y, act_frac, lut_bits, lut_frac)
    return i64(table)[idx]


def silu_lut(y, table, act_frac: int, lut_bits: int, lut_frac: int) -> np.ndarray:
    """SiLU(y) in Q(act_frac) for ``y`` in Q(act_frac).

    Above the table (``j > 2**(lut_bits-1) - 1``) the output is ``y`` itself; below it
    (``j < -2**(lut_bits-1)``) the output is 0; otherwise ``SILU[idx]``.
    """
    y = i64(y)
    half = 1 << (lut_bits - 1)
    idx, j = lut_index(y, act_frac, lut_bits, lut_frac)
    out = i64(table)[idx]
    return np.where(j > half - 1, y, np.where(j < -half, 0, out))


def recip_lookup(a, table) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For a positive integer ``a``: ``e = bitlength(a)``, 11-bit mantissa ``m = a >> (e - 11)``
    (truncating; ``a << (11 - e)`` when ``e < 11``) and ``RECIP[m - 1024]``.

    Returns ``(recip, m, e)``. ``a == 0`` gives ``m = 1024`` (callers zero the output).
    """
    a = i64(a)
    e = bitlength(a)
    sh = e - (RECIP_BITS + 1)
    m = np.where(sh >= 0, np.right_shift(a, np.maximum(sh, 0)), np.left_shift(a, np.maximum(-sh, 0)))
    m = np.where(a == 0, 1 << RECIP_BITS, m)
    return i64(table)[m - (1 << RECIP_BITS)], m, e


def rsqrt_lut(s, table) -> tuple[np.ndarray, np.ndarray]:
    """``1/sqrt(s) ~= r_m * 2**r_e`` for a non-negative integer ``s < 2**53``.

    ``b = bitlength(s)``, even shift ``sh = ((b - 9) >> 1) << 1``, ``ms = s >> sh`` (or
    ``s << -sh``) in [256, 1024), ``r_m = RSQRT[ms - 256]``, ``r_e = -21 - sh/2``.
    ``s == 0`` gives ``(0, 0)``.
    """
    s = i64(s)
    b = bitlength(s)
    sh = ((b - 9) >> 1) << 1
    ms = np.where(sh >= 0, np.right_shift(s, np.maximum(sh, 0)), np.left_shift(s, np.maximum(-sh, 0)))
    zero = s == 0
    ms = np.where(zero, RSQRT_LO, ms)
    r_m = i64(table)[ms - RSQRT_LO]
    r_e = -RSQRT_FRAC - (sh >> 1)
    return np.where(zero, 0, r_m), np.where(zero, 0, r_e)


__all__ = [
    "div_lookup",
    "exp_neg_lut",
    "make_div_table",
    "make_exp_tables",
    "make_recip_table",
    "make_rsqrt_table",
    "make_sigmoid_table",
    "make_silu_table",
    "lut_grid",
    "lut_index",
    "sigmoid_lut",
    "silu_lut",
    "recip_lookup",
    "rsqrt_lut",
]
