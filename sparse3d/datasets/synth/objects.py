"""Builders of scene objects from primitives. Each returns the object's xy footprint radius.

Every builder takes ``(prims, rng, x, y, z, yaw, ...)`` with ``z`` the ground height under the
object and ``yaw`` its heading; sizes and materials (albedo) are drawn from ``rng``. Albedo ranges
overlap between classes on purpose: classes are told apart by geometry, not by remission.
"""
from __future__ import annotations

import numpy as np

from .common import (BICYCLE, BUILDING, CAR, FENCE, PERSON, POLE, TRAFFIC_SIGN, TRUCK, TRUNK,
                     VEGETATION, rot_x, rot_y, rot_z)
from .primitives import BOX, CYLINDER, ELLIPSOID, PrimitiveList

__all__ = ["add_car", "add_truck", "add_bicycle", "add_person", "add_tree", "add_bush",
           "add_streetlight", "add_sign", "add_building", "add_fence"]


def _place(x, y, z, yaw, local):
    """World position of a point given in the object frame."""
    c, s = np.cos(yaw), np.sin(yaw)
    lx, ly, lz = local
    return np.array([x + c * lx - s * ly, y + s * lx + c * ly, z + lz])


def _wheel_rot(yaw):
    """Cylinder axis along the object's local y (a wheel / disc facing sideways)."""
    return rot_z(yaw) @ rot_x(np.pi / 2)


def add_car(p: PrimitiveList, rng, x, y, z, yaw, inst) -> float:
    kind = rng.choice(3, p=[0.55, 0.3, 0.15])  # sedan / hatchback / van-SUV
    L = [rng.uniform(4.3, 4.9), rng.uniform(3.7, 4.2), rng.uniform(4.5, 5.1)][kind]
    W = rng.uniform(1.7, 1.95)
    body_h = rng.uniform(0.55, 0.7)
    cab_h = [rng.uniform(0.42, 0.5), rng.uniform(0.48, 0.56), rng.uniform(0.75, 0.95)][kind]
    clear = rng.uniform(0.18, 0.3)
    paint = rng.uniform(0.05, 0.8)
    p.add(BOX, _place(x, y, z, yaw, (0, 0, clear + body_h / 2)), (L / 2, W / 2, body_h / 2), CAR,
          paint, yaw=yaw, instance=inst)
    cab_l = L * [0.5, 0.6, 0.8][kind]
    cab_x = [-0.1, -0.2, -0.05][kind] * L
    p.add(BOX, _place(x, y, z, yaw, (cab_x, 0, clear + body_h + cab_h / 2)),
          (cab_l / 2, W * 0.44, cab_h / 2), CAR, rng.uniform(0.04, 0.25), yaw=yaw, instance=inst,
          pass_prob=0.3)
    r = rng.uniform(0.3, 0.35)
    for sx in (1, -1):
        for sy in (1, -1):
            c = _place(x, y, z, yaw, (sx * (L / 2 - 0.8), sy * (W / 2 - 0.12), r))
            p.add(CYLINDER, c, (r, r, 0.11), CAR, rng.uniform(0.03, 0.1), rot=_wheel_rot(yaw), instance=inst)
    return 0.5 * np.hypot(L, W)


def add_truck(p: PrimitiveList, rng, x, y, z, yaw, inst) -> float:
    W = rng.uniform(2.3, 2.55)
    cab_l, cab_h = rng.uniform(1.9, 2.5), rng.uniform(2.6, 3.1)
    box_l, box_h = rng.uniform(4.5, 9.0), rng.uniform(3.0, 3.9)
    L = cab_l + box_l + 0.3
    clear = 0.55
    paint = rng.uniform(0.15, 0.8)
    front = L / 2
    p.add(BOX, _place(x, y, z, yaw, (front - cab_l / 2, 0, clear + cab_h / 2)),
          (cab_l / 2, W / 2 * 0.97, cab_h / 2), TRUCK, paint, yaw=yaw, instance=inst)
    kind = rng.random()
    box_c = (front - cab_l - 0.3 - box_l / 2, 0, 0.95 + (box_h - 0.95) / 2)
    if kind < 0.75:  # box body
        p.add(BOX, _place(x, y, z, yaw, box_c), (box_l / 2, W / 2, (box_h - 0.95) / 2), TRUCK,
              rng.uniform(0.2, 0.9), yaw=yaw, instance=inst)
    else:  # flatbed with a low load
        p.add(BOX, _place(x, y, z, yaw, (box_c[0], 0, 1.15)), (box_l / 2, W / 2, 0.2), TRUCK,
              rng.uniform(0.1, 0.5), yaw=yaw, instance=inst)
        p.add(BOX, _place(x, y, z, yaw, (box_c[0], 0, 1.9)), (box_l / 2.6, W / 2.4, 0.55), TRUCK,
              rng.uniform(0.1, 0.6), yaw=yaw, instance=inst)
    p.add(BOX, _place(x, y, z, yaw, (0, 0, 0.75)), (L / 2 - 0.3, 0.45, 0.18), TRUCK, 0.15,
          yaw=yaw, instance=inst)  # chassis
    r = 0.5
    axles = [front - 1.1, front - cab_l - 0.3 - box_l * 0.75]
    if box_l > 7:
        axles.append(axles[-1] - 1.3)
    for ax in axles:
        for sy in (1, -1):
            c = _place(x, y, z, yaw, (ax, sy * (W / 2 - 0.2), r))
            p.add(CYLINDER, c, (r, r, 0.18), TRUCK, 0.06, rot=_wheel_rot(yaw), instance=inst)
    return 0.5 * np.hypot(L, W)


def add_bicycle(p: PrimitiveList, rng, x, y, z, yaw, inst) -> float:
    r = rng.uniform(0.31, 0.36)
    wb = rng.uniform(0.98, 1.1)
    alb = rng.uniform(0.1, 0.55)
    for sx in (0.5, -0.5):
        p.add(CYLINDER, _place(x, y, z, yaw, (sx * wb, 0, r)), (r, r, 0.025), BICYCLE, alb,
              rot=_wheel_rot(yaw), instance=inst, pass_prob=0.55)
    tube = (0.025, 0.025)
    # top tube, down tube, seat post, handlebar, saddle, fork
    p.add(BOX, _place(x, y, z, yaw, (0.0, 0, r + 0.42)), (0.3, *tube), BICYCLE, alb, yaw=yaw, instance=inst)
    p.add(BOX, _place(x, y, z, yaw, (0.12, 0, r + 0.18)), (0.34, *tube), BICYCLE, alb,
          rot=rot_z(yaw) @ rot_y(0.9), instance=inst)
    p.add(BOX, _place(x, y, z, yaw, (-0.22, 0, r + 0.3)), (0.03, 0.03, 0.33), BICYCLE, alb, yaw=yaw, instance=inst)
    p.add(BOX, _place(x, y, z, yaw, (wb * 0.5 - 0.08, 0, r + 0.62)), (0.03, 0.3, 0.025), BICYCLE, alb,
          yaw=yaw, instance=inst)
    p.add(BOX, _place(x, y, z, yaw, (-0.25, 0, r + 0.66)), (0.13, 0.07, 0.03), BICYCLE, 0.08, yaw=yaw, instance=inst)
    p.add(BOX, _place(x, y, z, yaw, (wb * 0.5 - 0.04, 0, r + 0.3)), (0.025, 0.03, 0.31), BICYCLE, alb,
          yaw=yaw, instance=inst)
    return 0.5 * wb + r


def add_person(p: PrimitiveList, rng, x, y, z, yaw, inst) -> float:
    h = rng.uniform(1.5, 1.95)
    cloth = rng.uniform(0.05, 0.6)
    stride = rng.uniform(-0.35, 0.35)
    leg_h = 0.47 * h
    for side, a in ((1, stride), (-1, -stride)):
        c = _place(x, y, z, yaw, (-0.5 * leg_h * np.sin(a), side * 0.1, leg_h - 0.5 * leg_h * np.cos(a)))
        p.add(CYLINDER, c, (0.075, 0.075, leg_h / 2), PERSON, cloth * 0.8, rot=rot_z(yaw) @ rot_y(a), instance=inst)
    torso_h = 0.3 * h
    p.add(ELLIPSOID, _place(x, y, z, yaw, (0, 0, leg_h + torso_h / 2)), (0.14, 0.22, torso_h / 2 + 0.04),
          PERSON, cloth, yaw=yaw, instance=inst)
    p.add(ELLIPSOID, _place(x, y, z, yaw, (0, 0, h - 0.11)), (0.1, 0.09, 0.12), PERSON,
          rng.uniform(0.2, 0.5), yaw=yaw, instance=inst)
    for side in (1, -1):
        a = -stride * side * 0.8
        c = _place(x, y, z, yaw, (-0.3 * np.sin(a), side * 0.27, leg_h + torso_h - 0.05 - 0.3 * np.cos(a)))
        p.add(CYLINDER, c, (0.045, 0.045, 0.3), PERSON, cloth, rot=rot_z(yaw) @ rot_y(a), instance=inst)
    return 0.4


def add_tree(p: PrimitiveList, rng, x, y, z, max_crown: float = 3.4) -> float:
    r = rng.uniform(0.12, 0.32)
    th = rng.uniform(1.3, 3.2)
    lean, a = rng.uniform(0.0, 0.1), rng.uniform(0, 2 * np.pi)  # trunks lean a little, poles do not
    p.add(CYLINDER, (x + 0.5 * th * lean * np.cos(a), y + 0.5 * th * lean * np.sin(a), z + th / 2 - 0.2),
          (r, r, th / 2 + 0.2), TRUNK, rng.uniform(0.2, 0.45), rot=rot_z(a) @ rot_y(lean))
    x, y = x + th * lean * np.cos(a), y + th * lean * np.sin(a)
    cr = min(rng.uniform(1.3, 3.4), max(max_crown, 1.0))
    ch = cr * rng.uniform(0.8, 1.4)
    foliage = rng.uniform(0.25, 0.6)
    mfp = rng.uniform(0.2, 0.6)
    p.add(ELLIPSOID, (x, y, z + th + ch * 0.8), (cr, cr, ch), VEGETATION, foliage, mfp=mfp)
    for _ in range(rng.integers(0, 3)):
        a = rng.uniform(0, 2 * np.pi)
        s = cr * rng.uniform(0.5, 0.8)
        p.add(ELLIPSOID, (x + 0.4 * cr * np.cos(a), y + 0.4 * cr * np.sin(a), z + th + ch * rng.uniform(0.7, 1.3)),
              (s, s, s * 0.9), VEGETATION, foliage, mfp=mfp)
    return max(r + 0.3, 0.5)


def add_bush(p: PrimitiveList, rng, x, y, z, yaw, length=None) -> float:
    h = rng.uniform(0.5, 1.6)
    lx = length / 2 if length is not None else rng.uniform(0.5, 1.6)
    ly = rng.uniform(0.4, 1.0) if length is not None else lx * rng.uniform(0.7, 1.0)
    kind = BOX if (length is not None and rng.random() < 0.6) else ELLIPSOID
    zc = z + (h / 2 if kind == BOX else h * 0.45)
    p.add(kind, (x, y, zc), (lx, ly, h / 2 if kind == BOX else h * 0.6), VEGETATION,
          rng.uniform(0.25, 0.6), yaw=yaw, mfp=rng.uniform(0.15, 0.4))
    return max(lx, ly)


def add_streetlight(p: PrimitiveList, rng, x, y, z, arm_yaw) -> float:
    h = rng.uniform(5.5, 9.0)
    r = rng.uniform(0.06, 0.12)
    alb = rng.uniform(0.2, 0.5)
    p.add(CYLINDER, (x, y, z + h / 2 - 0.2), (r, r, h / 2 + 0.2), POLE, alb)
    if rng.random() < 0.8:
        arm = rng.uniform(1.0, 2.5)
        c = _place(x, y, z, arm_yaw, (arm / 2, 0, h - 0.1))
        p.add(BOX, c, (arm / 2, 0.05, 0.05), POLE, alb, yaw=arm_yaw)
        p.add(BOX, _place(x, y, z, arm_yaw, (arm, 0, h - 0.2)), (0.3, 0.15, 0.08), POLE, alb, yaw=arm_yaw)
    return r + 0.3


def add_sign(p: PrimitiveList, rng, x, y, z, face_yaw) -> float:
    """A sign post (pole) with one or two plates; plates face along ``face_yaw``."""
    post_h = rng.uniform(2.3, 3.2)
    p.add(CYLINDER, (x, y, z + post_h / 2 - 0.2), (0.035, 0.035, post_h / 2 + 0.2), POLE, rng.uniform(0.2, 0.45))
    zt = z + post_h
    for i in range(1 if rng.random() < 0.7 else 2):
        s = rng.uniform(0.28, 0.45)
        plate_z = zt - s - i * (2 * s + 0.1)
        c = _place(x, y, 0, face_yaw, (0.05, 0, 0))
        c[2] = plate_z
        alb = rng.uniform(0.45, 0.95)
        shape = rng.integers(0, 3)
        if shape == 0:  # round: a disc facing along face_yaw
            p.add(CYLINDER, c, (s, s, 0.02), TRAFFIC_SIGN, alb, rot=rot_z(face_yaw) @ rot_y(np.pi / 2))
        elif shape == 1:  # rectangle
            p.add(BOX, c, (0.02, s * rng.uniform(1.0, 1.6), s * rng.uniform(0.8, 1.1)), TRAFFIC_SIGN, alb,
                  yaw=face_yaw)
        else:  # diamond
            p.add(BOX, c, (0.02, s * 0.75, s * 0.75), TRAFFIC_SIGN, alb,
                  rot=rot_z(face_yaw) @ rot_x(np.pi / 4))
    return 0.4


def add_building(p: PrimitiveList, rng, cx, cy, z, yaw, length, depth, height, facade_dir) -> None:
    """A block building centred at (cx, cy); ``facade_dir`` (+1/-1) is the street-facing local y side."""
    alb = rng.uniform(0.1, 0.6)
    win = (rng.uniform(1.4, 3.0), rng.uniform(2.8, 3.5)) if rng.random() < 0.75 else (0.0, 0.0)
    p.add(BOX, (cx, cy, z + height / 2 - 0.5), (length / 2, depth / 2, height / 2 + 0.5), BUILDING,
          alb, yaw=yaw, window=win)
    c, s = np.cos(yaw), np.sin(yaw)
    nrm = np.array([-s, c]) * facade_dir  # outward normal of the facade
    tan = np.array([c, s])
    if rng.random() < 0.35 and height > 6:  # balconies / ledges
        floor = rng.uniform(2.8, 3.4)
        bal_w, bal_d = rng.uniform(1.5, 3.5), rng.uniform(0.6, 1.3)
        n_along = max(1, int(length // (bal_w + 2.0)))
        for k in range(1, int(height // floor)):
            for j in range(n_along):
                u = -length / 2 + (j + 0.5) * length / n_along
                xy = np.array([cx, cy]) + tan * u + nrm * (depth / 2 + bal_d / 2)
                p.add(BOX, (xy[0], xy[1], z + k * floor), (bal_w / 2, bal_d / 2, 0.5), BUILDING, alb, yaw=yaw)
    if rng.random() < 0.4:  # roof structure
        w = rng.uniform(2, min(8, length / 2))
        p.add(BOX, (cx, cy, z + height + 1.0), (w / 2, min(depth / 4, 3), 1.0), BUILDING, alb, yaw=yaw)
    if rng.random() < 0.3:  # front porch / stairs block
        xy = np.array([cx, cy]) + nrm * (depth / 2 + 0.6) + tan * rng.uniform(-length / 3, length / 3)
        p.add(BOX, (xy[0], xy[1], z + 0.35), (1.2, 0.6, 0.45), BUILDING, alb, yaw=yaw)


def add_fence(p: PrimitiveList, rng, x0, y0, x1, y1, z) -> None:
    """A straight fence from (x0, y0) to (x1, y1): solid panel or mesh with posts."""
    L = float(np.hypot(x1 - x0, y1 - y0))
    if L < 0.5:
        return
    yaw = float(np.arctan2(y1 - y0, x1 - x0))
    h = rng.uniform(0.9, 2.2)
    alb = rng.uniform(0.15, 0.55)
    mesh = rng.random() < 0.5
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    p.add(BOX, (cx, cy, z + h / 2 - 0.1), (L / 2, 0.03 if mesh else rng.uniform(0.03, 0.08), h / 2 + 0.1),
          FENCE, alb, yaw=yaw, pass_prob=rng.uniform(0.4, 0.7) if mesh else 0.0)
    if mesh or rng.random() < 0.5:
        n = max(2, int(L / rng.uniform(2.0, 3.0)) + 1)
        for f in np.linspace(0, 1, n):
            p.add(BOX, (x0 + f * (x1 - x0), y0 + f * (y1 - y0), z + h / 2), (0.04, 0.04, h / 2 + 0.05),
                  FENCE, alb, yaw=yaw)
