"""Vitis HLS C++ export of the integer MatMul-free models (MLGRU and RWKV-4) and its C-simulation with g++.

``export_vitis(P, out, ExportOptions(...))`` writes a self-describing project folder (kernel,
weights, testbench with golden data, vendor scripts, README); ``run_csim(out)`` compiles the
kernel and testbench with g++ and checks every token and logit against the integer reference.
CLI: ``matmulfree export CHECKPOINT OUT --target vitis`` and ``matmulfree fpga csim OUT``.
The architecture of ``P`` picks the kernel source (``firmware/mmf_kernel.cpp`` from
``templates/firmware/mmf_kernel.cpp`` or ``rwkv_kernel.cpp``), the blob layout (:mod:`.layout` /
:mod:`.layout_rwkv`) and the headers (:mod:`.cgen` / :mod:`.cgen_rwkv`); the testbench, the
scripts and the C-simulation are shared.
"""

from .csim import CsimError, CsimResult, run_csim
from .export import EXPORT_FILES, ExportError, ExportOptions, export_vitis
from .resources import PARTS, MemoryFitError, check_fit, kernel_memory_bits

__all__ = ["EXPORT_FILES", "PARTS", "CsimError", "CsimResult", "ExportError", "ExportOptions", "MemoryFitError",
           "check_fit", "export_vitis", "kernel_memory_bits", "run_csim"]
