"""Command-line hooks of the Vitis HLS export.

* ``matmulfree export CHECKPOINT OUT --target vitis [--part xcu250-figd2104-2L-e] [--clock-mhz 300]
  [--stream-weights] [--row-parallel 4] [--tb-tokens 64] [--csim]``: integer conversion, golden
  run of the integer reference, and the export folder (see :mod:`matmulfree.fpga.hls.export`).
* ``matmulfree fpga csim OUT``: compile the exported firmware + testbench with g++ and run it;
  prints PASS/FAIL with counts, exit status 1 on any mismatch.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .golden import DEFAULT_PROMPT
from .resources import DEFAULT_CLOCK_MHZ, DEFAULT_PART


def _cli_error():
    from matmulfree.errors import CLIError

    return CLIError


def _add(group, *names: str, **kw) -> None:
    """Add an option unless another export target already defined the same option string."""
    try:
        group.add_argument(*names, **kw)
    except argparse.ArgumentError:
        pass


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``--target vitis`` (tolerates options that the RTL targets also add)."""
    g = parser.add_argument_group("vitis (HLS C++ project; C-simulation with g++)")
    _add(g, "--part", default=None, help=f"AMD part for Vitis HLS (default {DEFAULT_PART})")
    _add(g, "--platform", default=None, help="Vitis platform for v++ --link (default: the part's Alveo platform)")
    _add(g, "--stream-weights", action="store_true",
         help="keep the ternary weights in off-chip DRAM and read them over m_axi at every token "
              "(for models larger than the on-chip memory)")
    _add(g, "--row-parallel", type=int, default=4,
         help="weight rows computed per cycle, 16 ternary weights each (power of two; default 4)")
    _add(g, "--tb-tokens", type=int, default=64, help="token steps in the testbench's golden data (default 64)")
    _add(g, "--tb-prompt", default=DEFAULT_PROMPT, help="prompt text of the golden run (bytes modulo the vocabulary)")
    _add(g, "--onchip-bits", type=int, default=None,
         help="on-chip memory of the part in bits (required for a part missing from the built-in table)")
    _add(g, "--no-dataflow", action="store_true", help="do not run the f/c/g projections as DATAFLOW processes")
    _add(g, "--csim", action="store_true", help="run the g++ C-simulation right after the export")
    _add(g, "--calib-text", default=None,
         help="text file whose bytes calibrate the integer formats (res_shift, act_frac); default: fixed formats")


def convert_checkpoint(checkpoint: str, calib_text: str | None = None) -> dict[str, Any]:
    """Load a checkpoint folder and convert it to the integer parameter dict."""
    import matmulfree

    from ..arch import convert_model
    from ..convert import ConversionError, calibration_ids_from_text

    model = matmulfree.load_model(checkpoint).eval()
    try:
        return convert_model(model, calib_ids=calibration_ids_from_text(calib_text, model.config.vocab_size))
    except ConversionError as e:
        raise _cli_error()(str(e)) from None


def _print_csim(res, out) -> None:
    verdict = "PASS" if res.passed else "FAIL"
    print(f"csim {verdict}: {res.steps} token steps; tokens {res.tokens_ok}/{res.steps}, logits "
          f"{res.logits_ok}/{res.logits_total} bit-exact vs the integer reference; reset mismatches "
          f"{res.reset_mismatches}; compile {res.compile_seconds:.1f} s ({res.warnings} warnings), run "
          f"{res.run_seconds:.2f} s [{res.compiler}]")
    if not res.passed:
        for line in res.output.splitlines():
            if line.startswith(("MISMATCH", "ERROR")):
                print("  " + line)
        print(f"  full output: {Path(out) / 'build' / 'csim_run.log'}")


def _record_csim(out, res) -> None:
    from .export import load_summary, write_summary

    s = load_summary(out)
    s["csim"] = {k: v for k, v in res.as_dict().items() if k != "output"}
    write_summary(out, s)


def _csim(out, cxx: str = "g++", max_steps: int | None = None):
    from .csim import CsimError, run_csim

    try:
        res = run_csim(out, cxx=cxx, max_steps=max_steps)
    except CsimError as e:
        raise _cli_error()(str(e)) from None
    _print_csim(res, out)
    return res


def run_export(args: argparse.Namespace) -> int:
    """``matmulfree export CHECKPOINT OUT --target vitis``."""
    from .export import ExportError, ExportOptions, export_vitis

    CLIError = _cli_error()
    opts = ExportOptions(part=args.part or DEFAULT_PART, clock_mhz=float(args.clock_mhz or DEFAULT_CLOCK_MHZ),
                         platform=args.platform, stream_weights=bool(args.stream_weights),
                         row_parallel=args.row_parallel, dataflow=not args.no_dataflow, tb_tokens=args.tb_tokens,
                         tb_prompt=args.tb_prompt, onchip_bits=args.onchip_bits)
    try:
        opts.validate()
    except ExportError as e:
        raise CLIError(str(e)) from None
    P = convert_checkpoint(args.checkpoint, getattr(args, "calib_text", None))
    try:
        s = export_vitis(P, args.out, opts, source=str(args.checkpoint))
    except ExportError as e:
        raise CLIError(f"{args.checkpoint}: {e}") from None
    except OverflowError as e:
        raise CLIError(f"{args.checkpoint}: the integer reference overflowed a documented width ({e}); "
                       f"try --calib-text to calibrate the formats") from None
    m, fit, cyc = s["model"], s["memory_bits"]["fit"], s["cycles_model"]
    print(f"vitis export of {args.checkpoint}: d={m['d_model']} layers={m['n_layers']} vocab={m['vocab_size']} "
          f"hidden={m['hidden']} -> {args.out}")
    print(f"on-chip memory: {fit['needed_bits']:,} bits needed of {fit['available_bits']:,} on {fit['part']} "
          f"({100 * fit['utilization']:.2f} %); ternary weights {fit['weight_bits']:,} bits "
          f"{'streamed from DRAM' if opts.stream_weights else 'on chip'}")
    print(f"modelled: {cyc['cycles_per_token']:,} cycles/token (lower bound {cyc['lower_bound_cycles']:,}) -> "
          f"{cyc['tokens_per_s']:,.0f} tokens/s at {opts.clock_mhz:g} MHz")
    if not s["options"]["platform"]:
        print(f"note: no default Vitis platform for {opts.part}; pass --platform, or PLATFORM=... to make")
    print(f"golden data: {s['golden']['steps']} steps ({s['golden']['prompt_tokens']} prompt tokens) from the "
          f"integer reference")
    if args.csim:
        res = _csim(args.out)
        _record_csim(args.out, res)
        return 0 if res.passed else 1
    print(f"next: matmulfree fpga csim {args.out}   (vendor flow: see {Path(args.out) / 'README.md'})")
    return 0


# --------------------------------------------------------------------------- matmulfree fpga csim
def register_fpga(sub) -> None:
    """Add ``matmulfree fpga csim``."""
    p = sub.add_parser("csim", help="C-simulate a Vitis HLS export with g++ (bit-exact vs the integer reference)",
                       description="Compile the exported firmware and testbench with g++ (HLS pragmas ignored), "
                       "run it, and compare every token and logit with the golden data of the Python integer "
                       "reference. Exit status 0 on PASS, 1 on any mismatch.")
    p.add_argument("out", help="export folder written by 'matmulfree export ... --target vitis'")
    p.add_argument("--cxx", default="g++", help="C++ compiler (default g++)")
    p.add_argument("--max-steps", type=int, default=None, help="check only the first N token steps")
    p.set_defaults(func=run_fpga_csim)


def run_fpga_csim(args: argparse.Namespace) -> int:
    from .export import ExportError, load_summary

    CLIError = _cli_error()
    if args.max_steps is not None and args.max_steps < 1:
        raise CLIError(f"--max-steps must be >= 1, got {args.max_steps}")
    try:
        load_summary(args.out)
    except ExportError as e:
        raise CLIError(str(e)) from None
    res = _csim(args.out, args.cxx, args.max_steps)
    if args.max_steps is None:
        _record_csim(args.out, res)
    return 0 if res.passed else 1


__all__ = ["add_export_arguments", "convert_checkpoint", "register_fpga", "run_export", "run_fpga_csim"]
