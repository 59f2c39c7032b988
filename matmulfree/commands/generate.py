"""``matmulfree generate CHECKPOINT --prompt TEXT``: stream generated text."""

from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="generate text from a trained model (streams to stdout)",
                       description="Generate text from a model directory (e.g. runs/shakespeare-tiny/final). "
                       "The prompt is prefilled in parallel, then each token is one recurrent step. On the CPU, "
                       "MatMul-free models run on the packed 2-bit C engine by default (--engine, --threads).")
    p.add_argument("checkpoint", help="model directory (config.json + model.safetensors [+ tokenizer])")
    p.add_argument("--prompt", default="\n", help="text to continue (default: a newline)")
    p.add_argument("--max-new-tokens", type=int, default=200, help="tokens to generate (default 200)")
    p.add_argument("--temperature", type=float, default=0.8, help="sampling temperature; 0 is greedy (default 0.8)")
    p.add_argument("--top-k", type=int, default=40, help="sample among the K likeliest tokens; 0 disables (default 40)")
    p.add_argument("--top-p", type=float, default=None, help="nucleus sampling mass in (0, 1) (default off)")
    p.add_argument("--seed", type=int, default=None, help="random seed for reproducible samples")
    p.add_argument("--packed", action="store_true", help="run the packed 2-bit ternary inference path")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--engine", choices=["auto", "c", "torch"], default="auto",
                   help="CPU engine for MatMul-free models: 'c' the packed C engine (matmulfree.inference.cpu_mlgru), "
                        "'torch' the PyTorch model, 'auto' (default) C where it builds, else PyTorch with the reason "
                        "printed once")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads of the C engine (default: torch.get_num_threads(), at most the CPUs available)")
    p.set_defaults(func=run)


def pick_engine(model, args):
    """The C engine for a MatMul-free model on the CPU (``args.engine`` auto/c), else ``None``
    (then the PyTorch model generates); ``auto`` prints the reason for falling back once, to stderr."""
    if args.engine == "torch" or args.device != "cpu":
        if args.engine == "c" and args.device != "cpu":
            from matmulfree.errors import CLIError

            raise CLIError(f"--engine c runs on the CPU, not --device {args.device}")
        return None
    from matmulfree.errors import CLIError
    from matmulfree.inference.cpu_mlgru import MLGRUEngine, engine_unavailable_reason

    reason = engine_unavailable_reason(model)
    if reason is None:
        return MLGRUEngine(model.pack(), threads=args.threads)
    if args.engine == "c":
        raise CLIError(f"--engine c: {reason}")
    if model.config.architecture == "matmulfree":
        print(f"matmulfree generate: the C engine is unavailable ({reason}); generating with PyTorch",
              file=sys.stderr)  # fmt: skip
    return None


def run(args: argparse.Namespace) -> int:
    import torch

    from matmulfree.checkpoint import load_model
    from matmulfree.data import DataError, load_tokenizer
    from matmulfree.errors import CLIError

    if args.max_new_tokens < 0:
        raise CLIError(f"--max-new-tokens must be >= 0, got {args.max_new_tokens}")
    if args.top_p is not None and not 0 < args.top_p <= 1:
        raise CLIError(f"--top-p must be in (0, 1], got {args.top_p}")
    if args.threads is not None and args.threads < 1:
        raise CLIError(f"--threads must be >= 1, got {args.threads}")
    model = load_model(args.checkpoint, map_location=args.device)
    if args.packed:
        model.pack()
    model.eval()
    try:
        tok = load_tokenizer(args.checkpoint)
    except DataError as e:
        raise CLIError(str(e)) from None
    if tok.vocab_size < model.config.vocab_size:
        raise CLIError(f"the model's vocabulary ({model.config.vocab_size}) exceeds its tokenizer's ({tok.spec}, "
                       f"{tok.vocab_size}); put the model's tokenizer.json in {args.checkpoint} "
                       "(matmulfree convert copies a release's tokenizer.json)")
    ids = tok.encode(args.prompt)
    if not ids:
        raise CLIError("--prompt is empty after tokenization")
    if max(ids) >= model.config.vocab_size:
        raise CLIError(f"prompt token id {max(ids)} is outside the model's vocabulary ({model.config.vocab_size})")
    prompt = torch.tensor(ids, device=args.device)
    runner = pick_engine(model, args) or model
    sys.stdout.write(args.prompt)
    pending: list[int] = []
    for token in runner.stream(prompt.unsqueeze(0), args.max_new_tokens, args.temperature, args.top_k or None,
                               args.top_p, args.seed):
        pending.append(int(token[0]))
        text = tok.decode(pending)
        if "\ufffd" not in text or len(pending) > 4:  # wait for whole UTF-8 characters
            sys.stdout.write(text)
            sys.stdout.flush()
            pending = []
    if pending:
        sys.stdout.write(tok.decode(pending))
    sys.stdout.write("\n")
    return 0
