"""The lane core: the pipelined accelerator core for FPGAs with room for it (ECP5; ``--target ecp5``).

``R x K`` lanes (``R`` output rows x ``K`` inputs per cycle), every unit with its own multipliers and
shifters, a new output row each cycle through the pipelined post unit (:mod:`.post`), and the ternary
weights, embedding and tables in block-RAM ROMs that the bitstream initialises. Built from the shared
stages of :mod:`.passes` and :mod:`.matvec` plus the pieces below, which are this variant's own:

* vector unit — the product operands (``F`` / gain slot 0, the three gain slots) read with the sources
  and delayed alongside them; every lane its own shifter; the products registered once more before
  ``|.|`` (a multiplier output, a 36-bit negation and the routing between them did not fit one 10 ns
  cycle); three leading-one encoders and shifters for the slot mantissas;
* matvec unit — every quantizer lane its own coarse/fine shifter; the weight and ``x_q`` addresses as
  delay chains of the issue counters; the output scale's two products on their own multipliers;
* running maxima — the vector and post units each bring their own ``|.|`` value.
"""

from __future__ import annotations

from types import SimpleNamespace

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed, unsigned

from . import matvec, passes, post
from .arith import VarShift, abs_, bitlength, delay, mul_reg, reg
from .banks import DeepRom, lane, rom
from .core import CoreBase
from .primitives import Primitives
from .program import MANT_BITS, NORM_BITS, T_BITS, Program, ProgramError


class LaneCore(CoreBase):
    """The pipelined core (see the module docstring) for a program built with ``compact=False``."""

    variant = "lane"

    @classmethod
    def check(cls, prog: Program, prims: Primitives) -> None:
        if prog.compact:
            raise ProgramError("LaneCore: the program was compiled for the compact core "
                               "(build_program(..., compact=True)); use CompactCore or make_core")
        if prims.weight_memory != "block_ram":
            raise ValueError(f"LaneCore: weight_memory={prims.weight_memory!r}; the lane core keeps its weights "
                             "in block-RAM ROMs (weight_memory='block_ram'); boot-loaded SPRAM is the compact "
                             "core's")

    def memories(self, m: Module, cx: SimpleNamespace) -> None:
        """Bitstream-initialised ROMs: embedding and weights as :class:`~.banks.DeepRom` (two cycles), the
        four tables as single block-RAM ROMs (one cycle)."""
        p = self.prog
        cx.emb = DeepRom(m, "emb", 8 * p.K, p.emb)
        cx.wmem = DeepRom(m, "weights", 2 * p.lanes, p.wmem)
        cx.recip = rom(m, "lut_recip", 18, p.recip)
        cx.rsqrt = rom(m, "lut_rsqrt", 18, p.rsqrt)
        cx.sig = rom(m, "lut_sigmoid", 17, p.sigmoid)
        cx.silu = rom(m, "lut_silu", 18, p.silu)

    def units(self, m: Module, cx: SimpleNamespace) -> None:
        vector_unit(m, cx)
        matvec_unit(m, cx)
        post.build(m, cx)

    def running_maxima(self, m: Module, cx: SimpleNamespace) -> None:
        ps, pp = cx.ps, cx.pp
        for reg_, src in ((cx.mx_x, "x"), (cx.mx_t, "t")):
            with m.If(getattr(ps, f"rst_{src}") | getattr(pp, f"rst_{src}")):
                m.d.sync += reg_.eq(0)
            with m.Elif(getattr(ps, f"upd_{src}") & (getattr(ps, f"val_{src}") > reg_)):
                m.d.sync += reg_.eq(getattr(ps, f"val_{src}"))
            with m.Elif(getattr(pp, f"upd_{src}") & (getattr(pp, f"val_{src}") > reg_)):
                m.d.sync += reg_.eq(getattr(pp, f"val_{src}"))


# ---------------------------------------------------------------------- vector unit
def vector_unit(m: Module, cx: SimpleNamespace) -> None:
    """The vector unit of :mod:`.passes` with the lane core's operand delays, products and masking."""
    K, op, mul = cx.K, cx.op, cx.multipliers
    vs = passes.LANE_SHIFT
    v = passes.control(m, cx, vs)
    passes.issue(m, cx, v)
    src2 = passes.sources(m, cx, v)
    ps = cx.ps
    # F and the gains are read with the sources and delayed alongside them to the V5 products
    ps.f_addr, ps.gm_addr = v.c, ps.g_addr
    op4 = [delay(m, reg(m, passes.operand(cx, k), signed(18), name=f"v_op2_{k}"), 3, f"v_op_{k}") for k in range(K)]
    g4 = [delay(m, reg(m, cx.GM.data(k), name=f"v_g2_{k}"), 3, f"v_g_{k}") for k in range(K)]
    x5 = passes.embed_lanes(m, cx)

    # V3 shift, V4 round + sat16
    u3 = [reg(m, vs.shift(src2[k], v.amt), vs.mid_shape, name=f"v_u3_{k}") for k in range(K)]
    xs4 = passes.round_lanes(m, cx, v, u3)

    # V5 products
    t5 = [mul_reg(m, xs4[k], op4[k], signed(T_BITS), f"v_t5_{k}", mul) for k in range(K)]
    sq5 = [mul_reg(m, xs4[k], xs4[k], unsigned(2 * NORM_BITS - 1), f"v_sq5_{k}", mul) for k in range(K)]
    z5 = [[mul_reg(m, xs4[k], lane(g4[k], b, 16).as_signed(), signed(32), f"v_z5_{b}_{k}", mul)
           for k in range(K)] for b in range(3)]
    passes.write_back(m, cx, v, x5, t5)

    # V6 registered, V7 masked |.|, then the trees
    w6 = [reg(m, ps.wd[k], signed(T_BITS), name=f"v_w6_{k}") for k in range(K)]
    sq6 = [reg(m, sq5[k], name=f"v_sq6_{k}") for k in range(K)]
    a7 = [reg(m, Mux(passes.mask(v, 7, k), abs_(w6[k]), 0), unsigned(T_BITS), name=f"v_a7_{k}") for k in range(K)]
    s7 = [reg(m, Mux(passes.mask(v, 7, k), sq6[k], 0), unsigned(2 * NORM_BITS - 1), name=f"v_s7_{k}")
          for k in range(K)]
    slots = [(b, k) for b in range(3) for k in range(K)]
    # one registered enable per (slot, lane): each drives 32 clears, not all 3 x 32 + 67 of mask(7, k)
    zen = {(b, k): reg(m, passes.mask(v, 6, k) & (b < op["fanout"]), name=f"v_zen7_{b}_{k}") for b, k in slots}
    z6 = {(b, k): reg(m, z5[b][k], name=f"v_z6_{b}_{k}") for b, k in slots}
    za = {(b, k): reg(m, Mux(zen[b, k], abs_(z6[b, k]), 0), unsigned(32), name=f"v_za7_{b}_{k}")
          for b, k in slots}
    passes.reduce(m, cx, v, a7, s7, [[za[b, k] for k in range(K)] for b in range(3)])
    passes.norm_finish(m, cx, v)
    slot_mantissas(m, cx, v)


def slot_mantissas(m: Module, cx: SimpleNamespace, v: SimpleNamespace) -> None:
    """NORM finish, per gain slot ``b`` (all three at once): ``e_b = bitlength(max|z_b|)`` (FIN0), the
    11-bit mantissa ``m_b`` of ``max|z_b|`` through a coarse (FIN1) and a fine (FIN2) shift (1024 when
    the max is 0)."""
    zmax, e_b, m_b, fsm = cx.zmax, cx.e_b, cx.m_b, v.fsm
    z_mid = [Signal(32 + 11, name=f"zmid{b}") for b in range(3)]
    with m.If(fsm.ongoing("FIN0") & v.is_norm):
        m.d.sync += [e_b[b].eq(bitlength(zmax[b])) for b in range(3)]
    with m.If(fsm.ongoing("FIN1")):
        m.d.sync += [z_mid[b].eq((zmax[b] << 11) >> Cat(Const(0, 3), e_b[b][3:])) for b in range(3)]
    with m.If(fsm.ongoing("FIN2")):
        m.d.sync += [m_b[b].eq(Mux(zmax[b] == 0, 1024, (z_mid[b] >> e_b[b][:3])[:11])) for b in range(3)]


# ---------------------------------------------------------------------- matvec unit
def matvec_unit(m: Module, cx: SimpleNamespace) -> None:
    """The matvec unit of :mod:`.matvec` with the lane core's quantizer products and address delay chains."""
    K, mul = cx.K, cx.multipliers
    qs = matvec.QUANT_SHIFT
    v = matvec.control(m, cx, qs)
    xn3, gs3 = matvec.quant_inputs(m, cx)
    z4 = [mul_reg(m, xn3[k], gs3[k], signed(32), f"q_z4_{k}", mul) for k in range(K)]
    z28 = [matvec.quant_shift(m, qs, z4[k], v.amt_q, k) for k in range(K)]  # valid at M8
    p9 = [mul_reg(m, z28[k], v.recip_q, signed(36), f"q_p9_{k}", mul) for k in range(K)]
    xq10 = matvec.quant_out(m, p9)
    # the weight and x_q addresses follow the issue through delay chains
    cc, was = [v.c0], [v.wa]
    for i in range(1, 11):
        cc.append(reg(m, cc[-1], name=f"mv_c{i}"))
        if i <= 8:
            was.append(reg(m, was[-1], name=f"mv_wa{i}"))
    matvec.ternary(m, cx, v, xq10, was[8], cc[9], cc[10])
    output_scale(m, cx, v)


def output_scale(m: Module, cx: SimpleNamespace, v: SimpleNamespace) -> None:
    """Output scale (:func:`~.matvec.scale_front`) with its own two multipliers and normalizing shifters;
    the products are computed every cycle from operands that are stable while they are used."""
    op, mul = cx.op, cx.multipliers
    cx.rq = matvec.REQUANT_SHIFT
    s = matvec.scale_front(m, cx, v)
    ps_, qs_ = VarShift(30, -17, 13), VarShift(35, -17, 18)
    pr = reg(m, mul_reg(m, s.am2, cx.r_m, unsigned(30), "sc_pr", mul), name="sc_pr_r")  # valid at stage 3
    q = reg(m, mul_reg(m, s.p_m, op["k_m"], unsigned(35), "sc_q", mul), name="sc_q_r")  # valid at stage 8
    up_, uq = Signal(ps_.mid_shape), Signal(qs_.mid_shape)
    with m.If(s.stage[4]):
        m.d.sync += up_.eq(ps_.shift(pr, ps_.amount(s.bp - MANT_BITS)))
    with m.If(s.stage[9]):
        m.d.sync += uq.eq(qs_.shift(q, qs_.amount(s.bq - MANT_BITS)))
    matvec.scale_back(m, cx, s, pr, q, bitlength(pr), bitlength(q), up_, uq)


__all__ = ["LaneCore", "matvec_unit", "output_scale", "slot_mantissas", "vector_unit"]
