"""Pipelined post unit (the lane core, :mod:`.lane_core`): one BitLinear output row per cycle through
requantization and the element-wise stages of the token step (FORMATS §4.6-4.9). The helpers
:func:`flags`, :func:`row_in`, :func:`pick`, :func:`table_index`, :func:`last_operands` and
:func:`row_out` are shared with the serial post unit of the compact core (:mod:`.post_serial`).

Stages: P0 row in (+ buffer reads, argmax on the raw accumulator) -> P1 ``acc_s``, buffer data
-> P2 registered -> P3 products ``acc_s*q_m``, ``f*h``, ``(32768-f)*c`` -> P3b coarse requant shift
(multiples of 8) / recurrence sum -> P4 fine shift -> P5 round, saturate -> P6 table input (``y`` or
the new state ``h``) -> P7 index -> P8 table data -> P9 operands -> P10 third product (``lb`` gate,
``g*sigma(h)`` or ``SiLU(gate)*up``) -> buffer writes, logits out.

Per kind: forget ``F = sigma(f_pre)`` (lower bound optional); candidate ``C = SiLU(c_pre)``;
gate ``H = sat(round_shift(f*h + (32768-f)*c, 15))`` and ``T = g*sigma(H)`` (paper) or
``T = g*gn``, ``F = SiLU(H)`` (released); residual ``X = sat(X + y)``; GLU gate rows
``C = SiLU(gate)``, up rows ``T = C*up``; head: logits out, argmax of the raw accumulators.
"""

from __future__ import annotations

from types import SimpleNamespace

from amaranth.hdl import Array, Const, Module, Mux, Signal, Value, signed, unsigned

from .arith import VarShift, abs_, const_round_shift, in_range, mul_reg, reg, round_sat_finish, saturate
from .program import K_C, K_F, K_G, K_GLU, K_HEAD, K_RES, T_BITS


def flags(m: Module, cx: SimpleNamespace) -> SimpleNamespace:
    """Kind flags of the current matvec (registered once per op, stable from the cycle after the
    sequencer's start) and the format constants the post stages use."""
    fmt, kind = cx.fmt, cx.op["kind"]
    f = SimpleNamespace(**{n: reg(m, kind == k, name=f"post_is{k}")
                           for n, k in (("f", K_F), ("c", K_C), ("g", K_G), ("res", K_RES), ("glu", K_GLU),
                                        ("head", K_HEAD))})
    f.released, f.has_lb = bool(fmt["gate_released"]), bool(fmt["forget_lower_bound"])
    f.act, f.resb, f.logb = fmt["act_bits"], fmt["res_bits"], fmt["logit_bits"]
    f.lut_bits = fmt["lut_bits"]
    f.lut_sh = fmt["act_frac"] - fmt["lut_frac"]
    return f


def row_in(m: Module, cx: SimpleNamespace, is_head):
    """P0: buffer/vector read addresses of the arriving row, argmax of the raw accumulators (head;
    lowest index on ties). Returns ``acc_s``, the accumulator after the BitLinear's pre-shift."""
    p, lgK, op, pp = cx.prog, cx.lgK, cx.op, cx.pp
    e0, acc0 = cx.pe, cx.pacc
    pp.addr = Signal(range(max(2, p.chunks(p.d_in_max))))
    pp.h_addr = Signal(range(max(2, p.n_layers * p.chunks(p.d))))
    m.d.comb += [pp.addr.eq(e0 >> lgK), pp.h_addr.eq(op["hbase"] + (e0 >> lgK))]
    if cx.prom is not None:
        m.d.comb += cx.prom.addr.eq(op["pbase"] + e0)
    if p.uses_acc_shift:
        sh = VarShift(p.acc_bits, 0, max(o.acc_shift for o in p.ops))
        accs = sh.finish(sh.shift(acc0, sh.amount(op["acc_shift"])))
    else:
        accs = acc0
    cx.best = Signal(signed(p.acc_bits))
    cx.best_j = Signal(p.tok_bits)
    best_any = Signal()
    with m.If(cx.mv_start):
        m.d.sync += best_any.eq(0)
    with m.Elif(cx.pv & is_head & (~best_any | (acc0 > cx.best))):
        m.d.sync += [cx.best.eq(acc0), cx.best_j.eq(cx.pj), best_any.eq(1)]
    return accs


def pick(cx: SimpleNamespace, banks, bank):
    """Read data of the bank ``bank`` selects (a row's element lives in bank ``e % K``)."""
    K = cx.K
    return Array([banks.data(k) for k in range(K)])[bank] if K > 1 else banks.data(0)


def table_index(f: SimpleNamespace, jj):
    """σ/SiLU table address of the rounded input ``jj`` (clamped to the table), and the flags
    ``(above, below)`` of an input past either end."""
    half = 1 << (f.lut_bits - 1)
    inr = in_range(jj, f.lut_bits)
    idx = Mux(inr, jj[:f.lut_bits] ^ half, Mux(jj[-1], 0, (1 << f.lut_bits) - 1))
    return idx, ~inr & ~jj[-1], ~inr & jj[-1]


def build(m: Module, cx: SimpleNamespace) -> None:
    lgK = cx.lgK
    cx.pp = SimpleNamespace()
    fl = flags(m, cx)
    is_g, is_res, is_head = fl.g, fl.res, fl.head
    released, has_lb = fl.released, fl.has_lb
    act, resb, logb = fl.act, fl.resb, fl.logb
    lut_sh = fl.lut_sh

    # ------------------------------------------------------------ P0
    v0, j0, e0, up0 = cx.pv, cx.pj, cx.pe, cx.pup
    bank0 = e0[:lgK] if lgK else Const(0, 1)
    accs = row_in(m, cx, is_head)

    # ------------------------------------------------------------ P1 (buffer data) -> P2 registers
    v1, j1, e1, up1 = (reg(m, x, name=f"p1_{n}") for x, n in ((v0, "v"), (j0, "j"), (e0, "e"), (up0, "up")))
    bank1 = reg(m, bank0, unsigned(max(1, lgK)), name="p1_bank")
    acc_s1 = reg(m, accs, signed(18), name="p1_accs")

    with m.If(v1 & ~cx.scale_ready):
        m.d.sync += cx.error.eq(1)
    pd = cx.prom.data if cx.prom is not None else None
    c2 = {"v": v1, "j": j1, "e": e1, "up": up1, "accs": acc_s1}
    c2 = {n: reg(m, x, name=f"p2_{n}") for n, x in c2.items()}
    xv2 = reg(m, pick(cx, cx.X, bank1).as_signed(), signed(resb), name="p2_xv")
    fv2 = reg(m, pick(cx, cx.F, bank1).as_signed(), signed(18), name="p2_fv")
    ifv2 = reg(m, 32768 - pick(cx, cx.F, bank1).as_signed(), signed(18), name="p2_ifv")
    cv2 = reg(m, pick(cx, cx.C, bank1).as_signed(), signed(18), name="p2_cv")
    hv2 = reg(m, pick(cx, cx.H, bank1).as_signed(), signed(18), name="p2_hv")
    mq2 = reg(m, Mux(is_g, pd[0:16].as_signed(), cx.q_m) if released else cx.q_m, signed(18), name="p2_mq")
    lb2 = reg(m, pd[16:32], unsigned(16), name="p2_lb") if has_lb else None

    # ------------------------------------------------------------ P3 products
    prod3 = mul_reg(m, c2["accs"], mq2, signed(36), "p3_prod", cx.multipliers)
    ma3 = mul_reg(m, fv2, hv2, signed(36), "p3_ma", cx.multipliers)
    mb3 = mul_reg(m, ifv2, cv2, signed(36), "p3_mb", cx.multipliers)
    carry = dict(c2, xv=xv2, cv=cv2)
    if has_lb:
        carry["lb"] = lb2
    c3 = {n: reg(m, x, name=f"p3_{n}") for n, x in carry.items()}

    # ------------------------------------------------------------ P3b coarse requant shift, recurrence sum
    u3b = reg(m, cx.rq.shift_coarse(prod3, cx.amt_rq), cx.rq.mid_shape, name="p3b_u")
    gs3b = reg(m, ma3 + mb3, signed(36), name="p3b_gs")
    c3b = {n: reg(m, x, name=f"p3b_{n}") for n, x in c3.items()}
    c3b["gg"] = reg(m, prod3, name="p3b_gg")

    # ------------------------------------------------------------ P4 fine requant shift
    u4 = reg(m, cx.rq.shift_fine(u3b, cx.amt_rq), cx.rq.mid_shape, name="p4_u")
    gs4 = reg(m, gs3b, name="p4_gs")
    c4 = {n: reg(m, x, name=f"p4_{n}") for n, x in c3b.items()}

    # ------------------------------------------------------------ P5 range tests, P5b round + saturate
    y_bits = max(act, resb, logb)
    a4 = u4[1:].as_signed()
    fits = {w: reg(m, in_range(a4, w), name=f"p5_fits{w}") for w in sorted({act, resb, logb})}
    low5 = reg(m, a4[:y_bits].as_signed(), name="p5_low")
    u05, neg5 = reg(m, u4[0], name="p5_u0"), reg(m, a4[-1], name="p5_neg")
    h5a = reg(m, const_round_shift(gs4, 15), name="p5_hr")
    c5a = {n: reg(m, x, name=f"p5a_{n}") for n, x in c4.items()}

    def fin(w):
        return round_sat_finish(fits[w], low5, u05, neg5, w)

    y5 = reg(m, Mux(is_res, fin(resb), Mux(is_head, fin(logb), fin(act))), signed(y_bits), name="p5_y")
    h5 = reg(m, saturate(h5a, act), signed(act), name="p5_h")
    c5 = {n: reg(m, x, name=f"p5_{n}") for n, x in c5a.items()}

    # ------------------------------------------------------------ P6 table input, P7 index -> P8 data
    v18 = Mux(is_g, h5, y5[:act].as_signed())
    jj6 = reg(m, const_round_shift(v18, lut_sh) if lut_sh > 0 else v18, signed(act + 1), name="p6_jj")
    val6 = reg(m, v18, signed(act), name="p6_val")
    late = dict(c5, y=y5, h=h5)
    late["xs"] = c5["xv"] + y5
    c6 = {n: reg(m, x, name=f"p6_{n}") for n, x in late.items()}
    idx, above, below = table_index(fl, jj6)
    m.d.comb += [cx.sig.addr.eq(idx), cx.silu.addr.eq(idx)]
    hi7 = reg(m, above, name="p7_hi")
    lo7 = reg(m, below, name="p7_lo")
    val7 = reg(m, val6, name="p7_val")
    c7 = {n: reg(m, x, name=f"p7_{n}") for n, x in c6.items()}

    # ------------------------------------------------------------ P8 table data registered
    sig8 = reg(m, cx.sig.data.as_signed(), signed(18), name="p8_sig")  # 0..32768
    silu8 = reg(m, Mux(hi7, val7, Mux(lo7, 0, cx.silu.data.as_signed())), signed(act), name="p8_silu")
    c8 = {n: reg(m, x, name=f"p8_{n}") for n, x in c7.items()}

    # ------------------------------------------------------------ P9 operands, P10 product
    ma, mb = last_operands(fl, c8, sig8)
    ma9 = reg(m, ma, signed(18), name="p9_ma")
    mb9 = reg(m, mb, signed(18), name="p9_mb")
    c9 = {n: reg(m, x, name=f"p9_{n}") for n, x in dict(c8, sig=sig8, silu=silu8).items()}
    prod10 = mul_reg(m, ma9, mb9, signed(T_BITS), "p10_prod", cx.multipliers)
    c10 = {n: reg(m, x, name=f"p10_{n}") for n, x in c9.items()}
    prod9, c9 = prod10, c10

    # ------------------------------------------------------------ writes, maxima, completion
    t_val, x_new = row_out(m, cx, fl, c9["v"], c9, prod9)
    pp = cx.pp
    pp.upd_t = reg(m, pp.we_t, name="p10_updt")
    pp.val_t = reg(m, abs_(t_val), unsigned(T_BITS), name="p10_valt")
    pp.upd_x = reg(m, pp.we_x, name="p10_updx")
    pp.val_x = reg(m, abs_(x_new), unsigned(fl.resb), name="p10_valx")


def last_operands(f: SimpleNamespace, r: dict, sig):
    """Operands of the third product: ``(32768 - lb) * sigma`` (forget lower bound), ``acc_s * sigma(h)``
    (gate), ``acc_s * SiLU(gate)`` (GLU up rows), else ``C * sigma``. ``r`` holds ``accs``, ``cv``, ``lb``."""
    if f.has_lb:
        ma = Mux(f.f, 32768 - r["lb"], Mux(f.g, r["accs"], r["cv"]))
    else:
        ma = Mux(f.g, r["accs"], r["cv"])
    return ma, Mux(f.glu, r["accs"], sig)


def row_out(m: Module, cx: SimpleNamespace, f: SimpleNamespace, v, r: dict, prod) -> tuple[Value, Value]:
    """Buffer writes, logit output, running-maximum resets and the completion count of one finished row.

    ``v`` marks the cycle the row is written; ``r`` holds its ``e``, ``j``, ``up`` and results
    (``gg`` first product, ``lb``, ``sig``, ``silu``, ``h``, ``xs``, ``y``); ``prod`` is the third product.
    Returns the values written to ``T`` and ``X`` (each post unit feeds them to the running maxima
    its own way: ``pp.upd_*`` / ``pp.val_*``).
    """
    p, lgK, op, pp = cx.prog, cx.lgK, cx.op, cx.pp
    e, up = r["e"], r["up"]
    f_val = (r["lb"] + const_round_shift(prod, 15)) if f.has_lb else r["sig"]
    pp.waddr = e >> lgK
    pp.wbank = e[:lgK] if lgK else Const(0, 1)
    pp.h_waddr = Signal.like(pp.h_addr)
    m.d.comb += pp.h_waddr.eq(op["hbase"] + (e >> lgK))
    t_val = Mux(f.g, r["gg"], prod) if f.released else prod
    pp.we_f = v & (f.f | f.g) if f.released else v & f.f
    pp.f_wd = Mux(f.f, f_val, r["silu"]) if f.released else f_val
    pp.we_c, pp.c_wd = v & (f.c | (f.glu & ~up)), r["silu"]
    pp.we_h, pp.h_wd = v & f.g, r["h"]
    pp.we_t, pp.t_wd = v & (f.g | (f.glu & up)), t_val
    x_new = saturate(r["xs"], f.resb)
    pp.we_x, pp.x_wd = v & f.res, x_new
    cx.logit_v, cx.logit_j, cx.logit = v & f.head, r["j"], r["y"]

    kind = op["kind"]
    pp.rst_x = cx.mv_start & (kind == K_RES)
    pp.rst_t = cx.mv_start & ((kind == K_G) | (kind == K_GLU))
    cnt = Signal(range(max(2, max(o.d_out for o in p.ops) + 1)))
    with m.If(cx.mv_start):
        m.d.sync += cnt.eq(0)
    with m.Elif(v):
        m.d.sync += cnt.eq(cnt + 1)
    m.d.comb += cx.post_all.eq(cnt == op["d_out"])
    return t_val, x_new
