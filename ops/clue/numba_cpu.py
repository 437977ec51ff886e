"""Numba CPU kernels for CLUE (Rovere et al., Front. Big Data 3 (2020) 591315).

Points live on planes (layers); a point's neighbours are the points on planes within
``layer_window`` (by plane value) and within a 2-D radius. Neighbour search uses a
tiling: each plane is cut into square tiles of side ``tile``; points are sorted by
``(plane, tile_y, tile_x)`` and a tile's points are found by binary search over the
sorted unique tile keys, so a query touches ``(2 ceil(r / tile) + 1)^2`` tiles per plane.

Conventions (shared with :mod:`sparse3d.ops.clue.reference`, which must agree exactly):

- density ``rho_i = sum_j chi(d_ij) w_j`` over ``d_ij <= dc``; ``flat`` kernel:
  ``chi = 1`` for ``j == i``, ``0.5`` otherwise (CMS CLUE); ``gaussian``: ``exp(-d^2 / (2 (dc/2)^2))``.
- ``j`` is *higher* than ``i`` if ``rho_j > rho_i`` or (``rho_j == rho_i`` and ``j > i``).
- nearest-higher: the closest higher point within ``dm = max(deltac, deltao)`` (ties:
  smallest index); ``delta`` = its distance, ``inf`` if none.
- seed: ``rho > rhoc`` and ``delta > deltac``; outlier: ``rho < rhoc`` and ``delta > deltao``;
  every other point follows its nearest-higher (label -1 if it has none).
- cluster ids number the seeds in increasing point index.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

__all__ = ["clue_numba", "build_tiles"]

KERNELS = {"flat": 0, "gaussian": 1}


@njit(cache=True, nogil=True, inline="always")
def _find(ukeys, k):
    pos = np.searchsorted(ukeys, k)
    if pos < ukeys.shape[0] and ukeys[pos] == k:
        return pos
    return -1


@njit(cache=True, nogil=True)
def _density(u, v, w, pid, tx, ty, order, ukeys, starts, plo, phi, nx, ny, reach, dc, kernel):
    n = u.shape[0]
    rho = np.zeros(n)
    dc2 = dc * dc
    inv2s2 = 1.0 / (2.0 * (0.5 * dc) ** 2)
    for i in range(n):
        acc = 0.0
        for q in range(plo[pid[i]], phi[pid[i]]):
            for yy in range(max(ty[i] - reach, 0), min(ty[i] + reach, ny - 1) + 1):
                for xx in range(max(tx[i] - reach, 0), min(tx[i] + reach, nx - 1) + 1):
                    pos = _find(ukeys, (np.int64(q) * ny + yy) * nx + xx)
                    if pos < 0:
                        continue
                    for t in range(starts[pos], starts[pos + 1]):
                        j = order[t]
                        du = u[i] - u[j]
                        dv = v[i] - v[j]
                        d2 = du * du + dv * dv
                        if d2 <= dc2:
                            if j == i:
                                acc += w[j]
                            elif kernel == 0:
                                acc += 0.5 * w[j]
                            else:
                                acc += math.exp(-d2 * inv2s2) * w[j]
        rho[i] = acc
    return rho


@njit(cache=True, nogil=True)
def _nearest_higher(u, v, rho, pid, tx, ty, order, ukeys, starts, plo, phi, nx, ny, reach, dm):
    n = u.shape[0]
    nh = np.full(n, -1, np.int64)
    delta = np.full(n, np.inf)
    dm2 = dm * dm
    for i in range(n):
        best = np.inf
        bj = -1
        for q in range(plo[pid[i]], phi[pid[i]]):
            for yy in range(max(ty[i] - reach, 0), min(ty[i] + reach, ny - 1) + 1):
                for xx in range(max(tx[i] - reach, 0), min(tx[i] + reach, nx - 1) + 1):
                    pos = _find(ukeys, (np.int64(q) * ny + yy) * nx + xx)
                    if pos < 0:
                        continue
                    for t in range(starts[pos], starts[pos + 1]):
                        j = order[t]
                        if not (rho[j] > rho[i] or (rho[j] == rho[i] and j > i)):
                            continue
                        du = u[i] - u[j]
                        dv = v[i] - v[j]
                        d2 = du * du + dv * dv
                        if d2 <= dm2 and (d2 < best or (d2 == best and j < bj)):
                            best = d2
                            bj = j
        if bj >= 0:
            nh[i] = bj
            delta[i] = math.sqrt(best)
    return nh, delta


@njit(cache=True, nogil=True)
def _assign(rho, delta, nh, rhoc, deltac, deltao):
    n = rho.shape[0]
    labels = np.full(n, -1, np.int64)
    is_seed = (rho > rhoc) & (delta > deltac)
    is_out = (rho < rhoc) & (delta > deltao)
    k = 0
    for i in range(n):
        if is_seed[i]:
            labels[i] = k
            k += 1
    # decreasing "height": rho desc, then index desc -> a point's nearest-higher comes first
    order = np.argsort(-rho, kind="mergesort")
    # within equal rho, mergesort keeps increasing index; reverse those runs to index desc
    s = 0
    while s < n:
        e = s + 1
        while e < n and rho[order[e]] == rho[order[s]]:
            e += 1
        order[s:e] = order[s:e][::-1].copy()
        s = e
    for t in range(n):
        i = order[t]
        if is_seed[i] or is_out[i]:
            continue
        if nh[i] >= 0:
            labels[i] = labels[nh[i]]
    return labels, is_seed


def build_tiles(u, v, plane, tile: float, layer_window: int):
    """Tile index of points (numpy).

    Args:
        u, v: ``[N]`` float64. plane: ``[N]`` int64 plane value. tile: tile side.
        layer_window: planes whose values differ by at most this are neighbours.

    Returns:
        dict with ``pid, tx, ty, order, ukeys, starts, plo, phi, nx, ny``.
    """
    upl, pid = np.unique(plane, return_inverse=True)
    plo = np.searchsorted(upl, upl - layer_window, side="left").astype(np.int64)
    phi = np.searchsorted(upl, upl + layer_window, side="right").astype(np.int64)
    tx = np.floor((u - u.min()) / tile).astype(np.int64)
    ty = np.floor((v - v.min()) / tile).astype(np.int64)
    nx, ny = int(tx.max()) + 1, int(ty.max()) + 1
    if upl.size * nx * ny >= 2**62:
        raise ValueError("CLUE tiling overflows int64; increase the tile size")
    key = (pid.astype(np.int64) * ny + ty) * nx + tx
    order = np.argsort(key, kind="stable")
    ukeys, starts = np.unique(key[order], return_index=True)
    starts = np.r_[starts, order.size].astype(np.int64)
    return dict(pid=pid.astype(np.int64), tx=tx, ty=ty, order=order.astype(np.int64), ukeys=ukeys,
                starts=starts, plo=plo, phi=phi, nx=nx, ny=ny)


def clue_numba(u, v, plane, weight, dc: float, rhoc: float, deltac: float, deltao: float,
               layer_window: int = 0, kernel: str = "flat", tile: float = 0.0):
    """CLUE on numpy arrays (arguments already checked by the caller).

    Args:
        u, v: ``[N]`` float64 2-D coordinates. plane: ``[N]`` int64 layer value.
        weight: ``[N]`` float64 (energy). dc, rhoc, deltac, deltao: CLUE parameters.
        layer_window: neighbour planes ``|plane_i - plane_j| <= layer_window``.
        kernel: ``"flat" | "gaussian"``. tile: tile side (0: ``dc``).

    Returns:
        ``(rho [N] f64, delta [N] f64, nearest_higher [N] i64, labels [N] i64, is_seed [N] bool)``.
    """
    n = u.shape[0]
    if n == 0:
        z = np.zeros(0)
        return z, z.copy(), np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, bool)
    tile = float(tile) if tile > 0 else float(dc)
    dm = max(deltac, deltao)
    keys = ("pid", "tx", "ty", "order", "ukeys", "starts", "plo", "phi", "nx", "ny")
    tl = build_tiles(u, v, plane, tile, int(layer_window))
    rho = _density(u, v, weight, *(tl[k] for k in keys), int(math.ceil(dc / tile)), float(dc), KERNELS[kernel])
    # the nearest-higher search radius dm is usually several dc: tiles of side dm keep it to 3 x 3 tiles per
    # plane instead of (2 ceil(dm / tile) + 1)^2 binary searches (same result: the minimum of (d^2, j) over
    # every point within dm does not depend on the visiting order)
    if dm > tile:
        tile = dm
        tl = build_tiles(u, v, plane, tile, int(layer_window))
    nh, delta = _nearest_higher(u, v, rho, *(tl[k] for k in keys), int(math.ceil(dm / tile)), float(dm))
    labels, is_seed = _assign(rho, delta, nh, float(rhoc), float(deltac), float(deltao))
    return rho, delta, nh, labels, is_seed
