"""FPGA figures from the RTL build's ``summary.json`` (and the HLS export's reports).

Speed (**modelled**): tokens/s = Fmax / cycles per token (``docs/design.md``, "Figures"): Fmax from
nextpnr's static timing, cycles per token from the cycle-accurate simulation of the RTL.

Power (**modelled**): ``P = P_static + sum_r n_r * E_r * a_r * f`` over the used resources ``r``
(``n_r`` from the summary, ``f`` = Fmax), with

* LUT4 and flip-flop outputs toggling on a fraction ``toggle`` of cycles (default 12.5 %, the
  default toggle rate of AMD's Xilinx Power Estimator, UG440: "one transition every eight
  cycles"), plus every flip-flop's clock pin each cycle;
* block RAMs and multipliers active on a fraction ``duty`` of cycles: by default the share of
  cycles in which the datapath streams weights, ``cycles_per_token_lower_bound /
  cycles_per_token`` (the weight memories are read and the multipliers fed in those cycles).

Constants, per device family (see :data:`FAMILIES`):

* Static power: ECP5 core supply current 77 mA (LFE5U-12F/25F) to 212 mA (LFE5U-85F) at 1.1 V, the
  data-sheet figures as quoted in github.com/butterstick-fpga/butterstick-hardware issue #2 (45F
  interpolated by LUT count); iCE40 UltraPlus "as low as 100 uA standby current typical" at 1.2 V
  (iCE40 UltraPlus Family Data Sheet FPGA-DS-02008). VCCAUX and I/O bank currents are left out.
* Dynamic energies per event: **our estimates, not vendor figures** (uncertain by perhaps 3x):
  ``E = C_eff * V^2`` with an effective switched capacitance of 0.8 pF per LUT output net
  (including its routing, which dominates FPGA dynamic power: Li et al., "Power modeling and
  characteristics of FPGAs", IEEE TCAD 24(11), 2005), 0.4 pF per flip-flop output and 0.05 pF of
  clock tree per flip-flop per cycle; 20 pJ per ECP5 DP16KD access and 8 pJ per iCE40 4-kbit EBR
  access; 15 pJ per ECP5 MULT18X18D and 8 pJ per iCE40 DSP operation; 25 pJ per access of an
  iCE40 UltraPlus 256-kbit SPRAM (about three EBR accesses: a 64 times larger array; the compact core
  reads its weights from one on every streaming cycle, and the same duty is charged to all four, an
  overestimate). Use the Lattice Power
  Calculator with the build's netlist, or measure the board and pass ``--fpga-watts``, for
  figures to rely on.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .ops import read_json_object

#: XPE's default toggle rate.
DEFAULT_TOGGLE = 0.125


@dataclass(frozen=True)
class Family:
    """Per-family power constants (volts, picofarads, picojoules, watts)."""

    vcc: float
    c_lut_pf: float
    c_ff_pf: float
    c_clock_per_ff_pf: float
    e_bram_pj: float
    e_mult_pj: float
    static_w: dict[str, float]
    source: str
    e_spram_pj: float = 0.0


#: Power constants of the supported device families, by ``summary.json`` target name.
FAMILIES: dict[str, Family] = {
    "ecp5": Family(vcc=1.1, c_lut_pf=0.8, c_ff_pf=0.4, c_clock_per_ff_pf=0.05, e_bram_pj=20.0, e_mult_pj=15.0,
                   static_w={"25k": 1.1 * 0.077, "45k": 1.1 * 0.1215, "85k": 1.1 * 0.212},
                   source="static: ECP5 data-sheet core current (77-212 mA at 1.1 V, 45F interpolated); "
                          "dynamic: C*V^2 estimates (see matmulfree.energy.fpga)"),
    "ice40": Family(vcc=1.2, c_lut_pf=0.8, c_ff_pf=0.4, c_clock_per_ff_pf=0.05, e_bram_pj=8.0, e_mult_pj=8.0,
                    static_w={"up5k": 1.2 * 100e-6}, e_spram_pj=25.0,
                    source="static: iCE40 UltraPlus data sheet (100 uA standby at 1.2 V); "
                           "dynamic: C*V^2 estimates (see matmulfree.energy.fpga)"),
}


class FPGASummaryError(ValueError):
    """A summary or report file is missing, unreadable or lacks a field (message names it)."""


REQUIRED = ("target", "device", "fmax_mhz", "resources", "cycles_per_token", "cycles_per_token_lower_bound")


def load_summary(path: str | Path) -> dict[str, Any]:
    """Read and check an RTL build ``summary.json`` (a folder holding one is accepted too)."""
    path = Path(path)
    if path.is_dir():
        path = path / "summary.json"
    s = read_json_object(path, FPGASummaryError)
    missing = [k for k in REQUIRED if k not in s]
    if missing:
        raise FPGASummaryError(f"{path}: missing field(s) {missing} (not an RTL build summary.json?)")
    if s["target"] not in FAMILIES:
        raise FPGASummaryError(f"{path}: target {s['target']!r} has no power model; known: {sorted(FAMILIES)}")
    if s["device"] not in FAMILIES[s["target"]].static_w:
        raise FPGASummaryError(f"{path}: device {s['device']!r} has no static-power figure; known: "
                               f"{sorted(FAMILIES[s['target']].static_w)}")
    for k in ("fmax_mhz", "cycles_per_token"):
        v = s[k]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0:
            raise FPGASummaryError(f"{path}: field '{k}' must be a positive number, got {v!r}")
    for r in ("lut4", "ff", "bram", "mult"):
        if not isinstance(s["resources"].get(r, {}).get("used"), int):
            raise FPGASummaryError(f"{path}: field 'resources.{r}.used' missing or not an integer")
    s["_path"] = str(path)
    return s


def fpga_model(s: dict[str, Any], toggle: float = DEFAULT_TOGGLE, duty: float | None = None) -> dict[str, Any]:
    """Modelled tokens/s, watts (static + dynamic by resource) and joules/token of a build summary."""
    fam = FAMILIES[s["target"]]
    f_hz = float(s["fmax_mhz"]) * 1e6
    cycles = int(s["cycles_per_token"])
    if duty is None:
        duty = min(1.0, int(s["cycles_per_token_lower_bound"]) / cycles)
    res = {r: int(s["resources"][r]["used"]) for r in ("lut4", "ff", "bram", "mult")}
    res["spram"] = int(s["resources"].get("spram", {}).get("used", 0))
    v2 = fam.vcc**2
    dyn = {
        "lut4": res["lut4"] * fam.c_lut_pf * 1e-12 * v2 * toggle * f_hz,
        "ff": res["ff"] * (fam.c_ff_pf * toggle + fam.c_clock_per_ff_pf) * 1e-12 * v2 * f_hz,
        "bram": res["bram"] * fam.e_bram_pj * 1e-12 * duty * f_hz,
        "mult": res["mult"] * fam.e_mult_pj * 1e-12 * duty * f_hz,
        "spram": res["spram"] * fam.e_spram_pj * 1e-12 * duty * f_hz,
    }
    static = fam.static_w[s["device"]]
    watts = static + sum(dyn.values())
    tps = f_hz / cycles
    return {
        "target": s["target"], "device": s["device"], "fmax_mhz": float(s["fmax_mhz"]),
        "timing_met": s.get("timing_met"), "cycles_per_token": cycles, "tokens_per_s": tps,
        "static_w": static, "dynamic_w": dyn, "watts": watts, "joules_per_token": watts / tps,
        "dynamic_joules_per_token": sum(dyn.values()) / tps, "toggle": toggle, "duty": duty,
        "constants": fam.source,
    }  # fmt: skip


def hls_figures(path: str | Path, tokens_per_call: int = 1) -> dict[str, Any]:
    """Expected cycles per token and clock from an HLS report: the export's ``export.json`` (its
    modelled cycle count), or a Vitis HLS ``*_csynth.xml`` (estimated clock period and
    average-case latency of one call, covering ``tokens_per_call`` tokens)."""
    path = Path(path)
    if path.is_dir():
        path = path / "export.json"
    if not path.is_file():
        raise FPGASummaryError(f"{path}: no such HLS report (pass export.json, an export folder or *_csynth.xml)")
    if path.suffix == ".json":
        try:
            s = json.loads(path.read_text())
            cyc = s["cycles_model"]
            return {"source": f"{path} (HLS export cycle model)", "cycles_per_token": float(cyc["cycles_per_token"]),
                    "clock_mhz": float(cyc["clock_mhz"]), "part": s.get("part", {}).get("name")}  # fmt: skip
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise FPGASummaryError(f"{path}: not an HLS export.json with cycles_model ({e})") from None
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        raise FPGASummaryError(f"{path}: not valid XML ({e})") from None

    def num(tag: str) -> float:
        el = root.find(f".//{tag}")
        try:
            return float(el.text)
        except (AttributeError, TypeError, ValueError):
            raise FPGASummaryError(f"{path}: no numeric <{tag}> (not a Vitis HLS csynth.xml?)") from None

    period = num("EstimatedClockPeriod")
    try:
        latency = num("Average-caseLatency")
    except FPGASummaryError:
        latency = num("Worst-caseLatency")
    if period <= 0 or latency <= 0 or tokens_per_call < 1:
        raise FPGASummaryError(f"{path}: clock period {period} ns / latency {latency} cycles must be positive")
    part = root.find(".//Part")
    return {"source": f"{path} (Vitis HLS csynth estimate)", "cycles_per_token": latency / tokens_per_call,
            "clock_mhz": 1000.0 / period, "part": None if part is None else part.text}  # fmt: skip


__all__ = ["DEFAULT_TOGGLE", "FAMILIES", "FPGASummaryError", "Family", "fpga_model", "hls_figures", "load_summary"]
