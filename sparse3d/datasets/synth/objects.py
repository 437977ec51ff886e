"""Builders of scene objects from primitives. Each returns the object's xy footprint radius.

Every builder takes ``(prims, rng, x, y, z, yaw, ...)`` with ``z`` the ground height under the
object and ``yaw`` its heading; sizes and materials (albedo) are drawn from ``rng``. Albedo ranges
overlap between classes on purpose: classes are told apart by geometry, not by remission.
"""
from __future__ import annotations

import numpy as np

from .common import (BICYCLE, BICYCLIST, BUILDING, CAR, FENCE, MOTORCYCLE, MOTORCYCLIST, OTHER_VEHICLE,
                     PERSON, POLE, TRAFFIC_SIGN, TRUCK, TRUNK, VEGETATION, rot_x, rot_y, rot_z)
from .primitives import BOX, CYLINDER, ELLIPSOID, PrimitiveList

__all__ = ["add_car", "add_truck", "add_bicycle", "add_motorcycle", "add_other_vehicle", "add_rider",
           "add_person", "add_tree", "add_bush", "add_streetlight", "add_sign", "add_building", "add_fence",
           "OTHER_VEHICLE_KINDS"]

#: Kinds of other-vehicle: (name, total length range in metres).
OTHER_VEHICLE_KINDS = (("bus", (11.5, 14.5)), ("trailer", (3.0, 7.0)), ("caravan", (5.0, 7.5)), ("tram", (18.0, 30.0)))


def _place(x, y, z, yaw, local):
    """World position of a point given in the object frame."""
    c, s = np.cos(yaw), np.sin(yaw)
    lx, ly, lz = local
    return np.array([x + c * lx - s * ly, y + s * lx + c * ly, z + lz])


def _wheel_rot(yaw):
    """Cylinder axis along the object's local y (a wheel / disc facing sideways)."""
    return rot_z(yaw) @ rot_x(np.pi / 2)


def _limb(p: PrimitiveList, a, b, r, label, alb, inst) -> None:
    """A cylinder of radius ``r`` from world point ``a`` to ``b``."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    d = b - a
    n = float(np.linalg.norm(d))
    z = d / max(n, 1e-9)
    t = np.array([1.0, 0.0, 0.0]) if abs(z[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    x = np.cross(t, z)
    x /= np.linalg.norm(x)
    p.add(CYLINDER, (a + b) / 2, (r, r, n / 2), label, alb, rot=np.stack([x, np.cross(z, x), z], 1), instance=inst)


def _knee(hip, foot, leg, forward):
    """Knee of a two-segment leg of total length ``leg`` from ``hip`` to ``foot``, bent towards ``forward``."""
    d = foot - hip
    n = float(np.linalg.norm(d))
    f = forward - d * (forward @ d) / max(n * n, 1e-9)
    f /= max(np.linalg.norm(f), 1e-9)
    return (hip + foot) / 2 + f * np.sqrt(max((leg / 2) ** 2 - (n / 2) ** 2, 0.0))


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
    """A box truck: a cab clearly lower than the cargo box behind it (a step of >= 0.5 m in the
    roofline and a gap between them), the box on a high chassis with open space under it."""
    W = rng.uniform(2.35, 2.55)
    cab_l, cab_h = rng.uniform(1.9, 2.4), rng.uniform(1.95, 2.4)
    box_l, box_top = rng.uniform(4.0, 7.5), rng.uniform(3.55, 4.0)
    gap = rng.uniform(0.35, 0.6)
    L = cab_l + box_l + gap
    clear, box_bottom = 0.55, 1.15
    paint = rng.uniform(0.15, 0.8)
    front = L / 2
    p.add(BOX, _place(x, y, z, yaw, (front - cab_l / 2, 0, clear + cab_h / 2)),
          (cab_l / 2, W / 2 * 0.95, cab_h / 2), TRUCK, paint, yaw=yaw, instance=inst)
    p.add(BOX, _place(x, y, z, yaw, (front - 0.02, 0, clear + cab_h * 0.7)), (0.03, W / 2 * 0.85, cab_h * 0.2),
          TRUCK, rng.uniform(0.04, 0.2), yaw=yaw, instance=inst, pass_prob=0.3)  # windscreen
    box_x = front - cab_l - gap - box_l / 2
    if rng.random() < 0.85:  # box body
        p.add(BOX, _place(x, y, z, yaw, (box_x, 0, (box_bottom + box_top) / 2)),
              (box_l / 2, W / 2, (box_top - box_bottom) / 2), TRUCK, rng.uniform(0.2, 0.9), yaw=yaw, instance=inst)
    else:  # flatbed with a tall load (crates)
        p.add(BOX, _place(x, y, z, yaw, (box_x, 0, box_bottom + 0.1)), (box_l / 2, W / 2, 0.1), TRUCK,
              rng.uniform(0.1, 0.5), yaw=yaw, instance=inst)
        p.add(BOX, _place(x, y, z, yaw, (box_x, 0, (box_bottom + box_top) / 2 + 0.1)),
              (box_l / 2.3, W / 2.3, (box_top - box_bottom) / 2 - 0.1), TRUCK, rng.uniform(0.1, 0.6), yaw=yaw,
              instance=inst)
    p.add(BOX, _place(x, y, z, yaw, (0, 0, 0.8)), (L / 2 - 0.3, 0.45, 0.2), TRUCK, 0.15,
          yaw=yaw, instance=inst)  # chassis
    r = 0.5
    axles = [front - 1.1, box_x - box_l * 0.25]
    if box_l > 6:
        axles.append(axles[-1] - 1.3)
    for ax in axles:
        for sy in (1, -1):
            c = _place(x, y, z, yaw, (ax, sy * (W / 2 - 0.2), r))
            p.add(CYLINDER, c, (r, r, 0.18), TRUCK, 0.06, rot=_wheel_rot(yaw), instance=inst)
    return 0.5 * np.hypot(L, W)


def add_bicycle(p: PrimitiveList, rng, x, y, z, yaw, inst, label: int = BICYCLE) -> float:
    r, wb = _bicycle(p, rng, x, y, z, yaw, inst, label)
    return 0.5 * wb + r


def _bicycle(p: PrimitiveList, rng, x, y, z, yaw, inst, label):
    """Bicycle frame; returns wheel radius and wheelbase."""
    r = rng.uniform(0.31, 0.36)
    wb = rng.uniform(0.98, 1.1)
    alb = rng.uniform(0.1, 0.55)
    for sx in (0.5, -0.5):
        p.add(CYLINDER, _place(x, y, z, yaw, (sx * wb, 0, r)), (r, r, 0.025), label, alb,
              rot=_wheel_rot(yaw), instance=inst, pass_prob=0.55)
    tube = (0.025, 0.025)
    # top tube, down tube, seat post, handlebar, saddle, fork
    p.add(BOX, _place(x, y, z, yaw, (0.0, 0, r + 0.42)), (0.3, *tube), label, alb, yaw=yaw, instance=inst)
    p.add(BOX, _place(x, y, z, yaw, (0.12, 0, r + 0.18)), (0.34, *tube), label, alb,
          rot=rot_z(yaw) @ rot_y(0.9), instance=inst)
    p.add(BOX, _place(x, y, z, yaw, (-0.22, 0, r + 0.3)), (0.03, 0.03, 0.33), label, alb, yaw=yaw, instance=inst)
    p.add(BOX, _place(x, y, z, yaw, (wb * 0.5 - 0.08, 0, r + 0.62)), (0.03, 0.3, 0.025), label, alb,
          yaw=yaw, instance=inst)
    p.add(BOX, _place(x, y, z, yaw, (-0.25, 0, r + 0.66)), (0.13, 0.07, 0.03), label, 0.08, yaw=yaw, instance=inst)
    p.add(BOX, _place(x, y, z, yaw, (wb * 0.5 - 0.04, 0, r + 0.3)), (0.025, 0.03, 0.31), label, alb,
          yaw=yaw, instance=inst)
    return r, wb


def add_motorcycle(p: PrimitiveList, rng, x, y, z, yaw, inst, label: int = MOTORCYCLE) -> float:
    """A parked motorcycle or scooter (lower and narrower than a car, two fat wheels)."""
    return _motorcycle(p, rng, x, y, z, yaw, inst, label)[0]


def _motorcycle(p: PrimitiveList, rng, x, y, z, yaw, inst, label):
    """Motorcycle / scooter; returns (footprint radius, seat, grips x/z, footpeg x/z) in the local frame."""
    scooter = rng.random() < 0.35
    r = rng.uniform(0.2, 0.25) if scooter else rng.uniform(0.29, 0.34)
    tw = rng.uniform(0.045, 0.06) if scooter else rng.uniform(0.06, 0.09)
    wb = rng.uniform(1.2, 1.35) if scooter else rng.uniform(1.3, 1.55)
    paint = rng.uniform(0.08, 0.8)
    dark = rng.uniform(0.03, 0.15)
    for sx in (0.5, -0.5):
        p.add(CYLINDER, _place(x, y, z, yaw, (sx * wb, 0, r)), (r, r, tw), label, dark, rot=_wheel_rot(yaw),
              instance=inst)
    h = wb / 2
    seat_z = rng.uniform(0.72, 0.82)
    if scooter:  # floorboard, rear body shell, front shield
        p.add(BOX, _place(x, y, z, yaw, (0.0, 0, 0.3)), (0.3, 0.17, 0.05), label, dark, yaw=yaw, instance=inst)
        p.add(ELLIPSOID, _place(x, y, z, yaw, (-h + 0.35, 0, seat_z - 0.22)), (0.42, 0.2, 0.22), label, paint,
              yaw=yaw, instance=inst)
        p.add(BOX, _place(x, y, z, yaw, (h - 0.28, 0, 0.62)), (0.06, 0.2, 0.32), label, paint,
              rot=rot_z(yaw) @ rot_y(-0.3), instance=inst)
        seat_x = -h + 0.4
    else:  # engine, tank, fork, exhaust, tail
        p.add(BOX, _place(x, y, z, yaw, (0.0, 0, r + 0.08)), (0.27, 0.17, 0.2), label, dark * 2, yaw=yaw,
              instance=inst)
        p.add(ELLIPSOID, _place(x, y, z, yaw, (0.12, 0, seat_z + 0.03)), (0.26, 0.16, 0.12), label, paint,
              yaw=yaw, instance=inst)
        p.add(BOX, _place(x, y, z, yaw, (h - 0.15, 0, r + 0.33)), (0.03, 0.1, 0.34), label, 0.3,
              rot=rot_z(yaw) @ rot_y(-0.45), instance=inst)
        p.add(CYLINDER, _place(x, y, z, yaw, (-0.3, -0.19, r - 0.02)), (0.05, 0.05, 0.36), label, 0.35,
              rot=rot_z(yaw) @ rot_y(np.pi / 2 - 0.15), instance=inst)
        p.add(BOX, _place(x, y, z, yaw, (-h + 0.05, 0, seat_z - 0.05)), (0.25, 0.1, 0.05), label, paint,
              yaw=yaw, instance=inst)
        seat_x = -0.28
    p.add(BOX, _place(x, y, z, yaw, (seat_x, 0, seat_z)), (0.27, 0.14, 0.05), label, dark, yaw=yaw, instance=inst)
    bar = (h - 0.3, seat_z + rng.uniform(0.18, 0.3))
    p.add(BOX, _place(x, y, z, yaw, (bar[0], 0, bar[1])), (0.03, 0.35, 0.03), label, 0.2, yaw=yaw, instance=inst)
    p.add(ELLIPSOID, _place(x, y, z, yaw, (h - 0.17, 0, bar[1] - 0.15)), (0.1, 0.12, 0.1), label,
          rng.uniform(0.3, 0.9), yaw=yaw, instance=inst)  # headlight / fairing
    peg = (seat_x + 0.25, 0.3 if scooter else r + 0.05)
    return h + r, (seat_x, seat_z), bar, peg


def add_other_vehicle(p: PrimitiveList, rng, x, y, z, yaw, inst, kind: int, L: float) -> float:
    """Other-vehicle of total length ``L``: kind 0 bus (one long tall box with a glass band, low floor,
    level roof: unlike a truck's stepped cab/box profile), 1 box/flat trailer with a drawbar, 2 caravan
    (tall trailer with windows), 3 tram (2-3 articulated sections with a pantograph); see
    ``OTHER_VEHICLE_KINDS``."""
    lab = OTHER_VEHICLE
    if kind == 3:
        return _tram(p, rng, x, y, z, yaw, inst, L)
    if kind == 0:
        W, H, clear = rng.uniform(2.45, 2.55), rng.uniform(2.9, 3.3), 0.32
        paint = rng.uniform(0.2, 0.85)
        belt = clear + rng.uniform(0.85, 1.05)
        p.add(BOX, _place(x, y, z, yaw, (0, 0, (clear + belt) / 2)), (L / 2, W / 2, (belt - clear) / 2), lab, paint,
              yaw=yaw, instance=inst)
        top = H - 0.25
        p.add(BOX, _place(x, y, z, yaw, (0, 0, (belt + top) / 2)), (L / 2 - 0.02, W / 2 - 0.02, (top - belt) / 2),
              lab, rng.uniform(0.04, 0.2), yaw=yaw, instance=inst, pass_prob=0.35)  # glass band
        p.add(BOX, _place(x, y, z, yaw, (0, 0, (top + H) / 2)), (L / 2, W / 2, (H - top) / 2), lab, paint,
              yaw=yaw, instance=inst)
        p.add(BOX, _place(x, y, z, yaw, (rng.uniform(-L / 4, L / 4), 0, H + 0.15)), (rng.uniform(0.8, 1.6), W * 0.35, 0.15),
              lab, rng.uniform(0.2, 0.6), yaw=yaw, instance=inst)  # roof unit
        r = 0.5
        axles = [L / 2 - 2.6, -L / 2 + 3.1] + ([-L / 2 + 4.5] if L > 12.5 else [])
    else:
        bar = rng.uniform(0.9, 1.4)
        body = L - bar
        W = rng.uniform(1.7, 2.35) if kind == 1 else rng.uniform(2.1, 2.5)
        bottom = rng.uniform(0.5, 0.7) if kind == 1 else rng.uniform(0.4, 0.55)
        cx = -L / 2 + body / 2
        paint = rng.uniform(0.1, 0.85)
        if kind == 2 or rng.random() < 0.6:  # closed box
            H = rng.uniform(1.3, 2.5) if kind == 1 else rng.uniform(2.3, 2.75)
            p.add(BOX, _place(x, y, z, yaw, (cx, 0, (bottom + H) / 2)), (body / 2, W / 2, (H - bottom) / 2), lab,
                  paint, yaw=yaw, instance=inst)
            if kind == 2:  # windows and a roof hatch
                p.add(BOX, _place(x, y, z, yaw, (cx, 0, H - 0.75)), (body / 2 - 0.6, W / 2 + 0.01, 0.25), lab,
                      rng.uniform(0.03, 0.15), yaw=yaw, instance=inst, pass_prob=0.3)
                p.add(BOX, _place(x, y, z, yaw, (cx, 0, H + 0.08)), (0.4, 0.4, 0.08), lab, 0.4, yaw=yaw, instance=inst)
        else:  # flatbed with low side walls
            wall = rng.uniform(0.3, 0.5)
            p.add(BOX, _place(x, y, z, yaw, (cx, 0, bottom + 0.05)), (body / 2, W / 2, 0.05), lab, paint, yaw=yaw,
                  instance=inst)
            for sy in (1, -1):
                p.add(BOX, _place(x, y, z, yaw, (cx, sy * (W / 2 - 0.02), bottom + wall / 2)), (body / 2, 0.02, wall / 2),
                      lab, paint, yaw=yaw, instance=inst)
            for sx in (1, -1):
                p.add(BOX, _place(x, y, z, yaw, (cx + sx * (body / 2 - 0.02), 0, bottom + wall / 2)),
                      (0.02, W / 2, wall / 2), lab, paint, yaw=yaw, instance=inst)
        hz = 0.45
        front = -L / 2 + body
        for sy in (1, -1):  # A-frame drawbar
            c = _place(x, y, z, yaw, (front + bar / 2, sy * W / 5, hz))
            p.add(BOX, c, (bar / 2 + 0.05, 0.04, 0.04), lab, 0.2, rot=rot_z(yaw - sy * 0.35), instance=inst)
        p.add(CYLINDER, _place(x, y, z, yaw, (L / 2 - 0.1, 0, hz / 2)), (0.04, 0.04, hz / 2), lab, 0.2, instance=inst)
        r = rng.uniform(0.28, 0.36)
        axles = [cx] if body < 4.5 else [cx + 0.5, cx - 0.5]
    for ax in axles:
        for sy in (1, -1):
            c = _place(x, y, z, yaw, (ax, sy * (W / 2 - (0.25 if kind == 0 else -0.1)), r))
            p.add(CYLINDER, c, (r, r, 0.11), lab, 0.06, rot=_wheel_rot(yaw), instance=inst)
    return 0.5 * np.hypot(L, W)


def _tram(p: PrimitiveList, rng, x, y, z, yaw, inst, L: float) -> float:
    lab = OTHER_VEHICLE
    n = 2 if L < 23 else 3
    joint = 0.5
    sec = (L - (n - 1) * joint) / n
    W, H, floor = rng.uniform(2.4, 2.65), rng.uniform(3.3, 3.6), 0.35
    paint = rng.uniform(0.2, 0.85)
    belt = floor + rng.uniform(0.8, 1.0)
    top = H - 0.35
    for i in range(n):
        cx = -L / 2 + sec / 2 + i * (sec + joint)
        p.add(BOX, _place(x, y, z, yaw, (cx, 0, (floor + belt) / 2)), (sec / 2, W / 2, (belt - floor) / 2), lab, paint,
              yaw=yaw, instance=inst)
        p.add(BOX, _place(x, y, z, yaw, (cx, 0, (belt + top) / 2)), (sec / 2 - 0.02, W / 2 - 0.02, (top - belt) / 2),
              lab, rng.uniform(0.04, 0.2), yaw=yaw, instance=inst, pass_prob=0.35)  # glass band
        p.add(BOX, _place(x, y, z, yaw, (cx, 0, (top + H) / 2)), (sec / 2, W / 2, (H - top) / 2), lab, paint,
              yaw=yaw, instance=inst)
        for bx in (cx - sec / 2 + 1.8, cx + sec / 2 - 1.8):  # bogies
            p.add(BOX, _place(x, y, z, yaw, (bx, 0, floor / 2)), (1.1, W / 2 - 0.3, floor / 2), lab, 0.08,
                  yaw=yaw, instance=inst)
        if i < n - 1:  # bellows
            p.add(BOX, _place(x, y, z, yaw, (cx + sec / 2 + joint / 2, 0, (floor + H) / 2)),
                  (joint / 2 + 0.02, W / 2 - 0.15, (H - floor) / 2 - 0.1), lab, 0.1, yaw=yaw, instance=inst)
    px = rng.uniform(-L / 4, L / 4)
    p.add(BOX, _place(x, y, z, yaw, (px, 0, H + 0.15)), (1.2, W * 0.3, 0.15), lab, 0.3, yaw=yaw, instance=inst)
    p.add(BOX, _place(x, y, z, yaw, (px, 0, H + 0.6)), (0.5, 0.8, 0.03), lab, 0.3, yaw=yaw, instance=inst,
          rot=rot_z(yaw) @ rot_y(0.6))  # pantograph
    return 0.5 * np.hypot(L, W)


def add_rider(p: PrimitiveList, rng, x, y, z, yaw, inst, motor: bool) -> float:
    """A person riding a bicycle (``motor=False``: everything labelled bicyclist) or a motorcycle /
    scooter (motorcyclist, with a helmet): seated, leaning forward, hands on the grips, feet on the
    pedals / footpegs."""
    label = MOTORCYCLIST if motor else BICYCLIST
    if motor:
        radius, seat, bar, peg = _motorcycle(p, rng, x, y, z, yaw, inst, label)
        hip_l = np.array([seat[0] - 0.05, 0.0, seat[1] + 0.1])
        grips = [np.array([bar[0] - 0.05, s * 0.33, bar[1]]) for s in (1, -1)]
        feet = [np.array([peg[0], s * 0.2, peg[1]]) for s in (1, -1)]
        lean = rng.uniform(0.15, 0.45)
    else:
        r, wb = _bicycle(p, rng, x, y, z, yaw, inst, label)
        radius = 0.5 * wb + r
        hip_l = np.array([-0.27, 0.0, r + 0.74])
        grips = [np.array([wb * 0.5 - 0.1, s * 0.27, r + 0.63]) for s in (1, -1)]
        ph = rng.uniform(0, np.pi)
        feet = [np.array([0.02 + s * 0.17 * np.cos(ph), s * 0.13, r - 0.02 + s * 0.17 * np.sin(ph)]) for s in (1, -1)]
        lean = rng.uniform(0.45, 0.85)
    h = rng.uniform(1.6, 1.9)
    cloth = rng.uniform(0.05, 0.6)
    W = lambda q: _place(x, y, z, yaw, q)  # noqa: E731
    fwd = np.array([np.cos(yaw), np.sin(yaw), 0.0])
    for s, foot in zip((1, -1), feet):
        hip = W(hip_l + np.array([0.0, s * 0.1, 0.0]))
        ft = W(foot)
        knee = _knee(hip, ft, 0.5 * h, fwd + np.array([0.0, 0.0, 0.3]))
        _limb(p, hip, knee, 0.075, label, cloth * 0.8, inst)
        _limb(p, knee, ft, 0.06, label, cloth * 0.8, inst)
    tl = 0.3 * h
    axis = np.array([np.sin(lean), 0.0, np.cos(lean)])
    sh = hip_l + tl * axis
    p.add(ELLIPSOID, W(hip_l + 0.5 * tl * axis), (0.13, 0.2, tl / 2 + 0.05), label, cloth,
          rot=rot_z(yaw) @ rot_y(lean), instance=inst)
    head = sh + 0.2 * np.array([np.sin(0.5 * lean), 0.0, np.cos(0.5 * lean)])
    if motor:  # helmet
        p.add(ELLIPSOID, W(head), (0.15, 0.14, 0.15), label, rng.uniform(0.1, 0.9), yaw=yaw, instance=inst)
    else:
        p.add(ELLIPSOID, W(head), (0.1, 0.09, 0.12), label, rng.uniform(0.2, 0.5), yaw=yaw, instance=inst)
    for s, g in zip((1, -1), grips):
        _limb(p, W(sh + np.array([0.0, s * 0.19, -0.04])), W(g), 0.045, label, cloth, inst)
    return radius


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
    for i in range(1 if rng.random() < 0.6 else 2):
        s = rng.uniform(0.35, 0.55)
        plate_z = zt - s - i * (2 * s + 0.1)
        c = _place(x, y, 0, face_yaw, (0.05, 0, 0))
        c[2] = plate_z
        alb = rng.uniform(0.45, 0.95)
        shape = rng.integers(0, 3)
        if shape == 0:  # round: a disc facing along face_yaw
            p.add(CYLINDER, c, (s, s, 0.02), TRAFFIC_SIGN, alb, rot=rot_z(face_yaw) @ rot_y(np.pi / 2))
        elif shape == 1:  # rectangle
            p.add(BOX, c, (0.03, s * rng.uniform(1.0, 2.0), s * rng.uniform(0.8, 1.1)), TRAFFIC_SIGN, alb,
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
    h = rng.uniform(1.0, 2.0)
    alb = rng.uniform(0.15, 0.55)
    mesh = rng.random() < 0.5
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    p.add(BOX, (cx, cy, z + h / 2 - 0.1), (L / 2, 0.03 if mesh else rng.uniform(0.03, 0.08), h / 2 + 0.1),
          FENCE, alb, yaw=yaw, pass_prob=rng.uniform(0.25, 0.45) if mesh else 0.0)
    p.add(BOX, (cx, cy, z + h + 0.03), (L / 2, 0.04, 0.04), FENCE, alb, yaw=yaw)  # top rail
    if mesh or rng.random() < 0.5:
        n = max(2, int(L / rng.uniform(2.0, 3.0)) + 1)
        for f in np.linspace(0, 1, n):
            p.add(BOX, (x0 + f * (x1 - x0), y0 + f * (y1 - y0), z + h / 2), (0.04, 0.04, h / 2 + 0.05),
                  FENCE, alb, yaw=yaw)
