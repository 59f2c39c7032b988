"""BitLinear modes, the MLGRU scan and parallel vs recurrent layer paths."""

import pytest
import torch

from matmulfree.functional import linear_recurrence_naive, linear_recurrence_scan
from matmulfree.layers import GLU, MLGRU, BitLinear


def test_bitlinear_packed_equals_training_forward():
    torch.manual_seed(0)
    layer = BitLinear(45, 31)
    x = torch.randn(2, 7, 45)
    y_train = layer(x)
    layer.pack()
    assert layer.weight is None and layer.weight_packed.dtype == torch.uint8
    assert layer.weight_packed.shape == (31, 12)
    assert torch.equal(layer(x), y_train)


def test_bitlinear_gradients_reach_weights_norm_and_input():
    torch.manual_seed(1)
    layer = BitLinear(16, 8)
    x = torch.randn(3, 16, requires_grad=True)
    layer(x).pow(2).sum().backward()
    for g in (x.grad, layer.weight.grad, layer.norm.weight.grad):
        assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0


@pytest.mark.parametrize("T", [1, 2, 5, 64, 333])
def test_scan_matches_sequential_loop(T):
    torch.manual_seed(T)
    f = torch.sigmoid(torch.randn(2, T, 8) * 3)
    b = torch.randn(2, T, 8)
    h0 = torch.randn(2, 8)
    for init in (None, h0):
        ref = linear_recurrence_naive(f, b, init)
        out = linear_recurrence_scan(f, b, init)
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_scan_long_sequence_with_tiny_forget_gates_stays_finite():
    f = torch.full((1, 4096, 4), 1e-30)
    b = torch.ones(1, 4096, 4)
    h = linear_recurrence_scan(f, b)
    assert torch.isfinite(h).all() and torch.allclose(h, torch.ones_like(h))


def test_scan_gradients_match_loop():
    torch.manual_seed(4)
    f = torch.sigmoid(torch.randn(1, 37, 5)).requires_grad_()
    b = torch.randn(1, 37, 5, requires_grad=True)
    gf1, gb1 = torch.autograd.grad(linear_recurrence_scan(f, b).sum(), (f, b))
    gf2, gb2 = torch.autograd.grad(linear_recurrence_naive(f, b).sum(), (f, b))
    torch.testing.assert_close(gf1, gf2, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(gb1, gb2, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("gate", ["paper", "released"])
@pytest.mark.parametrize("bounded", [False, True])
def test_mlgru_parallel_equals_recurrent(gate, bounded):
    torch.manual_seed(5)
    layer = MLGRU(24, gate=gate)
    x = torch.randn(2, 19, 24)
    lb = torch.rand(24) * 0.5 if bounded else None
    out, h_last = layer(x, lower_bound=lb)
    h, outs = None, []
    for t in range(x.shape[1]):
        o, h = layer.step(x[:, t], h, lb)
        outs.append(o)
    torch.testing.assert_close(torch.stack(outs, 1), out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(h, h_last, rtol=1e-5, atol=1e-6)


def test_forget_lower_bound_is_respected():
    torch.manual_seed(6)
    layer = MLGRU(8)
    lb = torch.full((8,), 0.9)
    f, _, _ = layer.gates(torch.randn(3, 8), lb)
    assert (f >= 0.9).all()


def test_glu_shapes_and_ternary_layers():
    glu = GLU(16, 40)
    assert glu(torch.randn(2, 3, 16)).shape == (2, 3, 16)
    assert glu.w_in.out_features == 80 and glu.w_down.in_features == 40
