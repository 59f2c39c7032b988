"""``matmulfree import FORMAT SOURCE OUT``: make one of our checkpoints from another tool's format.

Formats are verbs; ``hf`` reads a ``transformers`` folder written by ``matmulfree export hf``
(:mod:`matmulfree.commands.hf`).
"""

from __future__ import annotations

import argparse
import importlib

#: format verb -> (module providing ``add_import_arguments(parser)`` and ``run_import(args) -> int``, help).
FORMATS = {
    "hf": ("matmulfree.commands.hf", "a transformers model folder of one of our architectures"),
}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("import", help="make a checkpoint from another format (hf)",
                       description="Write one of our checkpoints (config.json, model.safetensors, tokenizer) "
                       "from a folder in another format.")
    verbs = p.add_subparsers(dest="format", metavar="FORMAT", required=True)
    for verb, (module_name, help_text) in FORMATS.items():
        module = importlib.import_module(module_name)
        fp = verbs.add_parser(verb, help=help_text, description=module.__doc__.split("\n\n")[0])
        fp.add_argument("source", help="folder to read")
        fp.add_argument("out", help="checkpoint folder to write (built beside it, then moved into place)")
        module.add_import_arguments(fp)
        fp.set_defaults(func=module.run_import)
