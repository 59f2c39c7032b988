"""matmulfree: ternary, MatMul-free language models.

Quick start::

    import matmulfree
    model = matmulfree.build_model(matmulfree.preset("tiny"))
    model.save_pretrained("out/m"); same = matmulfree.load("out/m")
"""

from .checkpoint import CheckpointError, build_model, load_config, load_model
from .config import ConfigError, MatMulFreeConfig, TransformerConfig, config_from_dict, preset
from .models import LanguageModel, MatMulFreeLM, ModelOutput, TransformerLM

__version__ = "0.1.0"

#: Open a saved model directory of either architecture.
load = load_model

__all__ = [
    "CheckpointError",
    "ConfigError",
    "LanguageModel",
    "MatMulFreeConfig",
    "MatMulFreeLM",
    "ModelOutput",
    "TransformerConfig",
    "TransformerLM",
    "build_model",
    "config_from_dict",
    "load",
    "load_config",
    "load_model",
    "preset",
]
