"""Cycle-accurate simulation of the generated core (Amaranth's simulator) against the integer
reference :class:`matmulfree.fpga.intref.IntModel`, bit for bit.

:func:`simulate` feeds a prompt token by token and then its own greedy tokens (as
``IntModel.generate`` does) and records every logit, every output token and the exact cycle count
of each token step; :func:`check_against_reference` replays the same input tokens through the
reference and lists every mismatch.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .core import CoreBase
from .program import Program
from .variants import make_core


@dataclass
class SimResult:
    """Per token step ``t``: ``inputs[t]`` fed, ``logits[t] (V,)`` and ``tokens[t]`` out,
    ``cycles[t]`` from the accepting clock edge to the output token, ``period[t]`` between accepts."""

    inputs: list[int]
    logits: np.ndarray
    tokens: list[int]
    cycles: list[int]
    period: list[int]
    error_flag: int
    seconds: float
    mismatches: list[str] = field(default_factory=list)

    @property
    def cycles_per_token(self) -> int:
        """Steady-state cycles between two accepted tokens (constant: the schedule is static)."""
        return int(max(self.period)) if self.period else int(max(self.cycles))

    def as_dict(self) -> dict[str, Any]:
        return {"tokens_simulated": len(self.inputs), "cycles_per_token": self.cycles_per_token,
                "cycles_token_to_token": sorted(set(self.period)), "latency_cycles": sorted(set(self.cycles)),
                "sim_seconds": round(self.seconds, 2), "error_flag": self.error_flag,
                "mismatches": len(self.mismatches)}


async def load_boot_image(ctx, dut: CoreBase, prog: Program) -> None:
    """Testbench step: feed a compact core its boot image (:mod:`.boot`), one word per cycle."""
    from .boot import boot_layout

    ctx.set(dut.boot_valid, 1)
    for w in boot_layout(prog).words:
        ctx.set(dut.boot_data, w)
        await ctx.tick()
    ctx.set(dut.boot_valid, 0)
    if not ctx.get(dut.booted):
        raise RuntimeError("compact core not booted after its boot image")


def simulate(prog: Program, prompt: list[int], n_new: int, core: CoreBase | None = None) -> SimResult:
    """Run ``len(prompt) + n_new - 1`` token steps: the prompt, then greedy feedback.

    Returns a :class:`SimResult` with ``len(prompt) + n_new - 1`` steps (the last generated token
    is not fed back, exactly as ``IntModel.generate``).
    """
    from amaranth.sim import Simulator

    if not prompt:
        raise ValueError("simulate needs a prompt of at least one token")
    dut = core if core is not None else make_core(prog)
    V = prog.vocab
    steps = len(prompt) + max(0, n_new - 1)
    out: dict[str, list] = {"inputs": [], "logits": [], "tokens": [], "cycles": [], "accept": []}

    async def bench(ctx):
        if prog.compact:
            await load_boot_image(ctx, dut, prog)
        cyc = 0
        nxt = int(prompt[0])
        for step in range(steps):
            ctx.set(dut.tok_in, nxt)
            ctx.set(dut.tok_in_valid, 1)
            while True:
                _, _, ready = await ctx.tick().sample(dut.tok_in_ready)
                cyc += 1
                if ready:
                    break
            ctx.set(dut.tok_in_valid, 0)
            out["inputs"].append(nxt)
            out["accept"].append(cyc)
            logits = np.zeros(V, dtype=np.int64)
            start = cyc
            async for _, _, lv, li, lg, tv, to in ctx.tick().sample(
                    dut.logit_valid, dut.logit_index, dut.logit, dut.tok_out_valid, dut.tok_out):
                cyc += 1
                if lv:
                    logits[li] = lg
                if tv:
                    tok_out = int(to)
                    break
            out["logits"].append(logits)
            out["tokens"].append(tok_out)
            out["cycles"].append(cyc - start)
            nxt = int(prompt[step + 1]) if step + 1 < len(prompt) else tok_out
        out["error"] = ctx.get(dut.error)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    t0 = time.perf_counter()
    sim.run()
    secs = time.perf_counter() - t0
    acc = out["accept"]
    return SimResult(inputs=out["inputs"], logits=np.stack(out["logits"]), tokens=out["tokens"],
                     cycles=out["cycles"], period=[b - a for a, b in zip(acc, acc[1:])],
                     error_flag=int(out["error"]), seconds=secs)


class SimulatedPort:
    """A serial port wired to the Amaranth simulation of the board's UART core (:class:`~.uart.UartCore`):
    the host program (:mod:`.host`) without a board. ``write`` queues bytes for the chip's ``rx`` pin (8N1,
    ``divisor`` clocks per bit); ``read(n)`` runs the simulation until ``n`` bytes came out of ``tx`` or
    ``timeout_cycles`` passed (then it returns fewer, like a serial timeout). Slow: about a thousand
    cycles per second, so a compact core's boot image takes minutes."""

    def __init__(self, prog: Program, divisor: int = 4, timeout_cycles: int = 2_000_000) -> None:
        from collections import deque

        from amaranth.sim import Simulator

        from .uart import UartCore

        self.dut, self.divisor, self.timeout_cycles = UartCore(prog, divisor), divisor, timeout_cycles
        self._to_chip: deque[int] = deque()
        self._from_chip: deque[int] = deque()
        self.cycles = 0
        self._sim = Simulator(self.dut)
        self._sim.add_clock(1e-6)
        self._sim.add_testbench(self._drive, background=True)
        self._sim.add_testbench(self._listen, background=True)

    async def _drive(self, ctx):
        while True:
            if not self._to_chip:
                await ctx.tick()
                continue
            byte = self._to_chip.popleft()
            for bit in [0] + [(byte >> i) & 1 for i in range(8)] + [1]:
                ctx.set(self.dut.rx, bit)
                await ctx.tick().repeat(self.divisor)

    async def _listen(self, ctx):
        while True:
            await ctx.tick()
            self.cycles += 1
            if ctx.get(self.dut.tx):
                continue
            await ctx.tick().repeat(self.divisor + self.divisor // 2)  # into the middle of data bit 0
            self.cycles += self.divisor + self.divisor // 2
            v = 0
            for i in range(8):
                v |= ctx.get(self.dut.tx) << i
                await ctx.tick().repeat(self.divisor)
                self.cycles += self.divisor
            self._from_chip.append(v)

    def write(self, data: bytes) -> int:
        self._to_chip.extend(data)
        return len(data)

    def read(self, n: int) -> bytes:
        deadline = self.cycles + self.timeout_cycles
        while len(self._from_chip) < n and self.cycles < deadline:
            self._sim.advance()
        return bytes(self._from_chip.popleft() for _ in range(min(n, len(self._from_chip))))


def reference_mismatches(P: dict[str, Any], inputs: list[int], logits, tokens: list[int],
                         who: str = "rtl") -> list[str]:
    """Replay ``inputs`` through :class:`~matmulfree.fpga.intref.IntModel` and list every step whose
    ``logits[t]`` (V,) or ``tokens[t]`` differ from the reference's (empty = bit-exact); ``who`` names
    the other side."""
    from ..intref import IntModel

    im = IntModel(P, check=False)
    state, errs = None, []
    for t, tok in enumerate(inputs):
        ref_logits, token, state = im.step(np.array([tok]), state)
        ref = ref_logits[0]
        bad = np.nonzero(ref != np.asarray(logits[t]))[0]
        if bad.size:
            i = int(bad[0])
            errs.append(f"step {t} (input {tok}): {bad.size} logits differ, first at {i}: "
                        f"{who} {int(logits[t][i])} vs reference {int(ref[i])}")
        if int(token[0]) != tokens[t]:
            errs.append(f"step {t} (input {tok}): token {who} {tokens[t]} vs reference {int(token[0])}")
    return errs


def check_against_reference(res: SimResult, P: dict[str, Any]) -> list[str]:
    """Replay ``res.inputs`` through :class:`~matmulfree.fpga.intref.IntModel` and return every mismatch
    (empty = bit-exact)."""
    errs = reference_mismatches(P, res.inputs, res.logits, res.tokens)
    if res.error_flag:
        errs.append("core error flag set (scale late or row-group drain overrun)")
    res.mismatches = errs
    return errs


__all__ = ["SimResult", "SimulatedPort", "check_against_reference", "load_boot_image", "reference_mismatches",
           "simulate"]
