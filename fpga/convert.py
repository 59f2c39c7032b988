"""Converter: a float :class:`~matmulfree.models.MatMulFreeLM` -> the integer parameters of the
FPGA reference (one flat dict of NumPy arrays and Python scalars; the HLS and RTL exporters read it).

Key names and formats are documented in ``fpga/FORMATS.md`` section 5. Every integer constant is
computed here; the run-time reference (:mod:`matmulfree.fpga.intref`) never touches a float.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from . import luts
from .fixed import fp_const

#: Version of the integer contract (bump on any incompatible change of FORMATS.md).
FORMAT_VERSION = 1

#: Defaults of the tunable format parameters (FORMATS.md section 1).
DEFAULTS: dict[str, int] = {
    "act_frac": 11,  # Q(act_frac) in signed act_bits: gate pre-activations, SiLU outputs, state h
    "act_bits": 18,
    "lut_bits": 10,  # sigma/SiLU tables: 2**lut_bits entries
    "lut_frac": 6,  # table input step 2**-lut_frac (range +-2**(lut_bits-1-lut_frac))
    "res_shift": 8,  # residual LSB = 2**-res_shift / emb_scale (embedding enters as emb_q << res_shift)
    "res_bits": 24,
    "logit_frac": 8,
    "logit_bits": 24,
}

#: The per-layer BitLinear projections, in the order a token meets them.
MIXER_PROJ = ("f_proj", "c_proj", "g_proj", "o_proj")


class ConversionError(ValueError):
    """The model or its config cannot be expressed by the integer reference."""


def bitlinear_names(n_layers: int) -> list[str]:
    """Key prefixes of every BitLinear, e.g. ``layers.0.mixer.f_proj`` ... ``lm_head``."""
    names = []
    for i in range(n_layers):
        names += [f"layers.{i}.mixer.{p}" for p in MIXER_PROJ]
        names += [f"layers.{i}.mlp.w_in", f"layers.{i}.mlp.w_down"]
    return names + ["lm_head"]


def quantize_gain(g: np.ndarray) -> tuple[np.ndarray, float]:
    """RMSNorm gain ``(d,)`` -> ``(g_q int16 (d,), s_g)`` with ``g_q = round(g * s_g)``,
    ``s_g = 32767 / max|g|`` (1.0 for an all-zero gain)."""
    g = np.asarray(g, dtype=np.float64)
    mx = float(np.abs(g).max()) if g.size else 0.0
    s_g = 32767.0 / mx if mx > 0 else 1.0
    return np.clip(np.round(g * s_g), -32767, 32767).astype(np.int64), s_g


def acc_shift_for(d_in: int) -> int:
    """Right shift that brings a ternary accumulator (``|acc| <= 128 * d_in``) into signed 18 bits."""
    return max(0, (128 * d_in).bit_length() - 17)


def check_supported(model) -> None:
    """Raise :class:`ConversionError` (naming the field) unless ``model`` is a convertible MatMulFreeLM."""
    from matmulfree.layers import BitLinear
    from matmulfree.models import MatMulFreeLM

    if not isinstance(model, MatMulFreeLM):
        raise ConversionError(f"fpga converter: expected a MatMulFreeLM, got {type(model).__name__}")
    cfg = model.config
    if not cfg.quantize_activations:
        raise ConversionError("fpga converter: config field 'quantize_activations'=False is not supported; "
                              "the chip computes int8 activations")
    if cfg.gate not in ("paper", "released"):
        raise ConversionError(f"fpga converter: config field 'gate'={cfg.gate!r} is not supported")
    if not cfg.ternary_head or not isinstance(model.lm_head, BitLinear):
        raise ConversionError(
            "fpga converter: config field 'ternary_head'=False (full-precision LM head) is not supported; "
            "the chip computes the head as a ternary BitLinear"
        )


def _np(t) -> np.ndarray:
    return t.detach().float().cpu().numpy().astype(np.float64)


def calibration_ids_from_text(path: str | None, vocab: int, max_bytes: int = 4096) -> np.ndarray | None:
    """Token ids ``(1, T)`` for :func:`calibrate` from the first ``max_bytes`` bytes of a text file
    (bytes modulo ``vocab``); ``None`` when ``path`` is ``None`` (fixed formats)."""
    if path is None:
        return None
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"--calib-text {path}: no such file")
    raw = np.frombuffer(p.read_bytes()[:max_bytes], dtype=np.uint8).astype(np.int64)
    if raw.size < 16:
        raise ConversionError(f"--calib-text {path}: need at least 16 bytes, got {raw.size}")
    return (raw % vocab)[None, :]


def calibrate(model, calib_ids, lut_frac: int = DEFAULTS["lut_frac"]) -> dict[str, int]:
    """Choose ``res_shift`` and ``act_frac`` from the float model's ranges on ``calib_ids (B, T)``.

    ``res_shift``: largest shift with ``max|residual| * emb_scale * 2**res_shift <= 2**(res_bits-3)``
    (8x head-room), in [0, 16]. ``act_frac``: ``floor(15 - log2(max(R, 1)))`` clamped to
    [lut_frac, 13], where ``R`` is the largest |pre-activation| of any sigma/SiLU input (4x head-room).
    """
    import torch

    ranges = {"res": 0.0, "act": 0.0}
    hooks = []

    def res_hook(_m, _inp, out):
        x = out[0] if isinstance(out, tuple) else out
        ranges["res"] = max(ranges["res"], float(x.detach().abs().max()))

    def act_hook(_m, _inp, out):
        ranges["act"] = max(ranges["act"], float(out.detach().abs().max()))

    hooks.append(model.embed.register_forward_hook(res_hook))
    for layer in model.layers:
        hooks.append(layer.register_forward_hook(res_hook))
        hooks.append(layer.mixer.f_proj.register_forward_hook(act_hook))
        hooks.append(layer.mixer.c_proj.register_forward_hook(act_hook))
        hooks.append(layer.mlp.w_in.register_forward_hook(act_hook))
    try:
        with torch.no_grad():
            model(torch.as_tensor(calib_ids, dtype=torch.long))
    finally:
        for h in hooks:
            h.remove()
    emb = _np(model.embed.weight)
    s_e = 127.0 / max(float(np.abs(emb).max()), 1e-12)
    target = (1 << (DEFAULTS["res_bits"] - 3)) / max(ranges["res"] * s_e, 1e-12)
    res_shift = int(min(16, max(0, math.floor(math.log2(target)))))
    act_frac = int(min(13, max(lut_frac, math.floor(15 - math.log2(max(ranges["act"], 1.0))))))
    return {"res_shift": res_shift, "act_frac": act_frac}


def convert(model, calib_ids=None, **fmt: int) -> dict[str, Any]:
    """Compute every integer parameter of the FPGA reference from a float MatMulFreeLM.

    Args:
        model: a :class:`~matmulfree.models.MatMulFreeLM` (packed or not).
        calib_ids: optional token ids ``(B, T)``; if given, ``res_shift`` and ``act_frac`` are
            chosen by :func:`calibrate` (explicit keyword values still win).
        **fmt: overrides of :data:`DEFAULTS` (``act_frac``, ``lut_bits``, ``lut_frac``, ...).
    Returns:
        The flat parameter dict described in FORMATS.md section 5.
    Raises:
        ConversionError: unsupported model/config or inconsistent format parameters.
    """
    check_supported(model)
    unknown = sorted(set(fmt) - set(DEFAULTS))
    if unknown:
        raise ConversionError(f"fpga converter: unknown format parameter(s) {unknown}; known: {sorted(DEFAULTS)}")
    f = dict(DEFAULTS)
    if calib_ids is not None:
        f.update(calibrate(model, calib_ids, fmt.get("lut_frac", DEFAULTS["lut_frac"])))
    f.update(fmt)
    if not (0 <= f["lut_frac"] <= f["act_frac"] <= f["act_bits"] - 2):
        raise ConversionError(f"fpga converter: need 0 <= lut_frac <= act_frac <= act_bits-2, got {f}")
    if not (4 <= f["lut_bits"] <= 14) or f["act_bits"] > 18 or f["res_bits"] > 32 or f["logit_bits"] > 32:
        raise ConversionError(f"fpga converter: format widths out of the supported range: {f}")
    if not (0 <= f["res_shift"] <= f["res_bits"] - 9):
        raise ConversionError(f"fpga converter: res_shift={f['res_shift']} must be in [0, res_bits-9]")

    from matmulfree.quant import pack_ternary

    cfg = model.config
    d, L, V, hid = cfg.d_model, cfg.n_layers, cfg.vocab_size, cfg.intermediate_size
    P: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "d_model": d,
        "n_layers": L,
        "vocab_size": V,
        "hidden": hid,
        "gate_released": int(cfg.gate == "released"),
        "forget_lower_bound": int(bool(cfg.forget_lower_bound)),
        **{k: int(v) for k, v in f.items()},
    }
    # Tables.
    P["lut.recip"] = luts.make_recip_table()
    P["lut.rsqrt"] = luts.make_rsqrt_table()
    P["lut.sigmoid"] = luts.make_sigmoid_table(f["lut_bits"], f["lut_frac"])
    P["lut.silu"] = luts.make_silu_table(f["lut_bits"], f["lut_frac"], f["act_frac"])
    # Embedding: per-tensor absmax int8.
    emb = _np(model.embed.weight)
    s_e = 127.0 / max(float(np.abs(emb).max()), 1e-12)
    P["emb.q"] = np.clip(np.round(emb * s_e), -127, 127).astype(np.int64)
    P["emb.scale"] = s_e
    u_res = 2.0 ** -f["res_shift"] / s_e  # real value of one residual LSB
    P["res_unit"] = u_res
    u_act, u_logit = 2.0 ** -f["act_frac"], 2.0 ** -f["logit_frac"]

    def put_gain(key: str, norm) -> float:
        P[key + ".gain"], s_g = quantize_gain(_np(norm.weight))
        P[key + ".gain_scale"] = s_g
        return s_g

    def put_bitlinear(key: str, bl, u_out: float | None, out_bits: int) -> None:
        w_q, s_w = bl.ternary_weight()
        s_g = put_gain(key + ".norm", bl.norm)
        d_in, d_out = bl.in_features, bl.out_features
        P[key + ".w"] = w_q.cpu().numpy().astype(np.int64)
        P[key + ".w_packed"] = pack_ternary(w_q.cpu()).numpy()
        P[key + ".s_w"] = float(s_w)
        P[key + ".d_in"], P[key + ".d_out"] = d_in, d_out
        P[key + ".acc_shift"] = acc_shift_for(d_in)
        # y_out_units = acc * x_scale * K; u_out None = output unused as scaled value (K in real units).
        k = math.sqrt(d_in) / (127.0 * s_g * float(s_w) * (u_out if u_out is not None else 1.0))
        P[key + ".k_m"], P[key + ".k_e"] = fp_const(k)
        P[key + ".out_bits"] = out_bits

    lbs = model.forget_lower_bounds()
    for i, layer in enumerate(model.layers):
        pre = f"layers.{i}"
        put_gain(f"{pre}.mixer_norm", layer.mixer_norm)
        put_gain(f"{pre}.mlp_norm", layer.mlp_norm)
        mx = layer.mixer
        put_bitlinear(f"{pre}.mixer.f_proj", mx.f_proj, u_act, f["act_bits"])
        put_bitlinear(f"{pre}.mixer.c_proj", mx.c_proj, u_act, f["act_bits"])
        put_bitlinear(f"{pre}.mixer.g_proj", mx.g_proj, None, 18)
        put_bitlinear(f"{pre}.mixer.o_proj", mx.o_proj, u_res, f["res_bits"])
        put_bitlinear(f"{pre}.mlp.w_in", layer.mlp.w_in, u_act, f["act_bits"])
        put_bitlinear(f"{pre}.mlp.w_down", layer.mlp.w_down, u_res, f["res_bits"])
        if cfg.gate == "released":
            put_gain(f"{pre}.mixer.g_norm", mx.g_norm)
        if cfg.forget_lower_bound:
            lb = _np(lbs[i]) if lbs[i] is not None else np.zeros(d)
            P[f"{pre}.mixer.lb"] = np.clip(np.round(lb * 32768.0), 0, 32767).astype(np.int64)
    put_gain("norm", model.norm)
    put_bitlinear("lm_head", model.lm_head, u_logit, f["logit_bits"])
    return P


def export_params(P: dict[str, Any]) -> dict[str, Any]:
    """The integer contract only: every NumPy array and integer scalar of ``P`` (floats, which are
    informational, are dropped). Arrays are ``int64`` except ``*.w_packed`` (``uint8``)."""
    return {k: v for k, v in P.items() if isinstance(v, np.ndarray) or (isinstance(v, int) and not isinstance(v, bool))}
