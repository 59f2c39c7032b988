"""The ``matmulfree`` command line. Each verb lives in its own module exposing
``register(subparsers)``, which adds a parser whose ``func(args) -> int`` runs the verb."""

from __future__ import annotations

import argparse
import importlib
import sys

from .errors import CLIError

#: Modules that provide CLI verbs, in the order ``--help`` lists them.
COMMAND_MODULES = [
    "matmulfree.commands.train",
    "matmulfree.commands.generate",
    "matmulfree.commands.eval",
    "matmulfree.commands.info",
    "matmulfree.commands.export",
    "matmulfree.commands.convert",
    "matmulfree.commands.importer",
    "matmulfree.commands.fpga",
    "matmulfree.commands.power",
    "matmulfree.commands.checkpoint",
    "matmulfree.commands.plan",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="matmulfree",
        description="Train, run, export and measure ternary MatMul-free language models.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:  # verb not provided in this build
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .commands.export import with_default_verb

    parser = build_parser()
    args = parser.parse_args(with_default_verb(list(sys.argv[1:] if argv is None else argv)))
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    from .checkpoint import CheckpointError
    from .config import ConfigError

    try:
        return int(args.func(args) or 0)
    except (CLIError, CheckpointError, ConfigError, FileNotFoundError) as e:
        print(f"matmulfree {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
