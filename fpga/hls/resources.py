"""Target parts, on-chip memory fit and a cycle model of the HLS kernel.

Memory figures are bits. Part capacities are datasheet figures for the whole device (an Alveo
shell occupies part of it); ``BRAM36 = 36,864`` bits, ``URAM = 294,912`` bits. Cycle figures are
**modelled** (every pipelined loop at II=1 plus a fixed fill/drain per loop), not measured.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .. import intref_rwkv
from ..intref import memory_bits
from .layout import PROJ, WEIGHTS_PER_WORD, words_for

BRAM36_BITS = 36 * 1024
URAM_BITS = 288 * 1024
DEFAULT_PART = "xcu250-figd2104-2L-e"
DEFAULT_CLOCK_MHZ = 300.0
#: Assumed pipeline fill/drain cycles of each pipelined loop in the cycle model.
LOOP_OVERHEAD = 8


class MemoryFitError(ValueError):
    """The model does not fit the part's on-chip memory (message gives the numbers)."""


@dataclass(frozen=True)
class Part:
    """An AMD/Xilinx device: block RAM (36 Kb), UltraRAM (288 Kb), DSP slices, LUTs and the
    Vitis platform used by default (``None``: no default platform, pass ``--platform``)."""

    name: str
    board: str
    bram36: int
    uram: int
    dsp: int
    lut: int
    platform: str | None
    bits_override: int | None = None  # user-given usable on-chip bits (--onchip-bits)

    @property
    def onchip_bits(self) -> int:
        if self.bits_override is not None:
            return self.bits_override
        return self.bram36 * BRAM36_BITS + self.uram * URAM_BITS

    def describe(self) -> str:
        """Where the capacity comes from, for messages."""
        if self.bits_override is not None:
            return "given by --onchip-bits"
        return f"{self.bram36} BRAM36 x {BRAM36_BITS:,} + {self.uram} URAM x {URAM_BITS:,}"


PARTS: dict[str, Part] = {p.name: p for p in (
    Part("xcu250-figd2104-2L-e", "Alveo U250", 2688, 1280, 12288, 1728000, "xilinx_u250_gen3x16_xdma_4_1_202210_1"),
    Part("xcu200-fsgd2104-2-e", "Alveo U200", 2160, 960, 6840, 1182240, "xilinx_u200_gen3x16_xdma_2_202110_1"),
    Part("xcu280-fsvh2892-2L-e", "Alveo U280", 2016, 960, 9024, 1303680, "xilinx_u280_gen3x16_xdma_1_202211_1"),
    Part("xcu55c-fsvh2892-2L-e", "Alveo U55C", 2016, 960, 9024, 1303680, "xilinx_u55c_gen3x16_xdma_3_202210_1"),
    Part("xcu50-fsvh2104-2-e", "Alveo U50", 1344, 640, 5952, 872000, "xilinx_u50_gen3x16_xdma_5_202210_1"),
    Part("xczu9eg-ffvb1156-2-e", "ZCU102 (Zynq US+ ZU9EG)", 912, 0, 2520, 274080, "xilinx_zcu102_base_202310_1"),
    Part("xck26-sfvc784-2LV-c", "Kria K26 SOM", 144, 64, 1248, 117120, None),
    Part("xc7z020clg400-1", "Zynq-7020 (PYNQ-Z2 class)", 140, 0, 220, 53200, None),
)}


def get_part(name: str, onchip_bits: int | None = None) -> Part:
    """The part table entry; an unlisted part needs ``onchip_bits`` (its BRAM + URAM bits)."""
    if name in PARTS:
        p = PARTS[name]
        if onchip_bits is not None:  # user override of the usable capacity
            return Part(p.name, p.board, p.bram36, p.uram, p.dsp, p.lut, p.platform, onchip_bits)
        return p
    if onchip_bits is None:
        raise KeyError(f"unknown part {name!r}: known parts are {', '.join(sorted(PARTS))}; for another part "
                       f"give its on-chip memory with --onchip-bits")
    return Part(name, "user-specified part", 0, 0, 0, 0, None, onchip_bits)


def is_rwkv(P: dict[str, Any]) -> bool:
    """Whether ``P`` is an RWKV parameter dict (``intref_rwkv``) rather than an MLGRU one."""
    return P.get("arch") == intref_rwkv.ARCH_RWKV


def _rwkv_bitlinears(P: dict[str, Any]) -> list[str]:
    return intref_rwkv.bitlinear_names(P["n_layers"], bool(P["rwkv_gate"]))


def weight_bits_padded(P: dict[str, Any]) -> int:
    """Bits of the ternary weights as the kernel stores them: rows padded to 32-bit words."""
    if is_rwkv(P):
        return 32 * sum(P[n + ".d_out"] * words_for(P[n + ".d_in"], WEIGHTS_PER_WORD) for n in _rwkv_bitlinears(P))
    d, hid, V, L = P["d_model"], P["hidden"], P["vocab_size"], P["n_layers"]
    wd, wh = words_for(d, WEIGHTS_PER_WORD), words_for(hid, WEIGHTS_PER_WORD)
    per_layer = 4 * d * wd + 2 * hid * wd + d * wh
    return 32 * (L * per_layer + V * wd)


def kernel_memory_bits(P: dict[str, Any], stream_weights: bool) -> dict[str, int]:
    """On-chip bits of the kernel: the integer model's figure (:func:`intref.memory_bits`) with
    the weights padded to whole words, or moved off chip when streaming."""
    b = {k: v for k, v in (intref_rwkv.memory_bits(P) if is_rwkv(P) else memory_bits(P)).items() if k != "total"}
    b["weights"] = 0 if stream_weights else weight_bits_padded(P)
    b["total"] = sum(b.values())
    return b


def _fmt(n: int) -> str:
    return f"{n:,}"


def check_fit(P: dict[str, Any], part: Part, stream_weights: bool) -> dict[str, Any]:
    """Raise :class:`MemoryFitError` (with the numbers) if the kernel's on-chip memory exceeds
    the part's; returns the figures otherwise."""
    on_chip = kernel_memory_bits(P, stream_weights=False)
    streamed = kernel_memory_bits(P, stream_weights=True)
    need = streamed if stream_weights else on_chip
    avail = part.onchip_bits
    info = {"part": part.name, "available_bits": avail, "needed_bits": need["total"],
            "weight_bits": on_chip["weights"], "other_bits": streamed["total"],
            "utilization": need["total"] / avail if avail else float("inf"), "stream_weights": stream_weights}
    if need["total"] <= avail:
        return info
    cap = f"{part.name} has {_fmt(avail)} bits ({part.describe()})"
    if stream_weights:
        gains = need.get("norm_gains_and_bounds", need.get("norm_gains_biases_mixes", 0))
        raise MemoryFitError(
            f"even with --stream-weights the kernel needs {_fmt(need['total'])} bits of on-chip memory "
            f"(embedding {_fmt(need['embedding'])}, gains {_fmt(gains)}, tables, state, "
            f"buffers) but {cap}; choose a larger part or a smaller model")
    raise MemoryFitError(
        f"the model needs {_fmt(need['total'])} bits of on-chip memory (ternary weights {_fmt(on_chip['weights'])} "
        f"+ other {_fmt(streamed['total'])}) but {cap}; use --stream-weights to read the weights from off-chip "
        f"DRAM over m_axi ({_fmt(streamed['total'])} bits on chip)")


def _matvec_cycles(din: int, dout: int, rp: int) -> int:
    """Cycles of the flattened ternary matvec loop: row groups x words (II=1)."""
    return (dout // (rp if dout % rp == 0 else 1)) * words_for(din, WEIGHTS_PER_WORD)


def _bitlinear_cycles(din: int, dout: int, rp: int) -> int:
    passes = 2 * din + 16 * words_for(din, WEIGHTS_PER_WORD) + 3 * LOOP_OVERHEAD  # max|t|, normalize, quantize
    return passes + _matvec_cycles(din, dout, rp) + LOOP_OVERHEAD + 20  # matvec + scale arithmetic


def cycles_per_token(P: dict[str, Any], row_par: int, stream_weights: bool, dataflow: bool = True) -> dict[str, int]:
    """Modelled clock cycles of one token step (logits written) and its lower bound: the cycles
    of the ternary matvec loops alone (weights / weights consumed per cycle, f/c/g concurrent
    under DATAFLOW)."""
    d, hid, V, L = P["d_model"], P["hidden"], P["vocab_size"], P["n_layers"]
    rp = 1 if stream_weights else row_par
    concurrent = dataflow and not stream_weights
    gain = 2 * d + 2 * LOOP_OVERHEAD
    proj = _bitlinear_cycles(d, d, rp) + d + LOOP_OVERHEAD
    fcg = d + (proj if concurrent else 3 * proj)
    gate = (d + LOOP_OVERHEAD) * (2 if P["gate_released"] else 1)
    mixer = gain + fcg + gate + _bitlinear_cycles(d, d, rp) + d + LOOP_OVERHEAD
    glu = gain + _bitlinear_cycles(d, 2 * hid, rp) + hid + _bitlinear_cycles(hid, d, rp) + d + 2 * LOOP_OVERHEAD
    head = gain + _bitlinear_cycles(d, V, rp) + V + LOOP_OVERHEAD
    total = d + L * (mixer + glu) + head + V + 2 * LOOP_OVERHEAD
    mv_layer = (1 if concurrent else 3) * _matvec_cycles(d, d, rp) + _matvec_cycles(d, d, rp)
    mv_layer += _matvec_cycles(d, 2 * hid, rp) + _matvec_cycles(hid, d, rp)
    weights = sum(P[f"layers.{i}.{k}.d_in"] * P[f"layers.{i}.{k}.d_out"] for i in range(L) for _, k in PROJ)
    weights += P["lm_head.d_in"] * P["lm_head.d_out"]
    return {"cycles_per_token": total, "ternary_weights_per_token": weights,
            "lower_bound_cycles": L * mv_layer + _matvec_cycles(d, V, rp),
            "weights_per_cycle": WEIGHTS_PER_WORD * rp, "fcg_concurrent": int(concurrent)}


def cycles_per_token_rwkv(P: dict[str, Any], row_par: int, stream_weights: bool) -> dict[str, int]:
    """Modelled clock cycles of one RWKV token step, as :func:`cycles_per_token`: every pipelined
    loop at II=1 plus :data:`LOOP_OVERHEAD`, the projections one after another."""
    d, hid, V, L = P["d_model"], P["hidden"], P["vocab_size"], P["n_layers"]
    rp = 1 if stream_weights else row_par
    ln = 4 * d + 4 * LOOP_OVERHEAD + 20  # max, centre, normalize + sum of squares, output

    def proj(din: int, dout: int) -> int:  # max|t|, quantize, matvec, requantize
        quant = din + 16 * words_for(din, WEIGHTS_PER_WORD)
        return quant + _matvec_cycles(din, dout, rp) + dout + 4 * LOOP_OVERHEAD + 20

    gate = bool(P["rwkv_gate"])
    att = ln + d + LOOP_OVERHEAD + 4 * proj(d, d) + 2 * (d + LOOP_OVERHEAD)
    att += proj(d, d) + d + LOOP_OVERHEAD if gate else 0
    ffn = ln + d + LOOP_OVERHEAD + proj(d, d) + proj(d, hid) + hid + proj(hid, d) + d + 3 * LOOP_OVERHEAD
    head = ln + proj(d, V)
    total = d + L * (att + ffn) + head + V + 2 * LOOP_OVERHEAD
    names = _rwkv_bitlinears(P)
    lower = sum(_matvec_cycles(P[n + ".d_in"], P[n + ".d_out"], rp) for n in names)
    weights = sum(P[n + ".d_in"] * P[n + ".d_out"] for n in names)
    return {"cycles_per_token": total, "ternary_weights_per_token": weights, "lower_bound_cycles": lower,
            "weights_per_cycle": WEIGHTS_PER_WORD * rp, "fcg_concurrent": 0}


def weight_memory_blocks(P: dict[str, Any], row_par: int, impl: str) -> int:
    """Blocks (BRAM36 as 1K x 36, or URAM as 4K x 72) holding the weight arrays with their
    cyclic row partitioning; one 32-bit word per address."""
    d, hid, V, L = P["d_model"], P["hidden"], P["vocab_size"], P["n_layers"]
    wd, wh = words_for(d, WEIGHTS_PER_WORD), words_for(hid, WEIGHTS_PER_WORD)
    depth = 4096 if impl == "uram" else 1024
    if is_rwkv(P):  # receptance, key, value[, gate], output, ffn receptance: d rows; ffn key, ffn value, head
        n_dd = 5 + int(bool(P["rwkv_gate"]))
        arrays = [(L * d * wd, d)] * n_dd + [(L * hid * wd, hid), (L * d * wh, d), (V * wd, V)]
    else:
        arrays = [(L * d * wd, d)] * 4 + [(L * 2 * hid * wd, 2 * hid), (L * d * wh, d), (V * wd, V)]
    blocks = 0
    for words, rows in arrays:
        rp = row_par if rows % row_par == 0 else 1
        blocks += rp * words_for(words_for(words, rp), depth)
    return blocks


__all__ = ["DEFAULT_CLOCK_MHZ", "DEFAULT_PART", "PARTS", "MemoryFitError", "Part", "check_fit", "cycles_per_token",
           "cycles_per_token_rwkv", "get_part", "is_rwkv", "kernel_memory_bits", "weight_bits_padded",
           "weight_memory_blocks"]
