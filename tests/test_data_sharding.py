"""Data at scale: two ranks read disjoint sequences that together are one process's epoch (local
token cache and an ``hf:`` streaming source built from a local dataset), resume positions, the
tokenization file lock and parallel tokenization."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from matmulfree.data import ByteTokenizer, tokenize_split
from matmulfree.data.sharding import rank_epoch, rank_slice


@pytest.fixture(scope="module")
def jsonl_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("local_ds")
    rng = np.random.default_rng(0)
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa".split()
    with open(root / "train.jsonl", "w") as f:
        for i in range(60):
            f.write(json.dumps({"text": f"doc {i}: " + " ".join(rng.choice(words, 30))}) + "\n")
    return root


def two_ranks(source: str, cache: Path, out: Path, port: int) -> list[dict]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
           "tests/dist_worker.py", "shard", source, str(cache), str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=180,
                          cwd=Path(__file__).resolve().parent.parent)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads(Path(f"{out}.{r}").read_text()) for r in (0, 1)]


@pytest.mark.parametrize("kind,port", [("jsonl", 29661), ("hf", 29662)])
def test_two_ranks_split_an_epoch_without_overlap(kind, port, jsonl_dir, tmp_path):
    """Union of the ranks' sequences == one process's sequences, intersection empty; the token
    cache is written by exactly one rank although both start at once; a resumed half epoch gives
    each rank the same sequences as the uninterrupted one."""
    source = f"jsonl:{jsonl_dir}/train.jsonl" if kind == "jsonl" else f"hf:{jsonl_dir}"
    r0, r1 = two_ranks(source, tmp_path / "cache", tmp_path / "out", port)
    assert r0["tokenized"] + r1["tokenized"] == 1  # the lock: one rank tokenized, the other mapped its file
    assert r0["path"] == r1["path"] and r0["n"] == r1["n"]
    ids0, ids1 = set(r0["ids"]), set(r1["ids"])
    assert len(ids0) == len(r0["ids"]) and len(ids1) == len(r1["ids"])
    assert not ids0 & ids1
    single = rank_epoch(r0["n"], r0["steps"], batch_size=8, grad_accum=1, rank=0, processes=1, seed=7)
    assert ids0 | ids1 == set(single.tolist())
    assert len(ids0 | ids1) >= r0["n"] - 8  # an epoch, less the remainder of one global batch
    for r in (r0, r1):
        assert r["resumed_tail"] == r["ids"][len(r["ids"]) - len(r["resumed_tail"]):]


def test_rank_slice_limits():
    ids = np.arange(8)
    assert rank_slice(ids, 1, 1, 2, 2).tolist() == [6, 7]
    with pytest.raises(ValueError, match="rank 2"):
        rank_slice(ids, 0, 2, 2, 2)
    with pytest.raises(ValueError, match="runs past"):
        rank_slice(ids, 2, 0, 2, 2)


def test_parallel_tokenization_matches_one_process(jsonl_dir, tmp_path):
    source = f"jsonl:{jsonl_dir}/train.jsonl"
    one = tokenize_split(source, ByteTokenizer(), "train", directory=tmp_path / "a")
    two = tokenize_split(source, ByteTokenizer(), "train", directory=tmp_path / "b", num_proc=2)
    assert np.array_equal(np.asarray(one.tokens), np.asarray(two.tokens))
    assert one.n_bytes == two.n_bytes and one.n_documents == two.n_documents
    capped = tokenize_split(source, ByteTokenizer(), "train", directory=tmp_path / "c", num_proc=2, max_tokens=100)
    assert len(capped.tokens) == 100 and np.array_equal(np.asarray(capped.tokens), np.asarray(one.tokens[:100]))
