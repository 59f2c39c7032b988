"""``matmulfree fpga ...``: checks of FPGA exports on this machine (C-simulation, RTL simulation)."""

from __future__ import annotations

import argparse
import importlib

#: Modules providing ``register_fpga(subparsers)`` for ``matmulfree fpga`` sub-verbs.
PROVIDERS = ["matmulfree.fpga.hls.cli", "matmulfree.fpga.rtl.cli"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fpga", help="simulate FPGA exports (csim, RTL simulation)",
                       description="Verify FPGA exports without vendor tools.")
    fsub = p.add_subparsers(dest="fpga_command", metavar="ACTION")
    for name in PROVIDERS:
        try:
            importlib.import_module(name).register_fpga(fsub)
        except ImportError:
            continue
    p.set_defaults(func=lambda args: (p.print_help(), 0)[1])
