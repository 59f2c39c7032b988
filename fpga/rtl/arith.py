"""Amaranth building blocks for the integer contract (``fpga/FORMATS.md`` section 2).

Each helper returns an expression; callers put registers between them (the pipelines of the
accelerator register every multiply and every barrel shift). Rounding is the contract's single
rule, ``round_shift(x, s) = (x + 2**(s-1)) >> s`` (``x << -s`` for ``s <= 0``), computed as
``((x >>> (s-1)) + 1) >>> 1`` after widening ``x`` so that left shifts become right shifts.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal, Value, signed, unsigned


def _lead(v: Value) -> Value:
    """Index of the leading one of ``v`` (``len(v)`` a power of two; any value for ``v == 0``):
    a mux tree whose select bits are OR-reductions, concatenated without adders."""
    n = len(v)
    if n == 1:
        return Const(0, 0)
    h = n // 2
    hi_any = v[h:].any()
    return Cat(Mux(hi_any, _lead(v[h:]), _lead(v[:h])), hi_any)


def bitlength(v: Value) -> Value:
    """Position of the leading one of an unsigned value (``0 -> 0``): log-depth priority encoder."""
    n = len(v)
    if n == 1:
        return v[0]
    width = 1 << (n - 1).bit_length()
    padded = Cat(v, Const(0, width - n))
    return Mux(v.any(), _lead(padded) + 1, 0)


def in_range(x: Value, bits: int) -> Value:
    """Whether a signed expression fits ``bits`` bits: its top bits are all equal (no carry chain)."""
    x = x.as_signed()
    if len(x) <= bits:
        return Const(1, 1)
    top = x[bits - 1:]
    return top.all() | ~top.any()


def saturate(x: Value, bits: int) -> Value:
    """Clamp a signed expression to ``[-2**(bits-1), 2**(bits-1) - 1]`` (sign-bit test, no compare)."""
    x = x.as_signed()
    if len(x) <= bits:
        return x
    hi, lo = (1 << (bits - 1)) - 1, -(1 << (bits - 1))
    return Mux(in_range(x, bits), x[:bits].as_signed(), Mux(x[-1], lo, hi))


def round_sat(u: Value, bits: int) -> Value:
    """``saturate((u + 1) >> 1, bits)`` with a ``bits``-wide increment instead of a full-width one:
    ``(u + 1) >> 1 = (u >> 1) + u[0]``; only ``2**(bits-1) - 1`` plus one can overflow after the range test."""
    u = u.as_signed()
    a = u[1:].as_signed()
    hi, lo = (1 << (bits - 1)) - 1, -(1 << (bits - 1))
    low = a[:bits].as_signed() if len(a) >= bits else a
    inc = low + u[0]
    fits = in_range(a, bits) if len(a) > bits else Const(1, 1)
    return Mux(fits, Mux(in_range(inc, bits), inc, hi), Mux(a[-1], lo, hi))


def abs_(x: Value) -> Value:
    """``|x|`` of a signed expression, as an unsigned value one bit wider than needed."""
    return Mux(x[-1], -x, x).as_unsigned()


class VarShift:
    """``round_shift(x, s)`` for a run-time shift ``s`` in ``[s_min, s_max]`` (two register stages).

    ``x`` is widened by ``lmax = max(0, 1 - s_min)`` bits so that ``x >>> (s - 1)`` is one
    arithmetic right shift by ``s - 1 + lmax >= 0``; then ``(u + 1) >>> 1`` rounds half up.
    """

    def __init__(self, width: int, s_min: int, s_max: int) -> None:
        if s_max < s_min:
            raise ValueError("VarShift: empty shift range")
        self.width, self.s_min, self.s_max = width, s_min, s_max
        self.lmax = max(0, 1 - s_min)
        self.amt_bits = max(1, (s_max - 1 + self.lmax).bit_length())

    def amount(self, s: Value) -> Value:
        """Unsigned shift amount ``s - 1 + lmax`` (``s`` must already lie in range)."""
        return (s - 1 + self.lmax).as_unsigned()[: self.amt_bits]

    def _widen(self, x: Value) -> Value:
        return x.as_signed() << self.lmax

    def shift(self, x: Value, amt: Value) -> Value:
        """Stage 1: ``x >>> (s-1)`` on the widened value."""
        return self._widen(x) >> amt

    def shift_coarse(self, x: Value, amt: Value) -> Value:
        """Stage 1 split in two for timing, first half: ``x >>> (8 * (amt >> 3))`` on the widened value."""
        wide = self._widen(x)
        return wide >> Cat(Const(0, 3), amt[3:]) if len(amt) > 3 else wide

    @staticmethod
    def shift_fine(u: Value, amt: Value) -> Value:
        """Second half: ``u >>> (amt & 7)`` (``u`` from :meth:`shift_coarse`, registered)."""
        return u >> amt[:3]

    @staticmethod
    def finish(u: Value) -> Value:
        """Stage 2: round half up."""
        return (u + 1) >> 1

    @property
    def mid_shape(self):
        return signed(self.width + self.lmax)


def round_sat2(m: Module, u: Value, bits: int, name: str) -> Signal:
    """:func:`round_sat` over two register stages (range test and low bits, then increment):
    the result register is valid two cycles after ``u``."""
    u = u.as_signed()
    a = u[1:].as_signed()
    fits = reg(m, in_range(a, bits), name=f"{name}_fits")
    low = reg(m, a[:bits].as_signed() if len(a) >= bits else a, name=f"{name}_low")
    u0 = reg(m, u[0], name=f"{name}_u0")
    neg = reg(m, a[-1], name=f"{name}_neg")
    return reg(m, round_sat_finish(fits, low, u0, neg, bits), signed(bits), name=name)


def round_sat_finish(fits: Value, low: Value, u0: Value, neg: Value, bits: int) -> Value:
    hi, lo = (1 << (bits - 1)) - 1, -(1 << (bits - 1))
    inc = low[:bits].as_signed() + u0 if len(low) >= bits else low + u0
    return Mux(fits, Mux(in_range(inc, bits), inc, hi), Mux(neg, lo, hi))


def mul_reg(m: Module, a: Value, b: Value, shape, name: str, multipliers: str = "inferred") -> Signal:
    """Registered product ``a * b`` (both operands must fit signed 18 bits), valid one cycle later.

    ``multipliers`` (:mod:`.primitives`): ``"inferred"`` is ``reg(a * b)`` (simulation; synthesis maps
    it); ``"mult18x18d"`` an ECP5 ``MULT18X18D`` whose own output register is the product register
    (same cycle behaviour), which keeps the routing out of the multiplier's timing path.
    """
    if multipliers == "inferred":
        return reg(m, a * b, shape, name=name)
    if multipliers != "mult18x18d":
        raise ValueError(f"mul_reg: unknown multipliers {multipliers!r}")
    from amaranth.hdl import ClockSignal, Instance

    A, B = Signal(signed(18), name=f"{name}_a"), Signal(signed(18), name=f"{name}_b")
    P = Signal(36, name=f"{name}_p")
    m.d.comb += [A.eq(a), B.eq(b)]
    ports = {f"i_A{i}": A[i] for i in range(18)}
    ports.update({f"i_B{i}": B[i] for i in range(18)})
    ports.update({f"i_C{i}": 0 for i in range(18)})
    ports.update({f"o_P{i}": P[i] for i in range(36)})
    ports.update(i_SIGNEDA=1, i_SIGNEDB=1, i_SOURCEA=0, i_SOURCEB=0, i_CLK0=ClockSignal("sync"), i_CE0=1, i_RST0=0,
                 i_CLK1=0, i_CLK2=0, i_CLK3=0, i_CE1=1, i_CE2=1, i_CE3=1, i_RST1=0, i_RST2=0, i_RST3=0)
    m.submodules[f"{name}_mult"] = Instance(
        "MULT18X18D", p_REG_INPUTA_CLK="NONE", p_REG_INPUTB_CLK="NONE", p_REG_INPUTC_CLK="NONE",
        p_REG_PIPELINE_CLK="NONE", p_REG_OUTPUT_CLK="CLK0", p_REG_OUTPUT_CE="CE0", p_REG_OUTPUT_RST="RST0",
        p_CLK0_DIV="ENABLED", p_HIGHSPEED_CLK="NONE", p_GSR="DISABLED", p_CAS_MATCH_REG="FALSE",
        p_SOURCEB_MODE="B_SHIFT", p_MULT_BYPASS="DISABLED", p_RESETMODE="SYNC", **ports)
    out = Signal(shape, name=name)
    m.d.comb += out.eq(P.as_signed())
    return out


class MuxedMul:
    """One registered ``s<width> x s<width>`` multiplier (``width <= 18``) shared by units that use it at
    disjoint times (the compact core): ``sel`` (stable while a side uses it) picks the side whose
    operands feed it.

    A side is used either combinationally, ``use(m, side, a, b, shape, name)`` (product one cycle after
    the operands, like :func:`mul_reg`), or through held operand registers, ``load(m, side, cond, a, b)``
    (loaded in cycles where ``cond`` holds; product two cycles after the load, valid until the next).
    """

    def __init__(self, m: Module, name: str, sel: Value, sides: int, multipliers: str = "inferred",
                 width: int = 18) -> None:
        self.a = [Signal(signed(width), name=f"{name}_a{i}") for i in range(sides)]
        self.b = [Signal(signed(width), name=f"{name}_b{i}") for i in range(sides)]
        a, b = self.a[0], self.b[0]
        for i in range(1, sides):
            a, b = Mux(sel == i, self.a[i], a), Mux(sel == i, self.b[i], b)
        self.prod = mul_reg(m, a, b, signed(2 * width), f"{name}_p", multipliers)

    def use(self, m: Module, side: int, a: Value, b: Value, shape, name: str) -> Signal:
        m.d.comb += [self.a[side].eq(a), self.b[side].eq(b)]
        out = Signal(shape, name=name)
        m.d.comb += out.eq(self.prod)
        return out

    def load(self, m: Module, side: int, cond: Value, a: Value, b: Value) -> Signal:
        with m.If(cond):
            m.d.sync += [self.a[side].eq(a), self.b[side].eq(b)]
        return self.prod


class SharedShift:
    """One registered :class:`VarShift` stage 1 (``x >>> (s-1)`` on the widened value) for units that
    use it at disjoint times (the compact core): ``sel`` picks the user whose ``(x, amount)`` feed it;
    ``use(m, i, x, amt)`` drives user ``i``'s request and returns the result register (valid the cycle
    after the request, until the next one)."""

    def __init__(self, m: Module, spec: VarShift, sel: Value, users: int) -> None:
        self.spec = spec
        self.x = [Signal(signed(spec.width), name=f"shift_x{i}") for i in range(users)]
        self.amt = [Signal(spec.amt_bits, name=f"shift_amt{i}") for i in range(users)]
        x, a = self.x[0], self.amt[0]
        for i in range(1, users):
            x, a = Mux(sel == i, self.x[i], x), Mux(sel == i, self.amt[i], a)
        self.out = Signal(spec.mid_shape, name="shift_out")
        m.d.sync += self.out.eq(spec.shift(x, a))

    def use(self, m: Module, i: int, x: Value, amt: Value) -> Signal:
        m.d.comb += [self.x[i].eq(x), self.amt[i].eq(amt)]
        return self.out


def const_round_shift(x: Value, s: int) -> Value:
    """``round_shift(x, s)`` for a constant ``s`` (``s <= 0`` is a left shift)."""
    if s <= 0:
        return x.as_signed() << -s
    return (x.as_signed() + (1 << (s - 1))) >> s


def clamp_int(x: Value, lo: int, hi: int) -> Value:
    """Clamp a signed expression to ``[lo, hi]``."""
    return Mux(x > hi, hi, Mux(x < lo, lo, x))


def reg(m: Module, value: Value, shape=None, name: str | None = None, init: int = 0) -> Signal:
    """A register loaded every cycle with ``value``."""
    s = Signal(shape if shape is not None else Value.cast(value).shape(), name=name, init=init)
    m.d.sync += s.eq(value)
    return s


def delay(m: Module, value: Value, n: int, name: str = "dly") -> Value:
    """``value`` delayed by ``n`` register stages (``n = 0`` returns it unchanged)."""
    v = value
    for i in range(n):
        v = reg(m, v, name=f"{name}_{i}")
    return v


__all__ = ["Const", "MuxedMul", "SharedShift", "VarShift", "abs_", "bitlength", "clamp_int", "const_round_shift",
           "delay", "in_range", "mul_reg", "reg", "round_sat", "round_sat2", "round_sat_finish", "saturate",
           "unsigned"]
