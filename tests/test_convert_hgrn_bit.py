"""Converter for released MMfreeLM (hgrn_bit) checkpoints, checked against the official code's outputs.

The fixtures in ``tests/fixtures/hgrn_bit/`` were made by ``make_fixture.py`` with the paper's own
classes (see its docstring); ``official.safetensors`` holds the official logits and greedy tokens.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from matmulfree.checkpoint import load_model
from matmulfree.cli import main
from matmulfree.convert import ConversionError, config_from_release, convert_hgrn_bit
from matmulfree.layers import BitLinear
from matmulfree.quant import activation_scale, round_activation

FIXTURES = Path(__file__).parent / "fixtures" / "hgrn_bit"
VARIANTS = ["lb", "nolb"]


def official(variant: str) -> dict[str, torch.Tensor]:
    return load_file(str(FIXTURES / variant / "official.safetensors"))


def near_ties(model, prompt: torch.Tensor, tol: float = 1e-5) -> list[tuple[str, int, float]]:
    """``(BitLinear, position, value)`` of every activation ``x * s_x`` within ``tol`` of a
    rounding tie ``k + 1/2`` (where fp32 noise can flip one 8-bit code)."""
    found, hooks = [], []

    def hook(name):
        def record(mod, inp, out):
            xn = mod.norm(inp[0]).float()
            t = (xn * activation_scale(xn)).reshape(-1, xn.shape[-1])
            gap = (t - t.floor() - 0.5).abs()
            for pos in torch.nonzero(gap.min(-1).values < tol).flatten().tolist():
                found.append((name, pos, float(t[pos, gap[pos].argmin()])))
        return record

    for name, mod in model.named_modules():
        if isinstance(mod, BitLinear):
            hooks.append(mod.register_forward_hook(hook(name)))
    with torch.no_grad():
        model(prompt)
    for h in hooks:
        h.remove()
    return found


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("converted")
    return {v: convert_hgrn_bit(FIXTURES / v, root / v) and root / v for v in VARIANTS}


@pytest.mark.parametrize("variant", VARIANTS)
def test_logits_match_the_official_code(converted, variant):
    ref = official(variant)
    model = load_model(converted[variant]).eval()
    with torch.no_grad():
        logits = model(ref["prompt"][None]).logits[0].float()
    diff = (logits - ref["logits"]).abs()
    assert torch.equal(logits.argmax(-1), ref["logits"].argmax(-1)), "argmax differs at some position"
    assert diff.mean() <= 1e-4, f"mean abs diff {diff.mean():.3g}"
    if diff.max() > 1e-2:  # only an 8-bit rounding tie may move logits this far; name it
        ties = near_ties(model, ref["prompt"][None])
        bad = int(diff.max(-1).values.argmax())
        assert any(pos <= bad for _, pos, _ in ties), f"max diff {diff.max():.3g} at position {bad} without a tie"


@pytest.mark.parametrize("variant", VARIANTS)
def test_greedy_tokens_match_the_official_generate(converted, variant):
    ref = official(variant)
    model = load_model(converted[variant]).eval()
    out = model.generate(ref["prompt"][None], len(ref["greedy"]), temperature=0)
    assert out[0, len(ref["prompt"]):].tolist() == ref["greedy"].tolist()
    packed = load_model(converted[variant]).eval().pack()
    out = packed.generate(ref["prompt"][None], len(ref["greedy"]), temperature=0)
    assert out[0, len(ref["prompt"]):].tolist() == ref["greedy"].tolist()


def test_config_records_what_the_release_computes(converted):
    cfg = load_model(converted["lb"]).config
    release = json.loads((FIXTURES / "lb" / "config.json").read_text())
    assert (cfg.d_model, cfg.n_layers, cfg.vocab_size) == (release["hidden_size"], release["num_hidden_layers"],
                                                             release["vocab_size"])  # fmt: skip
    assert cfg.gate == "released" and cfg.forget_lower_bound and cfg.ternary_head
    assert cfg.bitlinear_eps == 1e-6 and cfg.act_rounding == "half_away"
    assert not load_model(converted["nolb"]).config.forget_lower_bound


def test_gate_proj_keeps_one_shared_scale(converted):
    """The GLU's fused w_in is the release's gate_proj: one matrix, one absmean scale for both halves."""
    release = load_file(str(FIXTURES / "lb" / "model.safetensors"))
    model = load_model(converted["lb"])
    w = release["model.layers.0.mlp.gate_proj.weight"]
    assert torch.equal(model.layers[0].mlp.w_in.weight, w)
    _, s_w = model.layers[0].mlp.w_in.ternary_weight()
    assert torch.allclose(s_w, 1 / w.abs().mean())


# -- other release layouts -----------------------------------------------------------------
def _copy_release(tmp_path: Path, variant: str = "lb") -> Path:
    dst = tmp_path / f"release_{variant}"
    dst.mkdir(parents=True)
    shutil.copy(FIXTURES / variant / "config.json", dst / "config.json")
    return dst


def _state(variant: str = "lb") -> dict[str, torch.Tensor]:
    return load_file(str(FIXTURES / variant / "model.safetensors"))


def _assert_same_model(a: Path, b: Path) -> None:
    sa, sb = load_model(a).state_dict(), load_model(b).state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_sharded_safetensors_with_index(tmp_path, converted):
    src = _copy_release(tmp_path)
    state = _state()
    names = sorted(state)
    shards = {"model-00001-of-00002.safetensors": names[: len(names) // 2],
              "model-00002-of-00002.safetensors": names[len(names) // 2:]}  # fmt: skip
    for file, keys in shards.items():
        save_file({k: state[k] for k in keys}, str(src / file))
    index = {"metadata": {}, "weight_map": {k: f for f, keys in shards.items() for k in keys}}
    (src / "model.safetensors.index.json").write_text(json.dumps(index))
    convert_hgrn_bit(src, tmp_path / "out")
    _assert_same_model(tmp_path / "out", converted["lb"])
    (src / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(ConversionError, match="model-00002-of-00002.safetensors.*missing"):
        convert_hgrn_bit(src, tmp_path / "out2")


def test_pytorch_model_bin_weights_only(tmp_path, converted):
    src = _copy_release(tmp_path)
    torch.save(_state(), src / "pytorch_model.bin")
    convert_hgrn_bit(src, tmp_path / "out")
    _assert_same_model(tmp_path / "out", converted["lb"])
    # a pickle that is not a plain state dict is refused by weights_only loading
    torch.save({"w": torch.zeros(1), "obj": Path("x")}, src / "pytorch_model.bin")
    with pytest.raises(ConversionError, match="pytorch_model.bin"):
        convert_hgrn_bit(src, tmp_path / "out2")


def test_bf16_release_converts_to_fp32(tmp_path):
    src = _copy_release(tmp_path)
    state = {k: v.to(torch.bfloat16) for k, v in _state().items()}
    save_file(state, str(src / "model.safetensors"))
    model = convert_hgrn_bit(src, tmp_path / "out")
    assert model.embed.weight.dtype == torch.float32
    assert torch.equal(model.embed.weight, state["model.embeddings.weight"].float())


def test_tied_head_is_copied_from_the_embedding(tmp_path):
    src = _copy_release(tmp_path)
    cfg = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**cfg, "tie_word_embeddings": True}))
    state = _state()
    del state["lm_head.weight"]
    save_file(state, str(src / "model.safetensors"))
    model = load_model(convert_hgrn_bit(src, tmp_path / "out") and tmp_path / "out")
    assert torch.equal(model.lm_head.weight, state["model.embeddings.weight"])
    assert model.config.tie_embeddings


def test_tokenizer_json_is_carried_over(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    from matmulfree.data import load_tokenizer

    src = _copy_release(tmp_path)
    save_file(_state(), str(src / "model.safetensors"))
    tok = Tokenizer(models.WordLevel({"hello": 0, "world": 1, "[UNK]": 2}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(src / "tokenizer.json"))
    convert_hgrn_bit(src, tmp_path / "out")
    assert load_tokenizer(tmp_path / "out").encode("hello world") == [0, 1]


# -- refusals -------------------------------------------------------------------------------
def _release_with(tmp_path: Path, config_patch: dict | None = None, state_patch=None) -> Path:
    src = _copy_release(tmp_path)
    cfg = json.loads((src / "config.json").read_text())
    cfg.update(config_patch or {})
    (src / "config.json").write_text(json.dumps(cfg))
    state = _state()
    if state_patch:
        state_patch(state)
    save_file(state, str(src / "model.safetensors"))
    return src


@pytest.mark.parametrize("patch, message", [
    ({"model_type": "llama"}, r"model_type 'llama'.*expected 'hgrn_bit'"),
    ({"use_short_conv": True}, r"config key 'use_short_conv'"),
    ({"expand_ratio": 2}, r"config key 'expand_ratio'"),
    ({"attn_mode": "chunk"}, r"config key 'attn_mode'"),
    ({"num_heads": 3}, r"config key 'num_heads'"),
])  # fmt: skip
def test_unrepresentable_configs_are_refused(tmp_path, patch, message):
    with pytest.raises(ConversionError, match=message):
        convert_hgrn_bit(_release_with(tmp_path, patch), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_num_heads_is_only_a_reshape():
    cfg = json.loads((FIXTURES / "lb" / "config.json").read_text())
    assert config_from_release({**cfg, "num_heads": 4}) == config_from_release(cfg)


def test_missing_extra_and_misshapen_tensors_name_file_and_tensor(tmp_path):
    name = "model.layers.1.attn.g_norm.weight"
    src = _release_with(tmp_path / "a", state_patch=lambda s: s.pop(name))
    with pytest.raises(ConversionError, match=rf"{name}.*missing from model.safetensors"):
        convert_hgrn_bit(src, tmp_path / "out")
    src = _release_with(tmp_path / "b", state_patch=lambda s: s.update({"model.layers.0.attn.h_conv1d.weight":
                                                                        torch.zeros(32, 1, 4)}))  # fmt: skip
    with pytest.raises(ConversionError, match=r"model.safetensors: tensor 'model.layers.0.attn.h_conv1d.weight' has "
                                              "no counterpart"):  # fmt: skip
        convert_hgrn_bit(src, tmp_path / "out")
    src = _release_with(tmp_path / "c", state_patch=lambda s: s.update({"lm_head.weight": torch.zeros(256, 16)}))
    with pytest.raises(ConversionError, match=r"model.safetensors: tensor 'lm_head.weight' has shape \(256, 16\)"):
        convert_hgrn_bit(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_truncated_and_corrupt_files_are_named(tmp_path):
    src = _release_with(tmp_path)
    data = (src / "model.safetensors").read_bytes()
    (src / "model.safetensors").write_bytes(data[: len(data) - 1000])
    with pytest.raises(ConversionError, match=r"model.safetensors.*(truncated|corrupt)"):
        convert_hgrn_bit(src, tmp_path / "out")
    (src / "model.safetensors").write_bytes(b"garbage" * 10)
    with pytest.raises(ConversionError, match=r"model.safetensors: unreadable or truncated"):
        convert_hgrn_bit(src, tmp_path / "out")
    (src / "config.json").write_text("{not json")
    with pytest.raises(ConversionError, match=r"config.json: not valid JSON"):
        convert_hgrn_bit(src, tmp_path / "out")
    (src / "config.json").unlink()
    with pytest.raises(ConversionError, match=r"config.json: missing"):
        convert_hgrn_bit(src, tmp_path / "out")


def test_cli_convert_and_its_errors(tmp_path, capsys):
    assert main(["convert", "hgrn-bit", str(FIXTURES / "nolb"), str(tmp_path / "out")]) == 0
    assert "converted" in capsys.readouterr().out
    assert load_model(tmp_path / "out").config.gate == "released"
    src = _release_with(tmp_path / "bad", {"model_type": "rwkv"})
    assert main(["convert", "hgrn-bit", str(src), str(tmp_path / "out2")]) == 2
    assert "expected 'hgrn_bit'" in capsys.readouterr().err


# -- half-away rounding ---------------------------------------------------------------------
def test_round_half_away_from_zero():
    t = torch.tensor([2.5, -2.5, 1.5, -1.5, 0.5, -0.5, 0.49999997, 18.499996, 3.2, -3.7, 127.0])
    assert round_activation(t, "half_away").tolist() == [3, -3, 2, -2, 1, -1, 0, 18, 3, -4, 127]
    assert round_activation(t, "half_even").tolist() == [2, -2, 2, -2, 0, -0, 0, 18, 3, -4, 127]
    with pytest.raises(ValueError, match="half_up"):
        round_activation(t, "half_up")


def test_c_kernel_honours_half_away_rounding():
    """The C quantization rounds exact ties like :func:`round_activation` in both modes."""
    from matmulfree.inference import ckernel
    from matmulfree.inference.cpu import lin_struct

    kernel, reason = ckernel.load()
    if kernel is None:
        pytest.skip(f"C kernel unavailable: {reason}")
    K, N = 64, 16
    x = ((torch.arange(K) - 32).float() + 0.5) / 254  # absmax 31.5/254 ... with x[0] below pinned to 0.5
    x[0] = 0.5  # s_x = 127 / 0.5 = 254 exactly, so x * s_x = k + 0.5: ties everywhere
    x = x.reshape(1, K)
    s_x = activation_scale(x)
    assert float(s_x) == 254.0 and ((x * s_x)[0, 1:] % 1 == 0.5).all()
    torch.manual_seed(0)
    w_q = torch.randint(-1, 2, (N, K), dtype=torch.int8)
    gain = torch.ones(K)
    for path in kernel.supported_paths():  # every dispatch path, each with its own weight layout
        tiles = ckernel.pack_tiles(w_q, kernel.lut_layout(path))
        lins = (ckernel.Lin * 1)(lin_struct(tiles, gain, 2.0, 1e-6, N, K))
        results = {}
        for rounding in ("half_even", "half_away"):
            got = kernel.group_forward(lins, x, torch.ones(1), N, path=path, rounding=rounding)[0]
            q = torch.clamp(round_activation(x * s_x, rounding), -128, 127)
            want = torch.nn.functional.linear(q, w_q.float()) / (s_x * 2.0)
            assert torch.equal(got, want), (path, rounding)
            results[rounding] = got
        assert not torch.equal(results["half_even"], results["half_away"]), path


# -- downstream: every tool takes a converted checkpoint ---------------------------------------
def test_cpu_decoders_reproduce_the_official_greedy_tokens(converted):
    from matmulfree.inference.cpu import PackedCPUDecoder
    from matmulfree.inference.cpu_mlgru import EngineUnavailable, MLGRUEngine

    ref = official("lb")
    model = load_model(converted["lb"]).eval().pack()
    prompt, n = ref["prompt"][None], len(ref["greedy"])
    exact = PackedCPUDecoder(model)
    logits, state = exact.prefill(prompt)
    tokens = []
    for _ in range(n):
        token = logits.argmax(-1)
        tokens.append(int(token))
        want, _ = model.step(token, state)
        logits, state = exact.step(token, state)
        assert torch.equal(logits, want)  # bit-equal to the reference step
    assert tokens == ref["greedy"].tolist()
    try:
        engine = MLGRUEngine(model, threads=1)
    except EngineUnavailable as e:
        pytest.skip(str(e))
    out = engine.generate(prompt, n, temperature=0)
    assert out[0, prompt.shape[1]:].tolist() == ref["greedy"].tolist()


def test_info_eval_generate_cli_on_a_converted_checkpoint(converted, tmp_path, capsys):
    ckpt = str(converted["nolb"])
    assert main(["info", ckpt, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["config"]["act_rounding"] == "half_away"
    text = tmp_path / "t.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 40)
    assert main(["eval", ckpt, "--data", f"text:{text}", "--split", "train", "--seq-len", "32", "--batch-size", "4",
                 "--json"]) == 0
    assert "loss" in capsys.readouterr().out
    for extra in ([], ["--packed"], ["--packed", "--engine", "torch"]):
        assert main(["generate", ckpt, "--prompt", "ab", "--max-new-tokens", "5", "--temperature", "0", *extra]) == 0
    outs = capsys.readouterr().out.splitlines()
    assert len(set(outs)) == 1  # the same greedy text from every engine


def test_pack_to_2bit_and_reload(converted, tmp_path):
    from matmulfree.checkpoint import save_model

    ref = official("lb")
    model = load_model(converted["lb"]).eval()
    save_model(model, tmp_path / "p", packed=True)
    packed = load_model(tmp_path / "p", packed=True).eval()
    assert packed.is_packed
    with torch.no_grad():
        a, b = model(ref["prompt"][None]).logits, packed(ref["prompt"][None]).logits
    assert torch.equal(a.argmax(-1), b.argmax(-1)) and (a - b).abs().max() < 1e-4


def test_power_cpu_and_ops_on_a_converted_checkpoint(converted, tmp_path):
    out = tmp_path / "power"
    rc = main(["power", str(converted["lb"]), "--targets", "cpu,ops", "--context", "4", "--new-tokens", "4",
               "--warmup", "1", "--min-seconds", "0.05", "--idle-seconds", "0.05", "--out", str(out)])
    assert rc == 0 and any(out.iterdir())


def test_fpga_export_of_a_converted_checkpoint(converted, tmp_path):
    pytest.importorskip("numpy")
    rc = main(["export", str(converted["lb"]), str(tmp_path / "hls"), "--target", "vitis", "--tb-tokens", "4"])
    assert rc == 0 and (tmp_path / "hls").is_dir()


@pytest.mark.parametrize("target", ["ecp5", "ice40"])
def test_rtl_export_names_the_memory_limit_for_a_370m_model(tmp_path, capsys, target):
    """The RTL targets refuse a model that cannot fit before any conversion work (config only)."""
    pytest.importorskip("amaranth")
    from matmulfree.config import preset

    ckpt = tmp_path / "m370"
    ckpt.mkdir()
    (ckpt / "config.json").write_text(json.dumps(preset("370m").to_dict()))
    assert main(["export", str(ckpt), str(tmp_path / "out"), "--target", target]) == 2
    err = capsys.readouterr().err
    assert "on-chip memory" in err and "vocab=32000" in err and "block RAMs" in err


def test_generate_refuses_a_vocabulary_larger_than_the_tokenizer(tmp_path, capsys):
    src = _release_with(tmp_path, {"vocab_size": 300}, lambda s: s.update(
        {"model.embeddings.weight": torch.randn(300, 32), "lm_head.weight": torch.randn(300, 32)}))
    convert_hgrn_bit(src, tmp_path / "out")
    assert main(["generate", str(tmp_path / "out"), "--max-new-tokens", "2"]) == 2
    assert "exceeds its tokenizer" in capsys.readouterr().err
