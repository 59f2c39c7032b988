"""Banked on-chip memories of the accelerator (Amaranth ``lib.memory``), one read and one write
port per bank. Vectors are interleaved over ``K`` banks: element ``i`` in bank ``i % K`` at
address ``i // K``, so a pass reads ``K`` consecutive elements per cycle."""

from __future__ import annotations

from types import SimpleNamespace

from amaranth.hdl import Array, ClockSignal, Const, Instance, Module, Mux, Signal, Value, unsigned
from amaranth.lib import memory

#: ECP5 DP16KD modes ``(data width, depth, first word-address pin ADA<n>)`` of one 18-kbit block;
#: only the modes whose ``INITVAL`` layout and pins are checked against yosys' own mapping
#: (tests/test_fpga_rtl.py).
DP16KD_MODES = ((18, 1024, 4), (9, 2048, 3))

#: Simulation hook: when True, a RAM read of the address written in the same cycle returns the inverse
#: of the stored word. Amaranth's model returns the old word, but iCE40 block RAMs leave such a read
#: undefined and the iCE40 build tells yosys so (``COLLISION_X_MASK``, no bypass logic); tests simulate
#: with this set to show that the core never uses the data of such a read.
SCRAMBLE_COLLISIONS = False


def read_data(m: Module, rd, wr, name: str) -> Value:
    """Read data of port ``rd`` of a RAM whose write port is ``wr`` (see :data:`SCRAMBLE_COLLISIONS`)."""
    if not SCRAMBLE_COLLISIONS or wr is None:
        return rd.data
    hit = Signal(name=f"{name}_collided")
    m.d.sync += hit.eq(wr.en.any() & (wr.addr == rd.addr))
    return Mux(hit, ~rd.data, rd.data)


class Banks:
    """``K`` memories of ``width`` bits x ``depth`` words (zero-initialized RAM or a ROM image).

    Attributes ``rd[k]`` / ``wr[k]`` are the read / write ports; ``data(k)`` is the read data, one
    cycle after ``rd[k].addr`` or, for a ROM with ``out_reg=True``, two cycles after it. With
    ``rom_primitive="dp16kd"`` (:mod:`.primitives`, ``gain_rom``) such a ROM is a set of DP16KD blocks
    whose own output register (``OUTREG``) is that second stage, so the block's slow clock-to-output
    stays out of the fabric paths.
    """

    def __init__(self, m: Module, name: str, width: int, depth: int, K: int,
                 init: list[list[int]] | None = None, writable: bool = True,
                 out_reg: bool = False, rom_primitive: str = "inferred") -> None:
        if out_reg and writable:
            raise ValueError(f"Banks {name!r}: out_reg is for ROMs (writable=False)")
        self.width, self.depth, self.K = width, max(1, depth), K
        self.mems, self.rd, self.wr, self._data = [], [], [], []
        for k in range(K):
            words = init[k] if init else []
            if out_reg:
                self.rd.append(rom_out_reg(m, f"{name}{k}", width, self.depth, words, rom_primitive))
                self.wr.append(None)
                self._data.append(self.rd[k].data)
                continue
            mem = memory.Memory(shape=unsigned(width), depth=self.depth, init=words)
            m.submodules[f"{name}{k}"] = mem
            self.mems.append(mem)
            self.rd.append(mem.read_port())
            self.wr.append(mem.write_port() if writable else None)
            self._data.append(read_data(m, self.rd[k], self.wr[k], f"{name}{k}"))

    def data(self, k: int):
        return self._data[k]


def dp16kd_mode(depth: int) -> tuple[int, int, int] | None:
    """The widest DP16KD mode (a :data:`DP16KD_MODES` entry) that holds ``depth`` words (None: too deep)."""
    return next((mode for mode in DP16KD_MODES if mode[1] >= depth), None)


def dp16kd_initvals(words: list[int], w: int) -> dict[str, Const]:
    """``INITVAL_00`` .. ``INITVAL_3F`` of one DP16KD in ``w``-bit mode holding ``words``.

    The block is 1024 rows of 18 bits (a ``w``-bit word ``a`` is bits ``a*w .. a*w+w-1`` of that
    bit string); each parameter holds 16 rows, row ``i`` at bits ``20*i .. 20*i+17`` of 320.
    """
    bits = 0
    for a, v in enumerate(words):
        bits |= (int(v) & ((1 << w) - 1)) << (a * w)
    params = {}
    for idx in range(64):
        val = 0
        for i in range(16):
            row = (bits >> ((idx * 16 + i) * 18)) & ((1 << 18) - 1)
            val |= row << (20 * i)
        params[f"p_INITVAL_{idx:02X}"] = Const(val, unsigned(320))
    return params


def rom_out_reg(m: Module, name: str, width: int, depth: int, init: list[int],
                primitive: str = "inferred") -> SimpleNamespace:
    """A ROM whose data (``.data``) is valid two cycles after its address (``.addr``).

    ``primitive="inferred"``: a memory read port and one register (simulation, any target).
    ``primitive="dp16kd"``: ECP5 DP16KD blocks side by side in 18- or 9-bit mode with ``REGMODE=OUTREG``
    (same behaviour); falls back to the first form when the ROM is deeper than 2048 words.
    """
    if primitive not in ("inferred", "dp16kd"):
        raise ValueError(f"rom_out_reg: unknown primitive {primitive!r} (inferred or dp16kd)")
    depth = max(1, depth)
    addr = Signal(range(max(2, depth)), name=f"{name}_addr")
    data = Signal(width, name=f"{name}_q")
    mode = dp16kd_mode(depth) if primitive == "dp16kd" else None
    if mode is None:
        rp = rom(m, name, width, init, depth)
        m.d.comb += rp.addr.eq(addr)
        m.d.sync += data.eq(rp.data)
        return SimpleNamespace(addr=addr, data=data)
    w, _, lsb = mode
    for j in range(-(-width // w)):
        part = [(int(v) >> (j * w)) & ((1 << w) - 1) for v in init]
        dout = Signal(18, name=f"{name}_do{j}")
        ports = {f"i_ADA{i}": (addr[i - lsb] if lsb <= i < lsb + len(addr) else 0) for i in range(14)}
        ports.update({f"i_ADB{i}": 0 for i in range(14)})
        ports.update({f"i_DIA{i}": 0 for i in range(18)})
        ports.update({f"i_DIB{i}": 0 for i in range(18)})
        ports.update({f"o_DOA{i}": dout[i] for i in range(18)})
        ports.update({f"i_CSA{i}": 0 for i in range(3)})
        ports.update({f"i_CSB{i}": 0 for i in range(3)})
        m.submodules[f"{name}_dp16kd{j}"] = Instance(
            "DP16KD", p_DATA_WIDTH_A=w, p_DATA_WIDTH_B=w, p_REGMODE_A="OUTREG", p_REGMODE_B="NOREG",
            p_RESETMODE="SYNC", p_ASYNC_RESET_RELEASE="SYNC", p_CSDECODE_A="0b000", p_CSDECODE_B="0b000",
            p_WRITEMODE_A="NORMAL", p_WRITEMODE_B="NORMAL", p_GSR="DISABLED", **dp16kd_initvals(part, w),
            i_CLKA=ClockSignal("sync"), i_CEA=1, i_OCEA=1, i_WEA=0, i_RSTA=0,
            i_CLKB=0, i_CEB=0, i_OCEB=0, i_WEB=0, i_RSTB=0, **ports)
        hi = min(width, (j + 1) * w)
        m.d.comb += data[j * w:hi].eq(dout[:hi - j * w])
    return SimpleNamespace(addr=addr, data=data)


def rom(m: Module, name: str, width: int, init: list[int], depth: int | None = None) -> memory.ReadPort:
    """A single-port ROM of ``depth`` words (default: ``len(init)``); returns its synchronous read port."""
    mem = memory.Memory(shape=unsigned(width), depth=max(1, depth or len(init)), init=init or [0])
    m.submodules[name] = mem
    return mem.read_port()


def ram(m: Module, name: str, width: int, depth: int):
    """A simple dual-port RAM; returns ``(read_port, write_port, read_data)`` (see :func:`read_data`)."""
    mem = memory.Memory(shape=unsigned(width), depth=max(1, depth), init=[])
    m.submodules[name] = mem
    rd, wr = mem.read_port(), mem.write_port()
    return rd, wr, read_data(m, rd, wr, name)


class DeepRom:
    """A ROM split into banks of ``bank_depth`` words (one block-RAM row each) with registered
    bank outputs. ``data`` (a mux of those registers) is valid two cycles after ``addr``."""

    def __init__(self, m: Module, name: str, width: int, init: list[int], bank_depth: int = 1024) -> None:
        init = init or [0]
        lg = max(1, (min(bank_depth, len(init)) - 1).bit_length())
        bank_depth = 1 << lg
        nb = -(-len(init) // bank_depth)
        self.addr = Signal(range(max(2, nb * bank_depth)), name=f"{name}_addr")
        outs = []
        for b in range(nb):
            mem = memory.Memory(shape=unsigned(width), depth=bank_depth if nb > 1 else len(init),
                                init=init[b * bank_depth:(b + 1) * bank_depth])
            m.submodules[f"{name}{b}"] = mem
            rp = mem.read_port()
            m.d.comb += rp.addr.eq(self.addr[:lg] if nb > 1 else self.addr)
            out = Signal(width, name=f"{name}{b}_q")
            m.d.sync += out.eq(rp.data)
            outs.append(out)
        if nb == 1:
            self.data = outs[0]
        else:
            sel = Signal(range(nb), name=f"{name}_sel1")
            sel2 = Signal(range(nb), name=f"{name}_sel2")
            m.d.sync += [sel.eq(self.addr[lg:]), sel2.eq(sel)]
            self.data = Array(outs)[sel2]


def lane(word, k: int, width: int):
    """Lane ``k`` of a packed word (``width`` bits per lane)."""
    return word[k * width:(k + 1) * width]


__all__ = ["DP16KD_MODES", "SCRAMBLE_COLLISIONS", "Banks", "DeepRom", "dp16kd_initvals", "dp16kd_mode", "lane", "ram",
           "read_data", "rom", "rom_out_reg"]
