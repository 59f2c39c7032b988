"""UART wrapper for a real board: 8N1 serial in and out around the accelerator core (:func:`~.variants.make_core`).

Protocol (host -> chip): one command byte, then the input token as ``tok_bytes`` bytes
(little-endian). Command bits: ``0x01`` also return the logits, ``0x02`` clear the recurrent
state first (start of a new sequence). Reply (chip -> host): the greedy next token
(``tok_bytes`` bytes, little-endian) and, if asked, ``vocab`` logits of ``logit_bytes`` bytes each
(little-endian two's complement, Q(logit_frac)). The LED shows ``busy``.

A compact core (iCE40) first takes its boot image (``boot.bin`` of the export: the SPRAM contents
as little-endian 16-bit words, :mod:`.boot`) after every reset or power-up; commands follow it.
The host side is :mod:`.host` (``matmulfree fpga run``).
"""

from __future__ import annotations

from amaranth.hdl import Cat, ClockDomain, ClockSignal, Elaboratable, Instance, Module, ResetSignal, Signal
from amaranth.lib import memory, wiring
from amaranth.lib.cdc import FFSynchronizer
from amaranth.lib.wiring import In, Out

from .banks import read_data
from .host import CMD_CLEAR, Protocol
from .primitives import Primitives
from .program import Program
from .variants import make_core


class UartRx(wiring.Component):
    """8N1 receiver: ``data``/``valid`` (one-cycle pulse) per byte; ``divisor`` clocks per bit."""

    def __init__(self, divisor: int) -> None:
        if divisor < 4:
            raise ValueError(f"UART divisor must be >= 4 clocks per bit, got {divisor}")
        self.divisor = divisor
        super().__init__({"rx": In(1, init=1), "data": Out(8), "valid": Out(1)})

    def elaborate(self, platform) -> Module:
        m = Module()
        rx = Signal(init=1)
        m.submodules.sync_rx = FFSynchronizer(self.rx, rx, init=1)
        cnt = Signal(range(self.divisor * 3 // 2 + 1))
        bit = Signal(range(9))
        sh = Signal(8)
        with m.FSM():
            with m.State("IDLE"):
                with m.If(~rx):
                    m.d.sync += [cnt.eq(self.divisor + self.divisor // 2 - 1), bit.eq(0)]
                    m.next = "DATA"
            with m.State("DATA"):
                m.d.sync += cnt.eq(cnt - 1)
                with m.If(cnt == 0):
                    m.d.sync += [sh.eq((sh >> 1) | (rx << 7)), bit.eq(bit + 1), cnt.eq(self.divisor - 1)]
                    with m.If(bit == 7):
                        m.next = "STOP"
            with m.State("STOP"):
                m.d.sync += cnt.eq(cnt - 1)
                with m.If(cnt == 0):
                    m.d.comb += [self.valid.eq(rx)]
                    m.next = "IDLE"
        m.d.comb += self.data.eq(sh)
        return m


class UartTx(wiring.Component):
    """8N1 transmitter: load ``data`` with ``valid`` while ``ready``."""

    def __init__(self, divisor: int) -> None:
        self.divisor = divisor
        super().__init__({"data": In(8), "valid": In(1), "ready": Out(1), "tx": Out(1, init=1)})

    def elaborate(self, platform) -> Module:
        m = Module()
        cnt = Signal(range(self.divisor))
        bits = Signal(range(11))
        sh = Signal(10, init=0x3FF)
        m.d.comb += [self.tx.eq(sh[0]), self.ready.eq(bits == 0)]
        with m.If(bits == 0):
            with m.If(self.valid):
                m.d.sync += [sh.eq((self.data << 1) | (1 << 9)), bits.eq(10), cnt.eq(self.divisor - 1)]
        with m.Elif(cnt == 0):
            m.d.sync += [sh.eq((sh >> 1) | (1 << 9)), bits.eq(bits - 1), cnt.eq(self.divisor - 1)]
        with m.Else():
            m.d.sync += cnt.eq(cnt - 1)
        return m


class UartCore(wiring.Component):
    """The core behind the serial protocol of the module docstring (one clock domain)."""

    def __init__(self, prog: Program, divisor: int, prims: Primitives | None = None) -> None:
        self.prog, self.divisor, self.prims = prog, divisor, prims
        proto = Protocol.of(prog)
        self.tok_bytes, self.logit_bytes = proto.tok_bytes, proto.logit_bytes
        super().__init__({"rx": In(1, init=1), "tx": Out(1, init=1), "led": Out(1)})

    def elaborate(self, platform) -> Module:
        m = Module()
        p = self.prog
        m.submodules.core = core = make_core(p, self.prims)
        m.submodules.urx = urx = UartRx(self.divisor)
        m.submodules.utx = utx = UartTx(self.divisor)
        m.d.comb += [urx.rx.eq(self.rx), self.tx.eq(utx.tx), self.led.eq(core.busy)]
        lb = p.fmt["logit_bits"]
        m.submodules.logits = lmem = memory.Memory(shape=lb, depth=p.vocab, init=[])
        lw, lr = lmem.write_port(), lmem.read_port()
        ldata = read_data(m, lr, lw, "logits")
        m.d.comb += [lw.addr.eq(core.logit_index), lw.data.eq(core.logit), lw.en.eq(core.logit_valid)]

        cmd = Signal(8)
        tok = Signal(8 * self.tok_bytes)
        out_tok = Signal(8 * self.tok_bytes)
        nb = Signal(range(max(self.tok_bytes, self.logit_bytes) + 1))
        li = Signal(range(p.vocab + 1))
        lv = Signal(8 * self.logit_bytes)
        with m.FSM(init="BOOT" if p.compact else "CMD"):
            if p.compact:  # the SPRAM image, little-endian 16-bit words, before the first command
                low = Signal(8)
                half = Signal()
                with m.State("BOOT"):
                    with m.If(core.booted):
                        m.next = "CMD"
                    with m.Elif(urx.valid):
                        m.d.sync += [low.eq(urx.data), half.eq(~half)]
                        m.d.comb += [core.boot_data.eq(Cat(low, urx.data)), core.boot_valid.eq(half)]
            with m.State("CMD"):
                with m.If(urx.valid):
                    m.d.sync += [cmd.eq(urx.data), nb.eq(0)]
                    m.next = "TOK"
            with m.State("TOK"):
                with m.If(urx.valid):
                    m.d.sync += [tok.eq((tok >> 8) | (urx.data << (8 * self.tok_bytes - 8))), nb.eq(nb + 1)]
                    with m.If(nb == self.tok_bytes - 1):
                        m.next = "CLEAR"
            with m.State("CLEAR"):
                with m.If(cmd & CMD_CLEAR):
                    m.d.comb += core.clear.eq(1)
                m.next = "WAIT_IDLE"
            with m.State("WAIT_IDLE"):
                with m.If(core.tok_in_ready & ~core.clear):
                    m.next = "STEP"
            with m.State("STEP"):
                m.d.comb += [core.tok_in.eq(tok), core.tok_in_valid.eq(1)]
                with m.If(core.tok_in_ready):
                    m.next = "RUN"
            with m.State("RUN"):
                with m.If(core.tok_out_valid):
                    m.d.sync += [out_tok.eq(core.tok_out), nb.eq(0)]
                    m.next = "SEND_TOK"
            with m.State("SEND_TOK"):
                m.d.comb += [utx.data.eq(out_tok[:8]), utx.valid.eq(1)]
                with m.If(utx.ready):
                    m.d.sync += [out_tok.eq(out_tok >> 8), nb.eq(nb + 1)]
                    with m.If(nb == self.tok_bytes - 1):
                        m.d.sync += li.eq(0)
                        m.next = "LREAD"
            with m.State("LREAD"):
                with m.If(~cmd[0] | (li == p.vocab)):
                    m.next = "CMD"
                with m.Else():
                    m.d.comb += lr.addr.eq(li)
                    m.next = "LLATCH"
            with m.State("LLATCH"):
                m.d.sync += [lv.eq(ldata.as_signed()), nb.eq(0)]
                m.next = "SEND_L"
            with m.State("SEND_L"):
                m.d.comb += [utx.data.eq(lv[:8]), utx.valid.eq(1)]
                with m.If(utx.ready):
                    m.d.sync += [lv.eq(lv >> 8), nb.eq(nb + 1)]
                    with m.If(nb == self.logit_bytes - 1):
                        m.d.sync += li.eq(li + 1)
                        m.next = "LREAD"
        return m


class BoardTop(Elaboratable):
    """Board top: ``clk_in`` (the board oscillator) -> PLL blackbox ``pll`` (from ecppll/icepll)
    -> ``sync`` domain (reset until lock), and the :class:`UartCore`. ``pll_ports`` names the
    blackbox's (input, output, locked) ports; ``None`` clocks the design from ``clk_in`` directly."""

    def __init__(self, prog: Program, divisor: int, pll_ports: tuple[str, str, str] | None,
                 prims: Primitives | None = None) -> None:
        self.prog, self.divisor, self.pll_ports, self.prims = prog, divisor, pll_ports, prims
        self.clk_in = Signal(name="clk_in")
        self.rx = Signal(name="rx", init=1)
        self.tx = Signal(name="tx", init=1)
        self.led = Signal(name="led")

    def elaborate(self, platform) -> Module:
        m = Module()
        m.domains.sync = ClockDomain("sync")
        if self.pll_ports:
            i, o, lock = self.pll_ports
            locked = Signal()
            m.submodules.pll = Instance("pll", **{f"i_{i}": self.clk_in, f"o_{o}": ClockSignal("sync"),
                                                  f"o_{lock}": locked})
            m.d.comb += ResetSignal("sync").eq(~locked)
        else:
            m.d.comb += [ClockSignal("sync").eq(self.clk_in), ResetSignal("sync").eq(0)]
        m.submodules.uart = u = UartCore(self.prog, self.divisor, self.prims)
        m.d.comb += [u.rx.eq(self.rx), self.tx.eq(u.tx), self.led.eq(u.led)]
        return m

    def ports(self) -> list[Signal]:
        return [self.clk_in, self.rx, self.tx, self.led]


__all__ = ["BoardTop", "UartCore", "UartRx", "UartTx"]
