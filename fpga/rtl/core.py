"""The accelerator core: one MatMulFreeLM token step per input token, bit-exact with
:mod:`matmulfree.fpga.intref`.

Structure (all in one clock domain):

* a **sequencer** runs the micro-program of :mod:`.program` (one ROM word per pass or BitLinear);
* the **vector unit** (:mod:`.passes`) streams ``K`` elements per cycle through the embedding,
  the outer RMSNorm gain and the BitLinear RMSNorm (with the integer rsqrt/reciprocal lookups);
* the **matvec unit** (:mod:`.matvec`) quantizes activations to int8 on the fly, adds/subtracts/skips
  ``R x K`` ternary weights per cycle into ``R`` registered adder trees and drains each row group;
* the **post unit** (:mod:`.post`) requantizes each output row and applies the element-wise
  stages (sigmoid/SiLU tables, forget-gate recurrence, output gate, GLU, residual, logits, argmax).

A *compact* core (``prog.compact``, for the iCE40UP5K) takes the same program with one output row at
a time: the serial post unit (:mod:`.post_serial`), multipliers and one variable shifter shared by
units that never run at the same time (:class:`~.arith.MuxedMul`, :class:`~.arith.SharedShift`) and
the tables, embedding and weights in boot-loaded SPRAMs (:mod:`.boot`).

Stream interface: ``tok_in``/``tok_in_valid``/``tok_in_ready`` in; ``tok_out``/``tok_out_valid``
(greedy argmax) and ``logit``/``logit_index``/``logit_valid`` (one logit per cycle, Q(logit_frac))
out. ``clear`` zeroes the recurrent state (a new sequence); ``busy`` is high while working.
"""

from __future__ import annotations

from types import SimpleNamespace

from amaranth.hdl import Module, Mux, Signal, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from . import boot, matvec, passes, post, post_serial
from .arith import MuxedMul, SharedShift, VarShift
from .banks import Banks, DeepRom, ram, rom
from .program import DONE, MV, NORM, NORM_BITS, T_BITS, XQ_BITS, Program


class Core(wiring.Component):
    """Token-step engine for a compiled :class:`~.program.Program`.

    Extra outputs for verification: ``cycles`` (cycles of the last token step) and ``error``
    (sticky: a scale was not ready when the first output row needed it; must stay 0).
    ``dsp="ecp5"`` maps every product register onto an ECP5 ``MULT18X18D`` output register and
    the gain ROMs' second read stage onto the DP16KD output register (builds only; the simulator
    uses the behaviourally identical registers in the fabric); ``dsp="ice40"`` makes the boot-loaded
    memories of a compact core ``SB_SPRAM256KA`` blocks (multipliers are left to yosys).

    A compact core (``prog.compact``) also has ``boot_data``/``boot_valid`` in and ``booted`` out: it
    takes the boot image of :mod:`.boot` one word per cycle before its first token.
    """

    def __init__(self, prog: Program, dsp: str | None = None) -> None:
        self.prog, self.dsp = prog, dsp
        tb = prog.tok_bits
        super().__init__({
            "tok_in": In(tb), "tok_in_valid": In(1), "tok_in_ready": Out(1),
            "tok_out": Out(tb), "tok_out_valid": Out(1),
            "logit": Out(signed(prog.fmt["logit_bits"])), "logit_index": Out(tb), "logit_valid": Out(1),
            "clear": In(1), "busy": Out(1), "cycles": Out(32), "error": Out(1),
            **({"boot_data": In(16), "boot_valid": In(1), "booted": Out(1)} if prog.compact else {}),
        })

    def elaborate(self, platform) -> Module:
        m = Module()
        p = self.prog
        K, fmt = p.K, p.fmt
        cd, ch = p.chunks(p.d), p.chunks(p.d_in_max)
        cx = SimpleNamespace(prog=p, K=K, R=p.R, lgK=(K - 1).bit_length(), fmt=fmt, dsp=self.dsp)

        # ---------------------------------------------------------------- memories
        cx.X = Banks(m, "x", fmt["res_bits"], cd, K)
        cx.T = Banks(m, "t", T_BITS, ch, K)
        cx.F = Banks(m, "f", 18, cd, K)
        cx.C = Banks(m, "c", 18, ch, K)
        cx.H = Banks(m, "h", 18, p.n_layers * cd, K)
        cx.XN = Banks(m, "xn", NORM_BITS, ch, K)
        # The gain ROMs feed registers far away (multipliers, muxes): their data come two cycles
        # after the address, the second stage being the ECP5 block RAM's own output register.
        cx.GM = Banks(m, "gain", 48, p.extra["gain_words"], K, init=p.gmem, writable=False,
                      out_reg=True, prims=self.dsp)
        # The matvec quantizer needs one 16-bit gain slot at a time: a slot-major copy of the gains
        # lets it read that slot straight from a block RAM into a register (no slot mux after the
        # RAM's output, which was the ECP5 critical path).
        cx.GS = Banks(m, "gain_slot", 16, 3 * p.extra["gain_words"], K, writable=False, out_reg=True,
                      prims=self.dsp,
                      init=[[(w >> (16 * s)) & 0xFFFF for s in range(3) for w in bank] for bank in p.gmem])
        cx.xq_rd, cx.xq_wr, cx.xq_data = ram(m, "xq", XQ_BITS * K, ch)
        if not p.compact:  # (compact cores: boot-loaded SPRAMs, below)
            cx.emb = DeepRom(m, "emb", 8 * K, p.emb)
            cx.wmem = DeepRom(m, "weights", 2 * p.lanes, p.wmem)
            cx.recip = rom(m, "lut_recip", 18, p.recip)
            cx.rsqrt = rom(m, "lut_rsqrt", 18, p.rsqrt)
            cx.sig = rom(m, "lut_sigmoid", 17, p.sigmoid)
            cx.silu = rom(m, "lut_silu", 18, p.silu)
        cx.prom = rom(m, "layer_vectors", 32, p.prom) if p.prom else None
        fields = p.op_fields
        prog_rom = rom(m, "program", sum(w for _, w, _ in fields), p.rom_words())

        # ---------------------------------------------------------------- op registers
        cx.op = {}
        pos = 0
        decode = []
        for name, width, sgn in fields:
            s = Signal(signed(width) if sgn else unsigned(width), name=f"op_{name}")
            cx.op[name] = s
            raw = prog_rom.data[pos:pos + width]
            decode.append(s.eq(raw.as_signed() if sgn else raw))
            pos += width
        cur = cx.op["op"]
        if p.compact:
            boot.build(m, cx, self.dsp, self.boot_data, self.boot_valid, self.booted)
        ready = self.booted if p.compact else 1  # a compact core takes tokens once its memories are loaded

        # ---------------------------------------------------------------- shared state
        cx.tok = Signal(p.tok_bits)
        cx.tok_base = Signal(range(max(2, p.vocab * cd)))
        cx.mx_x = Signal(unsigned(fmt["res_bits"]))  # running max |X|
        cx.mx_t = Signal(unsigned(T_BITS))  # running max |T|
        cx.pass_start, cx.pass_done = Signal(), Signal()
        cx.mv_start, cx.mv_done = Signal(), Signal()
        cx.error = self.error
        cx.clear_active = Signal()
        cx.clear_addr = Signal(range(max(2, p.n_layers * cd)))

        # compact cores share multipliers between units that run at different times (unit_sel: 0 vector
        # unit EMBED/GAIN, 1 matvec, 2 vector unit NORM); sides listed per multiplier
        cx.muls = cx.shifter = None
        if p.compact:
            unit = Signal(2, name="unit_sel")
            m.d.sync += unit.eq(Mux(cur == MV, 1, Mux(cur == NORM, 2, 0)))
            in_mv = unit == 1
            cx.muls = {
                # 0: slot-1 product |x*g1| of lane 0 (vector unit); 1: output scale, serial post unit (held)
                "shared": [MuxedMul(m, "shared_mul", in_mv, 2, self.dsp)],
                # 0: T = x*gain (EMBED/GAIN); 1: quantizer z2*recip; 2: slot-0 product (NORM)
                "wide": [MuxedMul(m, f"lane_mul_wide{k}", unit, 3, self.dsp) for k in range(K)],
                # 0: x^2 (vector unit); 1: quantizer xn*gain
                "narrow": [MuxedMul(m, f"lane_mul_narrow{k}", in_mv, 2, self.dsp, NORM_BITS) for k in range(K)],
            }
            # one variable shifter for lane 0 of the vector unit (0) and the quantizer (1), the serial post
            # unit's requantization (2, while cx.post_shift) and the output scale's normalization (3, while
            # cx.scale_shift)
            cx.post_shift, cx.scale_shift = Signal(name="post_shift"), Signal(name="scale_shift")
            sel = Mux(in_mv, Mux(cx.post_shift, 2, Mux(cx.scale_shift, 3, 1)), 0)
            cx.shifter = SharedShift(m, VarShift(T_BITS, -32, 36), sel, 4)

        passes.build(m, cx)
        matvec.build(m, cx)
        (post_serial if p.compact else post).build(m, cx)
        self._connect_ports(m, cx)

        # ---------------------------------------------------------------- sequencer
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
        return m

    @staticmethod
    def _connect_ports(m: Module, cx: SimpleNamespace) -> None:
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
        # Running maxima: the vector unit (embed/gain) and the post unit (residual/T writers).
        for reg_, src in ((cx.mx_x, "x"), (cx.mx_t, "t")):
            rst = getattr(ps, f"rst_{src}") | getattr(pp, f"rst_{src}")
            with m.If(rst):
                m.d.sync += reg_.eq(0)
            if cx.prog.compact:  # one value for both units (passes.build)
                val = getattr(ps, f"val_{src}")[:len(reg_)]
                with m.Elif((getattr(ps, f"upd_{src}") | getattr(pp, f"upd_{src}")) & (val > reg_)):
                    m.d.sync += reg_.eq(val)
                continue
            with m.Elif(getattr(ps, f"upd_{src}") & (getattr(ps, f"val_{src}") > reg_)):
                m.d.sync += reg_.eq(getattr(ps, f"val_{src}"))
            with m.Elif(getattr(pp, f"upd_{src}") & (getattr(pp, f"val_{src}") > reg_)):
                m.d.sync += reg_.eq(getattr(pp, f"val_{src}"))


__all__ = ["Core"]
