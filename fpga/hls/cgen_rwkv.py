"""C text of the RWKV-4 HLS export: ``firmware/mmf_params.h`` (sizes, formats, blob offsets) and
``firmware/mmf_tables.h`` (the MLGRU's four tables plus the exp and division tables). Every
integer comes from the integer reference's parameter dict; the weights header and the
testbench data are :mod:`.cgen`'s."""

from __future__ import annotations

from typing import Any

from ..intref_rwkv import EXP_BITS, SUM_BITS, bitlinear_names
from ..luts import EXP_HI_ENTRIES, EXP_LO_BITS
from .cgen import _guard, c_array
from .layout_rwkv import MAGIC_RWKV, RWKVLayout


def _acc_shift(P: dict[str, Any], d_in: int) -> int:
    names = [n for n in bitlinear_names(P["n_layers"], bool(P["rwkv_gate"])) if P[n + ".d_in"] == d_in]
    shifts = {P[n + ".acc_shift"] for n in names}
    if len(shifts) > 1:
        raise ValueError(f"acc_shift differs between BitLinears with d_in = {d_in}: {shifts}")
    return shifts.pop() if shifts else 0


def params_header(P: dict[str, Any], lay: RWKVLayout, *, stream_weights: bool, row_par: int, tb_tokens: int) -> str:
    """``firmware/mmf_params.h`` of the RWKV kernel."""
    defs: list[tuple[str, Any, str]] = [
        ("MMF_ARCH_RWKV", 1, "architecture: RWKV-4 with ternary projections (fpga/FORMATS.md section 7)"),
        ("MMF_FORMAT_VERSION", P["format_version"], "RWKV integer contract version"),
        ("MMF_MAGIC", f"0x{MAGIC_RWKV:08x}u", "first word of the parameter blob ('RWK1')"),
        ("MMF_D", P["d_model"], "model width d"),
        ("MMF_L", P["n_layers"], "layers"),
        ("MMF_V", P["vocab_size"], "vocabulary"),
        ("MMF_H", P["hidden"], "channel-mixing width"),
        ("MMF_RWKV_GATE", P["rwkv_gate"], "1: time-mixing output gated by silu(G x)"),
        ("MMF_WORDS_D", lay.wd, "32-bit words per weight row with d_in = d (16 ternary weights per word)"),
        ("MMF_WORDS_H", lay.wh, "32-bit words per weight row with d_in = hidden"),
        ("MMF_ACC_SHIFT_D", _acc_shift(P, P["d_model"]), "accumulator shift of d_in = d BitLinears"),
        ("MMF_ACC_SHIFT_H", _acc_shift(P, P["hidden"]), "accumulator shift of d_in = hidden BitLinears"),
        ("MMF_ACT_FRAC", P["act_frac"], "Q(act_frac): r/k/v/gate pre-activations, k, v, wkv"),
        ("MMF_ACT_BITS", P["act_bits"], "width of the act and ln formats"),
        ("MMF_LN_FRAC", P["ln_frac"], "Q(ln_frac): LayerNorm outputs, token-shift inputs and mixes"),
        ("MMF_LUT_BITS", P["lut_bits"], "sigmoid/SiLU tables have 2^lut_bits entries"),
        ("MMF_LUT_FRAC", P["lut_frac"], "table input step 2^-lut_frac"),
        ("MMF_RES_SHIFT", P["res_shift"], "residual = emb_q << res_shift"),
        ("MMF_RES_BITS", P["res_bits"], "residual width"),
        ("MMF_LOGIT_FRAC", P["logit_frac"], "logits out in Q(logit_frac)"),
        ("MMF_LOGIT_BITS", P["logit_bits"], "logit width"),
        ("MMF_EXP_BITS", EXP_BITS, "exponent domain (k, u, w, pp): Q16 in this many signed bits"),
        ("MMF_SUM_BITS", SUM_BITS, "WKV sums aa (Q(act_frac)) and bb (Q16): signed bits"),
        ("MMF_STREAM_WEIGHTS", int(stream_weights), "1: ternary weights read from DRAM at every token"),
        ("MMF_ROW_PAR", row_par, "weight rows computed in parallel (on-chip weights)"),
        ("MMF_TB_TOKENS", tb_tokens, "testbench token steps (m_axi depth for co-simulation)"),
        *[(name, value, "") for name, value in lay.macros()],
    ]
    body = "".join(f"#define {n} {v}" + (f"  // {c}" if c else "") + "\n" for n, v, c in defs)
    return _guard("MMF_PARAMS_H", body,
                  "Static sizes, number formats and parameter-blob layout of the RWKV mmf_kernel.")


def tables_header(P: dict[str, Any]) -> str:
    """``firmware/mmf_tables.h``: reciprocal, 1/sqrt, sigmoid, SiLU, exp (two levels) and division ROMs."""
    n = 1 << P["lut_bits"]
    sizes = (("lut.recip", 1024), ("lut.rsqrt", 768), ("lut.sigmoid", n), ("lut.silu", n),
             ("lut.exp_hi", EXP_HI_ENTRIES), ("lut.exp_lo", 1 << EXP_LO_BITS), ("lut.div", 1024))
    for key, size in sizes:
        if len(P[key]) != size:
            raise ValueError(f"{key}: {len(P[key])} entries, expected {size}")
    body = (c_array("static const uint32_t MMF_RECIP[1024]", P["lut.recip"])
            + c_array("static const uint32_t MMF_RSQRT[768]", P["lut.rsqrt"])
            + c_array(f"static const int32_t MMF_SIGMOID[{n}]", P["lut.sigmoid"])
            + c_array(f"static const int32_t MMF_SILU[{n}]", P["lut.silu"])
            + c_array(f"static const uint32_t MMF_EXP_HI[{EXP_HI_ENTRIES}]", P["lut.exp_hi"])
            + c_array(f"static const uint32_t MMF_EXP_LO[{1 << EXP_LO_BITS}]", P["lut.exp_lo"])
            + c_array("static const uint32_t MMF_DIV[1024]", P["lut.div"]))
    return _guard("MMF_TABLES_H", "#include <cstdint>\n\n" + body,
                  "Lookup tables (ROM): reciprocal, 1/sqrt, sigmoid (Q15), SiLU, exp(-n) (Q16, two levels), "
                  "division (2^27 / m).")
