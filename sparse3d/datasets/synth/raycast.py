"""Numba kernels of the synthetic LiDAR: ground height field and primitive ray casting.

The vectorized numpy intersections in ``primitives.py`` are the reference these kernels are
tested against. Random choices inside the kernels (foliage depth, see-through meshes) use a
counter-based hash of ``(seed, ray, primitive)``, so results do not depend on evaluation order.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

__all__ = ["ground_classify", "ground_intersect", "cast_primitives", "intersect_one"]

_H_MAX = 0.35
_PARKING_H = 0.08  # parking bays: a half-height step above the road (sidewalk curbs are 0.12-0.17 m)


@njit(cache=True)
def _terrain(x, y, ph):
    return 0.14 + (0.05 * math.sin(0.9 * x + ph[0]) * math.sin(0.7 * y + ph[1])
                   + 0.04 * math.sin(0.23 * x + 0.31 * y + ph[2])
                   + 0.025 * math.sin(3.1 * x + ph[3]) * math.sin(2.7 * y + ph[4])
                   + 0.012 * math.sin(7.3 * x + 5.1 * y + ph[5]) + 0.01 * math.sin(9.1 * y - 6.3 * x + ph[6]))


@njit(cache=True)
def _classify(x, y, axis, offset, urange, edges, curb, med, ph):
    """(priority 0..5, street, side, offset above the grade plane) of one ground point; see ``Layout``.

    Priorities: 0 lot, 1 verge (both terrain), 2 sidewalk, 3 parking, 4 median (other-ground),
    5 road. ``med [S, 4]``: median half width, period, duty, phase per street.
    """
    prio = 0
    cb = 0.0
    st = -1
    sd = 0
    for s in range(axis.shape[0]):
        if axis[s] == 0:
            u = x
            v = y - offset[s]
        else:
            u = y
            v = offset[s] - x
        if u < urange[s, 0] or u > urange[s, 1]:
            continue
        av = abs(v)
        side = 1 if v >= 0 else 0
        if av < edges[s, side, 0]:
            p = 5
            if av < med[s, 0]:  # median unless in a gap
                q = (u - med[s, 3]) / med[s, 1]
                if q - math.floor(q) < med[s, 2]:
                    p = 4
        elif av < edges[s, side, 1]:
            p = 3
        elif av < edges[s, side, 2]:
            p = 1
        elif av < edges[s, side, 3]:
            p = 2
        else:
            p = 0
        if p > prio:
            prio = p
            cb = curb[s]
            st = s
            sd = side
    if prio == 5:
        off = 0.0
    elif prio == 3:
        off = _PARKING_H
    elif prio == 2 or prio == 4:
        off = cb
    else:
        off = _terrain(x, y, ph)
    return prio, st, sd, min(max(off, 0.0), _H_MAX)


@njit(cache=True)
def ground_classify(x, y, axis, offset, urange, edges, curb, med, ph):
    """Vectorized ``_classify``: ``(prio [N] int8, offset [N] float64)``."""
    n = x.shape[0]
    prio = np.empty(n, np.int8)
    off = np.empty(n)
    for i in range(n):
        p, _, _, o = _classify(x[i], y[i], axis, offset, urange, edges, curb, med, ph)
        prio[i] = p
        off[i] = o
    return prio, off


@njit(cache=True)
def ground_intersect(o, dirs, grade, axis, offset, urange, edges, curb, med, ph, max_range, step, max_steps,
                     bisect):
    """First crossing of each ray with ``z = grade . xy + offset(x, y)``, offset in [0, H_MAX].

    Marches from the hit of ``plane + H_MAX`` to the hit of ``plane`` in steps of ``step``
    metres (at most ``max_steps``), then bisects; a ray whose two ends lie in the same flat band
    is solved in closed form. Returns ``t [R]`` (inf: no hit within ``max_range``) and ``prio [R]``.
    """
    R = dirs.shape[0]
    t_out = np.full(R, np.inf)
    p_out = np.zeros(R, np.int8)
    nx, ny = -grade[0], -grade[1]
    h0 = o[0] * nx + o[1] * ny + o[2]
    for i in range(R):
        dx, dy, dz = dirs[i, 0], dirs[i, 1], dirs[i, 2]
        den = dx * nx + dy * ny + dz
        if den > -1e-6:
            continue
        a = max((_H_MAX - h0) / den, 0.0)
        b = -h0 / den
        if a >= max_range:
            continue
        # fast path: both ends in the same flat band (road / parking / sidewalk / median of one
        # street and side, or road of median-free streets); the band is convex and the regions
        # overriding it are lower, so the hit is exact (a road side may hold a median gap's end:
        # ignored, it is rare and a few cm)
        pa, sa, da, oa = _classify(o[0] + a * dx, o[1] + a * dy, axis, offset, urange, edges, curb, med, ph)
        pb, sb, db, ob = _classify(o[0] + b * dx, o[1] + b * dy, axis, offset, urange, edges, curb, med, ph)
        if pa >= 2 and pa == pb and ((sa == sb and da == db)
                                     or (pa == 5 and med[sa, 0] <= 0.0 and med[sb, 0] <= 0.0)):
            t = (oa - h0) / den
            if t <= max_range:
                t_out[i] = t
                p_out[i] = pa
            continue
        n = min(max(1, int(math.ceil((b - a) / step))), max_steps)
        lo = a
        hi = b
        prev = a
        for k in range(1, n + 1):
            t = a + (b - a) * k / n
            x, y, z = o[0] + t * dx, o[1] + t * dy, o[2] + t * dz
            off = _classify(x, y, axis, offset, urange, edges, curb, med, ph)[3]
            if z <= grade[0] * x + grade[1] * y + off:
                lo = prev
                hi = t
                break
            prev = t
        for _ in range(bisect):
            m = 0.5 * (lo + hi)
            x, y, z = o[0] + m * dx, o[1] + m * dy, o[2] + m * dz
            off = _classify(x, y, axis, offset, urange, edges, curb, med, ph)[3]
            if z > grade[0] * x + grade[1] * y + off:
                lo = m
            else:
                hi = m
        if hi <= max_range:
            t_out[i] = hi
            p_out[i] = _classify(o[0] + hi * dx, o[1] + hi * dy, axis, offset, urange, edges, curb, med, ph)[0]
    return t_out, p_out


@njit(cache=True)
def intersect_one(kind, o, d, h):
    """Scalar ray/primitive test in the local frame: ``(t_in, t_out, nx, ny, nz)``; t = inf on a miss."""
    inf = np.inf
    if kind == 0:  # box
        t_in, t_out = -inf, inf
        ax, sgn = 0, 0.0
        for a in range(3):
            if d[a] != 0.0:
                t1 = (-h[a] - o[a]) / d[a]
                t2 = (h[a] - o[a]) / d[a]
                lo_, hi_ = min(t1, t2), max(t1, t2)
            elif abs(o[a]) <= h[a]:
                continue
            else:
                return inf, inf, 0.0, 0.0, 0.0
            if lo_ > t_in:
                t_in = lo_
                ax = a
                sgn = -1.0 if d[a] > 0 else 1.0
            t_out = min(t_out, hi_)
        if t_out < max(t_in, 0.0):
            return inf, inf, 0.0, 0.0, 0.0
        return (t_in, t_out, sgn if ax == 0 else 0.0, sgn if ax == 1 else 0.0, sgn if ax == 2 else 0.0)
    if kind == 1:  # ellipsoid
        ox, oy, oz = o[0] / h[0], o[1] / h[1], o[2] / h[2]
        dx, dy, dz = d[0] / h[0], d[1] / h[1], d[2] / h[2]
        a = dx * dx + dy * dy + dz * dz
        b = 2.0 * (ox * dx + oy * dy + oz * dz)
        c = ox * ox + oy * oy + oz * oz - 1.0
        disc = b * b - 4.0 * a * c
        if disc < 0.0 or a == 0.0:
            return inf, inf, 0.0, 0.0, 0.0
        sq = math.sqrt(disc)
        t_in = (-b - sq) / (2.0 * a)
        t_out = (-b + sq) / (2.0 * a)
        px, py, pz = o[0] + t_in * d[0], o[1] + t_in * d[1], o[2] + t_in * d[2]
        return t_in, t_out, px / (h[0] * h[0]), py / (h[1] * h[1]), pz / (h[2] * h[2])
    # cylinder along local z
    ox, oy = o[0] / h[0], o[1] / h[1]
    dx, dy = d[0] / h[0], d[1] / h[1]
    a = dx * dx + dy * dy
    b = 2.0 * (ox * dx + oy * dy)
    c = ox * ox + oy * oy - 1.0
    if a < 1e-12:
        if c > 0.0:
            return inf, inf, 0.0, 0.0, 0.0
        s_in, s_out = -inf, inf
    else:
        disc = b * b - 4.0 * a * c
        if disc < 0.0:
            return inf, inf, 0.0, 0.0, 0.0
        sq = math.sqrt(disc)
        s_in = (-b - sq) / (2.0 * a)
        s_out = (-b + sq) / (2.0 * a)
    if d[2] != 0.0:
        t1 = (-h[2] - o[2]) / d[2]
        t2 = (h[2] - o[2]) / d[2]
        z_lo, z_hi = min(t1, t2), max(t1, t2)
    elif abs(o[2]) <= h[2]:
        z_lo, z_hi = -inf, inf
    else:
        return inf, inf, 0.0, 0.0, 0.0
    t_in = max(s_in, z_lo)
    t_out = min(s_out, z_hi)
    if t_out < max(t_in, 0.0):
        return inf, inf, 0.0, 0.0, 0.0
    if s_in >= z_lo:
        px, py = o[0] + t_in * d[0], o[1] + t_in * d[1]
        return t_in, t_out, px / (h[0] * h[0]), py / (h[1] * h[1]), 0.0
    return t_in, t_out, 0.0, 0.0, (-1.0 if d[2] > 0 else 1.0)


@njit(cache=True)
def _uniform(seed, a, b):
    """Counter-based uniform in [0, 1) from (seed, a, b) (splitmix64)."""
    z = np.uint64(seed) ^ (np.uint64(a) * np.uint64(0x9E3779B97F4A7C15))
    z = z ^ (np.uint64(b) * np.uint64(0xC2B2AE3D27D4EB4F))
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return float(z >> np.uint64(11)) * (1.0 / 9007199254740992.0)


@njit(cache=True)
def cast_primitives(O, D, A, el_asc, az0, cs, cand, kind, center, rot, half, radius, mfp, pass_prob,
                    seed, depth, hit, normal):
    """Z-buffer the candidate primitives (nearest first) into ``depth/hit/normal`` (in place).

    Args:
        O: ``[3]`` sensor origin; D: ``[B*A, 3]`` world ray directions, ray = beam * A + column,
            beam 0 the highest; el_asc: ``[B]`` beam elevations ascending (rad); az0: azimuth of column 0.
        cs: ``[K, 3]`` primitive centres in the sensor frame; cand: primitive indices to cast.
    """
    B = el_asc.shape[0]
    dA = 2.0 * math.pi / A
    o_l = np.empty(3)
    d_l = np.empty(3)
    for ci in range(cand.shape[0]):
        k = cand[ci]
        cx, cy, cz = cs[k, 0], cs[k, 1], cs[k, 2]
        rho = math.sqrt(cx * cx + cy * cy)
        dist = math.sqrt(rho * rho + cz * cz)
        r = radius[k]
        if dist <= r:
            b_lo, b_hi = 0, B
        else:
            a3 = math.asin(r / dist)
            ec = math.atan2(cz, rho)
            b_lo = np.searchsorted(el_asc, ec - a3)
            b_hi = np.searchsorted(el_asc, ec + a3)
            if b_hi <= b_lo:
                continue
        if rho <= r:
            j0, j1 = 0, A - 1
        else:
            aa = math.asin(r / rho)
            ac = math.atan2(cy, cx)
            j0 = int(math.ceil((ac - aa - az0) / dA))
            j1 = int(math.floor((ac + aa - az0) / dA))
            if j1 < j0:
                continue
            if j1 - j0 + 1 >= A:
                j0, j1 = 0, A - 1
        near = dist - r
        visible = False
        for bb in range(b_lo, b_hi):
            row = (B - 1 - bb) * A
            for j in range(j0, j1 + 1):
                if depth[row + j % A] >= near:
                    visible = True
                    break
            if visible:
                break
        if not visible:
            continue
        Rk = rot[k]
        for a in range(3):
            o_l[a] = (Rk[0, a] * (O[0] - center[k, 0]) + Rk[1, a] * (O[1] - center[k, 1])
                      + Rk[2, a] * (O[2] - center[k, 2]))
        hk = half[k]
        for bb in range(b_lo, b_hi):
            row = (B - 1 - bb) * A
            for j in range(j0, j1 + 1):
                ray = row + j % A
                for a in range(3):
                    d_l[a] = Rk[0, a] * D[ray, 0] + Rk[1, a] * D[ray, 1] + Rk[2, a] * D[ray, 2]
                t_in, t_out, nx, ny, nz = intersect_one(kind[k], o_l, d_l, hk)
                if not t_in < np.inf:
                    continue
                if mfp[k] > 0.0:
                    if t_out <= 0.0:
                        continue
                    t = max(t_in, 0.0) - mfp[k] * math.log(1.0 - _uniform(seed, ray, 2 * k))
                    if t > t_out:
                        continue
                elif t_in > 0.0:
                    t = t_in
                else:
                    continue
                if t >= depth[ray]:
                    continue
                if pass_prob[k] > 0.0 and _uniform(seed, ray, 2 * k + 1) < pass_prob[k]:
                    continue
                depth[ray] = t
                hit[ray] = k
                wx = Rk[0, 0] * nx + Rk[0, 1] * ny + Rk[0, 2] * nz
                wy = Rk[1, 0] * nx + Rk[1, 1] * ny + Rk[1, 2] * nz
                wz = Rk[2, 0] * nx + Rk[2, 1] * ny + Rk[2, 2] * nz
                nn = math.sqrt(wx * wx + wy * wy + wz * wz)
                if nn > 0.0:
                    normal[ray, 0] = wx / nn
                    normal[ray, 1] = wy / nn
                    normal[ray, 2] = wz / nn
