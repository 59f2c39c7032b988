"""Which training sequences each process reads: disjoint slices of one seeded global order.

Every rank computes the same global order (:func:`~matmulfree.data.tokens.sample_indices`, a
seeded permutation of the memory-mapped token cache per epoch; an ``hf:`` stream is first tokenized
into that cache, once per machine under a file lock). Optimizer step ``s`` consumes global samples
``s·G .. s·G + G − 1`` (``G = batch_size × grad_accum × processes``); micro-batch ``m`` of rank
``r`` is the slice starting at ``(m·processes + r)·batch_size``. The ranks' slices are therefore
disjoint and together are exactly what one process with batch ``G`` reads, and a resumed run
knows every rank's position from the step alone.
"""

from __future__ import annotations

import numpy as np

from .tokens import sample_indices


def step_indices(n_sequences: int, step: int, global_batch: int, seed: int) -> np.ndarray:
    """Sequence ids of optimizer step ``step`` (0-based) for the whole global batch ``(global_batch,)``."""
    return sample_indices(n_sequences, step * global_batch, global_batch, seed)


def rank_slice(indices: np.ndarray, micro: int, rank: int, processes: int, batch_size: int) -> np.ndarray:
    """The ``batch_size`` ids of micro-batch ``micro`` that rank ``rank`` of ``processes`` reads."""
    if not 0 <= rank < processes:
        raise ValueError(f"rank {rank} is outside 0..{processes - 1}")
    start = (micro * processes + rank) * batch_size
    if start + batch_size > len(indices):
        raise ValueError(f"micro-batch {micro} of rank {rank} runs past the global batch of {len(indices)}")
    return indices[start : start + batch_size]


def rank_epoch(n_sequences: int, steps: int, batch_size: int, grad_accum: int, rank: int, processes: int,
               seed: int, first_step: int = 0) -> np.ndarray:
    """Every id rank ``rank`` reads in optimizer steps ``first_step .. first_step + steps − 1``, in order."""
    g = batch_size * grad_accum * processes
    parts = []
    for step in range(first_step, first_step + steps):
        ids = step_indices(n_sequences, step, g, seed)
        parts += [rank_slice(ids, m, rank, processes, batch_size) for m in range(grad_accum)]
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)
