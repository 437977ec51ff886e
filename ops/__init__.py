"""Compute kernels for sparse3d (installed as ``sparse3d.ops``).

Each op folder holds ``reference.py`` (pure PyTorch, device-agnostic, the ground
truth for tests) and ``numba_cpu.py`` (numba kernels for the CPU). Nothing is
compiled at import time: numba kernels compile on first call and are cached.
"""
