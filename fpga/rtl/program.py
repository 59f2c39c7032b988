"""Static schedule and memory images of the RTL accelerator (pure Python, no HDL).

From the integer parameter dict ``P`` of :func:`matmulfree.fpga.intref.convert` and the lane
shape (``rows`` output rows x ``inputs`` inputs per cycle) this module computes everything the
hardware holds in ROM: the micro-program of one token step (one :class:`Op` per pass or
BitLinear), the packed ternary weight words, the norm gains, the embedding, the tables and the
per-layer vectors of the element-wise units. Memory layouts (``K = inputs``, ``R = rows``):

* vectors of length ``n`` live in ``K`` banks: element ``i`` in bank ``i % K`` at ``i // K``;
* weight word ``wbase + g * C + c`` (``C = ceil(d_in / K)``) holds ``W[g*R + r, c*K + k]`` in bits
  ``2*(r*K + k)`` (2-bit code of :data:`matmulfree.quant.TERNARY_CODE`, zero padded);
* gain word ``gbase + c`` of bank ``k`` holds up to three 16-bit gains (slots) of element
  ``c*K + k``: the three BitLinears that read one normalized input (f, c, g) share a word.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from matmulfree.quant import TERNARY_CODE

from ..convert import bitlinear_names

# Op codes of the micro-program.
EMBED, GAIN, NORM, MV, DONE = range(5)
OP_NAMES = {EMBED: "embed", GAIN: "gain", NORM: "norm", MV: "matvec", DONE: "done"}
# Post-processing kinds of a matvec (what happens to each output row).
K_F, K_C, K_G, K_RES, K_GLU, K_HEAD = range(6)
KIND_NAMES = {K_F: "forget", K_C: "cand", K_G: "gate", K_RES: "residual", K_GLU: "glu_in", K_HEAD: "head"}

#: Fixed hardware widths (FORMATS.md): normalized vectors s16, gains s16, T buffer s36.
NORM_BITS, GAIN_BITS, T_BITS, XQ_BITS, MANT_BITS = 16, 16, 36, 8, 17
#: Minimum cycles of the first row group (the XQ buffer is written by its quantizer lanes).
MIN_PERIOD0 = 10
#: Compact cores (serial post unit, :mod:`.post_serial`): minimum cycles between two output rows.
SERIAL_POST_CYCLES = 14
#: Compact cores: cycles a matvec waits before its first issue, while the core's shared shifter
#: normalizes the output scale's second product (the quantizer needs the shifter from its fifth cycle).
QUANT_HOLD = 4


class ProgramError(ValueError):
    """The model or lane shape cannot be mapped onto the accelerator."""


@dataclass
class Op:
    """One micro-program step (fields unused by an op code are 0)."""

    op: int
    chunks: int = 0  # ceil(n / K) input chunks
    last_lanes: int = 0  # valid lanes of the last chunk (1..K)
    gbase: int = 0  # gain memory base (chunk units)
    src_t: int = 0  # GAIN: source T (else X)
    opnd_f: int = 0  # GAIN: multiply by the F buffer (else gain slot 0)
    fanout: int = 0  # NORM: number of gain slots whose max |z| is tracked
    slot: int = 0  # MV: gain slot of this BitLinear
    wbase: int = 0  # MV: weight memory base word
    groups: int = 0  # MV: ceil(d_out / R)
    period0: int = 0  # MV: cycles of row group 0
    period: int = 0  # MV: cycles of later row groups
    d_out: int = 0
    kind: int = 0
    hbase: int = 0  # MV kind G: state base (chunk units)
    pbase: int = 0  # MV kinds F/G: per-layer vector base (elements)
    k_m: int = 0
    k_e: int = 0
    acc_shift: int = 0
    name: str = ""

    def encode(self, fields: list[tuple[str, int, bool]]) -> int:
        word, pos = 0, 0
        for fname, width, signed in fields:
            v = int(getattr(self, fname))
            if signed:
                v &= (1 << width) - 1
            word |= v << pos
            pos += width
        return word


@dataclass
class Program:
    """Everything static about one accelerator instance (see the module docstring)."""

    R: int
    K: int
    fmt: dict[str, int]  # format scalars of P
    d: int
    n_layers: int
    hid: int
    vocab: int
    ops: list[Op]
    wmem: list[int]  # packed weight words (2*R*K bits)
    gmem: list[list[int]]  # K banks of 3x16-bit gain words
    emb: list[int]  # K x 8-bit words, address tok * ceil(d/K) + c
    prom: list[int]  # per-layer (lb << 16 | gn) words (empty if neither is used)
    recip: list[int]
    rsqrt: list[int]
    sigmoid: list[int]
    silu: list[int]
    ternary_weights: int
    extra: dict[str, Any] = field(default_factory=dict)
    compact: bool = False  # one output row per row group through the serial post unit (small FPGAs)

    # ------------------------------------------------------------------ derived sizes
    @property
    def lanes(self) -> int:
        return self.R * self.K

    def chunks(self, n: int) -> int:
        return -(-n // self.K)

    @property
    def d_in_max(self) -> int:
        return max(self.d, self.hid)

    @property
    def acc_bits(self) -> int:
        """Signed accumulator width: ``|acc| <= 128 * d_in``."""
        return (128 * self.d_in_max).bit_length() + 1

    @property
    def tok_bits(self) -> int:
        return max(1, (self.vocab - 1).bit_length())

    @property
    def uses_acc_shift(self) -> bool:
        return any(o.acc_shift for o in self.ops)

    @property
    def op_fields(self) -> list[tuple[str, int, bool]]:
        """(name, width, signed) of the program ROM word, low bits first."""

        def w(name: str) -> int:
            return max(1, max(int(getattr(o, name)) for o in self.ops).bit_length())

        ke = max(abs(o.k_e) for o in self.ops)
        return [("op", 3, False), ("chunks", w("chunks"), False), ("last_lanes", w("last_lanes"), False),
                ("gbase", w("gbase"), False), ("src_t", 1, False), ("opnd_f", 1, False), ("fanout", 2, False),
                ("slot", 2, False), ("wbase", w("wbase"), False), ("groups", w("groups"), False),
                ("period0", w("period0"), False), ("period", w("period"), False), ("d_out", w("d_out"), False),
                ("kind", 3, False), ("hbase", w("hbase"), False), ("pbase", w("pbase"), False),
                ("k_m", MANT_BITS, False), ("k_e", max(2, ke.bit_length() + 1), True),
                ("acc_shift", w("acc_shift"), False)]

    def rom_words(self) -> list[int]:
        fields = self.op_fields
        return [o.encode(fields) for o in self.ops]

    # ------------------------------------------------------------------ figures
    def lower_bound_cycles(self) -> int:
        """Ternary weights per token / weights the datapath consumes per cycle (the lower bound of
        ``docs/design.md``, "Figures")."""
        return -(-self.ternary_weights // self.lanes)

    def summary(self) -> dict[str, Any]:
        return {"d": self.d, "layers": self.n_layers, "hidden": self.hid, "vocab": self.vocab,
                "ternary_weights": self.ternary_weights, "rows": self.R, "inputs": self.K, "lanes": self.lanes,
                "ops": len(self.ops), "weight_words": len(self.wmem), "weight_bits": len(self.wmem) * 2 * self.lanes,
                "compact": self.compact}


# ---------------------------------------------------------------------- helpers
def _u(v: int, bits: int) -> int:
    """Two's complement bit pattern of ``v`` in ``bits`` bits (range-checked)."""
    v = int(v)
    if not -(1 << (bits - 1)) <= v < (1 << bits):
        raise ProgramError(f"value {v} does not fit {bits} bits")
    return v & ((1 << bits) - 1)


def _check_lanes(rows: int, inputs: int) -> None:
    if rows < 1 or rows > 256:
        raise ProgramError(f"rows must be in [1, 256], got {rows}")
    if inputs < 1 or inputs > 32 or inputs & (inputs - 1):
        raise ProgramError(f"inputs per cycle must be a power of two in [1, 32], got {inputs}")


def pack_weights(w: np.ndarray, R: int, K: int) -> list[int]:
    """Ternary matrix ``w (d_out, d_in)`` -> weight words (see module docstring)."""
    d_out, d_in = w.shape
    G, C = -(-d_out // R), -(-d_in // K)
    pad = np.zeros((G * R, C * K), dtype=np.int64)
    pad[:d_out, :d_in] = w
    codes = np.zeros_like(pad)
    for v, code in TERNARY_CODE.items():
        codes[pad == v] = code
    if not np.isin(pad, list(TERNARY_CODE)).all():
        raise ProgramError("weights must be ternary (-1, 0, 1)")
    blocks = codes.reshape(G, R, C, K).transpose(0, 2, 1, 3).reshape(G * C, R * K)
    shifts = [2 * i for i in range(R * K)]
    return [sum(int(c) << s for c, s in zip(row, shifts) if c) for row in blocks]


def _period(chunks: int, R: int, first: bool, compact: bool) -> int:
    return max(chunks, R, MIN_PERIOD0 if first else 1, SERIAL_POST_CYCLES if compact else 1)


# ---------------------------------------------------------------------- builder
def build_program(P: dict[str, Any], rows: int, inputs: int, compact: bool = False) -> Program:
    """Compile the integer model ``P`` into a :class:`Program` for ``rows x inputs`` lanes.

    ``compact=True`` selects the small-FPGA datapath (serial post unit), which needs ``rows == 1``.

    Raises:
        ProgramError: unsupported format version, widths or lane shape (message names the field).
    """
    _check_lanes(rows, inputs)
    if compact and rows != 1:
        raise ProgramError(f"the compact datapath computes one output row at a time (rows=1), got rows={rows}")
    R, K = rows, inputs
    if P.get("format_version") != 1:
        raise ProgramError(f"parameter dict format_version={P.get('format_version')!r}; the RTL supports 1")
    fmt = {k: int(P[k]) for k in ("act_frac", "act_bits", "lut_bits", "lut_frac", "res_shift", "res_bits",
                                  "logit_frac", "logit_bits", "gate_released", "forget_lower_bound")}
    if fmt["act_bits"] != 18:
        raise ProgramError(f"act_bits={fmt['act_bits']}: the RTL datapath is built for 18")
    if not 18 <= fmt["res_bits"] <= 32 or not 8 <= fmt["logit_bits"] <= 32:
        raise ProgramError(f"res_bits/logit_bits out of [18|8, 32]: {fmt}")
    d, L, hid, V = (int(P[k]) for k in ("d_model", "n_layers", "hidden", "vocab_size"))
    if hid < 8:
        raise ProgramError(f"hidden={hid}: the GLU pipeline needs at least 8 channels")
    Cd, Ch = -(-d // K), -(-max(d, hid) // K)

    # Gain memory: a list of vectors (each up to 3 slots), laid out bank-interleaved.
    gmem: list[list[int]] = [[] for _ in range(K)]

    def put_gains(*vecs: np.ndarray) -> int:
        base = len(gmem[0])
        n = len(vecs[0])
        for c in range(-(-n // K)):
            for k in range(K):
                i, word = c * K + k, 0
                for s, v in enumerate(vecs):
                    if i < n:
                        word |= _u(v[i], GAIN_BITS) << (GAIN_BITS * s)
                gmem[k].append(word)
        return base

    ops: list[Op] = []
    wmem: list[int] = []
    n_weights = 0

    def chunked(n: int) -> dict[str, int]:
        c = -(-n // K)
        return {"chunks": c, "last_lanes": n - (c - 1) * K}

    def mv(key: str, slot: int, kind: int, layer: int = 0) -> None:
        nonlocal n_weights
        w = np.asarray(P[key + ".w"], dtype=np.int64)
        d_out, d_in = w.shape
        words = pack_weights(w, R, K)
        n_weights += w.size
        ch = chunked(d_in)
        op = Op(MV, **ch, gbase=gb[key], slot=slot, wbase=len(wmem), groups=-(-d_out // R),
                period0=_period(ch["chunks"], R, True, compact), period=_period(ch["chunks"], R, False, compact),
                d_out=d_out,
                kind=kind, hbase=layer * Cd, pbase=layer * d, k_m=int(P[key + ".k_m"]), k_e=int(P[key + ".k_e"]),
                acc_shift=int(P[key + ".acc_shift"]), name=key)
        if not (1 << 16) <= op.k_m < (1 << 17):
            raise ProgramError(f"{key}.k_m={op.k_m} is not a 17-bit mantissa")
        wmem.extend(words)
        ops.append(op)

    gb: dict[str, int] = {}

    def norm(*keys: str) -> None:
        base = put_gains(*[np.asarray(P[k + ".norm.gain"]) for k in keys])
        for k in keys:
            gb[k] = base
        ops.append(Op(NORM, **chunked(int(P[keys[0] + ".d_in"])), gbase=base, fanout=len(keys),
                      name="norm:" + "+".join(keys)))

    def gain(key: str | None, n: int, src_t: int = 0) -> None:
        base = put_gains(np.asarray(P[key + ".gain"])) if key else 0
        ops.append(Op(GAIN, **chunked(n), gbase=base, src_t=src_t, opnd_f=int(key is None),
                      name=f"gain:{key or 'silu(h)'}"))

    ops.append(Op(EMBED, **chunked(d), name="embed"))
    for i in range(L):
        pre = f"layers.{i}"
        gain(f"{pre}.mixer_norm", d)
        norm(*(f"{pre}.mixer.{p}" for p in ("f_proj", "c_proj", "g_proj")))
        mv(f"{pre}.mixer.f_proj", 0, K_F, i)
        mv(f"{pre}.mixer.c_proj", 1, K_C, i)
        mv(f"{pre}.mixer.g_proj", 2, K_G, i)
        if fmt["gate_released"]:
            gain(None, d, src_t=1)
        norm(f"{pre}.mixer.o_proj")
        mv(f"{pre}.mixer.o_proj", 0, K_RES, i)
        gain(f"{pre}.mlp_norm", d)
        norm(f"{pre}.mlp.w_in")
        mv(f"{pre}.mlp.w_in", 0, K_GLU, i)
        norm(f"{pre}.mlp.w_down")
        mv(f"{pre}.mlp.w_down", 0, K_RES, i)
    gain("norm", d)
    norm("lm_head")
    mv("lm_head", 0, K_HEAD)
    ops.append(Op(DONE, name="done"))

    shapes = {n: tuple(np.asarray(P[n + ".w"]).shape) for n in bitlinear_names(L)}
    for n, (o, i) in shapes.items():
        want_in = hid if n.endswith("w_down") else d
        want_out = {"w_in": 2 * hid, "lm_head": V}.get(n.rsplit(".", 1)[-1], d)
        if (o, i) != (want_out, want_in):
            raise ProgramError(f"{n}.w has shape {(o, i)}, expected {(want_out, want_in)}")

    # Embedding words (K lanes of s8).
    emb = np.asarray(P["emb.q"], dtype=np.int64)
    embp = np.zeros((V, Cd * K), dtype=np.int64)
    embp[:, :d] = emb
    emb_words = []
    for t in range(V):
        for c in range(Cd):
            emb_words.append(sum(_u(embp[t, c * K + k], 8) << (8 * k) for k in range(K)))

    prom: list[int] = []
    if fmt["gate_released"] or fmt["forget_lower_bound"]:
        for i in range(L):
            lb = np.asarray(P[f"layers.{i}.mixer.lb"]) if fmt["forget_lower_bound"] else np.zeros(d, np.int64)
            gn = np.asarray(P[f"layers.{i}.mixer.g_norm.gain"]) if fmt["gate_released"] else np.zeros(d, np.int64)
            prom += [(_u(a, 16) << 16) | _u(b, 16) for a, b in zip(lb, gn)]

    lut_bits = fmt["lut_bits"]
    prog = Program(
        R=R, K=K, fmt=fmt, d=d, n_layers=L, hid=hid, vocab=V, ops=ops, wmem=wmem, gmem=gmem, emb=emb_words,
        prom=prom,
        recip=[_u(v, 18) for v in np.asarray(P["lut.recip"])],
        rsqrt=[_u(v, 18) for v in np.asarray(P["lut.rsqrt"])],
        sigmoid=[_u(v, 17) for v in np.asarray(P["lut.sigmoid"])],
        silu=[_u(v, 18) for v in np.asarray(P["lut.silu"])],
        ternary_weights=n_weights,
        extra={"gain_words": len(gmem[0]), "chunks_d": Cd, "chunks_h": Ch}, compact=compact,
    )
    if len(prog.sigmoid) != 1 << lut_bits or len(prog.silu) != 1 << lut_bits:
        raise ProgramError(f"lut.sigmoid/lut.silu must have 2**lut_bits={1 << lut_bits} entries")
    if len(prog.recip) != 1024 or len(prog.rsqrt) != 768:
        raise ProgramError("lut.recip must have 1024 entries and lut.rsqrt 768")
    if math.log2(max(prog.acc_bits, 2)) > 6:
        raise ProgramError("accumulator wider than 64 bits")
    return prog
