"""Integer-only reference of one MatMulFreeLM token step: the FPGA hardware contract.

The HLS and RTL implementations must reproduce these functions bit for bit. Every stage is a
small named function working on NumPy ``int64`` arrays with a batch dimension ``B`` first;
formats and every integer step are documented in ``fpga/FORMATS.md`` (section numbers below).

Typical use::

    from matmulfree.fpga import intref
    P = intref.convert(model)                  # float MatMulFreeLM -> integer params (flat dict)
    im = intref.IntModel(P)
    logits, token, state = im.step(np.array([tok]), im.init_state(1))
    trace = im.trace_token(tok)                # every intermediate value of one token
    gen = im.generate([[1, 2, 3]], 256)        # greedy, on-chip argmax

The float "golden" path is :func:`float_step` (the float model's own ``step``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .convert import DEFAULTS, ConversionError, bitlinear_names, convert, export_params
from .fixed import check_width, fp_norm, i64, normalize16, round_shift, saturate
from .luts import recip_lookup, rsqrt_lut, sigmoid_lut, silu_lut

__all__ = [
    "DEFAULTS",
    "ConversionError",
    "IntModel",
    "bitlinear",
    "bitlinear_scale",
    "convert",
    "embed",
    "export_params",
    "float_step",
    "glu",
    "head",
    "head_argmax",
    "int_gain",
    "int_quant_act",
    "int_rmsnorm",
    "memory_bits",
    "mlgru_step",
    "requant",
    "sigmoid_lut",
    "silu_lut",
    "ternary_matvec",
]

Trace = dict[str, np.ndarray] | None


def _rec(trace: Trace, name: str, value) -> None:
    if trace is not None:
        trace[name] = np.array(value, dtype=np.int64, copy=True)


# --------------------------------------------------------------------------- stages (FORMATS §4)
def int_gain(x, gain) -> np.ndarray:
    """Outer RMSNorm (scale-free form): ``normalize16(x) * gain`` -> int32 ``(B, d)``.

    The RMS factor is a positive per-token scalar that the next BitLinear's own norm removes,
    so only the gain is applied (FORMATS §4.1).
    """
    xn, _ = normalize16(x)
    return xn * i64(gain)


def int_rmsnorm(t, gain, rsqrt_table) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """BitLinear's RMSNorm: ``x' = normalize16(t)``, ``z = x' * gain`` (int32),
    ``S = sum(x'^2)`` (int48), ``1/sqrt(S) ~= r_m * 2**r_e`` (FORMATS §4.2).

    Returns ``(x', z, S (B,1), r_m (B,1), r_e (B,1))``.
    """
    xn, _ = normalize16(t)
    z = xn * i64(gain)
    s = (xn * xn).sum(axis=-1, keepdims=True)
    r_m, r_e = rsqrt_lut(s, rsqrt_table)
    return xn, z, s, r_m, r_e


def int_quant_act(z, recip_table) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-token absmax int8 quantization without division (FORMATS §4.3).

    ``a = max|z|``, ``e = bitlength(a)``, ``m = a >> (e-11)``, ``z2 = sat18(round_shift(z, e-17))``,
    ``x_q = sat8(round_shift(z2 * RECIP[m-1024], 26))``. Returns ``(x_q, a_m2, a_e)`` with
    ``z ~= x_q * a_m2 * 2**a_e / 127``, ``a_m2 = 2m+1`` (12 bits), ``a_e = e - 12``.
    """
    z = i64(z)
    a = np.abs(z).max(axis=-1, keepdims=True)
    recip, m, e = recip_lookup(a, recip_table)
    z2 = saturate(round_shift(z, e - 17), 18)
    x_q = saturate(round_shift(z2 * recip, 26), 8)
    return x_q, 2 * m + 1, e - 12


def ternary_matvec(x_q, w) -> np.ndarray:
    """``acc[b, j] = sum_i w[j, i] * x_q[b, i]`` with ``w`` in {-1, 0, 1}: add / subtract / skip
    into int32 (exact; computed with float64 BLAS since ``|acc| <= 128 * d_in < 2**53``)."""
    acc = np.asarray(x_q, dtype=np.float64) @ np.asarray(w, dtype=np.float64).T
    return acc.astype(np.int64)


def bitlinear_scale(a_m2, a_e, r_m, r_e, k_m: int, k_e: int, acc_shift: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-token output scale as a pseudo-float (FORMATS §4.5):
    ``(p_m, p_e) = fp_norm(a_m2 * r_m)``, ``(q_m, q_e) = fp_norm(p_m * k_m)``,
    ``E = acc_shift + a_e + r_e + k_e + p_e + q_e``; the output is ``acc_s * q_m * 2**E``."""
    p_m, p_e = fp_norm(i64(a_m2) * i64(r_m))
    q_m, q_e = fp_norm(p_m * int(k_m))
    return q_m, acc_shift + i64(a_e) + i64(r_e) + int(k_e) + p_e + q_e


def requant(acc_s, q_m, E, bits: int) -> np.ndarray:
    """``sat_bits(round_shift(acc_s * q_m, -E))`` (FORMATS §4.6). For ``E >= 0`` (never met by
    a sane model) the product is clamped to +-2**31 before the left shift by ``min(E, 31)``."""
    p = i64(acc_s) * i64(q_m)
    E = i64(E)
    left = np.left_shift(np.clip(p, -(1 << 31), 1 << 31), np.clip(E, 0, 31))
    return saturate(np.where(E < 0, round_shift(p, -E), left), bits)


def head_argmax(acc) -> np.ndarray:
    """Greedy token on chip: index of the largest head accumulator, lowest index on ties ``(B,)``."""
    return np.argmax(i64(acc), axis=-1).astype(np.int64)


# --------------------------------------------------------------------------- composite stages
def bitlinear(t, P: dict[str, Any], key: str, trace: Trace = None, check: bool = True):
    """One BitLinear on an arbitrarily scaled integer input ``t (B, d_in)`` (FORMATS §4.2-4.5).

    Returns ``(acc (B, d_out) int32, acc_s (B, d_out) int18, q_m (B,1), E (B,1))``; the real
    output in the layer's output unit is ``acc_s * q_m * 2**E`` (use :func:`requant`).
    """
    xn, z, s, r_m, r_e = int_rmsnorm(t, P[key + ".norm.gain"], P["lut.rsqrt"])
    x_q, a_m2, a_e = int_quant_act(z, P["lut.recip"])
    acc = ternary_matvec(x_q, P[key + ".w"])
    acc_s = round_shift(acc, P[key + ".acc_shift"])
    q_m, E = bitlinear_scale(a_m2, a_e, r_m, r_e, P[key + ".k_m"], P[key + ".k_e"], P[key + ".acc_shift"])
    if check:
        check_width(key + ".x_norm", xn, 16)
        check_width(key + ".z", z, 32)
        check_width(key + ".sumsq", s, 48, signed=False)
        check_width(key + ".acc", acc, 32)
        check_width(key + ".acc_s", acc_s, 18)
        check_width(key + ".q_m", q_m, 17, signed=False)
    for name, v in (("x_norm", xn), ("z", z), ("sumsq", s), ("r_m", r_m), ("r_e", r_e), ("x_q", x_q),
                    ("a_m2", a_m2), ("a_e", a_e), ("acc", acc), ("acc_s", acc_s), ("q_m", q_m), ("E", E)):
        _rec(trace, f"{key}.{name}", v)
    return acc, acc_s, q_m, E


def _act_luts(P):
    return P["act_frac"], P["lut_bits"], P["lut_frac"]


def mlgru_step(x, h, P: dict[str, Any], i: int, trace: Trace = None, check: bool = True):
    """Token mixer of layer ``i`` (FORMATS §4.7): residual ``x (B, d)`` and state ``h (B, d)``
    (Q(act_frac)) -> ``(x + o, h')``, both saturated to their widths."""
    pre, af = f"layers.{i}", _act_luts(P)
    sig, silu = P["lut.sigmoid"], P["lut.silu"]
    t = int_gain(x, P[f"{pre}.mixer_norm.gain"])
    _rec(trace, f"{pre}.mixer.t", t)
    _, fs, fm, fE = bitlinear(t, P, f"{pre}.mixer.f_proj", trace, check)
    f_pre = requant(fs, fm, fE, P["act_bits"])
    f = sigmoid_lut(f_pre, sig, *af)
    if P["forget_lower_bound"]:
        lb = i64(P[f"{pre}.mixer.lb"])
        f = lb + round_shift((32768 - lb) * f, 15)
    _, cs, cm, cE = bitlinear(t, P, f"{pre}.mixer.c_proj", trace, check)
    c_pre = requant(cs, cm, cE, P["act_bits"])
    c = silu_lut(c_pre, silu, *af)
    _, g, _, _ = bitlinear(t, P, f"{pre}.mixer.g_proj", trace, check)
    h = saturate(round_shift(f * i64(h) + (32768 - f) * c, 15), P["act_bits"])
    if P["gate_released"]:
        gn, _ = normalize16(g * i64(P[f"{pre}.mixer.g_norm.gain"]))
        o_in = gn * silu_lut(h, silu, *af)
    else:
        o_in = g * sigmoid_lut(h, sig, *af)
    _, os_, om, oE = bitlinear(o_in, P, f"{pre}.mixer.o_proj", trace, check)
    o = requant(os_, om, oE, P["res_bits"])
    x_new = saturate(i64(x) + o, P["res_bits"])
    for name, v in (("f_pre", f_pre), ("f", f), ("c_pre", c_pre), ("c", c), ("h", h), ("o_in", o_in),
                    ("o", o), ("x_out", x_new)):
        _rec(trace, f"{pre}.mixer.{name}", v)
    if check:
        check_width(f"{pre}.mixer.f", f, 16, signed=False)
        check_width(f"{pre}.mixer.o_in", o_in, 36)
    return x_new, h


def glu(x, P: dict[str, Any], i: int, trace: Trace = None, check: bool = True) -> np.ndarray:
    """Channel mixer of layer ``i`` (FORMATS §4.8): residual ``x (B, d)`` -> ``x + down``."""
    pre, hid = f"layers.{i}", P["hidden"]
    t = int_gain(x, P[f"{pre}.mlp_norm.gain"])
    _rec(trace, f"{pre}.mlp.t", t)
    _, s, m, E = bitlinear(t, P, f"{pre}.mlp.w_in", trace, check)
    gate = requant(s[:, :hid], m, E, P["act_bits"])
    up = s[:, hid:]
    p = silu_lut(gate, P["lut.silu"], *_act_luts(P)) * up
    _, ds, dm, dE = bitlinear(p, P, f"{pre}.mlp.w_down", trace, check)
    down = requant(ds, dm, dE, P["res_bits"])
    x_new = saturate(i64(x) + down, P["res_bits"])
    for name, v in (("gate", gate), ("up", up), ("p", p), ("down", down), ("x_out", x_new)):
        _rec(trace, f"{pre}.mlp.{name}", v)
    if check:
        check_width(f"{pre}.mlp.p", p, 36)
    return x_new


def embed(tokens, P: dict[str, Any]) -> np.ndarray:
    """``x = emb_q[token] << res_shift`` (FORMATS §4.0): residual ``(B, d)``."""
    tokens = i64(tokens)
    if tokens.size and (int(tokens.min()) < 0 or int(tokens.max()) >= P["vocab_size"]):
        raise ValueError(f"token ids must be in [0, {P['vocab_size']}), got [{int(tokens.min())}, {int(tokens.max())}]")
    return np.left_shift(i64(P["emb.q"])[tokens], P["res_shift"])


def head(x, P: dict[str, Any], trace: Trace = None, check: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Final norm + ternary LM head (FORMATS §4.9): ``(logits (B, V) Q(logit_frac), token (B,))``."""
    t = int_gain(x, P["norm.gain"])
    _rec(trace, "norm.t", t)
    acc, s, m, E = bitlinear(t, P, "lm_head", trace, check)
    logits = requant(s, m, E, P["logit_bits"])
    token = head_argmax(acc)
    _rec(trace, "logits", logits)
    _rec(trace, "token", token)
    return logits, token


# --------------------------------------------------------------------------- the model
class IntModel:
    """The integer MatMulFreeLM. ``P`` is the flat dict of :func:`convert`.

    State: a list of ``n_layers`` arrays ``h (B, d)`` in Q(act_frac), zeros at the start.
    ``check=True`` raises ``OverflowError`` if any non-saturating stage leaves its documented width.
    """

    def __init__(self, P: dict[str, Any], check: bool = True) -> None:
        missing = [k for k in ("format_version", "d_model", "n_layers", "lut.sigmoid", "emb.q") if k not in P]
        missing += [n + ".w" for n in bitlinear_names(P.get("n_layers", 0)) if n + ".w" not in P]
        if missing:
            raise KeyError(f"IntModel: parameter dict lacks {missing[:5]}")
        self.P, self.check = P, check

    @property
    def logit_scale(self) -> float:
        """Real value of one logit LSB (``2**-logit_frac``)."""
        return 2.0 ** -self.P["logit_frac"]

    def init_state(self, batch: int) -> list[np.ndarray]:
        return [np.zeros((batch, self.P["d_model"]), dtype=np.int64) for _ in range(self.P["n_layers"])]

    def step(self, tokens, state: list[np.ndarray] | None = None, trace: Trace = None):
        """One token per row ``tokens (B,)`` -> ``(logits (B, V), argmax token (B,), new state)``."""
        tokens = i64(tokens).reshape(-1)
        if state is None:
            state = self.init_state(tokens.shape[0])
        x = embed(tokens, self.P)
        _rec(trace, "embed", x)
        new_state = []
        for i in range(self.P["n_layers"]):
            x, h = mlgru_step(x, state[i], self.P, i, trace, self.check)
            x = glu(x, self.P, i, trace, self.check)
            new_state.append(h)
        logits, token = head(x, self.P, trace, self.check)
        return logits, token, new_state

    def trace_token(self, token: int, state: list[np.ndarray] | None = None) -> dict[str, np.ndarray]:
        """Every intermediate integer of one token step (batch 1), keyed by stage name."""
        trace: dict[str, np.ndarray] = {}
        self.step(np.array([token]), state, trace)
        return trace

    def sequence_logits(self, ids) -> np.ndarray:
        """Teacher-forced logits ``(B, T, V)`` (integer, Q(logit_frac)) of token ids ``(B, T)``."""
        ids = i64(ids)
        state, out = self.init_state(ids.shape[0]), []
        for t in range(ids.shape[1]):
            logits, _, state = self.step(ids[:, t], state)
            out.append(logits)
        return np.stack(out, axis=1)

    def generate(self, prompt, max_new_tokens: int) -> np.ndarray:
        """Greedy generation: prompt ``(B, T)`` (T >= 1) fed token by token, then
        ``max_new_tokens`` on-chip argmax tokens ``(B, N)``."""
        ids = i64(prompt)
        if ids.ndim == 1:
            ids = ids[None]
        if ids.shape[1] == 0:
            raise ValueError("generate needs a prompt of at least one token")
        state = self.init_state(ids.shape[0])
        for t in range(ids.shape[1]):
            _, token, state = self.step(ids[:, t], state)
        out = []
        for n in range(max_new_tokens):
            out.append(token)
            if n + 1 < max_new_tokens:
                _, token, state = self.step(token, state)
        return np.stack(out, axis=1) if out else np.zeros((ids.shape[0], 0), dtype=np.int64)


# --------------------------------------------------------------------------- float golden path
def float_step(model, tokens, state=None):
    """The float model's recurrent step (golden reference): ``(logits (B, V) float64 numpy, state)``."""
    import torch

    with torch.no_grad():
        logits, state = model.step(torch.as_tensor(np.asarray(tokens).reshape(-1), dtype=torch.long), state)
    return logits.double().numpy(), state


# --------------------------------------------------------------------------- resources
def memory_bits(P: dict[str, Any]) -> dict[str, int]:
    """On-chip memory of the integer model in bits (FORMATS §6): ternary weights (2 bits each),
    int8 embedding, int16 gains and lower bounds, per-BitLinear constants, tables, recurrent
    state and the per-token working buffers."""
    d, L, hid, V = P["d_model"], P["n_layers"], P["hidden"], P["vocab_size"]
    names = bitlinear_names(L)
    weights = sum(2 * P[n + ".d_in"] * P[n + ".d_out"] for n in names)
    gains = 16 * (sum(P[n + ".d_in"] for n in names) + (2 * L + 1) * d)
    if P["gate_released"]:
        gains += 16 * L * d
    if P["forget_lower_bound"]:
        gains += 16 * L * d
    consts = len(names) * (17 + 8 + 4)
    lb = P["lut_bits"]
    tables = (1 << lb) * 16 + (1 << lb) * P["act_bits"] + len(P["lut.recip"]) * 17 + len(P["lut.rsqrt"]) * 17
    state = L * d * P["act_bits"]
    # residual, normalized input, int8 activations, accumulators (widest layer), GLU product.
    buffers = d * P["res_bits"] + max(d, hid) * (16 + 8) + max(2 * hid, V) * 32 + hid * 36
    out = {
        "weights": weights,
        "embedding": 8 * V * d,
        "norm_gains_and_bounds": gains,
        "bitlinear_constants": consts,
        "tables": tables,
        "state": state,
        "buffers": buffers,
    }
    out["total"] = sum(out.values())
    return out

