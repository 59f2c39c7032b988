"""Batch operations on a model's generation state, whatever its architecture.

A state is what :meth:`LanguageModel.forward` returns as ``ModelOutput.state`` and what
:meth:`LanguageModel.step` takes: a list of fp32 ``h (B, d)`` per layer for the MatMul-free model,
a :class:`~matmulfree.models.transformer.KVCache` of ``(B, H, T, hd)`` tensors for the
Transformer++. The functions here walk any such structure (``None``, tensors, lists, tuples,
dicts and plain objects holding them) and act on dimension 0 of every tensor of rank >= 1, so the
Hugging Face wrapper and the lm-eval adapter reuse a state without knowing the architecture.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import torch

State = Any


def map_state(fn: Callable[[torch.Tensor], torch.Tensor], state: State) -> State:
    """A new state with ``fn`` applied to every batched tensor (rank >= 1); containers are rebuilt,
    so mutating the result (e.g. a KV cache appending) leaves ``state`` untouched."""
    if state is None:
        return None
    if isinstance(state, torch.Tensor):
        return fn(state) if state.dim() >= 1 else state
    if isinstance(state, (list, tuple)):
        items = [map_state(fn, s) for s in state]
        return type(state)(items) if isinstance(state, list) else tuple(items)
    if isinstance(state, dict):
        return {k: map_state(fn, v) for k, v in state.items()}
    if hasattr(state, "__dict__"):
        new = copy.copy(state)
        for name, value in vars(state).items():
            setattr(new, name, map_state(fn, value))
        return new
    return state


def _tensors(state: State) -> list[torch.Tensor]:
    out: list[torch.Tensor] = []
    map_state(lambda t: out.append(t) or t, state)
    return out


def state_batch_size(state: State) -> int | None:
    """Rows of the state (dimension 0 of its first batched tensor); ``None`` for an empty state."""
    tensors = _tensors(state)
    return tensors[0].shape[0] if tensors else None


def state_nbytes(state: State) -> int:
    """Bytes held by every tensor of the state (what a cache costs in memory)."""
    return sum(t.numel() * t.element_size() for t in _tensors(state))


def copy_state(state: State) -> State:
    """An independent copy (tensors shared: models never write into a state's tensors in place)."""
    return map_state(lambda t: t, state)


def repeat_state(state: State, n: int) -> State:
    """Each row repeated ``n`` times in place order: ``(B, ...) -> (B * n, ...)``."""
    return map_state(lambda t: t.repeat_interleave(n, dim=0), state)


def select_state(state: State, index: torch.Tensor | Sequence[int]) -> State:
    """Rows ``index`` of the state (reorders, drops or repeats rows)."""
    def pick(t: torch.Tensor) -> torch.Tensor:
        return t.index_select(0, torch.as_tensor(index, dtype=torch.long, device=t.device))

    return map_state(pick, state)


def _structure(state: State) -> Any:
    if isinstance(state, torch.Tensor):
        return ("tensor", tuple(state.shape[1:]), state.dtype, state.device) if state.dim() >= 1 else state.item()
    if isinstance(state, (list, tuple)):
        return (type(state).__name__, [_structure(s) for s in state])
    if isinstance(state, dict):
        return ("dict", sorted((k, _structure(v)) for k, v in state.items()))
    if hasattr(state, "__dict__"):
        return (type(state).__qualname__, [(k, _structure(v)) for k, v in sorted(vars(state).items())])
    return state


def state_signature(state: State) -> str:
    """The state's structure with every batched tensor replaced by its per-row shape, dtype and
    device: states with equal signatures can be joined into one batch."""
    return repr(_structure(state))


def can_concat(states: Sequence[State]) -> bool:
    """Whether :func:`concat_states` can join these states (same structure and per-row shapes:
    recurrent states always, KV caches only when they hold the same number of tokens)."""
    if not states or any(s is None for s in states):
        return False
    first = state_signature(states[0])
    return all(state_signature(s) == first for s in states[1:])


def concat_states(states: Sequence[State]) -> State:
    """Join states along the batch: rows of ``states[0]``, then ``states[1]``, ...

    Raises ``ValueError`` when the states differ in structure or per-row shape (check with
    :func:`can_concat` first).
    """
    if not can_concat(states):
        raise ValueError("these states cannot be joined into one batch (different structure or per-row shapes)")
    parts = [_tensors(s) for s in states]
    joined = iter([torch.cat(column, dim=0) for column in zip(*parts)])
    return map_state(lambda _t: next(joined), states[0])


def run_prompts(
    model: torch.nn.Module,
    prompts: Sequence[Sequence[int]],
    device: torch.device | str,
    batch_size: int | None = None,
    last_only: bool = False,
) -> tuple[list[torch.Tensor], list[State]]:
    """Run each token list from a fresh state through the parallel path, prompts of equal length
    together (at most ``batch_size`` per call).

    Returns per prompt its logits ``(n_i, V)`` (``(V,)`` of the last token with ``last_only``) and
    the state after its last token (batch of one).
    """
    logits: list[Any] = [None] * len(prompts)
    states: list[State] = [None] * len(prompts)
    by_length: dict[int, list[int]] = {}
    for i, tokens in enumerate(prompts):
        if len(tokens) == 0:
            raise ValueError(f"prompt {i} has no tokens")
        by_length.setdefault(len(tokens), []).append(i)
    for members in by_length.values():
        step = batch_size or len(members)
        for start in range(0, len(members), step):
            chunk = members[start : start + step]
            ids = torch.tensor([list(prompts[i]) for i in chunk], dtype=torch.long, device=device)
            out = model(ids)
            for j, i in enumerate(chunk):
                logits[i] = out.logits[j, -1] if last_only else out.logits[j]
                states[i] = select_state(out.state, [j])
    return logits, states
