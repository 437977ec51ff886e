"""Internals of the synthetic LiDAR generator (public API: ``sparse3d.datasets.synthetic_lidar``).

``common``: raw class ids and rotations; ``primitives``: analytic ray casting of boxes,
ellipsoids and cylinders; ``layout``: streets and the ground height field; ``objects``: builders
of cars, trees, buildings, ...; ``scene``: procedural placement; ``sensor``: the HDL-64E model;
``writer``: SemanticKITTI files.
"""
__all__: list = []
