"""Exact cycle count of one token step, from the static schedule (no simulation).

The core's schedule does not depend on data, so the cycles of every micro-program op follow
from its shape; the tests check this model against the Amaranth simulation cycle for cycle.
Per op, the sequencer spends 3 cycles (fetch, decode, start) plus the unit's run time:

* vector pass: ``4 + chunks + pass_latency`` (+5 for NORM: leading-one, two-step shifts, rsqrt read);
* matvec: ``3 + (G > 1) * (period0 + (G - 2) * period) + chunks + 20 + log2 K + rows of the last
  group`` (start + reciprocal read, issue, quantizer/tree/accumulator pipeline, drain, post unit),
  plus, in a compact core, one for the serial post unit and ``QUANT_HOLD`` before the first issue.
"""

from __future__ import annotations

from .program import DONE, MV, NORM, QUANT_HOLD, Program

#: Pipeline cycles of the vector unit after its last issue, besides the ``log2 K`` tree levels.
PASS_FIXED = 7
#: Matvec cycles beyond issue and drain (start, reciprocal, pipeline, post, settle).
MV_FIXED = 28
#: Extra matvec cycles of a compact core: its serial post unit writes a row one cycle later.
MV_SERIAL_POST = 1
#: Sequencer cycles per op (fetch, decode, start).
SEQ = 3
#: Cycles between two accepted tokens beyond the ops (return to idle).
TOKEN_FIXED = 1


def op_cycles(prog: Program) -> list[tuple[str, int]]:
    """``(name, cycles)`` of every op of one token step."""
    lgK = (prog.K - 1).bit_length()
    out = []
    for o in prog.ops:
        if o.op == DONE:
            out.append((o.name, SEQ))
        elif o.op == MV:
            G = o.groups
            n_last = o.d_out - (G - 1) * prog.R
            issue = (o.period0 + (G - 2) * o.period) if G > 1 else 0
            post = MV_SERIAL_POST + QUANT_HOLD if prog.compact else 0
            out.append((o.name, SEQ + 3 + issue + o.chunks + MV_FIXED + post + lgK + n_last))
        else:
            run = 4 + o.chunks + PASS_FIXED + lgK + (5 if o.op == NORM else 0)
            out.append((o.name, SEQ + run))
    return out


def cycles_per_token(prog: Program) -> int:
    """Cycles between two accepted tokens (steady state) of the generated core."""
    return sum(c for _, c in op_cycles(prog)) + TOKEN_FIXED


def breakdown(prog: Program) -> dict[str, int]:
    """Cycles per token split into ternary issue (the lower-bound part) and everything else."""
    total = cycles_per_token(prog)
    issue = sum(o.chunks * o.groups for o in prog.ops if o.op == MV)
    return {"total": total, "matvec_issue": issue, "lower_bound": prog.lower_bound_cycles(),
            "overhead": total - issue}


__all__ = ["breakdown", "cycles_per_token", "op_cycles"]
