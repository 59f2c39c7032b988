"""Packed 2-bit ternary GEMV/GEMM and the packed BitLinear path against their references.

The int32 products are exact (compared with ``==``); rescaled outputs agree with the reference
within 1e-6 relative in fp32 (one rounding of the division), bf16 outputs within one bf16 ulp.
"""

import pytest
import torch

triton = pytest.importorskip("triton")

from matmulfree.triton_kernels import packed_bitlinear, packed_bitlinear_naive, packed_matmul, packed_matmul_naive  # noqa: E402
from matmulfree.triton_kernels.packed import GEMV_MAX_BATCH, packed_matmul_int32  # noqa: E402

from matmulfree.backend import set_kernel_backend  # noqa: E402
from matmulfree.layers import BitLinear  # noqa: E402
from matmulfree.quant import pack_ternary  # noqa: E402

GPU = torch.cuda.is_available()
DEV = "cuda" if GPU else "cpu"
# (M, K, N): M <= 16 takes the GEMV configs, larger M the GEMM ones; K % 4 != 0 exercises row padding
SHAPES = [(1, 1027, 2050), (16, 2048, 1000), (700, 1030, 515)] if GPU else [(1, 70, 45), (3, 33, 20), (37, 70, 45)]


def random_ternary(n, k, gen=None):
    return torch.randint(-1, 2, (n, k), dtype=torch.int8, generator=gen)


@pytest.mark.parametrize("shape", SHAPES)
def test_packed_product_is_exact(shape):
    torch.manual_seed(0)
    M, K, N = shape
    assert (M <= GEMV_MAX_BATCH) == (M < 20)  # the shapes cover both the GEMV and the GEMM configs
    w = random_ternary(N, K)
    x = torch.randint(-128, 128, (M, K), dtype=torch.int8)
    acc = packed_matmul_int32(x.to(DEV), pack_ternary(w).to(DEV), K)
    assert torch.equal(acc.cpu(), x.long() @ w.long().T)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("P", [1, 3])
@pytest.mark.parametrize("residual", [False, True])
def test_packed_matmul_stacked_projections_and_residual(shape, P, residual):
    torch.manual_seed(1)
    M, K, N = shape
    wp = pack_ternary(random_ternary(P * N, K)).to(DEV)
    x = torch.randint(-128, 128, (P, M, K), dtype=torch.int8, device=DEV)
    sx = torch.rand(P, M, device=DEV) * 2 + 0.1
    sw = torch.rand(P, device=DEV) * 30 + 1
    res = torch.randn(M, P * N, device=DEV) if residual else None
    y = packed_matmul(x, wp, sx, sw, K, residual=res)
    ref = packed_matmul_naive(x, wp, sx, sw, K, residual=res)
    assert y.shape == (M, P * N)
    torch.testing.assert_close(y, ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_packed_bitlinear_matches_layer_reference(shape, dtype):
    torch.manual_seed(2)
    M, K, N = shape
    layer = BitLinear(K, N).to(DEV)
    with torch.no_grad():
        layer.norm.weight.uniform_(0.5, 1.5)
    layer.pack()
    x = torch.randn(M, K, device=DEV).to(dtype)
    ref = layer.forward_reference(x)
    y = packed_bitlinear(x, layer.norm.weight, layer.eps, layer.weight_packed, layer.weight_scale, K)
    y_naive = packed_bitlinear_naive(x, layer.norm.weight, layer.eps, layer.weight_packed, layer.weight_scale, K)
    assert torch.equal(y_naive, ref)  # the naive helper is the layer's reference
    assert y.dtype == dtype
    if GPU:  # kernel rsqrt ulps may move a code by one: compare with a tolerance of a few codes
        torch.testing.assert_close(y.float(), ref.float(), rtol=2e-2, atol=2e-2 * ref.abs().max().item())
    else:
        torch.testing.assert_close(y, ref, rtol=1e-6 if dtype == torch.float32 else 8e-3, atol=1e-6)
    try:  # the module dispatches to the same kernel
        set_kernel_backend("triton")
        with torch.no_grad():
            assert torch.equal(layer(x.reshape(1, M, K)), y.reshape(1, M, N))
    finally:
        set_kernel_backend(None)


def test_packed_matmul_rejects_mismatched_shapes():
    wp = pack_ternary(random_ternary(8, 12)).to(DEV)
    x = torch.zeros(2, 16, dtype=torch.int8, device=DEV)
    with pytest.raises(ValueError, match="in_features=16"):
        packed_matmul(x, wp, torch.ones(2, device=DEV), torch.ones((), device=DEV), 16)
    with pytest.raises(TypeError, match="int8"):
        packed_matmul(x.float(), wp, torch.ones(2, device=DEV), torch.ones((), device=DEV), 12)
