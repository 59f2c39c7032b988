"""Warm start (--init-from): the tensor table, function-preserving growth, resize modes, errors."""

import json

import pytest
import torch
import yaml

from matmulfree.checkpoint import save_model
from matmulfree.cli import main
from matmulfree.config import MatMulFreeConfig, TransformerConfig
from matmulfree.models import build_model
from matmulfree.recipe import recipe_from_dict
from matmulfree.train import TrainingError, train
from matmulfree.warm_start import WarmStartError, warm_start
from tests.test_train import corpus, tiny_recipe  # noqa: F401  (fixture)


@pytest.fixture(scope="module")
def source(corpus, tmp_path_factory):  # noqa: F811
    """A briefly trained one-block model (runs/src)."""
    out = tmp_path_factory.mktemp("warm") / "src"
    train(recipe_from_dict(tiny_recipe(corpus, train={"steps": 8}), "src"), out)
    return out


def grow(corpus, out, source, allow_resize=None, **model):  # noqa: F811
    recipe = tiny_recipe(corpus, model=model, train={"steps": 1, "warmup_steps": 0})
    train(recipe_from_dict(recipe, "grown"), out, init_from=source, allow_resize=allow_resize)
    return json.loads((out / "warm_start.json").read_text())


def test_added_block_keeps_the_function(corpus, source, tmp_path, capsys):  # noqa: F811
    record = grow(corpus, tmp_path / "deeper", source / "final", n_layers=2)
    assert record["function_preserved"] and record["counts"]["dropped"] == record["counts"]["resized"] == 0
    loaded = {t["name"] for t in record["tensors"] if t["status"] == "loaded"}
    new = {t["name"] for t in record["tensors"] if t["status"] == "new"}
    assert "layers.0.mixer.f_proj.weight" in loaded and all(n.startswith("layers.1.") for n in new)
    assert record["step0_val_loss"] == pytest.approx(record["source_val_loss"], rel=1e-6)
    err = capsys.readouterr().err
    assert "zeroed: added block is the identity" in err and "warm start check" in err
    assert "new      layers.*.mixer.o_proj.weight" in err
    meta = json.loads((tmp_path / "deeper" / "metrics.json").read_text())
    assert meta["init_from"]["source"] == str(source / "final")
    state = json.loads((tmp_path / "deeper/checkpoints/step-00000001/trainer_state.json").read_text())
    assert state["init_from"]["function_preserved"] is True


def test_added_forget_bound_and_changed_gate(corpus, source, tmp_path):  # noqa: F811
    bound = grow(corpus, tmp_path / "bound", source, forget_lower_bound=True)  # a run folder works too
    assert bound["function_preserved"], bound["reasons"]
    assert bound["step0_val_loss"] == pytest.approx(bound["source_val_loss"], rel=1e-5)
    gate = grow(corpus, tmp_path / "gate", source / "final", gate="released")
    assert not gate["function_preserved"] and "gate" in " ".join(gate["reasons"])
    assert gate["step0_val_loss"] != pytest.approx(gate["source_val_loss"], rel=1e-4)
    assert [t["name"] for t in gate["tensors"] if t["status"] == "new"] == ["layers.0.mixer.g_norm.weight"]


def test_shape_changes_need_a_resize_mode(tmp_path):
    small = build_model(MatMulFreeConfig(vocab_size=40, d_model=16, n_layers=1, intermediate_size=32))
    save_model(small, tmp_path / "small")
    wider = build_model(MatMulFreeConfig(vocab_size=48, d_model=16, n_layers=1, intermediate_size=32))
    with pytest.raises(WarmStartError, match=r"embed.weight \(40, 16\) -> \(48, 16\).*--init-from-allow-resize"):
        warm_start(wider, tmp_path / "small")
    fresh = wider.embed.weight.detach().clone()
    report = warm_start(wider, tmp_path / "small", "overlap")
    assert torch.equal(wider.embed.weight[:40], small.embed.weight)
    assert torch.equal(wider.embed.weight[40:], fresh[40:])  # the rest keeps its initialisation
    assert {r.name for r in report.rows if r.status == "resized"} == {"embed.weight", "lm_head.weight"}
    assert not report.preserved and "resized" in report.table()
    other = build_model(MatMulFreeConfig(vocab_size=48, d_model=16, n_layers=1, intermediate_size=32))
    before = other.embed.weight.detach().clone()
    warm_start(other, tmp_path / "small", "fresh")
    assert torch.equal(other.embed.weight, before)
    with pytest.raises(WarmStartError, match="expected one of"):
        warm_start(other, tmp_path / "small", "stretch")


def test_transformer_growth_and_bad_sources(tmp_path):
    cfg = dict(vocab_size=32, d_model=16, n_heads=2, intermediate_size=32)
    src = build_model(TransformerConfig(n_layers=1, **cfg))
    save_model(src, tmp_path / "t1")
    deep = build_model(TransformerConfig(n_layers=2, **cfg))
    report = warm_start(deep, tmp_path / "t1")
    assert report.preserved
    ids = torch.randint(0, 32, (2, 9))
    torch.testing.assert_close(deep(ids).logits, src.eval()(ids).logits, rtol=0, atol=0)
    with pytest.raises(WarmStartError, match="no such file"):
        warm_start(deep, tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(WarmStartError, match="not a model directory"):
        warm_start(deep, tmp_path / "empty")
    packed = build_model(MatMulFreeConfig(vocab_size=32, d_model=16, n_layers=1, intermediate_size=32)).pack()
    save_model(packed, tmp_path / "packed")
    with pytest.raises(WarmStartError, match="packed 2-bit"):
        warm_start(build_model(MatMulFreeConfig(vocab_size=32, d_model=16, n_layers=1, intermediate_size=32)),
                   tmp_path / "packed")


def test_cli_init_from(corpus, source, tmp_path, capsys):  # noqa: F811
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe(corpus, model={"d_model": 48}, train={"steps": 2})))
    assert main(["train", str(path), "--out", str(tmp_path / "a"), "--init-from", str(source / "final")]) == 2
    assert "--init-from-allow-resize" in capsys.readouterr().err
    assert main(["train", str(path), "--out", str(tmp_path / "b"), "--init-from", str(source / "final"),
                 "--init-from-allow-resize", "overlap"]) == 0
    assert json.loads((tmp_path / "b/warm_start.json").read_text())["counts"]["resized"] > 0
    with pytest.raises(TrainingError, match="use one of them"):
        train(recipe_from_dict(tiny_recipe(corpus), "r"), tmp_path / "b", resume=True, init_from=source)
