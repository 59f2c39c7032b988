"""The compact core: the accelerator core for small FPGAs (iCE40UP5K; ``--target ice40``).

The same micro-program as the lane core with one output row per row group (``R = 1``; the program
stretches short row groups to :data:`~.program.SERIAL_POST_CYCLES`): the serial post unit
(:mod:`.post_serial`), multipliers and one variable shifter shared by units that never run at the same
time (:class:`~.arith.MuxedMul`, :class:`~.arith.SharedShift`), and the tables, embedding and weights in
four boot-loaded 16-bit memories (:mod:`.boot`; SPRAM on the UP5K), which the core loads from
``boot_data``/``boot_valid`` before it accepts a token (``booted``). Built from the shared stages of
:mod:`.passes` and :mod:`.matvec` plus the pieces below, which are this variant's own:

* vector unit — ``F`` and the gains read through addresses that lag the issue by three cycles (no
  operand delay chains); lane 0's shifter is the core's shared one (also the NORM finish's, one slot
  after another); the slot products ``|x| * |g_b|`` on multipliers shared with other units, masked as
  they leave the multipliers; lane 0's ``|.|`` register also takes the post unit's values;
* matvec unit — :data:`~.program.QUANT_HOLD` cycles before the first issue (the output scale uses the
  shared shifter then); quantizer lane 0 on the shared shifter; the weight and ``x_q`` addresses as
  counters that follow the issue late; the output scale's two products from the shared multiplier,
  normalized by the shared shifter;
* running maxima — one ``|.|`` value and one comparator per maximum for both units.
"""

from __future__ import annotations

from types import SimpleNamespace

from amaranth.hdl import Module, Mux, Signal, Value, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from . import boot, matvec, passes, post_serial
from .arith import MuxedMul, SharedShift, VarShift, abs_, bitlength, delay, mul_reg, reg, round_sat2
from .banks import lane
from .core import CoreBase
from .primitives import Primitives
from .program import MANT_BITS, MV, NORM, NORM_BITS, QUANT_HOLD, T_BITS, Program, ProgramError

#: Range of the core's one shared variable shifter: it covers every user's (vector lane 0, quantizer
#: lane 0, requantization, output-scale and slot-mantissa normalization).
SHARED_SHIFT = VarShift(T_BITS, -32, 36)


class CompactCore(CoreBase):
    """The compact core (see the module docstring) for a program built with ``compact=True``; extra
    ports ``boot_data``/``boot_valid`` in and ``booted`` out."""

    variant = "compact"

    @classmethod
    def check(cls, prog: Program, prims: Primitives) -> None:
        if not prog.compact:
            raise ProgramError("CompactCore: the program was compiled for the lane core "
                               "(build_program(..., compact=False)); use LaneCore or make_core")

    def extra_ports(self) -> dict[str, wiring.Member]:
        return {"boot_data": In(16), "boot_valid": In(1), "booted": Out(1)}

    def memories(self, m: Module, cx: SimpleNamespace) -> None:
        """The four boot-loaded memories and their read views (``cx.prims.weight_memory``: SPRAM instances
        or inferred RAMs)."""
        boot.build(m, cx, self.prims.weight_memory, self.boot_data, self.boot_valid, self.booted)

    def ready(self) -> Value:
        return self.booted  # tokens once the memories are loaded

    def units(self, m: Module, cx: SimpleNamespace) -> None:
        shared_arithmetic(m, cx)
        vector_unit(m, cx)
        matvec_unit(m, cx)
        post_serial.build(m, cx)

    def running_maxima(self, m: Module, cx: SimpleNamespace) -> None:
        """One value for both units: the vector unit's ``|.|`` register and tree carry the post unit's
        writes too (:func:`vector_unit`)."""
        ps, pp = cx.ps, cx.pp
        for reg_, src in ((cx.mx_x, "x"), (cx.mx_t, "t")):
            val = getattr(ps, f"val_{src}")[:len(reg_)]
            with m.If(getattr(ps, f"rst_{src}") | getattr(pp, f"rst_{src}")):
                m.d.sync += reg_.eq(0)
            with m.Elif((getattr(ps, f"upd_{src}") | getattr(pp, f"upd_{src}")) & (val > reg_)):
                m.d.sync += reg_.eq(val)


def shared_arithmetic(m: Module, cx: SimpleNamespace) -> None:
    """The multipliers shared between units that run at different times (``unit_sel``: 0 vector unit
    EMBED/GAIN, 1 matvec, 2 vector unit NORM; sides listed per multiplier) and the one shared shifter."""
    K, cur, mul = cx.K, cx.op["op"], cx.multipliers
    unit = Signal(2, name="unit_sel")
    m.d.sync += unit.eq(Mux(cur == MV, 1, Mux(cur == NORM, 2, 0)))
    in_mv = unit == 1
    cx.muls = {
        # 0: slot-1 product |x*g1| of lane 0 (vector unit); 1: output scale, serial post unit (held)
        "shared": MuxedMul(m, "shared_mul", in_mv, 2, mul),
        # 0: T = x*gain (EMBED/GAIN); 1: quantizer z2*recip; 2: slot-0 product (NORM)
        "wide": [MuxedMul(m, f"lane_mul_wide{k}", unit, 3, mul) for k in range(K)],
        # 0: x^2 (vector unit); 1: quantizer xn*gain
        "narrow": [MuxedMul(m, f"lane_mul_narrow{k}", in_mv, 2, mul, NORM_BITS) for k in range(K)],
    }
    # one variable shifter for lane 0 of the vector unit (0) and the quantizer (1), the serial post unit's
    # requantization (2, while cx.post_shift) and the output scale's normalization (3, while cx.scale_shift)
    cx.post_shift, cx.scale_shift = Signal(name="post_shift"), Signal(name="scale_shift")
    sel = Mux(in_mv, Mux(cx.post_shift, 2, Mux(cx.scale_shift, 3, 1)), 0)
    cx.shifter = SharedShift(m, SHARED_SHIFT, sel, 4)


# ---------------------------------------------------------------------- vector unit
def vector_unit(m: Module, cx: SimpleNamespace) -> None:
    """The vector unit of :mod:`.passes` with lagging operand addresses, shared multipliers and lane 0 on
    the shared shifter."""
    K, op = cx.K, cx.op
    vs = cx.shifter.spec  # lane 0's range; the other lanes' shifters use the same amount
    v = passes.control(m, cx, vs)
    passes.issue(m, cx, v)
    src2 = passes.sources(m, cx, v)
    ps = cx.ps
    # F and the gains are read three cycles after the sources (lagging addresses), straight into the
    # V5 operand registers: no delay chains
    ps.f_addr, ps.gm_addr = delay(m, v.c, 3, "v_f_addr"), delay(m, ps.g_addr, 3, "v_gm_addr")
    op4 = [reg(m, passes.operand(cx, k), signed(18), name=f"v_op4_{k}") for k in range(K)]
    g4 = [reg(m, cx.GM.data(k), name=f"v_g4_{k}") for k in range(K)]
    x5 = passes.embed_lanes(m, cx)

    # V3 shift (lane 0 on the shared shifter, which the NORM finish also uses: ps.fin_*), V4 round + sat16
    ps.fin_shift, ps.fin_x, ps.fin_amt = Signal(), Signal(unsigned(32)), Signal(vs.amt_bits)
    x0, a0 = Mux(ps.fin_shift, ps.fin_x, src2[0]), Mux(ps.fin_shift, ps.fin_amt, v.amt)
    u3 = [cx.shifter.use(m, 0, x0, a0) if k == 0 else
          reg(m, vs.shift(src2[k], v.amt), vs.mid_shape, name=f"v_u3_{k}") for k in range(K)]
    xs4 = passes.round_lanes(m, cx, v, u3)

    # V5 products: T and x^2 on the lane's shared multipliers (side 0); |x * g_b| as |x| * |g_b| (both
    # <= 2**15: 16-bit unsigned) — slot 0 on the lane's wide multiplier (side 2), slot 1 of lane 0 on the
    # core's shared one, the others their own
    t5 = [cx.muls["wide"][k].use(m, 0, xs4[k], op4[k], signed(T_BITS), f"v_t5_{k}") for k in range(K)]
    sq5 = [cx.muls["narrow"][k].use(m, 0, xs4[k], xs4[k], unsigned(2 * NORM_BITS - 1), f"v_sq5_{k}")
           for k in range(K)]
    ax = [abs_(xs4[k])[:16] for k in range(K)]

    def slot_product(b: int, k: int) -> Signal:
        a, g, name = ax[k], abs_(lane(g4[k], b, 16).as_signed())[:16], f"v_z5_{b}_{k}"
        if b == 0:
            return cx.muls["wide"][k].use(m, 2, a, g, unsigned(32), name)
        if b == 1 and k == 0:
            return cx.muls["shared"].use(m, 0, a, g, unsigned(32), name)
        return mul_reg(m, a, g, unsigned(32), name, cx.multipliers)

    z5 = [[slot_product(b, k) for k in range(K)] for b in range(3)]
    passes.write_back(m, cx, v, x5, t5)

    # V6 masked |.| as the products leave the multipliers; lane 0 also takes the post unit's T/X writes
    # (0 when it writes neither): one |.| and one running-max comparator per vector for both units
    cx.post_raw = Signal(signed(T_BITS), name="post_raw")
    a6 = [reg(m, abs_(Mux(passes.mask(v, 6, k), ps.wd[k], cx.post_raw if k == 0 else 0)), unsigned(T_BITS),
              name=f"v_a6_{k}") for k in range(K)]
    s6 = [reg(m, Mux(passes.mask(v, 6, k), sq5[k], 0), unsigned(2 * NORM_BITS - 1), name=f"v_s6_{k}")
          for k in range(K)]
    slots = [(b, k) for b in range(3) for k in range(K)]
    zen = {(b, k): reg(m, passes.mask(v, 5, k) & (b < op["fanout"]), name=f"v_zen6_{b}_{k}") for b, k in slots}
    # the slot products are non-negative already; masked a stage earlier (two plain registers after
    # them made yosys' iCE40 DSP packing (0.70) leave their outputs driven twice)
    za = {(b, k): reg(m, Mux(zen[b, k], z5[b][k], 0), unsigned(32), name=f"v_z6_{b}_{k}") for b, k in slots}
    passes.reduce(m, cx, v, a6, s6, [[za[b, k] for k in range(K)] for b in range(3)])
    passes.norm_finish(m, cx, v)
    slot_mantissas(m, cx, v)


def slot_mantissas(m: Module, cx: SimpleNamespace, v: SimpleNamespace) -> None:
    """NORM finish, per gain slot ``b``: ``e_b = bitlength(max|z_b|)`` and the 11-bit mantissa ``m_b``
    below its leading one (1024 when the max is 0), the three slots through one encoder and the shared
    shifter, staggered by a state (slot ``b``: leading one in FIN ``b``, shift in FIN ``b+1``, mantissa in
    FIN ``b+2``)."""
    zmax, e_b, m_b, fsm = cx.zmax, cx.e_b, cx.m_b, v.fsm
    fin = [fsm.ongoing(f"FIN{i}") for i in range(5)]

    def slot_in(vals, first):  # vals[b] while in FIN(first + b)
        x = vals[2]
        for b in (1, 0):
            x = Mux(fin[first + b], vals[b], x)
        return x

    lead = bitlength(slot_in(zmax, 0))
    ps = cx.ps
    e2 = slot_in(e_b, 2)
    # m_b = the 11 bits of max|z_b| below its leading one: shifted right by e_b - 11 (truncating: the
    # shifter's output is x >>> (s-1), one bit above the result)
    m.d.comb += [ps.fin_shift.eq(fin[1] | fin[2] | fin[3]), ps.fin_x.eq(slot_in(zmax, 1)),
                 ps.fin_amt.eq(cx.shifter.spec.amount(slot_in(e_b, 1) - 11))]
    for b in range(3):
        with m.If(fin[b] & v.is_norm):
            m.d.sync += e_b[b].eq(lead)
        with m.If(fin[b + 2]):
            m.d.sync += m_b[b].eq(Mux(e2 == 0, 1024, cx.shifter.out[1:12]))


# ---------------------------------------------------------------------- matvec unit
def matvec_unit(m: Module, cx: SimpleNamespace) -> None:
    """The matvec unit of :mod:`.matvec` with shared multipliers, quantizer lane 0 on the shared shifter
    and late-following address counters."""
    K = cx.K
    qs = cx.shifter.spec
    v = matvec.control(m, cx, qs, hold=QUANT_HOLD)  # the output scale uses the shared shifter meanwhile
    xn3, gs3 = matvec.quant_inputs(m, cx)
    z4 = [cx.muls["narrow"][k].use(m, 1, xn3[k], gs3[k], signed(32), f"q_z4_{k}") for k in range(K)]
    # lane 0: the whole shift at M5 on the shared shifter, the rounding delayed (valid at M8)
    z28 = [reg(m, round_sat2(m, cx.shifter.use(m, 1, z4[0], v.amt_q), 18, "q_z7_0"), name="q_z8_0")]
    z28 += [matvec.quant_shift(m, qs, z4[k], v.amt_q, k) for k in range(1, K)]
    p9 = [cx.muls["wide"][k].use(m, 1, z28[k], v.recip_q, signed(36), f"q_p9_{k}") for k in range(K)]
    xq10 = matvec.quant_out(m, p9)
    # the weight and x_q addresses as counters that follow the issue late, not delay chains: wa8 counts
    # the issues seen at M8 from wbase; c9 replays t (0 at a group's first cycle, else one more) at M9
    wa8, c9 = Signal.like(v.wa, name="mv_wa8"), Signal.like(v.c0, name="mv_c9")
    with m.If(cx.mv_start):
        m.d.sync += wa8.eq(cx.op["wbase"])
    with m.Elif(matvec.issued(v, 8)):
        m.d.sync += wa8.eq(wa8 + 1)
    m.d.sync += c9.eq(Mux(matvec.first_of_group(v, 8), 0, c9 + 1))
    matvec.ternary(m, cx, v, xq10, wa8, c9, reg(m, c9, name="mv_c10"))
    output_scale(m, cx, v)


def output_scale(m: Module, cx: SimpleNamespace, v: SimpleNamespace) -> None:
    """Output scale (:func:`~.matvec.scale_front`): both products from the shared multiplier (operands
    loaded at stages 1 and 6 and held: ``pr`` valid at stages 3-5, ``q`` from stage 8), so one leading-one
    encoder serves both, and the shared shifter normalizes them (requests at stages 4 and 9, results one
    stage later; the quantizer, its other user in a matvec, starts late enough: ``QUANT_HOLD``)."""
    cx.rq = cx.shifter.spec
    s = matvec.scale_front(m, cx, v)
    mul = cx.muls["shared"]
    pr = mul.load(m, 1, s.stage[1], s.am2, cx.r_m)[:30]
    q = mul.load(m, 1, s.stage[6], s.p_m, cx.op["k_m"])[:35]
    x = mul.prod[:35]
    lead = bitlength(x)
    m.d.comb += cx.scale_shift.eq(s.stage[4] | s.stage[9])
    cx.shifter.use(m, 3, x, cx.shifter.spec.amount(Mux(s.stage[4], s.bp, s.bq) - MANT_BITS))
    matvec.scale_back(m, cx, s, pr, q, lead, lead, cx.shifter.out, cx.shifter.out)


__all__ = ["SHARED_SHIFT", "CompactCore", "matvec_unit", "output_scale", "shared_arithmetic", "slot_mantissas",
           "vector_unit"]
