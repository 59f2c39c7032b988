"""Tokenized corpora cached as memory-mapped token files, packed into fixed-length sequences.

A corpus split is tokenized once, documents joined by the tokenizer's end-of-text token (when it
has one), and written to ``<cache>/tokens/<key>.bin`` (uint16 or uint32) with a JSON sidecar;
``key`` hashes (source, tokenizer, split, limits), so a rerun maps the file instead of
tokenizing again. Files are written under a temporary name and renamed.

Sequence ``i`` of length ``L`` is ``tokens[i·L : i·L + L + 1]`` (inputs and shifted labels).
The training order is a fresh permutation of the sequences every epoch, seeded, so sample ``k``
of the run (and therefore the data position of a resumed run) is a pure function of ``k``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .corpora import DataError, cache_dir, load_corpus
from .tokenizer import Tokenizer

FORMAT_VERSION = 1


@dataclass
class TokenFile:
    """A tokenized split: ``tokens`` (memmap, 1-D) and facts about it."""

    path: Path
    tokens: np.ndarray
    n_bytes: int  # UTF-8 bytes of the text the tokens came from
    n_documents: int

    @property
    def bytes_per_token(self) -> float:
        return self.n_bytes / max(1, len(self.tokens))


def tokenizer_identity(tokenizer: Tokenizer) -> str:
    """A string that changes whenever the tokenizer's mapping does."""
    if hasattr(tokenizer, "tok"):
        return tokenizer.spec + ":" + hashlib.sha256(tokenizer.tok.to_str().encode()).hexdigest()[:16]
    return tokenizer.spec


def cache_key(source: str, tokenizer: Tokenizer, split: str, max_tokens: int | None, fraction: float) -> str:
    data = json.dumps([FORMAT_VERSION, source, tokenizer_identity(tokenizer), split, max_tokens, fraction])
    return hashlib.sha256(data.encode()).hexdigest()[:24]


def tokenize_split(source: str, tokenizer: Tokenizer, split: str, *, max_tokens: int | None = None,
                   validation_fraction: float = 0.05, streaming: bool = False,
                   directory: Path | None = None, num_proc: int | None = None) -> TokenFile:
    """The cached :class:`TokenFile` of ``source``/``split``, tokenizing on the first call.

    A file lock (``<key>.lock`` beside the cache) makes processes that start together on one
    machine (the ranks of a multi-GPU run) tokenize once: the first holds the lock and writes, the
    others wait and then map the finished file. ``num_proc > 1`` tokenizes an in-memory corpus with
    ``datasets.map(num_proc=...)`` (same tokens as one process) and shows its progress bar.
    """
    from filelock import FileLock

    directory = Path(directory or cache_dir() / "tokens")
    key = cache_key(source, tokenizer, split, max_tokens, validation_fraction)
    path, meta_path = directory / f"{key}.bin", directory / f"{key}.json"
    directory.mkdir(parents=True, exist_ok=True)
    with FileLock(str(directory / f"{key}.lock")):
        if not (path.is_file() and meta_path.is_file()):
            docs = load_corpus(source, split, validation_fraction, streaming)
            if num_proc and num_proc > 1 and hasattr(docs, "num_rows"):
                docs = _parallel_tokenize(docs, tokenizer, num_proc, f"{source} [{split}]")
            _write_tokens(docs, tokenizer, path, meta_path, max_tokens, f"{source} [{split}]")
    meta = json.loads(meta_path.read_text())
    tokens = np.memmap(path, dtype=meta["dtype"], mode="r") if meta["n_tokens"] else np.zeros(0, meta["dtype"])
    return TokenFile(path, tokens, meta["n_bytes"], meta["n_documents"])


class _Tokenized:
    """Documents already tokenized by :func:`_parallel_tokenize`: rows of (``n_bytes``, ``ids``)."""

    def __init__(self, ds) -> None:
        self.ds = ds


def _tokenize_rows(batch: dict, tokenizer: Tokenizer) -> dict:
    texts = [t for t in batch["text"] if t]
    return {"ids": tokenizer.encode_batch(texts), "n_bytes": [len(t.encode("utf-8")) for t in texts]}


def _parallel_tokenize(docs, tokenizer: Tokenizer, num_proc: int, what: str) -> _Tokenized:
    """Tokenize a ``datasets.Dataset`` on ``num_proc`` processes, keeping the document order."""
    ds = docs.map(_tokenize_rows, batched=True, batch_size=256, num_proc=num_proc, remove_columns=docs.column_names,
                  fn_kwargs={"tokenizer": tokenizer}, desc=f"tokenizing {what}", load_from_cache_file=False)
    return _Tokenized(ds)


def _encoded(docs, tokenizer: Tokenizer):
    """``(n_bytes, ids)`` per non-empty document."""
    if isinstance(docs, _Tokenized):
        for row in docs.ds:
            yield row["n_bytes"], row["ids"]
        return
    for batch in _batches(docs, 256):
        for text, ids in zip(batch, tokenizer.encode_batch(batch)):
            yield len(text.encode("utf-8")), ids


def _write_tokens(docs, tokenizer: Tokenizer, path: Path, meta_path: Path, max_tokens: int | None, what: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    dtype = np.uint16 if tokenizer.vocab_size <= 1 << 16 else np.uint32
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    n_tokens = n_bytes = n_docs = 0
    with open(tmp, "wb") as out:
        for doc_bytes, ids in _encoded(docs, tokenizer):
            if tokenizer.eos_id is not None:
                ids = ids + [tokenizer.eos_id]
            if max_tokens is not None:
                ids = ids[: max_tokens - n_tokens]
            out.write(np.asarray(ids, dtype=dtype).tobytes())
            n_tokens, n_bytes, n_docs = n_tokens + len(ids), n_bytes + doc_bytes, n_docs + 1
            if max_tokens is not None and n_tokens >= max_tokens:
                break
    if n_tokens == 0:
        tmp.unlink()
        raise DataError(f"{what}: the corpus is empty (no tokens)")
    os.replace(tmp, path)
    meta = {"dtype": np.dtype(dtype).name, "n_tokens": n_tokens, "n_bytes": n_bytes, "n_documents": n_docs,
            "tokenizer": tokenizer.spec, "what": what}
    from ..checkpoint import atomic_write_text

    atomic_write_text(meta_path, json.dumps(meta))


def _batches(docs, size: int):
    batch: list[str] = []
    for row in docs:
        text = row["text"]
        if text:
            batch.append(text)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


class PackedSequences:
    """Fixed-length training sequences over a token file: item ``i`` is ``(L + 1,)`` int64."""

    def __init__(self, tokens: np.ndarray, seq_len: int, what: str = "data") -> None:
        self.tokens, self.seq_len = tokens, seq_len
        self.n = (len(tokens) - 1) // seq_len
        if self.n < 1:
            raise DataError(f"{what}: {len(tokens)} tokens is fewer than one sequence of {seq_len} + 1")

    def __len__(self) -> int:
        return self.n

    def get(self, indices: np.ndarray) -> torch.Tensor:
        """Sequences ``indices (N,)`` -> ``(N, L + 1)`` int64."""
        L = self.seq_len
        rows = [np.asarray(self.tokens[i * L : i * L + L + 1], dtype=np.int64) for i in indices]
        return torch.from_numpy(np.stack(rows))


@functools.lru_cache(maxsize=2)
def _permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.Generator(np.random.PCG64([seed, epoch])).permutation(n)


def sample_indices(n_sequences: int, start: int, count: int, seed: int) -> np.ndarray:
    """Sequence ids of training samples ``start .. start+count-1``: a seeded permutation per epoch."""
    out = np.empty(count, dtype=np.int64)
    k = 0
    while k < count:
        epoch, offset = divmod(start + k, n_sequences)
        perm = _permutation(n_sequences, seed, epoch)
        take = min(count - k, n_sequences - offset)
        out[k : k + take] = perm[offset : offset + take]
        k += take
    return out
