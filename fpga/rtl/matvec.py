"""Matvec unit: int8 activation quantization fused into the first row group, the multiply-free
ternary datapath (``R`` rows x ``K`` inputs per cycle, add / subtract / skip, registered adder
trees), the row-group drain and the per-BitLinear output scale.

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

from amaranth.hdl import Array, Cat, Module, Mux, Signal, signed, unsigned

from .arith import VarShift, bitlength, clamp_int, const_round_shift, delay, mul_reg, product, reg, round_sat2, saturate
from .banks import lane
from .passes import tree
from .program import K_GLU, MANT_BITS, QUANT_HOLD, XQ_BITS

#: Cycles from the matvec start to a valid output scale (checked by the ``error`` flag).
SCALE_LATENCY = 15


def build(m: Module, cx: SimpleNamespace) -> None:
    p, K, R, op = cx.prog, cx.K, cx.R, cx.op
    mv = cx.mv = SimpleNamespace()
    ch = p.chunks(p.d_in_max)
    acc_bits = p.acc_bits

    slot = op["slot"]
    m_sel = Array(cx.m_b)[slot]
    e_sel = Array(cx.e_b)[slot]
    recip_q = Signal(unsigned(MANT_BITS))
    qs = cx.shifter.spec if cx.shifter else VarShift(32, -17, 14)  # compact: lane 0 on the shared shifter
    amt_q = Signal(qs.amt_bits)

    g = Signal(range(max(2, max(o.groups for o in p.ops) + 1)))
    t = Signal(range(max(2, max(o.period0 for o in p.ops) + 1)))
    wa = Signal(range(max(2, len(p.wmem) + 1)))
    gw = p.extra["gain_words"]
    # slot-major gain address (core.GS): slot * gain_words + gbase + c as a counter over group 0
    # (no adder between the register and the gain RAMs); later groups do not read the gains
    mv.gs_addr = Signal(range(max(2, 3 * gw + max(o.period0 for o in p.ops) + 1)), name="mv_gs_addr")
    dly = Signal(range(max(3, QUANT_HOLD)))
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
            if p.compact:
                m.d.sync += dly.eq(0)
                m.next = "HOLD"
        if p.compact:
            with m.State("HOLD"):  # the output scale uses the shared shifter at its stage 9 (see _scale)
                m.d.sync += dly.eq(dly + 1)
                with m.If(dly == QUANT_HOLD - 1):
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

    # ------------------------------------------------------------ M0: issue
    c0 = t[: max(1, (ch - 1).bit_length())] if ch > 1 else Signal(1)
    mv.xn_addr = c0
    g0 = g == 0
    first, last = t == 0, t == op["chunks"] - 1

    # ------------------------------------------------------------ M1..M10: quantizer lanes (group 0)
    xn3 = [delay(m, cx.XN.data(k).as_signed(), 2, f"q_xn_{k}") for k in range(K)]
    gs3 = [delay(m, cx.GS.data(k).as_signed(), 1, f"q_g_{k}") for k in range(K)]  # GS: 2-cycle ROM
    z4 = [product(m, cx, xn3[k], gs3[k], signed(32), f"q_z4_{k}", ("narrow", k, 1)) for k in range(K)]
    z28 = []  # two stages: valid at M8
    for k in range(K):
        if cx.shifter and k == 0:  # the core's shared shifter: the whole shift at M5, the rounding delayed
            z28.append(reg(m, round_sat2(m, cx.shifter.use(m, 1, z4[k], amt_q), 18, f"q_z7_{k}"), name=f"q_z8_{k}"))
            continue
        u5 = reg(m, qs.shift_coarse(z4[k], amt_q), qs.mid_shape, name=f"q_u5_{k}")
        u6 = reg(m, qs.shift_fine(u5, amt_q), qs.mid_shape, name=f"q_u6_{k}")
        z28.append(round_sat2(m, u6, 18, f"q_z8_{k}"))
    p9 = [product(m, cx, z28[k], recip_q, signed(36), f"q_p9_{k}", ("wide", k, 1)) for k in range(K)]
    xq10 = [reg(m, saturate(const_round_shift(p9[k], 26), 8), signed(8), name=f"q_xq10_{k}") for k in range(K)]

    ctl = [Cat(iss, g0, first, last)]
    for i in range(1, 12):
        ctl.append(reg(m, ctl[-1], name=f"mv_ctl{i}"))
    if p.compact:
        # the weight and x_q addresses as counters that follow the issue late, not delay chains: wa8 counts
        # the issues seen at M8 from wbase; c9 replays t (0 at a group's first cycle, else one more) at M9
        wa8, c9 = Signal.like(wa, name="mv_wa8"), Signal.like(c0, name="mv_c9")
        with m.If(cx.mv_start):
            m.d.sync += wa8.eq(op["wbase"])
        with m.Elif(ctl[8][0]):
            m.d.sync += wa8.eq(wa8 + 1)
        m.d.sync += c9.eq(Mux(ctl[8][2], 0, c9 + 1))
        cc = {9: c9, 10: reg(m, c9, name="mv_c10")}
    else:
        cc, was = [c0], [wa]
        for i in range(1, 11):
            cc.append(reg(m, cc[-1], name=f"mv_c{i}"))
            if i <= 8:
                was.append(reg(m, was[-1], name=f"mv_wa{i}"))
        wa8 = was[8]
    m.d.comb += cx.wmem.addr.eq(wa8)  # weights (DeepRom, 2 cycles) valid at M10
    m.d.comb += cx.xq_rd.addr.eq(cc[9])  # x_q of later groups valid at M10
    m.d.comb += [cx.xq_wr.addr.eq(cc[10]), cx.xq_wr.data.eq(Cat(*xq10)), cx.xq_wr.en.eq(ctl[10][0] & ctl[10][1])]
    w11 = reg(m, cx.wmem.data, name="mv_w11")
    xq = [reg(m, Mux(ctl[10][1], xq10[k], lane(cx.xq_data, k, XQ_BITS).as_signed()), signed(8),
              name=f"mv_xq11_{k}") for k in range(K)]
    ctl11 = ctl[11]

    # ------------------------------------------------------------ M12..: ternary terms, adder trees
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
    acc = [Signal(signed(acc_bits), name=f"acc{r}") for r in range(R)]
    with m.If(va):
        for r in range(R):
            m.d.sync += acc[r].eq(Mux(firsta, sums[r], acc[r] + sums[r]))
    load = reg(m, va & lasta, name="mv_load")

    # ------------------------------------------------------------ drain: one row per cycle to post
    dr = [Signal(signed(acc_bits), name=f"drain{r}") for r in range(R)]
    cnt = Signal(range(R + 1))
    jcur = Signal(range(max(2, max(o.d_out for o in p.ops) + R + 1)))
    rows_left = Signal(range(max(2, max(o.d_out for o in p.ops) + 1)))
    cx.pv = Signal(name="post_v0")
    cx.pacc = Signal(signed(acc_bits), name="post_acc0")
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

    _scale(m, cx, m_sel, e_sel)


def _scale(m: Module, cx: SimpleNamespace, m_sel, e_sel) -> None:
    """Output scale of the current BitLinear (FORMATS §4.5) as the post unit's requant operands:
    ``q_m`` and the shift amount of ``round_shift(acc_s * q_m, -E)``, ``-E`` clamped to [-32, 36]."""
    op = cx.op
    ps_ = VarShift(30, -17, 13)
    qs_ = VarShift(35, -17, 18)
    cx.rq = cx.shifter.spec if cx.shifter else VarShift(35, -32, 36)
    cx.q_m = Signal(unsigned(MANT_BITS))
    cx.amt_rq = Signal(cx.rq.amt_bits)
    cx.scale_ready = Signal()
    stage = Signal(SCALE_LATENCY)
    m.d.sync += stage.eq(Cat(cx.mv_start, stage[:-1]))
    bp, up_ = Signal(range(31)), Signal(ps_.mid_shape)
    p_m, p_e = Signal(unsigned(MANT_BITS)), Signal(signed(7))
    bq, uq = Signal(range(36)), Signal(qs_.mid_shape)
    q_e = Signal(signed(7))
    a_e = Signal(signed(7))
    ep, eq_ = Signal(signed(7)), Signal(signed(7))

    am2 = Signal(12)
    with m.If(cx.mv_start):
        m.d.sync += cx.scale_ready.eq(0)
    with m.If(stage[0]):
        m.d.sync += [am2.eq(2 * m_sel + 1), a_e.eq(e_sel - 12)]
    if cx.muls is not None:
        # compact core: both products come out of the shared multiplier (operands loaded at stages 1 and
        # 6 and held: pr valid at stages 3-5, q from stage 8), so one leading-one encoder serves both, and
        # the core's shared shifter normalizes them (requests at stages 4 and 9, results one stage later;
        # the quantizer, its other user in a matvec, starts late enough: QUANT_HOLD)
        mul = cx.muls["shared"][0]
        pr = mul.load(m, 1, stage[1], am2, cx.r_m)[:30]
        q = mul.load(m, 1, stage[6], p_m, op["k_m"])[:35]
        x = mul.prod[:35]
        lead_p = lead_q = bitlength(x)
        m.d.comb += cx.scale_shift.eq(stage[4] | stage[9])
        cx.shifter.use(m, 3, x, cx.shifter.spec.amount(Mux(stage[4], bp, bq) - MANT_BITS))
        norm_p = norm_q = cx.shifter.out
    else:
        # products computed every cycle from operands that are stable while they are used
        pr = reg(m, mul_reg(m, am2, cx.r_m, unsigned(30), "sc_pr", cx.dsp), name="sc_pr_r")  # valid at stage 3
        q = reg(m, mul_reg(m, p_m, op["k_m"], unsigned(35), "sc_q", cx.dsp), name="sc_q_r")  # valid at stage 8
        lead_p, norm_p = bitlength(pr), ps_.shift(pr, ps_.amount(bp - MANT_BITS))
        lead_q, norm_q = bitlength(q), qs_.shift(q, qs_.amount(bq - MANT_BITS))
    with m.If(stage[3]):
        m.d.sync += bp.eq(lead_p)
    with m.If(stage[4]):
        m.d.sync += ep.eq(bp - MANT_BITS)
        if cx.shifter is None:
            m.d.sync += up_.eq(norm_p)
    with m.If(stage[5]):
        mp = ps_.finish(norm_p if cx.shifter else up_)
        carry = mp[MANT_BITS]
        m.d.sync += [p_m.eq(Mux(pr == 0, 0, Mux(carry, mp >> 1, mp))), p_e.eq(Mux(pr == 0, 0, ep + carry))]
    with m.If(stage[8]):
        m.d.sync += bq.eq(lead_q)
    with m.If(stage[9]):
        m.d.sync += eq_.eq(bq - MANT_BITS)
        if cx.shifter is None:
            m.d.sync += uq.eq(norm_q)
    E = Signal(signed(8))  # -E clamped to [-32, 36]
    with m.If(stage[10]):
        mq = qs_.finish(norm_q if cx.shifter else uq)
        carry = mq[MANT_BITS]
        m.d.sync += [cx.q_m.eq(Mux(q == 0, 0, Mux(carry, mq >> 1, mq))), q_e.eq(Mux(q == 0, 0, eq_ + carry))]
    e1, e2, s_neg = Signal(signed(10)), Signal(signed(10)), Signal(signed(11))
    with m.If(stage[11]):
        m.d.sync += [e1.eq(op["acc_shift"] + a_e + cx.r_e), e2.eq(op["k_e"] + p_e + q_e)]
    with m.If(stage[12]):
        m.d.sync += s_neg.eq(-(e1 + e2))
    with m.If(stage[13]):
        m.d.sync += E.eq(clamp_int(s_neg, -32, 36))
    with m.If(stage[14]):
        m.d.sync += [cx.amt_rq.eq(cx.rq.amount(E)), cx.scale_ready.eq(1)]
