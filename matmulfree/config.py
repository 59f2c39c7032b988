"""Model configurations and presets (the single source of truth for architecture fields).

A config serialises to ``config.json`` with an ``architecture`` field (``"matmulfree"``,
``"rwkv"`` or ``"transformer"``) so that :func:`matmulfree.load` can open any kind. Loading validates every
field: unknown names and wrong types raise :class:`ConfigError` naming the field.

Every field carries a one-line description (:func:`doc_field`); the recipe reference of the
documentation site is generated from it, and a field without one fails the docs test.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar

from .quant import ROUNDING_MODES


class ConfigError(ValueError):
    """A config (file or dict) has an unknown field, a wrong type or an invalid value."""


def doc_field(default: Any = dataclasses.MISSING, doc: str = "") -> Any:
    """A dataclass field with its one-line description in ``metadata["doc"]`` (no ``default``: a
    required field; list and dict defaults are copied for every instance)."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"doc": doc})
    return field(default=default, metadata={"doc": doc})


def field_docs(cls: type) -> dict[str, str]:
    """``{field name: description}`` of a dataclass; a field without a description raises ``ValueError``."""
    docs = {f.name: f.metadata.get("doc", "") for f in dataclasses.fields(cls)}
    missing = [name for name, doc in docs.items() if not doc]
    if missing:
        raise ValueError(f"{cls.__name__}: field(s) {missing} have no description; "
                         "declare them with doc_field(default, 'what it holds')")
    return docs


def glu_hidden_size(d_model: int, multiple_of: int = 256) -> int:
    """Paper rule for the GLU width: ``ceil(8 d / 3)`` rounded up to a multiple of ``multiple_of``."""
    return multiple_of * math.ceil(math.ceil(8 * d_model / 3) / multiple_of)


_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def check_type(owner: str, name: str, value: Any, annotation: str) -> Any:
    """Validate ``value`` against a (string) annotation of the simple kinds used in configs."""
    allowed = [a.strip() for a in annotation.split("|")]
    if value is None and "None" in allowed:
        return value
    for a in allowed:
        if a == "int" and isinstance(value, int) and not isinstance(value, bool):
            return value
        if a == "float" and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if a == "float" and isinstance(value, str) and _FLOAT.fullmatch(value.strip()):
            return float(value)  # YAML 1.1 reads ``1e-3`` (no dot) as a string
        if a == "bool" and isinstance(value, bool):
            return value
        if a == "str" and isinstance(value, str):
            return value
        if a.startswith("list[") and isinstance(value, (list, tuple)):
            inner = a[5:-1]
            return [check_type(owner, f"{name}[{i}]", v, inner) for i, v in enumerate(value)]
    raise ConfigError(f"{owner}: field '{name}' must be {annotation}, got {value!r} ({type(value).__name__})")


@dataclass
class _BaseConfig:
    architecture: ClassVar[str] = ""

    vocab_size: int = doc_field(256, "vocabulary size V (a recipe fills in the tokenizer's when absent)")
    d_model: int = doc_field(256, "model width d")
    n_layers: int = doc_field(4, "number of blocks L")
    intermediate_size: int | None = doc_field(
        None, "GLU / SwiGLU hidden width l (null: ceil(8d/3) rounded up to a multiple of 256)")
    max_seq_len: int = doc_field(
        2048, "longest sequence in tokens that training and evaluation may use; the Transformer++ refuses longer")
    norm_eps: float = doc_field(1e-6, "epsilon of every RMSNorm")
    init_std: float = doc_field(0.02, "standard deviation of the normal initialisation of embeddings and projections")
    tie_embeddings: bool = doc_field(
        False, "stored in config.json but not used yet: both models keep an untied LM head")

    def __post_init__(self) -> None:
        owner = type(self).__name__
        for f in dataclasses.fields(self):
            setattr(self, f.name, check_type(owner, f.name, getattr(self, f.name), str(f.type)))
        for name in ("vocab_size", "d_model", "n_layers", "max_seq_len"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{owner}: field '{name}' must be positive, got {getattr(self, name)}")
        if self.intermediate_size is None:
            self.intermediate_size = glu_hidden_size(self.d_model)
        if self.intermediate_size <= 0:
            raise ConfigError(f"{owner}: field 'intermediate_size' must be positive")

    def to_dict(self) -> dict[str, Any]:
        return {"architecture": self.architecture, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> _BaseConfig:
        """Build a config, rejecting unknown fields (the error names them and ``source``)."""
        data = dict(data)
        arch = data.pop("architecture", cls.architecture)
        if arch != cls.architecture:
            raise ConfigError(f"{source}: architecture '{arch}' does not match {cls.__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{source}: unknown field(s) {unknown} for {cls.__name__}; known: {sorted(known)}")
        try:
            return cls(**data)
        except ConfigError as e:
            raise ConfigError(f"{source}: {e}") from None


@dataclass
class _TernaryConfig(_BaseConfig):
    """Fields shared by the architectures whose projections are BitLinears."""

    quantize_activations: bool = doc_field(
        True, "BitLinears round their inputs to int8 per token (false: weights stay ternary, "
        "activations unquantised; ablations and the exact check against the rwkv package)")
    ternary_head: bool = doc_field(True, "the LM head is a BitLinear (false: a full-precision linear layer)")


@dataclass
class MatMulFreeConfig(_TernaryConfig):
    """MatMul-free LM: MLGRU token mixer + ternary GLU, every projection a BitLinear.

    ``gate``: ``"paper"`` (``o' = g * sigmoid(h)``) or ``"released"`` (``o' = RMSNorm(g) * SiLU(h)``).
    ``forget_lower_bound``: learnable per-layer lower bound on the forget gate (cumulative softmax).
    ``ternary_head``: the LM head is a BitLinear (else a full-precision linear).
    """

    architecture: ClassVar[str] = "matmulfree"

    gate: str = doc_field("paper", "MLGRU output gate: paper (g·σ(h)) or released (RMSNorm(g)·SiLU(h))")
    forget_lower_bound: bool = doc_field(
        False, "learnable per-layer lower bound on the MLGRU forget gate (cumulative softmax over layers)")
    bitlinear_eps: float | None = doc_field(
        None, "epsilon of the RMSNorm inside every BitLinear, head included (null: norm_eps); "
        "converted hgrn_bit releases use 1e-6, the value their fused kernel hard-codes")
    act_rounding: str = doc_field(
        "half_even", "tie rule of the 8-bit activation rounding: half_even (torch.round) or half_away "
        "(halfway cases away from zero, as the released hgrn_bit GPU kernels computed)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.gate not in ("paper", "released"):
            raise ConfigError(f"MatMulFreeConfig: field 'gate' must be 'paper' or 'released', got {self.gate!r}")
        if self.act_rounding not in ROUNDING_MODES:
            raise ConfigError(f"MatMulFreeConfig: field 'act_rounding' must be one of {list(ROUNDING_MODES)}, "
                              f"got {self.act_rounding!r}")
        if self.bitlinear_eps is not None and self.bitlinear_eps <= 0:
            raise ConfigError(f"MatMulFreeConfig: field 'bitlinear_eps' must be positive, got {self.bitlinear_eps}")

    @property
    def linear_eps(self) -> float:
        """The RMSNorm epsilon inside every BitLinear (``bitlinear_eps``, else ``norm_eps``)."""
        return self.norm_eps if self.bitlinear_eps is None else self.bitlinear_eps


@dataclass
class RWKVConfig(_TernaryConfig):
    """MatMul-free RWKV-4: LayerNorm pre-norm blocks of time mixing (WKV recurrence) and channel
    mixing, every projection a BitLinear without an inner norm (see ``docs/rwkv.md``).

    ``intermediate_size`` is the channel-mixing width (RWKV-4 uses ``4 d``; null: the GLU rule).
    ``norm_eps`` defaults to RWKV-4's LayerNorm epsilon, 1e-5.
    """

    architecture: ClassVar[str] = "rwkv"

    norm_eps: float = doc_field(1e-5, "epsilon of every norm (RWKV: its LayerNorms; 1e-5 as RWKV-4)")
    rwkv_gate: bool = doc_field(
        False, "RWKV: time mixing output gated by silu(G(x)) with G a ternary d x d projection (as RWKV-5 added)")


@dataclass
class TransformerConfig(_BaseConfig):
    """Transformer++ baseline (Llama-style): RMSNorm, RoPE, SwiGLU, causal attention, full precision."""

    architecture: ClassVar[str] = "transformer"

    n_heads: int = doc_field(
        4, "attention heads; d_model / n_heads must be a whole, even number (recipes and presets: d_model / 64)")
    rope_theta: float = doc_field(10000.0, "RoPE base period θ")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.n_heads <= 0 or self.d_model % self.n_heads:
            raise ConfigError(
                f"TransformerConfig: d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})"
            )
        if (self.d_model // self.n_heads) % 2:
            raise ConfigError("TransformerConfig: head dimension d_model / n_heads must be even for RoPE")


CONFIG_CLASSES: dict[str, type[_BaseConfig]] = {
    MatMulFreeConfig.architecture: MatMulFreeConfig,
    RWKVConfig.architecture: RWKVConfig,
    TransformerConfig.architecture: TransformerConfig,
}

#: Shapes shared by both architectures. Paper sizes use a 32k vocabulary.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(vocab_size=256, d_model=128, n_layers=4, intermediate_size=384),
    "small": dict(vocab_size=256, d_model=256, n_layers=6, intermediate_size=768),
    "fpga": dict(vocab_size=256, d_model=128, n_layers=4, intermediate_size=256, max_seq_len=256),
    "370m": dict(vocab_size=32000, d_model=1024, n_layers=24),
    "1.3b": dict(vocab_size=32000, d_model=2048, n_layers=24),
    "2.7b": dict(vocab_size=32000, d_model=2560, n_layers=32),
}


def config_from_dict(data: dict[str, Any], source: str = "config") -> _BaseConfig:
    """Dispatch on ``data["architecture"]``; unknown architectures raise :class:`ConfigError`."""
    arch = data.get("architecture")
    if arch not in CONFIG_CLASSES:
        raise ConfigError(f"{source}: unknown architecture {arch!r}; expected one of {sorted(CONFIG_CLASSES)}")
    return CONFIG_CLASSES[arch].from_dict(data, source)


def preset(name: str, architecture: str = "matmulfree", **overrides: Any) -> _BaseConfig:
    """Config for a named preset (``tiny``, ``small``, ``fpga``, ``370m``, ``1.3b``, ``2.7b``)."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; expected one of {sorted(PRESETS)}")
    fields = {**PRESETS[name], **overrides}
    if architecture == "transformer" and "n_heads" not in fields:
        fields["n_heads"] = max(1, fields["d_model"] // 64)
    return config_from_dict({"architecture": architecture, **fields}, f"preset {name!r}")
