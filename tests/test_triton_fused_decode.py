"""The one-launch decode BitLinear (norms + quantization + packed product + epilogue) against its
PyTorch reference, every epilogue and input form, under the interpreter (or on a GPU), and the
fused whole-step decoder against ``MatMulFreeLM.step``.

Tolerance: the kernel's row sums are Triton block reductions, the reference's PyTorch ones, so a
quantized code can move by one in rare rows; outputs agree within 1e-4 of their largest magnitude
under the interpreter and 5e-2 on a GPU (as tests/test_triton_decode.py).
"""

import pytest
import torch

triton = pytest.importorskip("triton")

from matmulfree.triton_kernels.fused_decode import fused_bitlinear, fused_bitlinear_naive  # noqa: E402

from matmulfree import build_model, preset  # noqa: E402
from matmulfree.backend import set_kernel_backend  # noqa: E402
from matmulfree.inference.gpu import FusedMatMulFreeDecoder  # noqa: E402
from matmulfree.quant import pack_ternary  # noqa: E402

GPU = torch.cuda.is_available()
DEV = "cuda" if GPU else "cpu"
TOL = 5e-2 if GPU else 1e-4


def close(a, b):
    return (a.float() - b.float()).abs().max().item() <= TOL * max(b.float().abs().max().item(), 1e-6)


def _weights(P, N, K, g):
    w = torch.randint(-1, 2, (P * N, K), dtype=torch.int8, generator=g)
    return pack_ternary(w).to(DEV), (torch.rand(P, generator=g) + 0.5).to(DEV)


@pytest.mark.parametrize("M", [1, 3])
@pytest.mark.parametrize("case", ["store3", "residual", "mlgru", "mlgru-released", "glu", "embed-outer", "gate-in"])
def test_fused_bitlinear_matches_naive(case, M):
    g = torch.Generator().manual_seed(hash(case) % 1000 + M)
    K, N = (70, 45) if case not in ("mlgru", "mlgru-released", "gate-in") else (37, 37)
    P = {"store3": 3, "mlgru": 3, "mlgru-released": 3, "glu": 2}.get(case, 1)
    w, s = _weights(P, N, K, g)
    x = torch.randn(M, K, generator=g).to(DEV) * 3
    gains = (torch.rand(P, K, generator=g) + 0.5).to(DEV)
    if case == "glu":
        gains[1] = gains[0]
    width = P * N if case == "store3" else N
    out_k, out_n = torch.zeros(M, width, device=DEV), torch.zeros(M, width, device=DEV)
    kw, extra = {"epilogue": "store"}, {}
    if case == "residual":
        res = torch.randn(M, N, generator=g).to(DEV)
        kw = {"epilogue": "residual"}
        extra = {"residual": lambda: res.clone()}
    elif case.startswith("mlgru"):
        h0 = torch.randn(M, N, generator=g).to(DEV)
        kw = {"epilogue": "mlgru", "lower_bound": torch.rand(N, generator=g).to(DEV)}
        extra = {"h": lambda: h0.clone()}
        if case == "mlgru-released":
            extra["gate_out"] = lambda: torch.zeros(M, N, device=DEV)
    elif case == "glu":
        kw = {"epilogue": "glu"}
    elif case == "embed-outer":
        table = torch.randn(11, K, generator=g).to(DEV)
        tok = torch.randint(0, 11, (M,), generator=g).to(DEV)
        kw = {"epilogue": "store", "outer": (torch.rand(K, generator=g) + 0.5).to(DEV), "tokens": tok}
        extra = {"x_copy": lambda: torch.zeros(M, K, device=DEV)}
        x = table
    elif case == "gate-in":
        hs = torch.randn(M, K, generator=g).to(DEV)
        kw = {"epilogue": "residual", "gate_in": ((torch.rand(K, generator=g) + 0.5).to(DEV), hs)}
        res = torch.randn(M, N, generator=g).to(DEV)
        extra = {"residual": lambda: res.clone()}
    a = {k: f() for k, f in extra.items()}
    b = {k: f() for k, f in extra.items()}
    fused_bitlinear(x, gains, w, s, K, 1e-6, out_k, **kw, **a)
    fused_bitlinear_naive(x, gains, w, s, K, 1e-6, out_n, **kw, **b)
    assert close(out_k, out_n), case
    for k in a:
        assert close(a[k], b[k]), (case, k)
    assert out_n.abs().sum() > 0  # the case computed something


def test_fused_bitlinear_rejects_bad_shapes():
    w, s = _weights(3, 8, 16, torch.Generator().manual_seed(0))
    x = torch.randn(1, 16, device=DEV)
    with pytest.raises(ValueError, match="epilogue"):
        fused_bitlinear(x, torch.ones(3, 16, device=DEV), w, s, 16, 1e-6, torch.zeros(1, 8, device=DEV), epilogue="x")
    with pytest.raises(ValueError, match="takes 1 projections"):
        fused_bitlinear(x, torch.ones(3, 16, device=DEV), w, s, 16, 1e-6, torch.zeros(1, 8, device=DEV),
                        epilogue="residual", residual=torch.zeros(1, 8, device=DEV))  # fmt: skip
    with pytest.raises(ValueError, match="do not fit"):
        fused_bitlinear(x, torch.ones(3, 16, device=DEV), w, s, 20, 1e-6, torch.zeros(1, 24, device=DEV))
    with pytest.raises(ValueError, match="state h"):
        fused_bitlinear(x, torch.ones(3, 16, device=DEV), w, s, 16, 1e-6, torch.zeros(1, 8, device=DEV),
                        epilogue="mlgru")  # fmt: skip


@pytest.fixture
def torch_backend():
    set_kernel_backend("torch")
    yield
    set_kernel_backend(None)


@pytest.mark.parametrize("gate, bounded, head", [("paper", False, True), ("released", True, False)])
def test_fused_decoder_matches_model_step(torch_backend, gate, bounded, head):
    torch.manual_seed(0)
    d, layers, hidden = (256, 3, 512) if GPU else (40, 2, 56)
    cfg = preset("tiny", d_model=d, n_layers=layers, intermediate_size=hidden, vocab_size=77, gate=gate,
                 forget_lower_bound=bounded, ternary_head=head)  # fmt: skip
    model = build_model(cfg).to(DEV).eval()
    if bounded:
        with torch.no_grad():
            model.lower_bounds.normal_()
    model.pack()
    B = 2
    ids = torch.randint(0, 77, (B, 5), device=DEV)
    nxt = torch.randint(0, 77, (2, B), device=DEV)
    with torch.no_grad():
        out = model(ids)
        state, ref = out.state, []
        for t in range(2):
            logits, state = model.step(nxt[t], state)
            ref.append(logits)
    dec = FusedMatMulFreeDecoder(model, batch_size=B)
    assert dec.launches_per_step() == 4 * layers + (1 if head else 0)
    dec.reset(out.state)
    bufs = {name: t.data_ptr() for name, t in dec.buffers().items()}
    for t in range(2):
        assert close(dec.step(nxt[t]), ref[t]), t
    assert {name: t.data_ptr() for name, t in dec.buffers().items()} == bufs  # static buffers, written in place
    for h, h_ref in zip(dec.state(), state):
        assert close(h, h_ref)
    # greedy feedback: a step without tokens continues from the argmax of the last logits
    assert torch.equal(dec.tokens, dec.logits.argmax(-1))
    before = dec.logits.clone()
    dec.step()
    assert torch.equal(dec.tokens, dec.logits.argmax(-1)) and not torch.equal(dec.logits, before)


@pytest.mark.skipif(not GPU, reason="CUDA graphs need a GPU")
def test_fused_graph_replay_equals_eager():
    torch.manual_seed(0)
    model = build_model(preset("tiny", d_model=256, n_layers=2, vocab_size=77)).to(DEV).eval().pack()
    ids = torch.randint(0, 77, (1, 5), device=DEV)
    set_kernel_backend("triton")
    try:
        eager = FusedMatMulFreeDecoder(model).generate(ids, 8)
        assert torch.equal(FusedMatMulFreeDecoder(model).capture().generate(ids, 8), eager)
    finally:
        set_kernel_backend(None)
