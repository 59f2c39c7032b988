"""Ternary recipe against its Transformer++ twin on the same wall-clock budget, same data split.

1. Probes the step time of both models (``--probe`` optimizer steps each, alternating, on the
   recipes' batch shape; process CPU time, which other jobs disturb less than wall time).
2. Gives each recipe ``steps = budget / step time`` (warm-up scaled with it), so both spend the
   same budget; ``--budget-from-ternary`` sets the budget to the ternary recipe's own step count
   times its probed step time (the shipped comparison: the ternary recipe runs exactly as shipped,
   the twin for the same CPU time); ``--budget-s 0`` keeps both recipes' own step counts.
3. Trains both (one after the other, same corpus and validation split) and prints both final
   validation losses (nats/byte), their ratio and the measured wall times; writes both validation
   curves against elapsed time into one plot.

JSON to ``bench/results/equal_budget.json``, plot to ``docs/img/equal_budget.png``. The machine is
shared with other jobs: wall times are noisy, say so beside any figure. Example::

    OMP_NUM_THREADS=1 python bench/equal_budget.py --budget-from-ternary --probe 20
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import statistics
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from train_step import Setup  # noqa: E402

from matmulfree.recipe import load_recipe  # noqa: E402
from matmulfree.train import train  # noqa: E402


def probe_step_s(names: list[str], overrides: list[str], steps: int) -> dict[str, float]:
    """Median CPU seconds per optimizer step of each recipe's model, stepped alternately."""
    setups = {n: Setup(n, overrides) for n in names}
    times: dict[str, list[float]] = {n: [] for n in names}
    for i in range(steps + 2):
        for n, s in setups.items():
            t = s.step()["step_cpu"]
            if i >= 2:
                times[n].append(t)
    return {n: statistics.median(t) for n, t in times.items()}


def rescaled(base, steps: int, warmup_factor: float = 1.0, evals: int = 6) -> list[str]:
    """Overrides that run recipe ``base`` for ``steps`` optimizer steps: its warm-up scaled with the
    step count (times ``warmup_factor``), ``evals`` evaluations, one checkpoint and one sample at the end."""
    warmup = min(steps - 1, round(base.train.warmup_steps * warmup_factor * steps / base.train.steps))
    every = max(1, steps // evals)
    return [f"train.steps={steps}", f"train.warmup_steps={warmup}", f"eval.every={every}",
            f"checkpoint.every={steps}", f"sample.every={steps}"]


def curve(out: Path) -> list[tuple[float, float]]:
    """(elapsed s, val loss) of a run's log.csv (the elapsed time of the preceding train row)."""
    pts, elapsed = [], 0.0
    with open(out / "log.csv") as f:
        for row in csv.DictReader(f):
            if row["elapsed_s"]:
                elapsed = float(row["elapsed_s"])
            if row["val_loss"]:
                pts.append((elapsed, float(row["val_loss"])))
    return pts


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ternary", default="shakespeare-tiny")
    p.add_argument("--twin", default="shakespeare-tiny-transformer")
    p.add_argument("--budget-s", type=float, default=0.0, help="CPU seconds of training per model (0: recipes' steps)")
    p.add_argument("--budget-from-ternary", action="store_true",
                   help="budget = the ternary recipe's own steps x its probed step time (the shipped comparison)")
    p.add_argument("--probe", type=int, default=10, help="probe steps per model")
    p.add_argument("--set", dest="overrides", action="append", default=[], help="override both recipes")
    p.add_argument("--out", default=str(ROOT / "bench/results/equal_budget.json"))
    p.add_argument("--plot", default=str(ROOT / "docs/img/equal_budget.png"))
    args = p.parse_args()
    names = [args.ternary, args.twin]
    step_s = probe_step_s(names, args.overrides, args.probe)
    if args.budget_from_ternary:
        args.budget_s = load_recipe(args.ternary, args.overrides).train.steps * step_s[args.ternary]
    runs = {}
    with tempfile.TemporaryDirectory(prefix="equal-budget-") as tmp:
        for name in names:
            extra = list(args.overrides)
            base = load_recipe(name, extra)
            steps = base.train.steps
            if args.budget_s > 0:
                steps = max(10, round(args.budget_s / step_s[name]))
                extra += rescaled(base, steps)
            recipe = load_recipe(name, extra)
            out = Path(tmp) / name
            result = train(recipe, out)
            runs[name] = {"steps": steps, "probe_step_cpu_s": step_s[name], "val_loss": result.val_loss,
                          "val_bpb": result.val_bpb, "wall_s": result.wall_time_s, "curve": curve(out)}
    ternary, twin = runs[args.ternary], runs[args.twin]
    ratio = ternary["val_loss"] / twin["val_loss"]
    result = {"bench": "equal_budget", "machine": platform.node(), "torch": torch.__version__,
              "threads": torch.get_num_threads(), "budget_s": args.budget_s, "overrides": args.overrides,
              "note": "2-core CPU shared with other jobs: wall times are noisy",
              "runs": runs, "val_loss_ratio": ratio,
              "step_cost_ratio": ternary["probe_step_cpu_s"] / twin["probe_step_cpu_s"]}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for name, r in runs.items():
        ax.plot(*zip(*r["curve"]), "o-", label=f"{name} ({r['steps']} steps): {r['val_loss']:.3f}")
    ax.set_xlabel("training wall time (s, shared 2-core CPU)")
    ax.set_ylabel("validation loss (nats/byte)")
    ax.set_title(f"equal budget: ternary / twin = {ratio:.3f}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.plot, dpi=110, bbox_inches="tight")
    for name, r in runs.items():
        print(f"{name:<32} steps {r['steps']:>5}  step {r['probe_step_cpu_s'] * 1e3:.0f} ms cpu  "
              f"val {r['val_loss']:.4f} nats/byte  wall {r['wall_s']:.0f} s")
    print(f"validation loss ratio ternary / twin: {ratio:.4f} ({(ratio - 1) * 100:+.1f} %); "
          f"step cost ratio {result['step_cost_ratio']:.2f}x")
    print(f"wrote {args.out} and {args.plot}")


if __name__ == "__main__":
    main()
