"""CPU engine decode per dispatch path, side by side in one run: every path this CPU runs (e.g. the
int8 ``avx2`` kernel and the look-up-table ``avx2-lut`` one), at each thread count, round-robin, plus
the STREAM triad over the same footprint measured in the same run.

    python bench/cpu_paths.py                         # 370m preset, threads 1 2, 64 tokens, 5 repeats
    python bench/cpu_paths.py --paths avx2 avx2-lut --threads 1 --tokens 32 --repeats 3

Per path and thread count: the median over ``--repeats`` of greedy decode tokens/s (batch 1, after an
8-token prefill and 4 warm-up steps) by wall clock and, at one thread, by the thread's CPU time
(less sensitive to other processes on a shared machine); the ratio to the first path; the
fraction of the triad (weight bytes per token x tokens/s / triad bandwidth). Writes
bench/results/cpu_paths.json.
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _membw import bandwidth  # noqa: E402

from matmulfree import build_model, preset  # noqa: E402
from matmulfree.checkpoint import atomic_write_text  # noqa: E402
from matmulfree.inference import ckernel  # noqa: E402
from matmulfree.inference.cpu_mlgru import MLGRUEngine  # noqa: E402


def time_decode(engine: MLGRUEngine, prompt: torch.Tensor, tokens: int) -> tuple[float, float]:
    """(wall tokens/s, thread-CPU tokens/s) of ``tokens`` greedy steps."""
    logits, state = engine.prefill(prompt)
    tok = logits.argmax(-1)
    for _ in range(4):
        logits, state = engine.step(tok, state)
        tok = logits.argmax(-1)
    w0, c0 = time.perf_counter(), time.thread_time()
    for _ in range(tokens):
        logits, state = engine.step(tok, state)
        tok = logits.argmax(-1)
    return tokens / (time.perf_counter() - w0), tokens / max(time.thread_time() - c0, 1e-9)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="370m")
    ap.add_argument("--paths", nargs="+", default=None, help="default: every path this CPU runs except scalar")
    ap.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "cpu_paths.json"))
    args = ap.parse_args()
    kernel, reason = ckernel.load()
    if kernel is None:
        raise SystemExit(f"cpu_paths.py: the C engine is unavailable here: {reason}")
    paths = args.paths or [p for p in kernel.supported_paths() if p != "scalar"]
    for p in paths:
        kernel.check_path(p)
    torch.manual_seed(0)
    model = build_model(preset(args.preset)).eval().pack()
    prompt = torch.randint(0, model.config.vocab_size, (1, 8))
    engines = {(p, t): MLGRUEngine(model, threads=t, path=p) for p in paths for t in args.threads}
    wbytes = next(iter(engines.values())).weight_bytes()
    wall: dict = {k: [] for k in engines}
    cpu: dict = {k: [] for k in engines}
    for _ in range(args.repeats):
        for key, eng in engines.items():
            w, c = time_decode(eng, prompt, args.tokens)
            wall[key].append(w)
            cpu[key].append(c)
    triad = {t: bandwidth(wbytes, t) for t in args.threads}
    rows = []
    for t in args.threads:
        base = statistics.median(wall[(paths[0], t)])
        base_cpu = statistics.median(cpu[(paths[0], t)])
        for p in paths:
            tps = statistics.median(wall[(p, t)])
            row = {"path": p, "threads": t, "tokens_per_s": tps, "ratio_to_first_path": tps / base,
                   "weight_bytes_per_token": wbytes, "triad_bytes_per_s": triad[t],
                   "fraction_of_triad": wbytes * tps / triad[t], "all_tokens_per_s": wall[(p, t)]}  # fmt: skip
            if t == 1:
                row["cpu_time_tokens_per_s"] = statistics.median(cpu[(p, t)])
                row["cpu_time_ratio_to_first_path"] = row["cpu_time_tokens_per_s"] / base_cpu
            rows.append(row)
            extra = f", CPU-time {row['cpu_time_tokens_per_s']:.1f} tok/s" if t == 1 else ""
            print(f"threads {t} {p:>10}: {tps:6.1f} tok/s (x{tps / base:.2f} of {paths[0]}){extra}, "
                  f"{row['fraction_of_triad']:.0%} of the {triad[t] / 1e9:.2f} GB/s triad")  # fmt: skip
    payload = {"benchmark": "cpu_paths", "date": time.strftime("%Y-%m-%d %H:%M:%S"), "preset": args.preset,
               "cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
               "tokens": args.tokens, "repeats": args.repeats, "rows": rows}  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(args.out), json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
