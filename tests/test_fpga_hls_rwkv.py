"""Vitis HLS export of RWKV-4 models: folder contents, bit-exact g++ C-simulation against the
integer RWKV reference, memory-fit refusal with the numbers, and the RTL targets' refusal."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from matmulfree.fpga import convert_rwkv, intref_rwkv
from matmulfree.fpga.hls import ExportOptions, export_vitis, run_csim
from matmulfree.fpga.hls.golden import reference_sequence
from matmulfree.fpga.hls.layout_rwkv import MAGIC_RWKV, RWKVLayout
from matmulfree.fpga.hls.resources import kernel_memory_bits

import matmulfree
from matmulfree.checkpoint import save_model
from matmulfree.cli import main

torch.set_num_threads(1)
needs_gxx = pytest.mark.skipif(shutil.which("g++") is None,
                               reason="g++ not installed: the C-simulation needs a C++ compiler")


def _rwkv(seed: int = 0, **kw):
    """A small RWKV-4 model with non-trivial LayerNorms and mixes (random, not trained)."""
    torch.manual_seed(seed)
    cfg = matmulfree.preset("fpga", architecture="rwkv", **{"d_model": 64, "n_layers": 2, "intermediate_size": 128,
                                                             **kw})
    model = matmulfree.build_model(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("ln1.weight", "ln2.weight", "norm.weight")):
                p.uniform_(-1.5, 1.7)
            elif name.endswith(("ln1.bias", "ln2.bias", "norm.bias")):
                p.uniform_(-0.5, 0.5)
            elif "time_mix" in name:
                p.uniform_(-0.1, 1.1)
    return model


@pytest.fixture(scope="module")
def trained_export(tmp_path_factory):
    """A briefly trained RWKV checkpoint exported through the CLI (calibrated formats)."""
    from tests.test_fpga_intref import _text_ids, _train

    root = tmp_path_factory.mktemp("hls_rwkv")
    model = _train(matmulfree.preset("fpga", architecture="rwkv", d_model=64, n_layers=2, intermediate_size=128),
                   steps=40)
    save_model(model, root / "ckpt")
    (root / "calib.txt").write_bytes(bytes(_text_ids(2000, 9).astype(np.uint8)))
    out = root / "out"
    rc = main(["export", str(root / "ckpt"), str(out), "--target", "vitis", "--tb-tokens", "64",
               "--calib-text", str(root / "calib.txt"), "--tb-prompt", "the cat sat on the mat. a dog ran"])
    assert rc == 0
    return model, root, out


def test_rwkv_export_folder(trained_export):
    model, root, out = trained_export
    kernel = (out / "firmware/mmf_kernel.cpp").read_text()
    assert "RWKV-4" in kernel and "wkv_channel" in kernel and "@@" not in kernel
    params = (out / "firmware/mmf_params.h").read_text()
    assert "#define MMF_ARCH_RWKV 1" in params and "#define MMF_RWKV_GATE 0" in params
    assert "MMF_EXP_HI[512]" in (out / "firmware/mmf_tables.h").read_text()
    words = np.fromfile(out / "weights/mmf_weights.bin", dtype="<u4")
    assert words[0] == MAGIC_RWKV and list(words[2:6]) == [64, 2, 256, 128]
    # The blob is the integer reference's parameters, and the golden data its run.
    with np.load(out / "weights/params.npz") as z:
        P = {k: (int(v) if v.ndim == 0 else v) for k, v in z.items()}
    assert P["arch"] == intref_rwkv.ARCH_RWKV
    np.testing.assert_array_equal(RWKVLayout(P).pack(), words)
    man = {s["name"]: s for s in json.loads((out / "weights/manifest.json").read_text())["sections"]}
    sec = man["layers.1.ffn.value.w_packed"]
    block = words[sec["offset_words"]: sec["offset_words"] + sec["words"]].reshape(sec["shape"][0], -1)
    codes = (block[:, :, None] >> (2 * np.arange(16, dtype=np.uint32))) & 3
    dec = np.select([codes == 1, codes == 3], [1, -1], 0).reshape(block.shape[0], -1)
    w_q, _ = model.layers[1].ffn.value.ternary_weight()
    np.testing.assert_array_equal(dec[:, :128], w_q.numpy())
    summary = json.loads((out / "export.json").read_text())
    assert summary["model"]["architecture"] == "rwkv" and "ln_frac" in summary["formats"]
    prompt = np.array([b % 256 for b in b"the cat sat on the mat. a dog ran"][:32])
    toks, _ = reference_sequence(P, prompt, 64)
    assert summary["golden"]["tokens"] == toks.tolist()
    assert summary["memory_bits"]["kernel_on_chip"]["total"] == kernel_memory_bits(P, False)["total"]
    assert "RWKV-4 with ternary projections" in (out / "README.md").read_text()


@needs_gxx
def test_rwkv_csim_bit_exact(trained_export, capsys):
    _, _, out = trained_export
    rc = main(["fpga", "csim", str(out)])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "csim PASS: 64 token steps; tokens 64/64, logits 16384/16384 bit-exact" in text
    csim = json.loads((out / "export.json").read_text())["csim"]
    assert csim["warnings"] == 0 and csim["reset_mismatches"] == 0


@needs_gxx
def test_rwkv_csim_detects_a_wrong_state_rule(trained_export, tmp_path):
    """The check can fail: a kernel whose WKV drops one rounding step is caught."""
    _, _, src = trained_export
    out = tmp_path / "bad"
    shutil.copytree(src, out, ignore=shutil.ignore_patterns("build"))
    k = (out / "firmware/mmf_kernel.cpp").read_text()
    bad = k.replace("bb = saturate(round_shift(e1 * bb + e2 * EXP_ONE, 16), MMF_SUM_BITS);",
                    "bb = saturate((e1 * bb + e2 * EXP_ONE) >> 16, MMF_SUM_BITS);")
    assert bad != k
    (out / "firmware/mmf_kernel.cpp").write_text(bad)
    res = run_csim(out)
    assert not res.passed and res.logits_ok < res.logits_total


@needs_gxx
def test_rwkv_gate_stream_odd_sizes(tmp_path):
    model = _rwkv(seed=3, d_model=40, intermediate_size=72, vocab_size=97, rwkv_gate=True)
    P = convert_rwkv.convert(model)
    out = tmp_path / "stream"
    s = export_vitis(P, out, ExportOptions(stream_weights=True, tb_tokens=40, row_parallel=8))
    assert s["memory_bits"]["kernel_on_chip"]["weights"] == 0
    assert "#define MMF_RWKV_GATE 1" in (out / "firmware/mmf_params.h").read_text()
    res = run_csim(out)
    assert res.passed, res.output[-2000:]
    assert (res.steps, res.tokens_ok, res.logits_ok, res.logits_total) == (40, 40, 40 * 97, 40 * 97)
    out2 = tmp_path / "onchip"
    export_vitis(P, out2, ExportOptions(tb_tokens=16, row_parallel=4))
    res = run_csim(out2)
    assert res.passed and res.warnings == 0, res.output[-2000:]


def test_rwkv_memory_refusal(tmp_path, capsys):
    model = _rwkv()
    P = convert_rwkv.convert(model)
    full = kernel_memory_bits(P, stream_weights=False)["total"]
    other = kernel_memory_bits(P, stream_weights=True)["total"]
    assert full - other == 32 * sum(P[n + ".d_out"] * -(-P[n + ".d_in"] // 16)
                                    for n in intref_rwkv.bitlinear_names(2, False))
    ckpt = tmp_path / "ckpt"
    save_model(model, ckpt)
    cap = (full + other) // 2
    args = ["export", str(ckpt), str(tmp_path / "o"), "--target", "vitis", "--onchip-bits", str(cap)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"needs {full:,} bits of on-chip memory" in err and "--stream-weights" in err
    assert f"has {cap:,} bits (given by --onchip-bits)" in err and not (tmp_path / "o").exists()
    assert main(args + ["--stream-weights", "--tb-tokens", "4"]) == 0
    capsys.readouterr()


def test_rtl_targets_refuse_rwkv(tmp_path, capsys):
    pytest.importorskip("amaranth")
    ckpt = tmp_path / "ckpt"
    save_model(_rwkv(), ckpt)
    assert main(["export", str(ckpt), str(tmp_path / "o"), "--target", "ecp5", "--no-build"]) == 2
    err = capsys.readouterr().err
    assert "implements the MLGRU architecture ('matmulfree') only" in err and "'rwkv'" in err
    assert "d_model=64, 2 layers, vocabulary 256" in err and "--target vitis" in err
    n_w = 2 * (4 * 64 * 64 + 64 * 64 + 2 * 64 * 128) + 256 * 64
    assert f"{n_w:,} ternary weights" in err and not (tmp_path / "o").exists()
