"""``matmulfree plan``: memory terms per strategy, the activation trace, and the fit warning."""

import pytest

from matmulfree.plan import GIB, activation_bytes, parse_memory, plan
from matmulfree.recipe import load_recipe


def test_parse_memory():
    assert parse_memory("80GB") == 80 * GIB and parse_memory("24GiB") == 24 * GIB
    assert parse_memory("512MB") == 512 * 2**20
    with pytest.raises(ValueError, match="--gpu-memory 'lots'"):
        parse_memory("lots")


def test_strategies_divide_the_state():
    recipe = load_recipe("tinystories-small")
    ddp, fsdp = plan(recipe, 8, 80 * GIB, "ddp", 256), plan(recipe, 8, 80 * GIB, "fsdp", 256)
    P = ddp.parameters
    assert ddp.params_bytes == 4 * P and ddp.grads_bytes == 4 * P and ddp.optimizer_bytes == 8 * P
    assert fsdp.grads_bytes == 4 * P // 8 and fsdp.optimizer_bytes == 8 * P // 8
    assert fsdp.total_bytes < ddp.total_bytes and fsdp.activations_bytes == ddp.activations_bytes
    zero2 = plan(recipe, 8, 80 * GIB, "deepspeed", 256)
    assert zero2.optimizer_bytes == (12 if recipe.train.mixed_precision == "bf16" else 8) * P // 8


def test_activations_grow_with_batch_and_length():
    recipe = load_recipe("tinystories-small")
    fixed, per_seq, _ = activation_bytes(recipe, 256)
    longer = load_recipe("tinystories-small", [f"data.seq_len={2 * recipe.data.seq_len}"])
    _, per_seq_2, _ = activation_bytes(longer, 256)
    assert fixed >= 0 and per_seq > 0
    assert per_seq_2 == pytest.approx(2 * per_seq, rel=0.02)


def test_cli_warns_when_it_does_not_fit(capsys):
    from matmulfree.cli import main

    assert main(["plan", "slimpajama-2.7b", "--gpus", "8", "--gpu-memory", "80GB", "--strategy", "ddp"]) == 1
    out = capsys.readouterr().out
    assert "WARNING: does not fit" in out and "optimizer state" in out and "activations" in out
    assert main(["plan", "tinystories-small", "--gpus", "1", "--gpu-memory", "80GB"]) == 0
    assert "WARNING" not in capsys.readouterr().out


def test_deepspeed_config_carries_the_recipe():
    """ZeRO stage, bucket sizes, micro-batch, accumulation, clipping and precision come from the recipe."""
    from matmulfree.distributed import deepspeed_config

    recipe = load_recipe("slimpajama-370m-zero2", ["train.grad_clip=0.5", "distributed.bucket_mb=50"])
    cfg = deepspeed_config(recipe)
    z = cfg["zero_optimization"]
    assert z["stage"] == 2 and z["reduce_bucket_size"] == z["allgather_bucket_size"] == 50_000_000
    assert cfg["train_micro_batch_size_per_gpu"] == 4 and cfg["gradient_accumulation_steps"] == 8
    assert cfg["gradient_clipping"] == 0.5 and cfg["bf16"]["enabled"] and not cfg["fp16"]["enabled"]
    t = recipe.train
    assert t.betas == [0.9, 0.99] and t.eps == 1e-8 and t.schedule == "cosine" and t.warmup_steps > 0
    no_clip = deepspeed_config(load_recipe("slimpajama-370m-zero2", ["train.grad_clip=null"]))
    assert no_clip["gradient_clipping"] == 0.0
