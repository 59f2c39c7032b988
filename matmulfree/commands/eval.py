"""``matmulfree eval CHECKPOINT [--data SOURCE]``: loss, perplexity and bits per byte;
``matmulfree eval CHECKPOINT --tasks T1,T2 [--num-fewshot N --limit N --include-path DIR]``:
lm-evaluation-harness tasks through :mod:`matmulfree.lm_eval` (the ``[hf]`` extra)."""

from __future__ import annotations

import argparse
import json
import math

from ..recipe import DEFAULT_SOURCE


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate a model: loss, perplexity, bits per byte, or lm-eval tasks",
                       description="Evaluate a model directory on a data source's validation split "
                       "(default: the default Shakespeare corpus), or with --tasks on lm-evaluation-harness "
                       "tasks (results printed as the harness's table and saved as JSON in the checkpoint "
                       "folder).")
    p.add_argument("checkpoint", help="model directory (config.json + model.safetensors [+ tokenizer])")
    p.add_argument("--data", default=DEFAULT_SOURCE, help="data source, e.g. shakespeare, text:PATH, "
                   "jsonl:PATH[:FIELD], parquet:PATH[:FIELD], hf:NAME[:CONFIG][:SPLIT] (default %(default)s)")
    p.add_argument("--split", default="validation", choices=["train", "validation"], help="split (default validation)")
    p.add_argument("--seq-len", type=int, default=256, help="tokens per evaluated sequence (default 256)")
    p.add_argument("--batch-size", type=int, default=16, help="sequences per batch (default 16)")
    p.add_argument("--max-tokens", type=int, default=None, help="evaluate at most this many tokens")
    p.add_argument("--packed", action="store_true", help="evaluate the packed 2-bit inference path")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    h = p.add_argument_group("lm-evaluation-harness (needs the [hf] extra)")
    h.add_argument("--tasks", default=None,
                   help="comma-separated lm-eval task names (e.g. arc_easy,hellaswag); switches to the harness")
    h.add_argument("--num-fewshot", type=int, default=None, help="examples in each prompt (default: the task's)")
    h.add_argument("--limit", type=float, default=None,
                   help="documents per task: a count, or a fraction below 1 (default: all)")
    h.add_argument("--include-path", default=None, help="folder of extra task YAMLs (local tasks)")
    h.add_argument("--output", default=None,
                   help="where to write the results JSON (default: CHECKPOINT/lm_eval_results.json)")
    h.add_argument("--seed", type=int, default=0, help="seed of few-shot sampling and generation (default 0)")
    p.set_defaults(func=run)


HARNESS_ONLY = ("num_fewshot", "limit", "include_path", "output")


def run_tasks(args: argparse.Namespace) -> int:
    """The ``--tasks`` form: run the harness, print its table, save the results JSON."""
    import time
    from pathlib import Path

    from matmulfree.checkpoint import atomic_write_text, load_config
    from matmulfree.errors import CLIError

    load_config(args.checkpoint)  # a clear error for a bad checkpoint before the harness starts
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if not tasks:
        raise CLIError("--tasks is empty; give comma-separated task names")
    if args.num_fewshot is not None and args.num_fewshot < 0:
        raise CLIError(f"--num-fewshot must be >= 0, got {args.num_fewshot}")
    limit = args.limit
    if limit is not None:
        if limit <= 0:
            raise CLIError(f"--limit must be positive, got {limit}")
        limit = int(limit) if limit >= 1 else limit
        if limit != args.limit and limit >= 1:
            raise CLIError(f"--limit must be a whole count or a fraction below 1, got {args.limit}")
    if args.include_path is not None and not Path(args.include_path).is_dir():
        raise CLIError(f"--include-path {args.include_path}: not a directory")
    try:
        from matmulfree import lm_eval as harness
    except ImportError as e:
        raise CLIError(str(e)) from None
    start = time.perf_counter()
    try:
        results = harness.evaluate_tasks(args.checkpoint, tasks, num_fewshot=args.num_fewshot, limit=limit,
                                         batch_size=args.batch_size, include_path=args.include_path,
                                         device=args.device, packed=args.packed, seed=args.seed)
    except ValueError as e:
        raise CLIError(str(e)) from None
    results["matmulfree"] = {"checkpoint": args.checkpoint, "packed": args.packed,
                             "wall_seconds": time.perf_counter() - start}
    out = Path(args.output) if args.output else Path(args.checkpoint) / "lm_eval_results.json"
    atomic_write_text(out, harness.results_json(results))
    if args.json:
        print(harness.results_json(results["results"]), end="")
    else:
        print(harness.results_table(results))
    print(f"results: {out} ({results['matmulfree']['wall_seconds']:.1f} s)")
    return 0


def evaluate(model, sequences, batch_size: int, device: str) -> tuple[float, int]:
    """Mean next-token loss (nats/token) over all sequences and the number of targets."""
    import torch

    from matmulfree.train import sequence_loss

    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(sequences), batch_size):
            idx = torch.arange(start, min(start + batch_size, len(sequences))).numpy()
            loss, n = sequence_loss(model, sequences.get(idx).to(device))
            total, count = total + float(loss), count + n
    return total / count, count


def run(args: argparse.Namespace) -> int:
    from matmulfree.checkpoint import load_model
    from matmulfree.data import DataError, PackedSequences, load_tokenizer, tokenize_split
    from matmulfree.errors import CLIError

    if args.tasks is not None:
        if args.batch_size <= 0:
            raise CLIError(f"--batch-size must be positive, got {args.batch_size}")
        return run_tasks(args)
    given = [f"--{n.replace('_', '-')}" for n in HARNESS_ONLY if getattr(args, n) is not None]
    if given:
        raise CLIError(f"{', '.join(given)} only apply with --tasks (lm-evaluation-harness)")
    for name in ("seq_len", "batch_size"):
        if getattr(args, name) <= 0:
            raise CLIError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    model = load_model(args.checkpoint, map_location=args.device)
    if args.seq_len > model.config.max_seq_len:
        raise CLIError(f"--seq-len {args.seq_len} exceeds the model's max_seq_len {model.config.max_seq_len}")
    if args.packed:
        model.pack()
    model.eval()
    try:
        tok = load_tokenizer(args.checkpoint)
        data = tokenize_split(args.data, tok, args.split, max_tokens=args.max_tokens)
        sequences = PackedSequences(data.tokens, args.seq_len, f"{args.data} [{args.split}]")
    except DataError as e:
        raise CLIError(str(e)) from None
    loss, n = evaluate(model, sequences, args.batch_size, args.device)
    result = {"checkpoint": args.checkpoint, "data": args.data, "split": args.split, "tokens": n,
              "loss_nats_per_token": loss, "perplexity": math.exp(min(loss, 50.0)),
              "bits_per_byte": loss / math.log(2) / data.bytes_per_token, "packed": args.packed}
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(f"{args.data} [{args.split}], {n:,} tokens: loss {loss:.4f} nats/token, "
              f"perplexity {result['perplexity']:.3f}, {result['bits_per_byte']:.4f} bits/byte")
    return 0
