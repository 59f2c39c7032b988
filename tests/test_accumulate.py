"""Gradient accumulation is exact: N micro-batches of B == one batch of N·B, ragged and padded too."""

import pytest
import torch

from matmulfree import backend
from matmulfree.accumulate import accumulate_gradients, count_targets, summed_token_loss
from matmulfree.config import MatMulFreeConfig, TransformerConfig
from matmulfree.models import build_model
from matmulfree.models.base import IGNORE_INDEX


def padded_batch(n: int, length: int, vocab: int, seed: int = 0) -> torch.Tensor:
    """``n`` sequences of ``length + 1`` ids, the later ones ending in padding of different lengths."""
    g = torch.Generator().manual_seed(seed)
    seq = torch.randint(0, vocab, (n, length + 1), generator=g)
    for i in range(n // 2, n):
        seq[i, length + 1 - (i % 5 + 1) * 2 :] = IGNORE_INDEX
    return seq


def grads(model, batches) -> tuple[dict[str, torch.Tensor], float]:
    model.zero_grad(set_to_none=True)
    total = sum(count_targets(b) for b in batches)
    loss = accumulate_gradients(model, batches, total)
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}, float(loss) / total


@pytest.mark.parametrize("config", [
    MatMulFreeConfig(vocab_size=40, d_model=32, n_layers=2, intermediate_size=64, forget_lower_bound=True),
    TransformerConfig(vocab_size=40, d_model=32, n_layers=2, n_heads=2, intermediate_size=64),
], ids=["matmulfree", "transformer"])
@pytest.mark.parametrize("kernels", ["auto", "torch"])  # the fused CPU path and the plain reference
def test_micro_batches_equal_one_batch(config, kernels, monkeypatch):
    monkeypatch.setattr(backend, "_override", kernels)
    torch.manual_seed(0)
    model = build_model(config)
    seq = padded_batch(10, 24, config.vocab_size)
    assert count_targets(seq) < seq[:, 1:].numel()  # there is padding
    whole, loss_whole = grads(model, [seq])
    for split in ([4, 4, 2], [3, 3, 3, 1], [1] * 10):  # ragged last micro-batch
        parts, loss_parts = grads(model, list(torch.split(seq, split)))
        assert loss_parts == pytest.approx(loss_whole, rel=1e-6)
        assert parts.keys() == whole.keys()
        for name, g in whole.items():
            torch.testing.assert_close(parts[name], g, rtol=1e-5, atol=1e-7, msg=name)


def test_padding_is_no_target_and_counts_nothing():
    torch.manual_seed(0)
    model = build_model(MatMulFreeConfig(vocab_size=40, d_model=32, n_layers=1, intermediate_size=64))
    seq = padded_batch(2, 16, 40)
    seq[1, 9:] = IGNORE_INDEX
    with torch.no_grad():
        loss, n = summed_token_loss(model, seq)
        loss0, n0 = summed_token_loss(model, seq[:1])
        short, n_short = summed_token_loss(model, seq[1:, :9])  # the unpadded prefix of sequence 1
    assert n == n0 + n_short == 16 + 8
    assert loss.item() == pytest.approx((loss0 + short).item(), rel=1e-5)


def test_naive_mean_of_micro_means_is_not_exact():
    """The per-micro-batch mean (what a naive loop does) weights padded micro-batches wrongly."""
    torch.manual_seed(0)
    model = build_model(MatMulFreeConfig(vocab_size=40, d_model=32, n_layers=1, intermediate_size=64))
    seq = padded_batch(10, 24, 40)
    whole, _ = grads(model, [seq])
    model.zero_grad(set_to_none=True)
    parts = list(torch.split(seq, [4, 4, 2]))
    for part in parts:
        loss, n = summed_token_loss(model, part)
        (loss / n / len(parts)).backward()
    g = model.embed.weight.grad
    assert not torch.allclose(g, whole["embed.weight"], rtol=1e-3, atol=1e-6)
    with pytest.raises(ValueError, match="total_targets"):
        accumulate_gradients(model, parts, 0)
