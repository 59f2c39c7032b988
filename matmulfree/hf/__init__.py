"""Hugging Face ``transformers`` integration (the ``[hf]`` extra).

Importing this package registers every architecture of :mod:`matmulfree.models.registry` with
``AutoConfig`` and ``AutoModelForCausalLM`` under its own ``model_type`` (``matmulfree``,
``matmulfree_transformer``, ...), so ``AutoModelForCausalLM.from_pretrained(DIR)`` opens an
exported folder without ``trust_remote_code``::

    import matmulfree.hf
    from transformers import AutoModelForCausalLM, AutoTokenizer
    model = AutoModelForCausalLM.from_pretrained("out/hf")
    tok = AutoTokenizer.from_pretrained("out/hf")

Modules: :mod:`.configuration` (config classes), :mod:`.modeling` (model classes and the
:class:`~.modeling.StateCache`), :mod:`.tokenizer` (our tokenizers as ``transformers`` ones),
:mod:`.folder` (``matmulfree export hf`` / ``matmulfree import hf``).
"""

from __future__ import annotations

try:
    import transformers  # noqa: F401
except ImportError as e:  # pragma: no cover - depends on the installation
    raise ImportError("matmulfree.hf needs transformers: pip install 'matmulfree[hf]'") from e

from .configuration import CONFIG_CLASSES_HF, MatmulfreeHFConfig, hf_model_type
from .modeling import MODEL_CLASSES_HF, MatmulfreeForCausalLM, StateCache, from_matmulfree


def register() -> dict[str, type[MatmulfreeForCausalLM]]:
    """Register every architecture (again after a new one was added); returns architecture -> class."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from .modeling import ensure_model_classes

    classes = ensure_model_classes()
    for arch, model_cls in classes.items():
        config_cls = CONFIG_CLASSES_HF[arch]
        AutoConfig.register(config_cls.model_type, config_cls, exist_ok=True)
        AutoModelForCausalLM.register(config_cls, model_cls, exist_ok=True)
    return classes


register()

__all__ = ["CONFIG_CLASSES_HF", "MODEL_CLASSES_HF", "MatmulfreeForCausalLM", "MatmulfreeHFConfig", "StateCache",
           "from_matmulfree", "hf_model_type", "register"]
