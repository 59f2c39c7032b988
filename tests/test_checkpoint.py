"""save / load round trips and the documented errors for broken directories."""

import json

import pytest
import torch

import matmulfree
from matmulfree import CheckpointError, MatMulFreeLM, TransformerLM, build_model, config_from_dict
from matmulfree.checkpoint import CONFIG_FILE, PACKED_WEIGHTS_FILE, WEIGHTS_FILE, atomic_write

CFG = dict(vocab_size=50, d_model=16, n_layers=2, intermediate_size=32)


def make(arch):
    torch.manual_seed(0)
    extra = {"n_heads": 2} if arch == "transformer" else {"forget_lower_bound": True}
    return build_model(config_from_dict({"architecture": arch, **CFG, **extra}))


@pytest.mark.parametrize("arch,cls", [("matmulfree", MatMulFreeLM), ("transformer", TransformerLM)])
def test_roundtrip_is_bit_exact(tmp_path, arch, cls):
    model = make(arch)
    matmulfree.save(model, tmp_path)
    loaded = matmulfree.load(tmp_path)
    assert type(loaded) is cls and loaded.config == model.config
    for (k1, v1), (k2, v2) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k1 == k2 and torch.equal(v1, v2)
    ids = torch.randint(0, 50, (1, 9))
    assert torch.equal(model(ids).logits, loaded(ids).logits)


def test_packed_file_roundtrip(tmp_path):
    model = make("matmulfree")
    matmulfree.save(model, tmp_path, packed=True)
    packed = matmulfree.load(tmp_path, packed=True)
    assert packed.is_packed and not model.is_packed
    ids = torch.randint(0, 50, (2, 7))
    assert torch.equal(packed(ids).logits, model(ids).logits)
    full = (tmp_path / WEIGHTS_FILE).stat().st_size
    assert (tmp_path / PACKED_WEIGHTS_FILE).stat().st_size < full / 3


def test_missing_weight_file_is_named(tmp_path):
    matmulfree.save(make("matmulfree"), tmp_path)
    (tmp_path / WEIGHTS_FILE).unlink()
    with pytest.raises(CheckpointError, match=r"model\.safetensors: missing"):
        matmulfree.load(tmp_path)


def test_truncated_weight_file_is_named(tmp_path):
    matmulfree.save(make("matmulfree"), tmp_path)
    path = tmp_path / WEIGHTS_FILE
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=r"model\.safetensors: unreadable or truncated"):
        matmulfree.load(tmp_path)


def test_weights_not_matching_config(tmp_path):
    matmulfree.save(make("matmulfree"), tmp_path)
    cfg = json.loads((tmp_path / CONFIG_FILE).read_text())
    cfg["d_model"] = 24
    (tmp_path / CONFIG_FILE).write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="has shape"):
        matmulfree.load(tmp_path)
    cfg["d_model"], cfg["n_layers"] = 16, 3
    (tmp_path / CONFIG_FILE).write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="missing"):
        matmulfree.load(tmp_path)


@pytest.mark.parametrize(
    "edit,message",
    [
        (lambda c: c.update(architecture="mamba"), "unknown architecture 'mamba'"),
        (lambda c: c.update(n_expert=4), "unknown field"),
        (lambda c: c.update(n_layers="two"), "n_layers"),
    ],
)
def test_bad_config_is_named(tmp_path, edit, message):
    matmulfree.save(make("matmulfree"), tmp_path)
    cfg = json.loads((tmp_path / CONFIG_FILE).read_text())
    edit(cfg)
    (tmp_path / CONFIG_FILE).write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=message) as err:
        matmulfree.load(tmp_path)
    assert "config.json" in str(err.value)


def test_invalid_json_and_missing_config(tmp_path):
    with pytest.raises(CheckpointError, match="config.json: missing"):
        matmulfree.load(tmp_path)
    (tmp_path / CONFIG_FILE).write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        matmulfree.load(tmp_path)


def test_weights_are_not_pickled(tmp_path):
    matmulfree.save(make("matmulfree"), tmp_path)
    head = (tmp_path / WEIGHTS_FILE).read_bytes()[:8]
    header_len = int.from_bytes(head, "little")
    header = json.loads((tmp_path / WEIGHTS_FILE).read_bytes()[8 : 8 + header_len])
    assert header["__metadata__"]["format"] == "pt"


def test_atomic_write_keeps_old_file_on_crash(tmp_path):
    target = tmp_path / "f.bin"
    target.write_bytes(b"good")

    def crash(p):
        p.write_bytes(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, crash)
    assert target.read_bytes() == b"good"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]
