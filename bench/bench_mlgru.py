"""MLGRU recurrence: chunked Triton scan vs the reference associative scan, forward+backward. GPU only.

    python bench/bench_mlgru.py [--batch 8] [--tokens 2048] [--width 2048] [--out FILE]

Target (issue 4): >= 5x the reference scan at batch 8, 2048 tokens, width 2048.
"""

from __future__ import annotations

import argparse

import torch
from _kbench import H100_BANDWIDTH, bench_ms, device_info, peak_extra_bytes, require_cuda, save


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--width", type=int, default=2048)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    require_cuda("bench_mlgru.py")
    from matmulfree.triton_kernels import mlgru_scan

    from matmulfree.functional import linear_recurrence_scan

    B, T, D = args.batch, args.tokens, args.width
    torch.manual_seed(0)
    f = torch.sigmoid(torch.randn(B, T, D, device="cuda")).requires_grad_()
    b = torch.randn(B, T, D, device="cuda", requires_grad=True)
    h0 = torch.randn(B, D, device="cuda", requires_grad=True)
    dh = torch.randn(B, T, D, device="cuda")
    row = {"batch": B, "tokens": T, "width": D}
    for name, scan in (("reference", linear_recurrence_scan), ("triton", mlgru_scan)):
        def fwd_bwd(scan=scan):
            f.grad = b.grad = h0.grad = None
            scan(f, b, h0).backward(dh)

        fwd_bwd()
        row[f"{name}_fwd_bwd_ms"] = bench_ms(fwd_bwd, warmup=3, rep=10)
        with torch.no_grad():
            row[f"{name}_fwd_ms"] = bench_ms(lambda scan=scan: scan(f, b, h0), warmup=3, rep=10)
        row[f"{name}_peak_extra_mib"] = peak_extra_bytes(fwd_bwd) / 2**20
    row["speedup_fwd_bwd"] = row["reference_fwd_bwd_ms"] / row["triton_fwd_bwd_ms"]
    row["speedup_fwd"] = row["reference_fwd_ms"] / row["triton_fwd_ms"]
    # fewest bytes: forward reads f, b and writes h; backward reads f, h, dh and writes df, db
    n = B * T * D * 4
    row["min_bytes_fwd_bwd"] = 8 * n
    row["fraction_of_bandwidth_floor"] = 8 * n / H100_BANDWIDTH / (row["triton_fwd_bwd_ms"] * 1e-3)
    print(f"MLGRU scan B={B} T={T} D={D}: fwd+bwd triton {row['triton_fwd_bwd_ms']:.3f} ms vs reference "
          f"{row['reference_fwd_bwd_ms']:.3f} ms (x{row['speedup_fwd_bwd']:.1f}); "
          f"forward x{row['speedup_fwd']:.1f}; "
          f"peak extra memory {row['triton_peak_extra_mib']:.0f} vs {row['reference_peak_extra_mib']:.0f} MiB")
    save("mlgru", {"benchmark": "mlgru_scan", "device": device_info(), "rows": [row]}, args.out)


if __name__ == "__main__":
    main()
