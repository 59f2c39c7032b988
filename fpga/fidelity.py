"""Fidelity of the integer reference against the float model: perplexity and greedy agreement.

Works for every integer model with the :class:`~matmulfree.fpga.intref.IntModel` interface (the
MLGRU's and :class:`~matmulfree.fpga.intref_rwkv.RWKVIntModel`).

Used by ``bench/fpga_fidelity.py`` and the tests. Both models run token by token through their
recurrent step, so the comparison covers exactly what the chip computes.
"""

from __future__ import annotations

import math

import numpy as np

from .intref import IntModel


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def float_sequence_logits(model, ids: np.ndarray) -> np.ndarray:
    """Float logits ``(B, T, V)`` of ids ``(B, T)`` through ``model.step`` (the golden path)."""
    import torch

    state, out = None, []
    with torch.no_grad():
        for t in range(ids.shape[1]):
            logits, state = model.step(torch.as_tensor(ids[:, t], dtype=torch.long), state)
            out.append(logits.double().numpy())
    return np.stack(out, axis=1)


def perplexity(model, im: IntModel, ids: np.ndarray) -> dict[str, float]:
    """Next-token loss (nats) and perplexity of the float and the integer model on windows
    ``ids (B, T)``; each window starts from a zero state. Also the relative logit error and the
    argmax agreement at every position (teacher forced)."""
    ids = np.asarray(ids, dtype=np.int64)
    lf = float_sequence_logits(model, ids)
    li = im.sequence_logits(ids).astype(np.float64) * im.logit_scale
    tgt = ids[:, 1:]

    def nll(logits: np.ndarray) -> float:
        lp = _log_softmax(logits[:, :-1])
        return float(-np.take_along_axis(lp, tgt[..., None], axis=-1).mean())

    loss_f, loss_i = nll(lf), nll(li)
    return {
        "tokens": int(tgt.size),
        "loss_float": loss_f,
        "loss_int": loss_i,
        "ppl_float": math.exp(loss_f),
        "ppl_int": math.exp(loss_i),
        "ppl_rel_change": math.exp(loss_i - loss_f) - 1.0,
        "logit_rel_err": float(np.linalg.norm(li - lf) / max(np.linalg.norm(lf), 1e-30)),
        "argmax_agreement": float((li.argmax(-1) == lf.argmax(-1)).mean()),
    }


def greedy_agreement(model, im: IntModel, prompts: np.ndarray, n_new: int) -> dict[str, float | list]:
    """Greedy generation of ``n_new`` tokens from ``prompts (B, T)`` by both models (both feed the
    prompt token by token through ``step``).

    Returns the fraction of identical tokens position by position (free running), the mean length
    of the identical prefix, and the teacher-forced agreement: the integer model's argmax along
    the float model's own continuation.
    """
    import torch

    prompts = np.asarray(prompts, dtype=np.int64)
    state, out = None, []
    with torch.no_grad():
        for t in range(prompts.shape[1]):
            logits, state = model.step(torch.as_tensor(prompts[:, t]), state)
        for n in range(n_new):
            token = logits.argmax(-1)
            out.append(token.numpy())
            if n + 1 < n_new:
                logits, state = model.step(token, state)
    gen_f = np.stack(out, axis=1)
    gen_i = im.generate(prompts, n_new)
    same = gen_f == gen_i
    prefix = np.where(same.all(axis=1), n_new, np.argmin(same, axis=1))
    # Teacher-forced: integer argmax predicting gen_f[:, k] given prompt + gen_f[:, :k].
    full = np.concatenate([prompts, gen_f[:, :-1]], axis=1)
    state_i = im.init_state(full.shape[0])
    pred = []
    for t in range(full.shape[1]):
        _, tok, state_i = im.step(full[:, t], state_i)
        if t >= prompts.shape[1] - 1:
            pred.append(tok)
    tf = np.stack(pred, axis=1) == gen_f
    return {
        "n_prompts": int(prompts.shape[0]),
        "n_new": int(n_new),
        "free_running_agreement": float(same.mean()),
        "mean_identical_prefix": float(prefix.mean()),
        "identical_prefix": prefix.tolist(),
        "teacher_forced_agreement": float(tf.mean()),
    }
