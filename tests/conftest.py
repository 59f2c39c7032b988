"""Test-session setup shared by every test module."""

import os

# Triton kernels are tested on CPU through Triton's interpreter; it must be switched on before
# any kernel module is imported. On a GPU machine set TRITON_INTERPRET=0 to test the real kernels.
try:
    import torch

    _has_cuda = torch.cuda.is_available()
except Exception:  # pragma: no cover
    _has_cuda = False
if not _has_cuda:
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# Tests never touch the user's cache (token files, the downloaded corpus).
if "MATMULFREE_CACHE" not in os.environ:
    import tempfile

    os.environ["MATMULFREE_CACHE"] = tempfile.mkdtemp(prefix="matmulfree-test-cache-")
