"""Vitis HLS export (matmulfree.fpga.hls): folder contents, bit-exact g++ C-simulation against
the Python integer reference, memory-fit refusal and CLI errors."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
import torch
from matmulfree.fpga import intref
from matmulfree.fpga.hls import EXPORT_FILES, ExportOptions, export_vitis, run_csim
from matmulfree.fpga.hls.resources import kernel_memory_bits

import matmulfree
from matmulfree.checkpoint import save_model
from matmulfree.cli import main

torch.set_num_threads(1)
needs_gxx = pytest.mark.skipif(shutil.which("g++") is None,
                               reason="g++ not installed: the C-simulation needs a C++ compiler")


def _model(seed: int = 0, **kw):
    """A small random MatMulFreeLM with non-trivial norm gains (and lower bounds)."""
    torch.manual_seed(seed)
    cfg = matmulfree.preset("fpga", **{"d_model": 64, "n_layers": 2, "intermediate_size": 128, **kw})
    model = matmulfree.build_model(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(-1.5, 1.7)
            elif "lower_bound" in name:
                p.normal_(0.0, 1.0)
    return model


def _reference(P, prompt, steps):
    """Independent golden run: prompt, then greedy tokens, via IntModel.step."""
    im = intref.IntModel(P)
    state, tok, toks, logits = im.init_state(1), None, [], []
    for s in range(steps):
        lg, t, state = im.step(np.array([prompt[s] if s < len(prompt) else tok]), state)
        tok = int(t[0])
        toks.append(tok)
        logits.append(lg[0])
    return toks, np.stack(logits)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("hls")
    model = _model()
    save_model(model, root / "ckpt")
    out = root / "out"
    rc = main(["export", str(root / "ckpt"), str(out), "--target", "vitis", "--tb-tokens", "64",
               "--tb-prompt", "To be, or not to be, that is the question"])
    assert rc == 0
    return model, out


def test_export_folder_contents(exported):
    model, out = exported
    for rel in EXPORT_FILES:
        assert (out / rel).is_file(), rel
    kernel = (out / "firmware/mmf_kernel.cpp").read_text() + (out / "firmware/mmf_bitlinear.h").read_text()
    for pragma in ("INTERFACE m_axi port=params", "INTERFACE s_axilite port=return", "PIPELINE II=1", "UNROLL",
                   "ARRAY_PARTITION", "DATAFLOW", "BIND_STORAGE"):
        assert f"#pragma HLS {pragma}" in kernel, pragma
    assert "@@" not in kernel
    params = (out / "firmware/mmf_params.h").read_text()
    assert "#define MMF_D 64" in params and "#define MMF_STREAM_WEIGHTS 0" in params
    tcl = (out / "scripts/run_hls.tcl").read_text()
    assert "set_part {xcu250-figd2104-2L-e}" in tcl and "create_clock -period 3.333" in tcl
    for step in ("csim_design", "csynth_design", "cosim_design", "export_design -format xo"):
        assert step in tcl
    assert "xilinx_u250_gen3x16_xdma_4_1_202210_1" in (out / "scripts/Makefile").read_text()
    assert "xrt::kernel" in (out / "scripts/host.cpp").read_text()

    # The .bin is the contract: header, and ternary words that decode to the converter's weights.
    P = intref.convert(model)
    man = json.loads((out / "weights/manifest.json").read_text())
    words = np.fromfile(out / "weights/mmf_weights.bin", dtype="<u4")
    assert words.size == man["total_words"] and words[0] == 0x31464D4D
    assert list(words[2:6]) == [64, 2, 256, 128]
    sec = {s["name"]: s for s in man["sections"]}["layers.1.mlp.w_down.w_packed"]
    block = words[sec["offset_words"]: sec["offset_words"] + sec["words"]].reshape(sec["shape"][0], -1)
    codes = (block[:, :, None] >> (2 * np.arange(16, dtype=np.uint32))) & 3
    dec = np.select([codes == 1, codes == 3], [1, -1], 0).reshape(block.shape[0], -1)
    assert np.array_equal(dec[:, :128], P["layers.1.mlp.w_down.w"])

    # Golden data = an independent run of the integer reference; memory figure = memory_bits.
    summary = json.loads((out / "export.json").read_text())
    prompt = [b % 256 for b in b"To be, or not to be, that is the question"][:32]
    toks, _ = _reference(P, prompt, 64)
    assert summary["golden"]["tokens"] == toks and summary["golden"]["prompt_tokens"] == 32
    assert summary["memory_bits"]["kernel_on_chip"]["total"] == intref.memory_bits(P)["total"]
    readme = (out / "README.md").read_text()
    assert f"{summary['memory_bits']['kernel_on_chip']['total']:,}" in readme
    assert "vitis_hls -f scripts/run_hls.tcl" in readme


@needs_gxx
def test_csim_bit_exact(exported, capsys):
    _, out = exported
    rc = main(["fpga", "csim", str(out)])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "csim PASS: 64 token steps; tokens 64/64, logits 16384/16384 bit-exact" in text
    csim = json.loads((out / "export.json").read_text())["csim"]
    assert csim["passed"] and csim["logits_ok"] == csim["logits_total"] == 64 * 256 and csim["warnings"] == 0
    assert csim["reset_mismatches"] == 0
    assert "**PASS**" in (out / "README.md").read_text()


@needs_gxx
def test_csim_detects_mismatches(exported, tmp_path, capsys):
    _, src = exported
    out = tmp_path / "bad"
    shutil.copytree(src, out, ignore=shutil.ignore_patterns("build"))
    # One golden logit changed: exactly one mismatch must be reported.
    data = (out / "tb/tb_data.h").read_text()
    m = re.search(r"tb_logits\[64\]\[256\] = \{\n    \{(-?\d+),", data)
    data = data[: m.start(1)] + str(int(m.group(1)) + 1) + data[m.end(1):]
    (out / "tb/tb_data.h").write_text(data)
    assert main(["fpga", "csim", str(out)]) == 1
    text = capsys.readouterr().out
    assert "csim FAIL" in text and "logits 16383/16384" in text and "MISMATCH logit step 0 index 0" in text
    # A weights file that differs from the tested header is refused.
    blob = bytearray((out / "weights/mmf_weights.bin").read_bytes())
    blob[-1] ^= 0x40
    (out / "weights/mmf_weights.bin").write_bytes(bytes(blob))
    res = run_csim(out)
    assert not res.passed and "differs from mmf_weights.h" in res.output


@needs_gxx
def test_stream_weights_released_gate_odd_sizes(tmp_path):
    model = _model(seed=3, d_model=40, n_layers=2, intermediate_size=72, vocab_size=97, gate="released",
                   forget_lower_bound=True)
    P = intref.convert(model)
    out = tmp_path / "stream"
    s = export_vitis(P, out, ExportOptions(stream_weights=True, tb_tokens=64, row_parallel=8))
    assert s["memory_bits"]["kernel_on_chip"]["weights"] == 0
    assert "#define MMF_STREAM_WEIGHTS 1" in (out / "firmware/mmf_params.h").read_text()
    res = run_csim(out)
    assert res.passed, res.output[-2000:]
    assert (res.steps, res.tokens_ok, res.logits_ok, res.logits_total) == (64, 64, 64 * 97, 64 * 97)


def test_memory_refusal_and_stream_option(exported, tmp_path, capsys):
    model, _ = exported
    P = intref.convert(model)
    full = kernel_memory_bits(P, stream_weights=False)["total"]
    other = kernel_memory_bits(P, stream_weights=True)["total"]
    ckpt = tmp_path / "ckpt"
    save_model(model, ckpt)
    cap = (full + other) // 2
    args = ["export", str(ckpt), str(tmp_path / "o"), "--target", "vitis", "--onchip-bits", str(cap)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"needs {full:,} bits of on-chip memory" in err and "--stream-weights" in err
    assert f"has {cap:,} bits (given by --onchip-bits)" in err and not (tmp_path / "o").exists()
    assert main(args + ["--stream-weights"]) == 0
    capsys.readouterr()
    small = ["export", str(ckpt), str(tmp_path / "o2"), "--target", "vitis", "--onchip-bits", str(other // 2),
             "--stream-weights"]
    assert main(small) == 2
    assert f"even with --stream-weights the kernel needs {other:,} bits" in capsys.readouterr().err


def test_cli_errors(exported, tmp_path, capsys):
    _, out = exported
    ckpt = tmp_path / "ckpt"
    save_model(_model(), ckpt)
    base = ["export", str(ckpt), str(tmp_path / "o"), "--target", "vitis"]
    assert main(base + ["--part", "xcfoo"]) == 2
    assert "unknown part 'xcfoo'" in capsys.readouterr().err
    assert main(base + ["--row-parallel", "3"]) == 2
    assert "--row-parallel must be a power of two" in capsys.readouterr().err
    assert main(["fpga", "csim", str(tmp_path)]) == 2
    assert "not a vitis export folder" in capsys.readouterr().err
