"""Vector unit: the element-wise passes before a BitLinear, ``K`` elements per cycle — the stages both
core variants share, as small functions; each variant (:mod:`.lane_core`, :mod:`.compact_core`) strings
them together with its own operand fetch, products and masking.

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
"""

from __future__ import annotations

from types import SimpleNamespace

from amaranth.hdl import Cat, Const, Module, Mux, Signal, Value, signed, unsigned

from .arith import VarShift, bitlength, delay, reg, round_sat2
from .banks import lane
from .program import EMBED, GAIN, NORM, NORM_BITS, T_BITS
from .schedule import PASS_FIXED

#: Shift range of a vector lane's normalization (``normalize16`` of an s36 value).
LANE_SHIFT = VarShift(T_BITS, -(NORM_BITS - 2), T_BITS - (NORM_BITS - 1))


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


def control(m: Module, cx: SimpleNamespace, vs: VarShift) -> SimpleNamespace:
    """The pass FSM (setup, issue, flush, NORM finish states) and the unit's state registers.

    ``vs`` is the lane shifter's range (the shift amount register ``amt`` is sized for it). Returns the
    namespace the other stages read: op flags, ``fsm``, ``iss`` / ``active``, the chunk counter ``c``."""
    p, op = cx.prog, cx.op
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

    amt = Signal(vs.amt_bits)
    bl = Signal(range(T_BITS + 1))
    mx_zero = Signal()
    c = Signal(range(ch + 1))
    flush = Signal(range(16))
    active = Signal()
    cx.pass_latency = PASS_FIXED + cx.lgK  # cycles from the last issue to the last tree output, minus one

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
    return SimpleNamespace(is_embed=is_embed, is_gain=is_gain, is_norm=is_norm, fsm=fsm, amt=amt, c=c, iss=iss,
                           active=active, s_bits=s_bits, ctl=None)


def issue(m: Module, cx: SimpleNamespace, v: SimpleNamespace) -> None:
    """V0: the chunk address, the registered embedding address and the control word delayed along the
    pipeline (``v.ctl[i]`` is valid at stage Vi: issue bit, lane mask, chunk; see :func:`valid`)."""
    K, op, c = cx.K, cx.op, v.c
    cx.ps.addr = c
    # registered embedding address: the adder and its fan-out to the embedding block RAMs get a cycle
    emb_addr = reg(m, cx.tok_base + c, cx.emb.addr.shape(), name="v_emb_addr")
    m.d.comb += cx.emb.addr.eq(emb_addr)
    last = c == op["chunks"] - 1
    mask0 = Signal(K)
    for k in range(K):
        m.d.comb += mask0[k].eq(v.iss & (~last | (k < op["last_lanes"])))
    ctl = [Cat(v.iss, mask0, c)]
    for i in range(1, 8):
        ctl.append(reg(m, ctl[-1], name=f"v_ctl{i}"))
    v.ctl = ctl


def valid(v: SimpleNamespace, i: int) -> Value:
    """Issue bit at stage Vi."""
    return v.ctl[i][0]


def mask(v: SimpleNamespace, i: int, k: int) -> Value:
    """Lane ``k`` holds an element at stage Vi."""
    return v.ctl[i][1 + k]


def chunk(v: SimpleNamespace, i: int, K: int) -> Value:
    """Chunk index at stage Vi."""
    return v.ctl[i][1 + K:]


def operand(cx: SimpleNamespace, k: int) -> Value:
    """The multiplier operand of ``T = x * operand`` in lane ``k``: F (released gate) or the gain's slot 0."""
    return Mux(cx.op["opnd_f"], cx.F.data(k).as_signed(), cx.GM.data(k)[:16].as_signed())


def sources(m: Module, cx: SimpleNamespace, v: SimpleNamespace) -> list[Signal]:
    """V2: the source element of each lane (``T`` for NORM and the released gate, else ``X``), s36."""
    return [reg(m, Mux(cx.op["src_t"] | v.is_norm, cx.T.data(k).as_signed(), cx.X.data(k).as_signed()),
                signed(T_BITS), name=f"v_src2_{k}") for k in range(cx.K)]


def embed_lanes(m: Module, cx: SimpleNamespace) -> list[Value]:
    """Embedding path (registered address + two-cycle memory: data valid at V3): ``X = emb << res_shift``,
    delayed to its write at V5."""
    xw = cx.fmt["res_bits"]
    x4 = [reg(m, lane(cx.emb.data, k, 8).as_signed() << cx.fmt["res_shift"], signed(xw), name=f"v_x4_{k}")
          for k in range(cx.K)]
    return [delay(m, x4[k], 2, f"v_x_{k}") for k in range(cx.K)]


def round_lanes(m: Module, cx: SimpleNamespace, v: SimpleNamespace, u3: list) -> list[Signal]:
    """V4: round + saturate the shifted lanes to s16 (two stages, valid at V5) and write them to ``XN``
    in a NORM pass."""
    xs4 = [round_sat2(m, u3[k], NORM_BITS, f"v_xs4_{k}") for k in range(cx.K)]
    ps = cx.ps
    ps.xn_waddr, ps.xn_wd, ps.we_xn = chunk(v, 5, cx.K), xs4, valid(v, 5) & v.is_norm
    return xs4


def write_back(m: Module, cx: SimpleNamespace, v: SimpleNamespace, x5: list, t5: list) -> None:
    """V6: ``X`` writes of an EMBED pass, ``T`` writes of a GAIN pass (``ps.wd`` per lane)."""
    ps = cx.ps
    ps.waddr = chunk(v, 6, cx.K)
    ps.wd = [Mux(v.is_embed, x5[k], t5[k]) for k in range(cx.K)]
    ps.we_x, ps.we_t = valid(v, 6) & v.is_embed, valid(v, 6) & v.is_gain


def reduce(m: Module, cx: SimpleNamespace, v: SimpleNamespace, a: list, s: list, z: list[list]) -> None:
    """Registered max / sum trees over the masked lanes (``a``: |written value|, ``s``: XN^2, ``z[b]``:
    |z_b|) and the running registers ``max|X|``/``max|T|`` (through ``ps.val_*``), ``S``, ``max|z_b|``."""
    ps, S = cx.ps, cx.S
    amax, lv = tree(m, a, vmax, "v_amax")
    ssum, _ = tree(m, s, lambda x, y: x + y, "v_ssum")
    zmx = [tree(m, z[b], vmax, f"v_zmax{b}")[0] for b in range(3)]
    assert lv == cx.lgK

    m.d.comb += [ps.upd_x.eq(v.active & v.is_embed), ps.upd_t.eq(v.active & v.is_gain)]
    ps.val_x, ps.val_t = amax, amax
    # registered update window (one cycle late: the trees output zeros outside a pass, and the first
    # tree output comes well after the first issue), so the FSM state is not on the compare paths
    norm_upd = reg(m, v.active & v.is_norm, name="v_norm_upd")
    with m.If(norm_upd):
        m.d.sync += S.eq(S + ssum)
        for b in range(3):
            with m.If(zmx[b] > cx.zmax[b]):
                m.d.sync += cx.zmax[b].eq(zmx[b])


def norm_finish(m: Module, cx: SimpleNamespace, v: SimpleNamespace) -> None:
    """NORM finish of ``S``: leading one (FIN0), coarse and fine shifts (FIN1, FIN2), rsqrt table address
    (FIN3), ``r_m``/``r_e`` (FIN5). The slot mantissas ``m_b``/``e_b`` are the variant's
    (``slot_mantissas`` of :mod:`.lane_core` / :mod:`.compact_core`), in the same states."""
    S, fsm = cx.S, v.fsm
    bS = Signal(range(v.s_bits + 1))
    half = Signal(signed(8))
    rs_addr = Signal(10)
    S_zero = Signal()
    st = {s: fsm.ongoing(s) for s in ("FIN0", "FIN1", "FIN2", "FIN3", "FIN5")}
    # FIN0: leading ones (S and each max|z_b|)
    with m.If(st["FIN0"] & v.is_norm):
        m.d.sync += [bS.eq(bitlength(S)), S_zero.eq(S == 0)]
    # coarse (multiple of 8) then fine shifts, one state each
    sh_amt = Signal(8)
    s_mid = Signal(len(S) + 8)
    with m.If(st["FIN1"]):
        hv = (bS - 9) >> 1
        m.d.sync += [half.eq(hv), sh_amt.eq((hv * 2 + 8).as_unsigned()[:8])]
    with m.If(st["FIN2"]):
        m.d.sync += s_mid.eq((S << 8) >> Cat(Const(0, 3), sh_amt[3:]))
    with m.If(st["FIN3"]):
        ms = (s_mid >> sh_amt[:3])[:10]
        m.d.sync += rs_addr.eq(Mux(S_zero, 0, ms - 256))
    m.d.comb += cx.rsqrt.addr.eq(rs_addr)
    with m.If(st["FIN5"]):
        m.d.sync += [cx.r_m.eq(Mux(S_zero, 0, cx.rsqrt.data)), cx.r_e.eq(Mux(S_zero, 0, -21 - half))]


__all__ = ["LANE_SHIFT", "chunk", "control", "embed_lanes", "issue", "mask", "norm_finish",
           "operand", "reduce", "round_lanes", "sources", "tree", "valid", "vmax", "write_back"]
