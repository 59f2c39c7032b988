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

__all__ = ["DEFAULTS", "bitlinear_units", "calibrate", "check_formats", "check_supported", "convert",
           "convert_arrays", "float_weights", "layer_norm_params", "mix_params",
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
def bitlinear_units(key: str, f: dict[str, int], gate: bool) -> tuple[float, float, int]:
    """``(input unit, output unit, output bits)`` of BitLinear ``key`` (real value of one LSB)."""
    u_ln, u_act = 2.0 ** -f["ln_frac"], 2.0 ** -f["act_frac"]
    if key == "lm_head":
        return u_ln, 2.0 ** -f["logit_frac"], f["logit_bits"]
    if key.endswith("att.output"):  # r (Q15) * wkv (Q(act_frac)) [* silu(g) (Q(act_frac)) after a 15-bit shift]
        return (u_act * u_act if gate else 2.0**-15 * u_act), None, f["res_bits"]
    if key.endswith("ffn.value"):  # relu(k)^2 in Q(2 act_frac)
        return u_act * u_act, None, f["res_bits"]
    return u_ln, u_act, f["act_bits"]


def convert_arrays(W: dict[str, Any], shape: dict[str, int], **fmt: int) -> dict[str, Any]:
    """The integer parameter dict from float RWKV-4 weights ``W`` (NumPy arrays, real values).

    ``shape``: ``d_model``, ``n_layers``, ``vocab_size``, ``hidden`` (channel-mix width),
    ``rwkv_gate`` (0/1). ``W`` keys (FORMATS §7.9): ``emb (V, d)`` (the LayerNorm after the
    embedding already applied), per layer ``layers.i.ln1.{weight,bias}``, ``layers.i.ln2.{weight,bias}``,
    ``layers.i.att.{time_mix_r,time_mix_k,time_mix_v,decay,bonus}`` (``decay = exp(time_decay) > 0``,
    ``bonus = time_first``), ``layers.i.ffn.{time_mix_r,time_mix_k}``, ``norm.{weight,bias}``, and
    per BitLinear ``<n>`` of :func:`~matmulfree.fpga.intref_rwkv.bitlinear_names`: ``<n>.w``
    (ternary ``(out, in)``) and ``<n>.s_w`` (weight scale: real weights ``w / s_w``).
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

    ab = f["act_bits"]
    for i in range(L):
        pre = f"layers.{i}"
        for ln in ("ln1", "ln2"):
            P.update(layer_norm_params(f"{pre}.{ln}", W[f"{pre}.{ln}.weight"], W[f"{pre}.{ln}.bias"], f["ln_frac"], ab))
        for part, mixes in (("att", ("time_mix_r", "time_mix_k", "time_mix_v")), ("ffn", ("time_mix_r", "time_mix_k"))):
            for mu in mixes:
                P[f"{pre}.{part}.{mu}"] = mix_params(f"{pre}.{part}.{mu}", W[f"{pre}.{part}.{mu}"])
        P.update(wkv_params(f"{pre}.att", W[f"{pre}.att.decay"], W[f"{pre}.att.bonus"]))
    P.update(layer_norm_params("norm", W["norm.weight"], W["norm.bias"], f["ln_frac"], ab))
    for key in bitlinear_names(L, bool(gate)):
        w = np.asarray(W[key + ".w"]).astype(np.int64)
        if w.size and (w.min() < -1 or w.max() > 1):
            raise ConversionError(f"fpga converter: {key}.w is not ternary (values {w.min()}..{w.max()})")
        d_out, d_in = w.shape
        u_in, u_out, bits = bitlinear_units(key, f, bool(gate))
        s_w = float(W[key + ".s_w"])
        P[key + ".w"] = w
        P[key + ".w_packed"] = pack_ternary(_torch_int8(w)).numpy()
        P[key + ".s_w"] = s_w
        P[key + ".d_in"], P[key + ".d_out"] = d_in, d_out
        P[key + ".acc_shift"] = acc_shift_for(d_in)
        # y_out_units = acc * (a_m2 2^a_e / 127) * u_in / (s_w * u_out)
        P[key + ".k_m"], P[key + ".k_e"] = fp_const(u_in / (127.0 * s_w * (u_out if u_out is not None else u_res)))
        P[key + ".out_bits"] = bits
    return P


def _torch_int8(w: np.ndarray):
    import torch

    return torch.from_numpy(np.ascontiguousarray(w.astype(np.int8)))


# --------------------------------------------------------------------------- the torch model -> P
def check_supported(model) -> None:
    """Raise :class:`ConversionError` (naming the field) unless ``model`` is a convertible RWKV model."""
    from matmulfree.layers import BitLinear

    cfg = getattr(model, "config", None)
    if getattr(cfg, "architecture", None) != "rwkv":
        raise ConversionError(f"fpga RWKV converter: expected an 'rwkv' model, got {type(model).__name__}")
    if not cfg.quantize_activations:
        raise ConversionError("fpga converter: config field 'quantize_activations'=False is not supported; "
                              "the chip computes int8 activations")
    if not cfg.ternary_head or not isinstance(model.lm_head, BitLinear):
        raise ConversionError("fpga converter: config field 'ternary_head'=False (full-precision LM head) is not "
                              "supported; the chip computes the head as a ternary BitLinear")


def float_weights(model) -> dict[str, np.ndarray]:
    """The float weights dict of :func:`convert_arrays` from an :class:`~matmulfree.models.rwkv.RWKVLM`
    (the embedding passed through ``ln_in``; each BitLinear's ternary weights and scale)."""
    import torch

    from .intref_rwkv import bitlinear_names

    W: dict[str, np.ndarray] = {}
    with torch.no_grad():
        W["emb"] = _np(model.ln_in(model.embed.weight.float()))
    for i, layer in enumerate(model.layers):
        pre = f"layers.{i}"
        for ln in ("ln1", "ln2"):
            W[f"{pre}.{ln}.weight"] = _np(getattr(layer, ln).weight)
            W[f"{pre}.{ln}.bias"] = _np(getattr(layer, ln).bias)
        for mu in ("time_mix_r", "time_mix_k", "time_mix_v"):
            W[f"{pre}.att.{mu}"] = _np(getattr(layer.att, mu))
        for mu in ("time_mix_r", "time_mix_k"):
            W[f"{pre}.ffn.{mu}"] = _np(getattr(layer.ffn, mu))
        W[f"{pre}.att.decay"] = _np(layer.att.decay())
        W[f"{pre}.att.bonus"] = _np(layer.att.time_first)
    W["norm.weight"], W["norm.bias"] = _np(model.norm.weight), _np(model.norm.bias)
    for key in bitlinear_names(len(model.layers), model.config.rwkv_gate):
        bl = model.get_submodule(key)
        w_q, s_w = bl.ternary_weight()
        W[key + ".w"] = w_q.cpu().numpy().astype(np.int64)
        W[key + ".s_w"] = np.asarray(float(s_w))
    return W


def calibrate(model, calib_ids, lut_frac: int = DEFAULTS["lut_frac"]) -> dict[str, int]:
    """Choose ``res_shift``, ``act_frac`` and ``ln_frac`` from the float model's ranges on
    ``calib_ids (B, T)``: ``res_shift`` as the MLGRU's (8x head-room in ``res_bits``); ``act_frac``
    from the largest |output| ``R`` of every projection feeding sigmoid, SiLU, WKV or relu^2
    (``floor(15 - log2 max(R, 1))`` in [lut_frac, 13], 4x head-room); ``ln_frac`` from the largest
    |LayerNorm output| ``N`` (``floor(15 - log2 max(N, 1))`` in [4, 13])."""
    import torch

    ranges = {"res": 0.0, "act": 0.0, "ln": 0.0}
    hooks = []

    def hook(kind):
        def fn(_m, _inp, out):
            x = out[0] if isinstance(out, tuple) else out
            ranges[kind] = max(ranges[kind], float(x.detach().abs().max()))
        return fn

    hooks.append(model.ln_in.register_forward_hook(hook("res")))
    hooks.append(model.norm.register_forward_hook(hook("ln")))
    for layer in model.layers:
        hooks.append(layer.register_forward_hook(hook("res")))
        hooks += [layer.ln1.register_forward_hook(hook("ln")), layer.ln2.register_forward_hook(hook("ln"))]
        mods = [layer.att.receptance, layer.att.key, layer.att.value, layer.ffn.receptance, layer.ffn.key]
        mods += [layer.att.gate] if layer.att.gate is not None else []
        hooks += [m.register_forward_hook(hook("act")) for m in mods]
    try:
        with torch.no_grad():
            model(torch.as_tensor(calib_ids, dtype=torch.long))
    finally:
        for h in hooks:
            h.remove()
    with torch.no_grad():
        emb = _np(model.ln_in(model.embed.weight.float()))
    s_e = 127.0 / max(float(np.abs(emb).max()), 1e-12)
    target = (1 << (DEFAULTS["res_bits"] - 3)) / max(ranges["res"] * s_e, 1e-12)
    res_shift = int(min(16, max(0, math.floor(math.log2(target)))))
    act_frac = int(min(13, max(lut_frac, math.floor(15 - math.log2(max(ranges["act"], 1.0))))))
    ln_frac = int(min(13, max(4, math.floor(15 - math.log2(max(ranges["ln"], 1.0))))))
    return {"res_shift": res_shift, "act_frac": act_frac, "ln_frac": ln_frac}


def convert(model, calib_ids=None, **fmt: int) -> dict[str, Any]:
    """Every integer parameter of the RWKV FPGA reference from a float RWKV model (FORMATS §7.9).

    Args:
        model: an :class:`~matmulfree.models.rwkv.RWKVLM` (packed or not).
        calib_ids: optional token ids ``(B, T)``; if given, ``res_shift``, ``act_frac`` and
            ``ln_frac`` are chosen by :func:`calibrate` (explicit keyword values still win).
        **fmt: overrides of :data:`DEFAULTS`.
    Raises:
        ConversionError: unsupported model/config or inconsistent format parameters.
    """
    check_supported(model)
    unknown = sorted(set(fmt) - set(DEFAULTS))
    if unknown:
        raise ConversionError(f"fpga converter: unknown format parameter(s) {unknown}; known: {sorted(DEFAULTS)}")
    f: dict[str, int] = {}
    if calib_ids is not None:
        f.update(calibrate(model, calib_ids, fmt.get("lut_frac", DEFAULTS["lut_frac"])))
    f.update(fmt)
    cfg = model.config
    shape = {"d_model": cfg.d_model, "n_layers": cfg.n_layers, "vocab_size": cfg.vocab_size,
             "hidden": cfg.intermediate_size, "rwkv_gate": int(cfg.rwkv_gate)}
    return convert_arrays(float_weights(model), shape, **f)
