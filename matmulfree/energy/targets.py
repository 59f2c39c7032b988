"""Running the targets of ``matmulfree power``: timed greedy decoding on CPU and GPU (energy from
a meter when one is readable), the FPGA and HLS models, and the operation model.

Each ``*_rows`` function returns ``(rows, skipped)``; a missing device, meter or build becomes a
:class:`~matmulfree.energy.report.Skip` (or a row without energy) with a one-line reason.

Decoding protocol: a random prompt of ``context`` tokens per sequence (``batch`` sequences) is
prefilled with the model's parallel path, then ``warmup`` greedy steps run untimed, then
``new_tokens`` steps are timed (and metered). Tokens/s counts all sequences of the batch.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from .meters import EnergyWindow, Meter, idle_watts
from .report import Row, Skip

MF, TF = "MatMul-free", "Transformer++"
#: Report name of a MatMul-free RWKV-4 model.
RW = "MatMul-free RWKV"
#: Report name per config ``architecture``.
MODEL_NAMES = {"matmulfree": MF, "rwkv": RW, "transformer": TF}


@dataclass
class PowerOptions:
    """Settings shared by the targets (see ``matmulfree power --help``)."""

    batch: int = 1
    context: int = 64
    new_tokens: int = 64
    warmup: int = 8
    min_seconds: float = 2.0
    max_windows: int = 1000
    seed: int = 0
    cpu_watts: float | None = None
    idle_seconds: float = 2.0
    gpu_index: int = 0
    fpga_summary: str | None = None
    fpga_watts: float | None = None
    fpga_toggle: float = 0.125
    hls_report: str | None = None
    hls_tokens_per_call: int = 1
    hls_watts: float | None = None
    onchip_bytes: float = 8 * 2**20
    op_energies: dict[str, float] | None = None
    act_bits: int = 16
    extra: dict[str, Any] = field(default_factory=dict)


class StepRunner:
    """Greedy decoding through ``prefill(ids) -> (logits, state)`` and
    ``step(tokens, state) -> (logits, state)`` (the model and CPU-decoder contract)."""

    def __init__(self, prefill: Callable, step: Callable, sync: Callable[[], None] | None = None) -> None:
        self._prefill, self._step, self.sync = prefill, step, sync or (lambda: None)

    @torch.no_grad()
    def start(self, ids: torch.Tensor) -> None:
        logits, self.state = self._prefill(ids)
        self.tokens = logits.argmax(-1)

    @torch.no_grad()
    def advance(self, n: int) -> None:
        for _ in range(n):
            logits, self.state = self._step(self.tokens, self.state)
            self.tokens = logits.argmax(-1)


class KernelRunner:
    """Greedy decoding on a ``matmulfree.triton_kernels`` decoder (graph-replayed when captured)."""

    def __init__(self, decoder) -> None:
        self.dec = decoder
        self.sync = torch.cuda.synchronize

    @torch.no_grad()
    def start(self, ids: torch.Tensor) -> None:
        self.dec.tokens.copy_(self.dec.prefill(ids).argmax(-1))

    @torch.no_grad()
    def advance(self, n: int) -> None:
        self.dec.replay(n)


def model_runner(model, sync=None) -> StepRunner:
    def prefill(ids):
        out = model(ids)
        return out.logits[:, -1], out.state

    return StepRunner(prefill, model.step, sync)


def timed_decode(runner, ids: torch.Tensor, opts: PowerOptions, meter: Meter | None = None,
                 idle_w: float | None = None) -> tuple[float, int, EnergyWindow | None]:  # fmt: skip
    """Prefill, warm up, then time (and meter) ``opts.new_tokens`` steps; the whole is repeated from
    the prefill until the timed windows add up to ``opts.min_seconds`` (so every window covers the
    same contexts and an energy counter sees enough time). Returns (seconds, windows, energy)."""
    seconds = joules = 0.0
    windows = 0
    while windows == 0 or (seconds < opts.min_seconds and windows < opts.max_windows):
        runner.start(ids)
        runner.advance(opts.warmup)
        runner.sync()
        e0 = meter.read() if meter is not None else 0.0
        t0 = time.perf_counter()
        runner.advance(opts.new_tokens)
        runner.sync()
        seconds += time.perf_counter() - t0
        joules += meter.read() - e0 if meter is not None else 0.0
        windows += 1
    window = EnergyWindow(seconds, joules, idle_w, meter.name, meter.scope) if meter is not None else None
    return seconds, windows, window


def _prompt(vocab: int, opts: PowerOptions, device: str = "cpu") -> torch.Tensor:
    g = torch.Generator().manual_seed(opts.seed)
    return torch.randint(0, vocab, (opts.batch, opts.context), generator=g).to(device)


def _energy_fields(window: EnergyWindow | None, seconds: float, tokens: int, nominal_w: float | None,
                   no_meter: str) -> dict[str, Any]:  # fmt: skip
    if window is not None:
        above = window.joules_above_idle()
        return dict(joules_per_token=window.joules / tokens, energy_kind="measured", watts=window.watts,
                    idle_watts=window.idle_watts, joules_per_token_above_idle=None if above is None else above / tokens,
                    source=f"time: perf_counter; energy: {window.meter} counter, {window.scope} (whole device, "
                           "other processes included)")  # fmt: skip
    if nominal_w is not None:
        return dict(joules_per_token=nominal_w * seconds / tokens, energy_kind="modelled", watts=nominal_w,
                    source=f"time: perf_counter (measured); energy: modelled as --cpu-watts {nominal_w:g} W x "
                           "measured time")  # fmt: skip
    return dict(source="time: perf_counter", notes=f"no energy: {no_meter}")


# ------------------------------------------------------------------------------------- CPU
def cpu_rows(models: dict[str, Any], opts: PowerOptions, meter: Meter | None = None,
             cpu_backend: str = "auto") -> tuple[list[Row], list[Skip]]:  # fmt: skip
    """``models``: ``{"MatMul-free" or "MatMul-free RWKV": packed model, "Transformer++": model}``
    (any may be absent)."""
    from ..inference.cpu import DenseCPUDecoder, PackedCPUDecoder
    from ..inference.cpu_rwkv import PackedRWKVDecoder

    rows, skipped = [], []
    reason = meter.unavailable() if meter is not None else "no meter"
    use_meter = meter if reason is None else None
    idle_w = idle_watts(use_meter, opts.idle_seconds) if use_meter is not None and opts.idle_seconds > 0 else None
    no_meter = f"RAPL unavailable ({reason}); pass --cpu-watts W for a modelled figure"
    tokens = opts.new_tokens * opts.batch
    threads = torch.get_num_threads()
    runs: list[tuple[str, str, StepRunner, dict]] = []
    mf = models.get(MF)
    if mf is not None:
        packed = PackedCPUDecoder(mf, cpu_backend)
        variant = {"c": "packed 2-bit, C kernel", "int8": "packed, int8 FBGEMM",
                   "float": "packed, fp32 on integers"}[packed.backend]  # fmt: skip
        info = {"backend": packed.backend, "fallback_reason": packed.fallback_reason,
                "weight_bytes_per_step": packed.weight_bytes()}  # fmt: skip
        runs.append((MF, variant, StepRunner(packed.prefill, packed.step), info))
        dense = DenseCPUDecoder(mf)
        runs.append((MF, "dense fp32 weights", StepRunner(dense.prefill, dense.step),
                     {"weight_bytes_per_step": dense.weight_bytes()}))  # fmt: skip
    rw = models.get(RW)
    if rw is not None:
        packed = PackedRWKVDecoder(rw, cpu_backend)
        variant = {"c": "packed 2-bit, C kernel", "int8": "packed, int8 FBGEMM",
                   "float": "packed, fp32 on integers"}[packed.backend]  # fmt: skip
        runs.append((RW, variant, StepRunner(packed.prefill, packed.step),
                     {"backend": packed.backend, "fallback_reason": packed.fallback_reason,
                      "weight_bytes_per_step": packed.weight_bytes()}))  # fmt: skip
    tf = models.get(TF)
    if tf is not None:
        runs.append((TF, "fp32, KV cache", model_runner(tf), {}))
    for model_name, variant, runner, info in runs:
        vocab = models[model_name].config.vocab_size
        seconds, windows, window = timed_decode(runner, _prompt(vocab, opts), opts, use_meter, idle_w)
        n = tokens * windows
        e = _energy_fields(window, seconds, n, opts.cpu_watts, no_meter)
        rows.append(Row("cpu", model_name, variant, n / seconds, "measured", batch=opts.batch, context=opts.context,
                        details={**info, "seconds": seconds, "tokens": n, "windows": windows, "threads": threads},
                        **e))  # fmt: skip
    base = {r.variant: r.tokens_per_s for r in rows if r.model == MF}
    fast = next((v for k, v in base.items() if k.startswith("packed")), None)
    if fast and base.get("dense fp32 weights"):
        for r in rows:
            if r.model == MF and r.variant.startswith("packed"):
                r.details["speedup_vs_dense_fp32"] = fast / base["dense fp32 weights"]
    return rows, skipped


# ------------------------------------------------------------------------------------- GPU
def gpu_rows(models: dict[str, Any], opts: PowerOptions, meter: Meter | None = None) -> tuple[list[Row], list[Skip]]:
    """Timed decoding on CUDA with the fastest path present (fused Triton decoders captured in a
    CUDA graph when ``matmulfree.triton_kernels`` imports, else the reference step): the packed
    MatMul-free model with fp32 activations, the Transformer++ in bf16."""
    if not torch.cuda.is_available():
        return [], [Skip("gpu", "no CUDA GPU visible to PyTorch")]
    rows: list[Row] = []
    skipped: list[Skip] = []
    reason = meter.unavailable() if meter is not None else "no meter"
    use_meter = meter if reason is None else None
    idle_w = idle_watts(use_meter, opts.idle_seconds) if use_meter is not None and opts.idle_seconds > 0 else None
    tokens = opts.new_tokens * opts.batch
    dev = f"cuda:{opts.gpu_index}"
    try:
        import matmulfree.inference.gpu as tk
    except Exception as e:  # Triton missing or broken: reference path
        tk, kernel_reason = None, f"{type(e).__name__}: {e}"
    for name, model in models.items():
        m = (model.to(dev) if name != TF else model.to(dev, dtype=torch.bfloat16)).eval()
        runner, variant = None, ""
        if name == RW:
            kernel_reason = "no CUDA-graph decoder for RWKV yet (packed Triton GEMV per projection instead)"
        if tk is not None and name != RW:
            try:
                if name == MF:
                    dec = tk.MatMulFreeDecoder(m, opts.batch)
                    variant = "packed 2-bit, Triton, CUDA graph, fp32 activations"
                else:
                    dec = tk.TransformerDecoder(m, opts.batch, opts.context + opts.warmup + opts.new_tokens + 1)
                    variant = "bf16, static KV cache, CUDA graph"
                runner = KernelRunner(dec)
                runner.start(_prompt(m.config.vocab_size, opts, dev))
                dec.capture()
            except Exception as e:  # fall back to the reference step, say why
                runner, kernel_reason = None, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        if runner is None:
            runner = model_runner(m, torch.cuda.synchronize)
            variant = ("packed 2-bit, fp32 activations" if name != TF else "bf16") + ", reference step"
            skipped.append(Skip("gpu", f"fused kernels not used ({kernel_reason})", name))
        seconds, windows, window = timed_decode(runner, _prompt(m.config.vocab_size, opts, dev), opts, use_meter,
                                                idle_w)  # fmt: skip
        n = tokens * windows
        e = _energy_fields(window, seconds, n, None, f"NVML unavailable ({reason})")
        rows.append(Row("gpu", name, variant, n / seconds, "measured", batch=opts.batch, context=opts.context,
                        details={"device": torch.cuda.get_device_name(dev), "seconds": seconds, "tokens": n,
                                 "windows": windows}, **e))  # fmt: skip
        model.to("cpu", dtype=torch.float32) if name == TF else model.to("cpu")
    return rows, skipped


# ------------------------------------------------------------------------------------ FPGA
def fpga_rows(opts: PowerOptions) -> tuple[list[Row], list[Skip]]:
    """From ``opts.fpga_summary`` (RTL build) and ``opts.hls_report`` (HLS export)."""
    from .fpga import fpga_model, hls_figures, load_summary

    rows, skipped = [], []
    if opts.fpga_summary is None:
        skipped.append(Skip("fpga", "no RTL build: pass --fpga-summary PATH/summary.json "
                                    "(from 'matmulfree export ... --target ecp5|ice40')"))  # fmt: skip
    else:
        s = load_summary(opts.fpga_summary)
        m = fpga_model(s, toggle=opts.fpga_toggle)
        variant = f"{s['target']} {s['device']} RTL, {s.get('lanes', '?')} lanes @ {m['fmax_mhz']:g} MHz"
        src = (f"tokens/s: Fmax (nextpnr timing) / simulated cycles per token, {s['_path']}; "
               f"power: {m['constants']}")  # fmt: skip
        rows.append(Row("fpga", MF, variant, m["tokens_per_s"], "modelled", m["joules_per_token"], "modelled",
                        m["watts"], batch=1, source=src,
                        notes="" if s.get("timing_met", True) else "timing not met at the requested clock",
                        details=m))  # fmt: skip
        if opts.fpga_watts is not None:
            rows.append(Row("fpga", MF, f"{variant}, board power given", m["tokens_per_s"], "modelled",
                            opts.fpga_watts / m["tokens_per_s"], "modelled", opts.fpga_watts, batch=1,
                            source=f"power: --fpga-watts {opts.fpga_watts:g} W (measured by the user) / modelled "
                                   "tokens/s, so the quotient is labelled modelled",
                            details={"fpga_watts": opts.fpga_watts}))  # fmt: skip
    if opts.hls_report is not None:
        h = hls_figures(opts.hls_report, opts.hls_tokens_per_call)
        tps = h["clock_mhz"] * 1e6 / h["cycles_per_token"]
        watts = opts.hls_watts
        rows.append(Row("hls", MF, f"HLS {h.get('part') or ''} @ {h['clock_mhz']:.0f} MHz".replace("  ", " "), tps,
                        "modelled", None if watts is None else watts / tps, None if watts is None else "modelled",
                        watts, batch=1, source=f"tokens/s: {h['source']}" + (f"; power: --hls-watts {watts:g} W"
                                                                              if watts is not None else ""),
                        notes="" if watts is not None else "no energy: pass --hls-watts W (board measurement)",
                        details=h))  # fmt: skip
    return rows, skipped


# ------------------------------------------------------------------------------------- ops
def ops_rows(configs: dict[str, Any], opts: PowerOptions) -> tuple[list[Row], list[Skip]]:
    """Operation-model rows for the given configs (``{"MatMul-free": cfg, "Transformer++": cfg}``)."""
    from .ops import count_ops, price

    rows = []
    for name, cfg in configs.items():
        counts = count_ops(cfg, opts.context, opts.batch, opts.onchip_bytes, opts.act_bits)
        p = price(counts, opts.op_energies)
        locs = sorted({r.location for r in counts.reads if r.what != "recurrent state"})
        variant = ("ternary, " if name != TF else f"fp{opts.act_bits}, ") + "weights in " + "+".join(locs)
        rows.append(Row("ops", name, variant, None, None, p["joules_per_token"], "modelled", batch=opts.batch,
                        context=opts.context,
                        source="operation counts x Horowitz 45 nm energies (matmulfree.energy.ops)",
                        details={"counts": counts.to_dict(), **p}))  # fmt: skip
    return rows, []


__all__ = ["MODEL_NAMES", "RW", "KernelRunner", "PowerOptions", "StepRunner", "cpu_rows", "fpga_rows", "gpu_rows",
           "model_runner", "ops_rows", "timed_decode"]
