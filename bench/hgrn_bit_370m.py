"""A full-size (370M-shape) hgrn_bit release through the converter and every CPU tool, in one run.

    # make the random release with the paper's code (not committed, ~1.5 GB):
    PYTHONPATH=/work/ext/mmfreelm TRITON_INTERPRET=1 python tests/fixtures/hgrn_bit/make_fixture.py \\
        /work/ext/mmfreelm --size 370m --out /tmp/hg370m
    python bench/hgrn_bit_370m.py /tmp/hg370m/lb --out-dir /tmp/hg370m_converted

Measures, each command in its own process (wall time and peak resident memory from
``resource.getrusage(RUSAGE_CHILDREN)`` of that process alone):

* ``matmulfree convert hgrn-bit SRC OUT --packed``: conversion time and peak memory;
* a word-level ``tokenizer.json`` of the release's vocabulary is written into the release folder
  when it has none (a random release has no real tokenizer; the converter carries it over);
* ``matmulfree info OUT --json``, ``matmulfree generate OUT --packed`` (greedy, C engine),
  ``matmulfree eval OUT --packed`` (a few hundred tokens of a local text): exit status, time, memory;
* CPU decode tokens/s of the converted model, batch 1, greedy, interleaved round-robin in this
  process: the packed decoder (``PackedCPUDecoder``, 2-bit weights, exact integer products), the
  whole-step C engine (``MLGRUEngine``, packed) and the dense fp32 twin (``DenseCPUDecoder``,
  weights ``W_q / s_w``), with the packed/fp32 ratios.

Results go to ``bench/results/hgrn_bit_370m.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from matmulfree import load_model  # noqa: E402
from matmulfree.energy.targets import StepRunner  # noqa: E402
from matmulfree.inference.cpu import DenseCPUDecoder, PackedCPUDecoder  # noqa: E402
from matmulfree.inference.cpu_mlgru import MLGRUEngine  # noqa: E402

#: eval text in the stand-in tokenizer's words (``w<id>``), ~1500 tokens
TEXT = " ".join(f"w{(i * 7919) % 32000}" for i in range(1500))


def run_measured(cmd: list[str]) -> dict:
    """Run ``cmd`` in a child process that reports its own wall time and peak RSS."""
    probe = ("import resource, subprocess, sys, time, json; t = time.perf_counter(); "
             "p = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
             "r = resource.getrusage(resource.RUSAGE_CHILDREN); "
             "print(json.dumps({'rc': p.returncode, 'seconds': time.perf_counter() - t, "
             "'peak_rss_mib': r.ru_maxrss / 1024, 'stdout': p.stdout[-2000:], 'stderr': p.stderr[-2000:]}))")
    out = subprocess.run([sys.executable, "-c", probe, *cmd], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "matmulfree.cli", *args]


def decode_speed(ckpt: Path, tokens: int, repeats: int, threads: int) -> dict:
    model = load_model(ckpt, packed=True).eval().pack()
    ids = torch.randint(0, model.config.vocab_size, (1, 16), generator=torch.Generator().manual_seed(0))
    packed, dense = PackedCPUDecoder(model, threads=threads), DenseCPUDecoder(model)
    engine = MLGRUEngine(model, threads=threads)
    runners = {"packed": StepRunner(packed.prefill, packed.step), "engine": StepRunner(engine.prefill, engine.step),
               "dense_fp32": StepRunner(dense.prefill, dense.step)}  # fmt: skip
    per = {k: [] for k in runners}
    for _ in range(repeats):
        for name, r in runners.items():
            r.start(ids)
            r.advance(2)
            t0 = time.perf_counter()
            r.advance(tokens)
            per[name].append(tokens / (time.perf_counter() - t0))
    med = {k: statistics.median(v) for k, v in per.items()}
    return {"tokens_per_s": med, "tokens_per_s_all": per, "timed_tokens_per_repeat": tokens, "repeats": repeats,
            "packed_backend": packed.backend, "threads": threads,
            "packed_over_fp32": med["packed"] / med["dense_fp32"],
            "engine_over_fp32": med["engine"] / med["dense_fp32"],
            "weight_bytes_per_step": {"packed": packed.weight_bytes(), "engine": engine.weight_bytes(),
                                      "dense_fp32": dense.weight_bytes()}}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("release", type=Path, help="hgrn_bit release folder (made by make_fixture.py --size 370m)")
    ap.add_argument("--out-dir", type=Path, default=Path("/tmp/hgrn_bit_370m_converted"))
    ap.add_argument("--tokens", type=int, default=16, help="timed decode tokens per repeat")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="threads (default 1: the machine is shared)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "hgrn_bit_370m.json")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    torch.set_num_threads(args.threads)
    if args.out_dir.exists():
        shutil.rmtree(args.out_dir)
    load0 = os.getloadavg()
    if not (args.release / "tokenizer.json").is_file():  # stand-in for the release's own tokenizer.json
        from tokenizers import Tokenizer, models, pre_tokenizers

        vocab = json.loads((args.release / "config.json").read_text())["vocab_size"]
        tok = Tokenizer(models.WordLevel({f"w{i}": i for i in range(vocab)}, unk_token="w0"))
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
        tok.save(str(args.release / "tokenizer.json"))
    steps = {}
    steps["convert"] = run_measured(cli("convert", "hgrn-bit", str(args.release), str(args.out_dir), "--packed"))
    print(f"convert: rc {steps['convert']['rc']}, {steps['convert']['seconds']:.1f} s, "
          f"peak {steps['convert']['peak_rss_mib']:.0f} MiB", flush=True)
    if steps["convert"]["rc"]:
        raise SystemExit(steps["convert"]["stderr"])
    text = args.out_dir.parent / "hgrn_bit_bench.txt"
    text.write_text(TEXT)
    steps["info"] = run_measured(cli("info", str(args.out_dir), "--json"))
    steps["generate"] = run_measured(cli("generate", str(args.out_dir), "--packed", "--prompt", "w1 w2 w3 w4",
                                         "--max-new-tokens", "16", "--temperature", "0", "--threads",
                                         str(args.threads)))  # fmt: skip
    steps["eval"] = run_measured(cli("eval", str(args.out_dir), "--packed", "--data", f"text:{text}", "--split",
                                     "train", "--seq-len", "128", "--batch-size", "2", "--max-tokens", "512",
                                     "--json"))  # fmt: skip
    for name in ("info", "generate", "eval"):
        s = steps[name]
        print(f"{name}: rc {s['rc']}, {s['seconds']:.1f} s, peak {s['peak_rss_mib']:.0f} MiB", flush=True)
    speed = decode_speed(args.out_dir, args.tokens, args.repeats, args.threads)
    t = speed["tokens_per_s"]
    print(f"decode tok/s: packed {t['packed']:.2f}, C engine {t['engine']:.2f}, dense fp32 {t['dense_fp32']:.2f}; "
          f"packed/fp32 {speed['packed_over_fp32']:.2f}x, engine/fp32 {speed['engine_over_fp32']:.2f}x", flush=True)
    result = {"release": str(args.release), "release_bytes": sum(p.stat().st_size for p in args.release.iterdir()),
              "steps": steps, "decode": speed,
              "machine": {"cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
                          "threads": args.threads, "torch": torch.__version__, "load_average_before": load0,
                          "load_average_after": os.getloadavg(), "note": "shared 2-core machine, noisy"},
              "date": time.strftime("%Y-%m-%d %H:%M:%S")}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
