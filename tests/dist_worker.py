"""One rank of a multi-process test, started by ``torch.distributed.run`` from tests/test_distributed.py.

``shard SOURCE CACHE OUT``: every rank tokenizes ``SOURCE`` into the token cache ``CACHE`` at the
same moment (the file lock lets one of them do it) and writes to ``OUT.<rank>`` whether it tokenized
and which sequence ids it reads in one epoch (batch 2, accumulation 2).

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


def shard(source: str, cache: str, out: str) -> int:
    import torch.distributed as dist

    from matmulfree.data import ByteTokenizer, PackedSequences, tokens
    from matmulfree.data.sharding import rank_epoch

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    calls = []
    write = tokens._write_tokens
    tokens._write_tokens = lambda *a, **k: (calls.append(1), write(*a, **k))
    dist.barrier()  # start tokenizing together
    tf = tokens.tokenize_split(source, ByteTokenizer(), "train", streaming=source.startswith("hf:"),
                               directory=cache, validation_fraction=0.2)
    seqs = PackedSequences(tf.tokens, 16)
    batch, accum = 2, 2
    steps = len(seqs) // (batch * accum * world)
    ids = rank_epoch(len(seqs), steps, batch, accum, rank, world, seed=7)
    half = rank_epoch(len(seqs), steps - steps // 2, batch, accum, rank, world, seed=7, first_step=steps // 2)
    with open(f"{out}.{rank}", "w") as f:
        json.dump({"tokenized": len(calls), "n": len(seqs), "steps": steps, "ids": ids.tolist(),
                   "resumed_tail": half.tolist(), "path": str(tf.path)}, f)
    dist.destroy_process_group()
    return 0


def main(argv: list[str]) -> int:
    if argv and argv[0] == "shard":
        return shard(*argv[1:4])
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
