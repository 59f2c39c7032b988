"""Integer-only reference of one RWKV-4 token step with ternary projections: the FPGA contract of
the ``rwkv`` architecture (``fpga/FORMATS.md`` section 7).

The int8 activation quantization, the ternary product, the requantization, the embedding and the
sigmoid / SiLU / reciprocal / rsqrt tables are the MLGRU contract's (:mod:`matmulfree.fpga.intref`);
this module adds what RWKV-4 needs on top of them, each as a small named function on NumPy
``int64`` arrays with a batch dimension ``B`` first:

* :func:`bitlinear_plain` — a BitLinear without inner norm (the RWKV model's projections);
* :func:`layer_norm` — LayerNorm in fixed point (exact centring, rsqrt table, gain, bias);
* :func:`shift_mix` — the token shift ``mu * x + (1 - mu) * x_prev``;
* :func:`wkv_step` — the WKV recurrence in its running-max form ``(aa, bb, pp)`` with ``exp``
  from a two-level table and the division from a reciprocal table;
* :func:`time_mix`, :func:`channel_mix`, :func:`head` — one block's halves and the output.

Typical use::

    from matmulfree.fpga import convert_rwkv, intref_rwkv
    P = convert_rwkv.convert(model)            # float RWKV model -> integer params (flat dict)
    im = intref_rwkv.RWKVIntModel(P)
    logits, token, state = im.step(np.array([tok]), im.init_state(1))
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .fixed import bitlength, check_width, fp_norm, i64, normalize16, round_shift, saturate
from .intref import IntModel, Trace, _rec, embed, head_argmax, int_quant_act, requant, ternary_matvec
from .luts import EXP_IN_FRAC, EXP_OUT_FRAC, div_lookup, exp_neg_lut, rsqrt_lut, sigmoid_lut, silu_lut

#: ``P["arch"]`` of an RWKV parameter dict (an MLGRU dict has no ``arch`` key, or 0).
ARCH_RWKV = 1
#: Version of the RWKV integer contract (FORMATS.md section 7).
RWKV_FORMAT_VERSION = 1
#: Width of the exponent domain (``k``, ``u``, ``w``, ``pp``: Q(EXP_IN_FRAC) = Q16, signed 24 bits).
EXP_BITS = 24
#: Width of the WKV sums ``aa`` (Q(act_frac)) and ``bb`` (Q16).
SUM_BITS = 40
#: Token-shift mixes ``mu``: signed 18-bit Q15 (``32768`` is 1.0).
MU_FRAC, MU_BITS = 15, 18
#: Right shift that brings ``normalize16(c) * gain`` (s31) to signed 18 bits in :func:`layer_norm`.
LN_Z_SHIFT = 13
#: ``exp(0)`` in the table's output format.
EXP_ONE = 1 << EXP_OUT_FRAC

__all__ = [
    "ARCH_RWKV",
    "RWKVIntModel",
    "RWKVState",
    "bitlinear_names",
    "bitlinear_plain",
    "channel_mix",
    "head",
    "layer_norm",
    "memory_bits",
    "shift_mix",
    "time_mix",
    "wkv_divide",
    "wkv_step",
]


def bitlinear_names(n_layers: int, gate: bool) -> list[str]:
    """Key prefixes of every BitLinear of an RWKV parameter dict (the model's module names), in
    the order a token meets them."""
    names = []
    for i in range(n_layers):
        att = ["receptance", "key", "value"] + (["gate"] if gate else []) + ["output"]
        names += [f"layers.{i}.att.{p}" for p in att]
        names += [f"layers.{i}.ffn.{p}" for p in ("receptance", "key", "value")]
    return names + ["lm_head"]


# --------------------------------------------------------------------------- stages (FORMATS §7)
def layer_norm(x, P: dict[str, Any], key: str, trace: Trace = None) -> np.ndarray:
    """LayerNorm of each row of ``x (B, n)`` (any integer scale, <= 53 bits) -> ``(B, n)`` in
    Q(ln_frac), signed 18 bits (FORMATS §7.2).

    ``x' = normalize16(x)``; ``c = n * x' - sum(x')`` (exact centring, no division);
    ``c' = normalize16(c)``; ``S = sum(c'^2)``; ``1/sqrt(S) ~= r_m 2^r_e`` (rsqrt table);
    ``(q_m, q_e) = fp_norm(r_m * k_m)``; ``z = round_shift(c' * gain, 13)`` (s18);
    ``y = sat18(requant(z, q_m, 13 + r_e + k_e + q_e + ln_frac) + bias)``.
    ``k_m 2^k_e = sqrt(n) / s_g`` folds the gain's scale and the mean of ``S`` (a constant).
    """
    x = i64(x)
    n = x.shape[-1]
    xn, _ = normalize16(x)
    c = n * xn - xn.sum(axis=-1, keepdims=True)
    cn, _ = normalize16(c)
    s = (cn * cn).sum(axis=-1, keepdims=True)
    r_m, r_e = rsqrt_lut(s, P["lut.rsqrt"])
    q_m, q_e = fp_norm(r_m * int(P[key + ".k_m"]))
    z = round_shift(cn * i64(P[key + ".gain"]), LN_Z_SHIFT)
    E = LN_Z_SHIFT + r_e + int(P[key + ".k_e"]) + q_e + P["ln_frac"]
    y = saturate(requant(z, q_m, E, P["act_bits"] + 1) + i64(P[key + ".bias"]), P["act_bits"])
    for name, v in (("c", c), ("c_norm", cn), ("sumsq", s), ("z", z), ("q_m", q_m), ("E", E), ("y", y)):
        _rec(trace, f"{key}.{name}", v)
    return y


def shift_mix(xx, x_prev, mu) -> np.ndarray:
    """Token shift: ``sat18(round_shift(xx * mu + x_prev * (2^15 - mu), 15))`` with ``xx, x_prev``
    in Q(ln_frac) (s18) and ``mu (n,)`` s18 Q15 (FORMATS §7.3)."""
    mu = i64(mu)
    return saturate(round_shift(i64(xx) * mu + i64(x_prev) * ((1 << MU_FRAC) - mu), MU_FRAC), MU_BITS)


def bitlinear_plain(t, P: dict[str, Any], key: str, trace: Trace = None, check: bool = True):
    """A BitLinear without inner norm on ``t (B, d_in)`` in its input unit (any width <= 53 bits)
    (FORMATS §7.1): int8 absmax quantization (:func:`~matmulfree.fpga.intref.int_quant_act`),
    ternary product, ``acc_s = round_shift(acc, acc_shift)``, ``(q_m, q_e) = fp_norm(a_m2 * k_m)``,
    ``E = acc_shift + a_e + k_e + q_e``. Returns ``(acc, acc_s, q_m, E)``; the output in its unit
    is ``acc_s * q_m * 2**E`` (:func:`~matmulfree.fpga.intref.requant`)."""
    x_q, a_m2, a_e = int_quant_act(t, P["lut.recip"])
    acc = ternary_matvec(x_q, P[key + ".w"])
    ash = P[key + ".acc_shift"]
    acc_s = round_shift(acc, ash)
    q_m, q_e = fp_norm(a_m2 * int(P[key + ".k_m"]))
    E = ash + a_e + int(P[key + ".k_e"]) + q_e
    if check:
        check_width(key + ".acc", acc, 32)
        check_width(key + ".acc_s", acc_s, 18)
    for name, v in (("x_q", x_q), ("a_m2", a_m2), ("a_e", a_e), ("acc", acc), ("acc_s", acc_s), ("q_m", q_m),
                    ("E", E)):
        _rec(trace, f"{key}.{name}", v)
    return acc, acc_s, q_m, E


def wkv_divide(num, den, div_table) -> np.ndarray:
    """``num / den`` with ``num`` in Q(act_frac) (any width) and ``den >= 1`` in Q16: the result
    in Q(act_frac), signed 18 bits (FORMATS §7.4).

    ``(DIV, e) = div_lookup(den)``; ``ns = max(0, bitlength(|num|) - 17)``;
    ``n2 = round_shift(num, ns)`` (s18); ``sat18(round_shift(n2 * DIV, e - ns))`` (s18 x u17).
    ``den == 0`` gives 0.
    """
    num, den = i64(num), i64(den)
    dv, e = div_lookup(den, div_table)
    ns = np.maximum(0, bitlength(np.abs(num)) - 17)
    n2 = round_shift(num, ns)
    q = saturate(round_shift(n2 * dv, e - ns), 18)
    return np.where(den == 0, 0, q)


def wkv_step(k, v, state: tuple[np.ndarray, np.ndarray, np.ndarray], u, w, P: dict[str, Any]):
    """One WKV step per channel (FORMATS §7.4): ``k, v (B, d)`` in Q(act_frac); state
    ``(aa, bb, pp)`` with ``aa`` Q(act_frac) s40, ``bb`` Q16 s40, ``pp`` Q16 s24; ``u, w (d,)`` Q16.

    Returns ``(wkv (B, d) Q(act_frac) s18, (aa', bb', pp'))``. Every ``exp`` argument is
    ``<= 0`` (the running maximum is subtracted), so ``exp`` is one table lookup of ``-arg``.
    """
    hi, lo, div = P["lut.exp_hi"], P["lut.exp_lo"], P["lut.div"]
    aa, bb, pp = (i64(a) for a in state)
    v = i64(v)
    kk = np.left_shift(i64(k), EXP_IN_FRAC - P["act_frac"])
    ww = saturate(kk + i64(u), EXP_BITS)
    p = np.maximum(pp, ww)
    e1, e2 = exp_neg_lut(p - pp, hi, lo), exp_neg_lut(p - ww, hi, lo)
    num = round_shift(e1 * aa + e2 * v, EXP_OUT_FRAC)
    den = round_shift(e1 * bb + e2 * EXP_ONE, EXP_OUT_FRAC)
    out = wkv_divide(num, den, div)
    ww = saturate(pp - i64(w), EXP_BITS)
    p = np.maximum(ww, kk)
    e1, e2 = exp_neg_lut(p - ww, hi, lo), exp_neg_lut(p - kk, hi, lo)
    aa = saturate(round_shift(e1 * aa + e2 * v, EXP_OUT_FRAC), SUM_BITS)
    bb = saturate(round_shift(e1 * bb + e2 * EXP_ONE, EXP_OUT_FRAC), SUM_BITS)
    return out, (aa, bb, p)


# --------------------------------------------------------------------------- state
@dataclass
class RWKVState:
    """State of one layer (each ``(B, d)`` int64): the two shifted inputs (``att_x``, ``ffn_x``,
    LayerNorm outputs of the previous token in Q(ln_frac)) and the WKV sums ``aa``, ``bb``, ``pp``."""

    att_x: np.ndarray
    ffn_x: np.ndarray
    aa: np.ndarray
    bb: np.ndarray
    pp: np.ndarray

    @classmethod
    def zeros(cls, batch: int, d: int) -> RWKVState:
        """The state before the first token: zero inputs and sums, ``pp`` at its most negative value."""
        z = np.zeros((batch, d), dtype=np.int64)
        return cls(z.copy(), z.copy(), z.copy(), z.copy(), np.full((batch, d), -(1 << (EXP_BITS - 1)), np.int64))


def _act(P):
    return P["act_frac"], P["lut_bits"], P["lut_frac"]


def _proj(t, P, key, trace, check, bits):
    _, s, m, E = bitlinear_plain(t, P, key, trace, check)
    return requant(s, m, E, bits)


def time_mix(x, st: RWKVState, P: dict[str, Any], i: int, trace: Trace = None, check: bool = True) -> np.ndarray:
    """Time mixing of layer ``i`` (FORMATS §7.5): residual ``x (B, d)`` -> ``x + o``; updates
    ``st.att_x, st.aa, st.bb, st.pp`` in place."""
    pre, ab = f"layers.{i}.att", P["act_bits"]
    xx = layer_norm(x, P, f"layers.{i}.ln1", trace)
    mk = shift_mix(xx, st.att_x, P[pre + ".time_mix_k"])
    mv = shift_mix(xx, st.att_x, P[pre + ".time_mix_v"])
    mr = shift_mix(xx, st.att_x, P[pre + ".time_mix_r"])
    r = sigmoid_lut(_proj(mr, P, pre + ".receptance", trace, check, ab), P["lut.sigmoid"], *_act(P))
    k = _proj(mk, P, pre + ".key", trace, check, ab)
    v = _proj(mv, P, pre + ".value", trace, check, ab)
    wkv, (st.aa, st.bb, st.pp) = wkv_step(k, v, (st.aa, st.bb, st.pp), P[pre + ".u"], P[pre + ".w"], P)
    rw = r * wkv  # u16 Q15 x s18 Q(act_frac) -> s34 Q(15 + act_frac)
    if P["rwkv_gate"]:
        g = silu_lut(_proj(xx, P, pre + ".gate", trace, check, ab), P["lut.silu"], *_act(P))
        rw = round_shift(rw, 15) * g  # s19 x s18 -> s37 Q(2 act_frac)
        _rec(trace, pre + ".g", g)
    o = _proj(rw, P, pre + ".output", trace, check, P["res_bits"])
    st.att_x = xx
    x_new = saturate(i64(x) + o, P["res_bits"])
    for name, val in (("xx", xx), ("mix_k", mk), ("mix_v", mv), ("mix_r", mr), ("r", r), ("k", k), ("v", v),
                      ("wkv", wkv), ("aa", st.aa), ("bb", st.bb), ("pp", st.pp), ("o_in", rw), ("o", o),
                      ("x_out", x_new)):
        _rec(trace, f"{pre}.{name}", val)
    if check:
        check_width(pre + ".aa", st.aa, SUM_BITS)
        check_width(pre + ".bb", st.bb, SUM_BITS)
        check_width(pre + ".o_in", rw, 38)
    return x_new


def channel_mix(x, st: RWKVState, P: dict[str, Any], i: int, trace: Trace = None, check: bool = True) -> np.ndarray:
    """Channel mixing of layer ``i`` (FORMATS §7.6): ``x + r * V(relu(K(mix_k))^2)``; updates
    ``st.ffn_x`` in place."""
    pre, ab = f"layers.{i}.ffn", P["act_bits"]
    xx = layer_norm(x, P, f"layers.{i}.ln2", trace)
    mk = shift_mix(xx, st.ffn_x, P[pre + ".time_mix_k"])
    mr = shift_mix(xx, st.ffn_x, P[pre + ".time_mix_r"])
    r = sigmoid_lut(_proj(mr, P, pre + ".receptance", trace, check, ab), P["lut.sigmoid"], *_act(P))
    kr = np.maximum(_proj(mk, P, pre + ".key", trace, check, ab), 0)
    k2 = kr * kr  # u34 Q(2 act_frac)
    vk = _proj(k2, P, pre + ".value", trace, check, P["res_bits"])
    out = round_shift(r * vk, 15)  # u16 x s24 -> s40 -> residual units
    st.ffn_x = xx
    x_new = saturate(i64(x) + out, P["res_bits"])
    for name, val in (("xx", xx), ("mix_k", mk), ("mix_r", mr), ("r", r), ("k2", k2), ("vk", vk), ("out", out),
                      ("x_out", x_new)):
        _rec(trace, f"{pre}.{name}", val)
    return x_new


def head(x, P: dict[str, Any], trace: Trace = None, check: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Output LayerNorm + ternary head (FORMATS §7.7): ``(logits (B, V) Q(logit_frac), token (B,))``."""
    t = layer_norm(x, P, "norm", trace)
    acc, s, m, E = bitlinear_plain(t, P, "lm_head", trace, check)
    logits = requant(s, m, E, P["logit_bits"])
    token = head_argmax(acc)
    _rec(trace, "logits", logits)
    _rec(trace, "token", token)
    return logits, token


# --------------------------------------------------------------------------- the model
class RWKVIntModel(IntModel):
    """The integer RWKV-4 model. ``P`` is the flat dict of :func:`matmulfree.fpga.convert_rwkv.convert`.

    State: a list of ``n_layers`` :class:`RWKVState`. ``check=True`` raises ``OverflowError`` if a
    non-saturating stage leaves its documented width. ``sequence_logits`` and ``generate`` are
    :class:`~matmulfree.fpga.intref.IntModel`'s (they only call ``init_state`` and ``step``).
    """

    def __init__(self, P: dict[str, Any], check: bool = True) -> None:
        if P.get("arch") != ARCH_RWKV:
            raise KeyError(f"RWKVIntModel: parameter dict is not an RWKV one (arch={P.get('arch')!r}, "
                           f"expected {ARCH_RWKV})")
        need = ["format_version", "d_model", "n_layers", "rwkv_gate", "lut.exp_hi", "lut.div", "emb.q", "norm.gain"]
        missing = [k for k in need if k not in P]
        missing += [n + ".w" for n in bitlinear_names(P.get("n_layers", 0), bool(P.get("rwkv_gate")))
                    if n + ".w" not in P]
        if missing:
            raise KeyError(f"RWKVIntModel: parameter dict lacks {missing[:5]}")
        self.P, self.check = P, check

    def init_state(self, batch: int) -> list[RWKVState]:
        return [RWKVState.zeros(batch, self.P["d_model"]) for _ in range(self.P["n_layers"])]

    def step(self, tokens, state: list[RWKVState] | None = None, trace: Trace = None):
        """One token per row ``tokens (B,)`` -> ``(logits (B, V), argmax token (B,), new state)``;
        the state passed in is not modified."""
        tokens = i64(tokens).reshape(-1)
        if state is None:
            state = self.init_state(tokens.shape[0])
        x = embed(tokens, self.P)
        _rec(trace, "embed", x)
        new_state = []
        for i in range(self.P["n_layers"]):
            st = RWKVState(**vars(state[i]))
            x = time_mix(x, st, self.P, i, trace, self.check)
            x = channel_mix(x, st, self.P, i, trace, self.check)
            new_state.append(st)
        logits, token = head(x, self.P, trace, self.check)
        return logits, token, new_state


# --------------------------------------------------------------------------- resources
def memory_bits(P: dict[str, Any]) -> dict[str, int]:
    """On-chip memory of the integer RWKV model in bits (FORMATS §7.8): ternary weights (2 bits
    each), int8 embedding, int16 gains, 18-bit LayerNorm biases and mixes, 24-bit decays and
    bonuses, per-BitLinear / per-LayerNorm constants, tables, state and working buffers."""
    d, L, hid, V = P["d_model"], P["n_layers"], P["hidden"], P["vocab_size"]
    gate = bool(P["rwkv_gate"])
    names = bitlinear_names(L, gate)
    weights = sum(2 * P[n + ".d_in"] * P[n + ".d_out"] for n in names)
    gains = 16 * (2 * L + 1) * d  # LayerNorm gains
    biases_mixes = 18 * ((2 * L + 1) * d + 5 * L * d)  # LayerNorm biases, token-shift mixes
    decay_bonus = EXP_BITS * 2 * L * d
    consts = len(names) * (17 + 8 + 4) + (2 * L + 1) * (17 + 8)
    lb = P["lut_bits"]
    tables = ((1 << lb) * 16 + ((1 << lb) * P["act_bits"] if gate else 0) + (len(P["lut.recip"])
              + len(P["lut.rsqrt"]) + len(P["lut.div"]) + len(P["lut.exp_hi"]) + len(P["lut.exp_lo"])) * 17)
    state = L * d * (2 * MU_BITS + 2 * SUM_BITS + EXP_BITS)
    # residual, LayerNorm output, three mixes, normalized input + int8 activations, accumulators
    # (widest layer), squared keys.
    buffers = d * P["res_bits"] + 4 * d * 18 + max(d, hid) * (16 + 8) + max(hid, V, d) * 32 + hid * 34
    out = {
        "weights": weights,
        "embedding": 8 * V * d,
        "norm_gains_biases_mixes": gains + biases_mixes + decay_bonus,
        "constants": consts,
        "tables": tables,
        "state": state,
        "buffers": buffers,
    }
    out["total"] = sum(out.values())
    return out
