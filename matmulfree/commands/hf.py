"""``matmulfree export hf CHECKPOINT OUT`` and ``matmulfree import hf DIR OUT``: Hugging Face folders.

The export writes a ``transformers`` folder (``config.json`` with our ``model_type``,
``model.safetensors``, ``generation_config.json``, ``tokenizer.json`` + ``tokenizer_config.json``)
that ``AutoModelForCausalLM`` / ``AutoTokenizer`` open after ``import matmulfree.hf``; the import
writes our checkpoint back from such a folder. Both need the ``[hf]`` extra (transformers).
"""

from __future__ import annotations

import argparse


def _folder_module():
    from matmulfree.errors import CLIError

    try:
        from matmulfree.hf import folder
    except ImportError as e:
        raise CLIError(f"{e} (the Hugging Face formats need: pip install 'matmulfree[hf]')") from None
    return folder


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    """No options beyond CHECKPOINT and OUT."""


def run_export(args: argparse.Namespace) -> int:
    out = _folder_module().export_hf(args.checkpoint, args.out)
    print(f"wrote {out} (transformers folder; open with AutoModelForCausalLM after 'import matmulfree.hf')")
    return 0


def add_import_arguments(parser: argparse.ArgumentParser) -> None:
    """No options beyond DIR and OUT."""


def run_import(args: argparse.Namespace) -> int:
    out = _folder_module().import_hf(args.source, args.out)
    print(f"wrote {out} (matmulfree checkpoint)")
    return 0
