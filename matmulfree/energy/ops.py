"""Operation model: what one generated token costs, counted from the config and priced with the
Horowitz 45 nm per-operation energies. Hardware-independent and **modelled**, never measured.

Counts are per generated token of one sequence at batch ``B`` and context ``C`` (the token attends
to ``C`` positions, itself included). ``d`` width, ``h`` GLU width, ``V`` vocabulary, ``L`` layers,
``H`` heads. Element-wise work is counted in the activation precision (``act_bits``, fp16 by
default) for both models, so they differ only where the paper changes them.

Rules (the unit tests recount them by hand):

* ``RMSNorm(n)``: 3n mult (square, times 1/rms, times gain), n add, 1 nonlinear (rsqrt).
* ``BitLinear(i, o)``: ``i*o`` ternary accumulations (integer adds into a 32-bit accumulator: a
  ternary weight adds, subtracts or skips; zeros are counted too, an upper bound) plus its own
  ``RMSNorm(i)``, int8 quantization (i add for max|x|, i mult, 1 nonlinear for 127/max) and the
  output rescale (o + 1 mult): in total ``4i + o + 1`` mult, ``2i`` add, 2 nonlinear.
* dense ``Linear(i, o)`` (Transformer++): ``i*o`` multiply-accumulates (mult + add each).
* MLGRU step: sigmoid(f), SiLU(c) = c*sigmoid(c): 2d nonlinear, 1d mult; ``(1-f)``, ``+``: 2d add;
  ``(1-f)*c``, ``f*h``: 2d mult; lower bound ``lb + (1-lb) f``: d mult, d add. Output gate
  "paper" ``g*sigmoid(h)``: d nonlinear, d mult; "released" ``RMSNorm(g)*SiLU(h)``: RMSNorm(d)
  plus d nonlinear, 2d mult.
* GLU / SwiGLU: ``SiLU(g)*u``: h nonlinear, 2h mult. Residuals: d add each (2 per layer).
* Attention (per layer): RoPE on q and k 4d mult, 2d add; scores C*d MAC; scaling H*C mult;
  softmax H*C nonlinear (exp), H*C add, H*C mult; weighted values C*d MAC. The RoPE angles
  (``d/H`` cos and sin values) are counted once per token as d/H nonlinear.
* RWKV-4 (``l`` channel-mixing width): ``LayerNorm(n)``: 3n mult, 3n add, 1 nonlinear; its
  BitLinears have no inner norm: ``i*o`` accumulations, ``i + o + 1`` mult, ``i`` add, 1 nonlinear.
  A token-shift mix ``mu x + (1-mu) x'`` (``1-mu`` stored): 2d mult, d add; 3 in time mixing, 2
  in channel mixing. WKV step per channel: 12 add (incl. 2 max), 7 mult, 5 nonlinear (4 exp, 1
  reciprocal). ``sigmoid(r)`` d nonlinear, ``r * wkv`` d mult; gate ``silu(G x)``: a BitLinear,
  d nonlinear, 2d mult; channel mixing: ``relu(k)^2`` l add, l mult, ``sigmoid(r)`` d nonlinear,
  ``r * V k`` d mult. Residuals d add each. State: 5 L d values (two shifted inputs, aa, bb, pp).
* Reads: every parameter but the embedding table once per step, shared by the B sequences of
  the batch (so per token: / B); one embedding row (d values); the Transformer's K and V cache
  (2*L*C*d values); the MLGRU state (L*d values). Writes are not counted. Ternary weights are
  2 bits, other parameters and activations ``act_bits``, Transformer weights ``weight_bits``.
* Placement: parameters go on chip if they fit ``onchip_bytes``, then the KV caches of the
  batch if they fit what is left, else DRAM. The recurrent state is always on chip.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..config import MatMulFreeConfig, RWKVConfig, TransformerConfig, _BaseConfig

#: Energies in picojoules, 45 nm, 0.9 V. M. Horowitz, "Computing's energy problem (and what we
#: can do about it)", ISSCC 2014, keynote (also ``docs/design.md``, "Reference figures"). ``sram_read_64b`` is his
#: 32 KB SRAM figure (8 KB: 10 pJ, 1 MB: 100 pJ); ``dram_read_64b`` is the low end of his
#: 1.3-2.6 nJ range. ``nonlinear`` (sigmoid/exp/rsqrt/reciprocal via a table or a short
#: polynomial) is **our assumption**: about four fp16 multiply-adds.
HOROWITZ_45NM_PJ: dict[str, float] = {
    "int8_add": 0.03,
    "int32_add": 0.1,
    "int8_mult": 0.2,
    "int32_mult": 3.1,
    "fp16_add": 0.4,
    "fp16_mult": 1.1,
    "fp32_add": 0.9,
    "fp32_mult": 3.7,
    "sram_read_64b": 20.0,
    "dram_read_64b": 1300.0,
    "nonlinear": 5.0,
}
#: Default on-chip memory for the placement rule (bytes): a modelling assumption.
DEFAULT_ONCHIP_BYTES = 8 * 2**20


def read_json_object(path: Path, error: type[Exception], what: str = "a JSON object") -> dict[str, Any]:
    """The JSON object in ``path``; an unreadable file, bad JSON or another type raises ``error``
    naming the file."""
    try:
        data = json.loads(path.read_text())
    except OSError as e:
        raise error(f"{path}: cannot read ({e.strerror or e})") from None
    except json.JSONDecodeError as e:
        raise error(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise error(f"{path}: expected {what}")
    return data


class OpEnergyError(ValueError):
    """A bad operation-energy table (file, key or value named)."""


def load_op_energies(path: str | Path | None = None) -> dict[str, float]:
    """The Horowitz table, with entries overridden from a JSON object ``{"name": pJ, ...}``."""
    table = dict(HOROWITZ_45NM_PJ)
    if path is None:
        return table
    path = Path(path)
    data = read_json_object(path, OpEnergyError, "a JSON object of name -> picojoules")
    for k, v in data.items():
        if k not in table:
            raise OpEnergyError(f"{path}: unknown operation {k!r}; known: {sorted(table)}")
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise OpEnergyError(f"{path}: {k!r} must be a non-negative number of picojoules, got {v!r}")
        table[k] = float(v)
    return table


@dataclass
class Read:
    """``values`` of ``bits`` each read per token from ``location`` (``"sram"`` or ``"dram"``)."""

    what: str
    values: float
    bits: int
    location: str

    @property
    def bits_total(self) -> float:
        return self.values * self.bits


@dataclass
class OpCounts:
    """Per-token operation counts (see the module rules)."""

    model: str
    ternary_acc: int = 0
    mac: int = 0
    mult: int = 0
    add: int = 0
    nonlinear: int = 0
    reads: list[Read] = field(default_factory=list)
    act_bits: int = 16

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Tally:
    def __init__(self) -> None:
        self.acc = self.mac = self.mult = self.add = self.nl = 0

    def rmsnorm(self, n: int) -> None:
        self.mult += 3 * n
        self.add += n
        self.nl += 1

    def bitlinear(self, i: int, o: int) -> None:
        self.acc += i * o
        self.rmsnorm(i)
        self.add += i
        self.mult += i + o + 1
        self.nl += 1

    def linear(self, i: int, o: int) -> None:
        self.mac += i * o

    def layernorm(self, n: int) -> None:
        self.mult += 3 * n
        self.add += 3 * n
        self.nl += 1

    def bitlinear_no_norm(self, i: int, o: int) -> None:
        self.acc += i * o
        self.add += i
        self.mult += i + o + 1
        self.nl += 1

    def token_mix(self, d: int) -> None:
        self.mult += 2 * d
        self.add += d


def _placement(param_bytes: float, kv_bytes: float, onchip_bytes: float) -> tuple[str, str]:
    w = "sram" if param_bytes <= onchip_bytes else "dram"
    left = onchip_bytes - (param_bytes if w == "sram" else 0)
    return w, ("sram" if kv_bytes <= left else "dram")


def matmulfree_ops(cfg: MatMulFreeConfig, batch: int = 1, onchip_bytes: float = DEFAULT_ONCHIP_BYTES,
                   act_bits: int = 16) -> OpCounts:
    """Per-token counts of a MatMul-free model (context does not change them)."""
    d, h, V, L = cfg.d_model, cfg.intermediate_size, cfg.vocab_size, cfg.n_layers
    released = cfg.gate == "released"
    t = _Tally()
    for _ in range(L):
        t.rmsnorm(d)  # mixer_norm
        for _ in range(3):
            t.bitlinear(d, d)  # f, c, g
        t.nl += 2 * d
        t.mult += 3 * d
        t.add += 2 * d
        if cfg.forget_lower_bound:
            t.mult += d
            t.add += d
        if released:
            t.rmsnorm(d)
            t.nl += d
            t.mult += 2 * d
        else:
            t.nl += d
            t.mult += d
        t.bitlinear(d, d)  # o
        t.add += d  # residual
        t.rmsnorm(d)  # mlp_norm
        t.bitlinear(d, 2 * h)
        t.nl += h
        t.mult += 2 * h
        t.bitlinear(h, d)
        t.add += d
    t.rmsnorm(d)
    if cfg.ternary_head:
        t.bitlinear(d, V)
    else:
        t.linear(d, V)
    ternary = L * (4 * d * d + 3 * h * d) + (d * V if cfg.ternary_head else 0)
    per_layer_fp = 7 * d + h + (d if released else 0) + (d if cfg.forget_lower_bound else 0)
    full = L * per_layer_fp + d + (d if cfg.ternary_head else d * V)
    param_bytes = ternary * 2 / 8 + full * act_bits / 8
    w_loc, _ = _placement(param_bytes, 0, onchip_bytes)
    reads = [
        Read("ternary weights", ternary / batch, 2, w_loc),
        Read("full-precision parameters", full / batch, act_bits, w_loc),
        Read("embedding row", d, act_bits, w_loc),
        Read("recurrent state", L * d, act_bits, "sram"),
    ]
    return OpCounts("MatMul-free", t.acc, t.mac, t.mult, t.add, t.nl, reads, act_bits)


def rwkv_ops(cfg: RWKVConfig, batch: int = 1, onchip_bytes: float = DEFAULT_ONCHIP_BYTES,
             act_bits: int = 16) -> OpCounts:
    """Per-token counts of a MatMul-free RWKV-4 model (context does not change them)."""
    d, h, V, L = cfg.d_model, cfg.intermediate_size, cfg.vocab_size, cfg.n_layers
    t = _Tally()
    t.layernorm(d)  # after the embedding
    for _ in range(L):
        t.layernorm(d)  # ln1
        for _ in range(3):
            t.token_mix(d)  # r, k, v
        for _ in range(3):
            t.bitlinear_no_norm(d, d)  # R, K, V
        t.nl += d  # sigmoid(r)
        t.add += 12 * d  # WKV step
        t.mult += 7 * d
        t.nl += 5 * d
        t.mult += d  # r * wkv
        if cfg.rwkv_gate:
            t.bitlinear_no_norm(d, d)
            t.nl += d
            t.mult += 2 * d
        t.bitlinear_no_norm(d, d)  # O
        t.add += d  # residual
        t.layernorm(d)  # ln2
        t.token_mix(d)
        t.token_mix(d)
        t.bitlinear_no_norm(d, d)  # R
        t.nl += d
        t.bitlinear_no_norm(d, h)  # K
        t.add += h  # relu
        t.mult += h  # square
        t.bitlinear_no_norm(h, d)  # V
        t.mult += d  # r * V k
        t.add += d  # residual
    t.layernorm(d)
    if cfg.ternary_head:
        t.bitlinear_no_norm(d, V)
    else:
        t.linear(d, V)
    ternary = L * ((5 + int(cfg.rwkv_gate)) * d * d + 2 * h * d) + (d * V if cfg.ternary_head else 0)
    full = L * 11 * d + 4 * d + (0 if cfg.ternary_head else d * V)
    param_bytes = ternary * 2 / 8 + full * act_bits / 8
    w_loc, _ = _placement(param_bytes, 0, onchip_bytes)
    reads = [
        Read("ternary weights", ternary / batch, 2, w_loc),
        Read("full-precision parameters", full / batch, act_bits, w_loc),
        Read("embedding row", d, act_bits, w_loc),
        Read("recurrent state", 5 * L * d, act_bits, "sram"),
    ]
    return OpCounts("MatMul-free RWKV", t.acc, t.mac, t.mult, t.add, t.nl, reads, act_bits)


def transformer_ops(cfg: TransformerConfig, context: int, batch: int = 1,
                    onchip_bytes: float = DEFAULT_ONCHIP_BYTES, act_bits: int = 16,
                    weight_bits: int = 16) -> OpCounts:  # fmt: skip
    """Per-token counts of a Transformer++ model attending to ``context`` positions."""
    d, h, V, L, H = cfg.d_model, cfg.intermediate_size, cfg.vocab_size, cfg.n_layers, cfg.n_heads
    C = context
    t = _Tally()
    t.nl += d // H  # RoPE cos/sin of this position
    for _ in range(L):
        t.rmsnorm(d)
        t.linear(d, 3 * d)
        t.mult += 4 * d
        t.add += 2 * d
        t.mac += 2 * C * d  # scores and weighted values
        t.mult += 2 * H * C  # scaling, normalisation
        t.nl += H * C
        t.add += H * C
        t.linear(d, d)
        t.add += d
        t.rmsnorm(d)
        t.linear(d, 2 * h)
        t.nl += h
        t.mult += 2 * h
        t.linear(h, d)
        t.add += d
    t.rmsnorm(d)
    t.linear(d, V)
    weights = L * (4 * d * d + 3 * h * d) + d * V
    full = L * 2 * d + d
    param_bytes = weights * weight_bits / 8 + full * act_bits / 8
    kv_values = 2 * L * C * d
    w_loc, kv_loc = _placement(param_bytes, kv_values * act_bits / 8 * batch, onchip_bytes)
    reads = [
        Read("weights", weights / batch, weight_bits, w_loc),
        Read("full-precision parameters", full / batch, act_bits, w_loc),
        Read("embedding row", d, act_bits, w_loc),
        Read("KV cache", kv_values, act_bits, kv_loc),
    ]
    return OpCounts("Transformer++", t.acc, t.mac, t.mult, t.add, t.nl, reads, act_bits)


def count_ops(cfg: _BaseConfig, context: int, batch: int = 1, onchip_bytes: float = DEFAULT_ONCHIP_BYTES,
              act_bits: int = 16) -> OpCounts:
    """Dispatch on the config's architecture."""
    if batch < 1 or context < 1:
        raise ValueError(f"batch and context must be >= 1, got batch={batch}, context={context}")
    if act_bits not in (16, 32):
        raise ValueError(f"act_bits must be 16 or 32, got {act_bits}")
    if cfg.architecture == "matmulfree":
        return matmulfree_ops(cfg, batch, onchip_bytes, act_bits)
    if cfg.architecture == "rwkv":
        return rwkv_ops(cfg, batch, onchip_bytes, act_bits)
    return transformer_ops(cfg, context, batch, onchip_bytes, act_bits, weight_bits=act_bits)


def price(counts: OpCounts, table: dict[str, float] | None = None) -> dict[str, Any]:
    """Energy per token (picojoules by term, and joules in total) from the counts and a table.

    Ternary accumulations are int32 adds; MACs, mults and adds use the fp16 or fp32 figures of
    ``counts.act_bits``; a read of ``b`` bits costs ``b / 64`` of the 64-bit read figure.
    """
    e = table or HOROWITZ_45NM_PJ
    fp = "fp16" if counts.act_bits == 16 else "fp32"
    compute = {
        "ternary_acc": counts.ternary_acc * e["int32_add"],
        "mac": counts.mac * (e[f"{fp}_mult"] + e[f"{fp}_add"]),
        "mult": counts.mult * e[f"{fp}_mult"],
        "add": counts.add * e[f"{fp}_add"],
        "nonlinear": counts.nonlinear * e["nonlinear"],
    }
    memory = {}
    for r in counts.reads:
        key = f"{r.what} ({r.location})"
        memory[key] = memory.get(key, 0.0) + r.bits_total / 64 * e[f"{r.location}_read_64b"]
    total_pj = sum(compute.values()) + sum(memory.values())
    return {"compute_pj": compute, "memory_pj": memory, "compute_total_pj": sum(compute.values()),
            "memory_total_pj": sum(memory.values()), "joules_per_token": total_pj * 1e-12}  # fmt: skip


__all__ = ["DEFAULT_ONCHIP_BYTES", "HOROWITZ_45NM_PJ", "OpCounts", "OpEnergyError", "Read", "count_ops",
           "load_op_energies", "matmulfree_ops", "price", "rwkv_ops", "transformer_ops"]
