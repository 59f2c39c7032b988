"""Batch study: final validation loss against the effective batch at a fixed token budget.

The effective batch is ``micro-batch × grad_accum × processes`` sequences. Every run sees the
same number of training tokens (``--tokens``), so a larger batch takes fewer optimizer steps.
The learning rate follows the square-root rule for Adam-type optimizers,
``lr(B) = lr_ref × sqrt(B / B_ref)``: each line of the plot is one reference LR ``lr_ref`` (at
``B_ref = --ref-batch`` sequences), scaled to every batch. Warm-up is 10 % of each run's steps;
the schedule is the recipe's (``cosine-halved`` for the ternary model).

Batches up to ``--micro`` sequences run as one micro-batch; larger ones accumulate micro-batches
of ``--micro`` (exact, see ``matmulfree/accumulate.py``). ``--processes 2`` adds runs under
``torch.distributed.run`` with two CPU processes at the batches that allow it (same effective
batch, half the accumulation), to show that processes count like accumulation.

Writes ``bench/results/batch_study.json`` and the plot ``docs/img/batch_study.png``. On the
2-core machine the default sweep (a 64-wide 2-block model) takes a few minutes; run it with
``nice -n 10``. Example::

    nice -n 10 python bench/batch_study.py
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from matmulfree.recipe import recipe_from_dict  # noqa: E402
from matmulfree.train import train  # noqa: E402


def recipe_for(args, batch: int, lr_ref: float, processes: int = 1) -> dict:
    per_process = batch // processes
    micro = min(args.micro, per_process)
    if per_process % micro:
        raise ValueError(f"effective batch {batch} is not micro {micro} x accumulation x {processes} processes")
    steps = max(2, args.tokens // (batch * args.seq_len))
    return {
        "name": f"batch-{batch}-lr-{lr_ref:g}-p{processes}",
        "model": {"architecture": args.architecture, "d_model": args.d_model, "n_layers": args.n_layers,
                  "intermediate_size": 3 * args.d_model, "max_seq_len": args.seq_len},
        "data": {"source": args.source, "tokenizer": "bytes", "seq_len": args.seq_len,
                 "max_validation_tokens": 200_000},
        "train": {"steps": steps, "batch_size": micro, "grad_accum": per_process // micro,
                  "lr": lr_ref * math.sqrt(batch / args.ref_batch), "warmup_steps": max(1, steps // 10),
                  "schedule": args.schedule, "weight_decay": 0.1, "seed": args.seed, "threads": 1},
        "eval": {"every": 0, "batches": args.eval_batches, "batch_size": 32},
        "sample": {"every": 0, "max_new_tokens": 1},
        "checkpoint": {"every": 0, "keep": 1},
        "log": {"every": max(1, steps // 4), "progress": False, "tensorboard": False},
    }


def run_one(args, recipe: dict, processes: int, workdir: Path) -> dict:
    out = workdir / recipe["name"]
    t0 = time.perf_counter()
    if processes == 1:
        result = train(recipe_from_dict(recipe, recipe["name"]), out)
        val = result.val_loss
    else:
        path = workdir / f"{recipe['name']}.yaml"
        path.write_text(yaml.safe_dump(recipe))
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
               "--master_port", "29533", "-m", "matmulfree.cli", "train", str(path), "--out", str(out)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        if proc.returncode:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
        val = json.loads((out / "metrics.json").read_text())["val_loss"]
    t = recipe["train"]
    return {"batch": t["batch_size"] * t["grad_accum"] * processes, "micro": t["batch_size"],
            "grad_accum": t["grad_accum"], "processes": processes, "steps": t["steps"], "lr": t["lr"],
            "tokens": t["steps"] * t["batch_size"] * t["grad_accum"] * processes * args.seq_len,
            "val_loss": val, "wall_s": time.perf_counter() - t0}


def plot(rows: list[dict], lr_refs: list[float], args, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for lr_ref in lr_refs:
        pts = sorted((r["batch"], r["val_loss"]) for r in rows if r["lr_ref"] == lr_ref and r["processes"] == 1)
        ax.plot(*zip(*pts), "o-", label=f"lr {lr_ref:g} at batch {args.ref_batch} (sqrt rule)")
        ddp = [(r["batch"], r["val_loss"]) for r in rows if r["lr_ref"] == lr_ref and r["processes"] > 1]
        if ddp:
            ax.plot(*zip(*ddp), "kx", ms=9)
    if any(r["processes"] > 1 for r in rows):
        ax.plot([], [], "kx", label="same batch over 2 processes")
    ax.set_xscale("log", base=2)
    ax.set_xlabel(f"effective batch (sequences of {args.seq_len} tokens)")
    ax.set_ylabel("final validation loss (nats/byte)")
    ax.set_title(f"{args.architecture}, {args.tokens / 1e6:.2f} M training tokens per run")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--architecture", default="matmulfree")
    p.add_argument("--source", default="shakespeare")
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--n-layers", type=int, default=2)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--tokens", type=int, default=196_608, help="training tokens per run")
    p.add_argument("--batches", default="4,8,16,32,64", help="effective batches (sequences)")
    p.add_argument("--lrs", default="1e-3,3e-3,1e-2", help="reference learning rates at --ref-batch")
    p.add_argument("--ref-batch", type=int, default=16)
    p.add_argument("--micro", type=int, default=8, help="largest micro-batch; larger batches accumulate")
    p.add_argument("--processes", type=int, default=1, help="also run each batch >= 2 micro over this many processes")
    p.add_argument("--schedule", default="cosine-halved")
    p.add_argument("--eval-batches", type=int, default=16)
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--out", default=str(ROOT / "bench/results/batch_study.json"))
    p.add_argument("--plot", default=str(ROOT / "docs/img/batch_study.png"))
    args = p.parse_args()
    torch.set_num_threads(1)
    batches = [int(b) for b in args.batches.split(",")]
    lr_refs = [float(x) for x in args.lrs.split(",")]
    rows = []
    with tempfile.TemporaryDirectory(prefix="batch-study-") as tmp:
        for lr_ref in lr_refs:
            for batch in batches:
                for procs in sorted({1, args.processes}):
                    if procs > 1 and (batch % procs or batch // procs < args.micro):
                        continue
                    recipe = recipe_for(args, batch, lr_ref, procs)
                    row = {"lr_ref": lr_ref, **run_one(args, recipe, procs, Path(tmp))}
                    rows.append(row)
                    print(f"batch {row['batch']:>4} (micro {row['micro']} x accum {row['grad_accum']} x "
                          f"{procs} proc)  lr {row['lr']:.2e}  steps {row['steps']:>4}  "
                          f"val {row['val_loss']:.4f}  {row['wall_s']:.0f} s", flush=True)
    best = min(rows, key=lambda r: r["val_loss"])
    result = {
        "bench": "batch_study", "machine": platform.node(), "torch": torch.__version__,
        "note": "2-core CPU shared with other jobs: wall times are noisy, losses are not",
        "lr_rule": "lr = lr_ref * sqrt(batch / ref_batch)", "ref_batch": args.ref_batch,
        "model": {"architecture": args.architecture, "d_model": args.d_model, "n_layers": args.n_layers},
        "seq_len": args.seq_len, "tokens_per_run": args.tokens, "schedule": args.schedule, "rows": rows,
        "best": best,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    plot(rows, lr_refs, args, Path(args.plot))
    print(f"best: batch {best['batch']} at lr {best['lr']:.2e} (ref {best['lr_ref']:g}): val {best['val_loss']:.4f}")
    print(f"wrote {args.out} and {args.plot}")


if __name__ == "__main__":
    main()
