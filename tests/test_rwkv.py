"""MatMul-free RWKV-4: the WKV forms, the model's parallel and recurrent paths, BitLinear options,
the export to the ``rwkv`` package's format and agreement with that package."""

from __future__ import annotations

import math

import pytest
import torch

from matmulfree.config import ConfigError, RWKVConfig, config_from_dict
from matmulfree.layers import BitLinear
from matmulfree.models import RWKVLM, build_model
from matmulfree.wkv import wkv_chunked, wkv_sequential, wkv_step
from tests.test_train import corpus  # noqa: F401  (fixture)


def tiny(**kw) -> RWKVConfig:
    fields = dict(vocab_size=61, d_model=32, n_layers=3, intermediate_size=64)
    return RWKVConfig(**{**fields, **kw})


def wkv_float64(w, u, k, v):
    """The WKV definition evaluated directly in log space in float64 (no running state)."""
    w, u, k, v = (t.double() for t in (w, u, k, v))
    B, T, d = k.shape
    out = torch.empty(B, T, d, dtype=torch.float64)
    for t in range(T):
        i = torch.arange(t + 1, dtype=torch.float64)
        e = -(t - 1 - i)[None, :, None] * w + k[:, : t + 1]
        e[:, t] = u + k[:, t]
        m = e.amax(1, keepdim=True)
        p = torch.exp(e - m)
        out[:, t] = (p * v[:, : t + 1]).sum(1) / p.sum(1)
    return out


# -- WKV ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("T,chunk", [(37, 8), (16, 16), (5, 16), (1, 4)])
def test_chunked_wkv_matches_sequential_and_float64(T, chunk):
    torch.manual_seed(T)
    B, d = 2, 6
    w, u = torch.rand(d) * 3 + 0.01, torch.randn(d)
    k, v = torch.randn(B, T, d) * 3, torch.randn(B, T, d)
    seq, s_state = wkv_sequential(w, u, k, v)
    par, p_state = wkv_chunked(w, u, k, v, chunk=chunk)
    ref = wkv_float64(w, u, k, v)
    assert (seq.double() - ref).abs().max() < 1e-5
    assert (par.double() - ref).abs().max() < 1e-5
    for a, b in ((s_state[0], p_state[0]), (s_state[1], p_state[1])):  # the real sums aa e^pp, bb e^pp
        real_a, real_b = a * torch.exp(s_state[2]), b * torch.exp(p_state[2])
        assert torch.allclose(real_a, real_b, rtol=1e-4, atol=1e-5)


def test_wkv_survives_keys_where_naive_exp_overflows():
    torch.manual_seed(0)
    B, T, d = 1, 40, 4
    w, u = torch.rand(d) + 0.1, torch.randn(d)
    k, v = torch.randn(B, T, d) * 300, torch.randn(B, T, d)  # e^300 overflows fp32 (and e^800 float64)
    k[0, 7] = 800.0
    assert not torch.isfinite(torch.exp(k)).all()
    ref = wkv_float64(w, u, k, v)
    for out, _ in (wkv_sequential(w, u, k, v), wkv_chunked(w, u, k, v, chunk=8)):
        assert torch.isfinite(out).all()
        assert (out.double() - ref).abs().max() < 1e-5


def test_chunked_wkv_gradients_match_sequential():
    torch.manual_seed(1)
    B, T, d = 2, 21, 5
    leaves = [torch.rand(d) * 2 + 0.05, torch.randn(d), torch.randn(B, T, d) * 2, torch.randn(B, T, d)]
    g = torch.randn(B, T, d)
    grads = []
    for fn in (wkv_sequential, lambda *a: wkv_chunked(*a, chunk=8)):
        xs = [t.clone().requires_grad_() for t in leaves]
        out, (aa, bb, pp) = fn(*xs)
        loss = (out * g).sum() + (aa * torch.exp(pp)).sum() * 1e-3
        grads.append(torch.autograd.grad(loss, xs))
    for a, b in zip(*grads):
        assert (a - b).abs().max() <= 1e-4 * max(1.0, a.abs().max().item())


def test_wkv_step_continues_a_chunked_prefix():
    torch.manual_seed(2)
    B, T, d = 2, 19, 3
    w, u = torch.rand(d) + 0.1, torch.randn(d)
    k, v = torch.randn(B, T, d), torch.randn(B, T, d)
    full, _ = wkv_sequential(w, u, k, v)
    _, state = wkv_chunked(w, u, k[:, :12], v[:, :12], chunk=4)
    for t in range(12, T):
        o, state = wkv_step(w, u, k[:, t], v[:, t], state)
        assert torch.allclose(o, full[:, t], atol=1e-5)


# -- BitLinear options ----------------------------------------------------------------------------


def test_bitlinear_without_activation_quantization_is_ternary_weights_times_float_input():
    torch.manual_seed(3)
    layer = BitLinear(24, 10, quantize_activations=False, norm=False)
    x = torch.randn(4, 24)
    w_q, s_w = layer.ternary_weight()
    want = x @ (w_q.float() / s_w).T
    assert torch.allclose(layer(x), want, atol=1e-5)
    layer.pack()
    assert torch.allclose(layer(x), want, atol=1e-5)
    quantized = BitLinear(24, 10, norm=False)
    quantized.weight = torch.nn.Parameter(layer.ternary_weight()[0].float() / layer.weight_scale)
    assert not torch.allclose(quantized(x), want, atol=1e-5)  # int8 rounding is visible


def test_bitlinear_norm_flag():
    torch.manual_seed(4)
    x = torch.randn(3, 16) * 5
    with_norm, without = BitLinear(16, 8), BitLinear(16, 8, norm=False)
    without.weight = with_norm.weight
    assert without.norm is None
    assert torch.allclose(with_norm(x), without(with_norm.norm(x)))
    assert not torch.allclose(with_norm(x), without(x))


# -- model ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("gate", [False, True])
@pytest.mark.parametrize("quantize", [True, False])
def test_parallel_equals_recurrent(gate, quantize):
    torch.manual_seed(5)
    model = build_model(tiny(rwkv_gate=gate, quantize_activations=quantize)).eval()
    assert isinstance(model, RWKVLM)
    ids = torch.randint(0, 61, (2, 23))
    with torch.no_grad():
        par = model(ids)
        state, steps = None, []
        for t in range(ids.shape[1]):
            logits, state = model.step(ids[:, t], state)
            steps.append(logits)
        rec = torch.stack(steps, 1)
        cont = model(ids[:, 9:], state=model(ids[:, :9]).state).logits
    tol = 1e-5 * par.logits.abs().max().item()
    assert (par.logits - rec).abs().max() <= tol
    assert (cont - par.logits[:, 9:]).abs().max() <= tol
    for a, b in zip(par.state, state):
        assert torch.allclose(a.att_x, b.att_x, atol=1e-5) and torch.allclose(a.ffn_x, b.ffn_x, atol=1e-5)
        assert torch.allclose(a.aa * a.pp.exp(), b.aa * b.pp.exp(), rtol=1e-4, atol=1e-6)


def test_packed_model_equals_training_model_and_generates():
    torch.manual_seed(6)
    model = build_model(tiny()).eval()
    ids = torch.randint(0, 61, (1, 12))
    with torch.no_grad():
        ref = model(ids).logits
        model.pack()
        assert torch.equal(model(ids).logits, ref)
    out = model.generate(ids, 5, temperature=0)
    assert out.shape == (1, 17) and torch.equal(out[:, :12], ids)


def test_rwkv4_initialisation_is_layer_dependent():
    model = build_model(tiny(n_layers=4))
    first, last = model.layers[0].att, model.layers[-1].att
    d = 32
    assert first.time_decay[0].item() == pytest.approx(-5.0) and first.time_decay[-1].item() == pytest.approx(3.0)
    # deeper layers: the exponent 0.7 + 1.3 r01 grows, so the middle channels decay slower
    assert last.time_decay[d // 2] < first.time_decay[d // 2]
    assert first.time_first[0].item() == pytest.approx(math.log(0.3))
    assert first.time_first[1].item() == pytest.approx(math.log(0.3) + 0.5)
    assert first.time_mix_k[d // 2].item() == pytest.approx(0.5)  # (h/d)^1 in layer 0
    assert last.time_mix_k[d // 2].item() == pytest.approx(0.5 ** 0.25)
    assert last.time_mix_v[0].item() == pytest.approx(0.3)
    assert model.layers[1].ffn.time_mix_r[d // 2].item() == pytest.approx(0.5 ** 0.75)
    assert (model.layers[0].att.decay() > 0).all()


def test_tiny_rwkv_learns_one_batch():
    torch.manual_seed(7)
    model = build_model(tiny())
    ids = torch.randint(0, 61, (4, 32))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    first = None
    for _ in range(40):
        loss = model(ids, labels=ids).loss
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.6 * first


def test_rwkv_config_round_trip_and_errors():
    cfg = tiny(rwkv_gate=True, quantize_activations=False)
    assert config_from_dict(cfg.to_dict()) == cfg
    assert RWKVConfig().norm_eps == 1e-5
    with pytest.raises(ConfigError, match="rwkv_gate"):
        config_from_dict({"architecture": "rwkv", "rwkv_gate": "yes"})
    with pytest.raises(ConfigError, match="quantize_activations"):
        config_from_dict({"architecture": "matmulfree", "quantize_activations": 1})


# -- export to the rwkv package ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def rwkv_package():
    import os

    os.environ.setdefault("RWKV_JIT_ON", "0")  # plain eager functions: no TorchScript compile in tests
    os.environ.setdefault("RWKV_CUDA_ON", "0")
    return pytest.importorskip("rwkv.model")


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def test_rwkv_package_agrees_with_our_logits(tmp_path, rwkv_package):
    from matmulfree import save_model
    from matmulfree.cli import main

    torch.manual_seed(8)
    model = build_model(tiny(quantize_activations=False, n_layers=2)).eval()
    # train-like, non-symmetric parameters: perturb everything the init set to a pattern
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    save_model(model, tmp_path / "ckpt")
    assert main(["export", "rwkv4", str(tmp_path / "ckpt"), str(tmp_path / "m.pth")]) == 0
    ref = rwkv_package.RWKV(str(tmp_path / "m.pth"), "cpu fp32", verbose=False)
    ids = torch.randint(0, 61, (19,))
    with torch.no_grad():
        ours = model(ids[None]).logits[0]
    theirs_seq, _ = ref.forward(ids.tolist(), None, full_output=True)
    assert _rel(theirs_seq, ours) < 1e-4  # parallel
    state, steps = None, []
    with torch.no_grad():
        for t in ids.tolist():
            logits, state = ref.forward([t], state)
            steps.append(logits)
        ours_state, ours_steps = None, []
        for t in ids:
            logits, ours_state = model.step(t[None], ours_state)
            ours_steps.append(logits[0])
    assert _rel(torch.stack(steps), torch.stack(ours_steps)) < 1e-4  # recurrent
    # the package's state after the prompt is ours: att_x, aa, bb, pp, ffn_x per layer
    for i, s in enumerate(ours_state):
        assert torch.allclose(state[5 * i + 0], s.att_x[0], atol=1e-5)
        assert torch.allclose(state[5 * i + 1] * state[5 * i + 3].exp(), s.aa[0] * s.pp[0].exp(), rtol=1e-4)
        assert torch.allclose(state[5 * i + 4], s.ffn_x[0], atol=1e-5)


def test_export_writes_dequantised_ternary_weights(tmp_path):
    from matmulfree.rwkv4_format import rwkv4_state_dict

    model = build_model(tiny())
    sd = rwkv4_state_dict(model)
    w = sd["blocks.1.att.key.weight"]
    w_q, s_w = model.layers[1].att.key.ternary_weight()
    assert w.shape == (32, 32) and torch.equal(w, w_q.float() / s_w)
    assert len(torch.unique(w)) <= 3
    # stored raw: the package computes -exp(time_decay) itself
    assert torch.equal(sd["blocks.0.att.time_decay"], model.layers[0].att.time_decay.detach())
    assert sd["blocks.0.att.time_mix_k"].shape == (1, 1, 32)
    assert sd["blocks.0.ffn.key.weight"].shape == (64, 32) and sd["blocks.0.ffn.value.weight"].shape == (32, 64)
    assert "blocks.0.ln0.weight" in sd and "blocks.1.ln0.weight" not in sd


def test_export_refuses_what_rwkv4_cannot_hold(tmp_path):
    from matmulfree import save_model
    from matmulfree.cli import main
    from matmulfree.rwkv4_format import rwkv4_state_dict

    with pytest.raises(ConfigError, match="rwkv_gate"):
        rwkv4_state_dict(build_model(tiny(rwkv_gate=True)))
    with pytest.raises(ConfigError, match="norm_eps"):
        rwkv4_state_dict(build_model(tiny(norm_eps=1e-6)))
    save_model(build_model(config_from_dict({"architecture": "matmulfree", "d_model": 32, "n_layers": 1,
                                             "intermediate_size": 32})), tmp_path / "mlgru")  # fmt: skip
    assert main(["export", "rwkv4", str(tmp_path / "mlgru"), str(tmp_path / "x.pth")]) == 2
    assert not (tmp_path / "x.pth").exists()
    assert main(["export", "rwkv4", str(tmp_path / "mlgru")]) == 2


# -- CPU packed decode --------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["auto", "float"])
@pytest.mark.parametrize("gate", [False, True])
def test_packed_cpu_decoder_equals_reference_step(backend, gate):
    from matmulfree.inference import PackedRWKVDecoder

    torch.manual_seed(9)
    model = build_model(tiny(rwkv_gate=gate)).eval().pack()
    dec = PackedRWKVDecoder(model, backend)
    ids = torch.randint(0, 61, (2, 12))
    logits, state = dec.prefill(ids[:, :6])
    ref_state = model(ids[:, :6]).state
    for t in range(6, 12):
        logits, state = dec.step(ids[:, t], state)
        with torch.no_grad():
            ref, ref_state = model.step(ids[:, t], ref_state)
        assert torch.equal(logits, ref)
    for a, b in zip(state, ref_state):
        assert torch.equal(a.aa, b.aa) and torch.equal(a.pp, b.pp) and torch.equal(a.ffn_x, b.ffn_x)
    assert dec.weight_bytes() > 0


def test_packed_cpu_decoder_refuses_unquantised_activations():
    from matmulfree.inference import PackedRWKVDecoder

    with pytest.raises(ValueError, match="quantize_activations"):
        PackedRWKVDecoder(build_model(tiny(quantize_activations=False)))


# -- power / operation model ---------------------------------------------------------------------------


def test_rwkv_operation_counts_by_hand():
    from matmulfree.energy.ops import count_ops

    d, h, V, L = 8, 16, 10, 2
    cfg = tiny(d_model=d, intermediate_size=h, vocab_size=V, n_layers=L)
    c = count_ops(cfg, context=5)
    assert c.ternary_acc == L * (5 * d * d + 2 * d * h) + d * V
    bl = lambda i, o: (i + o + 1, i, 1)  # noqa: E731  (mult, add, nonlinear) of a BitLinear without norm
    projections = [bl(d, d)] * 4 + [bl(d, d), bl(d, h), bl(h, d)]
    per_layer = (
        2 * 3 * d + 5 * 2 * d + 7 * d + d + h + d,  # mult: 2 LN, 5 mixes, WKV, r*wkv, square, r*Vk
        2 * 3 * d + 5 * d + 12 * d + d + h + d,  # add: 2 LN, 5 mixes, WKV, residual, relu, residual
        2 + d + 5 * d + d,  # nonlinear: 2 LN, sigmoid, WKV, sigmoid
    )
    want = [L * (per_layer[i] + sum(p[i] for p in projections)) + 2 * (3 * d if i < 2 else 1) + bl(d, V)[i]
            for i in range(3)]  # fmt: skip
    assert (c.mult, c.add, c.nonlinear) == tuple(want)
    assert next(r for r in c.reads if r.what == "recurrent state").values == 5 * L * d
    assert count_ops(tiny(d_model=d, intermediate_size=h, vocab_size=V, n_layers=L, rwkv_gate=True),
                     5).ternary_acc == c.ternary_acc + L * d * d  # fmt: skip


def test_power_runs_for_rwkv(tmp_path):
    import json

    from matmulfree.cli import main

    out = tmp_path / "p"
    rc = main(["power", "preset:tiny:rwkv", "--targets", "cpu,ops", "--new-tokens", "4", "--context", "4",
               "--warmup", "1", "--min-seconds", "0", "--idle-seconds", "0", "--out", str(out)])  # fmt: skip
    assert rc == 0
    rows = json.loads((out / "power.json").read_text())["rows"]
    models = {(r["target"], r["model"]) for r in rows}
    assert ("cpu", "MatMul-free RWKV") in models and ("ops", "MatMul-free RWKV") in models
    assert ("ops", "Transformer++") in models


# -- CLI: train / eval / generate / info -----------------------------------------------------------------


def test_cli_train_eval_generate_info_for_rwkv(corpus, tmp_path, capsys):  # noqa: F811
    import json

    import yaml

    from matmulfree.cli import main
    from tests.test_train import tiny_recipe

    recipe = tiny_recipe(corpus, model={"architecture": "rwkv", "d_model": 32, "n_layers": 2,
                                        "intermediate_size": 64, "max_seq_len": 64})  # fmt: skip
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    assert main(["train", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "run")]) == 0
    final = tmp_path / "run" / "final"
    assert json.loads((final / "config.json").read_text())["architecture"] == "rwkv"
    capsys.readouterr()
    assert main(["generate", str(final), "--prompt", "the", "--max-new-tokens", "8", "--temperature", "0"]) == 0
    plain = capsys.readouterr().out
    assert main(["generate", str(final), "--prompt", "the", "--max-new-tokens", "8", "--temperature", "0",
                 "--packed"]) == 0  # fmt: skip
    assert capsys.readouterr().out == plain and plain.startswith("the")
    assert main(["eval", str(final), "--data", f"text:{corpus}/*.txt", "--seq-len", "16", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["bits_per_byte"] > 0
    assert main(["info", str(final)]) == 0
    assert "architecture      rwkv" in capsys.readouterr().out


def test_shipped_rwkv_recipes_build():
    from matmulfree.recipe import load_recipe

    tiny_cfg = load_recipe("shakespeare-tiny-rwkv").model_config(256)
    assert tiny_cfg.architecture == "rwkv" and tiny_cfg.d_model == 128 and tiny_cfg.n_layers == 4
    big = load_recipe("slimpajama-370m-rwkv")
    cfg = big.model_config(32000)
    assert (cfg.d_model, cfg.n_layers, cfg.intermediate_size) == (1024, 24, 4096)
    assert big.train.batch_size * big.train.grad_accum == 32 and big.train.steps == 28610
