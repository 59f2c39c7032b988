"""transformers integration: Auto classes, save/load, generate (greedy, sampling, batches), the
state cache, tokenizers, and ``matmulfree export hf`` / ``matmulfree import hf``."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("transformers", reason="the [hf] extra (transformers) is not installed")

from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer  # noqa: E402

import matmulfree.hf  # noqa: E402
from matmulfree.checkpoint import load_model, save_model  # noqa: E402
from matmulfree.cli import main  # noqa: E402
from matmulfree.config import CONFIG_CLASSES, MatMulFreeConfig, TransformerConfig  # noqa: E402
from matmulfree.data.tokenizer import load_tokenizer, train_bpe  # noqa: E402
from matmulfree.models import MODEL_CLASSES, build_model  # noqa: E402
from matmulfree.models.base import LanguageModel  # noqa: E402

SHAPE = dict(vocab_size=256, d_model=32, n_layers=2, intermediate_size=64)
CONFIGS = {
    "matmulfree": lambda **kw: MatMulFreeConfig(**{**SHAPE, **kw}),
    "transformer": lambda **kw: TransformerConfig(**{**SHAPE, "n_heads": 2, **kw}),
}
ARCHS = sorted(CONFIGS)
PRINTABLE = [10] + list(range(32, 127))  # newline and printable ASCII


def ascii_only(model: LanguageModel) -> LanguageModel:
    """Zero the head rows of every other byte: their logits are 0 and never the greedy pick, so the
    generated text is printable and the CLI's streamed text compares byte for byte."""
    keep = torch.zeros(model.config.vocab_size, dtype=torch.bool)
    keep[PRINTABLE] = True
    with torch.no_grad():
        model.lm_head.weight[~keep] = 0
    return model


@pytest.fixture(scope="module", params=ARCHS)
def exported(request, tmp_path_factory):
    """(architecture, our model, checkpoint dir, exported transformers dir)."""
    arch = request.param
    torch.manual_seed(0)
    model = ascii_only(build_model(CONFIGS[arch]())).eval()
    root = tmp_path_factory.mktemp(f"hf-{arch}")
    save_model(model, root / "ckpt")
    assert main(["export", "hf", str(root / "ckpt"), str(root / "hf")]) == 0
    return arch, model, root / "ckpt", root / "hf"


def test_every_registered_architecture_has_auto_classes():
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    classes = matmulfree.hf.register()
    assert set(classes) == set(MODEL_CLASSES) and set(MODEL_CLASSES) <= set(CONFIG_CLASSES)
    types = {matmulfree.hf.hf_model_type(arch) for arch in MODEL_CLASSES}
    assert {"matmulfree", "matmulfree_transformer"} <= types
    for arch in MODEL_CLASSES:
        model_type = matmulfree.hf.hf_model_type(arch)
        assert CONFIG_MAPPING[model_type] is matmulfree.hf.CONFIG_CLASSES_HF[arch]
        config = AutoConfig.for_model(model_type)
        assert isinstance(AutoModelForCausalLM.from_config(config).model, MODEL_CLASSES[arch])


def test_config_fields_are_validated_by_our_config():
    cls = matmulfree.hf.CONFIG_CLASSES_HF["transformer"]
    with pytest.raises(ValueError, match="divisible by n_heads"):
        cls(d_model=30, n_heads=4)
    config = cls(d_model=64, n_heads=2)
    assert (config.hidden_size, config.num_hidden_layers, config.tie_word_embeddings) == (64, 4, False)


def test_export_folder_loads_with_auto_classes(exported):
    arch, model, _, hf_dir = exported
    files = {p.name for p in hf_dir.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= files
    assert not any(name.endswith((".bin", ".pt", ".pth")) for name in files)  # safetensors, never pickle
    assert json.loads((hf_dir / "config.json").read_text())["model_type"] == matmulfree.hf.hf_model_type(arch)
    hf_model = AutoModelForCausalLM.from_pretrained(hf_dir)  # no trust_remote_code
    assert type(hf_model).__name__ == "HF" + type(model).__name__
    ids = torch.tensor([list(b"to be or not")])
    assert torch.equal(hf_model(ids).logits, model(ids).logits)


def test_save_pretrained_round_trip(exported, tmp_path):
    _, model, _, hf_dir = exported
    hf_model = AutoModelForCausalLM.from_pretrained(hf_dir)
    hf_model.save_pretrained(tmp_path / "again")
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "again")
    for (name, a), b in zip(model.state_dict().items(), again.model.state_dict().values()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("engine", ["auto", "torch"])
def test_greedy_generate_equals_the_cli(exported, engine, capsys):
    _, _, ckpt, hf_dir = exported
    prompt, n = "The quick", 24
    capsys.readouterr()
    assert main(["generate", str(ckpt), "--prompt", prompt, "--max-new-tokens", str(n), "--temperature", "0",
                 "--engine", engine]) == 0
    cli_text = capsys.readouterr().out
    hf_model = AutoModelForCausalLM.from_pretrained(hf_dir)
    tok = AutoTokenizer.from_pretrained(hf_dir)
    ids = tok(prompt, return_tensors="pt").input_ids
    out = hf_model.generate(ids, max_new_tokens=n, do_sample=False)
    assert out.shape == (1, ids.shape[1] + n)
    assert cli_text == tok.decode(out[0]) + "\n"


def test_left_padded_batch_equals_each_row_alone(exported):
    _, model, _, hf_dir = exported
    hf_model = AutoModelForCausalLM.from_pretrained(hf_dir)
    tok = AutoTokenizer.from_pretrained(hf_dir)
    prompts = ["Hi", "Hello there", "abc"]
    batch = tok(prompts, return_tensors="pt", padding=True, padding_side="left")
    out = hf_model.generate(**batch, max_new_tokens=10, do_sample=False)
    for row, prompt in zip(out, prompts):
        alone = model.generate(torch.tensor([tok(prompt).input_ids]), 10, temperature=0)[0]
        assert row[-len(alone):].tolist() == alone.tolist()


def test_cache_size_is_constant_for_recurrent_models(exported):
    arch, _, _, hf_dir = exported
    hf_model = AutoModelForCausalLM.from_pretrained(hf_dir)
    ids = torch.tensor([list(b"once upon"), list(b"a time in")])
    sizes = {}
    for n in (4, 40):
        out = hf_model.generate(ids, max_new_tokens=n, do_sample=False, return_dict_in_generate=True)
        cache = out[matmulfree.hf.modeling.CACHE_KEY]
        assert isinstance(cache, matmulfree.hf.StateCache)
        sizes[n] = cache.nbytes()
    if arch == "transformer":
        assert sizes[40] > sizes[4]  # the KV cache grows with every token, as expected
    else:
        assert sizes[40] == sizes[4] == 2 * 2 * 32 * 4  # rows x layers x d_model x fp32


def test_sampling_top_k_top_p_and_seed(exported):
    _, model, _, hf_dir = exported
    hf_model = AutoModelForCausalLM.from_pretrained(hf_dir)
    ids = torch.tensor([list(b"xyz")] * 3)
    greedy = hf_model.generate(ids, max_new_tokens=8, do_sample=False)
    assert torch.equal(hf_model.generate(ids, max_new_tokens=8, do_sample=True, top_k=1), greedy)
    torch.manual_seed(1)
    a = hf_model.generate(ids, max_new_tokens=8, do_sample=True, top_k=20, top_p=0.9, temperature=1.5)
    torch.manual_seed(1)
    b = hf_model.generate(ids, max_new_tokens=8, do_sample=True, top_k=20, top_p=0.9, temperature=1.5)
    assert torch.equal(a, b) and a.shape == (3, 11)
    # every sampled token is among the 20 likeliest under our own model's logits
    logits = model(a[:, :-1]).logits[:, 2:]
    top = logits.topk(20, dim=-1).indices
    assert (top == a[:, 3:, None]).any(-1).all()


def test_tokenizers_load_with_auto_tokenizer(tmp_path):
    torch.manual_seed(0)
    model = build_model(CONFIGS["matmulfree"](vocab_size=300)).eval()
    bpe = train_bpe(iter(["the cat sat on the mat. " * 20, "a dog ran. " * 20]), 300)
    save_model(model, tmp_path / "ckpt")
    bpe.save(tmp_path / "ckpt")
    assert main(["export", "hf", str(tmp_path / "ckpt"), str(tmp_path / "hf")]) == 0
    tok = AutoTokenizer.from_pretrained(tmp_path / "hf")
    text = "the cat ran on a mat"
    assert tok(text).input_ids == bpe.encode(text) and tok.decode(bpe.encode(text)) == text
    assert tok.eos_token == "<|endoftext|>" and tok.eos_token_id == bpe.eos_id
    assert main(["import", "hf", str(tmp_path / "hf"), str(tmp_path / "back")]) == 0
    assert load_tokenizer(tmp_path / "back").encode(text) == bpe.encode(text)
    assert load_tokenizer(tmp_path / "back").spec == "bpe:300"


def test_byte_tokenizer_is_exact(exported):
    *_, hf_dir = exported
    tok = AutoTokenizer.from_pretrained(hf_dir)
    text = "héllo\n  wörld ✓"
    assert tok(text).input_ids == list(text.encode()) and tok.decode(list(text.encode())) == text


def test_import_round_trip_is_bit_exact(exported, tmp_path):
    _, model, ckpt, hf_dir = exported
    assert main(["import", "hf", str(hf_dir), str(tmp_path / "back")]) == 0
    back = load_model(tmp_path / "back")
    assert back.config == model.config
    for (name, a), b in zip(model.state_dict().items(), back.state_dict().values()):
        assert torch.equal(a, b), name
    assert load_tokenizer(tmp_path / "back").spec == "bytes"


def test_export_import_errors(exported, tmp_path, capsys):
    _, _, ckpt, hf_dir = exported
    capsys.readouterr()
    assert main(["import", "hf", str(ckpt), str(tmp_path / "x")]) == 2
    assert "already a matmulfree checkpoint" in capsys.readouterr().err
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "config.json").write_text(json.dumps({"model_type": "hgrn_bit"}))
    assert main(["import", "hf", str(foreign), str(tmp_path / "y")]) == 2
    err = capsys.readouterr().err
    assert "model_type 'hgrn_bit' is not one of ours" in err and "convert hgrn-bit" in err
    assert main(["import", "hf", str(tmp_path / "nowhere"), str(tmp_path / "z")]) == 2
    assert "config.json: missing" in capsys.readouterr().err
    assert main(["export", "hf", str(tmp_path / "nowhere"), str(tmp_path / "w")]) == 2
    assert "not a directory" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / "w").exists()
