"""``transformers`` model classes around our models, one per registered architecture.

Each class wraps the :class:`~matmulfree.models.base.LanguageModel` that
:func:`matmulfree.models.build_model` makes for the config (``self.model``), so the computation is
exactly ours: the prompt runs through the parallel ``forward``, every generated token is one
recurrent ``step``, as in ``matmulfree generate``. The cache handed to ``generate`` is a
:class:`StateCache` holding the model's own state: for the MatMul-free model a fixed-size hidden
state per layer (the cost per generated token stays constant), for the Transformer++ its KV cache.

Padded batches (``attention_mask`` with zeros, e.g. left padding from a tokenizer) run each row's
real tokens on their own (rows of one length together) and join the row states into one batch
state when the architecture allows it (recurrent states always; KV caches of equal length);
otherwise the rows keep separate states and decode one by one. Either way a row's tokens equal
what it generates alone.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.cache_utils import Cache
from transformers.modeling_outputs import CausalLMOutputWithPast

from ..models import build_model
from ..models.base import IGNORE_INDEX, LanguageModel, next_token_loss
from ..models.state import can_concat, concat_states, run_prompts, select_state, state_nbytes
from .configuration import MatmulfreeHFConfig, ensure_config_classes

#: The keyword under which this ``transformers`` passes the cache around (``cache`` since 5.x,
#: ``past_key_values`` before).
CACHE_KEY = "cache" if "cache" in {f.name for f in dataclasses.fields(CausalLMOutputWithPast)} else "past_key_values"


class StateCache(Cache):
    """A model's generation state as a ``transformers`` cache.

    ``state`` is one batch state (``None`` before the first token) or, for a padded batch whose
    rows cannot share one, ``row_states`` holds one state per row. ``seen_tokens`` counts the
    input positions consumed (padding included), which is what ``generate`` slices by.
    """

    is_compileable = False

    def __init__(self) -> None:
        super().__init__(layers=[])
        self.state: Any = None
        self.row_states: list[Any] | None = None
        self.seen_tokens = 0

    def __repr__(self) -> str:
        kind = "empty" if self.is_empty else ("per-row" if self.row_states is not None else "batched")
        return f"StateCache({kind}, seen_tokens={self.seen_tokens}, nbytes={self.nbytes()})"

    @property
    def is_empty(self) -> bool:
        return self.state is None and self.row_states is None

    def nbytes(self) -> int:
        """Bytes of every tensor the cache holds (constant during generation for recurrent models)."""
        if self.row_states is not None:
            return sum(state_nbytes(s) for s in self.row_states)
        return state_nbytes(self.state)

    # -- the parts of the Cache interface that generate may call ------------------------------
    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.seen_tokens

    def get_max_length(self, layer_idx: int | None = None) -> int:
        return -1

    @property
    def is_croppable(self) -> bool:
        return False

    def reset(self) -> None:
        self.state, self.row_states, self.seen_tokens = None, None, 0

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """Keep rows ``beam_idx`` (beam search)."""
        if self.row_states is not None:
            self.row_states = [self.row_states[int(i)] for i in beam_idx]
        elif self.state is not None:
            self.state = select_state(self.state, beam_idx)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self.reorder_cache(indices)

    def batch_repeat_interleave(self, repeats: int) -> None:
        index = torch.arange(self.batch_rows()).repeat_interleave(repeats)
        self.reorder_cache(index)

    def batch_rows(self) -> int:
        from ..models.state import state_batch_size

        if self.row_states is not None:
            return len(self.row_states)
        return state_batch_size(self.state) or 0

    def crop(self, tokens_to_remove: int) -> None:
        raise NotImplementedError("a recurrent state cannot be rolled back; assisted decoding is not supported")


class MatmulfreeForCausalLM(PreTrainedModel, GenerationMixin):
    """Base of the generated causal-LM classes: ``forward`` returns ``transformers`` outputs with
    logits ``(B, T, V)`` and a :class:`StateCache`; ``self.model`` is our model."""

    config_class = MatmulfreeHFConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    _is_stateful = True
    _supports_cache_class = True

    def __init__(self, config: MatmulfreeHFConfig) -> None:
        super().__init__(config)
        self.model: LanguageModel = build_model(config.to_matmulfree())
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        """No-op: our model initialises itself when built; loaded weights replace the rest."""

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # the cache is our StateCache, made by forward

    def get_input_embeddings(self) -> nn.Module:
        return self.model.embed

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.model.embed = value

    def get_output_embeddings(self) -> nn.Module | None:
        head = getattr(self.model, "lm_head", None)
        return head if isinstance(head, nn.Linear) else None  # a ternary head is not an embedding matrix

    # -- forward -----------------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast:
        """``input_ids (B, T)`` (new tokens only when a non-empty cache is passed) -> logits ``(B, T, V)``.

        ``attention_mask (B, T_total)``: zeros mark padding (any position before a row's first
        generated token); padded positions get zero logits and are ignored by ``labels``.
        The cache comes in and goes out under the keyword :data:`CACHE_KEY`.
        """
        if input_ids is None:
            raise ValueError("input_ids are required (inputs_embeds are not supported)")
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if cache is None:
            cache = StateCache()
        elif not isinstance(cache, StateCache):
            raise TypeError(f"{type(self).__name__} needs a StateCache (or none), got {type(cache).__name__}")
        T = input_ids.shape[1]
        mask = None
        if attention_mask is not None:
            mask = attention_mask[:, -T:].bool() if attention_mask.dim() == 2 else None
        if cache.is_empty:
            logits = self._run_prompt(input_ids, mask, cache)
        else:
            if mask is not None and not bool(mask.all()):
                raise ValueError("padding after the first step is not supported (attention_mask has zeros "
                                 "at positions after the cached ones)")
            logits = self._run_next(input_ids, cache)
        cache.seen_tokens += T
        loss = None
        if labels is not None:
            if mask is not None:
                labels = labels.masked_fill(~mask, IGNORE_INDEX)
            loss, _ = next_token_loss(logits, labels)
        return CausalLMOutputWithPast(loss=loss, logits=logits, **{CACHE_KEY: cache if use_cache else None})

    def _run_prompt(self, input_ids: torch.Tensor, mask: torch.Tensor | None, cache: StateCache) -> torch.Tensor:
        if mask is None or bool(mask.all()):
            out = self.model(input_ids)
            cache.state = out.state
            return out.logits
        rows = [input_ids[b][mask[b]].tolist() for b in range(input_ids.shape[0])]
        row_logits, row_states = run_prompts(self.model, rows, input_ids.device)
        logits = row_logits[0].new_zeros(*input_ids.shape, row_logits[0].shape[-1])
        for b, lg in enumerate(row_logits):
            logits[b, mask[b]] = lg
        if can_concat(row_states):
            cache.state = concat_states(row_states)
        else:
            cache.row_states = row_states
        return logits

    def _run_next(self, input_ids: torch.Tensor, cache: StateCache) -> torch.Tensor:
        def advance(ids: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
            if ids.shape[1] == 1:  # one recurrent step, as matmulfree generate does
                logits, state = self.model.step(ids[:, 0], state)
                return logits[:, None], state
            out = self.model(ids, state=state)
            return out.logits, out.state

        if cache.row_states is None:
            logits, cache.state = advance(input_ids, cache.state)
            return logits
        parts = []
        for b, state in enumerate(cache.row_states):
            lg, cache.row_states[b] = advance(input_ids[b : b + 1], state)
            parts.append(lg)
        return torch.cat(parts, dim=0)

    # -- generate hooks ------------------------------------------------------------------------
    def prepare_inputs_for_generation(self, input_ids: torch.LongTensor, attention_mask=None, **kwargs: Any):
        """Only the tokens the cache has not seen go to ``forward`` (all of them on the first call)."""
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        if isinstance(cache, StateCache) and not cache.is_empty:
            input_ids = input_ids[:, cache.seen_tokens :]
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask,
                  "use_cache": kwargs.get("use_cache", True)}
        if cache is not None:
            inputs[CACHE_KEY] = cache
        return inputs


def _model_class(architecture: str, config_cls: type[MatmulfreeHFConfig]) -> type[MatmulfreeForCausalLM]:
    from ..models import model_class

    name = "HF" + model_class(architecture).__name__  # HFMatMulFreeLM, HFTransformerLM, ...
    cls = type(name, (MatmulfreeForCausalLM,), {
        "config_class": config_cls,
        "__module__": __name__,
        "__doc__": f"``transformers`` causal LM of the ``{architecture}`` architecture (wraps our model).",
    })
    globals()[name] = cls
    return cls


#: architecture -> generated ``transformers`` causal-LM class.
MODEL_CLASSES_HF: dict[str, type[MatmulfreeForCausalLM]] = {}


def ensure_model_classes() -> dict[str, type[MatmulfreeForCausalLM]]:
    """A causal-LM class for every registered architecture that has none yet."""
    from ..models import MODEL_CLASSES

    configs = ensure_config_classes()
    for arch in MODEL_CLASSES:
        if arch not in MODEL_CLASSES_HF and arch in configs:
            MODEL_CLASSES_HF[arch] = _model_class(arch, configs[arch])
    return MODEL_CLASSES_HF


def from_matmulfree(model: LanguageModel) -> MatmulfreeForCausalLM:
    """Our model (latent weights) wrapped in its ``transformers`` class, sharing its parameters."""
    if model.is_packed:
        raise ValueError("the model holds packed 2-bit weights only; the transformers classes need the latent "
                         "weights (load the checkpoint's model.safetensors, not the packed file)")
    hf_cls = ensure_model_classes()[model.config.architecture]
    config = MatmulfreeHFConfig.from_matmulfree(model.config)
    hf_model = hf_cls(config)
    hf_model.model = model
    return hf_model
