"""Which model class serves which ``config.architecture``: each model module registers its class here.

Checkpoint I/O, the CLI and the Hugging Face wrappers build models through :func:`build_model`, so
they never import a model module by name, and a new architecture is one module that calls
:func:`register_model` (and one config class in :mod:`matmulfree.config`).
"""

from __future__ import annotations

from typing import TypeVar

from ..config import ConfigError, _BaseConfig
from .base import LanguageModel

#: ``architecture`` -> model class.
MODEL_CLASSES: dict[str, type[LanguageModel]] = {}

M = TypeVar("M", bound=type[LanguageModel])


def register_model(cls: M) -> M:
    """Class decorator: serve ``cls.config_class.architecture`` with ``cls``."""
    arch = cls.config_class.architecture
    if arch in MODEL_CLASSES and MODEL_CLASSES[arch] is not cls:
        raise ValueError(f"architecture {arch!r} is already served by {MODEL_CLASSES[arch].__name__}")
    MODEL_CLASSES[arch] = cls
    return cls


def model_class(architecture: str) -> type[LanguageModel]:
    """The registered class for ``architecture``; :class:`ConfigError` names the known ones otherwise."""
    try:
        return MODEL_CLASSES[architecture]
    except KeyError:
        raise ConfigError(f"no model is registered for architecture {architecture!r}; "
                          f"known: {sorted(MODEL_CLASSES)}") from None


def build_model(config: _BaseConfig) -> LanguageModel:
    """A freshly initialised model for ``config`` (its ``architecture`` picks the class)."""
    return model_class(config.architecture)(config)
