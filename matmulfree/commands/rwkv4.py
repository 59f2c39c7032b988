"""``matmulfree export rwkv4 CHECKPOINT OUT.pth``: an RWKV checkpoint in the ``rwkv`` package's RWKV-4 format.

Each ternary weight is written dequantised (``scale * {-1, 0, +1}``) in fp32; see
:mod:`matmulfree.rwkv4_format`.
"""

from __future__ import annotations

import argparse


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    """No options beyond CHECKPOINT and OUT."""


def run_export(args: argparse.Namespace) -> int:
    from matmulfree import load_model
    from matmulfree.rwkv4_format import save_rwkv4

    model = load_model(args.checkpoint)
    path = save_rwkv4(model, args.out)
    note = "" if not model.config.quantize_activations else (
        " (the model quantises activations and the rwkv package does not: logits differ by that rounding)")
    print(f"wrote {path}: RWKV-4 format, {model.config.n_layers} layers x {model.config.d_model}{note}")
    return 0
