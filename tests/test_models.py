"""Both language models: one interface, parallel vs recurrent agreement, presets, overfitting."""

import subprocess
import sys

import pytest
import torch

import matmulfree
from matmulfree import MatMulFreeLM, TransformerLM, build_model, config_from_dict, preset
from matmulfree.config import PRESETS, ConfigError, glu_hidden_size

TINY = dict(vocab_size=64, d_model=32, n_layers=2, intermediate_size=64)
VARIANTS = [
    ("matmulfree", {}),
    ("matmulfree", {"gate": "released", "forget_lower_bound": True}),
    ("matmulfree", {"ternary_head": False}),
    ("transformer", {"n_heads": 2}),
]


def tiny_model(arch: str, **extra):
    torch.manual_seed(0)
    return build_model(config_from_dict({"architecture": arch, **TINY, **extra})).eval()


@pytest.mark.parametrize("arch,extra", VARIANTS)
def test_parallel_equals_recurrent_generation(arch, extra):
    model = tiny_model(arch, **extra)
    ids = torch.randint(0, 64, (2, 33), generator=torch.Generator().manual_seed(1))
    full = model(ids).logits
    out = model(ids[:, :4])
    logits, state = [out.logits], out.state
    for t in range(4, ids.shape[1]):
        step_logits, state = model.step(ids[:, t], state)
        logits.append(step_logits[:, None])
    max_diff = (torch.cat(logits, 1) - full).abs().max().item()
    assert max_diff < 1e-4, max_diff


@pytest.mark.parametrize("arch,extra", VARIANTS)
def test_greedy_generate_matches_parallel_argmax(arch, extra):
    model = tiny_model(arch, **extra)
    prompt = torch.tensor([[1, 2, 3, 4]])
    streamed = []
    out = model.generate(prompt, 12, temperature=0, callback=streamed.append)
    assert out.shape == (1, 16) and torch.equal(out[0, :4], prompt[0])
    assert torch.equal(torch.stack(streamed, 1), out[:, 4:])
    # every generated token is the argmax of the parallel path over the sequence so far
    logits = model(out[:, :-1]).logits
    assert torch.equal(logits[:, 3:].argmax(-1), out[:, 4:])


def test_sampling_is_seeded_and_respects_top_k():
    model = tiny_model("matmulfree")
    prompt = torch.tensor([5, 6])
    a = model.generate(prompt, 20, temperature=1.0, top_k=3, seed=7)
    b = model.generate(prompt, 20, temperature=1.0, top_k=3, seed=7)
    assert torch.equal(a, b) and a.shape == (22,)
    # with top_k=1, sampling is greedy
    assert torch.equal(model.generate(prompt, 8, top_k=1, seed=3), model.generate(prompt, 8, temperature=0))
    assert torch.equal(model.generate(prompt, 8, top_p=1e-6, seed=3), model.generate(prompt, 8, temperature=0))


def test_loss_shifts_labels_and_ignores_minus_100():
    model = tiny_model("matmulfree")
    ids = torch.randint(0, 64, (2, 10))
    out = model(ids, labels=ids)
    manual = torch.nn.functional.cross_entropy(out.logits[:, :-1].reshape(-1, 64), ids[:, 1:].reshape(-1))
    torch.testing.assert_close(out.loss, manual)
    labels = ids.clone()
    labels[:, 5:] = -100
    masked = model(ids, labels=labels)
    assert masked.n_tokens == 2 * 4
    manual = torch.nn.functional.cross_entropy(out.logits[:, :4].reshape(-1, 64), ids[:, 1:5].reshape(-1))
    torch.testing.assert_close(masked.loss, manual)
    summed = model(ids, labels=labels, loss_reduction="sum")
    torch.testing.assert_close(summed.loss, manual * 8)


def test_packed_model_equals_training_model():
    model = tiny_model("matmulfree")
    ids = torch.randint(0, 64, (2, 12))
    ref = model(ids).logits
    model.pack()
    assert model.is_packed
    assert torch.equal(model(ids).logits, ref)


@pytest.mark.parametrize(
    "name,expected", [("370m", 374e6), ("1.3b", 1.36e9), ("2.7b", 2.70e9)]
)
@pytest.mark.parametrize("arch", ["matmulfree", "transformer"])
def test_paper_preset_parameter_counts(name, expected, arch):
    with torch.device("meta"):
        model = build_model(preset(name, arch))
    assert abs(model.num_parameters() - expected) / expected < 0.02
    assert model.config.intermediate_size == glu_hidden_size(model.config.d_model)


def test_glu_hidden_sizes_of_paper():
    assert [glu_hidden_size(d) for d in (1024, 2048, 2560)] == [2816, 5632, 6912]


def test_weight_summary_counts_ternary_weights():
    model = tiny_model("matmulfree")
    s = model.weight_summary()
    d, l, v, n = 32, 64, 64, 2
    assert s["ternary_weights"] == n * (4 * d * d + d * 2 * l + l * d) + d * v
    assert s["parameters"] == model.num_parameters()
    # 2 bits per ternary weight (+ row padding, scales) beats fp32 by far
    assert s["packed_bytes"] < s["fp32_bytes"] / 4


def test_small_presets_exist_for_cpu():
    for name in ("tiny", "small", "fpga"):
        assert PRESETS[name]["vocab_size"] == 256
        assert isinstance(build_model(preset(name)), MatMulFreeLM)
    assert isinstance(build_model(preset("tiny", "transformer")), TransformerLM)


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="bogus"):
        config_from_dict({"architecture": "matmulfree", "bogus": 1})
    with pytest.raises(ConfigError, match="d_model"):
        config_from_dict({"architecture": "matmulfree", "d_model": "big"})
    with pytest.raises(ConfigError, match="unknown architecture"):
        config_from_dict({"architecture": "rwkv5"})
    with pytest.raises(ConfigError, match="gate"):
        config_from_dict({"architecture": "matmulfree", "gate": "other"})
    with pytest.raises(ConfigError, match="divisible"):
        config_from_dict({"architecture": "transformer", "d_model": 30, "n_heads": 4})


@pytest.mark.parametrize("arch,lr", [("matmulfree", 1e-2), ("transformer", 3e-3)])
def test_tiny_model_overfits_one_batch(arch, lr):
    model = tiny_model(arch).train()
    ids = torch.randint(0, 64, (4, 32), generator=torch.Generator().manual_seed(2))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    first = None
    for _ in range(300):
        loss = model(ids, labels=ids).loss
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.1 * first, (first, loss.item())


def test_cli_info_prints_summary(tmp_path):
    matmulfree.save(tiny_model("matmulfree"), tmp_path / "m")
    out = subprocess.run(
        [sys.executable, "-m", "matmulfree.cli", "info", str(tmp_path / "m")],
        capture_output=True, text=True, check=True,
    ).stdout
    assert "matmulfree" in out and "ternary weights" in out and "size packed" in out
    bad = subprocess.run(
        [sys.executable, "-m", "matmulfree.cli", "info", str(tmp_path / "missing")],
        capture_output=True, text=True,
    )
    assert bad.returncode == 2 and "not a directory" in bad.stderr and "Traceback" not in bad.stderr
