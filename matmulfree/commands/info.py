"""``matmulfree info CHECKPOINT``: print a model summary."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="print a model summary", description="Print the architecture, parameter "
                       "counts and storage sizes of a saved model directory (or of a preset).")
    p.add_argument("checkpoint", help="model directory (config.json + model.safetensors), or preset:NAME "
                   "[e.g. preset:370m] or preset:NAME:ARCH [transformer, rwkv]")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=run)


def open_model(spec: str):
    """A saved model directory, or ``preset:NAME[:ARCH]`` (random weights)."""
    from matmulfree import build_model, load_model, preset

    if spec.startswith("preset:"):
        parts = spec.split(":")
        arch = parts[2] if len(parts) > 2 else "matmulfree"
        from matmulfree.config import CONFIG_CLASSES

        if arch not in CONFIG_CLASSES:
            from matmulfree.errors import CLIError

            raise CLIError(f"unknown architecture {arch!r} in {spec!r}")
        import torch

        with torch.device("meta"):
            return build_model(preset(parts[1], arch))
    return load_model(spec)


def run(args: argparse.Namespace) -> int:
    model = open_model(args.checkpoint)
    if args.json:
        print(json.dumps({"config": model.config.to_dict(), **model.weight_summary()}, indent=2))
    else:
        print(model.summary())
    return 0
