"""``matmulfree plan RECIPE --gpus N --gpu-memory 80GB``: memory per GPU before renting the GPUs."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "plan", help="memory per GPU of a recipe on N GPUs (parameters, gradients, optimizer, activations)",
        description="Estimate the memory each GPU needs to train RECIPE on N GPUs: parameters, gradients, "
        "optimizer state and the activations of one micro-batch (traced on the meta device), with a warning "
        "where it will not fit. See docs/distributed.md for the formulas.")
    p.add_argument("recipe", help="recipe file or shipped recipe name")
    p.add_argument("--gpus", type=int, default=8, help="number of GPUs (processes) in the run")
    p.add_argument("--gpu-memory", default="80GB", help="memory of one GPU, e.g. 80GB, 40GB, 24GiB")
    p.add_argument("--strategy", choices=["ddp", "fsdp", "deepspeed"], default=None,
                   help="override the recipe's distributed.strategy")
    p.add_argument("--batch-size", type=int, default=None,
                   help="override train.batch_size (sequences per micro-batch per GPU)")
    p.add_argument("--vocab-size", type=int, default=32000,
                   help="tokenizer vocabulary when the recipe does not fix model.vocab_size")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from matmulfree.errors import CLIError
    from matmulfree.plan import parse_memory, plan
    from matmulfree.recipe import load_recipe

    overrides = [f"train.batch_size={args.batch_size}"] if args.batch_size else []
    recipe = load_recipe(args.recipe, overrides)
    try:
        result = plan(recipe, args.gpus, parse_memory(args.gpu_memory), args.strategy, args.vocab_size)
    except ValueError as e:
        raise CLIError(str(e)) from None
    print("\n".join(result.lines()))
    return 0 if result.fits else 1
