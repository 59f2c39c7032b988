"""``matmulfree eval CHECKPOINT [--data SOURCE]``: loss, perplexity and bits per byte."""

from __future__ import annotations

import argparse
import json
import math

from ..recipe import DEFAULT_SOURCE


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate a model: loss, perplexity, bits per byte",
                       description="Evaluate a model directory on a data source's validation split "
                       "(default: the default Shakespeare corpus).")
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
    p.set_defaults(func=run)


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
