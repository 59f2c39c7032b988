"""Host side of the board's serial protocol (:mod:`.uart`): boot a compact core, send tokens, read the
next token and the logits, generate text.

:class:`Board` talks to anything with ``write(bytes)`` and ``read(n) -> bytes`` that returns fewer
bytes on a timeout: a pyserial ``Serial`` for a real board (``matmulfree fpga run OUT --port ...``) or
:class:`~.sim.SimulatedPort`, the Amaranth simulation of the same UART core (``--simulate``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol as TypingProtocol

import numpy as np

from .program import Program

#: Command byte bits: also return the logits; clear the recurrent state first (a new sequence).
CMD_LOGITS, CMD_CLEAR = 0x01, 0x02


class Port(TypingProtocol):
    def write(self, data: bytes) -> int | None: ...

    def read(self, n: int) -> bytes: ...


class BoardError(RuntimeError):
    """The board did not answer as the protocol says (message names what was missing)."""


@dataclass(frozen=True)
class Protocol:
    """Byte layout of one exchange for a compiled program: ``tok_bytes`` per token, ``logit_bytes`` per
    logit (little-endian two's complement, Q(``logit_frac``) of the program's formats), and whether a boot
    image comes first."""

    vocab: int
    tok_bytes: int
    logit_bytes: int
    compact: bool

    @classmethod
    def of(cls, prog: Program) -> Protocol:
        return cls(prog.vocab, -(-prog.tok_bits // 8), -(-prog.fmt["logit_bits"] // 8), prog.compact)

    def request(self, token: int, clear: bool = False, logits: bool = False) -> bytes:
        """Command byte + token (little-endian)."""
        if not 0 <= token < self.vocab:
            raise ValueError(f"token {token} is outside the vocabulary 0..{self.vocab - 1}")
        cmd = (CMD_CLEAR if clear else 0) | (CMD_LOGITS if logits else 0)
        return bytes([cmd]) + int(token).to_bytes(self.tok_bytes, "little")

    def reply_bytes(self, logits: bool) -> int:
        return self.tok_bytes + (self.vocab * self.logit_bytes if logits else 0)

    def parse_reply(self, data: bytes, logits: bool) -> tuple[int, np.ndarray | None]:
        """``(next token, logits (vocab,) int64 or None)`` of one reply."""
        if len(data) != self.reply_bytes(logits):
            raise BoardError(f"reply of {len(data)} bytes, expected {self.reply_bytes(logits)}")
        token = int.from_bytes(data[:self.tok_bytes], "little")
        if not logits:
            return token, None
        raw = np.frombuffer(data[self.tok_bytes:], np.uint8).reshape(self.vocab, self.logit_bytes).astype(np.int64)
        vals = sum(raw[:, i] << (8 * i) for i in range(self.logit_bytes))
        bits = 8 * self.logit_bytes
        return token, np.where(vals >= 1 << (bits - 1), vals - (1 << bits), vals)


@dataclass
class Generation:
    """One run: ``inputs[t]`` sent, ``tokens[t]`` returned, ``logits[t]`` (when asked) per step."""

    inputs: list[int] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    logits: list[np.ndarray] = field(default_factory=list)


class Board:
    """A board running the exported bitstream, behind ``port``."""

    def __init__(self, port: Port, proto: Protocol) -> None:
        self.port, self.proto = port, proto

    def boot(self, image: bytes) -> None:
        """Send a compact core its boot image (``boot.bin``: the SPRAM words, little-endian), once after
        every power-up or reset; the core takes no command before it."""
        if not self.proto.compact:
            raise BoardError("only a compact (iCE40) core takes a boot image")
        if len(image) % 2:
            raise BoardError(f"boot image of {len(image)} bytes: expected 16-bit words")
        self.port.write(image)

    def step(self, token: int, clear: bool = False, logits: bool = False) -> tuple[int, np.ndarray | None]:
        """One token step: ``(greedy next token, logits or None)``."""
        self.port.write(self.proto.request(token, clear, logits))
        n = self.proto.reply_bytes(logits)
        data = self.port.read(n)
        if len(data) < n:
            raise BoardError(f"the board sent {len(data)} of {n} reply bytes before the timeout (is the bitstream "
                             "loaded, the baud rate right and, for an iCE40 core, the boot image sent?)")
        return self.proto.parse_reply(data, logits)

    def generate(self, prompt: list[int], new_tokens: int, logits: bool = False) -> Generation:
        """A new sequence: the prompt token by token, then ``new_tokens - 1`` of its own greedy tokens (the
        reference's ``IntModel.generate`` order): ``len(prompt) + new_tokens - 1`` steps."""
        if not prompt:
            raise ValueError("empty prompt")
        g = Generation()
        for t in range(len(prompt) + max(1, new_tokens) - 1):
            tok = prompt[t] if t < len(prompt) else g.tokens[-1]
            out, lg = self.step(tok, clear=t == 0, logits=logits)
            g.inputs.append(tok)
            g.tokens.append(out)
            if lg is not None:
                g.logits.append(lg)
        return g


__all__ = ["CMD_CLEAR", "CMD_LOGITS", "Board", "BoardError", "Generation", "Port", "Protocol"]
