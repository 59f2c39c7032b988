"""Opt-in ``torch.compile`` for training (``train.compile: true``), with a clear refusal where it cannot work.

Compiling fuses the element-wise work around the matrix products (norms, quantisation, gates)
into generated kernels: C++/OpenMP on a CPU, Triton on a GPU. It needs a Python version that
TorchDynamo supports, and a C++ compiler (CPU) or Triton (GPU); :func:`compile_problem` names
what is missing, and the trainer stops with that message before training starts instead of
failing at the first step. The first steps are slow while kernels are generated.
"""

from __future__ import annotations

import os
import shutil

import torch


def compile_problem(device: torch.device) -> str | None:
    """Why ``torch.compile`` cannot train on ``device`` here, or None when it can."""
    if not hasattr(torch, "compile"):
        return f"torch {torch.__version__} has no torch.compile (needs torch >= 2.0)"
    try:
        import torch._dynamo as dynamo

        if not dynamo.is_dynamo_supported():
            import sys

            return f"TorchDynamo does not support Python {sys.version.split()[0]} in torch {torch.__version__}"
    except ImportError as e:
        return f"torch._dynamo does not import ({e})"
    if device.type == "cuda":
        try:
            import triton  # noqa: F401
        except ImportError:
            return "compiling for a GPU needs Triton (pip install triton)"
        return None
    compilers = [os.environ.get("CXX")] if os.environ.get("CXX") else ["g++", "c++", "clang++"]
    if not any(shutil.which(c) for c in compilers if c):
        return ("compiling for a CPU needs a C++ compiler (" + ", ".join(c for c in compilers if c)
                + " not found on PATH; install g++ or set CXX)")
    return None


def compile_for_training(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``torch.compile(model)``; raises ``RuntimeError`` naming the missing piece (:func:`compile_problem`)."""
    problem = compile_problem(device)
    if problem is not None:
        raise RuntimeError(f"train.compile: true cannot be used here: {problem}; set train.compile: false")
    return torch.compile(model)
