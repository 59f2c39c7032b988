"""``matmulfree train RECIPE``: train a model from a recipe (see :mod:`matmulfree.train`)."""

from __future__ import annotations

import argparse

from matmulfree.warm_start import RESIZE_MODES


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="train a model from a recipe",
        description="Train a model from a YAML recipe (a file, or the name of a shipped recipe such as "
        "shakespeare-tiny). Runs on one CPU or GPU, or on several processes under `accelerate launch`. "
        "Writes checkpoints, logs, samples and the final model under the output folder.",
    )
    p.add_argument("recipe", help="recipe file or shipped recipe name (see recipes/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a recipe key, value parsed as YAML (repeatable), e.g. --set train.steps=100")
    p.add_argument("--out", default=None, help="run folder (default: the recipe's 'out', else runs/<recipe name>)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the latest checkpoint in the run folder (same recipe and global batch)")
    p.add_argument("--init-from", default=None, metavar="CKPT",
                   help="warm start: copy every tensor of CKPT (a model folder such as runs/X/final, a checkpoint "
                   "folder or a run folder) whose name and shape match, print the table of loaded / new / "
                   "dropped / resized tensors; fresh optimizer and schedule (unlike --resume)")
    p.add_argument("--init-from-allow-resize", default=None, choices=RESIZE_MODES, metavar="MODE",
                   help="what to do with tensors whose shape changed (default: stop with an error): 'overlap' "
                   "copies the overlapping corner and keeps the fresh initialisation elsewhere, 'fresh' keeps "
                   "the fresh initialisation")
    p.add_argument("--print-recipe", action="store_true", help="print the resolved recipe as YAML and exit")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import yaml

    from matmulfree.data import DataError
    from matmulfree.distributed import StrategyError
    from matmulfree.errors import CLIError
    from matmulfree.recipe import load_recipe
    from matmulfree.train import TrainingError, train

    recipe = load_recipe(args.recipe, args.overrides)
    if args.print_recipe:
        print(yaml.safe_dump(recipe.to_dict(), sort_keys=False), end="")
        return 0
    try:
        train(recipe, args.out, resume=args.resume, init_from=args.init_from,
              allow_resize=args.init_from_allow_resize)
    except (TrainingError, DataError, StrategyError) as e:
        raise CLIError(str(e)) from None
    return 0
