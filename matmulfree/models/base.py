"""The interface every language model shares: outputs, loss, generation, packing and summaries.

Models know nothing about files: :mod:`matmulfree.checkpoint` saves and loads them, building the
class that :mod:`.registry` serves for the config's ``architecture``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..config import _BaseConfig
from ..layers import BitLinear
from ..quant import packed_row_bytes

IGNORE_INDEX = -100


@dataclass
class ModelOutput:
    """``logits (B, T, V)``; ``loss`` (scalar) when labels were given; ``state`` for continuing."""

    logits: torch.Tensor
    loss: torch.Tensor | None = None
    state: Any = None
    n_tokens: int | None = None


def next_token_loss(logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> tuple[torch.Tensor, int]:
    """Cross-entropy of ``logits[:, t]`` against ``labels[:, t+1]`` (``-100`` ignored).

    Returns ``(loss, n_tokens)``; ``reduction`` is ``"mean"`` or ``"sum"`` (for gradient
    accumulation normalised by the tokens of the whole accumulated batch).
    """
    shift_logits = logits[:, :-1].reshape(-1, logits.shape[-1]).float()
    shift_labels = labels[:, 1:].reshape(-1)
    n_tokens = int((shift_labels != IGNORE_INDEX).sum())
    loss = F.cross_entropy(shift_logits, shift_labels, ignore_index=IGNORE_INDEX, reduction="sum")
    if reduction == "mean":
        loss = loss / max(n_tokens, 1)
    elif reduction != "sum":
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    return loss, n_tokens


def sample_next(
    logits: torch.Tensor,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """Pick the next token ``(B,)`` from logits ``(B, V)``; greedy when ``temperature == 0``."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and 0 < top_p < 1:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) > top_p  # keep the smallest prefix reaching top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


class LanguageModel(nn.Module):
    """Base class: subclasses implement ``forward(input_ids, labels=None, state=None)`` and
    ``step(token_ids (B,), state) -> (logits (B, V), state)``."""

    config_class: type[_BaseConfig]
    #: Config fields whose change a warm start can absorb: field -> the tensor that
    #: :meth:`preserve_function` must have handled for the change to leave the function unchanged.
    warm_start_fields: dict[str, str] = {}

    def __init__(self, config: _BaseConfig) -> None:
        super().__init__()
        self.config = config

    # -- subclass API ------------------------------------------------------------------
    def forward(self, input_ids, labels=None, state=None, loss_reduction: str = "mean") -> ModelOutput:
        """Parallel path: ``input_ids (B, T)`` -> :class:`ModelOutput` with logits ``(B, T, V)``, the
        next-token loss when ``labels (B, T)`` are given, and the state after the last token
        (``state`` continues an earlier call)."""
        raise NotImplementedError

    def step(self, token_ids: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        """Recurrent path: one token per sequence ``(B,)`` -> ``(logits (B, V), next state)``."""
        raise NotImplementedError

    def _finish(self, logits: torch.Tensor, labels: torch.Tensor | None, state: Any, reduction: str) -> ModelOutput:
        if labels is None:
            return ModelOutput(logits=logits, state=state)
        loss, n = next_token_loss(logits, labels, reduction)
        return ModelOutput(logits=logits, loss=loss, state=state, n_tokens=n)

    # -- generation --------------------------------------------------------------------
    @torch.no_grad()
    def stream(
        self,
        input_ids: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
    ) -> Iterator[torch.Tensor]:
        """Yield each new token ``(B,)``: the prompt is prefilled with the parallel path, then
        every token is one recurrent :meth:`step` (O(1) per token for MatMul-free, KV cache for
        the Transformer)."""
        if input_ids.dim() == 1:
            input_ids = input_ids.unsqueeze(0)
        if input_ids.shape[1] == 0:
            raise ValueError("generate needs a prompt of at least one token")
        generator = None
        if seed is not None:
            generator = torch.Generator(device=input_ids.device).manual_seed(seed)
        out = self(input_ids)
        logits, state = out.logits[:, -1], out.state
        for i in range(max_new_tokens):
            token = sample_next(logits, temperature, top_k, top_p, generator)
            yield token
            if i + 1 < max_new_tokens:
                logits, state = self.step(token, state)

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        callback: Callable[[torch.Tensor], None] | None = None,
    ) -> torch.Tensor:
        """Prompt ``(B, T)`` -> prompt plus ``max_new_tokens`` tokens ``(B, T + N)``.

        ``temperature=0`` is greedy. ``callback(token (B,))`` is called for each new token
        (streaming); :meth:`stream` is the iterator form.
        """
        squeeze = input_ids.dim() == 1
        ids = input_ids.unsqueeze(0) if squeeze else input_ids
        new = []
        for token in self.stream(ids, max_new_tokens, temperature, top_k, top_p, seed):
            if callback is not None:
                callback(token)
            new.append(token)
        result = torch.cat([ids, torch.stack(new, dim=1)], dim=1) if new else ids
        return result[0] if squeeze else result

    # -- bookkeeping -------------------------------------------------------------------
    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        """Number of stored parameters (packed ternary weights count as their weight count)."""
        total = sum(p.numel() for p in self.parameters())
        for m in self.modules():
            if isinstance(m, BitLinear) and m.packed:
                total += m.in_features * m.out_features
        if exclude_embeddings:
            total -= self.embed.weight.numel()
        return total

    def weight_summary(self) -> dict[str, int]:
        """Counts of ternary and full-precision weights and the packed model size in bytes
        (2 bits per ternary weight, rows padded to bytes, 4 bytes per scale, fp32 for the rest)."""
        ternary = packed = n_bitlinear = 0
        ternary_ids = set()
        for m in self.modules():
            if isinstance(m, BitLinear):
                n_bitlinear += 1
                ternary += m.in_features * m.out_features
                packed += m.out_features * packed_row_bytes(m.in_features) + 4
                if m.weight is not None:
                    ternary_ids.add(id(m.weight))
        full = sum(p.numel() for p in self.parameters() if id(p) not in ternary_ids)
        return {
            "parameters": ternary + full,
            "ternary_weights": ternary,
            "full_precision_weights": full,
            "bitlinear_layers": n_bitlinear,
            "packed_bytes": packed + 4 * full,
            "fp32_bytes": 4 * (ternary + full),
            "bf16_bytes": 2 * (ternary + full),
        }

    def summary(self) -> str:
        """Human-readable model summary (architecture, shape, parameter and storage counts)."""
        s = self.weight_summary()
        c = self.config
        lines = [
            f"architecture      {c.architecture}",
            f"layers x width    {c.n_layers} x {c.d_model} (GLU hidden {c.intermediate_size}), vocab {c.vocab_size}",
            f"parameters        {s['parameters']:,} ({s['parameters'] / 1e6:.2f} M)",
            f"ternary weights   {s['ternary_weights']:,} in {s['bitlinear_layers']} BitLinear layers",
            f"full precision    {s['full_precision_weights']:,}",
            f"size packed       {_human_bytes(s['packed_bytes'])}  (2-bit ternary + fp32 rest)",
            f"size bf16 / fp32  {_human_bytes(s['bf16_bytes'])} / {_human_bytes(s['fp32_bytes'])}",
        ]
        return "\n".join(lines)

    def pack(self) -> LanguageModel:
        """Convert every BitLinear to packed 2-bit inference storage (in place); returns self."""
        for m in self.modules():
            if isinstance(m, BitLinear):
                m.pack()
        return self

    @property
    def is_packed(self) -> bool:
        return any(isinstance(m, BitLinear) and m.packed for m in self.modules())

    def preserve_function(self, new: set[str]) -> dict[str, str]:
        """Warm start (:mod:`matmulfree.warm_start`): re-initialise the newly added tensors ``new``
        (state-dict names) so that they change nothing at step 0 where the architecture allows it.

        Returns ``{name: note}`` for each tensor so handled; tensors left out keep their fresh
        initialisation and count as changing the function. The base class handles none.
        """
        return {}

    def _zero_new_blocks(self, new: set[str], outputs: tuple[str, ...]) -> dict[str, str]:
        """Residual blocks ``layers.i`` whose tensors are all new: zero their branch ``outputs`` (the
        last projection of each residual branch), so every added block is the identity at step 0."""
        notes: dict[str, str] = {}
        for i, block in enumerate(self.layers):
            names = {f"layers.{i}.{n}" for n in block.state_dict()}
            if not names <= new:
                continue
            with torch.no_grad():
                for out in outputs:
                    block.get_parameter(out).zero_()
            for name in names:
                short = name.split(".", 2)[2]
                notes[name] = "zeroed: added block is the identity" if short in outputs else "in an added block"
        return notes

    def optimizer_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        """AdamW parameter groups: decay on matrices (2-D and larger) only."""
        decay = [p for p in self.parameters() if p.requires_grad and p.dim() >= 2]
        no_decay = [p for p in self.parameters() if p.requires_grad and p.dim() < 2]
        return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} GiB"


def init_weights(module: nn.Module, std: float) -> None:
    """Normal(0, std) for embeddings and linear weights, zeros for biases."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=std)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)


def cross_entropy_bits(loss_nats: float) -> float:
    """nats -> bits."""
    return loss_nats / math.log(2)
