"""``matmulfree convert hgrn-bit SRC OUT``: turn a released checkpoint into one of our model directories."""

from __future__ import annotations

import argparse
import time


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert",
        help="convert a released checkpoint of another format into a matmulfree model directory",
        description="Convert released checkpoints. 'hgrn-bit' reads a MMfreeLM release folder (model_type "
        "hgrn_bit: config.json plus model.safetensors, sharded safetensors with an index, or pytorch_model.bin "
        "read weights-only) and writes config.json + model.safetensors that matmulfree.load_model opens.",
    )
    formats = p.add_subparsers(dest="format", metavar="FORMAT", required=True)
    h = formats.add_parser("hgrn-bit", help="released MMfreeLM checkpoints (model_type hgrn_bit)",
                           description="Convert a released MMfreeLM (hgrn_bit) folder; every tensor is mapped "
                           "or the conversion is refused with the tensor or config key named.")
    h.add_argument("src", help="release folder (config.json + weights)")
    h.add_argument("out", help="output model directory (created; files written atomically)")
    h.add_argument("--packed", action="store_true", help="also write model.packed.safetensors (2-bit weights)")
    h.set_defaults(func=run_hgrn_bit)


def run_hgrn_bit(args: argparse.Namespace) -> int:
    from matmulfree.convert import ConversionError, convert_hgrn_bit
    from matmulfree.errors import CLIError

    start = time.perf_counter()
    try:
        model = convert_hgrn_bit(args.src, args.out, packed=args.packed)
    except ConversionError as e:
        raise CLIError(str(e)) from None
    n = sum(p.numel() for p in model.parameters())
    print(f"converted {args.src} -> {args.out}: {model.config.n_layers} layers, d={model.config.d_model}, "
          f"{n / 1e6:.1f}M parameters in {time.perf_counter() - start:.1f} s")
    return 0
