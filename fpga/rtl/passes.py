"""Vector unit: the element-wise passes before a BitLinear, ``K`` elements per cycle.

* ``EMBED``: ``X = emb_q[token] << res_shift`` (FORMATS §4.0), tracks ``max|X|``;
* ``GAIN``: ``T = normalize16(X) * gain`` (§4.1) or, released gate, ``T = normalize16(T) * F``
  (``F`` holds ``SiLU(h)``), tracks ``max|T|``;
* ``NORM``: ``XN = normalize16(T)``, ``S = sum XN^2`` and ``max|XN * gain_b|`` for up to three
  BitLinears (slots ``b``) that share the input (§4.2); then ``rsqrt_lut(S)`` and the reciprocal
  mantissa/exponent ``(m_b, e_b)`` of each ``max|z_b|`` (§3, §4.3).

Pipeline: issue (V0) -> memory data (V1) -> registered (V2) -> shift (V3) -> round + sat16 (V4)
(two stages, V5) -> multiply (V6, writes) -> registered (V7) -> |.| masked (V8) -> registered
max/sum trees -> running registers. (Stage names below are one lower than the cycles after the
round, which takes two.)

A compact core (``Program.compact``) reads ``F`` and the gains through addresses that lag the issue by
three cycles (no operand delay chains), masks the products as they leave the multipliers (one stage
earlier), and shares lane 0's shifter with the quantizer, the post unit, the output scale and its own NORM
finish, and lane 0's ``|.|`` register with the post unit's running-maximum updates.
"""

from __future__ import annotations

from types import SimpleNamespace

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed, unsigned

from .arith import VarShift, abs_, bitlength, delay, mul_reg, product, reg, round_sat2
from .banks import lane
from .program import EMBED, GAIN, NORM, NORM_BITS, T_BITS


def tree(m: Module, vals: list, fn, name: str):
    """Reduce ``vals`` pairwise with ``fn``, one register per level. Returns ``(value, levels)``."""
    level = 0
    while len(vals) > 1:
        nxt = []
        for i in range(0, len(vals) - 1, 2):
            nxt.append(reg(m, fn(vals[i], vals[i + 1]), name=f"{name}_l{level}_{i // 2}"))
        if len(vals) % 2:
            nxt.append(reg(m, vals[-1], name=f"{name}_l{level}_odd"))
        vals, level = nxt, level + 1
    return vals[0], level


def vmax(a, b):
    return Mux(a > b, a, b)


def build(m: Module, cx: SimpleNamespace) -> None:
    p, K, fmt, op = cx.prog, cx.K, cx.fmt, cx.op
    ps = cx.ps = SimpleNamespace()
    kind = op["op"]
    # op flags registered (stable from the cycle after the sequencer's start)
    is_embed, is_gain, is_norm = (reg(m, kind == k, name=f"vec_is{k}") for k in (EMBED, GAIN, NORM))
    ch = p.chunks(p.d_in_max)
    s_bits = 2 * (NORM_BITS - 1) + max(1, p.d_in_max.bit_length()) + 1
    cx.S = S = Signal(unsigned(s_bits))
    cx.zmax = [Signal(unsigned(32), name=f"zmax{b}") for b in range(3)]
    cx.m_b = [Signal(unsigned(11), name=f"m_b{b}", init=1024) for b in range(3)]
    cx.e_b = [Signal(unsigned(6), name=f"e_b{b}") for b in range(3)]
    cx.r_m = Signal(unsigned(18))
    cx.r_e = Signal(signed(8))

    # (a compact core's lane 0 uses the core's shared shifter, whose range covers this one)
    vs = cx.shifter.spec if cx.shifter else VarShift(T_BITS, -(NORM_BITS - 2), T_BITS - (NORM_BITS - 1))
    amt = Signal(vs.amt_bits)
    bl = Signal(range(T_BITS + 1))
    mx_zero = Signal()
    c = Signal(range(ch + 1))
    flush = Signal(range(16))
    active = Signal()
    cx.pass_latency = 7 + cx.lgK  # cycles from the last issue to the last tree output, minus one

    # ------------------------------------------------------------ control
    iss = Signal()
    # gain address gbase + c as its own counter (no adder between the register and the gain RAMs),
    # one cycle ahead of the issue: the gain ROM answers two cycles after its address (core.GM),
    # so its data meet X/T/F at V1
    ps.g_addr = Signal(range(max(2, p.extra["gain_words"] + ch + 1)), name="ps_g_addr")
    for name in ("rst_x", "rst_t", "upd_x", "upd_t"):
        setattr(ps, name, Signal(name=f"ps_{name}"))
    with m.FSM(name="vec") as fsm:
        with m.State("IDLE"):
            with m.If(cx.pass_start):
                m.next = "SETUP1"
        with m.State("SETUP1"):
            mx = Mux(is_norm | op["src_t"], cx.mx_t, cx.mx_x)
            m.d.sync += [bl.eq(bitlength(mx)), mx_zero.eq(mx == 0), c.eq(0), ps.g_addr.eq(op["gbase"])]
            m.next = "SETUP2"
        with m.State("SETUP2"):
            k = Mux(mx_zero, 0, bl - (NORM_BITS - 1))
            m.d.sync += [amt.eq(vs.amount(k)), ps.g_addr.eq(ps.g_addr + 1)]
            m.d.comb += [ps.rst_x.eq(is_embed), ps.rst_t.eq(is_gain)]
            with m.If(is_norm):
                m.d.sync += [S.eq(0), *[z.eq(0) for z in cx.zmax]]
            m.next = "ISSUE"
        with m.State("ISSUE"):
            m.d.comb += [iss.eq(1), active.eq(1)]
            m.d.sync += [c.eq(c + 1), ps.g_addr.eq(ps.g_addr + 1)]
            with m.If(c == op["chunks"] - 1):
                m.d.sync += flush.eq(0)
                m.next = "FLUSH"
        with m.State("FLUSH"):
            m.d.comb += active.eq(1)
            m.d.sync += flush.eq(flush + 1)
            with m.If(flush == cx.pass_latency):
                m.next = "FIN0"
        with m.State("FIN0"):
            with m.If(~is_norm):
                m.d.comb += cx.pass_done.eq(1)
                m.next = "IDLE"
            with m.Else():
                m.next = "FIN1"
        with m.State("FIN1"):
            m.next = "FIN2"
        with m.State("FIN2"):
            m.next = "FIN3"
        with m.State("FIN3"):
            m.next = "FIN4"
        with m.State("FIN4"):
            m.next = "FIN5"
        with m.State("FIN5"):
            m.d.comb += cx.pass_done.eq(1)
            m.next = "IDLE"

    # ------------------------------------------------------------ V0: issue
    ps.addr = c
    # registered embedding address: the adder and its fan-out to the embedding block RAMs get a cycle
    emb_addr = reg(m, cx.tok_base + c, cx.emb.addr.shape(), name="v_emb_addr")
    m.d.comb += cx.emb.addr.eq(emb_addr)
    last = c == op["chunks"] - 1
    mask0 = Signal(K)
    for k in range(K):
        m.d.comb += mask0[k].eq(iss & (~last | (k < op["last_lanes"])))
    # control delayed along the pipeline: ctl[i] is valid at stage Vi
    ctl = [Cat(iss, mask0, c)]
    for i in range(1, 8):
        ctl.append(reg(m, ctl[-1], name=f"v_ctl{i}"))

    def valid(i):
        return ctl[i][0]

    def mask(i, k):
        return ctl[i][1 + k]

    def chunk(i):
        return ctl[i][1 + K:]

    # ------------------------------------------------------------ V1 data -> V2 registers
    xw = fmt["res_bits"]

    def operand(k):  # the multiplier operand of T = x * operand: F (released gate) or the gain's slot 0
        return Mux(op["opnd_f"], cx.F.data(k).as_signed(), cx.GM.data(k)[:16].as_signed())

    src2 = [reg(m, Mux(op["src_t"] | is_norm, cx.T.data(k).as_signed(), cx.X.data(k).as_signed()), signed(T_BITS),
                name=f"v_src2_{k}") for k in range(K)]
    if p.compact:
        # F and the gains are read three cycles after the sources (lagging addresses), straight into the
        # V5 operand registers: no delay chains
        ps.f_addr, ps.gm_addr = delay(m, c, 3, "v_f_addr"), delay(m, ps.g_addr, 3, "v_gm_addr")
        op4 = [reg(m, operand(k), signed(18), name=f"v_op4_{k}") for k in range(K)]
        g4 = [reg(m, cx.GM.data(k), name=f"v_g4_{k}") for k in range(K)]
    else:
        ps.f_addr, ps.gm_addr = c, ps.g_addr
        op4 = [delay(m, reg(m, operand(k), signed(18), name=f"v_op2_{k}"), 3, f"v_op_{k}") for k in range(K)]
        g4 = [delay(m, reg(m, cx.GM.data(k), name=f"v_g2_{k}"), 3, f"v_g_{k}") for k in range(K)]
    # embedding path (registered address + DeepRom: data valid at V3): X = emb << res_shift, written at V5
    x4 = [reg(m, lane(cx.emb.data, k, 8).as_signed() << fmt["res_shift"], signed(xw), name=f"v_x4_{k}")
          for k in range(K)]
    x5 = [delay(m, x4[k], 2, f"v_x_{k}") for k in range(K)]

    # ------------------------------------------------------------ V3 shift, V4 round + sat16
    if cx.shifter:  # lane 0 on the core's shared shifter, which the NORM finish also uses (ps.fin_*)
        ps.fin_shift, ps.fin_x, ps.fin_amt = Signal(), Signal(unsigned(32)), Signal(vs.amt_bits)
        x0, a0 = Mux(ps.fin_shift, ps.fin_x, src2[0]), Mux(ps.fin_shift, ps.fin_amt, amt)
    u3 = [cx.shifter.use(m, 0, x0, a0) if cx.shifter and k == 0 else
          reg(m, vs.shift(src2[k], amt), vs.mid_shape, name=f"v_u3_{k}") for k in range(K)]
    xs4 = [round_sat2(m, u3[k], NORM_BITS, f"v_xs4_{k}") for k in range(K)]  # valid at V5
    ps.xn_waddr, ps.xn_wd, ps.we_xn = chunk(5), xs4, valid(5) & is_norm

    # ------------------------------------------------------------ V5 products
    t5 = [product(m, cx, xs4[k], op4[k], signed(T_BITS), f"v_t5_{k}", ("wide", k, 0)) for k in range(K)]
    sq5 = [product(m, cx, xs4[k], xs4[k], unsigned(2 * NORM_BITS - 1), f"v_sq5_{k}", ("narrow", k, 0))
           for k in range(K)]
    if p.compact:
        # |x * g_b| as |x| * |g_b| (both <= 2**15: 16-bit unsigned) on multipliers shared with other units
        z_share = (("wide", 2), ("shared", 0), (None, 0))  # slot b's multiplier (lane 0 only for "shared")
        ax = [abs_(xs4[k])[:16] for k in range(K)]
        z5 = [[product(m, cx, ax[k], abs_(lane(g4[k], b, 16).as_signed())[:16], unsigned(32), f"v_z5_{b}_{k}",
                       (z_share[b][0], k, z_share[b][1]) if z_share[b][0] else None) for k in range(K)]
              for b in range(3)]
    else:
        z5 = [[mul_reg(m, xs4[k], lane(g4[k], b, 16).as_signed(), signed(32), f"v_z5_{b}_{k}", cx.dsp)
               for k in range(K)] for b in range(3)]
    ps.waddr = chunk(6)
    ps.wd = [Mux(is_embed, x5[k], t5[k]) for k in range(K)]
    ps.we_x, ps.we_t = valid(6) & is_embed, valid(6) & is_gain

    # ------------------------------------------------------------ V6 registered, V7 masked |.|, trees
    # (the products are registered once more before |.|: a multiplier output, a 36-bit negation and
    # the routing between them did not fit one 10 ns cycle; a compact core, clocked far slower, masks
    # the products as they leave the multipliers, at V6)
    if p.compact:
        # lane 0 also takes the post unit's T/X writes (0 when it writes neither): one |.| and one running-max
        # comparator per vector for both units (core._connect_ports)
        cx.post_raw = Signal(signed(T_BITS), name="post_raw")
        a7 = [reg(m, abs_(Mux(mask(6, k), ps.wd[k], cx.post_raw if k == 0 else 0)), unsigned(T_BITS),
                  name=f"v_a6_{k}") for k in range(K)]
        s7 = [reg(m, Mux(mask(6, k), sq5[k], 0), unsigned(2 * NORM_BITS - 1), name=f"v_s6_{k}") for k in range(K)]
    else:
        w6 = [reg(m, ps.wd[k], signed(T_BITS), name=f"v_w6_{k}") for k in range(K)]
        sq6 = [reg(m, sq5[k], name=f"v_sq6_{k}") for k in range(K)]
        a7 = [reg(m, Mux(mask(7, k), abs_(w6[k]), 0), unsigned(T_BITS), name=f"v_a7_{k}") for k in range(K)]
        s7 = [reg(m, Mux(mask(7, k), sq6[k], 0), unsigned(2 * NORM_BITS - 1), name=f"v_s7_{k}") for k in range(K)]
    slots = [(b, k) for b in range(3) for k in range(K)]
    # one registered enable per (slot, lane): each drives 32 clears, not all 3 x 32 + 67 of mask(7, k)
    zi = 6 if p.compact else 7  # the stage the enable is valid at
    zen = {(b, k): reg(m, mask(zi - 1, k) & (b < op["fanout"]), name=f"v_zen{zi}_{b}_{k}") for b, k in slots}
    if p.compact:
        # the slot products are non-negative already; masked a stage earlier (two plain registers after
        # them made yosys' iCE40 DSP packing (0.70) leave their outputs driven twice)
        za = {(b, k): reg(m, Mux(zen[b, k], z5[b][k], 0), unsigned(32), name=f"v_z6_{b}_{k}") for b, k in slots}
    else:
        z6 = {(b, k): reg(m, z5[b][k], name=f"v_z6_{b}_{k}") for b, k in slots}
        za = {(b, k): reg(m, Mux(zen[b, k], abs_(z6[b, k]), 0), unsigned(32), name=f"v_za7_{b}_{k}")
              for b, k in slots}
    za7 = [[za[b, k] for k in range(K)] for b in range(3)]
    amax, lv = tree(m, a7, vmax, "v_amax")
    ssum, _ = tree(m, s7, lambda a, b: a + b, "v_ssum")
    zmx = [tree(m, za7[b], vmax, f"v_zmax{b}")[0] for b in range(3)]
    assert lv == cx.lgK

    m.d.comb += [ps.upd_x.eq(active & is_embed), ps.upd_t.eq(active & is_gain)]
    ps.val_x, ps.val_t = amax, amax
    # registered update window (one cycle late: the trees output zeros outside a pass, and the first
    # tree output comes well after the first issue), so the FSM state is not on the compare paths
    norm_upd = reg(m, active & is_norm, name="v_norm_upd")
    with m.If(norm_upd):
        m.d.sync += S.eq(S + ssum)
        for b in range(3):
            with m.If(zmx[b] > cx.zmax[b]):
                m.d.sync += cx.zmax[b].eq(zmx[b])

    # ------------------------------------------------------------ NORM finish: rsqrt, reciprocal
    bS = Signal(range(s_bits + 1))
    half = Signal(signed(8))
    rs_addr = Signal(10)
    S_zero = Signal()
    st = {s: fsm.ongoing(s) for s in ("FIN0", "FIN1", "FIN2", "FIN3", "FIN5")}
    # FIN0: leading ones (S and each max|z_b|)
    with m.If(st["FIN0"] & is_norm):
        m.d.sync += [bS.eq(bitlength(S)), S_zero.eq(S == 0)]
    # coarse (multiple of 8) then fine shifts, one state each
    sh_amt = Signal(8)
    s_mid = Signal(len(S) + 8)
    with m.If(st["FIN1"]):
        hv = (bS - 9) >> 1
        m.d.sync += [half.eq(hv), sh_amt.eq((hv * 2 + 8).as_unsigned()[:8])]
    with m.If(st["FIN2"]):
        m.d.sync += s_mid.eq((S << 8) >> Cat(Const(0, 3), sh_amt[3:]))
    _slot_mantissas(m, cx, fsm, is_norm)
    with m.If(st["FIN3"]):
        ms = (s_mid >> sh_amt[:3])[:10]
        m.d.sync += rs_addr.eq(Mux(S_zero, 0, ms - 256))
    m.d.comb += cx.rsqrt.addr.eq(rs_addr)
    with m.If(st["FIN5"]):
        m.d.sync += [cx.r_m.eq(Mux(S_zero, 0, cx.rsqrt.data)), cx.r_e.eq(Mux(S_zero, 0, -21 - half))]


def _slot_mantissas(m: Module, cx: SimpleNamespace, fsm, is_norm) -> None:
    """NORM finish, per gain slot ``b``: ``e_b = bitlength(max|z_b|)`` (FIN0), the 11-bit mantissa
    ``m_b`` of ``max|z_b|`` through a coarse (FIN1) and a fine (FIN2) shift (1024 when the max is 0).

    A compact core runs the three slots through one encoder and the core's shared shifter, staggered by a
    state (slot ``b``: leading one in FIN ``b``, shift in FIN ``b+1``, mantissa in FIN ``b+2``)."""
    zmax, e_b, m_b = cx.zmax, cx.e_b, cx.m_b
    if cx.shifter is None:
        z_mid = [Signal(32 + 11, name=f"zmid{b}") for b in range(3)]
        with m.If(fsm.ongoing("FIN0") & is_norm):
            m.d.sync += [e_b[b].eq(bitlength(zmax[b])) for b in range(3)]
        with m.If(fsm.ongoing("FIN1")):
            m.d.sync += [z_mid[b].eq((zmax[b] << 11) >> Cat(Const(0, 3), e_b[b][3:])) for b in range(3)]
        with m.If(fsm.ongoing("FIN2")):
            m.d.sync += [m_b[b].eq(Mux(zmax[b] == 0, 1024, (z_mid[b] >> e_b[b][:3])[:11])) for b in range(3)]
        return
    fin = [fsm.ongoing(f"FIN{i}") for i in range(5)]

    def slot_in(vals, first):  # vals[b] while in FIN(first + b)
        v = vals[2]
        for b in (1, 0):
            v = Mux(fin[first + b], vals[b], v)
        return v

    lead = bitlength(slot_in(zmax, 0))
    ps = cx.ps
    e2 = slot_in(e_b, 2)
    # m_b = the 11 bits of max|z_b| below its leading one: shifted right by e_b - 11 (truncating: the
    # shifter's output is x >>> (s-1), one bit above the result)
    m.d.comb += [ps.fin_shift.eq(fin[1] | fin[2] | fin[3]), ps.fin_x.eq(slot_in(zmax, 1)),
                 ps.fin_amt.eq(cx.shifter.spec.amount(slot_in(e_b, 1) - 11))]
    for b in range(3):
        with m.If(fin[b] & is_norm):
            m.d.sync += e_b[b].eq(lead)
        with m.If(fin[b + 2]):
            m.d.sync += m_b[b].eq(Mux(e2 == 0, 1024, cx.shifter.out[1:12]))
