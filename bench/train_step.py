"""Where a training step's time goes: the ternary model against its Transformer++ twin.

Builds the models of two recipes (default ``shakespeare-tiny`` and its twin
``shakespeare-tiny-transformer``: same width, depth, GLU width, batch and sequence length), and
times full optimizer steps on random byte sequences, alternating the models step by step so
that both see the same machine load. Each step is split into forward (with the loss), backward
and optimizer (AdamW step + zero_grad). Reported: the median of ``--steps`` steps per model and
the ternary / twin ratio.

For the ternary model the parts of its forward + backward are also timed on their own, at the
shapes of the step (captured with hooks), and given as shares of the step: weight quantisation
(absmean ternary, straight-through), activation quantisation (per-token int8, straight-through),
the RMSNorm inside every BitLinear, the BitLinear matrix products, and the MLGRU scan. These are
the reference PyTorch ops (``matmulfree.quant`` / ``functional``); the ``path`` rows time whole
steps on the plain reference (``MATMULFREE_KERNELS=torch``) and on the default CPU training path
(fused BitLinear and scan, ``matmulfree/cpu_train.py``), side by side in one run.

JSON to ``bench/results/train_step.json``. The machine is shared: run with ``nice -n 10`` and
read the ratios (measured interleaved), not the absolute times; the ``*_cpu_time`` ratios use the
process CPU time of each step, which other jobs on the machine disturb less than wall time. Example::

    OMP_NUM_THREADS=2 nice -n 10 python bench/train_step.py --steps 20
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from matmulfree import backend  # noqa: E402
from matmulfree.functional import linear_recurrence_scan, rms_norm  # noqa: E402
from matmulfree.layers import MLGRU, BitLinear  # noqa: E402
from matmulfree.models import build_model  # noqa: E402
from matmulfree.quant import activation_quantize_ste, ternary_quantize_ste  # noqa: E402
from matmulfree.recipe import load_recipe  # noqa: E402
from matmulfree.train import sequence_loss  # noqa: E402


class Setup:
    """A model, its optimizer and one fixed batch ``(B, L + 1)`` of a recipe."""

    def __init__(self, recipe_name: str, overrides: list[str], compile_model: bool = False) -> None:
        self.recipe = load_recipe(recipe_name, overrides)
        torch.manual_seed(0)
        self.model = build_model(self.recipe.model_config(256))
        self.step_model = torch.compile(self.model) if compile_model else self.model
        t = self.recipe.train
        self.opt = torch.optim.AdamW(self.model.optimizer_groups(t.weight_decay), lr=t.lr, betas=tuple(t.betas))
        g = torch.Generator().manual_seed(1)
        self.batch = torch.randint(0, 256, (t.batch_size, self.recipe.data.seq_len + 1), generator=g)

    def step(self) -> dict[str, float]:
        """One optimizer step, timed by phase (seconds)."""
        self.model.train()
        c0, t0 = time.process_time(), time.perf_counter()
        loss, n = sequence_loss(self.step_model, self.batch)
        loss = loss / n
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        t3, c3 = time.perf_counter(), time.process_time()
        return {"forward": t1 - t0, "backward": t2 - t1, "optimizer": t3 - t2, "step": t3 - t0,
                "step_cpu": c3 - c0}


def median_phases(samples: list[dict[str, float]]) -> dict[str, float]:
    return {k: statistics.median(s[k] for s in samples) for k in samples[0]}


def bench_fn(fn, reps: int) -> float:
    """Median seconds of ``fn()`` over ``reps`` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def component_times(setup: Setup, reps: int) -> dict[str, float]:
    """Seconds per step spent in each reference component (forward + backward), at the step's shapes."""
    shapes: list[tuple] = []
    hooks = []
    for m in setup.model.modules():
        if isinstance(m, BitLinear):
            hooks.append(m.register_forward_hook(lambda mod, inp, out: shapes.append(("bitlinear", mod, inp[0].shape))))
        if isinstance(m, MLGRU):
            hooks.append(m.register_forward_hook(lambda mod, inp, out: shapes.append(("scan", mod, inp[0].shape))))
    with torch.no_grad():
        setup.model(setup.batch[:, :-1])
    for h in hooks:
        h.remove()

    def fwd_bwd(make):
        def run():
            out = make()
            out.backward(torch.ones_like(out))
        return run

    totals = {"weight_quant": 0.0, "act_quant": 0.0, "bitlinear_norm": 0.0, "bitlinear_matmul": 0.0, "scan": 0.0}
    for kind, mod, shape in shapes:
        if kind == "bitlinear":
            x = torch.randn(shape, requires_grad=True)
            w = mod.weight.detach().clone().requires_grad_(True)
            gain = mod.norm.weight.detach().clone().requires_grad_(True)
            xi = torch.round(torch.randn(shape) * 40).clamp(-128, 127).requires_grad_(True)
            wi = torch.randint(-1, 2, tuple(w.shape)).float().requires_grad_(True)
            totals["weight_quant"] += bench_fn(fwd_bwd(lambda w=w: ternary_quantize_ste(w)[0]), reps)
            totals["act_quant"] += bench_fn(fwd_bwd(lambda x=x: activation_quantize_ste(x)[0]), reps)
            totals["bitlinear_norm"] += bench_fn(fwd_bwd(lambda x=x, g=gain: rms_norm(x, g, 1e-6)), reps)
            totals["bitlinear_matmul"] += bench_fn(
                fwd_bwd(lambda xi=xi, wi=wi: torch.nn.functional.linear(xi, wi)), reps)
        else:
            f = torch.rand(shape).requires_grad_(True)
            b = torch.randn(shape).requires_grad_(True)
            totals["scan"] += bench_fn(fwd_bwd(lambda f=f, b=b: linear_recurrence_scan(f, b)), reps)
    return totals


def interleaved(setups: dict[str, tuple[Setup, str]], steps: int, warmup: int) -> dict[str, dict[str, float]]:
    """Median phases per setup, stepping the setups in turn (each under its kernel backend)."""
    samples: dict[str, list] = {name: [] for name in setups}
    for i in range(warmup + steps):
        for name, (setup, kernels) in setups.items():
            backend.set_kernel_backend(kernels)
            phases = setup.step()
            if i >= warmup:
                samples[name].append(phases)
    backend.set_kernel_backend(None)
    return {name: median_phases(s) for name, s in samples.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ternary", default="shakespeare-tiny")
    p.add_argument("--twin", default="shakespeare-tiny-transformer")
    p.add_argument("--set", dest="overrides", action="append", default=[], help="override both recipes")
    p.add_argument("--steps", type=int, default=20, help="timed steps per model (median)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--reps", type=int, default=5, help="repetitions of each component timing")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--compile", action="store_true", help="also time both models under torch.compile")
    p.add_argument("--out", default=str(ROOT / "bench/results/train_step.json"))
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    ternary_ref = Setup(args.ternary, args.overrides)
    ternary = Setup(args.ternary, args.overrides)
    twin = Setup(args.twin, args.overrides)
    setups = {"ternary_reference": (ternary_ref, "torch"), "ternary": (ternary, "auto"), "twin": (twin, "auto")}
    if args.compile:
        setups["ternary_compiled"] = (Setup(args.ternary, args.overrides, compile_model=True), "auto")
        setups["twin_compiled"] = (Setup(args.twin, args.overrides, compile_model=True), "auto")
    phases = interleaved(setups, args.steps, args.warmup)
    backend.set_kernel_backend("torch")
    parts = component_times(ternary_ref, args.reps)
    backend.set_kernel_backend(None)
    step_ref = phases["ternary_reference"]["step"]
    shares = {k: v / step_ref for k, v in parts.items()}
    for k in ("forward", "backward", "optimizer"):
        shares[k] = phases["ternary_reference"][k] / step_ref
    ratios = {"reference_vs_twin": step_ref / phases["twin"]["step"],
              "ternary_vs_twin": phases["ternary"]["step"] / phases["twin"]["step"],
              "reference_vs_twin_cpu_time": phases["ternary_reference"]["step_cpu"] / phases["twin"]["step_cpu"],
              "ternary_vs_twin_cpu_time": phases["ternary"]["step_cpu"] / phases["twin"]["step_cpu"]}
    if args.compile:
        ratios["compiled_ternary_vs_compiled_twin"] = (phases["ternary_compiled"]["step"]
                                                       / phases["twin_compiled"]["step"])
    result = {
        "bench": "train_step", "ternary": args.ternary, "twin": args.twin, "overrides": args.overrides,
        "steps": args.steps, "threads": torch.get_num_threads(), "machine": platform.node(),
        "torch": torch.__version__, "batch": list(ternary.batch.shape),
        "note": "2-core CPU shared with other jobs: absolute times are noisy; models stepped interleaved",
        "median_s": phases, "ratios": ratios,
        "reference_component_s": parts, "reference_shares_of_step": shares,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    for name, ph in phases.items():
        print(f"{name:<18} step {ph['step'] * 1e3:8.1f} ms, cpu {ph['step_cpu'] * 1e3:8.1f} ms  "
              f"(fwd {ph['forward'] * 1e3:.1f}, "
              f"bwd {ph['backward'] * 1e3:.1f}, opt {ph['optimizer'] * 1e3:.1f})")
    print("reference ternary step, shares: " + ", ".join(f"{k} {v:.0%}" for k, v in shares.items()))
    for k, v in ratios.items():
        print(f"{k}: {v:.2f}x")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
