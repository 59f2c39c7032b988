"""Shared helpers of the GPU kernel benchmarks (bench_bitlinear/mlgru/decode/inference_memory)."""

from __future__ import annotations

import json
import platform
import sys
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"
#: H100 SXM memory bandwidth used for the roofline (docs/design.md, "Figures and how to state them"), bytes/s.
H100_BANDWIDTH = 3.35e12


def require_cuda(script: str) -> torch.device:
    """Exit with a clear message (status 2) when no CUDA GPU is present; the kernels are GPU code."""
    if not torch.cuda.is_available():
        print(f"{script}: this benchmark needs a CUDA GPU and none is available; nothing was measured.",
              file=sys.stderr)  # fmt: skip
        raise SystemExit(2)
    try:
        import matmulfree.triton_kernels  # noqa: F401
    except ImportError as e:  # pragma: no cover - depends on the install
        print(f"{script}: matmulfree.triton_kernels does not import ({e}); install with `pip install -e .`",
              file=sys.stderr)  # fmt: skip
        raise SystemExit(2) from e
    return torch.device("cuda")


def device_info() -> dict:
    p = torch.cuda.get_device_properties(0)
    import triton

    return {"gpu": p.name, "sms": p.multi_processor_count, "memory_gib": round(p.total_memory / 2**30, 1),
            "torch": torch.__version__, "triton": triton.__version__, "python": platform.python_version()}  # fmt: skip


def bench_ms(fn, warmup: int = 10, rep: int = 30) -> float:
    """Median milliseconds of ``fn()`` (CUDA events; ``warmup``/``rep`` are counts of calls)."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(rep):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    times.sort()
    return times[len(times) // 2]


def peak_extra_bytes(fn) -> int:
    """Peak CUDA memory allocated while ``fn()`` runs, above what was allocated before."""
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def copy_bandwidth(nbytes: int = 2**30) -> float:
    """Measured device-to-device copy bandwidth, bytes/s (read + write counted)."""
    a = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    ms = bench_ms(lambda: b.copy_(a), warmup=3, rep=10)
    return 2 * nbytes / (ms * 1e-3)


def save(name: str, payload: dict, out: str | None) -> Path:
    path = Path(out) if out else RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"saved {path}")
    return path
