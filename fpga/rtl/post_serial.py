"""Serial post unit of the compact core (:mod:`.compact_core`): the arithmetic of :mod:`.post`, one row
at a time through a step counter, with the core's shared multiplier (:class:`~.arith.MuxedMul`, also used
by the output-scale unit before the first row) instead of four, and one register per value instead of
a copy per pipeline stage.

A row arrives at most every :data:`~.program.SERIAL_POST_CYCLES` cycles (one row per row group,
``R = 1``; the program stretches short row groups to that period). Steps after the row's arrival
(cycle 0: buffer reads, argmax):

1. buffer data; multiply ``acc_s * q_m`` (or ``acc_s * gn``)
2. multiply ``f * h``            3. multiply ``(32768 - f) * c``; requant shift of the first product
                                    (the core's shared shifter, whole shift in one step)
4. ``f * h`` registered; range tests of the shifted product
5. recurrence sum ``f*h + (32768-f)*c``
6. round + saturate ``y``        7. new state ``h``; residual sum
8. table input                   9. table index      10. table data
11. third product operands      13. third product; buffer writes, logit out
"""

from __future__ import annotations

from types import SimpleNamespace

from amaranth.hdl import Module, Mux, Signal, signed, unsigned

from .arith import const_round_shift, delay, in_range, round_sat_finish, saturate
from .post import flags, last_operands, pick, row_in, row_out, table_index
from .program import SERIAL_POST_CYCLES, T_BITS

#: Step of the row's buffer writes (the last step).
WRITE_STEP = SERIAL_POST_CYCLES - 1


def build(m: Module, cx: SimpleNamespace) -> None:
    lgK = cx.lgK
    cx.pp = SimpleNamespace()
    fl = flags(m, cx)
    act, resb, logb = fl.act, fl.resb, fl.logb
    y_bits = max(act, resb, logb)
    accs = row_in(m, cx, fl.head)

    st = Signal(range(SERIAL_POST_CYCLES), name="ps_step")
    with m.If(st == WRITE_STEP):
        m.d.sync += st.eq(0)
    with m.Elif(st != 0):
        m.d.sync += st.eq(st + 1)
    with m.If(cx.pv):
        with m.If(st != 0):
            m.d.sync += cx.error.eq(1)  # rows closer than SERIAL_POST_CYCLES: the program must prevent it
        m.d.sync += st.eq(1)

    def at(step: int, *assigns) -> None:
        with m.If(st == step):
            m.d.sync += list(assigns)

    # ------------------------------------------------------------ row registers (step 0)
    r = {"e": Signal.like(cx.pe, name="ps_e"), "j": Signal.like(cx.pj, name="ps_j"), "up": Signal(name="ps_up"),
         "accs": Signal(signed(18), name="ps_accs")}
    bank = Signal(max(1, lgK), name="ps_bank")
    with m.If(cx.pv):
        m.d.sync += [r["e"].eq(cx.pe), r["j"].eq(cx.pj), r["up"].eq(cx.pup), r["accs"].eq(accs),
                     bank.eq(cx.pe[:lgK] if lgK else 0)]

    # ------------------------------------------------------------ step 1: buffer data
    for name, shape in (("xv", signed(resb)), ("fv", signed(18)), ("ifv", signed(18)), ("cv", signed(18)),
                        ("hv", signed(18)), ("lb", unsigned(16)), ("gg", signed(T_BITS)), ("ma", signed(T_BITS)),
                        ("gs", signed(T_BITS)), ("y", signed(y_bits)), ("h5a", signed(T_BITS - 14)),
                        ("h", signed(act)), ("xs", signed(max(resb, y_bits) + 1)), ("jj", signed(act + 1)),
                        ("val", signed(act)), ("sig", signed(18)), ("silu", signed(act))):
        r[name] = Signal(shape, name=f"ps_{name}")
    fdata = pick(cx, cx.F, bank).as_signed()
    pd = cx.prom.data if cx.prom is not None else None
    mq = Mux(fl.g, pd[0:16].as_signed(), cx.q_m) if fl.released else cx.q_m
    at(1, r["xv"].eq(pick(cx, cx.X, bank).as_signed()), r["fv"].eq(fdata), r["ifv"].eq(32768 - fdata),
       r["cv"].eq(pick(cx, cx.C, bank).as_signed()), r["hv"].eq(pick(cx, cx.H, bank).as_signed()))
    if fl.has_lb:
        at(1, r["lb"].eq(pd[16:32]))
    with m.If((st == 1) & ~cx.scale_ready):
        m.d.sync += cx.error.eq(1)

    # ------------------------------------------------------------ products (the core's shared multiplier)
    mul = cx.muls["shared"]
    prod = mul.prod  # valid two steps after its operand step
    mul.load(m, 1, st == 1, r["accs"], mq)
    mul.load(m, 1, st == 2, r["fv"], r["hv"])
    mul.load(m, 1, st == 3, r["ifv"], r["cv"])
    mul.load(m, 1, st == 11, *last_operands(fl, r, r["sig"]))

    # ------------------------------------------------------------ requant of the first product, recurrence
    m.d.comb += cx.post_shift.eq(st == 3)  # the core's shared shifter: the whole shift in step 3
    u = cx.shifter.use(m, 2, prod, cx.amt_rq)  # valid in step 4
    at(3, r["gg"].eq(prod))
    a = u[1:].as_signed()
    fits = {w: Signal(name=f"ps_fits{w}") for w in sorted({act, resb, logb})}
    low, u0, neg = Signal(signed(y_bits), name="ps_low"), Signal(name="ps_u0"), Signal(name="ps_neg")
    at(4, r["ma"].eq(prod), low.eq(a[:y_bits].as_signed()), u0.eq(u[0]), neg.eq(a[-1]),
       *[fits[w].eq(in_range(a, w)) for w in fits])
    at(5, r["gs"].eq(r["ma"] + prod))

    def fin(w):
        return round_sat_finish(fits[w], low, u0, neg, w)

    at(6, r["y"].eq(Mux(fl.res, fin(resb), Mux(fl.head, fin(logb), fin(act)))),
       r["h5a"].eq(const_round_shift(r["gs"], 15)))
    at(7, r["h"].eq(saturate(r["h5a"], act)), r["xs"].eq(r["xv"] + r["y"]))

    # ------------------------------------------------------------ tables
    v18 = Mux(fl.g, r["h"], r["y"][:act].as_signed())
    at(8, r["jj"].eq(const_round_shift(v18, fl.lut_sh) if fl.lut_sh > 0 else v18), r["val"].eq(v18))
    idx, above, below = table_index(fl, r["jj"])
    m.d.comb += [cx.sig.addr.eq(idx), cx.silu.addr.eq(idx)]
    hi, lo = Signal(name="ps_hi"), Signal(name="ps_lo")
    at(9, hi.eq(above), lo.eq(below))
    at(10, r["sig"].eq(cx.sig.data.as_signed()),
       r["silu"].eq(Mux(hi, r["val"], Mux(lo, 0, cx.silu.data.as_signed()))))

    # ------------------------------------------------------------ writes, maxima, completion
    t_val, x_new = row_out(m, cx, fl, st == WRITE_STEP, r, prod)
    # the values go through the vector unit's |.| register and tree (compact_core.vector_unit), 1 + lgK cycles
    pp = cx.pp
    m.d.comb += cx.post_raw.eq(Mux(pp.we_x, x_new, Mux(pp.we_t, t_val, 0)))
    pp.upd_t, pp.upd_x = delay(m, pp.we_t, 1 + lgK, "p_updt"), delay(m, pp.we_x, 1 + lgK, "p_updx")
