"""Tokenizers behind one small interface.

Specs (``data.tokenizer``):

* ``bytes`` — UTF-8 bytes, vocabulary 256, no special tokens (the default);
* ``bpe:N`` — a byte-level BPE with ``N`` tokens trained locally with ``tokenizers`` on the
  training split (one ``<|endoftext|>`` token separates documents);
* ``hf:NAME`` — a pretrained tokenizer from the Hugging Face hub (or a local folder/file).

A trained or downloaded tokenizer is saved beside the checkpoint as ``tokenizer.json`` and
described in ``tokenizer_config.json``, so :func:`load_tokenizer` restores it without network.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path

from .corpora import DataError

EOS = "<|endoftext|>"


class Tokenizer:
    """``encode(text) -> list[int]``, ``decode(ids) -> str``; ``eos_id`` separates documents (or None)."""

    spec: str
    vocab_size: int
    eos_id: int | None = None

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def decode(self, ids: Iterable[int]) -> str:
        raise NotImplementedError

    def save(self, directory: str | Path) -> None:
        """Write ``tokenizer_config.json`` (and ``tokenizer.json`` when there is one) in ``directory``."""
        from ..checkpoint import atomic_write_text

        atomic_write_text(Path(directory) / "tokenizer_config.json",
                          json.dumps({"spec": self.spec, "vocab_size": self.vocab_size, "eos_id": self.eos_id}))


class ByteTokenizer(Tokenizer):
    """UTF-8 bytes; decoding replaces invalid sequences (a sampled byte stream may split a character)."""

    spec, vocab_size = "bytes", 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Iterable[int]) -> str:
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")


class HFTokenizer(Tokenizer):
    """A ``tokenizers.Tokenizer`` (trained BPE or a pretrained ``tokenizer.json``)."""

    def __init__(self, spec: str, tok) -> None:
        self.spec, self.tok = spec, tok
        self.vocab_size = tok.get_vocab_size()
        self.eos_id = tok.token_to_id(EOS)
        if self.eos_id is None:
            for name in ("</s>", "<|end_of_text|>", "<eos>"):
                if tok.token_to_id(name) is not None:
                    self.eos_id = tok.token_to_id(name)
                    break

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tok.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        return self.tok.decode([int(i) for i in ids])

    def save(self, directory: str | Path) -> None:
        from ..checkpoint import atomic_write

        atomic_write(Path(directory) / "tokenizer.json", lambda p: self.tok.save(str(p)))
        super().save(directory)


def train_bpe(texts: Iterator[str], vocab_size: int) -> HFTokenizer:
    """A byte-level BPE of ``vocab_size`` tokens trained on ``texts``."""
    from tokenizers import Tokenizer as RawTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    if vocab_size < 257 + 1:
        raise DataError(f"tokenizer bpe:{vocab_size}: vocabulary must exceed 257 (256 bytes + {EOS})")
    tok = RawTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    return HFTokenizer(f"bpe:{vocab_size}", tok)


def parse_spec(spec: str) -> tuple[str, str]:
    kind, _, arg = spec.partition(":")
    if kind == "bytes" and not arg:
        return kind, arg
    if kind == "bpe":
        if not arg.isdigit():
            raise DataError(f"tokenizer {spec!r}: expected bpe:N with N an integer vocabulary size")
        return kind, arg
    if kind == "hf" and arg:
        return kind, arg
    raise DataError(f"unknown tokenizer {spec!r}; expected bytes, bpe:N or hf:NAME")


def build_tokenizer(spec: str, training_texts: Iterable[str] | None = None) -> Tokenizer:
    """Make the tokenizer ``spec``; ``bpe:N`` trains on ``training_texts``."""
    kind, arg = parse_spec(spec)
    if kind == "bytes":
        return ByteTokenizer()
    if kind == "bpe":
        if training_texts is None:
            raise DataError(f"tokenizer {spec}: needs training texts")
        return train_bpe(iter(training_texts), int(arg))
    from tokenizers import Tokenizer as RawTokenizer

    try:
        tok = RawTokenizer.from_file(arg) if Path(arg).is_file() else RawTokenizer.from_pretrained(arg)
    except Exception as e:
        reason = str(e).splitlines()[0] if str(e) else repr(e)
        raise DataError(f"tokenizer {spec}: cannot load {arg!r} ({reason})") from None
    return HFTokenizer(spec, tok)


def load_tokenizer(directory: str | Path) -> Tokenizer:
    """The tokenizer saved in ``directory`` (``bytes`` when the folder has none)."""
    directory = Path(directory)
    cfg_path = directory / "tokenizer_config.json"
    if not cfg_path.is_file():
        return ByteTokenizer()
    try:
        spec = json.loads(cfg_path.read_text())["spec"]
    except (ValueError, KeyError) as e:
        raise DataError(f"{cfg_path}: malformed tokenizer config ({e})") from None
    if parse_spec(spec)[0] == "bytes":
        return ByteTokenizer()
    path = directory / "tokenizer.json"
    if not path.is_file():
        raise DataError(f"{directory}: tokenizer {spec!r} needs {path.name}, which is missing")
    from tokenizers import Tokenizer as RawTokenizer

    return HFTokenizer(spec, RawTokenizer.from_file(str(path)))
