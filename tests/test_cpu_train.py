"""The fused CPU training path equals the reference layers: values and gradients to fp32 rounding."""

import pytest
import torch

from matmulfree import backend
from matmulfree.config import MatMulFreeConfig
from matmulfree.cpu_train import bitlinear_train, odd_even_scan, scan_train, weight_cache
from matmulfree.functional import linear_recurrence_naive
from matmulfree.layers import BitLinear
from matmulfree.models import build_model


def test_bitlinear_matches_reference():
    torch.manual_seed(0)
    layer = BitLinear(48, 40)
    with torch.no_grad():
        layer.norm.weight.uniform_(0.5, 1.5)
    x = torch.randn(3, 7, 48, requires_grad=True)
    y_ref = layer.forward_reference(x)
    gy = torch.randn_like(y_ref)
    ref = torch.autograd.grad(y_ref, (x, layer.norm.weight, layer.weight), gy)
    x2 = x.detach().clone().requires_grad_(True)
    y = bitlinear_train(x2, layer.norm.weight, layer.weight, layer.norm.eps)
    got = torch.autograd.grad(y, (x2, layer.norm.weight, layer.weight), gy)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-6)
    for name, a, b in zip(("x", "gain", "weight"), got, ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=name)


def test_weight_quantised_once_per_version():
    weight_cache.clear()
    layer = BitLinear(16, 8)
    x = torch.randn(4, 16)
    for _ in range(3):  # three micro-batches of one step
        layer(x).sum().backward()
    assert (weight_cache.misses, weight_cache.hits) == (1, 2)
    with torch.no_grad():
        layer.weight.mul_(-1)  # an optimizer step: the version changes
    y = layer(x)
    assert weight_cache.misses == 2
    torch.testing.assert_close(y, layer.forward_reference(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("with_h0", [False, True])
def test_scan_matches_sequential(with_h0):
    torch.manual_seed(0)
    f = torch.rand(2, 37, 5, requires_grad=True)
    b = torch.randn(2, 37, 5, requires_grad=True)
    h0 = torch.randn(2, 5, requires_grad=True) if with_h0 else None
    inputs = (f, b, h0) if with_h0 else (f, b)
    h_ref = linear_recurrence_naive(f, b, h0)
    gh = torch.randn_like(h_ref)
    ref = torch.autograd.grad(h_ref, inputs, gh)
    h = scan_train(f, b, h0)
    got = torch.autograd.grad(h, inputs, gh)
    torch.testing.assert_close(h, h_ref, rtol=1e-5, atol=1e-6)
    for a, r in zip(got, ref):
        torch.testing.assert_close(a, r, rtol=1e-4, atol=1e-5)


def test_model_gradients_match_reference_path():
    torch.manual_seed(0)
    model = build_model(MatMulFreeConfig(vocab_size=50, d_model=32, n_layers=2, intermediate_size=64,
                                         forget_lower_bound=True, gate="released"))
    ids = torch.randint(0, 50, (3, 20))

    def grads(kernels):
        backend.set_kernel_backend(kernels)
        try:
            model.zero_grad(set_to_none=True)
            loss = model(ids, labels=ids).loss
            loss.backward()
            return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}
        finally:
            backend.set_kernel_backend(None)

    loss_ref, ref = grads("torch")
    loss, got = grads("auto")
    torch.testing.assert_close(loss, loss_ref, rtol=1e-5, atol=1e-6)
    for name in ref:
        torch.testing.assert_close(got[name], ref[name], rtol=1e-3, atol=1e-5, msg=name)


@pytest.mark.parametrize("T", [1, 2, 5, 8, 33])
def test_odd_even_scan_lengths(T):
    torch.manual_seed(T)
    f, b, h0 = torch.rand(2, T, 3), torch.randn(2, T, 3), torch.randn(2, 3)
    torch.testing.assert_close(odd_even_scan(f, b, h0), linear_recurrence_naive(f, b, h0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(odd_even_scan(f, b), linear_recurrence_naive(f, b), rtol=1e-5, atol=1e-6)
