"""``matmulfree export FORMAT CHECKPOINT OUT``: write a checkpoint in another tool's format.

Formats are verbs: ``hf`` (a ``transformers`` model folder, :mod:`matmulfree.commands.hf`),
``rwkv4`` (an RWKV model as the ``rwkv`` package's RWKV-4 ``.pth``, :mod:`matmulfree.commands.rwkv4`) and
``fpga`` (``--target vitis|ecp5|ice40``). ``matmulfree export CHECKPOINT OUT --target ...``
without a verb is the ``fpga`` form (:func:`with_default_verb`). The Vitis HLS export lives in
:mod:`matmulfree.fpga.hls.cli`, the open RTL flow in :mod:`matmulfree.fpga.rtl.cli`; each adds its
own options and runs its target.
"""

from __future__ import annotations

import argparse
import importlib

#: FPGA target name -> module providing ``add_export_arguments(parser)`` and ``run_export(args) -> int``.
TARGETS = {
    "vitis": "matmulfree.fpga.hls.cli",
    "ecp5": "matmulfree.fpga.rtl.cli",
    "ice40": "matmulfree.fpga.rtl.cli",
}

#: format verb -> (module providing ``add_export_arguments(parser)`` and ``run_export(args) -> int``, help).
FORMATS = {
    "hf": ("matmulfree.commands.hf", "a Hugging Face transformers model folder (AutoModelForCausalLM, AutoTokenizer)"),
    "rwkv4": ("matmulfree.commands.rwkv4",
              "an RWKV checkpoint as an RWKV-4 .pth file for the rwkv package (ternary weights dequantised)"),
}

FPGA_VERB = "fpga"


def with_default_verb(argv: list[str]) -> list[str]:
    """``export CHECKPOINT OUT ...`` -> ``export fpga CHECKPOINT OUT ...`` (the form before format verbs)."""
    if len(argv) >= 2 and argv[0] == "export" and argv[1] not in {*FORMATS, FPGA_VERB, "-h", "--help"}:
        return ["export", FPGA_VERB, *argv[1:]]
    return argv


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
        help="export a checkpoint: transformers folder (hf) or FPGA target (fpga)",
        description="Write a checkpoint in another format. 'hf' writes a transformers model folder; 'fpga' "
        "(also the form without a verb: export CHECKPOINT OUT --target ...) exports a MatMul-free model "
        "to an FPGA target.",
    )
    verbs = p.add_subparsers(dest="format", metavar="FORMAT", required=True)
    for verb, (module_name, help_text) in FORMATS.items():
        module = importlib.import_module(module_name)
        fp = verbs.add_parser(verb, help=help_text, description=module.__doc__.split("\n\n")[0])
        fp.add_argument("checkpoint", help="model directory (config.json + model.safetensors [+ tokenizer])")
        fp.add_argument("out", help="output (hf: a folder, built beside it, then moved; rwkv4: the .pth file)")
        module.add_export_arguments(fp)
        fp.set_defaults(func=module.run_export)
    fpga = verbs.add_parser(
        FPGA_VERB, help="FPGA targets: Vitis HLS C++ (vitis) or RTL + bitstream (ecp5, ice40)",
        description="Export a trained MatMul-free checkpoint: 'vitis' writes a Vitis HLS C++ project "
        "(firmware, weights, testbench, scripts); 'ecp5' / 'ice40' generate RTL with Amaranth and build "
        "a bitstream with the open yowasp tools.",
    )
    fpga.add_argument("checkpoint", help="trained model directory (config.json + model.safetensors)")
    fpga.add_argument("out", help="output folder (created)")
    fpga.add_argument("--target", required=True, choices=sorted(TARGETS), help="export target")
    fpga.add_argument("--clock-mhz", type=float, default=None, help="target clock in MHz")
    for module in _target_modules().values():
        module.add_export_arguments(fpga)
    fpga.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    module = importlib.import_module(TARGETS[args.target])
    return module.run_export(args)
