"""CLUE density clustering kernels: ``reference.py`` (dense PyTorch) and ``numba_cpu.py`` (tiled numba).

Use them through :func:`sparse3d.clustering.clue`, which checks the arguments.
"""
__all__: list = []
