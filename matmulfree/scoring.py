"""Scoring and greedy continuation over token ids, reusing the state of a shared context.

The evaluation harness adapter (:mod:`matmulfree.lm_eval`) asks three things of a model:

* :func:`score_continuations` — ``log p(continuation | context)`` summed over the continuation's
  tokens and whether greedy decoding would produce it. Requests sharing a context run that
  context once: its state is repeated for every continuation (and joined with the states of
  other contexts into one batch where the architecture allows: always for recurrent states, for
  KV caches of contexts of equal length).
* :func:`greedy_continue` — batched generation until a stop condition, rows dropping out as they
  finish.

Everything runs in ``torch.no_grad`` on the model's own ``forward`` / ``step``; no architecture is
named here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from .models.base import LanguageModel, sample_next
from .models.state import concat_states, run_prompts, select_state, state_signature

Pair = tuple[Sequence[int], Sequence[int]]


def truncate_pair(context: Sequence[int], continuation: Sequence[int], max_length: int) -> tuple[list[int], list[int]]:
    """Drop context tokens from the left so that the model sees at most ``max_length`` tokens
    (context plus all but the last continuation token); the context keeps at least one."""
    if not continuation:
        raise ValueError("a continuation must have at least one token")
    if not context:
        raise ValueError("a context must have at least one token (condition on an end-of-text token)")
    if len(continuation) > max_length:
        raise ValueError(f"continuation of {len(continuation)} tokens exceeds max_length {max_length}")
    keep = max_length - len(continuation) + 1
    return list(context)[-keep:], list(continuation)


def _score_rows(
    model: LanguageModel, rows: list[tuple[int, list[int]]], first_logits: list[torch.Tensor], states: list[Any],
    device: torch.device | str,
) -> list[tuple[float, bool]]:
    """Score continuations ``rows = [(context index, tokens)]`` whose contexts' last logits and states
    are ``first_logits[c]`` / ``states[c]``; all rows run as one batch (states joinable)."""
    n = len(rows)
    width = max(len(toks) for _, toks in rows) - 1
    targets = [toks for _, toks in rows]
    head = torch.stack([first_logits[c] for c, _ in rows]).float()  # (n, V): predicts each first token
    if width > 0:
        ids = torch.zeros(n, width, dtype=torch.long, device=device)
        for r, toks in enumerate(targets):
            ids[r, : len(toks) - 1] = torch.tensor(toks[:-1], dtype=torch.long)
        batch_state = concat_states([states[c] for c, _ in rows])
        logits = torch.cat([head[:, None], model(ids, state=batch_state).logits.float()], dim=1)  # (n, width+1, V)
    else:
        logits = head[:, None]
    logprobs = F.log_softmax(logits, dim=-1)
    results = []
    for r, toks in enumerate(targets):
        t = torch.tensor(toks, dtype=torch.long, device=logprobs.device)
        lp = logprobs[r, : len(toks)]
        total = float(lp.gather(-1, t[:, None]).sum())
        greedy = bool((lp.argmax(-1) == t).all())
        results.append((total, greedy))
    return results


@torch.no_grad()
def score_continuations(
    model: LanguageModel, pairs: Sequence[Pair], batch_size: int, max_length: int, device: torch.device | str = "cpu",
) -> list[tuple[float, bool]]:
    """``(log p(continuation | context), is_greedy)`` for each ``(context, continuation)`` pair of token ids.

    Contexts are truncated from the left to ``max_length`` (:func:`truncate_pair`). At most
    ``batch_size`` contexts are held at once and at most ``batch_size`` continuations run per
    forward call.
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    pairs = [truncate_pair(c, x, max_length) for c, x in pairs]
    contexts: dict[tuple[int, ...], int] = {}
    members: list[list[int]] = []  # context index -> request indices
    for i, (ctx, _) in enumerate(pairs):
        key = tuple(ctx)
        if key not in contexts:
            contexts[key] = len(members)
            members.append([])
        members[contexts[key]].append(i)
    keys = list(contexts)
    order = sorted(range(len(keys)), key=lambda c: (len(keys[c]), keys[c]))  # equal lengths side by side
    results: list[tuple[float, bool] | None] = [None] * len(pairs)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        first, states = run_prompts(model, [keys[c] for c in chunk], device, batch_size, last_only=True)
        rows = [(j, pairs[i][1]) for j, c in enumerate(chunk) for i in members[c]]
        where = [i for c in chunk for i in members[c]]
        # rows whose states can share one batch: same per-row structure (always, for recurrent states)
        groups: dict[Any, list[int]] = {}
        for r, (j, _) in enumerate(rows):
            groups.setdefault(state_signature(states[j]), []).append(r)
        for group in groups.values():
            for g in range(0, len(group), batch_size):
                part = group[g : g + batch_size]
                for r, res in zip(part, _score_rows(model, [rows[r] for r in part], first, states, device)):
                    results[where[r]] = res
    return results  # type: ignore[return-value]


@torch.no_grad()
def greedy_continue(
    model: LanguageModel,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    should_stop: Callable[[int, list[int]], bool],
    batch_size: int,
    device: torch.device | str = "cpu",
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
) -> list[list[int]]:
    """New tokens for each prompt: greedy (or sampled with ``temperature > 0``) until
    ``should_stop(index into prompts, tokens so far)`` or ``max_new_tokens``. Rows whose states can share a
    batch decode together, ``batch_size`` at a time; a finished row leaves the batch."""
    generator = torch.Generator(device=device).manual_seed(seed) if seed is not None else None
    out: list[list[int]] = [[] for _ in prompts]
    for start in range(0, len(prompts), batch_size):
        idx = list(range(start, min(start + batch_size, len(prompts))))
        last, states = run_prompts(model, [prompts[i] for i in idx], device, batch_size, last_only=True)
        groups: dict[str, list[int]] = {}
        for j in range(len(idx)):
            groups.setdefault(state_signature(states[j]), []).append(j)
        for group in groups.values():
            rows = [idx[j] for j in group]
            logits = torch.stack([last[j] for j in group])
            state = concat_states([states[j] for j in group])
            for _ in range(max_new_tokens):
                token = sample_next(logits, temperature, top_k, top_p, generator)
                alive = []
                for r, (row, tok) in enumerate(zip(rows, token.tolist())):
                    out[row].append(tok)
                    if not should_stop(row, out[row]) and len(out[row]) < max_new_tokens:
                        alive.append(r)
                if not alive:
                    break
                if len(alive) < len(rows):
                    rows = [rows[r] for r in alive]
                    token, state = token[alive], select_state(state, alive)
                logits, state = model.step(token, state)
    return out


