"""Golden data for the HLS testbench, from the Python integer reference (bit-exact contract)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..arch import int_model

DEFAULT_PROMPT = "ROMEO.\nBut, soft! what light through yonder window breaks?\n"


def prompt_ids(text: str, vocab: int, steps: int) -> np.ndarray:
    """Bytes of ``text`` modulo the vocabulary, at most half of ``steps`` (the rest is generated)
    and at least one token."""
    ids = np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int64) % vocab
    n = max(1, min(len(ids), steps // 2))
    return ids[:n] if len(ids) else np.zeros(1, dtype=np.int64)


def reference_sequence(P: dict[str, Any], prompt: np.ndarray, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Run ``steps`` token steps of the integer model of ``P`` (MLGRU or RWKV, width checks on):
    the prompt tokens first, then each step fed with the previous argmax.
    Returns ``(tokens (steps,), logits (steps, V))``."""
    if steps < 1 or len(prompt) < 1:
        raise ValueError(f"need at least one step and one prompt token, got steps={steps}, prompt={len(prompt)}")
    im = int_model(P, check=True)
    state = im.init_state(1)
    tokens, logits = [], []
    tok = int(prompt[0])
    for s in range(steps):
        inp = int(prompt[s]) if s < len(prompt) else tok
        lg, t, state = im.step(np.array([inp]), state)
        tok = int(t[0])
        tokens.append(tok)
        logits.append(lg[0])
    return np.array(tokens, dtype=np.int64), np.stack(logits).astype(np.int64)
