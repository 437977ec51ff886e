"""Simulated 32-beam spinning LiDAR (HDL-32E-like, as nuScenes' LIDAR_TOP) and virtual radars, ray-cast
against the ground plane ``z = 0`` and oriented boxes (agents' solid parts, buildings, trees) with a numba
kernel."""
from __future__ import annotations

import numpy as np
from numba import njit

from .common import CATEGORY_INDEX
from .town import GROUND_INTENSITY, GROUND_LABELS

__all__ = ["cast_rays", "cast_spin", "beam_directions", "simulate_lidar", "radar_counts", "ELEVATIONS_DEG"]

ELEVATIONS_DEG = np.linspace(-30.67, 10.67, 32)  # ring 0 is the lowest beam
_AGENT_INTENSITY = {"car": 35.0, "truck": 35.0, "bus": 35.0, "trailer": 30.0, "construction_vehicle": 30.0,
                    "pedestrian": 15.0, "motorcycle": 25.0, "bicycle": 25.0, "traffic_cone": 90.0, "barrier": 50.0}
_STATIC_INTENSITY = {CATEGORY_INDEX["static.manmade"]: 25.0, CATEGORY_INDEX["static.vegetation"]: 12.0}


@njit(cache=True)
def _slab(px, py, pz, dx, dy, dz, c, s, l, w, h):
    """Entry distance of a ray (origin at minus (px, py, pz) from the box centre) into a box, or inf."""
    lo, hi = -np.inf, np.inf
    for a in range(3):
        if a == 0:
            o, d, half = -(c * px + s * py), c * dx + s * dy, 0.5 * l
        elif a == 1:
            o, d, half = -(-s * px + c * py), -s * dx + c * dy, 0.5 * w
        else:
            o, d, half = -pz, dz, 0.5 * h
        if abs(d) < 1e-12:
            if abs(o) > half:
                return np.inf
            continue
        t1, t2 = (-half - o) / d, (half - o) / d
        if t1 > t2:
            t1, t2 = t2, t1
        lo, hi = max(lo, t1), min(hi, t2)
    if lo > hi or lo <= 1e-6:
        return np.inf
    return lo


@njit(cache=True)
def cast_rays(origin, dirs, boxes, max_range):
    """First hit of each ray against the ground plane z = 0 and oriented boxes.

    Args:
        origin: ``[3]`` float64 ray origin (global).
        dirs: ``[R, 3]`` float64 unit directions.
        boxes: ``[M, 7]`` float64 (cx, cy, cz, l, w, h, yaw), yaw about +z.
        max_range: hits farther than this are dropped.

    Returns:
        t ``[R]`` float64 hit distance (inf: no hit), hit ``[R]`` int32 (box index, -1 ground, -2 nothing) and
        potential ``[M]`` int64: rays that cross box m before the ground/range limit (occluded or not).
    """
    R, M = dirs.shape[0], boxes.shape[0]
    t_out = np.full(R, np.inf)
    hit = np.full(R, -2, np.int32)
    potential = np.zeros(M, np.int64)
    cs, sn, rad = np.cos(boxes[:, 6]), np.sin(boxes[:, 6]), np.empty(M)
    for m in range(M):
        rad[m] = 0.5 * np.sqrt(boxes[m, 3] ** 2 + boxes[m, 4] ** 2 + boxes[m, 5] ** 2)
    ox, oy, oz = origin[0], origin[1], origin[2]
    for r in range(R):
        dx, dy, dz = dirs[r, 0], dirs[r, 1], dirs[r, 2]
        tmax = max_range
        best, bi = np.inf, -2
        if dz < -1e-9:
            tg = -oz / dz
            if tg <= max_range:
                best, bi, tmax = tg, -1, tg
        for m in range(M):
            px, py, pz = boxes[m, 0] - ox, boxes[m, 1] - oy, boxes[m, 2] - oz
            proj = px * dx + py * dy + pz * dz
            if proj + rad[m] < 0.0 or proj - rad[m] > tmax:
                continue
            if px * px + py * py + pz * pz - proj * proj > rad[m] * rad[m]:
                continue
            lo = _slab(px, py, pz, dx, dy, dz, cs[m], sn[m], boxes[m, 3], boxes[m, 4], boxes[m, 5])
            if lo > tmax:
                continue
            potential[m] += 1
            if lo < best:
                best, bi = lo, m
        if bi != -2:
            t_out[r], hit[r] = best, bi
    return t_out, hit, potential


@njit(cache=True)
def cast_spin(origin, dirs, az0, boxes, owner, max_range):
    """:func:`cast_rays` for a spinning scanner: ``dirs`` ``[S, B, 3]`` are S firings of B beams, firing i at
    global azimuth ``az0 + 2 pi i / S``; each box is only tested against the firings its footprint spans.

    ``owner`` ``[M]`` int64 groups boxes into objects (the boxes of one object consecutive, ids ``0..G-1``); the
    returned ``potential`` is ``[G]``: rays crossing any box of the object, each ray counted once."""
    S, B = dirs.shape[0], dirs.shape[1]
    step = 2 * np.pi / S
    best = np.full((S, B), np.inf)
    hit = np.full((S, B), -2, np.int32)
    tmax = np.full((S, B), max_range)
    G = 0
    for m in range(owner.shape[0]):
        G = max(G, owner[m] + 1)
    potential = np.zeros(G, np.int64)
    mark = np.full((S, B), -1, np.int64)
    ox, oy, oz = origin[0], origin[1], origin[2]
    for i in range(S):
        for b in range(B):
            dz = dirs[i, b, 2]
            if dz < -1e-9:
                tg = -oz / dz
                if tg <= max_range:
                    best[i, b], hit[i, b], tmax[i, b] = tg, -1, tg
    for m in range(boxes.shape[0]):
        cx, cy, cz, l, w, h, yaw = boxes[m, 0], boxes[m, 1], boxes[m, 2], boxes[m, 3], boxes[m, 4], boxes[m, 5], \
            boxes[m, 6]
        c, s = np.cos(yaw), np.sin(yaw)
        px, py, pz = cx - ox, cy - oy, cz - oz
        rxy = 0.5 * np.sqrt(l * l + w * w)
        dist = np.sqrt(px * px + py * py)
        if dist - rxy > max_range:
            continue
        if dist <= rxy + 1e-3:
            i0, n = 0, S
        else:
            center = np.arctan2(py, px)
            half = np.arcsin(min(1.0, rxy / dist))
            i0 = int(np.floor((center - half - az0) / step)) - 1
            n = min(S, int(np.ceil(2 * half / step)) + 3)
        for k in range(n):
            i = (i0 + k) % S
            for b in range(B):
                t = _slab(px, py, pz, dirs[i, b, 0], dirs[i, b, 1], dirs[i, b, 2], c, s, l, w, h)
                if t < tmax[i, b]:
                    if mark[i, b] != owner[m]:
                        mark[i, b] = owner[m]
                        potential[owner[m]] += 1
                    if t < best[i, b]:
                        best[i, b], hit[i, b] = t, m
    t_out = best.reshape(-1).copy()
    h_out = hit.reshape(-1).copy()
    for r in range(t_out.shape[0]):
        if h_out[r] == -2:
            t_out[r] = np.inf
    return t_out, h_out, potential


def beam_directions(azimuth_steps: int, phase: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """``[32 * A, 3]`` float64 unit directions in the sensor frame (azimuth-major, as the scanner fires) and the
    ``[32 * A]`` ring index."""
    az = phase + np.arange(azimuth_steps) * (2 * np.pi / azimuth_steps)
    el = np.deg2rad(ELEVATIONS_DEG)
    d = np.empty((azimuth_steps, 32, 3))
    d[..., 0] = np.outer(np.cos(az), np.cos(el))
    d[..., 1] = np.outer(np.sin(az), np.cos(el))
    d[..., 2] = np.sin(el)[None]
    ring = np.tile(np.arange(32), azimuth_steps)
    return d.reshape(-1, 3), ring


def _scene_boxes(scene, t, center, radius):
    """``[P + S, 7]`` boxes (the agents' solid parts, then nearby statics), the statics' indices ``[S]`` and the
    owner ``[P + S]`` int64 of every box (agent index; statics get ``A + j``)."""
    idx = scene.town.statics_near(center, radius)
    parts, owner = scene.agent_parts(t)
    A = len(scene.yaw)
    owner = np.concatenate([owner, A + np.arange(len(idx), dtype=np.int64)])
    return np.ascontiguousarray(np.concatenate([parts, scene.town.static_boxes[idx]], 0)), idx, owner


def simulate_lidar(scene, t: float, rng: np.random.Generator, azimuth_steps: int = 1080,
                   max_range: float = 70.0, noise: float = 0.01) -> dict:
    """One LIDAR_TOP sweep at time ``t``.

    Returns a dict with ``points`` ``[N, 5]`` float32 (x, y, z, intensity, ring) in the LiDAR frame,
    ``labels`` ``[N]`` uint8 lidarseg indices, ``agent_hits`` ``[A]`` int64 points on each agent and
    ``agent_potential`` ``[A]`` int64 rays crossing each agent (occluded or not).
    """
    pose = scene.ego_pose(t) @ scene.rig.lidar
    origin = pose[:3, 3].copy()
    dirs_l, ring = beam_directions(azimuth_steps, float(rng.uniform(0, 2 * np.pi / azimuth_steps)))
    dirs_g = np.ascontiguousarray(dirs_l @ pose[:3, :3].T)
    boxes, sidx, owner = _scene_boxes(scene, t, origin[:2], max_range + 5.0)
    # the LiDAR is only yawed, so firing i (32 beams) points at global azimuth az0 + 2 pi i / azimuth_steps
    az0 = float(np.arctan2(dirs_g[0, 1], dirs_g[0, 0]))
    t_hit, hit, potential = cast_spin(origin, dirs_g.reshape(azimuth_steps, 32, 3), az0, boxes, owner,
                                      float(max_range))
    A = len(scene.yaw)
    hit = np.where(hit >= 0, owner[np.maximum(hit, 0)], hit).astype(np.int32)  # part -> agent (statics: A + j)
    keep = np.isfinite(t_hit) & (rng.random(len(t_hit)) > 0.02)
    t_hit, hit, ring, dirs_l, dirs_g = t_hit[keep], hit[keep], ring[keep], dirs_l[keep], dirs_g[keep]
    rng_noisy = t_hit + rng.normal(0.0, noise, len(t_hit))
    xyz = dirs_l * rng_noisy[:, None]
    labels = np.empty(len(hit), np.uint8)
    inten = np.empty(len(hit), np.float64)
    ground = hit == -1
    gp = origin[None, :2] + dirs_g[ground, :2] * t_hit[ground, None]
    gcls = scene.town.ground_class(gp[:, 0], gp[:, 1])
    labels[ground], inten[ground] = GROUND_LABELS[gcls], GROUND_INTENSITY[gcls]
    ag = (hit >= 0) & (hit < A)
    cat_idx = np.array([CATEGORY_INDEX[c] for c in scene.category], np.uint8).reshape(-1)
    ag_int = np.array([_AGENT_INTENSITY[c] for c in scene.det_class]).reshape(-1)
    labels[ag], inten[ag] = cat_idx[hit[ag]], ag_int[hit[ag]]
    st = hit >= A
    slab = scene.town.static_labels[sidx]
    labels[st] = slab[hit[st] - A]
    static_int = np.array([_STATIC_INTENSITY[int(v)] for v in slab], np.float64).reshape(-1)
    inten[st] = static_int[hit[st] - A]
    inten = inten * rng.uniform(0.8, 1.2, len(inten)) * (1.0 - 0.3 * np.minimum(t_hit / max_range, 1.0))
    points = np.stack([xyz[:, 0], xyz[:, 1], xyz[:, 2], np.clip(np.round(inten), 0, 255), ring], 1)
    return {"points": points.astype(np.float32), "labels": labels,
            "agent_hits": np.bincount(hit[ag], minlength=A).astype(np.int64)[:A],
            "agent_potential": potential[:A].astype(np.int64)}


def radar_counts(scene, t: float, max_range: float = 100.0) -> np.ndarray:
    """``[A]`` int64 returns per agent from 5 virtual horizontal-fan radars (+-60 deg, 1 deg steps); the radars
    are not written as sensors, they only fill ``num_radar_pts``."""
    A = len(scene.yaw)
    counts = np.zeros(A, np.int64)
    az = np.deg2rad(np.arange(-60.0, 60.5, 1.0))
    d_l = np.stack([np.cos(az), np.sin(az), np.zeros_like(az)], 1)
    ego = scene.ego_pose(t)
    boxes, _, owner = _scene_boxes(scene, t, ego[:2, 3], max_range + 5.0)
    for mount in scene.rig.radars:
        pose = ego @ mount
        _, hit, _ = cast_rays(pose[:3, 3].copy(), np.ascontiguousarray(d_l @ pose[:3, :3].T), boxes,
                              float(max_range))
        hit = np.where(hit >= 0, owner[np.maximum(hit, 0)], hit)
        h = hit[(hit >= 0) & (hit < A)]
        counts += np.bincount(h, minlength=A)[:A]
    return counts
