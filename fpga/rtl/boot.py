"""Boot-loaded memories of the compact core (iCE40UP5K): the σ/SiLU/reciprocal/rsqrt tables, the
embedding and the ternary weights live in the four 16K x 16-bit single-port SPRAMs, which a
bitstream cannot initialize; the core loads them from a word stream (the *boot image*, written by
the export as ``boot.bin``) before it accepts a token.

Layout (one read user at a time per SPRAM):

* ``tables``: reciprocal (``RECIP - RECIP_OFFSET``), rsqrt (``RSQRT - RSQRT_OFFSET``), embedding
  (``K`` lanes of s8) — read by the matvec start, the NORM finish and the EMBED pass;
* ``sigmoid`` (u16, 0..32768) and ``silu`` (``SILU - relu(input)``, s16) — both read by the post unit
  in the same cycle;
* ``weights``: one packed weight word (``2 * lanes`` bits) per address.

The boot image is the four images concatenated in that order, one 16-bit word per beat. Reads keep
the latencies of the ROMs they replace (tables one cycle, embedding and weights two).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

from amaranth.hdl import ClockSignal, Instance, Module, Mux, Signal
from amaranth.lib import memory

from ..luts import make_recip_table, make_rsqrt_table
from .program import MV, NORM, Program, ProgramError

#: Words of one iCE40UP SPRAM (SB_SPRAM256KA, 16 bits each).
SPRAM_WORDS = 16384
#: Smallest reciprocal / rsqrt table values (``fpga/FORMATS.md`` §3): entries are stored as 16-bit
#: offsets from them (both tables span less than 2**16).
RECIP_OFFSET, RSQRT_OFFSET = int(make_recip_table().min()), int(make_rsqrt_table().min())
#: SPRAM images in boot order.
SPRAMS = ("tables", "sigmoid", "silu", "weights")


@dataclass
class BootLayout:
    """The four SPRAM images and where the tables/embedding start in ``tables``."""

    images: dict[str, list[int]]
    recip_base: int
    rsqrt_base: int
    emb_base: int

    @property
    def words(self) -> list[int]:
        """The boot image: all four images, in :data:`SPRAMS` order."""
        return [w for name in SPRAMS for w in self.images[name]]


def _s18(v: int) -> int:
    """Value of an 18-bit two's complement table word."""
    return v - (1 << 18) if v >= 1 << 17 else v


def silu_shift(prog: Program) -> int:
    """``act_frac - lut_frac``: table entry ``i`` is the input ``(i - 2**(lut_bits-1)) << shift`` in Q(act_frac).

    The SiLU SPRAM holds ``SILU[i] - relu(input_i)`` (within +-0.28 in the act format, 16 bits) and the
    read view adds ``relu(input_i)`` back, so the table keeps its exact 18-bit values."""
    sh = prog.fmt["act_frac"] - prog.fmt["lut_frac"]
    if sh < 0:
        raise ProgramError(f"act_frac {prog.fmt['act_frac']} < lut_frac {prog.fmt['lut_frac']}: the compact core's "
                           "SiLU table needs integer table inputs")
    return sh


def _u16(values: list[int], offset: int, signed_: bool, what: str) -> list[int]:
    lo, hi = (-(1 << 15), (1 << 15) - 1) if signed_ else (0, (1 << 16) - 1)
    out = []
    for i, v in enumerate(values):
        v -= offset
        if not lo <= v <= hi:
            raise ProgramError(f"{what}[{i}] = {v + offset} does not fit a 16-bit SPRAM word "
                               f"({'s16' if signed_ else 'u16'} after offset {offset})")
        out.append(v & 0xFFFF)
    return out


def boot_layout(prog: Program) -> BootLayout:
    """SPRAM images of a compact program; :class:`ProgramError` names what does not fit."""
    if 2 * prog.lanes > 16 or 8 * prog.K > 16:
        raise ProgramError(f"boot-loaded memories hold 16-bit words: lanes={prog.lanes} needs "
                           f"{2 * prog.lanes}-bit weight words, K={prog.K} {8 * prog.K}-bit embedding words")
    recip = _u16(prog.recip, RECIP_OFFSET, False, "lut.recip")
    rsqrt = _u16(prog.rsqrt, RSQRT_OFFSET, False, "lut.rsqrt")
    tables = recip + rsqrt + list(prog.emb)
    sh = silu_shift(prog)
    half = 1 << (prog.fmt["lut_bits"] - 1)
    silu = [_s18(v) - (max(i - half, 0) << sh) for i, v in enumerate(prog.silu)]
    images = {"tables": tables, "sigmoid": _u16(prog.sigmoid, 0, False, "lut.sigmoid"),
              "silu": _u16(silu, 0, True, "lut.silu - relu(v)"), "weights": list(prog.wmem)}
    for name, img in images.items():
        if len(img) > SPRAM_WORDS:
            raise ProgramError(f"SPRAM '{name}' needs {len(img)} words > {SPRAM_WORDS} (model too large for the "
                               "compact core's memory plan)")
    return BootLayout(images, 0, len(recip), len(recip) + len(rsqrt))


def spram(m: Module, name: str, depth: int, weight_memory: str) -> SimpleNamespace:
    """One single-port 16-bit RAM: ``addr``, ``wdata``, ``we`` in, ``data`` out one cycle after a read
    (held during writes). ``weight_memory="spram"`` (:mod:`.primitives`) instantiates ``SB_SPRAM256KA``
    (builds only: the simulator cannot run it); ``"block_ram"`` an Amaranth memory of ``depth`` words
    with the behaviour of yosys' model of that block (synchronous read while ``WREN`` is low, output
    unchanged during a write)."""
    r = SimpleNamespace(addr=Signal(14, name=f"{name}_addr"), wdata=Signal(16, name=f"{name}_wdata"),
                        we=Signal(name=f"{name}_we"), data=Signal(16, name=f"{name}_q"))
    if weight_memory == "spram":
        m.submodules[name] = Instance(
            "SB_SPRAM256KA", i_ADDRESS=r.addr, i_DATAIN=r.wdata, i_MASKWREN=0b1111, i_WREN=r.we, i_CHIPSELECT=1,
            i_CLOCK=ClockSignal("sync"), i_STANDBY=0, i_SLEEP=0, i_POWEROFF=1, o_DATAOUT=r.data)
        return r
    mem = memory.Memory(shape=16, depth=max(1, depth), init=[])
    m.submodules[name] = mem
    rd, wr = mem.read_port(transparent_for=()), mem.write_port()
    m.d.comb += [rd.addr.eq(r.addr), rd.en.eq(~r.we), wr.addr.eq(r.addr), wr.data.eq(r.wdata), wr.en.eq(r.we),
                 r.data.eq(rd.data)]
    return r


def build(m: Module, cx: SimpleNamespace, weight_memory: str, boot_data, boot_valid, booted) -> BootLayout:
    """SPRAMs, their loader (one ``boot_data`` word per ``boot_valid`` cycle until ``booted``) and the
    read views ``cx.recip``, ``cx.rsqrt``, ``cx.emb``, ``cx.sig``, ``cx.silu``, ``cx.wmem``."""
    p = cx.prog
    lay = boot_layout(p)
    rams = {n: spram(m, f"spram_{n}", len(lay.images[n]), weight_memory) for n in SPRAMS}
    sizes = [len(lay.images[n]) for n in SPRAMS]

    # ---------------------------------------------------------------- loader
    which = Signal(range(len(SPRAMS) + 1), name="boot_ram")
    addr = Signal(14, name="boot_addr")
    m.d.comb += booted.eq(which == len(SPRAMS))
    for i, n in enumerate(SPRAMS):
        m.d.comb += [rams[n].wdata.eq(boot_data), rams[n].we.eq(boot_valid & (which == i))]
    with m.If(~booted & boot_valid):  # every image has at least one word (tables, weights)
        m.d.sync += addr.eq(addr + 1)
        for i, size in enumerate(sizes):
            with m.If((which == i) & (addr == size - 1)):
                m.d.sync += [addr.eq(0), which.eq(i + 1)]

    # ---------------------------------------------------------------- read views
    cur = cx.op["op"]
    cx.recip = SimpleNamespace(addr=Signal(10, name="recip_addr"), data=Signal(17, name="recip_data"))
    cx.rsqrt = SimpleNamespace(addr=Signal(10, name="rsqrt_addr"), data=Signal(18, name="rsqrt_data"))
    cx.emb = SimpleNamespace(addr=Signal(range(max(2, len(p.emb))), name="emb_addr"),
                             data=Signal(8 * p.K, name="emb_data"))
    cx.sig = SimpleNamespace(addr=Signal(p.fmt["lut_bits"], name="sig_addr"), data=Signal(17, name="sig_data"))
    cx.silu = SimpleNamespace(addr=Signal(p.fmt["lut_bits"], name="silu_addr"), data=Signal(18, name="silu_data"))
    cx.wmem = SimpleNamespace(addr=Signal(range(max(2, len(p.wmem) + 1)), name="weights_addr"),
                              data=Signal(2 * p.lanes, name="weights_data"))
    t = rams["tables"]
    rd_addr = Mux(cur == MV, lay.recip_base + cx.recip.addr,
                  Mux(cur == NORM, lay.rsqrt_base + cx.rsqrt.addr, lay.emb_base + cx.emb.addr))
    m.d.comb += t.addr.eq(Mux(booted, rd_addr, addr))
    m.d.comb += [cx.recip.data.eq(t.data + RECIP_OFFSET), cx.rsqrt.data.eq(t.data + RSQRT_OFFSET)]
    m.d.sync += cx.emb.data.eq(t.data)  # second cycle, as the ROM it replaces
    for n, view in (("sigmoid", cx.sig), ("silu", cx.silu)):
        m.d.comb += rams[n].addr.eq(Mux(booted, view.addr, addr))
    lb = p.fmt["lut_bits"]
    silu_a1 = Signal(lb, name="silu_addr1")  # address of the word on the SPRAM output
    m.d.sync += silu_a1.eq(cx.silu.addr)
    relu = Mux(silu_a1[-1], silu_a1[:lb - 1], 0) << silu_shift(p)
    m.d.comb += [cx.sig.data.eq(rams["sigmoid"].data), cx.silu.data.eq(rams["silu"].data.as_signed() + relu)]
    w = rams["weights"]
    m.d.comb += w.addr.eq(Mux(booted, cx.wmem.addr, addr))
    m.d.sync += cx.wmem.data.eq(w.data)
    return lay


__all__ = ["RECIP_OFFSET", "RSQRT_OFFSET", "SPRAMS", "SPRAM_WORDS", "BootLayout", "boot_layout", "build", "spram"]
