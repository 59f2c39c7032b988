"""The Triton WKV kernel (forward + backward) against its PyTorch reference and a float64 definition.

Tolerances: the kernel runs the reference's fp32 operations in the same order, so outputs agree to
a few fp32 ulps; gradients (a different but equally stable summation) within 1e-5 relative to the
largest value. Against float64 the fp32 rounding of the exponents sets the bar (``2 eps |k|max``).
"""

import pytest
import torch

triton = pytest.importorskip("triton")

from matmulfree.triton_kernels import wkv, wkv_naive  # noqa: E402

from tests.test_rwkv import wkv_float64  # noqa: E402

GPU = torch.cuda.is_available()
DEV = "cuda" if GPU else "cpu"
# (B, T, D): D no multiple of the channel block, T = 1 edge case
SHAPES = [(4, 512, 1000), (2, 33, 70)] if GPU else [(2, 29, 20), (1, 1, 5)]


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return ((a - b).abs().max() / max(1.0, b.abs().max().item())).item()


def leaves(B, T, D, k_scale=3.0, seed=0, with_state=True):
    g = torch.Generator().manual_seed(seed)
    w = torch.rand(D, generator=g) * 2 + 0.05
    u = torch.randn(D, generator=g)
    k = torch.randn(B, T, D, generator=g) * k_scale
    v = torch.randn(B, T, D, generator=g)
    state = (torch.randn(B, D, generator=g), torch.rand(B, D, generator=g) + 0.5, torch.randn(B, D, generator=g))
    xs = [w, u, k, v, *state] if with_state else [w, u, k, v]
    return [x.to(DEV) for x in xs]


def run(fn, xs, gy, g_state):
    xs = [x.clone().requires_grad_() for x in xs]
    state = tuple(xs[4:]) if len(xs) > 4 else None
    y, (aa, bb, pp) = fn(*xs[:4], state)
    # the state enters the loss through its true sums aa e^pp and bb e^pp (pp is only their shift)
    loss = (y * gy).sum()
    if g_state is not None:
        loss = loss + ((aa * g_state[0] + bb * g_state[1]) * pp.exp()).sum()
    return y, aa * pp.exp(), torch.autograd.grad(loss, xs)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("with_state", [False, True])
def test_kernel_matches_naive_outputs_and_all_gradients(shape, with_state):
    B, T, D = shape
    xs = leaves(B, T, D, with_state=with_state, seed=T)
    gy = torch.randn(B, T, D, device=DEV)
    g_state = (torch.randn(B, D, device=DEV), torch.randn(B, D, device=DEV))
    y, a_end, grads = run(wkv, xs, gy, g_state)
    y_ref, a_ref, grads_ref = run(wkv_naive, xs, gy, g_state)
    assert y.dtype == torch.float32 and y.shape == (B, T, D)
    assert rel(y, y_ref) < 1e-6
    assert rel(a_end, a_ref) < 1e-5
    names = ["w", "u", "k", "v", "aa", "bb", "pp"]
    for name, got, want in zip(names, grads, grads_ref):
        assert rel(got, want) < 1e-5, name


def test_long_sequence_with_large_keys_against_float64():
    """Keys of a few hundred: e^k overflows fp32 (and e^800 float64); the running-max form does not."""
    B, T, D = (2, 2048, 64) if GPU else (1, 300, 8)
    w, u, k, v = leaves(B, T, D, k_scale=200.0, seed=5, with_state=False)
    k[0, T // 3] = 800.0
    assert not torch.isfinite(torch.exp(k)).all()
    xs = [x.detach().cpu().double().requires_grad_() for x in (w, u, k, v)]
    y64 = wkv_float64(*xs)
    gy = torch.randn(B, T, D, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    g64 = torch.autograd.grad((y64 * gy).sum(), xs)
    y, _, grads = run(wkv, [w, u, k, v], gy.float().to(DEV), None)
    assert torch.isfinite(y).all() and all(torch.isfinite(g).all() for g in grads)
    # exponents of up to ~800 carry an fp32 rounding of ~800 * 6e-8 = 5e-5 (relative, after exp)
    tol = 2 * torch.finfo(torch.float32).eps * k.abs().max().item()
    assert rel(y.cpu(), y64) < tol
    ref, _, ref_grads = run(wkv_naive, [w, u, k, v], gy.float().to(DEV), None)
    assert rel(y, ref) < 1e-6  # the same fp32 operations as the reference loop
    for name, got, want, loop in zip("wukv", grads, g64, ref_grads):
        assert rel(got.cpu(), want) < 10 * tol, name
        assert rel(got, loop) < 1e-4, name


def test_kernel_rejects_bad_shapes():
    w, u, k, v = leaves(1, 4, 6, with_state=False)
    with pytest.raises(ValueError, match="must be"):
        wkv(w[:5], u, k, v)
    with pytest.raises(ValueError, match="state"):
        wkv(w, u, k, v, (torch.zeros(2, 6, device=DEV),) * 3)


def test_model_uses_the_kernel_through_the_backend():
    from matmulfree.backend import set_kernel_backend
    from matmulfree.config import RWKVConfig
    from matmulfree.models import build_model

    torch.manual_seed(0)
    model = build_model(RWKVConfig(vocab_size=40, d_model=16, n_layers=2, intermediate_size=32)).to(DEV)
    ids = torch.randint(0, 40, (2, 9), device=DEV)
    set_kernel_backend("torch")
    try:
        ref = model(ids, labels=ids)
        ref.loss.backward()
        ref_grads = [p.grad.clone() for p in model.parameters()]
        model.zero_grad()
        set_kernel_backend("triton")
        out = model(ids, labels=ids)
        out.loss.backward()
    finally:
        set_kernel_backend(None)
    assert rel(out.logits, ref.logits) < 1e-4
    worst = max(rel(p.grad, g) for p, g in zip(model.parameters(), ref_grads))
    assert worst < 1e-3


def test_bitlinear_kernels_without_inner_norm():
    """RWKV's projections (``BitLinear(norm=False)``): quantization only, no RMSNorm, in the fused
    training kernel and the packed kernel alike."""
    from matmulfree.triton_kernels import bitlinear_train, bitlinear_train_naive, rmsnorm_quantize
    from matmulfree.triton_kernels.norm_quant import rmsnorm_quantize_naive
    from matmulfree.triton_kernels.packed import packed_bitlinear, packed_bitlinear_naive

    from matmulfree.layers import BitLinear

    torch.manual_seed(1)
    x = (torch.randn(7, 40) * 3).to(DEV)
    q, sx, rstd = rmsnorm_quantize(x, None, 1e-5)
    q_ref, sx_ref, _ = rmsnorm_quantize_naive(x, None, 1e-5)
    assert torch.equal(q, q_ref) and torch.equal(sx, sx_ref) and torch.equal(rstd, torch.ones_like(rstd))
    w = (torch.randn(24, 40) * 0.02).to(DEV).requires_grad_()
    xs = x.clone().requires_grad_()
    y = bitlinear_train(xs, None, w, 1e-5, cache=False)
    y_ref = bitlinear_train_naive(xs, None, w, 1e-5)
    assert rel(y, y_ref) < 1e-6
    gy = torch.randn_like(y)
    for got, want in zip(torch.autograd.grad(y, (xs, w), gy), torch.autograd.grad(y_ref, (xs, w), gy)):
        assert rel(got, want) < 1e-5
    layer = BitLinear(40, 24, norm=False).to(DEV)
    layer.pack()
    args = (x, None, 1e-5, layer.weight_packed, layer.weight_scale, 40)
    assert rel(packed_bitlinear(*args), packed_bitlinear_naive(*args)) < 1e-6
