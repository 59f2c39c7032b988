"""Language models sharing one interface (see :class:`LanguageModel`)."""

from .base import LanguageModel, ModelOutput, next_token_loss
from .matmulfree import MatMulFreeLM
from .transformer import KVCache, TransformerLM

__all__ = ["LanguageModel", "ModelOutput", "next_token_loss", "MatMulFreeLM", "TransformerLM", "KVCache"]
