"""``matmulfree power CHECKPOINT``: energy and speed per generated token on GPU, CPU and FPGA,
measured where a meter is readable and modelled otherwise, never mixed (matmulfree.energy)."""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

TARGETS = ("gpu", "cpu", "fpga", "ops")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "power", help="measure and model energy per token (GPU, CPU, FPGA, operation model)",
        description="Tokens/s and joules per generated token of a model and a Transformer++ baseline of the same "
        "shape: measured on GPU (NVML energy counter) and CPU (RAPL when readable), modelled for the FPGA build "
        "and by an operation count priced with Horowitz's 45 nm energies. Every figure is labelled measured or "
        "modelled. Writes power.json, power.png and power.txt to --out.")  # fmt: skip
    p.add_argument("checkpoint", help="model directory, or preset:NAME[:ARCH] (random weights, e.g. preset:fpga)")
    p.add_argument("--baseline", default="transformer",
                   help="'transformer' (a Transformer++ of the same shape, random weights), 'none', or a model "
                        "directory / preset:NAME:transformer (default transformer)")  # fmt: skip
    p.add_argument("--targets", default="gpu,cpu,fpga,ops", help="comma list of gpu,cpu,fpga,ops (default all)")
    p.add_argument("--batch", type=int, default=1, help="sequences decoded together (default 1)")
    p.add_argument("--context", type=int, default=64, help="prompt tokens before decoding (default 64)")
    p.add_argument("--new-tokens", type=int, default=64, help="timed decode steps per sequence (default 64)")
    p.add_argument("--warmup", type=int, default=8, help="untimed decode steps before timing (default 8)")
    p.add_argument("--min-seconds", type=float, default=2.0,
                   help="repeat prefill + timed window until the windows add up to this (default 2 s)")
    p.add_argument("--out", default="power-report", help="output folder (default ./power-report)")
    p.add_argument("--cpu-watts", type=float, default=None,
                   help="nominal CPU power for a *modelled* CPU energy when RAPL is unreadable")
    p.add_argument("--cpu-backend", default="auto", choices=["auto", "c", "int8", "float"],
                   help="packed CPU product: C 2-bit kernel, FBGEMM int8 or fp32 (default auto: first that works)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--idle-seconds", type=float, default=2.0, help="idle-power window before measuring (default 2)")
    p.add_argument("--gpu-index", type=int, default=0, help="CUDA/NVML device index (default 0)")
    p.add_argument("--fpga-summary", default=None, help="RTL build summary.json (or its folder)")
    p.add_argument("--fpga-watts", type=float, default=None, help="board power measured by you, watts")
    p.add_argument("--fpga-toggle", type=float, default=0.125, help="logic toggle rate of the FPGA model (0.125)")
    p.add_argument("--hls-report", default=None, help="HLS export.json / export folder / Vitis *_csynth.xml")
    p.add_argument("--hls-tokens-per-call", type=int, default=1, help="tokens covered by the csynth latency (1)")
    p.add_argument("--hls-watts", type=float, default=None, help="board power of the HLS kernel measured by you, W")
    p.add_argument("--op-energy-file", default=None, help="JSON {operation: picojoules} overriding the Horowitz table")
    p.add_argument("--onchip-mib", type=float, default=8.0, help="on-chip memory of the operation model (8 MiB)")
    p.add_argument("--act-bits", type=int, default=16, choices=[16, 32], help="operation-model precision (16)")
    p.add_argument("--seed", type=int, default=0, help="seed for random weights and prompts (default 0)")
    p.set_defaults(func=run)


def _error(msg: str):
    from matmulfree.errors import CLIError

    return CLIError(msg)


def parse_targets(text: str) -> list[str]:
    targets = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in targets if t not in TARGETS]
    if bad or not targets:
        raise _error(f"--targets: unknown target(s) {bad or text!r}; choose from {','.join(TARGETS)}")
    return targets


def baseline_config(cfg):
    """A Transformer++ config of the same shape (heads of width ~64, even head width)."""
    from matmulfree.config import TransformerConfig

    heads = max(1, cfg.d_model // 64)
    while heads > 0 and (cfg.d_model % heads or (cfg.d_model // heads) % 2):
        heads -= 1
    if heads == 0:
        raise _error(f"no Transformer++ head split for d_model={cfg.d_model} (head width must be even)")
    fields = {k: getattr(cfg, k) for k in ("vocab_size", "d_model", "n_layers", "intermediate_size",
                                           "max_seq_len", "norm_eps", "init_std")}  # fmt: skip
    return TransformerConfig(n_heads=heads, **fields)


def load_spec(spec: str, seed: int, min_len: int):
    """``(config, model or None-builder)``: a directory (loaded) or ``preset:NAME[:ARCH]`` (random)."""
    import torch

    from matmulfree import build_model, load_model, preset

    if spec.startswith("preset:"):
        parts = spec.split(":")
        arch = parts[2] if len(parts) > 2 else "matmulfree"
        if len(parts) > 3 or arch not in ("matmulfree", "rwkv", "transformer"):
            raise _error(f"bad model spec {spec!r}; expected preset:NAME or preset:NAME:ARCH")
        cfg = preset(parts[1], arch)
        if cfg.max_seq_len < min_len:
            cfg = preset(parts[1], arch, max_seq_len=min_len)
        torch.manual_seed(seed)
        return cfg, lambda: build_model(cfg).eval()
    model = load_model(spec, packed=True).eval()
    return model.config, lambda: model


def run(args: argparse.Namespace) -> int:
    import torch

    from matmulfree.energy import fpga as fpga_mod
    from matmulfree.energy import ops as ops_mod
    from matmulfree.energy.nvml import NVMLMeter
    from matmulfree.energy.rapl import RAPLMeter
    from matmulfree.energy.report import Report, print_table, render_text, write_json, write_png
    from matmulfree.energy.targets import MODEL_NAMES, TF, PowerOptions, cpu_rows, fpga_rows, gpu_rows, ops_rows

    targets = parse_targets(args.targets)
    for name in ("batch", "context", "new_tokens"):
        if getattr(args, name) < 1:
            raise _error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.warmup < 0 or args.idle_seconds < 0 or args.min_seconds < 0:
        raise _error("--warmup, --idle-seconds and --min-seconds must be >= 0")
    for name in ("cpu_watts", "fpga_watts", "hls_watts"):
        v = getattr(args, name)
        if v is not None and not v > 0:
            raise _error(f"--{name.replace('_', '-')} must be a positive number of watts, got {v}")
    if not 0 < args.fpga_toggle <= 1:
        raise _error(f"--fpga-toggle must be in (0, 1], got {args.fpga_toggle}")
    if args.threads is not None:
        if args.threads < 1:
            raise _error(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    try:
        table = ops_mod.load_op_energies(args.op_energy_file)
    except ops_mod.OpEnergyError as e:
        raise _error(str(e)) from None

    need = args.context + args.warmup + args.new_tokens + 1
    cfg, make = load_spec(args.checkpoint, args.seed, need)
    configs, builders = {MODEL_NAMES[cfg.architecture]: cfg}, {}
    builders[next(iter(configs))] = make
    if args.baseline != "none" and cfg.architecture != "transformer":
        if args.baseline == "transformer":
            bcfg = baseline_config(cfg)
            if bcfg.max_seq_len < need:
                bcfg.max_seq_len = need

            def make_baseline():
                from matmulfree import build_model

                torch.manual_seed(args.seed)
                return build_model(bcfg).eval()

            configs[TF], builders[TF] = bcfg, make_baseline
        else:
            bcfg, bmake = load_spec(args.baseline, args.seed, need)
            if bcfg.architecture != "transformer":
                raise _error(f"--baseline {args.baseline}: expected a Transformer++ model, got {bcfg.architecture}")
            configs[TF], builders[TF] = bcfg, bmake
    if TF in configs and configs[TF].max_seq_len < need:
        raise _error(f"context + warmup + new tokens = {need} exceeds the Transformer's max_seq_len "
                     f"{configs[TF].max_seq_len}")  # fmt: skip

    opts = PowerOptions(batch=args.batch, context=args.context, new_tokens=args.new_tokens, warmup=args.warmup,
                        min_seconds=args.min_seconds, seed=args.seed, cpu_watts=args.cpu_watts,
                        idle_seconds=args.idle_seconds,
                        gpu_index=args.gpu_index, fpga_summary=args.fpga_summary, fpga_watts=args.fpga_watts,
                        fpga_toggle=args.fpga_toggle, hls_report=args.hls_report,
                        hls_tokens_per_call=args.hls_tokens_per_call, hls_watts=args.hls_watts,
                        onchip_bytes=args.onchip_mib * 2**20, op_energies=table, act_bits=args.act_bits)  # fmt: skip
    report = Report(meta={
        "checkpoint": args.checkpoint, "baseline": args.baseline if TF in configs else "none",
        "targets": targets, "batch": args.batch, "context": args.context, "new_tokens": args.new_tokens,
        "warmup": args.warmup, "torch": torch.__version__, "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
        "load_average_before": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"), "configs": {k: c.to_dict() for k, c in configs.items()},
    })  # fmt: skip
    models = {}
    if "cpu" in targets or "gpu" in targets:
        for name, build in builders.items():
            m = build()
            models[name] = m.pack() if name != TF else m
    if "gpu" in targets:
        rows, skipped = gpu_rows(models, opts, NVMLMeter(args.gpu_index))
        report.rows += rows
        report.skipped += skipped
    if "cpu" in targets:
        rows, skipped = cpu_rows(models, opts, RAPLMeter(), args.cpu_backend)
        report.rows += rows
        report.skipped += skipped
    if "fpga" in targets:
        try:
            rows, skipped = fpga_rows(opts)
        except fpga_mod.FPGASummaryError as e:
            raise _error(str(e)) from None
        report.rows += rows
        report.skipped += skipped
    if "ops" in targets:
        rows, skipped = ops_rows(configs, opts)
        report.rows += rows
    report.meta["load_average_after"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(report, out / "power.json")
    (out / "power.txt").write_text(render_text(report) + "\n")
    png = write_png(report, out / "power.png")
    print_table(report)
    print(f"wrote {out / 'power.json'}, {out / 'power.txt'}" + (f", {png}" if png else " (no PNG: matplotlib missing)"))
    return 0
