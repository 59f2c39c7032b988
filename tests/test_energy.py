"""matmulfree.energy and ``matmulfree power``: operation counts by hand, the CPU packed path against
the reference model, meters that are missing, the report with fake meters, the CLI end to end."""

from __future__ import annotations

import json
import types

import pytest
import torch

from matmulfree import build_model
from matmulfree.cli import main
from matmulfree.config import MatMulFreeConfig, TransformerConfig
from matmulfree.energy.fpga import FPGASummaryError, fpga_model, hls_figures, load_summary
from matmulfree.energy.meters import EnergyWindow
from matmulfree.energy.nvml import NVMLMeter
from matmulfree.energy.ops import OpEnergyError, count_ops, load_op_energies, price
from matmulfree.energy.rapl import RAPLMeter
from matmulfree.energy.report import Report, Row, Skip, render_text, write_json, write_png
from matmulfree.energy.targets import MF, TF, PowerOptions, cpu_rows, fpga_rows, gpu_rows
from matmulfree.inference import ckernel
from matmulfree.inference.cpu import DenseCPUDecoder, PackedCPUDecoder
from matmulfree.inference.ternary_mm import TernaryMatmul, int8_backend_reason
from matmulfree.quant import pack_ternary


@pytest.fixture(scope="module", autouse=True)
def kernel_cache(tmp_path_factory):
    """Compile the C kernel into a temporary cache for this module."""
    mp = pytest.MonkeyPatch()
    mp.setenv("MATMULFREE_CACHE", str(tmp_path_factory.mktemp("ckernel")))
    ckernel._load.cache_clear()
    yield
    mp.undo()
    ckernel._load.cache_clear()


# ---------------------------------------------------------------------------------- ops model
MF_TINY = MatMulFreeConfig(vocab_size=16, d_model=8, n_layers=1, intermediate_size=16)
TF_TINY = TransformerConfig(vocab_size=16, d_model=8, n_layers=1, intermediate_size=16, n_heads=2)


def test_matmulfree_counts_by_hand():
    c = count_ops(MF_TINY, context=5)
    # d=8, h=16, V=16, one layer. Ternary products: f,c,g,o 4*8*8, w_in 8*32, w_down 16*8, head 8*16.
    assert c.ternary_acc == 256 + 256 + 128 + 128
    assert c.mac == 0
    # mult: mixer_norm 3*8; f,c,g,o each 4*8+8+1; MLGRU (c*sig(c), (1-f)c, f*h) 3*8; paper gate 8;
    # mlp_norm 3*8; w_in 4*8+32+1; GLU 2*16; w_down 4*16+8+1; final norm 3*8; head 4*8+16+1
    assert c.mult == 24 + 4 * 41 + 24 + 8 + 24 + 65 + 32 + 73 + 24 + 49
    # add: norms 8 each (3); BitLinears 2*in (f,c,g,o: 16 each, w_in 16, w_down 32, head 16);
    # MLGRU (1-f) and + : 16; residuals 2*8
    assert c.add == 3 * 8 + 4 * 16 + 16 + 32 + 16 + 16 + 16
    # nonlinear: norms 1 each (3); BitLinears 2 each (7 of them); sigmoid f, sigmoid c 16; gate 8; GLU 16
    assert c.nonlinear == 3 + 14 + 16 + 8 + 16
    reads = {r.what: r for r in c.reads}
    assert reads["ternary weights"].values == 768 and reads["ternary weights"].bits == 2
    # gains: mixer_norm, f, c, g, o, mlp_norm, w_in (8 each), w_down (16); final norm, head norm (8 each)
    assert reads["full-precision parameters"].values == 7 * 8 + 16 + 8 + 8
    assert reads["recurrent state"].values == 8 and reads["embedding row"].values == 8
    assert c.reads[0].location == "sram"


def test_counts_match_the_model_parameters():
    """The parameter reads agree with the model's own counts (an independent source)."""
    for cfg in (MF_TINY, MatMulFreeConfig(vocab_size=16, d_model=8, n_layers=2, intermediate_size=16,
                                          gate="released", forget_lower_bound=True, ternary_head=False)):  # fmt: skip
        s = build_model(cfg).weight_summary()
        reads = {r.what: r.values for r in count_ops(cfg, context=1).reads}
        ternary = reads["ternary weights"]
        assert ternary == s["ternary_weights"]
        assert reads["full-precision parameters"] == s["full_precision_weights"] - cfg.vocab_size * cfg.d_model
    t = build_model(TF_TINY)
    reads = {r.what: r.values for r in count_ops(TF_TINY, context=1).reads}
    assert reads["weights"] + reads["full-precision parameters"] + 16 * 8 == t.num_parameters()


def test_transformer_counts_by_hand():
    c = count_ops(TF_TINY, context=5, batch=4)
    # d=8, H=2, h=16, V=16, C=5. MACs: qkv 3*64, scores+values 2*5*8, o 64, w_in 2*16*8, w_down 16*8, head 8*16
    assert c.mac == 192 + 80 + 64 + 256 + 128 + 128
    assert c.ternary_acc == 0
    # mult: attn_norm 24, RoPE 4*8, scale+normalise 2*2*5, mlp_norm 24, SwiGLU 2*16, final norm 24
    assert c.mult == 24 + 32 + 20 + 24 + 32 + 24
    # add: norms 8 each (3), RoPE 2*8, softmax sum 2*5, residuals 2*8
    assert c.add == 24 + 16 + 10 + 16
    # nonlinear: RoPE angles 8/2, norms 3, exp 2*5, SiLU 16
    assert c.nonlinear == 4 + 3 + 10 + 16
    reads = {r.what: r for r in c.reads}
    assert reads["weights"].values == (256 + 384 + 128) / 4  # shared by a batch of 4
    assert reads["KV cache"].values == 2 * 1 * 5 * 8  # not shared
    assert reads["weights"].bits == 16


def test_placement_and_pricing():
    tiny_chip = count_ops(MF_TINY, context=1, onchip_bytes=10)
    assert {r.location for r in tiny_chip.reads if r.what != "recurrent state"} == {"dram"}
    table = {k: 0.0 for k in load_op_energies()}
    table["int32_add"] = 1.0
    table["sram_read_64b"] = 64.0  # 1 pJ per bit
    p = price(count_ops(MF_TINY, context=1), table)
    assert p["compute_total_pj"] == 768  # only the ternary accumulations cost
    bits = 768 * 2 + (72 + 16) * 16 + 8 * 16 + 8 * 16
    assert p["memory_total_pj"] == pytest.approx(bits)
    assert p["joules_per_token"] == pytest.approx((768 + bits) * 1e-12)
    # the MatMul-free model is cheaper than the Transformer++ of the same shape with the default table
    assert price(count_ops(MF_TINY, 64))["joules_per_token"] < price(count_ops(TF_TINY, 64))["joules_per_token"]


def test_op_energy_file_errors(tmp_path):
    f = tmp_path / "e.json"
    f.write_text(json.dumps({"dram_read_64b": 2600}))
    assert load_op_energies(f)["dram_read_64b"] == 2600.0
    for content, needle in (("{", "not valid JSON"), ('{"warp_drive": 1}', "warp_drive"),
                            ('{"int8_add": -1}', "int8_add"), ("[1]", "JSON object")):  # fmt: skip
        f.write_text(content)
        with pytest.raises(OpEnergyError, match=needle) as e:
            load_op_energies(f)
        assert str(f) in str(e.value)


# ------------------------------------------------------------------------------- CPU packed path
def _tiny_model(**kw):
    torch.manual_seed(0)
    cfg = MatMulFreeConfig(vocab_size=40, d_model=96, n_layers=2, intermediate_size=160, **kw)
    m = build_model(cfg).eval()
    if m.lower_bounds is not None:
        with torch.no_grad():
            m.lower_bounds.normal_()
    return m.pack()


@pytest.mark.parametrize("kw", [{}, {"gate": "released", "forget_lower_bound": True, "ternary_head": False}])
@pytest.mark.parametrize("backend", ["auto", "int8", "float"])
def test_packed_decoder_equals_reference(kw, backend):
    if backend == "int8" and int8_backend_reason():
        pytest.skip(int8_backend_reason())
    model = _tiny_model(**kw)
    dec = PackedCPUDecoder(model, backend)
    assert backend == "auto" or dec.backend == backend
    ids = torch.randint(0, 40, (3, 5), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = model(ids)
        ref_state, state = out.state, [h.clone() for h in out.state]
        tok = out.logits[:, -1].argmax(-1)
        for _ in range(4):
            a, ref_state = model.step(tok, ref_state)
            b, state = dec.step(tok, state)
            assert torch.equal(a, b)
            assert all(torch.equal(x, y) for x, y in zip(ref_state, state))
            tok = a.argmax(-1)
        a, _ = model.step(tok, None)  # from an empty state too
        b, _ = dec.step(tok, None)
        assert torch.equal(a, b)


def test_dense_decoder_is_the_same_model_in_fp32():
    model = _tiny_model()
    dense, packed = DenseCPUDecoder(model), PackedCPUDecoder(model)
    tok = torch.tensor([3, 7])
    a, _ = dense.step(tok, None)
    b, _ = packed.step(tok, None)
    assert a.dtype == torch.float32 and a.shape == (2, 40)
    # dense skips the activation rounding only: close, not equal
    assert torch.allclose(a, b, atol=0.05 * b.abs().max().item())
    assert dense.weight_bytes() == 4 * sum(m.in_features * m.out_features for m in model.modules()
                                           if hasattr(m, "weight_packed"))  # fmt: skip


@pytest.mark.parametrize("backend", ["auto", "int8", "float"])
def test_ternary_matmul_exact(backend):
    if backend == "int8" and int8_backend_reason():
        pytest.skip(int8_backend_reason())
    g = torch.Generator().manual_seed(2)
    for k, n in ((200, 7), (128, 33), (3, 2)):
        ws = [torch.randint(-1, 2, (n, k), generator=g) for _ in range(3)]
        x = torch.randint(-128, 128, (3, 5, k), generator=g, dtype=torch.int8)
        x[0, 0, :] = -128
        mm = TernaryMatmul(ws, backend)
        want = torch.stack([x[p].long() @ w.long().t() for p, w in enumerate(ws)])
        assert torch.equal(mm(x).long(), want), (k, n, mm.backend)


def test_ckernel_layout_and_errors():
    kernel, reason = ckernel.load()
    if kernel is None:
        pytest.skip(reason)
    w = torch.randint(-1, 2, (5, 130), generator=torch.Generator().manual_seed(3), dtype=torch.int8)
    tiles = ckernel.pack_tiles(w)
    assert tiles.shape == (1, 144 * 4)  # 16 padded rows x 144 padded columns, 2 bits each
    assert torch.equal(tiles, ckernel.pack_tiles_from_storage(pack_ternary(w), 130))
    assert torch.equal(ckernel.unpack_tiles(tiles, 5, 130), w)
    # chunk c, byte 4r + j, bits 2s: row r, column 16c + 4s + j (code w + 1)
    c, r, j, s = 3, 2, 1, 2
    assert (int(tiles[0, c * 64 + 4 * r + j]) >> (2 * s)) & 3 == int(w[r, 16 * c + 4 * s + j]) + 1
    with pytest.raises(ValueError, match="do not match"):
        kernel.mm(tiles.unsqueeze(0), torch.zeros(1, 2, 128, dtype=torch.int8), 5)


# ------------------------------------------------------------------------------------- meters
def test_rapl_missing_and_fake(tmp_path):
    missing = RAPLMeter(tmp_path / "nope")
    assert "does not exist" in missing.unavailable()
    with pytest.raises(RuntimeError):
        missing.read()
    assert "no RAPL package" in RAPLMeter(tmp_path).unavailable()
    d = tmp_path / "intel-rapl:0"
    d.mkdir()
    (d / "name").write_text("package-0\n")
    (d / "max_energy_range_uj").write_text("1000000\n")
    (d / "energy_uj").write_text("999000\n")
    m = RAPLMeter(tmp_path)
    assert m.unavailable() is None and "package-0" in m.scope
    e0 = m.read()
    (d / "energy_uj").write_text("500\n")  # wrapped around
    assert m.read() - e0 == pytest.approx((1000000 - 999000 + 500) / 1e6)


def test_nvml_missing_is_a_message():
    class Boom:
        def nvmlInit(self):
            raise RuntimeError("Driver Not Loaded")

    m = NVMLMeter(0, nvml=Boom())
    assert m.unavailable() == "NVML unavailable: Driver Not Loaded"
    with pytest.raises(RuntimeError):
        m.read()
    fake = types.SimpleNamespace(nvmlInit=lambda: None, nvmlDeviceGetCount=lambda: 1,
                                 nvmlDeviceGetHandleByIndex=lambda i: "h", nvmlDeviceGetName=lambda h: b"Fake GPU",
                                 nvmlDeviceGetTotalEnergyConsumption=lambda h: 123456)  # fmt: skip
    ok = NVMLMeter(0, nvml=fake)
    assert ok.unavailable() is None and ok.read() == pytest.approx(123.456) and "Fake GPU" in ok.scope
    assert "no GPU 3" in NVMLMeter(3, nvml=fake).unavailable()


class FakeMeter:
    """A counter rising at 10 W of wall time."""

    name, scope = "fake", "fake device"

    def __init__(self):
        import time

        self.t0, self.clock = time.perf_counter(), time.perf_counter

    def unavailable(self):
        return None

    def read(self):
        return 10.0 * (self.clock() - self.t0)


# ------------------------------------------------------------------------------------- report
def test_report_with_fake_meters(tmp_path):
    model = _tiny_model()
    opts = PowerOptions(batch=2, context=4, new_tokens=8, warmup=1, idle_seconds=0.05, min_seconds=0.05)
    rows, skipped = cpu_rows({MF: model}, opts, FakeMeter())
    assert not skipped and [r.variant.split(",")[0] for r in rows] == ["packed 2-bit", "dense fp32 weights"] or \
        rows[0].variant.startswith("packed")  # fmt: skip
    for r in rows:
        assert r.energy_kind == "measured" and r.speed_kind == "measured"
        assert r.watts == pytest.approx(10.0, rel=0.2) and r.idle_watts == pytest.approx(10.0, rel=0.2)
        assert r.joules_per_token == pytest.approx(r.watts / r.tokens_per_s)
        assert "fake counter" in r.source and r.details["seconds"] >= 0.05
        assert r.details["tokens"] == 16 * r.details["windows"]
    opts.min_seconds = 0
    rows2, _ = cpu_rows({MF: model}, opts, RAPLMeter(tmp_path / "none"))  # no meter, no --cpu-watts
    assert all(r.joules_per_token is None and "RAPL unavailable" in r.notes for r in rows2)
    opts.cpu_watts = 20.0
    rows3, _ = cpu_rows({MF: model}, opts, RAPLMeter(tmp_path / "none"))
    assert all(r.energy_kind == "modelled" and r.watts == 20.0 for r in rows3)
    rep = Report(rows + rows3, [Skip("gpu", "no CUDA GPU visible to PyTorch")], {"checkpoint": "tiny"})
    text = render_text(rep)
    assert "meas" in text and "model" in text and "skipped gpu: no CUDA GPU" in text
    data = json.loads(write_json(rep, tmp_path / "p.json").read_text())
    assert {r["energy_kind"] for r in data["rows"]} == {"measured", "modelled"}
    png = write_png(rep, tmp_path / "p.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="kind"):
        Row("cpu", MF, "x", tokens_per_s=1.0)  # a number without its label
    with pytest.raises(ValueError, match="idle"):
        Row("cpu", MF, "x", joules_per_token=1.0, energy_kind="modelled", joules_per_token_above_idle=0.5)
    w = EnergyWindow(2.0, 30.0, 10.0, "fake", "x")
    assert w.watts == 15.0 and w.joules_above_idle() == 10.0


def test_gpu_rows_skip_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    rows, skipped = gpu_rows({MF: object()}, PowerOptions())
    assert rows == [] and skipped[0].reason == "no CUDA GPU visible to PyTorch"


# --------------------------------------------------------------------------------------- FPGA
def _summary(tmp_path, **over):
    s = {"target": "ecp5", "device": "85k", "package": "CABGA381", "lanes": 16, "clock_mhz_requested": 100.0,
         "fmax_mhz": 100.0, "timing_met": True, "cycles_per_token": 1000, "cycles_per_token_lower_bound": 500,
         "tokens_per_s_at_fmax": 1e5, "model": {"d": 8},
         "resources": {"lut4": {"used": 1000, "available": 83640, "percent": 1.2},
                       "ff": {"used": 1000, "available": 83640, "percent": 1.2},
                       "bram": {"used": 10, "available": 208, "percent": 4.8},
                       "mult": {"used": 2, "available": 156, "percent": 1.3}}}  # fmt: skip
    s.update(over)
    (tmp_path / "summary.json").write_text(json.dumps(s))
    return tmp_path / "summary.json"


def test_fpga_model_by_hand(tmp_path):
    m = fpga_model(load_summary(_summary(tmp_path)))
    assert m["tokens_per_s"] == pytest.approx(100e6 / 1000)
    # 1.1 V, 100 MHz, toggle 1/8, weight-streaming duty 500/1000:
    lut = 1000 * 0.8e-12 * 1.21 * 0.125 * 1e8
    ff = 1000 * (0.4e-12 * 0.125 + 0.05e-12) * 1.21 * 1e8
    bram, mult = 10 * 20e-12 * 0.5 * 1e8, 2 * 15e-12 * 0.5 * 1e8
    static = 1.1 * 0.212
    assert m["watts"] == pytest.approx(static + lut + ff + bram + mult)
    assert m["joules_per_token"] == pytest.approx(m["watts"] / 1e5)
    # an iCE40 UltraPlus build also pays for its SPRAM accesses (same duty)
    res40 = {**json.loads(_summary(tmp_path).read_text())["resources"], "spram": {"used": 4, "available": 4}}
    m40 = fpga_model(load_summary(_summary(tmp_path, target="ice40", device="up5k", fmax_mhz=12.0, resources=res40)))
    assert m40["dynamic_w"]["spram"] == pytest.approx(4 * 25e-12 * 0.5 * 12e6)
    assert m["dynamic_w"]["spram"] == 0  # (ECP5: none)
    with pytest.raises(FPGASummaryError, match="cycles_per_token"):
        load_summary(_summary(tmp_path, cycles_per_token=0))
    with pytest.raises(FPGASummaryError, match="device 'huge'"):
        load_summary(_summary(tmp_path, device="huge"))


def test_fpga_rows_and_hls(tmp_path):
    rows, skipped = fpga_rows(PowerOptions())
    assert rows == [] and "--fpga-summary" in skipped[0].reason
    (tmp_path / "export.json").write_text(json.dumps({"cycles_model": {"cycles_per_token": 3000, "clock_mhz": 300},
                                                      "part": {"name": "xcu250"}}))  # fmt: skip
    xml = tmp_path / "k_csynth.xml"
    xml.write_text("<profile><PerformanceEstimates><SummaryOfTimingAnalysis><EstimatedClockPeriod>2.5"
                   "</EstimatedClockPeriod></SummaryOfTimingAnalysis><SummaryOfOverallLatency>"
                   "<Average-caseLatency>8000</Average-caseLatency></SummaryOfOverallLatency>"
                   "</PerformanceEstimates></profile>")  # fmt: skip
    h = hls_figures(xml, tokens_per_call=4)
    assert h["clock_mhz"] == pytest.approx(400.0) and h["cycles_per_token"] == 2000
    opts = PowerOptions(fpga_summary=str(_summary(tmp_path)), fpga_watts=1.5, hls_report=str(tmp_path), hls_watts=30)
    rows, skipped = fpga_rows(opts)
    assert not skipped and [r.target for r in rows] == ["fpga", "fpga", "hls"]
    assert all(r.energy_kind == "modelled" and r.speed_kind == "modelled" for r in rows)
    assert rows[1].joules_per_token == pytest.approx(1.5 / 1e5)
    assert rows[2].tokens_per_s == pytest.approx(300e6 / 3000) and rows[2].joules_per_token == pytest.approx(30 / 1e5)


# ---------------------------------------------------------------------------------------- CLI
def test_cli_power_end_to_end(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "out"
    args = ["power", "preset:tiny", "--targets", "cpu,ops,fpga,gpu", "--fpga-summary", str(_summary(tmp_path)),
            "--new-tokens", "3", "--context", "4", "--warmup", "1", "--out", str(out), "--idle-seconds", "0",
            "--threads", "1", "--min-seconds", "0"]  # fmt: skip
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "skipped gpu: no CUDA GPU" in text
    data = json.loads((out / "power.json").read_text())
    got = {(r["target"], r["model"]) for r in data["rows"]}
    assert {("cpu", MF), ("cpu", TF), ("ops", MF), ("ops", TF), ("fpga", MF)} <= got
    assert (out / "power.png").stat().st_size > 0 and (out / "power.txt").read_text().startswith("target")
    ops = {r["model"]: r for r in data["rows"] if r["target"] == "ops"}
    assert ops[MF]["joules_per_token"] < ops[TF]["joules_per_token"]


def test_cli_power_user_errors(tmp_path, capsys):
    for extra, needle in ((["--targets", "cpu,tpu"], "tpu"), (["--fpga-summary", str(tmp_path / "x.json")], "x.json"),
                          (["--batch", "0"], "--batch"), (["--op-energy-file", str(tmp_path / "e.json")], "e.json")):
        code = main(["power", "preset:tiny", "--targets", "fpga", "--out", str(tmp_path / "o"), *extra])
        err = capsys.readouterr().err.strip()
        assert code == 2 and needle in err and len(err.splitlines()) == 1, err
