"""Sparse-convolution kernels: torch gather-GEMM-scatter (reference + grouped) and fused numba CPU."""
