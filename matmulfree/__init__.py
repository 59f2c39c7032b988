"""matmulfree: ternary, MatMul-free language models.

Quick start::

    import matmulfree
    model = matmulfree.build_model(matmulfree.preset("tiny"))
    matmulfree.save(model, "out/m"); same = matmulfree.load("out/m")
"""

from .checkpoint import CheckpointError, load_config, load_model, save_model
from .config import ConfigError, MatMulFreeConfig, RWKVConfig, TransformerConfig, config_from_dict, preset
from .models import RWKVLM, LanguageModel, MatMulFreeLM, ModelOutput, TransformerLM, build_model

__version__ = "0.1.0"

#: Open a saved model directory of any architecture.
load = load_model
#: Write a model directory (``config.json`` + ``model.safetensors``, atomically).
save = save_model

__all__ = [
    "CheckpointError",
    "ConfigError",
    "LanguageModel",
    "MatMulFreeConfig",
    "MatMulFreeLM",
    "ModelOutput",
    "RWKVConfig",
    "RWKVLM",
    "TransformerConfig",
    "TransformerLM",
    "build_model",
    "config_from_dict",
    "load",
    "load_config",
    "load_model",
    "preset",
    "save",
    "save_model",
]
