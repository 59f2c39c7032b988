"""Peak GPU memory of inference: MatMul-free with packed 2-bit weights vs the same model with bf16
weights, and Transformer++ bf16 (KV cache), for a prompt plus greedy decoding at batch 1. GPU only.

    python bench/bench_inference_memory.py [--presets 370m 2.7b] [--context 2048] [--tokens 32] [--out FILE]

Reports the bytes held by the model after loading and the peak during prefill + decoding.
"""

from __future__ import annotations

import argparse
import gc

import torch
from _kbench import device_info, require_cuda, save


def measure(name: str, variant: str, context: int, n: int) -> dict:
    from matmulfree import build_model, preset
    from matmulfree.backend import set_kernel_backend
    from matmulfree.inference.gpu import MatMulFreeDecoder, TransformerDecoder

    gc.collect()
    torch.cuda.empty_cache()
    before = torch.cuda.memory_allocated()
    torch.manual_seed(0)
    arch = "transformer" if variant == "transformer-bf16" else "matmulfree"
    with torch.device("cuda"):
        model = build_model(preset(name, arch, max_seq_len=context + n + 8)).eval()
    if variant == "matmulfree-packed":
        model.pack()
    else:
        model.to(torch.bfloat16)
    gc.collect()
    torch.cuda.empty_cache()
    weights = torch.cuda.memory_allocated() - before
    torch.cuda.reset_peak_memory_stats()
    ids = torch.randint(0, model.config.vocab_size, (1, context), device="cuda")
    set_kernel_backend("triton")
    with torch.no_grad():
        if variant == "matmulfree-packed":
            dec = MatMulFreeDecoder(model)
        elif variant == "transformer-bf16":
            dec = TransformerDecoder(model, max_len=context + n + 8)
        else:
            dec = None
        if dec is not None:
            dec.generate(ids, n)
        else:  # bf16 latent weights: the layers quantize on the fly (reference inference of a trained model)
            model.generate(ids, n, temperature=0)
    torch.cuda.synchronize()
    set_kernel_backend(None)
    peak = torch.cuda.max_memory_allocated() - before
    del model, dec, ids
    return {"preset": name, "variant": variant, "context": context, "decode_tokens": n,
            "weights_mib": weights / 2**20, "peak_mib": peak / 2**20}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="+", default=["370m", "2.7b"])
    ap.add_argument("--context", type=int, default=2048)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    require_cuda("bench_inference_memory.py")
    rows = []
    for name in args.presets:
        for variant in ("matmulfree-packed", "matmulfree-bf16", "transformer-bf16"):
            row = measure(name, variant, args.context, args.tokens)
            rows.append(row)
            print(f"{name} {variant}: weights {row['weights_mib']:.0f} MiB, peak {row['peak_mib']:.0f} MiB")
        packed, bf16 = rows[-3], rows[-2]
        print(f"{name}: packed / bf16 peak = {packed['peak_mib'] / bf16['peak_mib']:.2f}")
    save("inference_memory", {"benchmark": "inference_memory", "device": device_info(), "rows": rows}, args.out)


if __name__ == "__main__":
    main()
