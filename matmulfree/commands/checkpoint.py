"""``matmulfree checkpoint consolidate RUN_DIR OUT``: one model directory from a (sharded) training checkpoint."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("checkpoint", help="work with training checkpoints",
                       description="Work with the checkpoints a training run writes under RUN_DIR/checkpoints/.")
    verbs = p.add_subparsers(dest="checkpoint_command", metavar="VERB", required=True)
    c = verbs.add_parser(
        "consolidate", help="join a sharded (FSDP / DeepSpeed) or plain checkpoint into one model.safetensors",
        description="Read the latest checkpoint of RUN_DIR (or the checkpoint folder given) in one process - the "
        "FSDP shards of every rank, DeepSpeed ZeRO partitions or a plain model.safetensors - and write "
        "OUT/config.json and OUT/model.safetensors (fp32 latent weights) plus the run's tokenizer, ready for "
        "generate, eval and export.")
    c.add_argument("run_dir", metavar="RUN_DIR",
                   help="run folder (its latest checkpoint) or a checkpoints/step-N folder")
    c.add_argument("out", metavar="OUT", help="model directory to write")
    c.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from matmulfree.consolidate import consolidate, resolve_checkpoint

    source = resolve_checkpoint(args.run_dir)
    out = consolidate(source, args.out)
    print(f"consolidated {source} -> {out}")
    return 0
