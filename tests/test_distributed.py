"""FSDP2 on two CPU processes (gloo) against one process: same losses, ternary scales over the whole
matrix, sharded checkpoints that resume after a kill, and consolidation to one model.safetensors.

The two-process runs are started with ``torch.distributed.run`` (tests/dist_worker.py or the CLI)
and share one module fixture, so the whole file costs four process launches.
"""

import csv
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from matmulfree.checkpoint import load_model
from matmulfree.config import ConfigError
from matmulfree.recipe import recipe_from_dict
from matmulfree.train import latest_checkpoint, train

from .test_train import corpus, tiny_recipe  # noqa: F401

STEPS = 10
PORT = 29631


def fsdp_recipe(corpus: Path, **train_keys) -> dict:  # noqa: F811
    return tiny_recipe(corpus, model={"n_layers": 2},
                       train={"steps": STEPS, "batch_size": 1, "grad_accum": 2, **train_keys},
                       checkpoint={"every": 5, "keep": 3}, distributed={"strategy": "fsdp"})


@pytest.fixture(scope="module", autouse=True)
def reference_kernels():
    """Every process of this file trains on the plain PyTorch path (``MATMULFREE_KERNELS=torch``):
    its integer-valued products make a sequence's loss independent of how the batch is split over
    processes, so one- and two-process runs can be compared at 1e-4. The fused CPU training path
    (:mod:`matmulfree.cpu_train`) agrees to fp32 rounding, which ternary rounding amplifies over steps."""
    before = os.environ.get("MATMULFREE_KERNELS")
    os.environ["MATMULFREE_KERNELS"] = "torch"
    yield
    if before is None:
        del os.environ["MATMULFREE_KERNELS"]
    else:
        os.environ["MATMULFREE_KERNELS"] = before


def torchrun(args: list[str], port: int, timeout: int = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port), *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout,
                          cwd=Path(__file__).resolve().parent.parent)


def logged_losses(run: Path) -> dict[int, float]:
    with open(run / "log.csv") as f:
        return {int(r["step"]): float(r["loss"]) for r in csv.DictReader(f) if r["loss"]}


@pytest.fixture(scope="module")
def single(corpus, tmp_path_factory):  # noqa: F811
    """The reference: one process, no wrapper, batch 4 (the global batch of the sharded runs)."""
    root = tmp_path_factory.mktemp("single")
    return train(recipe_from_dict(tiny_recipe(corpus, model={"n_layers": 2}, train={"steps": STEPS, "batch_size": 4},
                                              checkpoint={"every": 5, "keep": 3}), "single"), root / "single")


@pytest.fixture(scope="module")
def runs(corpus, single, tmp_path_factory):  # noqa: F811
    """single: one process, batch 4. fsdp: 2 processes × batch 1 × accumulation 2. cut: the same run
    killed after step 7 (last checkpoint: step 5), then resumed."""
    root = tmp_path_factory.mktemp("fsdp")
    path = root / "fsdp.yaml"
    path.write_text(yaml.safe_dump(fsdp_recipe(corpus)))
    proc = torchrun(["-m", "matmulfree.cli", "train", str(path), "--out", str(root / "fsdp")], PORT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    worker = "tests/dist_worker.py"
    killed = torchrun([worker, "train", str(path), str(root / "cut"), "--kill-at", "7",
                       "--scales", str(root / "scales.json")], PORT + 1)
    assert killed.returncode != 0, "the killed run should have died"
    assert latest_checkpoint(root / "cut").name == "step-00000005"
    resumed = torchrun([worker, "train", str(path), str(root / "cut"), "--resume"], PORT + 2)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    return {"root": root, "single": single, "fsdp": root / "fsdp", "cut": root / "cut"}


@pytest.mark.slow
def test_fsdp_matches_single_process(runs):
    """(a) same global batch (4 sequences): losses within 1e-4 relative over 10 steps (fp32 on CPU)."""
    fsdp, single = logged_losses(runs["fsdp"]), runs["single"].losses
    assert sorted(fsdp) == list(range(1, STEPS + 1))
    for step in single:
        assert fsdp[step] == pytest.approx(single[step], rel=1e-4), step
    state = json.loads((runs["fsdp"] / "checkpoints/step-00000010/trainer_state.json").read_text())
    assert state["strategy"] == "fsdp" and state["processes"] == 2 and state["global_batch"] == 4
    shards = sorted(p.name for p in (runs["fsdp"] / "checkpoints/step-00000010/sharded").iterdir())
    assert shards == [".metadata", "__0_0.distcp", "__1_0.distcp"]  # one shard file per rank


@pytest.mark.slow
def test_ternary_scale_is_over_the_whole_matrix(runs, corpus):  # noqa: F811
    """Inside the sharded forward each BitLinear sees its whole weight: the absmean scale equals the
    unsharded model's, while the scale of a rank's local shard alone differs."""
    from accelerate.utils import set_seed

    from matmulfree.layers import BitLinear
    from matmulfree.models import build_model
    from matmulfree.quant import weight_scale

    recipe = recipe_from_dict(fsdp_recipe(corpus), "t")
    set_seed(recipe.train.seed)
    reference = build_model(recipe.model_config(256))
    want = {name: float(weight_scale(m.weight)) for name, m in reference.named_modules() if isinstance(m, BitLinear)}
    for rank in (0, 1):
        seen = json.loads(Path(f"{runs['root'] / 'scales.json'}.{rank}").read_text())
        local = seen.pop("__local__")
        assert set(seen) == set(want)
        for name, s in seen.items():
            full_shape = list(reference.get_submodule(name).weight.shape)
            assert s["shape"] == full_shape and not s["dtensor"], name
            assert s["scale"] == pytest.approx(want[name], rel=1e-6), name
        assert any(abs(local[n] - want[n]) > 1e-4 * want[n] for n in want), "shard scales should differ"


@pytest.mark.slow
def test_killed_fsdp_run_resumes_exactly(runs):
    """(b) killed after step 7, resumed from the step-5 shards: steps 6-10 as in the uninterrupted run."""
    full, resumed = logged_losses(runs["fsdp"]), logged_losses(runs["cut"])
    assert sorted(resumed) == list(range(1, STEPS + 1))
    for step in range(6, STEPS + 1):
        assert resumed[step] == pytest.approx(full[step], rel=0, abs=1e-6), step


@pytest.mark.slow
def test_consolidated_checkpoint_equals_single_process(runs, tmp_path):
    """(c) the consolidated shards equal the gathered final model exactly and the single-process
    weights closely (same global batch, different summation order)."""
    from matmulfree.cli import main

    assert main(["checkpoint", "consolidate", str(runs["fsdp"]), str(tmp_path / "merged")]) == 0
    merged = load_model(tmp_path / "merged").state_dict()
    gathered = load_model(runs["fsdp"] / "final").state_dict()
    single = load_model(runs["single"].out / "final").state_dict()
    assert (tmp_path / "merged/tokenizer_config.json").is_file()
    assert set(merged) == set(single)
    for name, w in merged.items():
        assert torch.equal(w, gathered[name]), name
        torch.testing.assert_close(w, single[name], rtol=1e-4, atol=1e-5, msg=name)


def test_resume_checks_strategy_and_process_group(runs, corpus):  # noqa: F811
    """Sharded state does not resume under another strategy, nor without a process group."""
    from matmulfree.distributed import StrategyError
    from matmulfree.train import Trainer, TrainingError

    ddp = tiny_recipe(corpus, model={"n_layers": 2}, train={"steps": STEPS, "batch_size": 4})
    with pytest.raises(TrainingError, match="strategy 'fsdp'"):
        Trainer(recipe_from_dict(ddp, "t"), runs["cut"], resume=True).fit()
    with pytest.raises(StrategyError, match="process group"):
        Trainer(recipe_from_dict(fsdp_recipe(corpus), "t"), runs["cut"], resume=True)


def test_consolidate_errors_name_the_path(tmp_path, capsys):
    from matmulfree.cli import main

    assert main(["checkpoint", "consolidate", str(tmp_path), str(tmp_path / "out")]) == 2
    assert str(tmp_path) in capsys.readouterr().err


def test_distributed_section_is_validated(corpus):  # noqa: F811
    with pytest.raises(ConfigError, match="distributed.strategy"):
        recipe_from_dict(tiny_recipe(corpus, distributed={"strategy": "zero9"}), "bad.yaml")
    with pytest.raises(ConfigError, match="distributed.zero_stage"):
        recipe_from_dict(tiny_recipe(corpus, distributed={"zero_stage": 4}), "bad.yaml")


def test_fsdp_mixed_precision_policy():
    """bf16 recipes compute in bf16 with fp32 gradient reduction; the fp32 recipe keeps fp32."""
    from matmulfree.distributed import fsdp_mixed_precision

    bf16 = fsdp_mixed_precision("bf16")
    assert bf16.param_dtype == torch.bfloat16 and bf16.reduce_dtype == torch.float32
    fp32 = fsdp_mixed_precision("no")
    assert fp32.param_dtype is None and fp32.reduce_dtype == torch.float32


# -- DeepSpeed ZeRO-2 ----------------------------------------------------------------------------
needs_deepspeed = pytest.mark.skipif(
    importlib.util.find_spec("deepspeed") is None,
    reason='DeepSpeed is not installed (pip install "matmulfree[deepspeed]"; CI installs only [all])')


def zero2_recipe(corpus: Path, **train_keys) -> dict:  # noqa: F811
    return tiny_recipe(corpus, model={"n_layers": 2},
                       train={"steps": STEPS, "batch_size": 1, "grad_accum": 2, **train_keys},
                       checkpoint={"every": 5, "keep": 3}, distributed={"strategy": "deepspeed", "zero_stage": 2})


def logged_rows(run: Path) -> dict[int, dict[str, float]]:
    with open(run / "log.csv") as f:
        return {int(r["step"]): {k: float(r[k]) for k in ("loss", "lr", "grad_norm")} for r in csv.DictReader(f)
                if r["loss"]}


@pytest.fixture(scope="module")
def zero2_runs(corpus, tmp_path_factory):  # noqa: F811
    """zero2: 2 processes × batch 1 × accumulation 2 on DeepSpeed ZeRO-2 (gloo, fp32), checkpoints at
    steps 5 and 10. resumed: a copy of that run cut back to its step-5 checkpoint, resumed to step 10."""
    import shutil

    root = tmp_path_factory.mktemp("zero2")
    path = root / "zero2.yaml"
    path.write_text(yaml.safe_dump(zero2_recipe(corpus)))
    proc = torchrun(["-m", "matmulfree.cli", "train", str(path), "--out", str(root / "zero2")], PORT + 10, timeout=400)
    assert proc.returncode == 0, proc.stderr[-4000:]
    shutil.copytree(root / "zero2", root / "resumed",
                    ignore=lambda d, names: [n for n in names if n in ("step-00000010", "final", "metrics.json")])
    assert latest_checkpoint(root / "resumed").name == "step-00000005"
    resumed = torchrun(["-m", "matmulfree.cli", "train", str(path), "--out", str(root / "resumed"), "--resume"],
                       PORT + 11, timeout=400)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    return {"zero2": root / "zero2", "resumed": root / "resumed"}


@needs_deepspeed
@pytest.mark.slow
def test_zero2_matches_single_process(zero2_runs, single):
    """Same global batch (4 sequences; accumulation 2 under ZeRO-2): every loss within 1e-4 relative
    over 10 steps, the recipe's warm-up + cosine LR at each step, and DeepSpeed's gradient norm
    (before its clipping at train.grad_clip) equal to the one-process norm."""
    zero2, ref = logged_rows(zero2_runs["zero2"]), logged_rows(single.out)
    assert sorted(zero2) == list(range(1, STEPS + 1))
    for step in range(1, STEPS + 1):
        assert zero2[step]["loss"] == pytest.approx(ref[step]["loss"], rel=1e-4), step
        assert zero2[step]["lr"] == pytest.approx(ref[step]["lr"], rel=1e-12), step
        assert zero2[step]["grad_norm"] == pytest.approx(ref[step]["grad_norm"], rel=1e-3), step
    assert any(ref[s]["grad_norm"] > 1.0 for s in ref), "clipping at 1.0 should have been exercised"
    ckpt = zero2_runs["zero2"] / "checkpoints/step-00000010"
    state = json.loads((ckpt / "trainer_state.json").read_text())
    assert state["strategy"] == "deepspeed" and state["processes"] == 2 and state["global_batch"] == 4
    parts = sorted(p.name for p in (ckpt / "pytorch_model").glob("zero_pp_rank_*_optim_states.pt"))
    assert parts == ["zero_pp_rank_0_mp_rank_00_optim_states.pt", "zero_pp_rank_1_mp_rank_00_optim_states.pt"]
    # one engine step per optimizer step (not one per micro-batch): DeepSpeed's own counter
    engine = torch.load(zero2_runs["zero2"] / "checkpoints/step-00000005/pytorch_model/mp_rank_00_model_states.pt",
                        map_location="cpu", weights_only=False)  # DeepSpeed's own (pickled) format
    assert (engine["global_steps"], engine["global_samples"], engine["skipped_steps"]) == (5, 20, 0)


@needs_deepspeed
@pytest.mark.slow
def test_zero2_resume_reproduces_the_run(zero2_runs):
    """Resumed from the step-5 ZeRO checkpoint: steps 6-10 as in the uninterrupted run."""
    full, resumed = logged_rows(zero2_runs["zero2"]), logged_rows(zero2_runs["resumed"])
    assert sorted(resumed) == list(range(1, STEPS + 1))
    for step in range(6, STEPS + 1):
        assert resumed[step]["loss"] == pytest.approx(full[step]["loss"], rel=0, abs=1e-6), step


@needs_deepspeed
@pytest.mark.slow
def test_zero2_consolidated_checkpoint_equals_gathered_model(zero2_runs, single, tmp_path):
    """``matmulfree checkpoint consolidate`` of the ZeRO partitions (DeepSpeed's zero_to_fp32) equals the
    run's gathered final model exactly and the one-process weights closely."""
    from matmulfree.cli import main

    assert main(["checkpoint", "consolidate", str(zero2_runs["zero2"]), str(tmp_path / "merged")]) == 0
    merged = load_model(tmp_path / "merged").state_dict()
    gathered = load_model(zero2_runs["zero2"] / "final").state_dict()
    ref = load_model(single.out / "final").state_dict()
    assert set(merged) == set(gathered) == set(ref)
    for name, w in merged.items():
        assert torch.equal(w, gathered[name]), name
        torch.testing.assert_close(w, ref[name], rtol=1e-4, atol=1e-5, msg=name)


@needs_deepspeed
@pytest.mark.slow
def test_zero2_bf16_single_process_without_launcher(corpus, single, tmp_path):  # noqa: F811
    """``matmulfree train`` of a bf16 ZeRO-2 recipe in one process with no launcher: DeepSpeed computes
    with bf16 weights (so the losses differ from fp32 by bf16 rounding, not by a factor), and the final
    model holds the fp32 master weights, equal to the consolidated checkpoint and finer than bf16."""
    from matmulfree.cli import main

    path = tmp_path / "bf16.yaml"
    path.write_text(yaml.safe_dump(zero2_recipe(corpus, steps=3, batch_size=2, mixed_precision="bf16")))
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_PORT")}
    proc = subprocess.run([sys.executable, "-m", "matmulfree.cli", "train", str(path), "--out", str(tmp_path / "run")],
                          capture_output=True, text=True, env={**env, "OMP_NUM_THREADS": "1"}, timeout=300,
                          cwd=Path(__file__).resolve().parent.parent)
    assert proc.returncode == 0, proc.stderr[-4000:]
    bf16, ref = logged_rows(tmp_path / "run"), logged_rows(single.out)
    assert sorted(bf16) == [1, 2, 3]
    for step in bf16:
        assert bf16[step]["loss"] == pytest.approx(ref[step]["loss"], rel=2e-2), step
    assert any(bf16[s]["loss"] != ref[s]["loss"] for s in bf16), "bf16 compute should round differently"
    assert main(["checkpoint", "consolidate", str(tmp_path / "run"), str(tmp_path / "merged")]) == 0
    merged, final = load_model(tmp_path / "merged").state_dict(), load_model(tmp_path / "run/final").state_dict()
    for name, w in final.items():
        assert w.dtype == torch.float32 and torch.equal(w, merged[name]), name
    assert any(not torch.equal(w, w.bfloat16().float()) for w in final.values()), "masters should be finer than bf16"
