"""Inference engines: running trained models fast, outside the training graph.

* :mod:`.cpu` — packed ternary decode on the CPU (:class:`PackedCPUDecoder`, exact against the
  reference step) and its dense fp32 twin (:class:`DenseCPUDecoder`, the speed baseline);
* :mod:`.cpu_rwkv` — the same packed decode for RWKV-4 models (:class:`PackedRWKVDecoder`);
* :mod:`.ternary_mm`, :mod:`.ckernel` — the exact int8 x ternary products behind it (a C kernel
  reading 2-bit weights, compiled at first use; FBGEMM int8 and fp32 fallbacks);
* :mod:`.gpu` — per-token decode on the Triton kernels, captured in CUDA graphs (imports Triton;
  import it explicitly).

:mod:`matmulfree.energy` times these engines to measure energy per token; it does not run models itself.
"""

from .cpu import DenseCPUDecoder, PackedCPUDecoder
from .cpu_rwkv import PackedRWKVDecoder

__all__ = ["DenseCPUDecoder", "PackedCPUDecoder", "PackedRWKVDecoder"]
