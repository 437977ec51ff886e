"""Scene primitives (oriented boxes, ellipsoids, cylinders) and their ray intersections.

A primitive has a local frame: ``world = center + rot @ local``; ``half`` are its half extents
(box half sizes, ellipsoid semi-axes, cylinder radii x/y and half height along local z).
Intersections are vectorized over rays with numpy.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import numpy as np

__all__ = ["BOX", "ELLIPSOID", "CYLINDER", "Primitives", "PrimitiveList", "intersect"]

BOX, ELLIPSOID, CYLINDER = 0, 1, 2
_EPS = 1e-9


@dataclass
class Primitives:
    """Struct of arrays for ``K`` primitives.

    kind [K] int8; center [K, 3], rot [K, 3, 3], half [K, 3] float64; label [K] uint16 raw id;
    instance [K] uint16 (0 = none); albedo [K] float32; pass_prob [K] float32 (chance a ray goes
    through: mesh fences, spokes); mfp [K] float32 (mean free path of a volumetric medium such as
    foliage, 0 = solid surface); window [K, 2] float32 (facade window period and floor height,
    0 = no windows); radius [K] bounding-sphere radius.
    """

    kind: np.ndarray
    center: np.ndarray
    rot: np.ndarray
    half: np.ndarray
    label: np.ndarray
    instance: np.ndarray
    albedo: np.ndarray
    pass_prob: np.ndarray
    mfp: np.ndarray
    window: np.ndarray
    radius: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.radius = np.linalg.norm(self.half, axis=1)

    def __len__(self) -> int:
        return len(self.kind)


class PrimitiveList:
    """Append-only builder of :class:`Primitives`."""

    def __init__(self) -> None:
        self._rows: List[tuple] = []

    def __len__(self) -> int:
        return len(self._rows)

    def add(self, kind: int, center, half, label: int, albedo: float, *, yaw: float = 0.0,
            rot: Optional[np.ndarray] = None, instance: int = 0, pass_prob: float = 0.0,
            mfp: float = 0.0, window: Tuple[float, float] = (0.0, 0.0)) -> None:
        if rot is None:
            c, s = np.cos(yaw), np.sin(yaw)
            rot = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
        half = np.maximum(np.asarray(half, dtype=np.float64), 1e-3)
        self._rows.append((kind, np.asarray(center, np.float64), rot, half, label, instance,
                           albedo, pass_prob, mfp, window))

    def finish(self) -> Primitives:
        r = self._rows
        if not r:
            z = np.zeros
            return Primitives(z(0, np.int8), z((0, 3)), z((0, 3, 3)), z((0, 3)), z(0, np.uint16),
                              z(0, np.uint16), z(0, np.float32), z(0, np.float32), z(0, np.float32),
                              z((0, 2), np.float32))
        col = list(zip(*r))
        return Primitives(
            np.array(col[0], np.int8), np.stack(col[1]), np.stack(col[2]), np.stack(col[3]),
            np.array(col[4], np.uint16), np.array(col[5], np.uint16), np.array(col[6], np.float32),
            np.array(col[7], np.float32), np.array(col[8], np.float32), np.array(col[9], np.float32))


def _box(o, d, h):
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = 1.0 / d
        t1 = (-h - o) * inv
        t2 = (h - o) * inv
    lo = np.fmin(t1, t2)
    hi = np.fmax(t1, t2)
    axis = np.argmax(lo, axis=1)
    t_in = lo[np.arange(len(d)), axis]
    t_out = hi.min(axis=1)
    miss = ~(t_out >= np.maximum(t_in, 0.0))
    n = np.zeros_like(d)
    n[np.arange(len(d)), axis] = -np.sign(d[np.arange(len(d)), axis])
    t_in = np.where(miss, np.inf, t_in)
    return t_in, np.where(miss, np.inf, t_out), n


def _ellipsoid(o, d, h):
    os_, ds = o / h, d / h
    a = np.einsum("ij,ij->i", ds, ds)
    b = 2.0 * ds @ os_
    c = os_ @ os_ - 1.0
    disc = b * b - 4 * a * c
    ok = disc >= 0
    sq = np.sqrt(np.where(ok, disc, 0.0))
    t_in = np.where(ok, (-b - sq) / (2 * a), np.inf)
    t_out = np.where(ok, (-b + sq) / (2 * a), np.inf)
    p = o + np.where(ok, t_in, 0.0)[:, None] * d
    n = np.where(ok[:, None], p / (h * h), 0.0)
    return t_in, t_out, n


def _cylinder(o, d, h):
    os_, ds = o[:2] / h[:2], d[:, :2] / h[:2]
    a = np.einsum("ij,ij->i", ds, ds)
    b = 2.0 * ds @ os_
    c = os_ @ os_ - 1.0
    disc = b * b - 4 * a * c
    par = a < 1e-12
    with np.errstate(divide="ignore", invalid="ignore"):
        sq = np.sqrt(np.maximum(disc, 0.0))
        s_in = np.where(par, -np.inf, (-b - sq) / (2 * a))
        s_out = np.where(par, np.inf, (-b + sq) / (2 * a))
        tz1 = (-h[2] - o[2]) / d[:, 2]
        tz2 = (h[2] - o[2]) / d[:, 2]
    side_ok = np.where(par, c <= 0, disc >= 0)
    z_lo, z_hi = np.fmin(tz1, tz2), np.fmax(tz1, tz2)
    flat = d[:, 2] == 0
    inside_z = abs(o[2]) <= h[2]
    z_lo = np.where(flat, np.where(inside_z, -np.inf, np.inf), z_lo)
    z_hi = np.where(flat, np.where(inside_z, np.inf, -np.inf), z_hi)
    t_in = np.maximum(s_in, z_lo)
    t_out = np.minimum(s_out, z_hi)
    hit = side_ok & (t_out >= np.maximum(t_in, 0.0))
    from_side = s_in >= z_lo
    p = o + np.where(np.isfinite(t_in), t_in, 0.0)[:, None] * d
    n = np.zeros_like(d)
    n[:, :2] = np.where(from_side[:, None], p[:, :2] / (h[:2] * h[:2]), 0.0)
    n[:, 2] = np.where(from_side, 0.0, -np.sign(d[:, 2]))
    return np.where(hit, t_in, np.inf), np.where(hit, t_out, np.inf), n


def intersect(kind: int, o_local: np.ndarray, d_local: np.ndarray, half: np.ndarray):
    """Ray hits of one primitive in its local frame.

    Args:
        kind: BOX, ELLIPSOID or CYLINDER.
        o_local: ``[3]`` ray origin; d_local: ``[R, 3]`` directions (not necessarily unit).
        half: ``[3]`` half extents.

    Returns:
        ``t_in [R]`` (entry distance in units of ``|d|``, inf on a miss; may be negative if the
        origin is inside), ``t_out [R]`` (exit) and unnormalized local normals ``[R, 3]`` at entry.
    """
    if kind == BOX:
        return _box(o_local, d_local, half)
    if kind == ELLIPSOID:
        return _ellipsoid(o_local, d_local, half)
    if kind == CYLINDER:
        return _cylinder(o_local, d_local, half)
    raise ValueError(f"unknown primitive kind {kind}")
