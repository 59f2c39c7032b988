"""Banked on-chip memories of the accelerator (Amaranth ``lib.memory``), one read and one write
port per bank. Vectors are interleaved over ``K`` banks: element ``i`` in bank ``i % K`` at
address ``i // K``, so a pass reads ``K`` consecutive elements per cycle."""

from __future__ import annotations

from amaranth.hdl import Array, Module, Signal, unsigned
from amaranth.lib import memory


class Banks:
    """``K`` memories of ``width`` bits x ``depth`` words (zero-initialized RAM or a ROM image).

    Attributes ``rd[k]`` / ``wr[k]`` are the read / write ports; ``rdata(k)`` is the raw data.
    """

    def __init__(self, m: Module, name: str, width: int, depth: int, K: int,
                 init: list[list[int]] | None = None, writable: bool = True) -> None:
        self.width, self.depth, self.K = width, max(1, depth), K
        self.mems, self.rd, self.wr = [], [], []
        for k in range(K):
            mem = memory.Memory(shape=unsigned(width), depth=self.depth, init=(init[k] if init else []))
            m.submodules[f"{name}{k}"] = mem
            self.mems.append(mem)
            self.rd.append(mem.read_port())
            self.wr.append(mem.write_port() if writable else None)

    def read_all(self, m: Module, addr) -> None:
        """Drive every bank's read address (combinational; data one cycle later)."""
        for p in self.rd:
            m.d.comb += p.addr.eq(addr)

    def data(self, k: int):
        return self.rd[k].data


def rom(m: Module, name: str, width: int, init: list[int]) -> memory.ReadPort:
    """A single-port ROM; returns its synchronous read port."""
    mem = memory.Memory(shape=unsigned(width), depth=max(1, len(init)), init=init or [0])
    m.submodules[name] = mem
    return mem.read_port()


def ram(m: Module, name: str, width: int, depth: int):
    """A simple dual-port RAM; returns ``(read_port, write_port)``."""
    mem = memory.Memory(shape=unsigned(width), depth=max(1, depth), init=[])
    m.submodules[name] = mem
    return mem.read_port(), mem.write_port()


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


__all__ = ["Banks", "DeepRom", "lane", "ram", "rom"]
