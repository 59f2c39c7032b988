"""Entry points that :mod:`matmulfree.layers` calls when :func:`matmulfree.backend.use_triton` is true."""

from __future__ import annotations

import torch

from .bitlinear import bitlinear_train
from .packed import packed_bitlinear


def bitlinear_dispatch(layer, x: torch.Tensor) -> torch.Tensor:
    """``BitLinear`` forward on the kernels: ``x (..., in)`` -> ``(..., out)`` in ``x``'s dtype.

    Packed layers use the packed GEMV/GEMM; latent-weight layers the fused training kernels (with
    straight-through gradients; the quantized weights are cached across micro-batches while
    gradients are being recorded and the weight is unchanged). A layer without its inner RMSNorm
    (``layer.norm is None``) runs the same kernels with the norm switched off.

    A layer with ``quantize_activations=False`` has no integer product to fuse (its activations stay
    floating point): it runs the reference path, i.e. ternary weights times float activations on
    cuBLAS.
    """
    if not layer.quantize_activations:
        return layer.forward_reference(x)
    gain = layer.norm.weight if layer.norm is not None else None
    eps = layer.norm.eps if layer.norm is not None else layer.eps
    if layer.packed:
        return packed_bitlinear(x, gain, eps, layer.weight_packed, layer.weight_scale, layer.in_features)
    w = layer.weight
    cache = torch.is_grad_enabled() and w.requires_grad
    return bitlinear_train(x, gain, w, eps, cache=cache)
