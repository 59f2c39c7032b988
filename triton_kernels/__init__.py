"""Fused Triton kernels (training) and packed 2-bit ternary kernels (inference)."""
