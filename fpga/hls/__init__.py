"""Vitis HLS C++ export of the integer MatMul-free model and its C-simulation with g++.

``export_vitis(P, out, ExportOptions(...))`` writes a self-describing project folder (kernel,
weights, testbench with golden data, vendor scripts, README); ``run_csim(out)`` compiles the
kernel and testbench with g++ and checks every token and logit against the integer reference.
CLI: ``matmulfree export CHECKPOINT OUT --target vitis`` and ``matmulfree fpga csim OUT``.
"""

from .csim import CsimError, CsimResult, run_csim
from .export import EXPORT_FILES, ExportError, ExportOptions, export_vitis
from .resources import PARTS, MemoryFitError, check_fit, kernel_memory_bits

__all__ = ["EXPORT_FILES", "PARTS", "CsimError", "CsimResult", "ExportError", "ExportOptions", "MemoryFitError",
           "check_fit", "export_vitis", "kernel_memory_bits", "run_csim"]
