"""CaloChallenge-style HDF5 for single-shower studies.

Datasets: ``incident_energies`` ``[N, 1]`` and ``showers`` ``[N, n_voxels]``, both float32 in
MeV, gzip-compressed. Voxel order: radial fastest, then angular, then layer
(``(layer * n_alpha + alpha) * n_r + r``). The binning is stored as file attributes
(``r_edges_cm``, ``n_alpha``, ``n_layers``) when known; the CaloChallenge files keep it in
separate XML files, so the reader does not require it.
"""
from __future__ import annotations

import os
from typing import Optional

import numpy as np

__all__ = ["write_calochallenge", "read_calochallenge"]


def _h5py():
    try:
        import h5py
    except ImportError as e:   # pragma: no cover
        raise ImportError("HDF5 I/O needs 'h5py' (pip install h5py)") from e
    return h5py


def write_calochallenge(path, incident_energies, showers, attrs: Optional[dict] = None,
                        compression: Optional[str] = "gzip") -> None:
    """Write ``incident_energies [N, 1]`` / ``[N]`` and ``showers [N, V]`` (MeV)."""
    e = np.asarray(incident_energies, np.float32).reshape(-1, 1)
    s = np.asarray(showers, np.float32)
    if s.ndim != 2 or s.shape[0] != e.shape[0]:
        raise ValueError(f"showers must be [N, V] with N = {e.shape[0]} incident energies, got {s.shape}")
    with _h5py().File(os.fspath(path), "w") as f:
        f.create_dataset("incident_energies", data=e, compression=compression)
        f.create_dataset("showers", data=s, compression=compression)
        for k, v in (attrs or {}).items():
            f.attrs[k] = v


def read_calochallenge(path, negative: str = "clip"):
    """Read a CaloChallenge file.

    Args:
        path: HDF5 file. negative: ``"clip"`` (negative voxel energies -> 0) or ``"raise"``.

    Returns:
        ``(incident_energies [N, 1] float32, showers [N, V] float32, attrs dict)``.

    Raises:
        ValueError: a missing dataset (named), mismatched N, NaN/inf, negative values with
            ``negative="raise"``.
    """
    if negative not in ("clip", "raise"):
        raise ValueError(f"negative must be 'clip' or 'raise' for showers, got {negative!r}")
    path = os.fspath(path)
    with _h5py().File(path, "r") as f:
        for k in ("incident_energies", "showers"):
            if k not in f:
                raise ValueError(f"{path}: missing dataset '{k}' (found: {sorted(f.keys())})")
        e = np.asarray(f["incident_energies"][...], np.float32)
        s = np.asarray(f["showers"][...], np.float32)
        attrs = {k: f.attrs[k] for k in f.attrs}
    if e.ndim == 1:
        e = e[:, None]
    if e.ndim != 2 or e.shape[1] != 1:
        raise ValueError(f"{path}: 'incident_energies' must be [N, 1], got {e.shape}")
    if s.ndim != 2 or s.shape[0] != e.shape[0]:
        raise ValueError(f"{path}: 'showers' must be [N, V] with N = {e.shape[0]}, got {s.shape}")
    for k, a in (("incident_energies", e), ("showers", s)):
        if not np.isfinite(a).all():
            raise ValueError(f"{path}: dataset '{k}' has NaN/inf")
    if (s < 0).any():
        if negative == "raise":
            raise ValueError(f"{path}: dataset 'showers' has {int((s < 0).sum())} negative voxel energies")
        s = np.maximum(s, 0)
    return e, s, attrs
