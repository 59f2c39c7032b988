"""The CPU engine: every dispatch path's integer products against an integer reference (NEON under
qemu-user where a cross compiler and qemu are installed), the exact grouped BitLinear, the fused
C forward pass against the reference model (decode, parallel-form prefill, batch, threads), and
``matmulfree generate`` on it."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import torch

from matmulfree import build_model
from matmulfree.checkpoint import save_model
from matmulfree.cli import main
from matmulfree.config import MatMulFreeConfig, TransformerConfig
from matmulfree.inference import ckernel
from matmulfree.inference.cpu import PackedCPUDecoder, PackedGroup
from matmulfree.inference.cpu_mlgru import EngineUnavailable, MLGRUEngine

ARM_PATHS = ("neon", "neon-dotprod")


@pytest.fixture(scope="module", autouse=True)
def kernel_cache(tmp_path_factory):
    """Compile the C library into a temporary cache for this module."""
    mp = pytest.MonkeyPatch()
    mp.setenv("MATMULFREE_CACHE", str(tmp_path_factory.mktemp("ckernel")))
    mp.delenv("MATMULFREE_CPU_PATH", raising=False)
    ckernel._load.cache_clear()
    yield
    mp.undo()
    ckernel._load.cache_clear()


def _kernel():
    kernel, reason = ckernel.load()
    if kernel is None:
        pytest.skip(reason)
    return kernel


def _cases(g: torch.Generator):
    """(weights (N, K) ternary, x (M, Kp) int8) with N, K off the tile sizes, M across the row blocks,
    and the extremes: all codes 2 (w = +1) against -128 / 127."""
    for n, k, m in ((33, 200, 1), (16, 16, 9), (7, 3, 2), (48, 1040, 5), (20, 64, 17)):
        w = torch.randint(-1, 2, (n, k), generator=g, dtype=torch.int8)
        x = torch.zeros(m, ckernel.padded(k), dtype=torch.int8)
        x[:, :k] = torch.randint(-128, 128, (m, k), generator=g, dtype=torch.int8)
        w[0] = 1
        x[0, :k] = -128
        if m > 1:
            x[1, :k] = 127
        yield w, x


@pytest.mark.parametrize("path", ckernel.PATHS)
def test_every_path_is_exact(path):
    kernel = _kernel()
    if path not in kernel.compiled_paths():
        pytest.skip(f"{path} is not compiled into this build ({', '.join(kernel.compiled_paths())} are)")
    if path not in kernel.supported_paths():
        pytest.skip(f"this CPU does not run {path} (it runs {kernel.supported_paths()})")
    for w, x in _cases(torch.Generator().manual_seed(0)):
        k = w.shape[1]
        want = x[:, :k].long() @ w.long().t()
        tiles = ckernel.pack_tiles(w, kernel.lut_layout(path)).unsqueeze(0)
        assert torch.equal(ckernel.unpack_tiles(tiles[0], *w.shape, lut=kernel.lut_layout(path)), w)
        for threads in (1, 2):
            got = kernel.mm(tiles, x.unsqueeze(0), w.shape[0], path, threads)[0]
            assert torch.equal(got.long(), want), (path, tuple(w.shape), x.shape[0], threads)


def _cross_tools() -> tuple[str, str] | None:
    cc, qemu = shutil.which("aarch64-linux-gnu-gcc"), shutil.which("qemu-aarch64")
    return (cc, qemu) if cc and qemu else None


@pytest.mark.skipif(_cross_tools() is None, reason="needs aarch64-linux-gnu-gcc and qemu-aarch64 "
                    "(Debian: gcc-aarch64-linux-gnu, qemu-user) to test the NEON paths")  # fmt: skip
@pytest.mark.parametrize("path", ARM_PATHS)
def test_neon_paths_are_exact_under_qemu(path, tmp_path):
    cc, qemu = _cross_tools()
    exe = tmp_path / "harness"
    srcs = [str(ckernel.CSRC / "tmm_kernels.c"), str(ckernel.Path(__file__).parent / "csrc" / "tile_harness.c")]
    proc = subprocess.run([cc, "-O2", "-static", "-std=c11", f"-I{ckernel.CSRC}", *srcs, "-o", str(exe)],
                          capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    for i, (w, x) in enumerate(_cases(torch.Generator().manual_seed(1))):
        n, k = w.shape
        tiles = ckernel.pack_tiles(w)
        kc = x.shape[1] // ckernel.CHUNK_K
        header = torch.tensor([tiles.shape[0], x.shape[0], kc], dtype=torch.int64)
        (tmp_path / "in.bin").write_bytes(header.numpy().tobytes() + tiles.numpy().tobytes() + x.numpy().tobytes())
        run = subprocess.run([qemu, "-cpu", "max", str(exe), str(ckernel.PATHS.index(path)), str(tmp_path / "in.bin"),
                              str(tmp_path / "out.bin")], capture_output=True, text=True)  # fmt: skip
        assert run.returncode == 0, (run.returncode, run.stderr)
        raw = torch.frombuffer(bytearray((tmp_path / "out.bin").read_bytes()), dtype=torch.int32)
        raw = raw.reshape(tiles.shape[0], x.shape[0], 16).permute(1, 0, 2).reshape(x.shape[0], -1)[:, :n]
        want = x[:, :k].long() @ w.long().t()
        assert torch.equal(raw.long() - x.long().sum(-1, keepdim=True), want), (path, i)


def _model(**kw):
    torch.manual_seed(0)
    cfg = MatMulFreeConfig(vocab_size=40, d_model=96, n_layers=2, intermediate_size=160, **kw)
    m = build_model(cfg).eval()
    if m.lower_bounds is not None:
        with torch.no_grad():
            m.lower_bounds.normal_()
    return m.pack()


VARIANTS = [{}, {"gate": "released", "forget_lower_bound": True, "ternary_head": False}]


def test_packed_group_is_exact_on_every_path():
    kernel = _kernel()
    model = _model()
    mx = model.layers[0].mixer
    layers = [mx.f_proj, mx.c_proj, mx.g_proj]
    x = torch.randn(5, 96, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = torch.stack([m.forward_reference(x) for m in layers])
        for path in kernel.supported_paths():
            got = PackedGroup(layers, "c", threads=2, path=path)(x)
            assert torch.equal(got, want), path
    with pytest.raises(ValueError, match="share out_features"):
        PackedGroup([mx.f_proj, model.layers[0].mlp.w_in])


def test_exact_decoder_with_threads_and_paths():
    kernel = _kernel()
    model = _model(**VARIANTS[1])
    tok = torch.tensor([3, 7, 11])
    a, sa = model.step(tok, None)
    for path in kernel.supported_paths():
        b, sb = PackedCPUDecoder(model, "c", threads=2, path=path).step(tok, None)
        assert torch.equal(a, b) and all(torch.equal(x, y) for x, y in zip(sa, sb)), path


@pytest.mark.parametrize("kw", VARIANTS)
def test_engine_matches_the_reference(kw):
    kernel = _kernel()
    model = _model(**kw)
    ids = torch.randint(0, 40, (3, 7), generator=torch.Generator().manual_seed(1))
    engines = [MLGRUEngine(model, threads=t, path=p) for p in kernel.supported_paths() for t in (1, 2)]
    with torch.no_grad():
        out = model(ids)
    ref_logits, ref_state = out.logits[:, -1], out.state
    results = []
    for e in engines:
        logits, state = e.prefill(ids)
        steps = [(logits, state)]
        tok = ref_logits.argmax(-1)
        for _ in range(3):
            steps.append(e.step(tok, steps[-1][1]))
            tok = steps[-1][0].argmax(-1)
        results.append(steps)
    # the element-wise math is the engine's own: close to the reference, greedy tokens equal
    scale = ref_logits.abs().max()
    assert (results[0][0][0] - ref_logits).abs().max() <= 1e-5 * scale
    assert all((a - b).abs().max() <= 1e-5 for a, b in zip(results[0][0][1], ref_state))
    state, tok = ref_state, ref_logits.argmax(-1)
    for logits, _ in results[0][1:]:
        ref, state = model.step(tok, state)
        assert (logits - ref).abs().max() <= 1e-4 * ref.abs().max()
        assert torch.equal(logits.argmax(-1), ref.argmax(-1))
        tok = ref.argmax(-1)
    # integer products are exact on every path and the element-wise code is shared: equal results
    for other, e in zip(results[1:], engines[1:]):
        for (la, sa), (lb, sb) in zip(results[0], other):
            assert torch.equal(la, lb), (e.path, e.threads)
            assert all(torch.equal(x, y) for x, y in zip(sa, sb))


def test_engine_prefill_batch_and_chunks_are_consistent():
    _kernel()
    model = _model()
    e = MLGRUEngine(model, threads=2)
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, 40, (3, 30), generator=g)  # 3 x 30 rows: chunks of 21 + 9 tokens
    logits, state = e.prefill(ids)
    # prefill in parallel form == token-by-token decode, and a batch == its sequences alone
    for b in range(3):
        s = None
        for t in range(30):
            lb, s = e.step(ids[b, t:t + 1], s)
        assert torch.equal(lb[0], logits[b]), b
        assert all(torch.equal(x[0], y[b]) for x, y in zip(s, state))
    long = torch.randint(0, 40, (1, 70), generator=g)  # two chunks at batch 1
    la, sa = e.prefill(long)
    lb, sb = e.forward(long[:, 40:], e.prefill(long[:, :40])[1])
    assert torch.equal(la, lb) and all(torch.equal(x, y) for x, y in zip(sa, sb))
    out = e.generate(long[0, :5], 6, temperature=0)
    assert torch.equal(out, model.generate(long[0, :5], 6, temperature=0))


def test_engine_errors():
    _kernel()
    model = _model()
    e = MLGRUEngine(model, threads=1)
    with pytest.raises(ValueError, match=r"token ids must be in \[0, 40\)"):
        e.step(torch.tensor([40]), None)
    with pytest.raises(ValueError, match="state must be 2 tensors"):
        e.step(torch.tensor([1]), [torch.zeros(1, 96)])
    with pytest.raises(ValueError, match=r"need token ids \(B, T\)"):
        e.forward(torch.zeros(1, 0, dtype=torch.long))
    with pytest.raises(ValueError, match="unknown CPU path 'sse9'"):
        MLGRUEngine(model, path="sse9")
    tf = build_model(TransformerConfig(vocab_size=40, d_model=32, n_layers=1, n_heads=2))
    with pytest.raises(EngineUnavailable, match="MatMul-free models"):
        MLGRUEngine(tf)


def test_generate_runs_on_the_engine(tmp_path, capsys, monkeypatch):
    _kernel()
    torch.manual_seed(0)
    model = build_model(MatMulFreeConfig(vocab_size=256, d_model=64, n_layers=2, intermediate_size=128)).eval()
    save_model(model, tmp_path / "m")
    args = ["generate", str(tmp_path / "m"), "--prompt", "ab", "--max-new-tokens", "12", "--temperature", "0"]
    assert main(args + ["--engine", "torch"]) == 0
    want = capsys.readouterr().out
    assert main(args + ["--threads", "2"]) == 0
    got = capsys.readouterr()
    assert got.out == want and got.err == ""
    monkeypatch.setenv("MATMULFREE_NO_CKERNEL", "1")
    assert main(args) == 0
    got = capsys.readouterr()
    assert got.out == want and got.err.count("C engine is unavailable (disabled by MATMULFREE_NO_CKERNEL)") == 1
    assert main(args + ["--engine", "c"]) == 2
    assert "--engine c: disabled by MATMULFREE_NO_CKERNEL" in capsys.readouterr().err
    assert main(args + ["--threads", "0"]) == 2
