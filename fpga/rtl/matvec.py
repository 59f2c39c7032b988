"""Matvec unit: int8 activation quantization fused into the first row group, the multiply-free
ternary datapath (``R`` rows x ``K`` inputs per cycle, add / subtract / skip, registered adder
trees), the row-group drain and the per-BitLinear output scale — the stages both core variants
share, as small functions; each variant (:mod:`.lane_core`, :mod:`.compact_core`) adds its own
quantizer products, address counters and output-scale products.

Issue order: group ``g`` (rows ``g*R .. g*R+R-1``) then chunk ``c`` (inputs ``c*K .. c*K+K-1``);
one weight word per cycle. Group 0 reads ``XN`` and the gains and quantizes (FORMATS §4.3):
``z = xn * gain``, ``z2 = sat18(round_shift(z, e-17))``, ``x_q = sat8(round_shift(z2 * RECIP, 26))``,
storing ``x_q`` in ``XQ`` for later groups. Pipeline: M0 issue, M1 data, M2 registered beside the
RAMs (the gain slot: the ROM's output register), M3 registered beside the multipliers, M4 product,
M5 coarse shift (multiples of 8), M6 fine shift, M7-M8 round + saturate, M9 product, M10 ``x_q``,
M11 ``x_q`` + weights registered, M12 terms, then ``log2 K`` tree levels and the accumulator. (The two
extra register stages keep the block-RAM clock-to-output and the long barrel shift in separate cycles:
ECP5 Fmax margin.)
"""

from __future__ import annotations

from types import SimpleNamespace

from amaranth.hdl import Array, Cat, Module, Mux, Signal, Value, signed, unsigned

from .arith import VarShift, clamp_int, const_round_shift, delay, reg, round_sat2, saturate
from .banks import lane
from .passes import tree
from .program import K_GLU, MANT_BITS, XQ_BITS

#: Cycles from the matvec start to a valid output scale (checked by the ``error`` flag).
SCALE_LATENCY = 15
#: Shift range of a quantizer lane (``round_shift(z, e - 17)`` of an s32 product).
QUANT_SHIFT = VarShift(32, -17, 14)
#: Shift range of the post unit's requantization (``-E`` clamped to [-32, 36]).
REQUANT_SHIFT = VarShift(35, -32, 36)


def control(m: Module, cx: SimpleNamespace, qs: VarShift, hold: int = 0) -> SimpleNamespace:
    """The matvec FSM: start (reciprocal read, quantizer shift amount), ``hold`` cycles before the first
    issue (0: none), the issue of every row group, the wait for the post unit and the drain.

    ``qs`` is the quantizer shifter's range. Returns the namespace the other stages read (``iss``, the
    chunk ``c0``, the weight address ``wa``, the quantizer's ``amt_q``/``recip_q``, the selected slot's
    ``m_sel``/``e_sel``)."""
    p, op = cx.prog, cx.op
    mv = cx.mv = SimpleNamespace()
    ch = p.chunks(p.d_in_max)

    slot = op["slot"]
    m_sel = Array(cx.m_b)[slot]
    e_sel = Array(cx.e_b)[slot]
    recip_q = Signal(unsigned(MANT_BITS))
    amt_q = Signal(qs.amt_bits)

    g = Signal(range(max(2, max(o.groups for o in p.ops) + 1)))
    t = Signal(range(max(2, max(o.period0 for o in p.ops) + 1)))
    wa = Signal(range(max(2, len(p.wmem) + 1)))
    gw = p.extra["gain_words"]
    # slot-major gain address (core.GS): slot * gain_words + gbase + c as a counter over group 0
    # (no adder between the register and the gain RAMs); later groups do not read the gains
    mv.gs_addr = Signal(range(max(2, 3 * gw + max(o.period0 for o in p.ops) + 1)), name="mv_gs_addr")
    dly = Signal(range(max(3, hold)))
    iss = Signal()
    cx.post_all = Signal()
    with m.FSM(name="mv"):
        with m.State("IDLE"):
            with m.If(cx.mv_start):
                m.next = "START"
        with m.State("START"):
            m.d.comb += cx.recip.addr.eq(m_sel - 1024)
            m.d.sync += [amt_q.eq(qs.amount(e_sel - 17)), g.eq(0), t.eq(0), wa.eq(op["wbase"]),
                         mv.gs_addr.eq(Mux(slot == 0, 0, Mux(slot == 1, gw, 2 * gw)) + op["gbase"])]
            m.next = "LOADR"
        with m.State("LOADR"):
            m.d.sync += recip_q.eq(cx.recip.data)
            m.next = "ISSUE"
            if hold:
                m.d.sync += dly.eq(0)
                m.next = "HOLD"
        if hold:
            with m.State("HOLD"):
                m.d.sync += dly.eq(dly + 1)
                with m.If(dly == hold - 1):
                    m.next = "ISSUE"
        with m.State("ISSUE"):
            m.d.comb += iss.eq(t < op["chunks"])
            per = Mux(g == 0, op["period0"], op["period"])
            m.d.sync += t.eq(t + 1)
            with m.If(iss):
                m.d.sync += wa.eq(wa + 1)
            with m.If(g == 0):
                m.d.sync += mv.gs_addr.eq(mv.gs_addr + 1)
            with m.If(t == per - 1):
                m.d.sync += [t.eq(0), g.eq(g + 1)]
                with m.If(g == op["groups"] - 1):
                    m.next = "WAIT"
        with m.State("WAIT"):
            with m.If(cx.post_all):
                m.d.sync += dly.eq(0)
                m.next = "DRAIN"
        with m.State("DRAIN"):  # let the running maxima settle
            m.d.sync += dly.eq(dly + 1)
            with m.If(dly == 2):
                m.d.comb += cx.mv_done.eq(1)
                m.next = "IDLE"

    # M0: issue
    c0 = t[: max(1, (ch - 1).bit_length())] if ch > 1 else Signal(1)
    mv.xn_addr = c0
    g0 = g == 0
    first, last = t == 0, t == op["chunks"] - 1
    ctl = [Cat(iss, g0, first, last)]
    for i in range(1, 12):
        ctl.append(reg(m, ctl[-1], name=f"mv_ctl{i}"))
    return SimpleNamespace(m_sel=m_sel, e_sel=e_sel, recip_q=recip_q, amt_q=amt_q, wa=wa, c0=c0, ctl=ctl)


def quant_inputs(m: Module, cx: SimpleNamespace) -> tuple[list[Value], list[Value]]:
    """M1..M3: the normalized input ``xn`` and its gain slot, registered beside the multipliers."""
    xn3 = [delay(m, cx.XN.data(k).as_signed(), 2, f"q_xn_{k}") for k in range(cx.K)]
    gs3 = [delay(m, cx.GS.data(k).as_signed(), 1, f"q_g_{k}") for k in range(cx.K)]  # GS: 2-cycle ROM
    return xn3, gs3


def quant_shift(m: Module, qs: VarShift, z4: Value, amt_q: Value, k: int) -> Signal:
    """M5..M8 of quantizer lane ``k``: ``z2 = sat18(round_shift(z, e - 17))`` (coarse shift, fine shift,
    two-stage rounding)."""
    u5 = reg(m, qs.shift_coarse(z4, amt_q), qs.mid_shape, name=f"q_u5_{k}")
    u6 = reg(m, qs.shift_fine(u5, amt_q), qs.mid_shape, name=f"q_u6_{k}")
    return round_sat2(m, u6, 18, f"q_z8_{k}")


def quant_out(m: Module, p9: list[Value]) -> list[Signal]:
    """M10: ``x_q = sat8(round_shift(z2 * RECIP, 26))`` per lane."""
    return [reg(m, saturate(const_round_shift(p9[k], 26), 8), signed(8), name=f"q_xq10_{k}") for k in range(len(p9))]


def issued(v: SimpleNamespace, i: int) -> Value:
    """Issue bit at stage Mi."""
    return v.ctl[i][0]


def first_of_group(v: SimpleNamespace, i: int) -> Value:
    """Stage Mi holds the first chunk of its row group."""
    return v.ctl[i][2]


def ternary(m: Module, cx: SimpleNamespace, v: SimpleNamespace, xq10: list, wa8: Value, c9: Value,
            c10: Value) -> None:
    """M8..: weight and ``x_q`` reads (addresses ``wa8`` at M8, ``c9`` at M9; ``x_q`` written at M10 under
    ``c10``), the add / subtract / skip terms, ``R`` adder trees and accumulators, and the drain of each
    finished row group to the post unit, one row per cycle (``cx.pv``, ``cx.pacc``, ``cx.pj``, ``cx.pe``)."""
    p, K, R, op = cx.prog, cx.K, cx.R, cx.op
    ctl = v.ctl
    m.d.comb += cx.wmem.addr.eq(wa8)  # weights (two-cycle memory) valid at M10
    m.d.comb += cx.xq_rd.addr.eq(c9)  # x_q of later groups valid at M10
    m.d.comb += [cx.xq_wr.addr.eq(c10), cx.xq_wr.data.eq(Cat(*xq10)), cx.xq_wr.en.eq(ctl[10][0] & ctl[10][1])]
    w11 = reg(m, cx.wmem.data, name="mv_w11")
    xq = [reg(m, Mux(ctl[10][1], xq10[k], lane(cx.xq_data, k, XQ_BITS).as_signed()), signed(8),
              name=f"mv_xq11_{k}") for k in range(K)]
    ctl11 = ctl[11]

    # M12..: ternary terms, adder trees
    sums = []
    for r in range(R):
        terms = []
        for k in range(K):
            code = w11[2 * (r * K + k): 2 * (r * K + k) + 2]
            terms.append(reg(m, Mux(code == 0b01, xq[k], Mux(code == 0b11, -xq[k], 0)), signed(9),
                             name=f"mv_term_{r}_{k}"))
        s, lv = tree(m, terms, lambda a, b: a + b, f"mv_tree{r}")
        sums.append(s)
    ctla = delay(m, ctl11, 1 + cx.lgK, "mv_ctla")
    va, firsta, lasta = ctla[0], ctla[2], ctla[3]
    acc = [Signal(signed(p.acc_bits), name=f"acc{r}") for r in range(R)]
    with m.If(va):
        for r in range(R):
            m.d.sync += acc[r].eq(Mux(firsta, sums[r], acc[r] + sums[r]))
    load = reg(m, va & lasta, name="mv_load")

    # drain: one row per cycle to post
    dr = [Signal(signed(p.acc_bits), name=f"drain{r}") for r in range(R)]
    cnt = Signal(range(R + 1))
    jcur = Signal(range(max(2, max(o.d_out for o in p.ops) + R + 1)))
    rows_left = Signal(range(max(2, max(o.d_out for o in p.ops) + 1)))
    cx.pv = Signal(name="post_v0")
    cx.pacc = Signal(signed(p.acc_bits), name="post_acc0")
    cx.pj = Signal.like(jcur, name="post_j0")
    cx.pe = Signal.like(jcur, name="post_e0")  # element index: j, or j - hidden for GLU up rows
    cx.pup = Signal(name="post_up0")
    up = (op["kind"] == K_GLU) & (jcur >= p.hid)
    m.d.sync += [cx.pe.eq(Mux(up, jcur - p.hid, jcur)), cx.pup.eq(up)]
    m.d.sync += cx.pv.eq(0)
    with m.If(cx.mv_start):
        m.d.sync += [rows_left.eq(op["d_out"]), jcur.eq(0), cnt.eq(0)]
    with m.Elif(load):
        n = Mux(rows_left > R, R, rows_left)
        m.d.sync += [cx.pv.eq(1), cx.pacc.eq(acc[0]), cx.pj.eq(jcur), jcur.eq(jcur + 1), cnt.eq(n - 1),
                     rows_left.eq(rows_left - n)]
        m.d.sync += [dr[r].eq(acc[r + 1]) for r in range(R - 1)]
        with m.If(cnt != 0):
            m.d.sync += cx.error.eq(1)  # a row group finished before the previous one drained
    with m.Elif(cnt != 0):
        m.d.sync += [cx.pv.eq(1), cx.pacc.eq(dr[0]), cx.pj.eq(jcur), jcur.eq(jcur + 1), cnt.eq(cnt - 1)]
        m.d.sync += [dr[r].eq(dr[r + 1]) for r in range(R - 1)]


def scale_front(m: Module, cx: SimpleNamespace, v: SimpleNamespace) -> SimpleNamespace:
    """Output scale of the current BitLinear (FORMATS §4.5), first part: the stage shift register
    (``stage[i]``: ``i`` cycles after the matvec start) and the registers both products feed.

    The post unit's requant operands come out as ``cx.q_m`` and ``cx.amt_rq`` (the shift amount of
    ``round_shift(acc_s * q_m, -E)`` for ``cx.rq``, which the variant sets first). The variant then
    computes the products ``pr = (2 m + 1) * r_m`` (from stage 1, valid at stage 3) and
    ``q = p_m * k_m`` (from stage 6, valid at stage 8) and their normalizing shifts, and calls
    :func:`scale_back`."""
    cx.q_m = Signal(unsigned(MANT_BITS))
    cx.amt_rq = Signal(cx.rq.amt_bits)
    cx.scale_ready = Signal()
    s = SimpleNamespace()
    s.stage = stage = Signal(SCALE_LATENCY)
    m.d.sync += stage.eq(Cat(cx.mv_start, stage[:-1]))
    s.bp = Signal(range(31))
    s.p_m, s.p_e = Signal(unsigned(MANT_BITS)), Signal(signed(7))
    s.bq = Signal(range(36))
    s.q_e = Signal(signed(7))
    s.a_e = Signal(signed(7))
    s.ep, s.eq_ = Signal(signed(7)), Signal(signed(7))
    s.am2 = Signal(12)
    with m.If(cx.mv_start):
        m.d.sync += cx.scale_ready.eq(0)
    with m.If(stage[0]):
        m.d.sync += [s.am2.eq(2 * v.m_sel + 1), s.a_e.eq(v.e_sel - 12)]
    return s


def scale_back(m: Module, cx: SimpleNamespace, s: SimpleNamespace, pr: Value, q: Value, lead_p: Value,
               lead_q: Value, mid_p: Value, mid_q: Value) -> None:
    """Output scale, second part: each product's leading one (``lead_*``, read at stages 3 and 8) and its
    17-bit mantissa from the shifted value ``mid_*`` (``x >>> (lead - 18)``, registered, read at stages 5
    and 10), then the exponent sum, ``-E`` clamped to [-32, 36] and the requant shift amount (stage 14)."""
    op, stage = cx.op, s.stage
    with m.If(stage[3]):
        m.d.sync += s.bp.eq(lead_p)
    with m.If(stage[4]):
        m.d.sync += s.ep.eq(s.bp - MANT_BITS)
    with m.If(stage[5]):
        mp = VarShift.finish(mid_p)
        carry = mp[MANT_BITS]
        m.d.sync += [s.p_m.eq(Mux(pr == 0, 0, Mux(carry, mp >> 1, mp))), s.p_e.eq(Mux(pr == 0, 0, s.ep + carry))]
    with m.If(stage[8]):
        m.d.sync += s.bq.eq(lead_q)
    with m.If(stage[9]):
        m.d.sync += s.eq_.eq(s.bq - MANT_BITS)
    E = Signal(signed(8))  # -E clamped to [-32, 36]
    with m.If(stage[10]):
        mq = VarShift.finish(mid_q)
        carry = mq[MANT_BITS]
        m.d.sync += [cx.q_m.eq(Mux(q == 0, 0, Mux(carry, mq >> 1, mq))), s.q_e.eq(Mux(q == 0, 0, s.eq_ + carry))]
    e1, e2, s_neg = Signal(signed(10)), Signal(signed(10)), Signal(signed(11))
    with m.If(stage[11]):
        m.d.sync += [e1.eq(op["acc_shift"] + s.a_e + cx.r_e), e2.eq(op["k_e"] + s.p_e + s.q_e)]
    with m.If(stage[12]):
        m.d.sync += s_neg.eq(-(e1 + e2))
    with m.If(stage[13]):
        m.d.sync += E.eq(clamp_int(s_neg, -32, 36))
    with m.If(stage[14]):
        m.d.sync += [cx.amt_rq.eq(cx.rq.amount(E)), cx.scale_ready.eq(1)]


__all__ = ["QUANT_SHIFT", "REQUANT_SHIFT", "SCALE_LATENCY", "control", "first_of_group", "issued", "quant_inputs",
           "quant_out", "quant_shift", "scale_back", "scale_front", "ternary"]
