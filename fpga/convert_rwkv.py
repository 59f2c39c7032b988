"""Converter: a float RWKV-4 model (``architecture: rwkv``) -> the integer parameters of the FPGA
reference :mod:`matmulfree.fpga.intref_rwkv` (one flat dict; key names in ``fpga/FORMATS.md``
section 7.9). Every integer constant is computed here; the integer model never touches a float.

The BitLinear constants, gains and the tables shared with the MLGRU come from
:mod:`matmulfree.fpga.convert` (imported, not copied).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from . import luts
from .convert import DEFAULTS as MLGRU_DEFAULTS
from .convert import ConversionError, acc_shift_for, quantize_gain
from .fixed import fp_const
from .intref_rwkv import ARCH_RWKV, EXP_BITS, MU_BITS, MU_FRAC, RWKV_FORMAT_VERSION

#: Defaults of the tunable format parameters: the MLGRU's plus ``ln_frac`` (LayerNorm outputs
#: and token-shift inputs in Q(ln_frac), signed act_bits).
DEFAULTS: dict[str, int] = {**MLGRU_DEFAULTS, "ln_frac": 11}

__all__ = ["DEFAULTS", "check_formats", "convert_arrays", "layer_norm_params", "mix_params",
           "wkv_params", "tables"]


def _np(t) -> np.ndarray:
    return t.detach().float().cpu().numpy().astype(np.float64)


# --------------------------------------------------------------------------- model-free pieces
def tables(f: dict[str, int]) -> dict[str, np.ndarray]:
    """Every lookup table of the RWKV contract for the format parameters ``f``."""
    hi, lo = luts.make_exp_tables()
    return {
        "lut.recip": luts.make_recip_table(),
        "lut.rsqrt": luts.make_rsqrt_table(),
        "lut.sigmoid": luts.make_sigmoid_table(f["lut_bits"], f["lut_frac"]),
        "lut.silu": luts.make_silu_table(f["lut_bits"], f["lut_frac"], f["act_frac"]),
        "lut.exp_hi": hi,
        "lut.exp_lo": lo,
        "lut.div": luts.make_div_table(),
    }


def layer_norm_params(key: str, weight: np.ndarray, bias: np.ndarray, ln_frac: int, bits: int) -> dict[str, Any]:
    """Integer LayerNorm ``key``: ``gain`` s16 (``round(g * s_g)``), ``bias`` in Q(ln_frac)
    (signed ``bits``), ``k_m 2^k_e = sqrt(n) / s_g``; ``gain_scale`` is informational."""
    weight, bias = np.asarray(weight, np.float64).reshape(-1), np.asarray(bias, np.float64).reshape(-1)
    g_q, s_g = quantize_gain(weight)
    b = np.round(bias * 2.0**ln_frac)
    lim = 1 << (bits - 1)
    if b.size and np.abs(b).max() >= lim:
        raise ConversionError(f"fpga converter: {key}.bias reaches {np.abs(bias).max():.4g}, beyond the "
                              f"Q({ln_frac}) range +-{lim / 2**ln_frac:g} of the LayerNorm output; "
                              f"lower ln_frac (or calibrate)")
    k_m, k_e = fp_const(math.sqrt(weight.size) / s_g)
    return {key + ".gain": g_q, key + ".gain_scale": s_g, key + ".bias": b.astype(np.int64),
            key + ".k_m": k_m, key + ".k_e": k_e}


def mix_params(key: str, mu: np.ndarray) -> np.ndarray:
    """Token-shift mix ``mu (n,)`` as signed 18-bit Q15 (``|mu| < 4``)."""
    mu = np.asarray(mu, np.float64).reshape(-1)
    q = np.round(mu * 2.0**MU_FRAC)
    lim = 1 << (MU_BITS - 1)
    if q.size and np.abs(q).max() >= lim:
        raise ConversionError(f"fpga converter: {key} reaches {np.abs(mu).max():.4g}; token-shift mixes must "
                              f"lie in (-{lim / 2**MU_FRAC:g}, {lim / 2**MU_FRAC:g}) (s{MU_BITS} Q{MU_FRAC})")
    return q.astype(np.int64)


def wkv_params(key: str, decay: np.ndarray, bonus: np.ndarray) -> dict[str, np.ndarray]:
    """``w = decay > 0`` and ``u = bonus`` (both ``(d,)``, real) in Q16: ``w`` is rounded and
    clamped to ``[1, 2^23 - 1]`` (a decay below ``2^-17`` becomes ``2^-16``), ``u`` must lie in
    ``(-128, 128)``."""
    decay, bonus = np.asarray(decay, np.float64).reshape(-1), np.asarray(bonus, np.float64).reshape(-1)
    if decay.size and not (decay > 0).all():
        raise ConversionError(f"fpga converter: {key}.w (the decay exp(time_decay)) must be > 0")
    lim = 1 << (EXP_BITS - 1)
    one = 2.0**luts.EXP_IN_FRAC
    u = np.round(bonus * one)
    if u.size and np.abs(u).max() >= lim:
        raise ConversionError(f"fpga converter: {key}.u (time_first) reaches {np.abs(bonus).max():.4g}, beyond "
                              f"the exponent range +-{lim / one:g}")
    w = np.clip(np.round(decay * one), 1, lim - 1)
    return {key + ".w": w.astype(np.int64), key + ".u": u.astype(np.int64)}


def check_formats(f: dict[str, int]) -> None:
    """Raise :class:`ConversionError` on inconsistent format parameters."""
    if not (0 <= f["lut_frac"] <= f["act_frac"] <= min(f["act_bits"] - 2, luts.EXP_IN_FRAC)):
        raise ConversionError(f"fpga converter: need 0 <= lut_frac <= act_frac <= min(act_bits-2, 16), got {f}")
    if not (0 <= f["ln_frac"] <= f["act_bits"] - 2):
        raise ConversionError(f"fpga converter: need 0 <= ln_frac <= act_bits-2, got ln_frac={f['ln_frac']}")
    if not (4 <= f["lut_bits"] <= 14) or f["act_bits"] > 18 or f["res_bits"] > 32 or f["logit_bits"] > 32:
        raise ConversionError(f"fpga converter: format widths out of the supported range: {f}")
    if not (0 <= f["res_shift"] <= f["res_bits"] - 9):
        raise ConversionError(f"fpga converter: res_shift={f['res_shift']} must be in [0, res_bits-9]")


# --------------------------------------------------------------------------- float weights -> P
def convert_arrays(W: dict[str, Any], shape: dict[str, int], **fmt: int) -> dict[str, Any]:
    """The integer parameter dict from float RWKV-4 weights ``W`` (NumPy arrays, real values).

    ``shape``: ``d_model``, ``n_layers``, ``vocab_size``, ``hidden`` (channel-mix width),
    ``rwkv_gate`` (0/1). ``W`` keys (FORMATS §7.9): ``emb (V, d)`` (the norm after the embedding
    already applied), per layer ``layers.i.ln1.{weight,bias}``, ``layers.i.ln2.{weight,bias}``,
    ``layers.i.att.{mu_r,mu_k,mu_v[,mu_g],decay,bonus}`` (``decay = exp(time_decay) > 0``),
    ``layers.i.ffn.{mu_r,mu_k}``, ``ln_out.{weight,bias}``, and per BitLinear ``<n>`` of
    :func:`~matmulfree.fpga.intref_rwkv.bitlinear_names`: ``<n>.w`` (ternary ``(out, in)``),
    ``<n>.s_w`` (weight scale, ``W_real = w / s_w``), ``<n>.norm`` (RMSNorm gain ``(in,)``).
    ``**fmt`` overrides :data:`DEFAULTS`.
    """
    from matmulfree.quant import pack_ternary

    from .intref_rwkv import bitlinear_names

    unknown = sorted(set(fmt) - set(DEFAULTS))
    if unknown:
        raise ConversionError(f"fpga converter: unknown format parameter(s) {unknown}; known: {sorted(DEFAULTS)}")
    f = {**DEFAULTS, **fmt}
    check_formats(f)
    d, L, V, hid, gate = (int(shape[k]) for k in ("d_model", "n_layers", "vocab_size", "hidden", "rwkv_gate"))
    P: dict[str, Any] = {"format_version": RWKV_FORMAT_VERSION, "arch": ARCH_RWKV, "d_model": d, "n_layers": L,
                         "vocab_size": V, "hidden": hid, "rwkv_gate": gate, **{k: int(v) for k, v in f.items()}}
    P.update(tables(f))
    emb = np.asarray(W["emb"], np.float64)
    if emb.shape != (V, d):
        raise ConversionError(f"fpga converter: emb has shape {emb.shape}, expected {(V, d)}")
    s_e = 127.0 / max(float(np.abs(emb).max()), 1e-12)
    P["emb.q"] = np.clip(np.round(emb * s_e), -127, 127).astype(np.int64)
    P["emb.scale"] = s_e
    u_res = 2.0 ** -f["res_shift"] / s_e
    P["res_unit"] = u_res
    u_act, u_logit = 2.0 ** -f["act_frac"], 2.0 ** -f["logit_frac"]

    def put_bitlinear(key: str, u_out: float | None, out_bits: int) -> None:
        w = np.asarray(W[key + ".w"]).astype(np.int64)
        if w.size and (w.min() < -1 or w.max() > 1):
            raise ConversionError(f"fpga converter: {key}.w is not ternary (values {w.min()}..{w.max()})")
        d_out, d_in = w.shape
        g_q, s_g = quantize_gain(W[key + ".norm"])
        s_w = float(W[key + ".s_w"])
        P[key + ".w"] = w
        P[key + ".w_packed"] = pack_ternary(_torch_int8(w)).numpy()
        P[key + ".norm.gain"], P[key + ".norm.gain_scale"] = g_q, s_g
        P[key + ".s_w"] = s_w
        P[key + ".d_in"], P[key + ".d_out"] = d_in, d_out
        P[key + ".acc_shift"] = acc_shift_for(d_in)
        k = math.sqrt(d_in) / (127.0 * s_g * s_w * (u_out if u_out is not None else 1.0))
        P[key + ".k_m"], P[key + ".k_e"] = fp_const(k)
        P[key + ".out_bits"] = out_bits

    ab = f["act_bits"]
    for i in range(L):
        pre = f"layers.{i}"
        for ln in ("ln1", "ln2"):
            P.update(layer_norm_params(f"{pre}.{ln}", W[f"{pre}.{ln}.weight"], W[f"{pre}.{ln}.bias"], f["ln_frac"], ab))
        for mu in ("mu_r", "mu_k", "mu_v") + (("mu_g",) if gate else ()):
            P[f"{pre}.att.{mu}"] = mix_params(f"{pre}.att.{mu}", W[f"{pre}.att.{mu}"])
        for mu in ("mu_r", "mu_k"):
            P[f"{pre}.ffn.{mu}"] = mix_params(f"{pre}.ffn.{mu}", W[f"{pre}.ffn.{mu}"])
        P.update(wkv_params(f"{pre}.att", W[f"{pre}.att.decay"], W[f"{pre}.att.bonus"]))
    P.update(layer_norm_params("ln_out", W["ln_out.weight"], W["ln_out.bias"], f["ln_frac"], ab))
    for key in bitlinear_names(L, bool(gate)):
        part = key.rsplit(".", 1)[-1]
        if key == "lm_head":
            put_bitlinear(key, u_logit, f["logit_bits"])
        elif key.endswith("att.o_proj") or key.endswith("ffn.v_proj"):
            put_bitlinear(key, u_res, f["res_bits"])
        elif key.endswith("ffn.k_proj"):
            put_bitlinear(key, None, 18)  # its per-token scale is dropped (relu^2 feeds a BitLinear)
        else:
            assert part in ("r_proj", "k_proj", "v_proj", "g_proj"), key
            put_bitlinear(key, u_act, ab)
    return P


def _torch_int8(w: np.ndarray):
    import torch

    return torch.from_numpy(np.ascontiguousarray(w.astype(np.int8)))
