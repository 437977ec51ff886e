"""BEV pooling kernels (the LSS "splat"): sum frustum-point features into BEV grid cells.

A point with integer cell ``(x, y, z)`` in batch sample ``b`` goes to the flat cell
``rank = ((b * Z + z) * X + x) * Y + y`` of a ``[B, Z, X, Y]`` grid. Two implementations:

* ``reference.py``: pure PyTorch, any device. ``bev_pool_naive`` is the naive scatter
  (one ``index_add_`` into the flattened ``[B*Z*X*Y, C]`` output, the ground truth for tests);
  ``build_intervals`` + ``interval_pool`` is the device-agnostic rank -> sort -> interval
  (segment) sum path.
* ``numba_cpu.py``: numba kernels for the same plan (parallel rank computation, counting
  sort, load-balanced interval reduction writing ``[B, C, Z*X*Y]`` directly, gather backward),
  plus the fused depth x context variant (BEVPoolv2 style) that never builds the
  ``[M, C]`` outer-product features.
"""
__all__: list = []
