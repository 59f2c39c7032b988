"""Quantizers, straight-through gradients and the 2-bit packing code."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from matmulfree.quant import (
    QUANT_EPS,
    activation_quantize,
    activation_quantize_ste,
    fake_quant_activation,
    fake_quant_weight,
    pack_ternary,
    packed_row_bytes,
    ternary_quantize,
    ternary_quantize_ste,
    unpack_ternary,
)


def test_ternary_values_and_scale():
    torch.manual_seed(0)
    w = torch.randn(37, 53)
    w_q, s_w = ternary_quantize(w)
    assert w_q.dtype == torch.int8
    assert set(w_q.unique().tolist()) == {-1, 0, 1}
    assert torch.allclose(s_w, 1.0 / w.abs().mean())
    assert torch.equal(w_q, torch.clamp(torch.round(w * s_w), -1, 1).to(torch.int8))


def test_ternary_all_zero_tensor_uses_eps():
    w_q, s_w = ternary_quantize(torch.zeros(3, 4))
    assert torch.equal(w_q, torch.zeros(3, 4, dtype=torch.int8))
    assert s_w.item() == pytest.approx(1 / QUANT_EPS)


def test_activation_int8_range_and_per_token_scale():
    torch.manual_seed(1)
    x = torch.randn(2, 5, 16) * torch.tensor([0.01, 1.0, 100.0, 3.0, 7.0])[None, :, None]
    x_q, s_x = activation_quantize(x)
    assert x_q.dtype == torch.int8 and s_x.shape == (2, 5, 1)
    assert int(x_q.min()) >= -128 and int(x_q.max()) <= 127
    # the absmax element of every token maps to +-127
    assert torch.equal(x_q.abs().amax(-1), torch.full((2, 5), 127, dtype=torch.int8))
    assert torch.allclose(s_x, 127 / x.abs().amax(-1, keepdim=True))
    assert torch.allclose(x_q.float() / s_x, x, atol=float((x.abs().amax(-1, keepdim=True) / 254).max()))


def test_ste_gradients_reach_latent_weights_and_input():
    torch.manual_seed(2)
    w = torch.randn(8, 6, requires_grad=True)
    x = torch.randn(3, 6, requires_grad=True)
    y = (fake_quant_activation(x) @ fake_quant_weight(w).t()).sum()
    y.backward()
    # identity straight-through: d/dw sum(x_hat @ w_hat^T) = column sums of x_hat broadcast
    x_hat = fake_quant_activation(x).detach()
    w_hat = fake_quant_weight(w).detach()
    assert torch.allclose(w.grad, x_hat.sum(0, keepdim=True).expand(8, 6), atol=1e-5)
    assert torch.allclose(x.grad, w_hat.sum(0, keepdim=True).expand(3, 6), atol=1e-5)


def test_ste_integer_values_equal_plain_quantizers():
    torch.manual_seed(3)
    w, x = torch.randn(10, 12), torch.randn(4, 12)
    w_int, s_w = ternary_quantize_ste(w)
    x_int, s_x = activation_quantize_ste(x)
    assert torch.equal(w_int, ternary_quantize(w)[0].float())
    assert torch.equal(x_int, activation_quantize(x)[0].float())
    assert torch.equal(s_w, ternary_quantize(w)[1]) and torch.equal(s_x, activation_quantize(x)[1])


def test_pack_code_matches_design():
    # weight j sits in bits 2*(j % 4); 0 -> 00, +1 -> 01, -1 -> 11
    w = torch.tensor([[1, -1, 0, 1, -1]], dtype=torch.int8)
    packed = pack_ternary(w)
    assert packed.shape == (1, 2) and packed.dtype == torch.uint8
    assert packed[0, 0].item() == 0b01_00_11_01
    assert packed[0, 1].item() == 0b00_00_00_11


@settings(max_examples=60, deadline=None)
@given(rows=st.integers(1, 9), cols=st.integers(1, 33), seed=st.integers(0, 2**16))
def test_pack_unpack_roundtrip(rows, cols, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randint(-1, 2, (rows, cols), generator=g, dtype=torch.int8)
    packed = pack_ternary(w)
    assert packed.shape == (rows, packed_row_bytes(cols))
    assert torch.equal(unpack_ternary(packed, cols), w)


def test_pack_rejects_bad_input():
    with pytest.raises(ValueError, match="2-D"):
        pack_ternary(torch.zeros(2, 2, 2, dtype=torch.int8))
    with pytest.raises(ValueError, match=r"\{-1, 0, 1\}"):
        pack_ternary(torch.tensor([[2, 0]]))
    with pytest.raises(ValueError, match="0b10"):
        unpack_ternary(torch.tensor([[0b10]], dtype=torch.uint8), 1)
    with pytest.raises(ValueError, match="bytes per row"):
        unpack_ternary(torch.zeros(1, 3, dtype=torch.uint8), 4)
