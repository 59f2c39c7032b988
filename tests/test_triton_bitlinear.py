"""Fused BitLinear training kernels and the norm+quantize kernel against their references.

On CPU these run under ``TRITON_INTERPRET=1`` (set by conftest) at small shapes; on a GPU at larger
ones. Tolerances (relative norm of the difference): integer parts (int8 codes, ternary weights, int32
sums) exact under the interpreter (codes within one step on GPU); fp32 outputs 1e-6 and gradients
1e-5 under the interpreter, 1e-3 on GPU; bf16 outputs 5e-3 and gradients 2e-2 (the reference rounds
intermediate values to bf16 at other points than the kernels).
"""

import gc

import pytest
import torch

triton = pytest.importorskip("triton")

from matmulfree.triton_kernels import (  # noqa: E402
    bitlinear_train,
    bitlinear_train_naive,
    int8_matmul,
    rmsnorm_quantize,
    rmsnorm_quantize_naive,
    ternary_weight,
    weight_cache,
)
from matmulfree.triton_kernels.bitlinear import int8_matmul_naive  # noqa: E402

from matmulfree.backend import set_kernel_backend  # noqa: E402
from matmulfree.layers import BitLinear  # noqa: E402
from matmulfree.quant import ternary_quantize  # noqa: E402

GPU = torch.cuda.is_available()
DEV = "cuda" if GPU else "cpu"
# (tokens, in, out): none a multiple of the block sizes
SHAPES = [(300, 257, 190), (1030, 1000, 515)] if GPU else [(37, 70, 45), (5, 33, 20)]
DTYPES = [torch.float32, torch.bfloat16]
# Forward: the int8 product is exact; fp32 differs by the rescale's rounding, bf16 by the reference
# rounding its integer sum to bf16 first. On a GPU the kernel's rsqrt may also move an int8 code
# by one (see assert_codes_match), which moves an output by ~1e-4 relative.
FWD_TOL = {torch.float32: 1e-3 if GPU else 1e-6, torch.bfloat16: 5e-3}
TOL = {torch.float32: 1e-3 if GPU else 1e-5, torch.bfloat16: 2e-2}


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm().clamp(min=1e-30)).item()


def assert_codes_match(q: torch.Tensor, ref: torch.Tensor) -> None:
    """int8 codes: exact under the interpreter; on a GPU the kernel's rsqrt may move a value across a
    rounding boundary, so allow a code to differ by one in at most 0.1% of the entries."""
    diff = (q.int() - ref.int()).abs()
    if GPU:
        assert diff.max() <= 1 and (diff > 0).float().mean() <= 1e-3
    else:
        assert torch.equal(q, ref)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ste", [True, False])
def test_norm_quant_matches_reference(shape, dtype, ste):
    torch.manual_seed(0)
    M, K, _ = shape
    x = (torch.randn(M, K) * 3).to(DEV, dtype)
    x[1] = 0  # an all-zero token takes the eps path
    g = (torch.rand(K) + 0.5).to(DEV)
    q, sx, rstd = rmsnorm_quantize(x, g, 1e-6, ste=ste)
    q_ref, sx_ref, rstd_ref = rmsnorm_quantize_naive(x, g, 1e-6, ste=ste)
    assert q.dtype == torch.int8 and q.shape == (M, K)
    assert_codes_match(q, q_ref)
    torch.testing.assert_close(sx, sx_ref, rtol=1e-5, atol=0)
    torch.testing.assert_close(rstd, rstd_ref, rtol=1e-5, atol=0)


@pytest.mark.parametrize("shape", SHAPES)
def test_ternary_weight_is_exact(shape):
    torch.manual_seed(1)
    w = torch.randn(shape[2], shape[1], device=DEV) * 0.02
    q, sw = ternary_weight(w)
    q_ref, sw_ref = ternary_quantize(w)
    assert torch.equal(q, q_ref) and torch.equal(sw, sw_ref)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_int8_matmul(shape, dtype):
    torch.manual_seed(2)
    M, K, N = shape
    a = torch.randint(-128, 128, (M, K), dtype=torch.int8, device=DEV)
    b = torch.randint(-1, 2, (N, K), dtype=torch.int8, device=DEV)
    ones = torch.ones(M, device=DEV)
    exact = int8_matmul(a, b, ones, torch.ones((), device=DEV), torch.float32)
    assert torch.equal(exact.long().cpu(), a.cpu().long() @ b.cpu().long().T)  # int32 accumulation is exact
    sa, sb = torch.rand(M, device=DEV) + 0.5, torch.tensor(0.7, device=DEV)
    y = int8_matmul(a, b, sa, sb, dtype)
    ref = int8_matmul_naive(a, b, sa, sb, dtype)
    assert y.dtype == dtype
    torch.testing.assert_close(y.float(), ref.float(), rtol=1e-6 if dtype == torch.float32 else 1e-2, atol=1e-6)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_bitlinear_train_forward_and_gradients(shape, dtype):
    torch.manual_seed(3)
    M, K, N = shape
    x = torch.randn(2, M // 2 + 1, K, device=DEV).to(dtype).requires_grad_()
    g = (torch.rand(K, device=DEV) + 0.5).requires_grad_()
    w = (torch.randn(N, K, device=DEV) * 0.02).requires_grad_()
    y = bitlinear_train(x, g, w, 1e-6, cache=False)
    y_ref = bitlinear_train_naive(x, g, w, 1e-6)
    assert y.shape == y_ref.shape and y.dtype == dtype
    assert rel(y, y_ref) <= FWD_TOL[dtype]
    dy = torch.randn_like(y)
    grads = torch.autograd.grad(y, (x, g, w), dy)
    grads_ref = torch.autograd.grad(y_ref, (x, g, w), dy)
    for name, a, b in zip(("x", "norm weight", "weight"), grads, grads_ref):
        assert a.dtype == b.dtype, name
        assert rel(a, b) <= TOL[dtype], (name, rel(a, b))


@pytest.mark.parametrize("dtype", DTYPES)
def test_bitlinear_module_dispatches_to_kernels(dtype):
    torch.manual_seed(4)
    M, K, N = SHAPES[0]
    layer = BitLinear(K, N).to(DEV)
    with torch.no_grad():
        layer.norm.weight.uniform_(0.5, 1.5)
    x = torch.randn(M, K, device=DEV).to(dtype).requires_grad_()
    try:
        set_kernel_backend("triton")
        y = layer(x)
    finally:
        set_kernel_backend(None)
    y.float().square().sum().backward()
    grads = [x.grad.clone(), layer.weight.grad.clone(), layer.norm.weight.grad.clone()]
    x.grad = layer.weight.grad = layer.norm.weight.grad = None
    y_ref = layer.forward_reference(x)
    y_ref.float().square().sum().backward()
    assert rel(y, y_ref) <= FWD_TOL[dtype]
    for a, b in zip(grads, (x.grad, layer.weight.grad, layer.norm.weight.grad)):
        assert rel(a, b) <= TOL[dtype]


def test_weight_cache_reuses_until_the_weight_changes():
    torch.manual_seed(5)
    w = torch.nn.Parameter(torch.randn(20, 33, device=DEV) * 0.02)
    g = torch.ones(33, device=DEV)
    x = torch.randn(4, 33, device=DEV)
    weight_cache.clear()
    y1 = bitlinear_train(x, g, w, 1e-6)
    y2 = bitlinear_train(x, g, w, 1e-6)  # second micro-batch: cached
    assert (weight_cache.misses, weight_cache.hits) == (1, 1) and torch.equal(y1, y2)
    with torch.no_grad():
        w.mul_(-1)  # an optimizer-style in-place update bumps the version counter
    y3 = bitlinear_train(x, g, w, 1e-6)
    assert weight_cache.misses == 2
    torch.testing.assert_close(y3, -y1)
    del w, y1, y2, y3  # the outputs' autograd graphs hold the parameter too
    gc.collect()
    assert len(weight_cache) == 0  # entries die with their parameter


def test_kernels_reject_cpu_tensors_without_interpreter(monkeypatch):
    import matmulfree.triton_kernels._common as common

    monkeypatch.setattr(common, "INTERPRET", False)
    with pytest.raises(RuntimeError, match="CUDA tensors"):
        common.check_device(torch.zeros(2))
