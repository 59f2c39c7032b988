"""Fidelity of the integer-only FPGA reference against the float model of a checkpoint (MLGRU or RWKV-4).

    python bench/fpga_fidelity.py CHECKPOINT [--data SPEC | --text FILE] [--windows 64]
        [--seq-len 256] [--prompts 8] [--prompt-len 32] [--new-tokens 256] [--out FILE]

Validation data: ``--text FILE`` (bytes of a text file; the last ``--val-frac`` of it, or all of
it with ``--val-frac 1``), or ``--data SPEC`` through :mod:`matmulfree.data` (default: that
module's default corpus, validation split). Both models run token by token through their
recurrent step from a zero state on each window. Prints and saves JSON: perplexity of both
models and its relative change (goal: within 2%), teacher-forced argmax agreement, greedy
agreement over ``--new-tokens`` generated tokens from ``--prompts`` prompts, the chosen format
parameters and the on-chip memory in bits.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from matmulfree.fpga import arch, convert_rwkv, fidelity

import matmulfree


def _tokens_from_data_module(spec: str | None, checkpoint: str) -> np.ndarray:
    """Validation token ids of ``spec`` (default: the default corpus) with the checkpoint's tokenizer."""
    from matmulfree.data import load_tokenizer, tokenize_split
    from matmulfree.recipe import DEFAULT_SOURCE

    tokens = tokenize_split(spec or DEFAULT_SOURCE, load_tokenizer(checkpoint), "validation").tokens
    return np.asarray(tokens, dtype=np.int64)


def _tokens_from_text(path: str, val_frac: float, vocab_size: int) -> np.ndarray:
    raw = Path(path).read_bytes()
    if vocab_size < 256:
        raise SystemExit(f"--text reads bytes, but the model's vocabulary has only {vocab_size} tokens")
    ids = np.frombuffer(raw, dtype=np.uint8).astype(np.int64)
    return ids[int(len(ids) * (1 - val_frac)):]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--data", default=None, help="dataset spec for matmulfree.data (default corpus if omitted)")
    ap.add_argument("--text", default=None, help="plain text file (byte tokens) instead of --data")
    ap.add_argument("--val-frac", type=float, default=0.1, help="with --text: trailing fraction used")
    ap.add_argument("--windows", type=int, default=64, help="validation windows for perplexity")
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--no-calibrate", action="store_true", help="use the default format parameters")
    ap.add_argument("--out", default=None, help="JSON path (default bench/results/fpga_fidelity.json)")
    args = ap.parse_args(argv)

    model = matmulfree.load(args.checkpoint).eval()
    V = model.config.vocab_size
    if args.text:
        ids = _tokens_from_text(args.text, args.val_frac, V)
        source = f"text:{args.text} (last {args.val_frac:.0%})"
    else:
        ids = _tokens_from_data_module(args.data, args.checkpoint)
        source = f"matmulfree.data:{args.data or 'default'} validation"
    T = min(args.seq_len, model.config.max_seq_len)
    n_win = min(args.windows, len(ids) // T - 1)
    if n_win < 1:
        raise SystemExit(f"validation data too short: {len(ids)} tokens for windows of {T}")
    # Windows evenly spread over the data; calibration uses the window after each of the first four.
    starts = np.linspace(0, len(ids) - 2 * T, n_win).astype(np.int64)
    windows = np.stack([ids[s:s + T] for s in starts])
    calib = np.stack([ids[s + T:s + 2 * T] for s in starts[:4]])

    t0 = time.time()
    P = arch.convert_model(model, calib_ids=None if args.no_calibrate else calib)
    im = arch.int_model(P)
    ppl = fidelity.perplexity(model, im, windows)
    t_ppl = time.time() - t0
    p_starts = np.linspace(0, len(ids) - args.prompt_len, args.prompts).astype(np.int64)
    prompts = np.stack([ids[s:s + args.prompt_len] for s in p_starts])
    greedy = fidelity.greedy_agreement(model, im, prompts, args.new_tokens)
    fmt = {k: P[k] for k in convert_rwkv.DEFAULTS if k in P}  # the MLGRU's formats, plus ln_frac for RWKV
    result = {
        "checkpoint": str(args.checkpoint),
        "config": model.config.to_dict(),
        "data": source,
        "windows": int(n_win),
        "seq_len": int(T),
        "format": fmt,
        "perplexity": ppl,
        "ppl_within_2_percent": bool(abs(ppl["ppl_rel_change"]) <= 0.02),
        "greedy": greedy,
        "architecture": arch.architecture(P),
        "memory_bits": arch.memory_bits(P),
        "seconds": {"perplexity": round(t_ppl, 1), "total": round(time.time() - t0, 1)},
        "torch": torch.__version__,
    }
    out = Path(args.out or "bench/results/fpga_fidelity.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "config"}, indent=2))
    print(f"saved {out}")
    return result


if __name__ == "__main__":
    main()
