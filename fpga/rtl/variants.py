"""The core variants and the one a program was compiled for.

* ``lane`` — :class:`~.lane_core.LaneCore`: pipelined, ``R x K`` lanes, bitstream ROMs (ECP5);
* ``compact`` — :class:`~.compact_core.CompactCore`: one output row at a time, shared multipliers and
  shifter, boot-loaded memories (iCE40UP5K).

``build_program(..., compact=True)`` compiles for the compact core; :func:`make_core` builds the
matching variant with the given :class:`~.primitives.Primitives`.
"""

from __future__ import annotations

from .compact_core import CompactCore
from .core import CoreBase
from .lane_core import LaneCore
from .primitives import Primitives
from .program import Program

#: Variant name -> core class.
CORE_VARIANTS: dict[str, type[CoreBase]] = {LaneCore.variant: LaneCore, CompactCore.variant: CompactCore}


def core_class(prog: Program) -> type[CoreBase]:
    """The variant ``prog`` was compiled for."""
    return CompactCore if prog.compact else LaneCore


def make_core(prog: Program, prims: Primitives | None = None) -> CoreBase:
    """The core for ``prog`` with primitives ``prims`` (default: the simulator's)."""
    return core_class(prog)(prog, prims)


__all__ = ["CORE_VARIANTS", "core_class", "make_core"]
