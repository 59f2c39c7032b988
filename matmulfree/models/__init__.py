"""Language models sharing one interface (see :class:`LanguageModel`); importing this package
registers every shipped architecture with :mod:`.registry`."""

from .base import LanguageModel, ModelOutput, next_token_loss
from .matmulfree import MatMulFreeLM
from .registry import MODEL_CLASSES, build_model, model_class, register_model
from .rwkv import RWKVLM, RWKVLayerState
from .transformer import KVCache, TransformerLM

__all__ = [
    "MODEL_CLASSES",
    "KVCache",
    "LanguageModel",
    "MatMulFreeLM",
    "ModelOutput",
    "RWKVLM",
    "RWKVLayerState",
    "TransformerLM",
    "build_model",
    "model_class",
    "next_token_loss",
    "register_model",
]
