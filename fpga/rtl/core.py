"""What every accelerator core has, whichever variant: one MatMulFreeLM token step per input token,
bit-exact with :mod:`matmulfree.fpga.intref`.

Structure (all in one clock domain):

* a **sequencer** runs the micro-program of :mod:`.program` (one ROM word per pass or BitLinear);
* the **vector unit** (:mod:`.passes`) streams ``K`` elements per cycle through the embedding,
  the outer RMSNorm gain and the BitLinear RMSNorm (with the integer rsqrt/reciprocal lookups);
* the **matvec unit** (:mod:`.matvec`) quantizes activations to int8 on the fly, adds/subtracts/skips
  ``R x K`` ternary weights per cycle into ``R`` registered adder trees and drains each row group;
* the **post unit** requantizes each output row and applies the element-wise stages (sigmoid/SiLU
  tables, forget-gate recurrence, output gate, GLU, residual, logits, argmax).

:class:`CoreBase` holds the parts both variants share — the stream interface, the vector buffers and
gain ROMs, the program ROM, the sequencer and the buffer port wiring. A variant subclass supplies the
rest: its weight/table/embedding memories (:meth:`CoreBase.memories`), its units
(:meth:`CoreBase.units`) and how the running maxima are fed (:meth:`CoreBase.running_maxima`). The two
variants are :class:`~.lane_core.LaneCore` (pipelined, ``R x K`` lanes; ECP5) and
:class:`~.compact_core.CompactCore` (one output row at a time, shared multipliers and shifter,
boot-loaded memories; iCE40UP5K); :func:`~.variants.make_core` picks the one a program was compiled for.

Stream interface: ``tok_in``/``tok_in_valid``/``tok_in_ready`` in; ``tok_out``/``tok_out_valid``
(greedy argmax) and ``logit``/``logit_index``/``logit_valid`` (one logit per cycle, Q(logit_frac))
out. ``clear`` zeroes the recurrent state (a new sequence); ``busy`` is high while working.
"""

from __future__ import annotations

from types import SimpleNamespace

from amaranth.hdl import Module, Signal, Value, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from .banks import Banks, ram, rom
from .primitives import Primitives
from .program import DONE, MV, NORM_BITS, T_BITS, XQ_BITS, Program


class CoreBase(wiring.Component):
    """Token-step engine for a compiled :class:`~.program.Program` (a variant subclass does the units).

    ``prims`` picks the FPGA primitives (:class:`~.primitives.Primitives`; the default is what the
    simulator runs). Extra outputs for verification: ``cycles`` (cycles of the last token step) and
    ``error`` (sticky: a scale was not ready when the first output row needed it, or rows came too close;
    must stay 0).
    """

    #: Name of the variant (``Program.summary()`` and the docs use it).
    variant = ""

    def __init__(self, prog: Program, prims: Primitives | None = None) -> None:
        self.prog, self.prims = prog, prims or Primitives()
        try:
            self.check(prog, self.prims)
        except ValueError:
            self._MustUse__silence = True  # refused: no "created but never used" warning from Amaranth
            raise
        tb = prog.tok_bits
        super().__init__({
            "tok_in": In(tb), "tok_in_valid": In(1), "tok_in_ready": Out(1),
            "tok_out": Out(tb), "tok_out_valid": Out(1),
            "logit": Out(signed(prog.fmt["logit_bits"])), "logit_index": Out(tb), "logit_valid": Out(1),
            "clear": In(1), "busy": Out(1), "cycles": Out(32), "error": Out(1),
            **self.extra_ports(),
        })

    # ------------------------------------------------------------------ what a variant supplies
    @classmethod
    def check(cls, prog: Program, prims: Primitives) -> None:
        """Raise ``ValueError`` (:class:`~.program.ProgramError` for the program) naming what this variant
        cannot build."""

    def extra_ports(self) -> dict[str, wiring.Member]:
        """Ports beyond the stream interface."""
        return {}

    def memories(self, m: Module, cx: SimpleNamespace) -> None:
        """Weights ``cx.wmem`` and embedding ``cx.emb`` (data two cycles after the address), tables
        ``cx.recip``, ``cx.rsqrt``, ``cx.sig``, ``cx.silu`` (one cycle)."""
        raise NotImplementedError

    def ready(self) -> Value | int:
        """When the core takes tokens (and ``clear``)."""
        return 1

    def units(self, m: Module, cx: SimpleNamespace) -> None:
        """Vector, matvec and post units; they leave their buffer ports in ``cx.ps``, ``cx.mv``, ``cx.pp``."""
        raise NotImplementedError

    def running_maxima(self, m: Module, cx: SimpleNamespace) -> None:
        """Update ``cx.mx_x`` / ``cx.mx_t`` (running max ``|X|`` / ``|T|``) from the vector and post units."""
        raise NotImplementedError

    # ------------------------------------------------------------------ shared parts
    def elaborate(self, platform) -> Module:
        m = Module()
        p = self.prog
        cx = SimpleNamespace(prog=p, K=p.K, R=p.R, lgK=(p.K - 1).bit_length(), fmt=p.fmt, prims=self.prims,
                             multipliers=self.prims.multipliers)
        buffers(m, cx)
        prog_rom, decode = program_rom(m, cx)
        self.memories(m, cx)
        shared_state(m, cx, self.error)
        self.units(m, cx)
        connect_ports(m, cx)
        self.running_maxima(m, cx)
        self._sequencer(m, cx, prog_rom, decode)
        return m

    def _sequencer(self, m: Module, cx: SimpleNamespace, prog_rom, decode: list) -> None:
        """Fetch, decode and start one op at a time; count the cycles of a token step; clear the state."""
        p = self.prog
        cd = p.chunks(p.d)
        cur = cx.op["op"]
        ready = self.ready()
        pc = Signal(range(len(p.ops) + 1))
        m.d.comb += prog_rom.addr.eq(pc)
        cyc = Signal(32)
        clr = Signal(range(max(2, p.n_layers * cd + 1)))
        with m.FSM(name="seq"):
            with m.State("IDLE"):
                m.d.comb += self.tok_in_ready.eq(ready)
                with m.If(self.clear & ready):
                    m.d.sync += clr.eq(0)
                    m.next = "CLEAR"
                with m.Elif(self.tok_in_valid & ready):
                    m.d.sync += [cx.tok.eq(self.tok_in), cx.tok_base.eq(self.tok_in * cd), pc.eq(0), cyc.eq(1)]
                    m.next = "FETCH"
            with m.State("CLEAR"):
                m.d.comb += [cx.clear_active.eq(1), cx.clear_addr.eq(clr)]
                m.d.sync += clr.eq(clr + 1)
                with m.If(clr == p.n_layers * cd - 1):
                    m.next = "IDLE"
            with m.State("FETCH"):
                m.d.sync += cyc.eq(cyc + 1)
                m.next = "DECODE"
            with m.State("DECODE"):
                m.d.sync += [cyc.eq(cyc + 1), *decode]
                m.next = "START"
            with m.State("START"):
                m.d.sync += cyc.eq(cyc + 1)
                with m.If(cur == DONE):
                    m.d.comb += self.tok_out_valid.eq(1)
                    m.d.sync += self.cycles.eq(cyc)
                    m.next = "IDLE"
                with m.Else():
                    m.d.comb += [cx.mv_start.eq(cur == MV), cx.pass_start.eq(cur != MV)]
                    m.next = "RUN"
            with m.State("RUN"):
                m.d.sync += cyc.eq(cyc + 1)
                with m.If(cx.pass_done | cx.mv_done):
                    m.d.sync += pc.eq(pc + 1)
                    m.next = "FETCH"
        m.d.comb += [self.busy.eq(~self.tok_in_ready), self.tok_out.eq(cx.best_j),
                     self.logit.eq(cx.logit), self.logit_index.eq(cx.logit_j), self.logit_valid.eq(cx.logit_v)]


def buffers(m: Module, cx: SimpleNamespace) -> None:
    """The vector buffers ``X``, ``T``, ``F``, ``C``, ``H`` (state), ``XN``, the ``x_q`` buffer and the
    two gain ROMs (``cx.prims.gain_rom``), each banked over ``K`` lanes (:class:`~.banks.Banks`)."""
    p, K = cx.prog, cx.K
    cd, ch = p.chunks(p.d), p.chunks(p.d_in_max)
    cx.X = Banks(m, "x", cx.fmt["res_bits"], cd, K)
    cx.T = Banks(m, "t", T_BITS, ch, K)
    cx.F = Banks(m, "f", 18, cd, K)
    cx.C = Banks(m, "c", 18, ch, K)
    cx.H = Banks(m, "h", 18, p.n_layers * cd, K)
    cx.XN = Banks(m, "xn", NORM_BITS, ch, K)
    # The gain ROMs feed registers far away (multipliers, muxes): their data come two cycles
    # after the address, the second stage being the ECP5 block RAM's own output register.
    cx.GM = Banks(m, "gain", 48, p.extra["gain_words"], K, init=p.gmem, writable=False,
                  out_reg=True, rom_primitive=cx.prims.gain_rom)
    # The matvec quantizer needs one 16-bit gain slot at a time: a slot-major copy of the gains
    # lets it read that slot straight from a block RAM into a register (no slot mux after the
    # RAM's output, which was the ECP5 critical path).
    cx.GS = Banks(m, "gain_slot", 16, 3 * p.extra["gain_words"], K, writable=False, out_reg=True,
                  rom_primitive=cx.prims.gain_rom,
                  init=[[(w >> (16 * s)) & 0xFFFF for s in range(3) for w in bank] for bank in p.gmem])
    cx.xq_rd, cx.xq_wr, cx.xq_data = ram(m, "xq", XQ_BITS * K, ch)


def program_rom(m: Module, cx: SimpleNamespace) -> tuple:
    """The per-layer vector ROM ``cx.prom`` (if used), the program ROM and the op registers ``cx.op``
    (decoded from the ROM word at the sequencer's DECODE). Returns ``(program read port, decode)``."""
    p = cx.prog
    cx.prom = rom(m, "layer_vectors", 32, p.prom) if p.prom else None
    fields = p.op_fields
    prog_rom = rom(m, "program", sum(w for _, w, _ in fields), p.rom_words())
    cx.op = {}
    pos = 0
    decode = []
    for name, width, sgn in fields:
        s = Signal(signed(width) if sgn else unsigned(width), name=f"op_{name}")
        cx.op[name] = s
        raw = prog_rom.data[pos:pos + width]
        decode.append(s.eq(raw.as_signed() if sgn else raw))
        pos += width
    return prog_rom, decode


def shared_state(m: Module, cx: SimpleNamespace, error: Signal) -> None:
    """Token, running maxima, unit handshakes and the state-clear address."""
    p = cx.prog
    cd = p.chunks(p.d)
    cx.tok = Signal(p.tok_bits)
    cx.tok_base = Signal(range(max(2, p.vocab * cd)))
    cx.mx_x = Signal(unsigned(cx.fmt["res_bits"]))  # running max |X|
    cx.mx_t = Signal(unsigned(T_BITS))  # running max |T|
    cx.pass_start, cx.pass_done = Signal(), Signal()
    cx.mv_start, cx.mv_done = Signal(), Signal()
    cx.error = error
    cx.clear_active = Signal()
    cx.clear_addr = Signal(range(max(2, p.n_layers * cd)))


def connect_ports(m: Module, cx: SimpleNamespace) -> None:
    """Memory ports shared by the vector unit (non-matvec ops) and the matvec/post units."""
    K = cx.K
    is_mv = cx.op["op"] == MV
    ps, mv, pp = cx.ps, cx.mv, cx.pp
    for k in range(K):
        # X: vector unit reads (gain) / writes (embed); post unit read-modify-writes.
        with m.If(is_mv):
            m.d.comb += [cx.X.rd[k].addr.eq(pp.addr), cx.F.rd[k].addr.eq(pp.addr)]
            m.d.comb += [cx.X.wr[k].addr.eq(pp.waddr), cx.X.wr[k].data.eq(pp.x_wd),
                         cx.X.wr[k].en.eq(pp.we_x & (pp.wbank == k))]
            m.d.comb += [cx.T.wr[k].addr.eq(pp.waddr), cx.T.wr[k].data.eq(pp.t_wd),
                         cx.T.wr[k].en.eq(pp.we_t & (pp.wbank == k))]
        with m.Else():
            m.d.comb += [cx.X.rd[k].addr.eq(ps.addr), cx.F.rd[k].addr.eq(ps.f_addr)]
            m.d.comb += [cx.X.wr[k].addr.eq(ps.waddr), cx.X.wr[k].data.eq(ps.wd[k]),
                         cx.X.wr[k].en.eq(ps.we_x)]
            m.d.comb += [cx.T.wr[k].addr.eq(ps.waddr), cx.T.wr[k].data.eq(ps.wd[k]),
                         cx.T.wr[k].en.eq(ps.we_t)]
        m.d.comb += [cx.T.rd[k].addr.eq(ps.addr), cx.GM.rd[k].addr.eq(ps.gm_addr), cx.GS.rd[k].addr.eq(mv.gs_addr),
                     cx.XN.rd[k].addr.eq(mv.xn_addr),
                     cx.XN.wr[k].addr.eq(ps.xn_waddr), cx.XN.wr[k].data.eq(ps.xn_wd[k]),
                     cx.XN.wr[k].en.eq(ps.we_xn),
                     cx.F.wr[k].addr.eq(pp.waddr), cx.F.wr[k].data.eq(pp.f_wd),
                     cx.F.wr[k].en.eq(pp.we_f & (pp.wbank == k)),
                     cx.C.rd[k].addr.eq(pp.addr),
                     cx.C.wr[k].addr.eq(pp.waddr), cx.C.wr[k].data.eq(pp.c_wd),
                     cx.C.wr[k].en.eq(pp.we_c & (pp.wbank == k)),
                     cx.H.rd[k].addr.eq(pp.h_addr)]
        with m.If(cx.clear_active):
            m.d.comb += [cx.H.wr[k].addr.eq(cx.clear_addr), cx.H.wr[k].data.eq(0), cx.H.wr[k].en.eq(1)]
        with m.Else():
            m.d.comb += [cx.H.wr[k].addr.eq(pp.h_waddr), cx.H.wr[k].data.eq(pp.h_wd),
                         cx.H.wr[k].en.eq(pp.we_h & (pp.wbank == k))]


__all__ = ["CoreBase", "buffers", "connect_ports", "program_rom", "shared_state"]
