"""The parameter blob of the RWKV-4 HLS kernel (``weights/mmf_weights.bin``): little-endian 32-bit
words, read by the kernel over AXI. Same encodings as the MLGRU blob (:mod:`.layout`), other sections::

    header   16 words: magic 'RWK1', format_version, d, L, V, hidden, flags (bit 0: gate), total
             words, 4 section offsets, act_frac, res_shift, ln_frac, lut_bits << 8 | lut_frac
    emb      V rows of ceil(d/4) words, int8 x4 per word (the LayerNorm after the embedding folded in)
    vectors  per layer: ln1 gain (int16 x2), ln1 bias, ln2 gain, ln2 bias, att time_mix_r/k/v,
             att w, att u, ffn time_mix_r/k (one int32 per word); then norm gain, norm bias
    consts   per layer: (k_m, k_e) of ln1, ln2 and each BitLinear in token order; then norm's and
             the head's
    weights  per layer: att receptance, key, value[, gate], output (d x ceil(d/16)), ffn receptance
             (d x ceil(d/16)), key (hidden x ceil(d/16)), value (d x ceil(hidden/16)); then the head

Every offset the kernel uses is emitted as a macro by :meth:`RWKVLayout.macros` (layer ``l`` at
``base + l * stride + within``, checked here for every layer).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..intref_rwkv import bitlinear_names
from .layout import HEADER_WORDS, WEIGHTS_PER_WORD, LayoutError, Section, pack_int8, pack_int16, pack_scalar, words_for
from .layout import pack_ternary_words as _pack_ternary

#: "RWK1" read as a little-endian 32-bit word.
MAGIC_RWKV = 0x314B5752
#: Per-layer vectors in blob order: (key suffix, encoding).
LAYER_VECTORS = (("ln1.gain", "int16x2"), ("ln1.bias", "int32"), ("ln2.gain", "int16x2"), ("ln2.bias", "int32"),
                 ("att.time_mix_r", "int32"), ("att.time_mix_k", "int32"), ("att.time_mix_v", "int32"),
                 ("att.w", "int32"), ("att.u", "int32"), ("ffn.time_mix_r", "int32"), ("ffn.time_mix_k", "int32"))


def macro(key: str) -> str:
    """Macro suffix of a key: ``att.time_mix_r`` -> ``ATT_TIME_MIX_R``."""
    return key.replace(".", "_").upper()


def pack_int32(a) -> np.ndarray:
    """Vector of signed 32-bit integers ``(n,)`` -> ``n`` words (two's complement)."""
    a = np.asarray(a, dtype=np.int64).reshape(-1)
    if a.size and (int(a.min()) < -(1 << 31) or int(a.max()) >= 1 << 31):
        raise LayoutError(f"int32 vector: values [{int(a.min())}, {int(a.max())}] do not fit 32 bits")
    return (a & 0xFFFFFFFF).astype(np.uint32)


class RWKVLayout:
    """Offsets of every section for the RWKV model described by ``P`` (``convert_rwkv.convert`` output)."""

    def __init__(self, P: dict[str, Any]) -> None:
        self.P = P
        d, L, V, hid = P["d_model"], P["n_layers"], P["vocab_size"], P["hidden"]
        self.gate = bool(P["rwkv_gate"])
        self.wd, self.wh = words_for(d, WEIGHTS_PER_WORD), words_for(hid, WEIGHTS_PER_WORD)
        self.emb_row_words = words_for(d, 4)
        self.sections: list[Section] = []
        self.within: dict[str, int] = {}  # macro suffix -> offset inside layer 0's block
        pos = self._add("header", 0, HEADER_WORDS, "header", (HEADER_WORDS,))
        self.off_emb = pos
        pos = self._add("emb.q", pos, V * self.emb_row_words, "int8x4", (V, d))
        self.off_vec = pos
        for layer in range(L):
            start = pos
            for suffix, kind in LAYER_VECTORS:
                pos = self._vector(f"layers.{layer}.{suffix}", kind, d, pos, start, layer, "VO_" + macro(suffix))
            self.vec_layer_words = pos - start
        self.off_norm_gain = pos
        pos = self._add("norm.gain", pos, words_for(d, 2), "int16x2", (d,))
        self.off_norm_bias = pos
        pos = self._add("norm.bias", pos, d, "int32", (d,))
        self.off_const = pos
        self.layer_consts = ["ln1", "ln2"] + [n.split(".", 2)[2] for n in bitlinear_names(1, self.gate)[:-1]]
        self.const_layer_words = 2 * len(self.layer_consts)
        for layer in range(L):
            for j, name in enumerate(self.layer_consts):
                if layer == 0:
                    self.within["CO_" + macro(name)] = 2 * j
                pos = self._add(f"layers.{layer}.{name}.k_m", pos, 1, "u32", ())
                pos = self._add(f"layers.{layer}.{name}.k_e", pos, 1, "i32", ())
        self.off_const_fin = pos
        for name in ("norm", "lm_head"):
            pos = self._add(f"{name}.k_m", pos, 1, "u32", ())
            pos = self._add(f"{name}.k_e", pos, 1, "i32", ())
        self.off_w = pos
        for layer in range(L):
            start = pos
            for key in bitlinear_names(L, self.gate):
                if not key.startswith(f"layers.{layer}."):
                    continue
                rows, wpr = P[key + ".d_out"], words_for(P[key + ".d_in"], WEIGHTS_PER_WORD)
                if layer == 0:
                    self.within["WO_" + macro(key.split(".", 2)[2])] = pos - start
                pos = self._add(key + ".w_packed", pos, rows * wpr, "ternary16", (rows, wpr * WEIGHTS_PER_WORD))
            self.w_layer_words = pos - start
        if L == 0:
            self.vec_layer_words = self.w_layer_words = 0
        self.off_w_hd = pos
        pos = self._add("lm_head.w_packed", pos, V * self.wd, "ternary16", (V, self.wd * WEIGHTS_PER_WORD))
        self.total_words = pos
        self._check_strides()

    def _add(self, name: str, pos: int, words: int, kind: str, shape: tuple[int, ...]) -> int:
        self.sections.append(Section(name, pos, words, kind, shape))
        return pos + words

    def _vector(self, key: str, kind: str, n: int, pos: int, start: int, layer: int, mac: str) -> int:
        if layer == 0:
            self.within[mac] = pos - start
        return self._add(key, pos, words_for(n, 2) if kind == "int16x2" else n, kind, (n,))

    def _check_strides(self) -> None:
        """The kernel addresses layer ``l`` as ``base + l * stride + within``: verify that."""
        by = {s.name: s.offset for s in self.sections}
        for layer in range(self.P["n_layers"]):
            for suffix, _ in LAYER_VECTORS:
                want = self.off_vec + layer * self.vec_layer_words + self.within["VO_" + macro(suffix)]
                if by[f"layers.{layer}.{suffix}"] != want:
                    raise LayoutError(f"RWKV blob layout: layers.{layer}.{suffix} not at the layer stride")
            for key in bitlinear_names(self.P["n_layers"], self.gate):
                if key.startswith(f"layers.{layer}."):
                    want = self.off_w + layer * self.w_layer_words + self.within["WO_" + macro(key.split(".", 2)[2])]
                    if by[key + ".w_packed"] != want:
                        raise LayoutError(f"RWKV blob layout: {key} weights not at the layer stride")

    def header(self) -> np.ndarray:
        P = self.P
        h = [MAGIC_RWKV, P["format_version"], P["d_model"], P["n_layers"], P["vocab_size"], P["hidden"],
             int(self.gate), self.total_words, self.off_emb, self.off_vec, self.off_const, self.off_w,
             P["act_frac"], P["res_shift"], P["ln_frac"], (P["lut_bits"] << 8) | P["lut_frac"]]
        return np.array(h, dtype=np.uint32)

    def pack(self) -> np.ndarray:
        """The blob as ``uint32 (total_words,)``."""
        blob = np.zeros(self.total_words, dtype=np.uint32)
        for s in self.sections:
            if s.kind == "header":
                words = self.header()
            elif s.kind == "int8x4":
                words = pack_int8(self.P[s.name])
            elif s.kind == "int16x2":
                words = pack_int16(self.P[s.name])
            elif s.kind == "int32":
                words = pack_int32(self.P[s.name])
            elif s.kind in ("u32", "i32"):
                words = pack_scalar(self.P[s.name], signed=s.kind == "i32", name=s.name)
            else:
                key = s.name[: -len(".w_packed")]
                words = _pack_ternary(self.P[s.name], self.P[key + ".w"], s.shape[0], s.words // s.shape[0], key)
            if words.size != s.words:
                raise LayoutError(f"RWKV blob layout: {s.name} packs to {words.size} words, expected {s.words}")
            blob[s.offset: s.offset + s.words] = words
        return blob

    def manifest(self) -> list[dict[str, Any]]:
        return [{"name": s.name, "offset_words": s.offset, "words": s.words, "encoding": s.kind,
                 "shape": list(s.shape)} for s in self.sections]

    def macros(self) -> list[tuple[str, int]]:
        """``(MMF_<NAME>, value)`` of every offset and stride the kernel reads."""
        out = [("MMF_BLOB_WORDS", self.total_words), ("MMF_OFF_EMB", self.off_emb),
               ("MMF_EMB_ROW_WORDS", self.emb_row_words), ("MMF_OFF_VEC", self.off_vec),
               ("MMF_VEC_LAYER_WORDS", self.vec_layer_words), ("MMF_OFF_NORM_GAIN", self.off_norm_gain),
               ("MMF_OFF_NORM_BIAS", self.off_norm_bias), ("MMF_OFF_CONST", self.off_const),
               ("MMF_CONST_LAYER_WORDS", self.const_layer_words), ("MMF_OFF_CONST_FIN", self.off_const_fin),
               ("MMF_OFF_W", self.off_w), ("MMF_W_LAYER_WORDS", self.w_layer_words), ("MMF_OFF_W_HD", self.off_w_hd)]
        out += [(f"MMF_{k}", v) for k, v in self.within.items()]
        if not self.gate:  # the kernel names the gate's offsets in dead branches
            out += [("MMF_CO_ATT_GATE", 0), ("MMF_WO_ATT_GATE", 0)]
        return out
