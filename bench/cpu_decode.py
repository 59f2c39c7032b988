"""CPU decode speed: packed ternary (int8 activations, exact integer products) vs the same model with
dense fp32 weights, measured side by side in one run, interleaved, at batch B.

    python bench/cpu_decode.py                                   # presets fpga, small, 370m
    python bench/cpu_decode.py --models preset:fpga runs/shakespeare-fpga/final --threads 2

Per model it times (greedy decoding after a prompt and warm-up steps):
  packed    matmulfree.energy.PackedCPUDecoder (C 2-bit kernel, or FBGEMM int8 / fp32 fallback)
  int8      the same decoder forced onto FBGEMM int8 (no C kernel), for reference
  dense     matmulfree.energy.DenseCPUDecoder: fp32 weights W_q / s_w and F.linear (the baseline)
  reference MatMulFreeLM.step on the packed model (BitLinear.forward_reference), fewer tokens
and checks that the packed decoder's logits equal the reference's (torch.equal) for a few steps.
Variants are run round-robin ``--repeats`` times and the median tokens/s is reported, with the
packed/dense ratio. Results go to bench/results/cpu_decode.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from matmulfree import build_model, load_model, preset  # noqa: E402
from matmulfree.energy.targets import StepRunner, model_runner  # noqa: E402
from matmulfree.inference.cpu import DenseCPUDecoder, PackedCPUDecoder  # noqa: E402


def open_model(spec: str, seed: int):
    """A packed MatMul-free model: ``preset:NAME`` (random weights) or a model directory."""
    if spec.startswith("preset:"):
        torch.manual_seed(seed)
        return build_model(preset(spec.split(":")[1])).eval().pack()
    return load_model(spec, packed=True).eval().pack()


def time_runner(runner, ids, warmup: int, n: int) -> float:
    runner.start(ids)
    runner.advance(warmup)
    t0 = time.perf_counter()
    runner.advance(n)
    return n * ids.shape[0] / (time.perf_counter() - t0)


@torch.no_grad()
def exact_check(model, packed: PackedCPUDecoder, ids, steps: int) -> bool:
    out = model(ids)
    ref_logits, ref_state = out.logits[:, -1], out.state
    state = [h.clone() for h in ref_state]
    tok = ref_logits.argmax(-1)
    for _ in range(steps):
        a, ref_state = model.step(tok, ref_state)
        b, state = packed.step(tok, state)
        if not torch.equal(a, b) or not all(torch.equal(x, y) for x, y in zip(ref_state, state)):
            return False
        tok = a.argmax(-1)
    return True


def bench_model(spec: str, args) -> dict:
    t0 = time.perf_counter()
    model = open_model(spec, args.seed)
    build_s = time.perf_counter() - t0
    cfg = model.config
    g = torch.Generator().manual_seed(args.seed)
    ids = torch.randint(0, cfg.vocab_size, (args.batch, args.context), generator=g)
    packed = PackedCPUDecoder(model, args.backend)
    dense = DenseCPUDecoder(model)
    runners = {"packed": StepRunner(packed.prefill, packed.step), "dense": StepRunner(dense.prefill, dense.step)}
    if args.int8 and packed.backend != "int8":
        int8 = PackedCPUDecoder(model, "int8")
        runners["int8"] = StepRunner(int8.prefill, int8.step)
    big = cfg.d_model >= 1024
    tokens = args.tokens if not big else max(4, args.tokens // 4)
    results: dict[str, list[float]] = {k: [] for k in runners}
    for _ in range(args.repeats):
        for name, runner in runners.items():
            results[name].append(time_runner(runner, ids, args.warmup, tokens))
    ref_tps = None
    if not args.no_reference:
        ref_tps = time_runner(model_runner(model), ids, 1, 2 if big else max(4, tokens // 4))
    exact = exact_check(model, packed, ids, 3 if big else 8)
    med = {k: statistics.median(v) for k, v in results.items()}
    ratios = [p / d for p, d in zip(results["packed"], results["dense"])]
    row = {
        "model": spec, "config": cfg.to_dict(), "batch": args.batch, "context": args.context,
        "timed_tokens_per_repeat": tokens, "repeats": args.repeats, "threads": torch.get_num_threads(),
        "packed_backend": packed.backend, "packed_fallback_reason": packed.fallback_reason,
        "tokens_per_s": med, "tokens_per_s_all": results, "reference_tokens_per_s": ref_tps,
        "packed_over_dense": med["packed"] / med["dense"], "packed_over_dense_per_repeat": ratios,
        "packed_equals_reference": exact,
        "weight_bytes_per_step": {"packed": packed.weight_bytes(), "dense": dense.weight_bytes()},
        "build_seconds": build_s,
    }  # fmt: skip
    if "int8" in med:
        row["int8_over_dense"] = med["int8"] / med["dense"]
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["preset:fpga", "preset:small", "preset:370m"],
                    help="preset:NAME or model directories")  # fmt: skip
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--context", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=64, help="timed tokens per repeat (/4 for d_model >= 1024)")
    ap.add_argument("--warmup", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1: the 2 cores are shared)")
    ap.add_argument("--backend", default="auto", choices=["auto", "c", "int8", "float"])
    ap.add_argument("--int8", action="store_true", help="also time the FBGEMM int8 backend")
    ap.add_argument("--no-reference", action="store_true", help="skip timing the reference step")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "cpu_decode.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    load0 = os.getloadavg()
    rows = []
    for spec in args.models:
        row = bench_model(spec, args)
        rows.append(row)
        t = row["tokens_per_s"]
        extra = f", int8 {t['int8']:.1f}" if "int8" in t else ""
        ref = row["reference_tokens_per_s"]
        print(f"{spec}: packed ({row['packed_backend']}) {t['packed']:.1f} tok/s, dense fp32 {t['dense']:.1f} tok/s"
              f"{extra}, reference {'-' if ref is None else f'{ref:.1f}'} tok/s; packed/dense "
              f"{row['packed_over_dense']:.2f}x; packed == reference: {row['packed_equals_reference']}", flush=True)
    result = {"machine": {"cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
                          "threads": args.threads, "torch": torch.__version__, "load_average_before": load0,
                          "load_average_after": os.getloadavg()},
              "date": time.strftime("%Y-%m-%d %H:%M:%S"), "rows": rows}  # fmt: skip
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
