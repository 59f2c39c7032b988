"""Choice between the fused Triton kernels and the plain PyTorch reference.

``MATMULFREE_KERNELS`` (environment) or :func:`set_kernel_backend` selects:

* ``auto`` (default): Triton for CUDA tensors when Triton imports, the reference elsewhere;
* ``triton``: always Triton (CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1``);
* ``torch``: always the reference.
"""

from __future__ import annotations

import functools
import os

import torch

BACKENDS = ("auto", "triton", "torch")
_override: str | None = None


def set_kernel_backend(name: str | None) -> None:
    """Force a backend for this process (``None`` returns to the environment's choice)."""
    global _override
    if name is not None and name not in BACKENDS:
        raise ValueError(f"unknown kernel backend {name!r}; expected one of {BACKENDS}")
    _override = name


def kernel_backend() -> str:
    name = _override or os.environ.get("MATMULFREE_KERNELS", "auto")
    if name not in BACKENDS:
        raise ValueError(f"MATMULFREE_KERNELS={name!r} is not one of {BACKENDS}")
    return name


@functools.lru_cache(maxsize=1)
def triton_available() -> bool:
    try:
        import triton  # noqa: F401

        import matmulfree.triton_kernels  # noqa: F401
    except Exception:
        return False
    return True


def use_triton(x: torch.Tensor) -> bool:
    """Whether a layer should run its Triton kernel for input ``x``."""
    name = kernel_backend()
    if name == "torch":
        return False
    if name == "triton":
        if not triton_available():
            raise RuntimeError("MATMULFREE_KERNELS=triton but Triton or matmulfree.triton_kernels is missing")
        return True
    return x.is_cuda and triton_available()
