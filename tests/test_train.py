"""The trainer and recipes: learning, exact resume, atomic checkpoints, non-finite stop, gradient
accumulation and DDP equivalence, on a tiny model and a generated corpus."""

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from matmulfree import train as train_module
from matmulfree.checkpoint import load_model
from matmulfree.config import ConfigError
from matmulfree.recipe import load_recipe, recipe_dir, recipe_from_dict
from matmulfree.train import TrainingError, checkpoint_dirs, latest_checkpoint, lr_factor, train


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """Two files of pseudo-English (train / validation by document)."""
    root = tmp_path_factory.mktemp("corpus")
    rng = random.Random(0)
    words = "the king queen lord of and to my thou thee love death night day sword crown fair".split()
    for name in ("a.txt", "b.txt"):
        (root / name).write_text(" ".join(rng.choice(words) for _ in range(6000)))
    return root


def tiny_recipe(corpus: Path, **sections) -> dict:
    recipe = {
        "name": "tiny-test",
        "model": {"architecture": "matmulfree", "d_model": 32, "n_layers": 1, "intermediate_size": 64,
                  "max_seq_len": 64},
        "data": {"source": f"text:{corpus}/*.txt", "seq_len": 16, "validation_fraction": 0.5},
        "train": {"steps": 6, "batch_size": 4, "warmup_steps": 1, "lr": 0.01},
        "eval": {"every": 0, "batches": 2, "batch_size": 4},
        "sample": {"every": 0, "max_new_tokens": 4},
        "checkpoint": {"every": 2, "keep": 2},
        "log": {"every": 1, "progress": False, "tensorboard": False},
    }
    for name, values in sections.items():
        recipe[name] = {**recipe.get(name, {}), **values}
    return recipe


def run(corpus, out, resume=False, on_step=None, **sections):
    return train(recipe_from_dict(tiny_recipe(corpus, **sections), "test"), out, resume=resume, on_step=on_step)


# -- recipes -------------------------------------------------------------------------------------
def test_shipped_recipes_validate():
    names = sorted(p.stem for p in recipe_dir().glob("*.yaml"))
    for required in ("shakespeare-tiny", "shakespeare-tiny-transformer", "shakespeare-fpga",
                     "slimpajama-370m", "slimpajama-1.3b", "slimpajama-2.7b"):
        assert required in names
    assert any(n.startswith("tinystories-") for n in names)
    for name in names:
        recipe = load_recipe(name)
        vocab = 256 if recipe.data.tokenizer == "bytes" else 32000
        config = recipe.model_config(vocab)
        assert recipe.data.seq_len <= config.max_seq_len, name
    fpga = load_recipe("shakespeare-fpga").model_config(256)
    from matmulfree.checkpoint import build_model

    with torch.device("meta"):
        summary = build_model(fpga).weight_summary()
    assert 2 * summary["ternary_weights"] + 8 * 256 * 128 < 3.7e6 * 0.6  # ECP5-85F BRAM with room to spare


def test_recipe_errors_name_the_key(corpus, tmp_path):
    bad = tiny_recipe(corpus, train={"lrr": 1.0})
    with pytest.raises(ConfigError, match="lrr"):
        recipe_from_dict(bad, "bad.yaml")
    with pytest.raises(ConfigError, match=r"'steps' must be int"):
        recipe_from_dict(tiny_recipe(corpus, train={"steps": "many"}), "bad.yaml")
    with pytest.raises(ConfigError, match="train.schedule"):
        recipe_from_dict(tiny_recipe(corpus, train={"schedule": "linear-ish"}), "bad.yaml")
    with pytest.raises(ConfigError, match="dmodel"):
        recipe_from_dict(tiny_recipe(corpus, model={"dmodel": 3}), "bad.yaml")
    with pytest.raises(ConfigError, match="not found"):
        load_recipe("no-such-recipe")
    path = tmp_path / "r.yaml"
    path.write_text("train: {steps: 10, warmup_steps: 2}\n")
    r = load_recipe(str(path), ["train.lr=1e-3", "model.d_model=64", "train.betas=[0.8, 0.9]"])
    assert r.train.lr == 1e-3 and r.model["d_model"] == 64 and r.train.betas == [0.8, 0.9]
    with pytest.raises(ConfigError, match="expected section.key=value"):
        load_recipe(str(path), ["train.lr"])
    path.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_recipe(str(path))


def test_schedules(corpus):
    def factors(schedule):
        r = recipe_from_dict(tiny_recipe(corpus, train={"steps": 100, "warmup_steps": 10, "schedule": schedule,
                                                        "min_lr_ratio": 0.0}), "t")
        return [lr_factor(s, r) for s in range(100)]

    cos, halved, two = factors("cosine"), factors("cosine-halved"), factors("two-stage")
    assert cos[0] == pytest.approx(0.1) and cos[9] == pytest.approx(1.0) and cos[-1] < 0.01
    assert halved[49] == pytest.approx(cos[49]) and halved[50] == pytest.approx(cos[50] / 2)
    assert two[50] == pytest.approx(two[49] / 2, rel=0.05)
    r = recipe_from_dict(tiny_recipe(corpus, train={"steps": 100, "schedule": "two-stage"}), "t")
    assert train_module.weight_decay_factor(49, r) == 1 and train_module.weight_decay_factor(50, r) == 0


# -- training --------------------------------------------------------------------------------------
def test_training_learns_and_writes_outputs(corpus, tmp_path):
    out = tmp_path / "run"
    result = run(corpus, out, train={"steps": 40, "lr": 0.02}, eval={"every": 20},
                 sample={"every": 20}, log={"tensorboard": True})
    losses = list(result.losses.values())
    assert sum(losses[-5:]) / 5 < losses[0] - 1.0  # a 17-word language is quickly learnt
    assert result.val_loss is not None and result.val_bpb == pytest.approx(result.val_loss / 0.6931, rel=1e-3)
    for name in ("recipe.yaml", "log.csv", "loss.png", "samples.txt", "metrics.json", "tokenizer_config.json",
                 "final/config.json", "final/model.safetensors"):
        assert (out / name).is_file(), name
    assert any((out / "tensorboard").iterdir())
    assert [p.name for p in checkpoint_dirs(out)] == ["step-00000038", "step-00000040"]  # keep = 2
    model = load_model(out / "final")
    assert model.config.d_model == 32
    with pytest.raises(TrainingError, match="--resume"):
        run(corpus, out)  # refuses to overwrite a run


def test_resume_reproduces_uninterrupted_losses(corpus, tmp_path):
    full = run(corpus, tmp_path / "full").losses

    class Kill(Exception):
        pass

    def kill_at_5(step, loss):
        if step == 5:
            raise Kill

    with pytest.raises(Kill):
        run(corpus, tmp_path / "cut", on_step=kill_at_5)
    assert latest_checkpoint(tmp_path / "cut").name == "step-00000004"
    resumed = run(corpus, tmp_path / "cut", resume=True).losses
    assert sorted(resumed) == [5, 6]
    for step in (5, 6):
        assert resumed[step] == pytest.approx(full[step], rel=0, abs=1e-6)


def test_crash_while_saving_keeps_last_checkpoint(corpus, tmp_path, monkeypatch):
    out = tmp_path / "run"
    original = train_module.Trainer.save_checkpoint

    def save_then_crash(self, metrics):
        if self.step == 4:
            self.acc.save_state = lambda *a, **k: (_ for _ in ()).throw(OSError("disk full"))
        return original(self, metrics)

    monkeypatch.setattr(train_module.Trainer, "save_checkpoint", save_then_crash)
    with pytest.raises(OSError, match="disk full"):
        run(corpus, out)
    assert [p.name for p in checkpoint_dirs(out)] == ["step-00000002"]
    state = json.loads((out / "checkpoints/step-00000002/trainer_state.json").read_text())
    assert state["step"] == 2
    monkeypatch.undo()
    assert sorted(run(corpus, out, resume=True).losses) == [3, 4, 5, 6]


def test_non_finite_loss_stops_and_keeps_checkpoint(corpus, tmp_path, monkeypatch):
    original = train_module.sequence_loss
    calls = {"n": 0}

    def poisoned(model, seq):
        calls["n"] += 1
        loss, n = original(model, seq)
        return (loss * float("nan") if calls["n"] == 3 else loss), n

    monkeypatch.setattr(train_module, "sequence_loss", poisoned)
    with pytest.raises(TrainingError, match=r"non-finite training loss .* at step 3.*step-00000002"):
        run(corpus, tmp_path / "run")
    assert latest_checkpoint(tmp_path / "run").name == "step-00000002"


def test_gradient_accumulation_matches_large_batch(corpus, tmp_path):
    """Whole runs on the reference path agree step by step. The fused CPU path agrees on the first
    steps only: its gradients match to fp32 rounding (tests/test_accumulate.py), but over several
    steps ternary rounding thresholds amplify differences of 1e-7 into the loss."""
    from matmulfree import backend

    backend.set_kernel_backend("torch")
    try:
        big = run(corpus, tmp_path / "big", train={"batch_size": 4, "grad_accum": 1}).losses
        acc = run(corpus, tmp_path / "acc", train={"batch_size": 1, "grad_accum": 4}).losses
    finally:
        backend.set_kernel_backend(None)
    for step in big:
        assert acc[step] == pytest.approx(big[step], abs=2e-5)
    short = {"steps": 2, "warmup_steps": 1}
    big = run(corpus, tmp_path / "big2", train={"batch_size": 4, "grad_accum": 1, **short}).losses
    acc = run(corpus, tmp_path / "acc2", train={"batch_size": 1, "grad_accum": 4, **short}).losses
    for step in big:
        assert acc[step] == pytest.approx(big[step], abs=1e-4)


@pytest.mark.slow
def test_two_processes_match_one(corpus, tmp_path, monkeypatch):
    """DDP on two CPU processes (gloo) against one process with the same global batch (both on the
    plain PyTorch path, whose losses do not depend on how the batch is split; see test_distributed)."""
    import yaml

    monkeypatch.setenv("MATMULFREE_KERNELS", "torch")

    recipe = tiny_recipe(corpus, train={"steps": 4, "batch_size": 2})
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
           "-m", "matmulfree.cli", "train", str(path), "--out", str(tmp_path / "ddp")]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = json.loads((tmp_path / "ddp/checkpoints/step-00000004/trainer_state.json").read_text())
    assert state["processes"] == 2 and state["global_batch"] == 4
    ddp = {int(r["step"]): float(r["loss"]) for r in _csv(tmp_path / "ddp/log.csv") if r["loss"]}
    single = run(corpus, tmp_path / "one", train={"steps": 4, "batch_size": 4}).losses
    for step in single:
        assert ddp[step] == pytest.approx(single[step], abs=2e-5)


def _csv(path):
    import csv

    with open(path) as f:
        return list(csv.DictReader(f))
