"""Fused decode steps (MatMul-free and Transformer++) against ``model.step``, and CUDA graphs on GPU.

Tolerance: the decoder computes the same arithmetic as the packed reference path; logits agree
within 1e-4 relative to their largest magnitude under the interpreter, 5e-2 on GPU, where
rsqrt/sigmoid ulps may move an int8 code by one and the change propagates through the layers.
"""

import pytest
import torch

triton = pytest.importorskip("triton")

from matmulfree import build_model, preset  # noqa: E402
from matmulfree.backend import set_kernel_backend  # noqa: E402
from matmulfree.inference.gpu import MatMulFreeDecoder, TransformerDecoder  # noqa: E402

GPU = torch.cuda.is_available()
DEV = "cuda" if GPU else "cpu"
TOL = 5e-2 if GPU else 1e-4


@pytest.fixture
def torch_backend():
    set_kernel_backend("torch")
    yield
    set_kernel_backend(None)


def tiny_matmulfree(gate: str, bounded: bool, head: bool = True):
    torch.manual_seed(0)
    d, layers, hidden = (256, 3, 512) if GPU else (40, 2, 56)
    cfg = preset("tiny", d_model=d, n_layers=layers, intermediate_size=hidden, vocab_size=77, gate=gate,
                 forget_lower_bound=bounded, ternary_head=head)  # fmt: skip
    model = build_model(cfg).to(DEV).eval()
    if bounded:
        with torch.no_grad():
            model.lower_bounds.normal_()
    return model.pack()


def assert_logits_close(a, b):
    assert (a.float() - b.float()).abs().max().item() <= TOL * b.abs().max().item()


@pytest.mark.parametrize("gate, bounded, head", [("paper", False, True), ("released", True, False)])
def test_matmulfree_decoder_matches_model_step(torch_backend, gate, bounded, head):
    model = tiny_matmulfree(gate, bounded, head)
    B = 2
    ids = torch.randint(0, 77, (B, 6), device=DEV)
    nxt = torch.randint(0, 77, (3, B), device=DEV)
    with torch.no_grad():
        out = model(ids)  # reference path (torch backend)
        state, ref = out.state, []
        for t in range(3):
            logits, state = model.step(nxt[t], state)
            ref.append(logits)
    set_kernel_backend("triton")
    dec = MatMulFreeDecoder(model, batch_size=B)
    assert_logits_close(dec.prefill(ids), out.logits[:, -1])
    for t in range(3):
        assert_logits_close(dec.step(nxt[t]), ref[t])
    for h, h_ref in zip(dec.state(), state):
        torch.testing.assert_close(h, h_ref, rtol=TOL, atol=TOL)


def test_matmulfree_decoder_needs_packed_model():
    model = build_model(preset("tiny", d_model=16, n_layers=1, intermediate_size=32, vocab_size=11)).to(DEV)
    with pytest.raises(ValueError, match="pack"):
        MatMulFreeDecoder(model)


def test_transformer_decoder_matches_model_step():
    torch.manual_seed(1)
    cfg = preset("tiny", architecture="transformer", d_model=32, n_layers=2, intermediate_size=48, vocab_size=50,
                 n_heads=2)  # fmt: skip
    model = build_model(cfg).to(DEV).eval()
    ids = torch.randint(0, 50, (2, 7), device=DEV)
    nxt = torch.randint(0, 50, (3, 2), device=DEV)
    dec = TransformerDecoder(model, batch_size=2, max_len=16)
    with torch.no_grad():
        out = model(ids)
        torch.testing.assert_close(dec.prefill(ids), out.logits[:, -1])
        state = out.state
        for t in range(3):
            ref, state = model.step(nxt[t], state)
            torch.testing.assert_close(dec.step(nxt[t]), ref, rtol=1e-4, atol=1e-5)
        assert int(dec.pos) == 10
    with pytest.raises(ValueError, match="max_len"):
        dec.prefill(torch.zeros(2, 16, dtype=torch.long, device=DEV))


@pytest.mark.skipif(not GPU, reason="CUDA graphs need a GPU")
def test_graph_replay_equals_eager_steps():
    model = tiny_matmulfree("paper", False)
    ids = torch.randint(0, 77, (1, 5), device=DEV)
    set_kernel_backend("triton")
    try:
        eager = MatMulFreeDecoder(model).generate(ids, 8)
        graphed = MatMulFreeDecoder(model).capture()
        assert graphed.graphed
        assert torch.equal(graphed.generate(ids, 8), eager)
        tcfg = preset("tiny", architecture="transformer", d_model=64, n_layers=2, vocab_size=77, n_heads=2)
        tmodel = build_model(tcfg).to(DEV).eval()
        t_eager = TransformerDecoder(tmodel, max_len=32).generate(ids, 8)
        assert torch.equal(TransformerDecoder(tmodel, max_len=32).capture().generate(ids, 8), t_eager)
    finally:
        set_kernel_backend(None)
