"""``transformers`` config classes, one per registered architecture, made from our config classes.

Each class carries every field of the matching :mod:`matmulfree.config` dataclass as an attribute of
the same name (validated by that dataclass), plus the usual ``transformers`` aliases
(``hidden_size``, ``num_hidden_layers``, ``max_position_embeddings``), under the ``model_type``
that :func:`hf_model_type` gives the architecture.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from transformers import PretrainedConfig

from ..config import CONFIG_CLASSES, ConfigError, _BaseConfig

#: ``transformers`` names -> our field names (the same facts under the ecosystem's spelling).
ATTRIBUTE_MAP = {"hidden_size": "d_model", "num_hidden_layers": "n_layers", "max_position_embeddings": "max_seq_len"}


def hf_model_type(architecture: str) -> str:
    """The ``model_type`` of an architecture in ``config.json``: ``matmulfree`` for the MatMul-free
    model, ``matmulfree_<architecture>`` for every other one (``matmulfree_transformer``, ...)."""
    return architecture if architecture == "matmulfree" else f"matmulfree_{architecture}"


class MatmulfreeHFConfig(PretrainedConfig):
    """Base of the generated config classes: ``our_config_class`` names the dataclass they mirror."""

    our_config_class: ClassVar[type[_BaseConfig]] = _BaseConfig
    attribute_map = ATTRIBUTE_MAP

    def __init__(self, **kwargs: Any) -> None:
        names = [f.name for f in dataclasses.fields(self.our_config_class)]
        ours = {name: kwargs.pop(name) for name in names if name in kwargs}
        try:
            config = self.our_config_class.from_dict(ours, source=f"{self.model_type} config")
        except ConfigError as e:
            raise ValueError(str(e)) from None
        for name in names:
            setattr(self, name, getattr(config, name))
        kwargs["tie_word_embeddings"] = False  # both models keep an untied LM head
        self.use_cache = bool(kwargs.pop("use_cache", True))
        super().__init__(**kwargs)

    def to_matmulfree(self) -> _BaseConfig:
        """Our config (:mod:`matmulfree.config`) with this config's field values."""
        names = [f.name for f in dataclasses.fields(self.our_config_class)]
        return self.our_config_class.from_dict({n: getattr(self, n) for n in names}, source=f"{self.model_type} config")

    @classmethod
    def from_matmulfree(cls, config: _BaseConfig, **kwargs: Any) -> MatmulfreeHFConfig:
        """The ``transformers`` config for one of ours (``kwargs``: extra ``transformers`` fields)."""
        hf_cls = CONFIG_CLASSES_HF[config.architecture]
        fields = {k: v for k, v in config.to_dict().items() if k != "architecture"}
        return hf_cls(**fields, **kwargs)


def _config_class(architecture: str, our_cls: type[_BaseConfig]) -> type[MatmulfreeHFConfig]:
    name = "HF" + our_cls.__name__  # HFMatMulFreeConfig, HFTransformerConfig, ...
    def __init__(self, **kwargs: Any) -> None:  # own __init__: transformers would replace an inherited one
        MatmulfreeHFConfig.__init__(self, **kwargs)

    cls = type(name, (MatmulfreeHFConfig,), {
        "__init__": __init__,
        "model_type": hf_model_type(architecture),
        "our_config_class": our_cls,
        "__module__": __name__,
        "__doc__": f"``transformers`` config of the ``{architecture}`` architecture "
                   f"(fields of :class:`matmulfree.config.{our_cls.__name__}`).",
    })
    globals()[name] = cls
    return cls


#: architecture -> generated ``transformers`` config class.
CONFIG_CLASSES_HF: dict[str, type[MatmulfreeHFConfig]] = {}


def ensure_config_classes() -> dict[str, type[MatmulfreeHFConfig]]:
    """Make a config class for every architecture of ``matmulfree.config.CONFIG_CLASSES`` that has
    none yet (architectures added later are picked up by calling this again)."""
    for arch, our_cls in CONFIG_CLASSES.items():
        if arch not in CONFIG_CLASSES_HF:
            CONFIG_CLASSES_HF[arch] = _config_class(arch, our_cls)
    return CONFIG_CLASSES_HF
