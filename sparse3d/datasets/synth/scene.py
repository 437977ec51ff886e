"""Procedural urban scene of one sequence: streets, buildings, vegetation, furniture, vehicles, people.

:func:`build_scene` draws a main street (the ego vehicle drives along it; one scan every
``spacing`` metres; it always has a median, with gaps) with cross streets, fills both sides of
every street (parked cars, trucks, trailers, buses and motorcycles; bicycle racks; pedestrians;
cyclists and motorcyclists in bike lanes, free parking space and traffic; buses and trams in
traffic) and then makes sure that every scan has each thing class and signs/poles/fences nearby.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Tuple

import numpy as np

from . import objects as ob
from .common import (BICYCLE, BICYCLIST, CAR, FENCE, MOTORCYCLE, MOTORCYCLIST, OTHER_GROUND, OTHER_VEHICLE, PERSON,
                     POLE, TRAFFIC_SIGN, TRUCK, TRUNK, rot_x, rot_y, rot_z)
from .layout import Layout, Street
from .primitives import PrimitiveList, Primitives

__all__ = ["Scene", "build_scene", "SENSOR_HEIGHT"]

SENSOR_HEIGHT = 1.73
_EXTENT = 110.0  # metres of street populated before the first and after the last scan


@dataclass
class Scene:
    """layout: streets + ground; prims: all primitives; poses: ``[S, 4, 4]`` world-from-lidar."""

    layout: Layout
    prims: Primitives
    poses: np.ndarray
    objects: List[Tuple[int, float, float]] = field(default_factory=list)


class _Occupancy:
    """Axis-aligned footprints ``(x0, y0, x1, y1)`` of placed objects."""

    def __init__(self) -> None:
        self.boxes = np.zeros((0, 4))

    def free(self, x0, y0, x1, y1) -> bool:
        b = self.boxes
        return not bool(((b[:, 0] < x1) & (b[:, 2] > x0) & (b[:, 1] < y1) & (b[:, 3] > y0)).any())

    def add(self, x0, y0, x1, y1) -> None:
        self.boxes = np.vstack([self.boxes, [[min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)]]])


class _Builder:
    def __init__(self, rng: np.random.Generator, layout: Layout) -> None:
        self.rng, self.layout = rng, layout
        self.prims = PrimitiveList()
        self.occ = _Occupancy()
        self.objects: List[Tuple[int, float, float]] = []  # (class, x, y) for the guarantee pass
        self.next_instance = 1

    def z(self, x, y) -> float:
        return float(self.layout.height(np.array([x]), np.array([y]))[0])

    def _inst(self) -> int:
        i = self.next_instance
        self.next_instance += 1
        return i

    def try_place(self, cls: int, st: Street, u: float, v: float, yaw: float, half_u: float,
                  half_v: float, **kw) -> bool:
        """Place an object of class ``cls`` centred at street coords (u, v) if its footprint is free."""
        x, y = st.world(u, v)
        if st.axis == 1:
            half_u, half_v = half_v, half_u  # footprint extents in world x / y
        hx, hy = (half_u, half_v)
        if not self.occ.free(x - hx, y - hy, x + hx, y + hy):
            return False
        self.occ.add(x - hx, y - hy, x + hx, y + hy)
        z, rng, p = self.z(x, y), self.rng, self.prims
        if cls == CAR:
            ob.add_car(p, rng, x, y, z, yaw, self._inst())
        elif cls == TRUCK:
            ob.add_truck(p, rng, x, y, z, yaw, self._inst())
        elif cls == BICYCLE:
            ob.add_bicycle(p, rng, x, y, z, yaw, self._inst())
        elif cls == PERSON:
            ob.add_person(p, rng, x, y, z, yaw, self._inst())
        elif cls == MOTORCYCLE:
            ob.add_motorcycle(p, rng, x, y, z, yaw, self._inst())
        elif cls == OTHER_VEHICLE:
            ob.add_other_vehicle(p, rng, x, y, z, yaw, self._inst(), kw["kind"], kw["length"])
        elif cls in (BICYCLIST, MOTORCYCLIST):
            ob.add_rider(p, rng, x, y, z, yaw, self._inst(), cls == MOTORCYCLIST)
        elif cls == TRUNK:
            ob.add_tree(p, rng, x, y, z, kw.get("max_crown", 3.4))
        elif cls == POLE:
            ob.add_streetlight(p, rng, x, y, z, kw["arm_yaw"])
        elif cls == TRAFFIC_SIGN:
            ob.add_sign(p, rng, x, y, z, yaw)
        else:
            raise ValueError(cls)
        self.objects.append((cls, x, y))
        return True

    def fence(self, st: Street, u0: float, u1: float, v0: float, v1: float) -> None:
        x0, y0 = st.world(u0, v0)
        x1, y1 = st.world(u1, v1)
        ob.add_fence(self.prims, self.rng, x0, y0, x1, y1, min(self.z(x0, y0), self.z(x1, y1)))
        self.objects.append((FENCE, (x0 + x1) / 2, (y0 + y1) / 2))

    def bush(self, st: Street, u: float, v: float, length=None) -> None:
        x, y = st.world(u, v)
        ob.add_bush(self.prims, self.rng, x, y, self.z(x, y), st.yaw(), length)


def _random_street(rng, axis: int, offset: float, u_range, main: bool) -> Street:
    lanes = 4 if (main and rng.random() < 0.3) else 2
    lane_w = rng.uniform(3.0, 3.6) if main else rng.uniform(2.8, 3.3)
    park = [rng.uniform(2.0, 2.6) if rng.random() < (0.7 if main else 0.5) else 0.0 for _ in range(2)]
    if main and park[0] == 0 and park[1] == 0:
        park[int(rng.integers(2))] = rng.uniform(2.0, 2.6)
    verge = [rng.uniform(1.0, 3.0) if rng.random() < (0.4 if main else 0.3) else 0.0 for _ in range(2)]
    walk = [rng.uniform(1.8, 4.0) if main else rng.uniform(1.5, 3.0) for _ in range(2)]
    bike = [rng.uniform(1.3, 1.9) if rng.random() < (0.45 if main else 0.2) else 0.0 for _ in range(2)]
    has_median = main or rng.random() < 0.3
    median = (rng.uniform(0.4, 1.4) if main else rng.uniform(0.4, 1.0)) if has_median else 0.0
    return Street(axis, offset, lanes * lane_w / 2, lane_w, tuple(park), tuple(verge), tuple(walk),
                  rng.uniform(0.12, 0.17), u_range, median=median, median_period=rng.uniform(35, 90),
                  median_duty=rng.uniform(0.35, 0.8), median_phase=rng.uniform(0, 90), bike=tuple(bike))


def _rider(rng) -> int:
    return BICYCLIST if rng.random() < 0.55 else MOTORCYCLIST


def _other_vehicle(rng) -> dict:
    """kind / length of a random parked other-vehicle (bus, trailer or caravan; trams run in traffic)."""
    kind = int(rng.choice(3, p=[0.45, 0.2, 0.35]))
    return {"kind": kind, "length": float(rng.uniform(*ob.OTHER_VEHICLE_KINDS[kind][1]))}


def _intervals(lo: float, hi: float, blocked: List[Tuple[float, float]]) -> List[Tuple[float, float]]:
    out, cur = [], lo
    for b0, b1 in sorted(blocked):
        if b1 <= cur:
            continue
        if b0 > cur:
            out.append((cur, min(b0, hi)))
        cur = max(cur, b1)
        if cur >= hi:
            break
    if cur < hi:
        out.append((cur, hi))
    return [(a, b) for a, b in out if b - a > 3.0]


def _populate_side(B: _Builder, st: Street, side: int, spans: List[Tuple[float, float]]) -> None:
    rng = B.rng
    sg = 1.0 if side == 1 else -1.0
    e0, e1, e2, e3 = st.edges(side)
    pw, vw = st.parking[side], st.verge[side]
    yaw = st.yaw()
    to_road = yaw - sg * np.pi / 2  # direction pointing from this side towards the road
    for a, b in spans:
        # --- buildings, yards and open lots ---
        u = a + rng.uniform(0, 4)
        while u < b - 4:
            length = min(rng.uniform(8, 30), b - u)
            if rng.random() < 0.78 and length > 6:
                setback = 0.0 if rng.random() < 0.55 else rng.uniform(2, 8)
                depth, height = rng.uniform(8, 18), rng.uniform(5, 24)
                vc = sg * (e3 + setback + depth / 2 + 0.2)
                x, y = st.world(u + length / 2, vc)
                hx, hy = (length / 2, depth / 2) if st.axis == 0 else (depth / 2, length / 2)
                if B.occ.free(x - hx, y - hy, x + hx, y + hy):
                    B.occ.add(x - hx, y - hy, x + hx, y + hy)
                    ob.add_building(B.prims, rng, x, y, float(B.layout.plane(x, y)), yaw, length, depth,
                                    height, -sg)
                    if setback >= 2:
                        if rng.random() < 0.5:
                            B.fence(st, u, u + length, sg * (e3 + 0.4), sg * (e3 + 0.4))
                        if rng.random() < 0.75:
                            B.bush(st, u + length / 2, sg * (e3 + 1.0 + setback * 0.3), length=length * 0.8)
                        for _ in range(rng.integers(0, 3)):
                            B.try_place(TRUNK, st, u + rng.uniform(1, length - 1), sg * (e3 + setback * 0.7),
                                        0, 0.6, 0.6)
                    elif rng.random() < 0.3:  # planting along the facade
                        B.bush(st, u + length / 2, sg * (e3 + 0.5), length=length * rng.uniform(0.3, 0.9))
            else:  # open lot: terrain with trees and bushes, fenced or hedged
                edge = rng.random()
                if edge < 0.4:
                    B.fence(st, u, u + length, sg * (e3 + 0.4), sg * (e3 + 0.4))
                elif edge < 0.75:
                    B.bush(st, u + length / 2, sg * (e3 + 0.9), length=length * 0.9)
                for _ in range(rng.integers(2, 7)):
                    B.try_place(TRUNK, st, u + rng.uniform(0, length), sg * (e3 + rng.uniform(2, 15)), 0, 0.6, 0.6)
                for _ in range(rng.integers(1, 6)):
                    B.bush(st, u + rng.uniform(0, length), sg * (e3 + rng.uniform(1.5, 12)))
            u += length
            gap = 0.0 if rng.random() < 0.4 else rng.uniform(1, 4) if rng.random() < 0.5 else rng.uniform(4, 12)
            if gap >= 2 and rng.random() < 0.45:
                B.fence(st, u + 0.2, u + gap - 0.2, sg * (e3 + 0.5), sg * (e3 + 0.5))
            u += gap
        # --- trees in the verge or on the sidewalk ---
        if vw > 0 or rng.random() < 0.6:
            v = sg * (e1 + vw / 2) if vw > 0 else sg * (e2 + 0.9)
            u = a + rng.uniform(2, 8)
            while u < b:
                if rng.random() < 0.85:
                    B.try_place(TRUNK, st, u, v, 0, 0.5, 0.5, max_crown=abs(v) - e0 + 1.0)
                elif vw > 0:
                    B.bush(st, u, v)
                u += rng.uniform(6, 14)
        # --- street lights, utility poles, signs ---
        u = a + rng.uniform(3, 20)
        while u < b:
            B.try_place(POLE, st, u, sg * (e2 + 0.35), 0, 0.4, 0.4, arm_yaw=to_road)
            u += rng.uniform(20, 35)
        for _ in range(rng.poisson((b - a) / 45)):
            B.try_place(POLE, st, rng.uniform(a, b), sg * (e3 - 0.3), 0, 0.4, 0.4, arm_yaw=to_road)
        for _ in range(rng.poisson((b - a) / 8)):
            face = yaw + (0.0 if rng.random() < 0.5 else np.pi) + rng.normal(0, 0.15)
            B.try_place(TRAFFIC_SIGN, st, rng.uniform(a, b), sg * (e2 + 0.3), face, 0.4, 0.4)
        # --- parked cars, trucks, other vehicles and motorcycles; riders in free parking space ---
        if pw > 0:
            u = a + rng.uniform(0, 3)
            while u < b - 6:
                if rng.random() < 0.7:  # occupied; free stretches show the bay surface and its markings
                    kind = rng.random()
                    heading = yaw + (0.0 if rng.random() < 0.8 else np.pi) + rng.normal(0, 0.03)
                    v = sg * (e0 + pw / 2 + rng.uniform(-0.15, 0.15))
                    if kind < 0.1:  # 2-4 motorcycles / scooters, angled towards the curb
                        n = int(rng.integers(2, 5))
                        for k in range(n):
                            B.try_place(MOTORCYCLE, st, u + 0.6 + 1.1 * k, v, yaw + sg * rng.uniform(1.0, 1.4), 0.5, 1.0)
                        u += 1.1 * n + rng.uniform(0.4, 2.0)
                        continue
                    if kind < 0.2:
                        cls, kw = TRUCK, {}
                        slot = 11.0
                    elif kind < 0.3:
                        cls, kw = OTHER_VEHICLE, _other_vehicle(rng)
                        slot = kw["length"] + 0.4
                    else:
                        cls, kw = CAR, {}
                        slot = 5.3
                    B.try_place(cls, st, u + slot / 2, v, heading, slot / 2, 1.3, **kw)
                    u += slot + rng.uniform(0.4, 3.0)
                else:
                    gap = rng.uniform(3, 10)
                    if gap > 6 and rng.random() < 0.35:  # a rider passing through the gap
                        B.try_place(_rider(rng), st, u + gap / 2, sg * (e0 + pw / 2),
                                    yaw + (np.pi if side == 1 else 0.0) + rng.normal(0, 0.1), 1.1, 0.45)
                    u += gap
        # --- riders in the bike lane ---
        if st.bike[side] > 0:
            for _ in range(rng.poisson((b - a) / 15)):
                B.try_place(_rider(rng), st, rng.uniform(a, b), sg * (e0 - st.bike[side] / 2 + rng.normal(0, 0.1)),
                            yaw + (np.pi if side == 1 else 0.0) + rng.normal(0, 0.08), 1.1, 0.45)
        # --- motorcycles parked on the sidewalk at the curb ---
        for _ in range(rng.poisson((b - a) / 40)):
            B.try_place(MOTORCYCLE, st, rng.uniform(a, b), sg * (e2 + 0.8), yaw + rng.normal(0, 0.15), 1.0, 0.5)
        # --- bicycles (racks near buildings, single bikes at the curb) ---
        u = a
        while u < b:
            u += rng.uniform(8, 25)
            if rng.random() < 0.6:
                n = int(rng.integers(1, 5))
                v = sg * (e3 - 0.7)
                for k in range(n):
                    B.try_place(BICYCLE, st, u + 0.75 * k, v, yaw + sg * np.pi / 2 + rng.normal(0, 0.1), 0.3, 0.8)
            else:
                B.try_place(BICYCLE, st, u, sg * (e2 + 0.6), yaw + rng.normal(0, 0.1), 0.9, 0.3)
        # --- pedestrians ---
        for _ in range(rng.poisson((b - a) / 6)):
            u = rng.uniform(a, b)
            v = sg * rng.uniform(e2 + 0.4, max(e3 - 0.4, e2 + 0.5))
            if B.try_place(PERSON, st, u, v, rng.uniform(0, 2 * np.pi), 0.35, 0.35) and rng.random() < 0.3:
                for _ in range(rng.integers(1, 3)):
                    B.try_place(PERSON, st, u + rng.uniform(-1.2, 1.2), v + rng.uniform(-0.8, 0.8),
                                rng.uniform(0, 2 * np.pi), 0.35, 0.35)


def _median_furniture(B: _Builder, st: Street, span: Tuple[float, float]) -> None:
    """Street lights and keep-right signs on the median."""
    rng = B.rng
    if st.median < 0.4:
        return
    u = span[0] + rng.uniform(0, 20)
    lights = rng.random() < 0.5
    while u < span[1]:
        xy = np.array([st.world(uu, 0.0) for uu in (u - 1.0, u, u + 1.0)])
        if (B.layout.classify(xy[:, 0], xy[:, 1])[0] == OTHER_GROUND).all():
            if lights:
                B.try_place(POLE, st, u, 0.0, 0, 0.3, 0.3, arm_yaw=st.yaw() + (np.pi / 2 if rng.random() < 0.5 else -np.pi / 2))
            elif rng.random() < 0.5:
                B.try_place(TRAFFIC_SIGN, st, u, 0.0, st.yaw() + np.pi * (rng.random() < 0.5), 0.3, 0.3)
        u += rng.uniform(15, 35)


def _traffic(B: _Builder, st: Street, span: Tuple[float, float], ego_lane: int) -> None:
    rng = B.rng
    for k in range(st.lanes):
        if k == ego_lane:
            continue
        v = st.lane_v(k)
        heading = st.yaw() + (0.0 if v < 0 else np.pi)
        u = span[0] + rng.uniform(0, 30)
        while u < span[1]:
            kind = rng.random()
            if kind < 0.1:
                B.try_place(TRUCK, st, u, v + rng.normal(0, 0.2), heading + rng.normal(0, 0.02), 6.0, 1.3)
            elif kind < 0.22:  # buses and trams
                ov = 0 if kind < 0.16 else 3
                kw = {"kind": ov, "length": float(rng.uniform(*ob.OTHER_VEHICLE_KINDS[ov][1]))}
                B.try_place(OTHER_VEHICLE, st, u + kw["length"] / 2, v + rng.normal(0, 0.1),
                            heading + rng.normal(0, 0.01), kw["length"] / 2 + 0.2, 1.3, **kw)
                u += kw["length"]
            elif kind < 0.36:  # riders keep to the outer part of the lane
                off = (st.lane_w / 2 - 0.7) * np.sign(v)
                B.try_place(_rider(rng), st, u, v + off + rng.normal(0, 0.15), heading + rng.normal(0, 0.05), 1.1, 0.45)
            else:
                B.try_place(CAR, st, u, v + rng.normal(0, 0.2), heading + rng.normal(0, 0.02), 2.7, 1.3)
            u += rng.uniform(12, 40)


def _ensure_classes(B: _Builder, main: Street, ego_uv: np.ndarray, direction: float, radius: float = 28.0) -> None:
    """Add a car/truck/bicycle/person/sign/pole/fence/tree ahead of any scan that has none nearby."""
    rng = B.rng
    for u_e, _ in ego_uv:
        for cls in (CAR, TRUCK, OTHER_VEHICLE, BICYCLE, MOTORCYCLE, PERSON, BICYCLIST, MOTORCYCLIST, TRAFFIC_SIGN,
                    POLE, FENCE, TRUNK):
            objs = [o for o in B.objects if o[0] == cls]
            x_e, y_e = main.world(u_e, 0.0)
            if objs and (np.hypot(np.array([o[1] for o in objs]) - x_e, np.array([o[2] for o in objs]) - y_e)
                         < radius).any():
                continue
            for _ in range(30):
                side = int(rng.integers(2))
                sg = 1.0 if side else -1.0
                e0, e1, e2, e3 = main.edges(side)
                u = u_e + direction * rng.uniform(5, 22)
                if cls in (CAR, TRUCK, OTHER_VEHICLE):
                    pw = main.parking[side]
                    v = sg * (e0 + pw / 2) if pw > 0 else sg * (e0 - 1.7)
                    kw = _other_vehicle(rng) if cls == OTHER_VEHICLE else {}
                    half = {CAR: 2.7, TRUCK: 6.0}.get(cls, kw.get("length", 0.0) / 2 + 0.2)
                    ok = B.try_place(cls, main, u, v, main.yaw(), half, 1.2, **kw)
                elif cls in (BICYCLIST, MOTORCYCLIST):
                    pw, bw = main.parking[side], main.bike[side]
                    v = sg * (e0 - bw / 2) if bw > 0 else sg * (e0 + pw / 2) if pw > 0 else sg * (e0 - 0.7)
                    ok = B.try_place(cls, main, u, v, main.yaw() + (np.pi if side else 0.0), 1.1, 0.45)
                elif cls == MOTORCYCLE:
                    ok = B.try_place(cls, main, u, sg * (e2 + 0.8), main.yaw(), 1.0, 0.5)
                elif cls == FENCE:
                    B.fence(main, u - 3, u + 3, sg * (e3 + 0.4), sg * (e3 + 0.4))
                    ok = True
                elif cls == PERSON:
                    ok = B.try_place(cls, main, u, sg * rng.uniform(e2 + 0.4, e3), rng.uniform(0, 6.3), 0.35, 0.35)
                elif cls == BICYCLE:
                    ok = B.try_place(cls, main, u, sg * (e3 - 0.7), main.yaw() + np.pi / 2, 0.3, 0.8)
                elif cls == TRAFFIC_SIGN:
                    ok = B.try_place(cls, main, u, sg * (e2 + 0.3), main.yaw() + np.pi * (u > u_e), 0.4, 0.4)
                elif cls == POLE:
                    ok = B.try_place(cls, main, u, sg * (e2 + 0.35), 0, 0.4, 0.4, arm_yaw=main.yaw() - sg * np.pi / 2)
                else:
                    ok = B.try_place(cls, main, u, sg * (e2 + 0.9), 0, 0.5, 0.5, max_crown=e2 + 1.9 - e0)
                if ok:
                    break


def build_scene(rng: np.random.Generator, n_scans: int, spacing: float = 10.0) -> Scene:
    """Draw one street scene and the ``n_scans`` sensor poses along its main street."""
    span = (n_scans - 1) * spacing
    lo, hi = -span / 2 - _EXTENT, span / 2 + _EXTENT
    main = _random_street(rng, 0, 0.0, (-np.inf, np.inf), True)
    w_main = max(main.edges(0)[3], main.edges(1)[3])
    streets, blocked = [main], []
    xc = lo + rng.uniform(10, 60)
    while xc < hi:
        kind = rng.random()
        ur = (-150.0, 150.0) if kind < 0.5 else ((-150.0, 0.0) if kind < 0.75 else (0.0, 150.0))
        cs = _random_street(rng, 1, xc, ur, False)
        w = max(cs.edges(0)[3], cs.edges(1)[3])
        streets.append(cs)
        blocked.append((xc - w - 1.0, xc + w + 1.0))
        xc += rng.uniform(70, 150)
    grade = (rng.uniform(-0.03, 0.03), rng.uniform(-0.01, 0.01))
    layout = Layout(streets, grade, rng.uniform(0, 2 * np.pi, 8))
    B = _Builder(rng, layout)
    # ego path first, so nothing is placed in its lane
    direction = 1.0 if rng.random() < 0.6 else -1.0
    lanes = main.lanes
    ego_lane = lanes // 2 - 1 if direction > 0 else lanes // 2
    v_lane = main.lane_v(ego_lane)
    us = direction * (np.arange(n_scans) * spacing - span / 2)
    ego_uv = np.stack([us + rng.uniform(-1, 1, n_scans), v_lane + rng.uniform(-0.25, 0.25, n_scans)], 1)
    B.occ.add(lo - 10, v_lane - main.lane_w / 2 + 0.2, hi + 10, v_lane + main.lane_w / 2 - 0.2)
    for u in ego_uv[:, 0]:  # no traffic right beside the ego vehicle
        w = main.median + main.half_road - 0.3
        B.occ.add(u - 9.0, -w, u + 9.0, w)
    _median_furniture(B, main, (lo, hi))
    for side in (0, 1):
        _populate_side(B, main, side, _intervals(lo, hi, blocked))
    for cs in streets[1:]:
        spans = [(max(cs.u_range[0], -_EXTENT), -w_main - 22.0), (w_main + 22.0, min(cs.u_range[1], _EXTENT))]
        spans = [s for s in spans if s[1] - s[0] > 5]
        for side in (0, 1):
            _populate_side(B, cs, side, spans)
        _traffic(B, cs, (max(cs.u_range[0], -60.0), min(cs.u_range[1], 60.0)), -1)
        _median_furniture(B, cs, (max(cs.u_range[0], -_EXTENT), min(cs.u_range[1], _EXTENT)))
    _traffic(B, main, (lo, hi), ego_lane)
    _ensure_classes(B, main, ego_uv, direction)
    # sensor poses: on the road, following the grade
    poses = np.tile(np.eye(4), (n_scans, 1, 1))
    for i, (u, v) in enumerate(ego_uv):
        x, y = main.world(u, v)
        heading = (0.0 if direction > 0 else np.pi) + rng.normal(0, 0.02)
        f = np.array([np.cos(heading), np.sin(heading)])
        left = np.array([-f[1], f[0]])
        pitch = -np.arctan(layout.grade @ f)
        roll = np.arctan(layout.grade @ left)
        poses[i, :3, :3] = rot_z(heading) @ rot_y(pitch) @ rot_x(roll)
        poses[i, :3, 3] = (x, y, layout.plane(x, y) + SENSOR_HEIGHT)
    return Scene(layout, B.prims.finish(), poses, B.objects)
