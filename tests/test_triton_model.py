"""Model level: a tiny MatMulFreeLM trained a few steps with the Triton kernels gives the same
losses as with the PyTorch reference path (within 2e-3 relative: fp32 kernels agree to ~1e-7, but
the updates can move a latent weight across a ternary rounding boundary)."""

import pytest
import torch

triton = pytest.importorskip("triton")

from matmulfree import build_model, preset  # noqa: E402
from matmulfree.backend import set_kernel_backend  # noqa: E402

GPU = torch.cuda.is_available()
DEV = "cuda" if GPU else "cpu"


def train_losses(backend: str, steps: int = 4) -> list[float]:
    set_kernel_backend(backend)
    try:
        torch.manual_seed(0)
        d, layers, T = (128, 2, 64) if GPU else (32, 2, 20)
        model = build_model(preset("tiny", d_model=d, n_layers=layers, intermediate_size=2 * d, vocab_size=64,
                                   gate="released", forget_lower_bound=True)).to(DEV)  # fmt: skip
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        gen = torch.Generator().manual_seed(1)
        losses = []
        for _ in range(steps):
            ids = torch.randint(0, 64, (2, T), generator=gen).to(DEV)
            loss = model(ids, labels=ids).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        return losses
    finally:
        set_kernel_backend(None)


def test_training_losses_match_reference_path():
    ref = train_losses("torch")
    fused = train_losses("triton")
    for a, b in zip(fused, ref):
        assert abs(a - b) <= 2e-3 * abs(b), (fused, ref)
    if not GPU:  # at the CPU shape these steps lower the loss (not a property of every shape/lr)
        assert ref[-1] < ref[0]
