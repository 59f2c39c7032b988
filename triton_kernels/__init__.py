"""Fused Triton kernels (training) and packed 2-bit ternary kernels (inference).

Each kernel sits beside a plain PyTorch ``*_naive`` reference in the same module:

* :mod:`.norm_quant` — RMSNorm + per-token int8 quantization;
* :mod:`.bitlinear` — fused BitLinear training forward/backward (int8 tensor-core product,
  straight-through gradients, recomputed activations, cached ternary weights);
* :mod:`.scan` — chunked MLGRU recurrence forward/backward;
* :mod:`.wkv` — RWKV-4 WKV recurrence forward/backward (running-max form, fp32);
* :mod:`.packed` — packed ternary GEMV/GEMM on the 2-bit storage code;
* :mod:`.decode` — fused MLGRU decode step (the CUDA-graph decoders that use it are in
  :mod:`matmulfree.inference.gpu`).

``matmulfree.layers`` calls :func:`bitlinear_dispatch` and :func:`mlgru_scan`, the RWKV model
:func:`wkv` (see
``matmulfree.backend`` for how the backend is chosen). Kernels run on CUDA tensors, or on CPU under
``TRITON_INTERPRET=1`` (set before this package is imported).
"""

from ._common import INTERPRET
from .bitlinear import bitlinear_train, bitlinear_train_naive, int8_matmul, ternary_weight, weight_cache
from .decode import mlgru_step, mlgru_step_naive
from .dispatch import bitlinear_dispatch
from .norm_quant import rmsnorm_quantize, rmsnorm_quantize_multi, rmsnorm_quantize_naive
from .packed import packed_bitlinear, packed_bitlinear_naive, packed_matmul, packed_matmul_naive
from .scan import mlgru_scan, mlgru_scan_naive
from .wkv import wkv, wkv_naive

__all__ = [
    "INTERPRET",
    "bitlinear_dispatch",
    "bitlinear_train",
    "bitlinear_train_naive",
    "int8_matmul",
    "mlgru_scan",
    "mlgru_scan_naive",
    "mlgru_step",
    "mlgru_step_naive",
    "packed_bitlinear",
    "packed_bitlinear_naive",
    "packed_matmul",
    "packed_matmul_naive",
    "rmsnorm_quantize",
    "rmsnorm_quantize_multi",
    "rmsnorm_quantize_naive",
    "ternary_weight",
    "weight_cache",
    "wkv",
    "wkv_naive",
]
