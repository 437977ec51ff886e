r"""A simulated Velodyne HDL-64E: 64 beams from +2 deg to -24.9 deg, ~2000 azimuth steps.

Ray casting is a z-buffer over the ``[beams, azimuths]`` range image (numba kernels in
``raycast.py``): the ground height field is intersected for all rays, then each primitive, nearest
first, only for the rays of its bounding sphere's image window (exact culling in the sensor frame),
and skipped when that window is already fully occluded.

Sensor effects: Gaussian range noise (~1.5 cm + range term), volumetric foliage (mean free path),
see-through meshes and glass, remission = material albedo x incidence term x range falloff x
log-normal noise (materials overlap between classes), painted lane and parking-bay lines, grass
on terrain (returns from a random depth inside the blade layer), random dropouts, weak far returns
lost, window glass dropouts, a few noisy beams, and no returns closer than ``min_range``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .common import OTHER_GROUND, PARKING, ROAD, SIDEWALK, TERRAIN
from .layout import Layout
from .primitives import Primitives
from .raycast import cast_primitives

__all__ = ["HDL64E", "scan"]


@dataclass(frozen=True)
class HDL64E:
    """Sensor parameters. ``elevations()`` gives the 64 beam angles (deg), top to bottom: an upper
    block of 32 beams +2.0..-8.33 and a lower block of 32 beams -8.83..-24.9, as on the real unit."""

    azimuth_steps: int = 2000
    max_range: float = 120.0
    min_range: float = 2.0
    range_sigma: float = 0.015
    dropout: float = 0.015

    def elevations(self) -> np.ndarray:
        return np.concatenate([np.linspace(2.0, -8.33, 32), np.linspace(-8.83, -24.9, 32)])


_GROUND_ALBEDO = {ROAD: (0.13, 0.3), PARKING: (0.15, 0.35), SIDEWALK: (0.22, 0.45), OTHER_GROUND: (0.18, 0.48),
                  TERRAIN: (0.28, 0.55)}
_LINE_W, _EDGE_W = 0.12, 0.25  # widths of painted bay lines and of the broad edge line along the road (m)
#: Grass on terrain: a ray enters the grass top (the height field) and stops after a random path
#: (mean ``_GRASS_MFP`` m) but at most ``_GRASS_H`` m below the top, so terrain is rough at the
#: scale of a few centimetres while paved surfaces are flat up to the range noise.
_GRASS_MFP, _GRASS_H = 0.35, 0.08


def _ground_albedo(layout: Layout, cls, x, y, rng):
    alb = np.zeros(len(cls), np.float32)
    for c, (a, b) in _GROUND_ALBEDO.items():
        m = cls == c
        # spatially smooth material variation (patches) so that albedo is not a per-point id
        patch = 0.5 + 0.5 * np.sin(0.37 * x[m] + 1.3) * np.sin(0.29 * y[m] + 0.4)
        alb[m] = a + (b - a) * patch
    road = cls == ROAD
    if road.any():  # painted lane lines are bright but still road
        main = layout.streets[0]
        u, v = main.local(x[road], y[road])
        per_side = np.arange(main.lanes // 2 + 1) * main.lane_w + main.median
        lines = np.concatenate([-per_side, per_side])
        near = np.abs(v[:, None] - lines[None, :]).min(1) < 0.07
        dashed = np.abs(v) < main.median + main.half_road - 0.5  # outer (bike lane) lines are solid
        paint = near & (~dashed | (np.mod(u, 9.0) < 3.0))
        a = alb[road]
        a[paint] = rng.uniform(0.55, 0.85, int(paint.sum()))
        alb[road] = a
    park = np.nonzero(cls == PARKING)[0]
    for st in layout.streets:  # parking markings: a solid edge line along the road and transverse bay lines
        if not len(park):
            break
        u, v = st.local(x[park], y[park])
        av = np.abs(v)
        e0 = np.where(v >= 0, st.edges(1)[0], st.edges(0)[0])
        e1 = np.where(v >= 0, st.edges(1)[1], st.edges(0)[1])
        band = (av >= e0) & (av < e1) & (u >= st.u_range[0]) & (u <= st.u_range[1])
        bay = 5.0 + 0.5 * (int(abs(st.offset)) % 3)
        paint = band & ((av - e0 < _EDGE_W) | (np.mod(u + 0.37 * st.offset, bay) < _LINE_W))
        alb[park[paint]] = rng.uniform(0.5, 0.8, int(paint.sum()))
    return alb


def scan(prims: Primitives, layout: Layout, pose: np.ndarray, rng: np.random.Generator,
         sensor: HDL64E = HDL64E()):
    """Simulate one revolution.

    Args:
        prims: scene primitives (world frame).
        layout: ground of the scene.
        pose: ``[4, 4]`` world-from-lidar.

    Returns:
        points ``[N, 4]`` float32 (x, y, z in the lidar frame, remission in [0, 1)), raw semantic
        ids ``[N]`` uint16 and instance ids ``[N]`` uint16.
    """
    A = sensor.azimuth_steps
    el = np.deg2rad(sensor.elevations())
    B = len(el)
    az0 = rng.uniform(0, 2 * np.pi / A)
    az = az0 + np.arange(A) * (2 * np.pi / A)
    ce = np.cos(el)
    d_s = np.stack([ce[:, None] * np.cos(az)[None], ce[:, None] * np.sin(az)[None],
                    np.repeat(np.sin(el)[:, None], A, 1)], -1).reshape(-1, 3)
    R, O = pose[:3, :3], pose[:3, 3]
    D = d_s @ R.T
    n_rays = B * A
    depth, gcls = layout.intersect(O, D, sensor.max_range)
    hit = np.full(n_rays, -1, np.int64)  # -1: ground or nothing
    normal = np.zeros((n_rays, 3))
    normal[:, 2] = 1.0

    # primitives, nearest first, each only over the image window of its bounding sphere
    cs = (prims.center - O) @ R
    dist = np.linalg.norm(cs, axis=1)
    cand = np.nonzero(dist - prims.radius < sensor.max_range)[0]
    cand = cand[np.argsort(dist[cand], kind="stable")]
    cast_primitives(O, D, A, el[::-1].copy(), az0, cs, cand, prims.kind, prims.center, prims.rot, prims.half,
                    prims.radius, prims.mfp, prims.pass_prob, int(rng.integers(1 << 62)), depth, hit, normal)

    valid = np.isfinite(depth) & (depth >= sensor.min_range) & (depth <= sensor.max_range)
    idx = np.nonzero(valid)[0]
    t = depth[idx]
    k = hit[idx]
    obj = k >= 0
    kk = k[obj]
    label = np.where(obj, 0, gcls[idx]).astype(np.uint16)
    label[obj] = prims.label[kk]
    inst = np.zeros(len(idx), np.uint16)
    inst[obj] = prims.instance[kk]
    P = O + t[:, None] * D[idx]
    albedo = np.empty(len(idx), np.float32)
    albedo[obj] = prims.albedo[kk]
    albedo[~obj] = _ground_albedo(layout, label[~obj], P[~obj, 0], P[~obj, 1], rng)
    cosi = np.abs(np.einsum("ij,ij->i", normal[idx], D[idx]))
    vol = np.zeros(len(idx), bool)
    vol[obj] = prims.mfp[kk] > 0
    cosi[vol] = rng.uniform(0.3, 1.0, int(vol.sum()))
    keep = np.ones(len(idx), bool)

    # facade windows: glass drops the return or shows the recessed interior
    win = np.zeros(len(idx), bool)
    win[obj] = prims.window[kk, 0] > 0
    if win.any():
        wi = np.nonzero(win)[0]
        kw = kk[np.nonzero(win[obj])[0]]
        loc = np.einsum("nij,ni->nj", prims.rot[kw], P[wi] - prims.center[kw])
        nl = np.einsum("nij,ni->nj", prims.rot[kw], normal[idx[wi]])
        along = np.where(np.abs(nl[:, 0]) > np.abs(nl[:, 1]), loc[:, 1], loc[:, 0])
        period, floor = prims.window[kw, 0], prims.window[kw, 1]
        zf = loc[:, 2] + prims.half[kw, 2]
        in_win = (np.mod(along, period) < 0.55 * period) & (np.mod(zf, floor) > 0.9) & (np.mod(zf, floor) < 2.3)
        in_win &= np.abs(nl[:, 2]) < 0.5
        glass = wi[in_win]
        drop = rng.random(len(glass)) < 0.5
        keep[glass[drop]] = False
        t[glass[~drop]] += rng.uniform(0.08, 0.3, int((~drop).sum()))
        albedo[glass] *= 0.3

    # grass: terrain returns come from a random depth inside a thin layer of blades
    grass = np.nonzero(label == TERRAIN)[0]
    if len(grass):
        dz = np.maximum(np.abs(D[idx[grass], 2]), 1e-3)
        t[grass] += np.minimum(rng.exponential(_GRASS_MFP, len(grass)), _GRASS_H / dz)
        cosi[grass] = rng.uniform(0.3, 1.0, len(grass))

    # remission and dropouts
    rem = albedo * (0.25 + 0.75 * cosi) * np.exp(-t / 250.0)
    rem = rem * np.exp(rng.normal(0, 0.18, len(rem))) + rng.normal(0, 0.015, len(rem))
    rem = np.clip(rem, 0.0, 0.99).astype(np.float32)
    keep &= rng.random(len(idx)) >= sensor.dropout
    weak = rem / np.maximum(t / 40.0, 1.0) ** 2 < 0.004
    keep &= ~(weak & (rng.random(len(idx)) < 0.7))
    beam = idx // A
    bad_beams = np.array([7, 23, 41])
    keep &= ~(np.isin(beam, bad_beams) & (rng.random(len(idx)) < 0.15))

    sigma = sensor.range_sigma + 0.0002 * t
    sigma = np.where(np.isin(beam, bad_beams), sigma * 2.5, sigma)
    t = t + rng.normal(0, 1, len(t)) * sigma
    xyz = t[:, None] * d_s[idx]
    pts = np.concatenate([xyz, rem[:, None]], 1).astype(np.float32)[keep]
    return pts, label[keep], inst[keep]
