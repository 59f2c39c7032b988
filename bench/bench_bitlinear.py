"""Fused BitLinear (Triton) vs the PyTorch reference: forward+backward time and peak memory, and the
int8 tensor-core product vs a bf16 ``F.linear`` of the same shape. GPU only.

    python bench/bench_bitlinear.py [--widths 1024 2048] [--tokens 262144] [--dtype bf16] [--out FILE]

The paper's training shape is 2**18 tokens per step; if the reference does not fit, the token count
is halved until it does (reported). Targets (issue 4): fused peak memory <= 0.4x and time <= 0.8x
the reference; int8 product >= 1.5x bf16 F.linear.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from _kbench import bench_ms, device_info, peak_extra_bytes, require_cuda, save

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def measure(width: int, tokens: int, dtype: torch.dtype) -> dict:
    from matmulfree.triton_kernels import bitlinear_train, int8_matmul, rmsnorm_quantize, ternary_weight

    from matmulfree.layers import BitLinear

    torch.manual_seed(0)
    layer = BitLinear(width, width).cuda()
    x = torch.randn(tokens, width, device="cuda", dtype=dtype, requires_grad=True)
    dy = torch.randn(tokens, width, device="cuda", dtype=dtype)
    g, w, eps = layer.norm.weight, layer.weight, layer.norm.eps

    def clear():
        x.grad = g.grad = w.grad = None

    def fused():
        bitlinear_train(x, g, w, eps).backward(dy)

    def reference():
        layer.forward_reference(x).backward(dy)

    row = {"width": width, "tokens": tokens, "dtype": str(dtype).replace("torch.", "")}
    for name, fn in (("reference", reference), ("fused", fused)):
        clear()
        fn()  # compile / autotune outside the measurement
        clear()
        row[f"{name}_peak_extra_mib"] = peak_extra_bytes(fn) / 2**20
        clear()
        row[f"{name}_fwd_bwd_ms"] = bench_ms(lambda fn=fn: (clear(), fn()), warmup=3, rep=10)
    row["memory_ratio"] = row["fused_peak_extra_mib"] / row["reference_peak_extra_mib"]
    row["time_ratio"] = row["fused_fwd_bwd_ms"] / row["reference_fwd_bwd_ms"]
    with torch.no_grad():
        row["fused_fwd_ms"] = bench_ms(lambda: bitlinear_train(x, g, w, eps), warmup=3, rep=10)
        row["reference_fwd_ms"] = bench_ms(lambda: layer.forward_reference(x), warmup=3, rep=10)
        # the products alone: int8 x int8 -> int32 (+ rescale) vs bf16 F.linear of the same shape
        q, sx, _ = rmsnorm_quantize(x.detach(), g, eps)
        wq, sw = ternary_weight(w)
        xb, wb = x.detach().bfloat16(), w.detach().bfloat16()
        row["int8_product_ms"] = bench_ms(lambda: int8_matmul(q, wq, sx, sw, dtype), warmup=5, rep=20)
        row["bf16_linear_ms"] = bench_ms(lambda: F.linear(xb, wb), warmup=5, rep=20)
        # the backward's parts: dy W_q (cuBLAS, exact ternary operand), recompute of x_q, dW kernel
        from matmulfree.triton_kernels.bitlinear import weight_grad

        wdt = wq.to(dtype)
        row["bwd_dx_matmul_ms"] = bench_ms(lambda: torch.matmul(dy, wdt), warmup=3, rep=10)
        row["norm_quant_ms"] = bench_ms(lambda: rmsnorm_quantize(x.detach(), g, eps), warmup=3, rep=10)
        row["bwd_dw_kernel_ms"] = bench_ms(lambda: weight_grad(dy, q, sx, dtype, "triton"), warmup=3, rep=10)
        row["bwd_dw_cublas_ms"] = bench_ms(lambda: weight_grad(dy, q, sx, dtype, "cublas"), warmup=3, rep=10)
        ref_dw = weight_grad(dy, q, sx, dtype, "cublas")
        row["dw_triton_vs_cublas_rel"] = ((weight_grad(dy, q, sx, dtype, "triton") - ref_dw).norm()
                                          / ref_dw.norm()).item()  # fmt: skip
    row["int8_speedup_vs_bf16"] = row["bf16_linear_ms"] / row["int8_product_ms"]
    flops = 2 * tokens * width * width
    row["int8_tops"] = flops / (row["int8_product_ms"] * 1e-3) / 1e12
    row["bf16_tflops"] = flops / (row["bf16_linear_ms"] * 1e-3) / 1e12
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--widths", type=int, nargs="+", default=[1024, 2048])
    ap.add_argument("--tokens", type=int, default=2**18)
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    require_cuda("bench_bitlinear.py")
    rows = []
    for width in args.widths:
        tokens = args.tokens
        while True:
            try:
                row = measure(width, tokens, DTYPES[args.dtype])
                break
            except torch.cuda.OutOfMemoryError:
                torch.cuda.empty_cache()
                tokens //= 2
                print(f"width {width}: out of memory, retrying with {tokens} tokens")
        rows.append(row)
        torch.cuda.empty_cache()
        print(f"width {width} tokens {row['tokens']}: fwd+bwd fused {row['fused_fwd_bwd_ms']:.2f} ms vs reference "
              f"{row['reference_fwd_bwd_ms']:.2f} ms (x{row['time_ratio']:.2f}); peak extra memory "
              f"{row['fused_peak_extra_mib']:.0f} vs {row['reference_peak_extra_mib']:.0f} MiB "
              f"(x{row['memory_ratio']:.2f}); int8 product {row['int8_product_ms']:.2f} ms vs bf16 F.linear "
              f"{row['bf16_linear_ms']:.2f} ms (x{row['int8_speedup_vs_bf16']:.2f})")  # fmt: skip
    save("bitlinear", {"benchmark": "bitlinear", "device": device_info(), "rows": rows}, args.out)


if __name__ == "__main__":
    main()
