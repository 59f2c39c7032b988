"""GPU decode side by side, in one run: MatMul-free packed decoding with the fused 4-launch-per-layer step
(FusedMatMulFreeDecoder) and the 8-launch one (MatMulFreeDecoder), both captured in CUDA graphs, against
Transformer++ bf16 with its static KV cache (TransformerDecoder, CUDA graph), per size and batch.
Random weights (speed does not depend on them). GPU only.

    python bench/gpu_decode.py                                  # 370m 1.3b 2.7b, batch 1 and 8
    python bench/gpu_decode.py --presets 370m --batch 1 --context 512 --tokens 256 --out FILE

Per (preset, batch) and decoder: greedy tokens/s (``batch x steps / s``, the graph replayed back to
back), bytes read per step (packed weights; for the Transformer its bf16 weights plus the K/V cache
of the filled context), and the fraction of the bandwidth bound = bytes per step x steps/s ÷ the
device's copy bandwidth measured in the same run (and ÷ the H100 SXM datasheet 3.35 TB/s). The
issue-21 goal: 370M at batch 1 >= 5,000 tokens/s on an H100/H200. JSON: bench/results/gpu_decode.json.
"""

from __future__ import annotations

import argparse
import gc
import time

import torch
from _kbench import H100_BANDWIDTH, copy_bandwidth, device_info, require_cuda, save


def steps_per_s(decoder, n: int) -> float:
    decoder.replay(3)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    decoder.replay(n)
    end.record()
    end.synchronize()
    return n / (start.elapsed_time(end) * 1e-3)


def _row(kind: str, name: str, batch: int, sps: float, nbytes: int, bandwidth: float, **extra) -> dict:
    return {"decoder": kind, "preset": name, "batch": batch, "tokens_per_s": sps * batch, "steps_per_s": sps,
            "bytes_per_step": nbytes, "bound_fraction_measured_bw": nbytes * sps / bandwidth,
            "bound_fraction_h100_datasheet": nbytes * sps / H100_BANDWIDTH, **extra}  # fmt: skip


def run_matmulfree(name: str, batches: list[int], context: int, n: int, bandwidth: float) -> list[dict]:
    from matmulfree import build_model, preset
    from matmulfree.backend import set_kernel_backend
    from matmulfree.inference.gpu import FusedMatMulFreeDecoder, MatMulFreeDecoder

    set_kernel_backend("triton")
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = build_model(preset(name, max_seq_len=context + n + 8)).eval()
    model.pack()
    gc.collect()
    torch.cuda.empty_cache()
    rows = []
    for batch in batches:
        ids = torch.randint(0, model.config.vocab_size, (batch, context), device="cuda")
        for kind, cls in (("matmulfree-fused", FusedMatMulFreeDecoder), ("matmulfree-8launch", MatMulFreeDecoder)):
            dec = cls(model, batch_size=batch)
            t0 = time.perf_counter()
            with torch.no_grad():
                dec.prefill(ids)
                dec.step(torch.zeros(batch, dtype=torch.long, device="cuda"))  # compiles / autotunes
            torch.cuda.synchronize()
            first = time.perf_counter() - t0
            eager = steps_per_s(dec, 8)
            dec.capture()
            launches = dec.launches_per_step() if hasattr(dec, "launches_per_step") else 8 * len(dec.layers) + 1
            rows.append(_row(kind, name, batch, steps_per_s(dec, n), dec.weight_bytes(), bandwidth,
                             eager_steps_per_s=eager, first_step_s=first, kernel_launches_per_step=launches))
            r = rows[-1]
            print(f"{name} B={batch} {kind}: {r['tokens_per_s']:.0f} tok/s, "
                  f"{r['bytes_per_step'] / 2**20:.1f} MiB/step, "
                  f"{r['bound_fraction_measured_bw']:.3f} of measured bandwidth ({launches} launches)")  # fmt: skip
            del dec
    set_kernel_backend(None)
    del model
    gc.collect()
    torch.cuda.empty_cache()
    return rows


def run_transformer(name: str, batches: list[int], context: int, n: int, bandwidth: float) -> list[dict]:
    from matmulfree import build_model, preset
    from matmulfree.inference.gpu import TransformerDecoder

    torch.manual_seed(0)
    with torch.device("cuda"):
        model = build_model(preset(name, "transformer", max_seq_len=context + n + 8)).eval()
    model.to(torch.bfloat16)
    rows = []
    for batch in batches:
        ids = torch.randint(0, model.config.vocab_size, (batch, context), device="cuda")
        dec = TransformerDecoder(model, batch_size=batch, max_len=context + n + 8)
        with torch.no_grad():
            dec.prefill(ids)
        dec.capture()
        with torch.no_grad():
            dec.prefill(ids)
        sps = steps_per_s(dec, n)
        # the masked attention reads the whole static cache each step
        rows.append(_row("transformer-bf16-kv", name, batch, sps, dec.weight_bytes() + dec.cache_bytes(dec.max_len),
                         bandwidth, context=context))  # fmt: skip
        r = rows[-1]
        print(f"{name} B={batch} transformer: {r['tokens_per_s']:.0f} tok/s, "
              f"{r['bound_fraction_measured_bw']:.3f} of measured bandwidth")  # fmt: skip
        del dec
    del model
    gc.collect()
    torch.cuda.empty_cache()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="+", default=["370m", "1.3b", "2.7b"])
    ap.add_argument("--batch", nargs="+", type=int, default=[1, 8])
    ap.add_argument("--context", type=int, default=512, help="prompt tokens before decoding (the KV cache)")
    ap.add_argument("--tokens", type=int, default=256, help="timed decode steps")
    ap.add_argument("--skip-transformer", action="store_true")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if any(b < 1 or b > 16 for b in args.batch):
        raise SystemExit(f"gpu_decode.py: --batch values must be in 1..16 (the GEMV path), got {args.batch}")
    require_cuda("gpu_decode.py")
    bandwidth = copy_bandwidth()
    print(f"measured device copy bandwidth {bandwidth / 1e12:.2f} TB/s")
    rows = []
    for name in args.presets:
        mf = run_matmulfree(name, args.batch, args.context, args.tokens, bandwidth)
        rows += mf
        if not args.skip_transformer:
            tf = run_transformer(name, args.batch, args.context, args.tokens, bandwidth)
            rows += tf
            for r in mf:
                base = next(t for t in tf if t["batch"] == r["batch"])
                r["speedup_vs_transformer"] = r["tokens_per_s"] / base["tokens_per_s"]
    save("gpu_decode", {"benchmark": "gpu_decode", "device": device_info(), "copy_bandwidth_bytes_per_s": bandwidth,
                        "context": args.context, "timed_steps": args.tokens, "rows": rows}, args.out)  # fmt: skip


if __name__ == "__main__":
    main()
