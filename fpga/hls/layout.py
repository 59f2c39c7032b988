"""The parameter blob of the HLS kernel: one array of little-endian 32-bit words that a host
copies to device DRAM and the kernel reads over AXI (``weights/mmf_weights.bin``; the same words
as a C initializer in ``weights/mmf_weights.h``).

Layout (word offsets are also emitted as macros in ``firmware/mmf_params.h``)::

    header   16 words: magic, format_version, d, L, V, hidden, flags, total words, 4 section
             offsets, act_frac, res_shift, lut_bits, lut_frac
    emb      V rows of ceil(d/4) words, int8 x4 per word (byte j of a word = element 4w+j)
    gains    per layer: mixer_norm, f, c, g, o, mlp_norm, w_in, w_down norms [, g_norm] [, lb];
             then the final norm and the head's norm; int16 x2 per word (low half first),
             each vector padded to whole words
    consts   per layer: (k_m, k_e) of f, c, g, o, w_in, w_down; then the head's (k_m, k_e)
    weights  per layer: f, c, g, o (d x ceil(d/16)), w_in (2l x ceil(d/16)), w_down (d x ceil(l/16));
             then the head (V x ceil(d/16)); 16 ternary weights per word in the 2-bit code of
             ``matmulfree.quant.pack_ternary`` (weight j of a row in bits 2*(j mod 16) of word j//16)

Weights come last so that a streaming kernel reads them straight from DRAM.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

#: "MMF1" read as a little-endian 32-bit word.
MAGIC = 0x31464D4D
HEADER_WORDS = 16
#: Ternary weights per 32-bit word.
WEIGHTS_PER_WORD = 16
#: Projections of one layer, in blob order: (macro suffix, key suffix, rows key, d_in key).
PROJ = (("F", "mixer.f_proj"), ("C", "mixer.c_proj"), ("G", "mixer.g_proj"), ("O", "mixer.o_proj"),
        ("IN", "mlp.w_in"), ("DN", "mlp.w_down"))


class LayoutError(ValueError):
    """The parameter dict does not match the shapes the kernel expects."""


@dataclass(frozen=True)
class Section:
    """One named block of the blob: ``words`` 32-bit words at word ``offset``."""

    name: str  # parameter key, e.g. "layers.0.mixer.f_proj.w_packed"
    offset: int
    words: int
    kind: str  # "ternary16", "int8x4", "int16x2", "u32", "i32", "header"
    shape: tuple[int, ...]  # logical shape of the integers it holds


def words_for(n: int, per_word: int) -> int:
    return -(-n // per_word)


def gain_vectors(P: dict[str, Any], layer: int) -> list[tuple[str, str, int]]:
    """``(macro suffix, key, length)`` of the int16 vectors of one layer, in blob order."""
    d, hid, pre = P["d_model"], P["hidden"], f"layers.{layer}"
    out = [("MIX", f"{pre}.mixer_norm.gain", d)]
    out += [(s, f"{pre}.{k}.norm.gain", d) for s, k in PROJ[:4]]
    out += [("MLP", f"{pre}.mlp_norm.gain", d), ("IN", f"{pre}.mlp.w_in.norm.gain", d),
            ("DN", f"{pre}.mlp.w_down.norm.gain", hid)]
    if P["gate_released"]:
        out.append(("GATE", f"{pre}.mixer.g_norm.gain", d))
    if P["forget_lower_bound"]:
        out.append(("LB", f"{pre}.mixer.lb", d))
    return out


class BlobLayout:
    """Offsets of every section for the model described by ``P`` (``intref.convert`` output)."""

    def __init__(self, P: dict[str, Any]) -> None:
        self.P = P
        d, L, V, hid = P["d_model"], P["n_layers"], P["vocab_size"], P["hidden"]
        self.wd, self.wh = words_for(d, WEIGHTS_PER_WORD), words_for(hid, WEIGHTS_PER_WORD)
        self.emb_row_words = words_for(d, 4)
        self.sections: list[Section] = []
        pos = self._add("header", pos=0, words=HEADER_WORDS, kind="header", shape=(HEADER_WORDS,))
        self.off_emb = pos
        pos = self._add("emb.q", pos, V * self.emb_row_words, "int8x4", (V, d))
        # gains
        self.off_gain = pos
        self.gain_within: dict[str, int] = {}
        for layer in range(L):
            start = pos
            for suffix, key, n in gain_vectors(P, layer):
                if layer == 0:
                    self.gain_within[suffix] = pos - start
                pos = self._add(key, pos, words_for(n, 2), "int16x2", (n,))
            if layer == 0:
                self.gain_layer_words = pos - start
        if L == 0:
            self.gain_layer_words = 0
        self.off_gain_fin = pos
        pos = self._add("norm.gain", pos, words_for(d, 2), "int16x2", (d,))
        self.off_gain_hd = pos
        pos = self._add("lm_head.norm.gain", pos, words_for(d, 2), "int16x2", (d,))
        # constants
        self.off_const = pos
        self.const_layer_words = 2 * len(PROJ)
        for layer in range(L):
            for _, key in PROJ:
                pos = self._add(f"layers.{layer}.{key}.k_m", pos, 1, "u32", ())
                pos = self._add(f"layers.{layer}.{key}.k_e", pos, 1, "i32", ())
        self.off_const_hd = pos
        pos = self._add("lm_head.k_m", pos, 1, "u32", ())
        pos = self._add("lm_head.k_e", pos, 1, "i32", ())
        # ternary weights
        self.off_w = pos
        self.w_within: dict[str, int] = {}
        for layer in range(L):
            start = pos
            for suffix, key in PROJ:
                rows = 2 * hid if suffix == "IN" else d
                wpr = self.wh if suffix == "DN" else self.wd
                if layer == 0:
                    self.w_within[suffix] = pos - start
                pos = self._add(f"layers.{layer}.{key}.w_packed", pos, rows * wpr, "ternary16", (rows, wpr * 16))
            if layer == 0:
                self.w_layer_words = pos - start
        if L == 0:
            self.w_layer_words = 0
        self.off_w_hd = pos
        pos = self._add("lm_head.w_packed", pos, V * self.wd, "ternary16", (V, self.wd * 16))
        self.total_words = pos
        self._check_strides()

    def _add(self, name: str, pos: int, words: int, kind: str, shape: tuple[int, ...]) -> int:
        self.sections.append(Section(name, pos, words, kind, shape))
        return pos + words

    def _check_strides(self) -> None:
        """The kernel addresses layer ``l`` as ``base + l * stride + within``: verify that."""
        by_name = {s.name: s for s in self.sections}
        for layer in range(self.P["n_layers"]):
            for suffix, key in PROJ:
                want = self.off_w + layer * self.w_layer_words + self.w_within[suffix]
                if by_name[f"layers.{layer}.{key}.w_packed"].offset != want:
                    raise LayoutError(f"blob layout: layer {layer} {key} weights not at the layer stride")
            for suffix, key, _ in gain_vectors(self.P, layer):
                if by_name[key].offset != self.off_gain + layer * self.gain_layer_words + self.gain_within[suffix]:
                    raise LayoutError(f"blob layout: {key} not at the layer stride")

    # ------------------------------------------------------------------ packing
    def header(self) -> np.ndarray:
        P = self.P
        flags = int(P["gate_released"]) | (int(P["forget_lower_bound"]) << 1)
        h = [MAGIC, P["format_version"], P["d_model"], P["n_layers"], P["vocab_size"], P["hidden"], flags,
             self.total_words, self.off_emb, self.off_gain, self.off_const, self.off_w, P["act_frac"],
             P["res_shift"], P["lut_bits"], P["lut_frac"]]
        return np.array(h, dtype=np.uint32)

    def pack(self) -> np.ndarray:
        """The blob as ``uint32 (total_words,)``."""
        P = self.P
        blob = np.zeros(self.total_words, dtype=np.uint32)
        for s in self.sections:
            if s.kind == "header":
                words = self.header()
            elif s.kind == "int8x4":
                words = pack_int8(P[s.name])
            elif s.kind == "int16x2":
                words = pack_int16(P[s.name])
            elif s.kind in ("u32", "i32"):
                words = pack_scalar(P[s.name], signed=s.kind == "i32", name=s.name)
            else:
                key = s.name[: -len(".w_packed")]
                words = pack_ternary_words(P[s.name], P[key + ".w"], s.shape[0], s.words // s.shape[0], key)
            if words.size != s.words:
                raise LayoutError(f"blob layout: {s.name} packs to {words.size} words, expected {s.words}")
            blob[s.offset: s.offset + s.words] = words
        return blob

    def manifest(self) -> list[dict[str, Any]]:
        return [{"name": s.name, "offset_words": s.offset, "words": s.words, "encoding": s.kind,
                 "shape": list(s.shape)} for s in self.sections]


def _check_range(name: str, a: np.ndarray, lo: int, hi: int) -> None:
    if a.size and (int(a.min()) < lo or int(a.max()) > hi):
        raise LayoutError(f"{name}: values [{int(a.min())}, {int(a.max())}] outside [{lo}, {hi}]")


def pack_int8(a) -> np.ndarray:
    """Rows of int8 ``(R, n)`` -> ``R * ceil(n/4)`` words (byte j of word w = element 4w+j)."""
    a = np.asarray(a, dtype=np.int64)
    _check_range("int8 table", a, -128, 127)
    rows, n = a.shape
    pad = np.zeros((rows, words_for(n, 4) * 4), dtype=np.int64)
    pad[:, :n] = a
    return np.ascontiguousarray(pad.astype(np.int8)).view("<u4").astype(np.uint32).reshape(-1)


def pack_int16(a) -> np.ndarray:
    """Vector of int16 ``(n,)`` -> ``ceil(n/2)`` words (low half = even element)."""
    a = np.asarray(a, dtype=np.int64).reshape(-1)
    _check_range("int16 vector", a, -32768, 32767)
    pad = np.zeros(words_for(a.size, 2) * 2, dtype=np.int64)
    pad[: a.size] = a
    return np.ascontiguousarray(pad.astype(np.int16)).view("<u4").astype(np.uint32)


def pack_scalar(v, signed: bool, name: str) -> np.ndarray:
    v = int(v)
    lo, hi = (-(1 << 31), (1 << 31) - 1) if signed else (0, (1 << 32) - 1)
    if not lo <= v <= hi:
        raise LayoutError(f"{name}={v} does not fit {'int32' if signed else 'uint32'}")
    return np.array([v & 0xFFFFFFFF], dtype=np.uint32)


def pack_ternary_words(w_packed, w, rows: int, words_per_row: int, key: str) -> np.ndarray:
    """The contract's packed bytes ``(rows, ceil(in/4)) uint8`` as 16-weight words, checked
    against the ternary matrix ``w (rows, in)`` so that the two can never disagree."""
    b = np.asarray(w_packed, dtype=np.uint8)
    if b.ndim != 2 or b.shape[0] != rows:
        raise LayoutError(f"{key}.w_packed: shape {b.shape}, expected ({rows}, ...)")
    pad = np.zeros((rows, words_per_row * 4), dtype=np.uint8)
    pad[:, : b.shape[1]] = b
    words = np.ascontiguousarray(pad).view("<u4").astype(np.uint32)
    codes = (words[:, :, None] >> (2 * np.arange(16, dtype=np.uint32))) & 3
    dec = np.where(codes == 1, 1, np.where(codes == 3, -1, 0)).reshape(rows, -1)
    w = np.asarray(w, dtype=np.int64)
    if not np.array_equal(dec[:, : w.shape[1]], w) or dec[:, w.shape[1]:].any() or (codes == 2).any():
        raise LayoutError(f"{key}: packed 2-bit words do not decode to {key}.w")
    return words.reshape(-1)
