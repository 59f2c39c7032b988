"""Decode speed at batch 1: packed MatMul-free (fused kernels, CUDA graph) vs Transformer++ bf16 with a
static KV cache (CUDA graph), at a given context. Random weights (speed does not depend on them). GPU only.

    python bench/bench_decode.py [--presets 370m 2.7b] [--context 4096] [--tokens 256] [--out FILE]

Reports tokens/s, the ratio, and the fraction of the memory-bandwidth roofline (docs/design.md, "Figures":
bytes read per token / bandwidth, H100 SXM 3.35 TB/s; the measured copy bandwidth is reported too)
for the whole step and for the ternary GEMVs alone. Targets (issue 4): >= 1,000 tokens/s at 370M on
an H100; >= 3x Transformer++ at 2.7B.
"""

from __future__ import annotations

import argparse
import gc
import time

import torch
from _kbench import H100_BANDWIDTH, bench_ms, copy_bandwidth, device_info, require_cuda, save


def tokens_per_s(decoder, n: int) -> float:
    decoder.replay(3)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    decoder.replay(n)
    end.record()
    end.synchronize()
    return n / (start.elapsed_time(end) * 1e-3)


def gemv_only_ms(decoder) -> float:
    """Time of the packed GEMVs of one token alone (random int8 inputs, one CUDA graph)."""
    from matmulfree.triton_kernels import packed_matmul

    calls = []
    for p in decoder.layers:
        d = p["fcg_packed"].shape[1] * 4
        calls.append((p["fcg_packed"], p["fcg_scale"], 3, p["o"]["k"]))
        for lin in (p["o"], p["w_in"], p["w_down"]):
            calls.append((lin["packed"], lin["scale"], 1, lin["k"]))
        del d
    if decoder.head is not None:
        calls.append((decoder.head["packed"], decoder.head["scale"], 1, decoder.head["k"]))
    inputs = [(torch.randint(-127, 128, (P, 1, k), dtype=torch.int8, device="cuda"),
               torch.rand(P, 1, device="cuda") + 0.5) for _, _, P, k in calls]  # fmt: skip

    def run():
        for (wp, sw, _, k), (q, sx) in zip(calls, inputs):
            packed_matmul(q, wp, sx, sw, k)

    run()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        run()
    return bench_ms(graph.replay, warmup=5, rep=20)


def run_matmulfree(name: str, context: int, n: int, bandwidth: float) -> dict:
    from matmulfree import build_model, preset
    from matmulfree.backend import set_kernel_backend
    from matmulfree.inference.gpu import MatMulFreeDecoder

    set_kernel_backend("triton")
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = build_model(preset(name, max_seq_len=context + n + 8)).eval()
    model.pack()
    gc.collect()
    torch.cuda.empty_cache()
    ids = torch.randint(0, model.config.vocab_size, (1, context), device="cuda")
    row = {"model": "matmulfree-packed", "preset": name, "context": context, "decode_tokens": n}
    eager = MatMulFreeDecoder(model)
    t0 = time.perf_counter()
    with torch.no_grad():
        eager.prefill(ids)
    torch.cuda.synchronize()
    row["prefill_first_call_s"] = time.perf_counter() - t0  # includes compiling and autotuning
    row["eager_tokens_per_s"] = tokens_per_s(eager, max(8, n // 8))
    dec = MatMulFreeDecoder(model).capture()
    with torch.no_grad():
        dec.prefill(ids)
    row["tokens_per_s"] = tokens_per_s(dec, n)
    row["weight_bytes_per_token"] = dec.weight_bytes()
    row["gemv_only_ms"] = gemv_only_ms(dec)
    step_s = 1 / row["tokens_per_s"]
    row["roofline_fraction_step"] = row["weight_bytes_per_token"] / H100_BANDWIDTH / step_s
    row["roofline_fraction_gemv"] = row["weight_bytes_per_token"] / H100_BANDWIDTH / (row["gemv_only_ms"] * 1e-3)
    row["roofline_fraction_gemv_measured_bw"] = row["weight_bytes_per_token"] / bandwidth / (row["gemv_only_ms"] * 1e-3)
    set_kernel_backend(None)
    del model, eager, dec
    gc.collect()
    torch.cuda.empty_cache()
    return row


def run_transformer(name: str, context: int, n: int, bandwidth: float) -> dict:
    from matmulfree import build_model, preset
    from matmulfree.inference.gpu import TransformerDecoder

    torch.manual_seed(0)
    with torch.device("cuda"):
        model = build_model(preset(name, "transformer", max_seq_len=context + n + 8)).eval()
    model.to(torch.bfloat16)
    gc.collect()
    torch.cuda.empty_cache()
    ids = torch.randint(0, model.config.vocab_size, (1, context), device="cuda")
    row = {"model": "transformer-bf16", "preset": name, "context": context, "decode_tokens": n}
    dec = TransformerDecoder(model, max_len=context + n + 8)
    with torch.no_grad():
        dec.prefill(ids)
        row["eager_tokens_per_s"] = tokens_per_s(dec, max(8, n // 8))
    dec.capture()
    with torch.no_grad():
        dec.prefill(ids)
    row["tokens_per_s"] = tokens_per_s(dec, n)
    row["weight_bytes_per_token"] = dec.weight_bytes()
    row["kv_bytes_per_token"] = dec.cache_bytes(dec.max_len)  # the static cache is read whole each step
    total = row["weight_bytes_per_token"] + row["kv_bytes_per_token"]
    row["roofline_fraction_step"] = total / H100_BANDWIDTH * row["tokens_per_s"]
    row["roofline_fraction_step_measured_bw"] = total / bandwidth * row["tokens_per_s"]
    del model, dec
    gc.collect()
    torch.cuda.empty_cache()
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="+", default=["370m", "2.7b"])
    ap.add_argument("--context", type=int, default=4096)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--skip-transformer", action="store_true")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    require_cuda("bench_decode.py")
    bandwidth = copy_bandwidth()
    print(f"measured device copy bandwidth {bandwidth / 1e12:.2f} TB/s (roofline uses {H100_BANDWIDTH / 1e12} TB/s)")
    rows = []
    for name in args.presets:
        mf = run_matmulfree(name, args.context, args.tokens, bandwidth)
        rows.append(mf)
        print(f"{name} matmulfree packed+graph: {mf['tokens_per_s']:.0f} tok/s (eager {mf['eager_tokens_per_s']:.0f}); "
              f"{mf['weight_bytes_per_token'] / 2**20:.1f} MiB/token; roofline fraction step "
              f"{mf['roofline_fraction_step']:.3f}, GEMVs alone {mf['roofline_fraction_gemv']:.3f} "
              f"({mf['gemv_only_ms']:.3f} ms)")  # fmt: skip
        if not args.skip_transformer:
            tf = run_transformer(name, args.context, args.tokens, bandwidth)
            rows.append(tf)
            mf["speedup_vs_transformer"] = mf["tokens_per_s"] / tf["tokens_per_s"]
            print(f"{name} transformer bf16+graph: {tf['tokens_per_s']:.0f} tok/s "
                  f"(eager {tf['eager_tokens_per_s']:.0f}); "
                  f"roofline fraction {tf['roofline_fraction_step']:.3f}; matmulfree/transformer = "
                  f"x{mf['speedup_vs_transformer']:.2f}")  # fmt: skip
    save("decode", {"benchmark": "decode", "device": device_info(), "copy_bandwidth_bytes_per_s": bandwidth,
                    "roofline_bandwidth_bytes_per_s": H100_BANDWIDTH, "rows": rows}, args.out)  # fmt: skip


if __name__ == "__main__":
    main()
