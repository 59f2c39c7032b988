"""lm-evaluation-harness model ``matmulfree`` on local tasks (tests/fixtures/lm_eval_task, no hub):
the harness's numbers equal those computed directly from our model's log-probabilities."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

pytest.importorskip("lm_eval", reason="the [hf] extra (lm-eval) is not installed")

import matmulfree.lm_eval  # noqa: E402,F401
from matmulfree.checkpoint import save_model  # noqa: E402
from matmulfree.cli import main  # noqa: E402
from matmulfree.config import MatMulFreeConfig, TransformerConfig  # noqa: E402
from matmulfree.models import build_model  # noqa: E402
from matmulfree.scoring import score_continuations, truncate_pair  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TASKS = ROOT / "tests" / "fixtures" / "lm_eval_task"
SHAPE = dict(vocab_size=256, d_model=32, n_layers=2, intermediate_size=64, max_seq_len=64)
CONFIGS = {"matmulfree": lambda: MatMulFreeConfig(**SHAPE),
           "transformer": lambda: TransformerConfig(**SHAPE, n_heads=2)}


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(ROOT)  # the task YAMLs name their jsonl files relative to the repository root


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def checkpoint(request, tmp_path_factory):
    torch.manual_seed(0)
    model = build_model(CONFIGS[request.param]()).eval()
    path = tmp_path_factory.mktemp(request.param) / "ckpt"
    save_model(model, path)
    return model, path


def direct_logprob(model, context: list[int], continuation: list[int]) -> tuple[float, bool]:
    """One plain forward over context + continuation (no state reuse, no batching)."""
    ids = torch.tensor([context + continuation])
    with torch.no_grad():
        lp = model(ids[:, :-1]).logits.float().log_softmax(-1)[0, len(context) - 1 :]
    target = torch.tensor(continuation)
    return float(lp.gather(-1, target[:, None]).sum()), bool((lp.argmax(-1) == target).all())


def test_score_continuations_equals_summed_token_logprobs(checkpoint):
    model, _ = checkpoint
    g = torch.Generator().manual_seed(3)
    contexts = [torch.randint(0, 256, (n,), generator=g).tolist() for n in (5, 5, 9, 1)]
    pairs = [(contexts[i % 4], torch.randint(0, 256, (1 + (i * 3) % 7,), generator=g).tolist()) for i in range(14)]
    for batch_size in (1, 3, 16):
        got = score_continuations(model, pairs, batch_size=batch_size, max_length=64)
        for (ctx, cont), (lp, greedy) in zip(pairs, got):
            want_lp, want_greedy = direct_logprob(model, ctx, cont)
            assert lp == pytest.approx(want_lp, abs=1e-4) and greedy == want_greedy
    # long contexts are cut from the left to max_length
    long = [(list(range(100)), [7, 8, 9])]
    (lp, _), = score_continuations(model, long, batch_size=2, max_length=20)
    assert lp == pytest.approx(direct_logprob(model, list(range(100))[-18:], [7, 8, 9])[0], abs=1e-4)


def test_greedy_continuation_is_the_models_greedy(checkpoint):
    model, _ = checkpoint
    from matmulfree.scoring import greedy_continue

    prompts = [[72, 105], [84, 104, 101, 32], [65]]
    out = greedy_continue(model, prompts, 6, lambda row, toks: False, batch_size=2)
    for p, new in zip(prompts, out):
        assert new == model.generate(torch.tensor([p]), 6, temperature=0)[0, len(p):].tolist()
    stop_at_two = greedy_continue(model, prompts, 6, lambda row, toks: len(toks) == 2, batch_size=3)
    assert stop_at_two == [o[:2] for o in out]


def test_harness_accuracy_and_loglikelihood_match_our_model(checkpoint):
    model, path = checkpoint
    results = matmulfree.lm_eval.evaluate_tasks(str(path), ["mmf_tiny_choice", "mmf_tiny_text", "mmf_tiny_gen"],
                                                num_fewshot=1, batch_size=4, include_path=str(TASKS),
                                                log_samples=True)
    samples = results["samples"]["mmf_tiny_choice"]
    assert len(samples) == 12
    correct = []
    for s in samples:
        scores = []
        for (ctx, cont), resp in zip(s["arguments"], s["resps"]):
            ctx_ids, cont_ids = truncate_pair(list(ctx.encode()), list(cont.encode()), 64)  # as max_length cuts
            lp, greedy = direct_logprob(model, ctx_ids, cont_ids)
            assert float(resp[0][0]) == pytest.approx(lp, abs=1e-4) and bool(resp[0][1]) == greedy
            scores.append(lp)
        correct.append(max(range(len(scores)), key=scores.__getitem__) == s["target"])
    assert results["results"]["mmf_tiny_choice"]["acc,none"] == pytest.approx(sum(correct) / len(correct))
    # rolling log-likelihood: each short document conditioned on the newline prefix token
    for s in results["samples"]["mmf_tiny_text"]:
        text = s["doc"]["text"]
        if len(text.encode()) < 64:
            lp, _ = direct_logprob(model, [10], list(text.encode()))
            assert float(s["resps"][0][0]) == pytest.approx(lp, abs=1e-3)
    # generate_until: our greedy continuation cut at the first stop string
    for s in results["samples"]["mmf_tiny_gen"][:4]:
        prompt = list(s["arguments"][0][0].encode())
        new = model.generate(torch.tensor([prompt[-(64 - 12):]]), 12, temperature=0)[0, len(prompt[-52:]):]
        text = bytes(new.tolist()).decode("utf-8", errors="replace")
        for stop in ("\n", "."):
            text = text.split(stop)[0]
        assert s["resps"][0][0] == text


def test_cli_prints_the_table_and_saves_json(checkpoint, capsys):
    _, path = checkpoint
    args = ["eval", str(path), "--tasks", "mmf_tiny_choice", "--include-path", str(TASKS), "--limit", "5",
            "--batch-size", "3"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "|mmf_tiny_choice|" in out and "acc" in out
    saved = json.loads((path / "lm_eval_results.json").read_text())
    acc = saved["results"]["mmf_tiny_choice"]["acc,none"]
    assert 0 <= acc <= 1 and not math.isnan(acc) and saved["matmulfree"]["wall_seconds"] > 0


def test_cli_errors(checkpoint, capsys, tmp_path):
    _, path = checkpoint
    assert main(["eval", str(path), "--num-fewshot", "2"]) == 2
    assert "--num-fewshot only apply with --tasks" in capsys.readouterr().err
    assert main(["eval", str(path), "--tasks", "mmf_tiny_choice", "--include-path", str(tmp_path / "no")]) == 2
    assert "not a directory" in capsys.readouterr().err
    assert main(["eval", str(path), "--tasks", "mmf_tiny_choice", "--limit", "2.5"]) == 2
    assert "whole count" in capsys.readouterr().err


@pytest.mark.slow  # a task missing from --include-path makes the harness index its own ~10k task files
def test_unknown_task_is_named(tmp_path, capsys):
    torch.manual_seed(0)
    save_model(build_model(CONFIGS["matmulfree"]()), tmp_path / "ckpt")
    assert main(["eval", str(tmp_path / "ckpt"), "--tasks", "no_such_task_xyz", "--include-path", str(TASKS)]) == 2
    assert "unknown lm-eval task(s) ['no_such_task_xyz']" in capsys.readouterr().err
