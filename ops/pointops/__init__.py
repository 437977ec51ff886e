"""Point <-> voxel kernels (SPVCNN / PVCNN).

Two mutually adjoint primitives carry every point-voxel op:

``gather_weighted``   ``out[p] = sum_k w[p, k] * feats[idx[p, k]]`` (devoxelize, interpolation)
``scatter_weighted``  ``out[v] = sum_{(p, k): idx[p, k] = v} w[p, k] * src[p]`` (its transpose;
                      scatter-mean is the case ``K = 1, w = 1 / count``)

Entries with ``idx < 0`` are skipped. ``reference.py`` is pure torch (any device),
``numba_cpu.py`` holds the CPU kernels; the autograd glue lives in
``sparse3d.nn.functional.pointops``.
"""

__all__: list = []
