"""``matmulfree export CHECKPOINT OUT --target vitis|ecp5|ice40``: FPGA exports.

The Vitis HLS export lives in :mod:`matmulfree.fpga.hls.cli`, the open RTL flow in
:mod:`matmulfree.fpga.rtl.cli`; each adds its own options and runs its target.
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
        help="export a checkpoint to an FPGA target",
        description="Export a trained MatMul-free checkpoint: 'vitis' writes a Vitis HLS C++ project "
        "(firmware, weights, testbench, scripts); 'ecp5' / 'ice40' generate RTL with Amaranth and build "
        "a bitstream with the open yowasp tools.",
    )
    p.add_argument("checkpoint", help="trained model directory (config.json + model.safetensors)")
    p.add_argument("out", help="output folder (created)")
    p.add_argument("--target", required=True, choices=sorted(TARGETS), help="export target")
    p.add_argument("--clock-mhz", type=float, default=None, help="target clock in MHz")
    for module in _target_modules().values():
        module.add_export_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    module = importlib.import_module(TARGETS[args.target])
    return module.run_export(args)
