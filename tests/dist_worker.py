"""One rank of a multi-process test, started by ``torch.distributed.run`` from tests/test_distributed.py.

``train RECIPE OUT [--resume] [--kill-at N] [--scales FILE]``: train like ``matmulfree train``; with
``--kill-at`` every rank exits hard (``os._exit``) right after optimizer step ``N``, like a lost node;
``--scales`` records each BitLinear's absmean scale as its forward sees the weight (first forward)
and over the rank's local shard only (``__local__``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def record_scales(trainer, path: str) -> None:
    from matmulfree.layers import BitLinear
    from matmulfree.quant import weight_scale

    seen: dict[str, dict[str, float]] = {}
    rank = trainer.acc.process_index

    def hook(name):
        def fn(module, args):
            if name not in seen:
                w = module.weight
                seen[name] = {"scale": float(weight_scale(w)), "shape": list(w.shape),
                              "dtensor": hasattr(w, "to_local")}
        return fn

    for name, module in trainer.model.named_modules():
        if isinstance(module, BitLinear):
            module.register_forward_pre_hook(hook(name))
            # the shard this rank holds outside the forward
            seen_local = module.weight.to_local() if hasattr(module.weight, "to_local") else module.weight
            seen.setdefault("__local__", {})[name] = float(weight_scale(seen_local))

    def dump(step, loss):
        if step == 1:
            with open(f"{path}.{rank}", "w") as f:
                json.dump(seen, f)

    trainer.on_step = _chain(trainer.on_step, dump)


def _chain(first, second):
    def fn(step, loss):
        if first is not None:
            first(step, loss)
        second(step, loss)
    return fn


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("verb", choices=["train"])
    p.add_argument("recipe")
    p.add_argument("out")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--kill-at", type=int, default=None)
    p.add_argument("--scales", default=None)
    args = p.parse_args(argv)

    from matmulfree.recipe import load_recipe
    from matmulfree.train import Trainer

    kill = None
    if args.kill_at is not None:
        def kill(step, loss):
            if step == args.kill_at:
                sys.stdout.flush()
                os._exit(17)

    trainer = Trainer(load_recipe(args.recipe), args.out, resume=args.resume, on_step=kill)
    if args.scales:
        record_scales(trainer, args.scales)
    trainer.fit()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
