"""Local sparse pooling kernels: max (with argmax for backward) and sum (for average pooling).

``reference.py`` is pure PyTorch (any device/dtype, the ground truth for tests);
``numba_cpu.py`` holds output-stationary numba kernels for float32/float64 on the CPU.
"""
__all__: list = []
