"""Chunked MLGRU scan and the fused MLGRU decode step against their references.

Tolerances: the scan state is fp32 and the chunked order differs from the loop only through the
carries, so fp32 outputs and gradients agree within 1e-5 (relative to the largest value); bf16
inputs/outputs within one bf16 rounding (1e-2).
"""

import pytest
import torch

triton = pytest.importorskip("triton")

from matmulfree.triton_kernels import mlgru_scan, mlgru_scan_naive, mlgru_step, mlgru_step_naive  # noqa: E402
from matmulfree.triton_kernels.scan import CHUNK  # noqa: E402

GPU = torch.cuda.is_available()
DEV = "cuda" if GPU else "cpu"
# (B, T, D): T crosses chunk boundaries and is no multiple of CHUNK, D no multiple of the channel block
SHAPES = [(3, 1000, 300), (2, 129, 2050), (1, 1, 17)] if GPU else [(2, CHUNK + 5, 20), (1, 1, 5)]


def close(a, b, tol):
    a, b = a.float(), b.float()
    assert (a - b).abs().max().item() <= tol * max(1.0, b.abs().max().item()), (a - b).abs().max().item()


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("with_h0", [False, True])
def test_scan_forward_and_gradients(shape, dtype, with_h0):
    torch.manual_seed(sum(shape))
    B, T, D = shape
    f = torch.sigmoid(torch.randn(B, T, D, device=DEV) * 2).to(dtype).requires_grad_()
    b = torch.randn(B, T, D, device=DEV).to(dtype).requires_grad_()
    h0 = torch.randn(B, D, device=DEV).to(dtype).requires_grad_() if with_h0 else None
    h = mlgru_scan(f, b, h0)
    ref = mlgru_scan_naive(f, b, h0)
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    assert h.dtype == ref.dtype and h.shape == (B, T, D)
    close(h, ref, tol)
    dh = torch.randn_like(h)
    inputs = (f, b) + ((h0,) if with_h0 else ())
    for got, want in zip(torch.autograd.grad(h, inputs, dh), torch.autograd.grad(ref, inputs, dh)):
        assert got.dtype == want.dtype
        close(got, want, tol)


def test_scan_matches_layer_scan_and_survives_tiny_gates():
    from matmulfree.functional import linear_recurrence_scan

    f = torch.full((1, 70, 8), 1e-30, device=DEV)
    b = torch.ones(1, 70, 8, device=DEV)
    assert torch.equal(mlgru_scan(f, b), linear_recurrence_scan(f, b))


def test_scan_rejects_bad_shapes():
    with pytest.raises(ValueError, match="mlgru_scan"):
        mlgru_scan(torch.zeros(1, 3, 4, device=DEV), torch.zeros(1, 3, 5, device=DEV))


@pytest.mark.parametrize("gate", ["paper", "released"])
@pytest.mark.parametrize("bounded", [False, True])
@pytest.mark.parametrize("B, D", [(3, 45), (1, 2100)] if GPU else [(3, 45)])
def test_mlgru_step_kernel(gate, bounded, B, D):
    torch.manual_seed(D)
    y = torch.randn(B, 3 * D, device=DEV)
    h = torch.randn(B, D, device=DEV)
    o_gain = torch.rand(D, device=DEV) + 0.5
    lb = torch.rand(D, device=DEV) * 0.5 if bounded else None
    g_norm = torch.rand(D, device=DEV) + 0.5 if gate == "released" else None
    h_ref, q_ref, sx_ref = mlgru_step_naive(y, h, o_gain, 1e-6, lb, g_norm)
    q, sx = mlgru_step(y, h, o_gain, 1e-6, lb, g_norm)  # updates h in place
    torch.testing.assert_close(h, h_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(sx, sx_ref, rtol=1e-5, atol=0)
    diff = (q.int() - q_ref.int()).abs()  # sigmoid/rsqrt ulps may move a code by one, rarely
    assert diff.max() <= 1 and (diff > 0).float().mean() <= 1e-2
