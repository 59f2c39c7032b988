"""Entry points that :mod:`matmulfree.layers` calls when :func:`matmulfree.backend.use_triton` is true."""

from __future__ import annotations

import torch

from .bitlinear import bitlinear_train
from .packed import packed_bitlinear


def bitlinear_dispatch(layer, x: torch.Tensor) -> torch.Tensor:
    """``BitLinear`` forward on the kernels: ``x (..., in)`` -> ``(..., out)`` in ``x``'s dtype.

    Packed layers use the packed GEMV/GEMM; latent-weight layers the fused training kernels (with
    straight-through gradients; the quantized weights are cached across micro-batches while
    gradients are being recorded and the weight is unchanged).
    """
    if layer.packed:
        return packed_bitlinear(x, layer.norm.weight, layer.norm.eps, layer.weight_packed, layer.weight_scale,
                                layer.in_features)  # fmt: skip
    w = layer.weight
    cache = torch.is_grad_enabled() and w.requires_grad
    return bitlinear_train(x, layer.norm.weight, w, layer.norm.eps, cache=cache)
