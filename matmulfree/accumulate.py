"""Gradient accumulation that is exact: N micro-batches give the gradient of their concatenation.

A training step sums the token losses of every micro-batch (of every process) and divides by
the number of target tokens of the whole step, counted before the first backward pass. Each
micro-batch's backward therefore carries ``loss_sum_i / total_targets``, and the accumulated
gradient equals that of the mean loss over the concatenated batch, whatever the micro-batch
sizes (a ragged last micro-batch is fine) and however many tokens are padding. Only the order of
the floating-point sums differs, so gradients agree to fp32 rounding (``tests/test_accumulate.py``).

Sequences are ``(B, L + 1)`` token ids; a position holding ``IGNORE_INDEX`` (-100) is padding: it
is fed to the model as token 0 and is no target.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from .models.base import IGNORE_INDEX

LossFn = Callable[[torch.nn.Module, torch.Tensor], tuple[torch.Tensor, int]]


def count_targets(seq: torch.Tensor) -> int:
    """Target tokens of ``seq (B, L + 1)``: positions ``1..L`` that are not padding."""
    return int((seq[:, 1:] != IGNORE_INDEX).sum())


def summed_token_loss(model: torch.nn.Module, seq: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Summed next-token cross-entropy (nats) over the non-padding targets of ``seq (B, L + 1)``
    and their number."""
    inputs = seq[:, :-1]
    if bool((inputs == IGNORE_INDEX).any()):
        inputs = inputs.masked_fill(inputs == IGNORE_INDEX, 0)
    logits = model(inputs).logits
    targets = seq[:, 1:]
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1),
                           ignore_index=IGNORE_INDEX, reduction="sum")
    return loss, count_targets(seq)


def accumulate_gradients(
    model: torch.nn.Module,
    micro_batches: Sequence[torch.Tensor],
    total_targets: int,
    loss_fn: LossFn = summed_token_loss,
    backward: Callable[[torch.Tensor], None] = torch.Tensor.backward,
    context: Callable[[bool], contextlib.AbstractContextManager] = lambda last: contextlib.nullcontext(),
    grad_scale: float = 1.0,
) -> torch.Tensor:
    """Backpropagate every micro-batch with weight ``grad_scale / total_targets``; returns the summed loss.

    Args:
        model: the model (possibly wrapped for DDP).
        micro_batches: sequences ``(B_i, L + 1)`` of this process; sizes may differ.
        total_targets: target tokens of the whole step, all micro-batches of all processes.
        loss_fn: ``(model, seq) -> (summed loss, targets)``.
        backward: how to backpropagate (``accelerator.backward`` under accelerate).
        context: ``context(is_last)`` wraps each micro-batch (e.g. DDP ``no_sync`` but on the last).
        grad_scale: multiplies every gradient (the number of processes, undoing DDP's averaging).
    Returns:
        the detached fp32 loss sum of this process's micro-batches (nats).
    """
    if total_targets <= 0:
        raise ValueError(f"accumulate_gradients: total_targets must be positive, got {total_targets}")
    loss_sum = torch.zeros((), dtype=torch.float32, device=micro_batches[0].device)
    for i, seq in enumerate(micro_batches):
        with context(i == len(micro_batches) - 1):
            loss, _ = loss_fn(model, seq)
            backward(loss * (grad_scale / total_targets))
        loss_sum += loss.detach().float()
    return loss_sum
