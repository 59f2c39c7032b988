"""Which FPGA primitives a core's multipliers and memories map onto (no Amaranth import: the build and
the CLI read these choices without generating RTL).

Three independent choices, each named for what it picks:

* ``multipliers`` — every registered product of the datapath: ``"inferred"`` writes ``reg(a * b)`` and
  leaves the mapping to synthesis (the simulator runs it; ``synth_ice40 -dsp`` packs it into
  ``SB_MAC16`` blocks), ``"mult18x18d"`` instantiates an ECP5 ``MULT18X18D`` whose own output register
  is the product register (routing stays out of the multiplier's timing path).
* ``weight_memory`` — where the ternary weights live (and, in the compact core, the embedding and the
  tables): ``"block_ram"`` in memories that synthesis maps onto block RAM (the lane core: ROMs
  initialised by the bitstream; the compact core: its boot-loaded memories as plain RAMs, which the
  simulator runs), ``"spram"`` in ``SB_SPRAM256KA`` instances of the iCE40 UltraPlus (the compact core
  only: a bitstream cannot initialise them, so they are boot-loaded).
* ``gain_rom`` — the two norm-gain ROMs, whose data come two cycles after the address:
  ``"inferred"`` (a memory and one fabric register) or ``"dp16kd"`` (ECP5 ``DP16KD`` blocks whose
  output register, ``REGMODE=OUTREG``, is the second stage).

The simulator needs the defaults (``inferred``, ``block_ram``, ``inferred``); :func:`for_target` gives
the choices of each build target.
"""

from __future__ import annotations

from dataclasses import dataclass

#: ``multipliers`` values and what each one generates.
MULTIPLIERS = {
    "inferred": "reg(a * b), mapped by synthesis (SB_MAC16 on iCE40 with yosys -dsp)",
    "mult18x18d": "ECP5 MULT18X18D instances with the product register inside the block",
}
#: ``weight_memory`` values and what each one generates.
WEIGHT_MEMORIES = {
    "block_ram": "memories that synthesis maps onto block RAM (bitstream ROMs in the lane core)",
    "spram": "iCE40 UltraPlus SB_SPRAM256KA instances, loaded at boot (compact core only)",
}
#: ``gain_rom`` values and what each one generates.
GAIN_ROMS = {
    "inferred": "a memory plus one fabric register",
    "dp16kd": "ECP5 DP16KD blocks whose output register (OUTREG) is the second read stage",
}


@dataclass(frozen=True)
class Primitives:
    """The three primitive choices of one core (see the module docstring); checked on construction."""

    multipliers: str = "inferred"
    weight_memory: str = "block_ram"
    gain_rom: str = "inferred"

    def __post_init__(self) -> None:
        for name, known in (("multipliers", MULTIPLIERS), ("weight_memory", WEIGHT_MEMORIES),
                            ("gain_rom", GAIN_ROMS)):
            value = getattr(self, name)
            if value not in known:
                raise ValueError(f"{name}={value!r} is not one of {sorted(known)}")


def for_target(target: str, compact: bool, dsp_regs: bool = True) -> Primitives:
    """The primitives a build for ``target`` generates: ECP5 ``MULT18X18D`` and ``DP16KD`` gain ROMs
    (plain fabric registers with ``dsp_regs=False``), iCE40 inferred multipliers and, for a compact
    core, its boot-loaded memories in SPRAM."""
    if target == "ecp5":
        return Primitives(multipliers="mult18x18d", gain_rom="dp16kd") if dsp_regs else Primitives()
    if target == "ice40":
        return Primitives(weight_memory="spram" if compact else "block_ram")
    raise ValueError(f"unknown target {target!r}; known: ['ecp5', 'ice40']")


__all__ = ["GAIN_ROMS", "MULTIPLIERS", "WEIGHT_MEMORIES", "Primitives", "for_target"]
