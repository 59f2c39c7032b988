"""``matmulfree export CHECKPOINT OUT --target vitis|ecp5|ice40``: FPGA exports;
``matmulfree export rwkv4 CHECKPOINT OUT.pth``: an RWKV model in the ``rwkv`` package's format.

The Vitis HLS export lives in :mod:`matmulfree.fpga.hls.cli`, the open RTL flow in
:mod:`matmulfree.fpga.rtl.cli`; each adds its own options and runs its target. Weight-format
exports (:data:`FORMATS`) are named before the checkpoint (or given as ``--target``).
"""

from __future__ import annotations

import argparse
import importlib

#: target name -> module providing ``add_export_arguments(parser)`` and ``run_export(args) -> int``.
TARGETS = {
    "vitis": "matmulfree.fpga.hls.cli",
    "ecp5": "matmulfree.fpga.rtl.cli",
    "ice40": "matmulfree.fpga.rtl.cli",
}
#: Weight-format exports: name -> what it writes.
FORMATS = {"rwkv4": "an RWKV checkpoint as an RWKV-4 .pth for the rwkv package (ternary weights dequantised)"}


def _target_modules():
    seen = {}
    for name in TARGETS.values():
        try:
            seen.setdefault(name, importlib.import_module(name))
        except ImportError:
            continue
    return seen


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export a checkpoint to an FPGA target or another weight format",
        description="Export a trained MatMul-free checkpoint: 'vitis' writes a Vitis HLS C++ project "
        "(firmware, weights, testbench, scripts); 'ecp5' / 'ice40' generate RTL with Amaranth and build "
        "a bitstream with the open yowasp tools. 'matmulfree export rwkv4 CHECKPOINT OUT.pth' writes an "
        "RWKV checkpoint in the RWKV-4 format of the rwkv package (ternary weights dequantised to fp32).",
    )
    p.add_argument("checkpoint", help="trained model directory (config.json + model.safetensors), or a "
                   f"format name ({', '.join(sorted(FORMATS))}) followed by the directory")
    p.add_argument("out", help="output folder (created); for a format: the checkpoint directory")
    p.add_argument("out_file", nargs="?", default=None, help="for a format only: the output file (e.g. OUT.pth)")
    p.add_argument("--target", default=None, choices=sorted(TARGETS) + sorted(FORMATS),
                   help="export target (FPGA targets; formats may also be named first)")
    p.add_argument("--clock-mhz", type=float, default=None, help="target clock in MHz")
    for module in _target_modules().values():
        module.add_export_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from matmulfree.errors import CLIError

    if args.checkpoint in FORMATS:
        if args.out_file is None:
            raise CLIError(f"export {args.checkpoint}: give the checkpoint and the output file "
                           f"(matmulfree export {args.checkpoint} CHECKPOINT OUT.pth)")
        if args.target not in (None, args.checkpoint):
            raise CLIError(f"export: format {args.checkpoint!r} and --target {args.target!r} disagree")
        args.target, args.checkpoint, args.out = args.checkpoint, args.out, args.out_file
    elif args.out_file is not None:
        raise CLIError(f"export: unexpected third argument {args.out_file!r} (only formats "
                       f"{sorted(FORMATS)} take CHECKPOINT OUT.pth after their name)")
    if args.target is None:
        raise CLIError(f"export: --target is required (one of {sorted(TARGETS)}), or name a format first "
                       f"({', '.join(sorted(FORMATS))})")
    if args.target == "rwkv4":
        return _export_rwkv4(args)
    module = importlib.import_module(TARGETS[args.target])
    return module.run_export(args)


def _export_rwkv4(args: argparse.Namespace) -> int:
    from matmulfree import load_model
    from matmulfree.rwkv4_format import save_rwkv4

    model = load_model(args.checkpoint)
    path = save_rwkv4(model, args.out)
    note = "" if not model.config.quantize_activations else (
        " (the model quantises activations and the rwkv package does not: logits differ by that rounding)")
    print(f"wrote {path}: RWKV-4 format, {model.config.n_layers} layers x {model.config.d_model}{note}")
    return 0
