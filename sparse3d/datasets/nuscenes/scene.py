"""Procedural driving scene: ego motion, sensor rig and annotated agents of the 10 detection classes.

All motion is straight and at constant speed, so the devkit's ``box_velocity`` (finite differences of the
annotations) recovers the true velocity exactly. Time ``t`` is in seconds from the first keyframe.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .common import CAMERAS, rng_for, rot_x, rot_y, rot_z
from .town import CROSSING, WALKWAY, Town

__all__ = ["Scene", "Rig", "make_rig", "make_scene", "KEYFRAME_DT", "SWEEP_DT", "CAMERA_DELAY", "PART_PROFILES"]

KEYFRAME_DT = 0.5   # s between keyframes (2 Hz, as nuScenes)
SWEEP_DT = 0.05     # s between LiDAR sweeps (20 Hz)
# camera exposure delay after the LiDAR keyframe timestamp (s), roughly where the spinning LiDAR crosses each camera
CAMERA_DELAY = {"CAM_FRONT": 0.012, "CAM_FRONT_RIGHT": 0.020, "CAM_BACK_RIGHT": 0.029, "CAM_BACK": 0.037,
                "CAM_BACK_LEFT": 0.045, "CAM_FRONT_LEFT": 0.004}
# nominal camera mounts: (x, y, z) in the ego frame, yaw (deg), focal length as a fraction of the image width
_CAM_MOUNT = {"CAM_FRONT": ((1.70, 0.00, 1.51), 0.0, 0.7875),
              "CAM_FRONT_RIGHT": ((1.55, -0.49, 1.49), -55.0, 0.7875), "CAM_BACK_RIGHT": ((1.05, -0.48, 1.50), -110.0, 0.7875), "CAM_BACK": ((0.03, 0.00, 1.57), 180.0, 0.5),
              "CAM_BACK_LEFT": ((1.04, 0.48, 1.49), 110.0, 0.7875), "CAM_FRONT_LEFT": ((1.52, 0.49, 1.51), 55.0, 0.7875)}
# camera axes (x right, y down, z forward) expressed in the ego frame for a camera looking along ego +x
_CAM_BASE = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
# virtual radars (only used to fill num_radar_pts): (x, y, z) and yaw (deg)
_RADARS = (((3.4, 0.0, 0.5), 0.0), ((3.0, 0.6, 0.5), 90.0), ((3.0, -0.6, 0.5), -90.0),
           ((-0.5, 0.6, 0.5), 150.0), ((-0.5, -0.6, 0.5), -150.0))

# class -> list of (category, probability, (w, l, h))
_SHAPES = {
    "car": [("vehicle.car", 1.0, (1.95, 4.6, 1.70))],
    "truck": [("vehicle.truck", 1.0, (2.5, 7.0, 3.0))],
    "bus": [("vehicle.bus.rigid", 0.85, (2.9, 11.0, 3.4)), ("vehicle.bus.bendy", 0.15, (2.9, 16.0, 3.3))],
    "trailer": [("vehicle.trailer", 1.0, (2.9, 10.0, 3.8))],
    "construction_vehicle": [("vehicle.construction", 1.0, (2.8, 6.5, 3.2))],
    "pedestrian": [("human.pedestrian.adult", 0.8, (0.65, 0.7, 1.75)), ("human.pedestrian.child", 0.1,
                   (0.5, 0.5, 1.2)), ("human.pedestrian.construction_worker", 0.1, (0.7, 0.75, 1.8))],
    "motorcycle": [("vehicle.motorcycle", 1.0, (0.8, 2.1, 1.5))],
    "bicycle": [("vehicle.bicycle", 1.0, (0.6, 1.75, 1.7))],
    "traffic_cone": [("movable_object.trafficcone", 1.0, (0.4, 0.4, 1.0))],
    "barrier": [("movable_object.barrier", 1.0, (2.5, 0.5, 1.0))],
}
# class -> (front fraction of the length, front height as a fraction of the full height): vehicles are a taller
# body plus a lower front part (a car's bonnet, a truck's cab, a trailer's drawbar, a bike's front wheel), so the
# LiDAR and the cameras can tell front from back; annotation boxes keep the full extent
PART_PROFILES = {"car": (0.26, 0.55), "truck": (0.28, 0.72), "bus": (0.10, 0.82), "trailer": (0.12, 0.35),
                 "construction_vehicle": (0.35, 0.62), "motorcycle": (0.32, 0.6), "bicycle": (0.32, 0.62)}
EGO_WL = (1.9, 4.6)
EGO_CENTER = 1.3  # the ego body centre lies this far ahead of the ego frame origin (rear axle)


@dataclass
class Rig:
    """Sensor mounts of one scene (one log): ``[4, 4]`` ego-from-sensor matrices and camera intrinsics."""
    lidar: np.ndarray
    cameras: dict
    intrinsics: dict
    image_size: tuple
    radars: list
    euler: dict = field(default_factory=dict)  # channel -> (yaw, pitch, roll) rad, translation (for tests)


def make_rig(seed: int, scene_index: int, image_size=(400, 225)) -> Rig:
    """Nominal nuScenes-like mounts with small per-log perturbations (<= 1 deg, <= 2 cm, <= 1 px)."""
    rng = rng_for(seed, "rig", scene_index)
    W, H = image_size
    lidar = np.eye(4)
    lidar_yaw = -np.pi / 2 + np.deg2rad(rng.uniform(-0.3, 0.3))  # nuScenes LIDAR_TOP: x right, y forward
    lidar[:3, :3] = rot_z(lidar_yaw)
    lidar[:3, 3] = np.array([0.943, 0.0, 1.84]) + rng.uniform(-0.02, 0.02, 3)
    cams, Ks, euler = {}, {}, {"LIDAR_TOP": ((lidar_yaw, 0.0, 0.0), lidar[:3, 3].copy())}
    for ch in CAMERAS:
        t, yaw, f = _CAM_MOUNT[ch]
        yaw = np.deg2rad(yaw + rng.uniform(-1, 1))
        pitch, roll = np.deg2rad(rng.uniform(-1, 1)), np.deg2rad(rng.uniform(-0.5, 0.5))
        m = np.eye(4)
        m[:3, :3] = rot_z(yaw) @ rot_y(pitch) @ rot_x(roll) @ _CAM_BASE
        m[:3, 3] = np.array(t) + rng.uniform(-0.02, 0.02, 3)
        cams[ch] = m
        euler[ch] = ((yaw, pitch, roll), m[:3, 3].copy())
        fx = f * W
        Ks[ch] = np.array([[fx, 0.0, W / 2 + rng.uniform(-1, 1)], [0.0, fx, H / 2 + rng.uniform(-1, 1)],
                           [0.0, 0.0, 1.0]])
    radars = []
    for t, yaw in _RADARS:
        m = np.eye(4)
        m[:3, :3] = rot_z(np.deg2rad(yaw))
        m[:3, 3] = t
        radars.append(m)
    return Rig(lidar, cams, Ks, (W, H), radars, euler)


class Scene:
    """Ego trajectory, rig and agents of one scene.

    Agents are stored as arrays: ``xy0 [A, 2]`` (position at t=0), ``yaw [A]``, ``speed [A]`` (m/s along the
    heading), ``wlh [A, 3]``, plus lists ``category``, ``det_class``, ``attribute``.
    """

    def __init__(self, town: Town, rig: Rig, index: int, n_keyframes: int, n_sweeps: int):
        self.town, self.rig, self.index = town, rig, index
        self.n_keyframes, self.n_sweeps = n_keyframes, n_sweeps
        self.ego_xy0 = np.zeros(2)
        self.ego_yaw = 0.0
        self.ego_speed = 0.0
        self.xy0 = np.zeros((0, 2))
        self.yaw = np.zeros(0)
        self.speed = np.zeros(0)
        self.wlh = np.zeros((0, 3))
        self.category: list[str] = []
        self.det_class: list[str] = []
        self.attribute: list[str | None] = []

    # ------------------------------------------------------------------ kinematics
    @property
    def keyframe_times(self) -> np.ndarray:
        return np.arange(self.n_keyframes) * KEYFRAME_DT

    def check_times(self) -> np.ndarray:
        t0 = -SWEEP_DT * self.n_sweeps - 0.05
        return np.arange(t0, (self.n_keyframes - 1) * KEYFRAME_DT + 0.1, 0.1)

    def ego_xy(self, t) -> np.ndarray:
        t = np.asarray(t, np.float64)
        d = np.array([np.cos(self.ego_yaw), np.sin(self.ego_yaw)])
        return self.ego_xy0 + self.ego_speed * t[..., None] * d

    def ego_pose(self, t: float) -> np.ndarray:
        """``[4, 4]`` global-from-ego at time ``t`` (z = 0, yaw only, as nuScenes ego poses)."""
        m = np.eye(4)
        m[:3, :3] = rot_z(self.ego_yaw)
        m[:2, 3] = self.ego_xy(t)
        return m

    def agent_xy(self, t) -> np.ndarray:
        """``[A, 2]`` agent centres at time ``t`` (or ``[A, T, 2]`` for an array of times)."""
        t = np.asarray(t, np.float64)
        d = np.stack([np.cos(self.yaw), np.sin(self.yaw)], 1) * self.speed[:, None]
        if t.ndim == 0:
            return self.xy0 + d * t
        return self.xy0[:, None] + d[:, None] * t[None, :, None]

    def agent_boxes(self, t: float) -> np.ndarray:
        """``[A, 7]`` float64 global boxes (cx, cy, cz, l, w, h, yaw) at time ``t``; boxes stand on z = 0."""
        xy = self.agent_xy(t)
        return np.concatenate([xy, self.wlh[:, 2:3] / 2, self.wlh[:, [1, 0, 2]], self.yaw[:, None]], 1)

    def agent_shapes(self, t: float, margin: float = 0.05) -> np.ndarray:
        """``[A, 7]`` solid shapes that the sensors see: the annotation boxes shrunk by ``margin`` on the sides and
        top (annotated boxes enclose their object, so noisy LiDAR hits still fall inside them)."""
        b = self.agent_boxes(t)
        b[:, 3:5] = np.maximum(b[:, 3:5] - 2 * margin, 0.05)
        b[:, 5] = np.maximum(b[:, 5] - margin, 0.05)
        b[:, 2] = b[:, 5] / 2
        return b

    def agent_parts(self, t: float, margin: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
        """Solid parts the sensors see: ``[P, 7]`` float64 boxes (cx, cy, cz, l, w, h, yaw) and ``[P]`` int64 owner
        agent, grouped by agent in order. Agents of :data:`PART_PROFILES` classes are a body box plus a lower front
        box (together exactly :meth:`agent_shapes`' extent); the others are their :meth:`agent_shapes` box."""
        b = self.agent_shapes(t, margin)
        boxes, owner = [], []
        for a in range(len(b)):
            prof = PART_PROFILES.get(self.det_class[a])
            if prof is None:
                boxes.append(b[a])
                owner.append(a)
                continue
            f, fh = prof
            l, h = b[a, 3], b[a, 5]
            u = np.array([np.cos(b[a, 6]), np.sin(b[a, 6])])
            body, front = b[a].copy(), b[a].copy()
            body[3] = l * (1.0 - f)
            body[:2] = b[a, :2] - u * (l * f / 2)
            front[3] = l * f
            front[:2] = b[a, :2] + u * (l * (1.0 - f) / 2)
            front[5] = h * fh
            front[2] = front[5] / 2
            boxes += [body, front]
            owner += [a, a]
        return np.array(boxes, np.float64).reshape(-1, 7), np.array(owner, np.int64)

    def velocities(self) -> np.ndarray:
        return np.stack([np.cos(self.yaw), np.sin(self.yaw)], 1) * self.speed[:, None]

    # ------------------------------------------------------------------ placement
    def _collides(self, xy, yaw, l, w, speed, margin) -> bool:
        ts = self.check_times()
        d = np.array([np.cos(yaw), np.sin(yaw)])
        c = xy[None] + speed * ts[:, None] * d[None]                         # [T, 2]
        ego_c = self.ego_xy(ts) + EGO_CENTER * np.array([np.cos(self.ego_yaw), np.sin(self.ego_yaw)])
        others_c = np.concatenate([ego_c[None], self.agent_xy(ts)], 0) if len(self.yaw) else ego_c[None]  # [A,T,2]
        oyaw = np.concatenate([[self.ego_yaw], self.yaw])
        ol = np.concatenate([[EGO_WL[1]], self.wlh[:, 1]])
        ow = np.concatenate([[EGO_WL[0]], self.wlh[:, 0]])
        u1 = d
        v1 = np.array([-d[1], d[0]])
        u2 = np.stack([np.cos(oyaw), np.sin(oyaw)], 1)                         # [A, 2]
        v2 = np.stack([-u2[:, 1], u2[:, 0]], 1)
        delta = others_c - c[None]                                             # [A, T, 2]
        sep = np.zeros(delta.shape[:2], bool)
        for ax in (np.broadcast_to(u1, u2.shape), np.broadcast_to(v1, u2.shape), u2, v2):
            r1 = l / 2 * np.abs(ax @ u1) + w / 2 * np.abs(ax @ v1)
            r2 = ol / 2 * np.abs(np.sum(ax * u2, 1)) + ow / 2 * np.abs(np.sum(ax * v2, 1))
            proj = np.abs(np.einsum("atk,ak->at", delta, ax))
            sep |= proj > (r1 + r2 + margin)[:, None]
        return bool((~sep).any())

    def add(self, det_class, category, wlh, xy, yaw, speed, attribute, margin=0.4) -> bool:
        """Add an agent unless it would overlap the ego or another agent at any time of the scene, or hide behind
        a building all along (seen from the ego at the middle of the scene)."""
        t_mid = (self.n_keyframes - 1) * KEYFRAME_DT / 2
        mid = np.asarray(xy, float) + speed * t_mid * np.array([np.cos(yaw), np.sin(yaw)])
        if not self.town.line_of_sight(self.ego_xy(t_mid), mid):
            return False
        if self._collides(np.asarray(xy, float), yaw, wlh[1], wlh[0], speed, margin):
            return False
        self.xy0 = np.concatenate([self.xy0, np.asarray(xy, float)[None]])
        self.yaw = np.append(self.yaw, yaw)
        self.speed = np.append(self.speed, speed)
        self.wlh = np.concatenate([self.wlh, np.asarray(wlh, float)[None]])
        self.category.append(category)
        self.det_class.append(det_class)
        self.attribute.append(attribute)
        return True


def _road_band(town: Town, xy) -> bool:
    """True where a point lies on some carriageway."""
    return any(abs(xy[1 - r.axis] - r.c) < r.hw for r in town.roads)


def _shape(rng, det_class):
    opts = _SHAPES[det_class]
    k = rng.choice(len(opts), p=np.array([o[1] for o in opts]))
    cat, _, wlh = opts[k]
    return cat, np.array(wlh) * rng.uniform(0.92, 1.08, 3)


def _near_road_point(town: Town, rng, center, radius):
    """Random road, and an along-road coordinate within ``radius`` of ``center``; None if no road is near."""
    roads = [(i, r) for i, r in enumerate(town.roads) if abs(center[1 - r.axis] - r.c) < radius]
    if not roads:
        return None
    i, r = roads[int(rng.integers(len(roads)))]
    half = np.sqrt(max(radius ** 2 - (center[1 - r.axis] - r.c) ** 2, 1.0))
    return i, r, float(center[r.axis] + rng.uniform(-half, half))


def _point(road, along, across):
    return np.array([along, road.c + across]) if road.axis == 0 else np.array([road.c + across, along])


def _heading(road, direction):
    base = 0.0 if road.axis == 0 else np.pi / 2
    return base + (0.0 if direction > 0 else np.pi)


def _near_intersection(town: Town, road, along, extra):
    return any(abs(along - p.c) < p.hw + CROSSING + 1.0 + extra for p in town.perpendicular(road))


def _try(scene: Scene, rng, kind: str, det_class: str, center, radius) -> bool:
    town = scene.town
    cat, wlh = _shape(rng, det_class)
    w, l, h = wlh
    pick = _near_road_point(town, rng, center, radius)
    if pick is None:
        return False
    ri, road, along = pick
    if kind == "lane":  # moving (or briefly stopped) traffic in a lane
        lanes = [ln for ln in town.lanes if ln[0] == ri]
        _, off, direction = lanes[int(rng.integers(len(lanes)))]
        if det_class == "bicycle":
            off = np.sign(off) * (road.hw - 0.8)
        vmax = {"car": 13, "truck": 10, "bus": 9, "trailer": 8, "construction_vehicle": 5, "motorcycle": 13,
                "bicycle": 6}[det_class]
        stopped = rng.random() < 0.15 and det_class not in ("bicycle",)
        speed = 0.0 if stopped else float(rng.uniform(min(3.0, vmax / 2), vmax))
        if det_class in ("bicycle", "motorcycle"):
            attr = "cycle.with_rider"
        else:
            attr = "vehicle.stopped" if stopped else "vehicle.moving"
        return scene.add(det_class, cat, wlh, _point(road, along, off), _heading(road, direction), speed, attr,
                         margin=1.5)
    if kind == "curb":  # parked at the curb of the outer lane
        side = 1 if rng.random() < 0.5 else -1
        if _near_intersection(town, road, along, l / 2):
            return False
        direction = -town.drive_side * side
        if det_class in ("bicycle", "motorcycle"):
            wlh[2] *= 0.75
            attr = "cycle.without_rider"
        else:
            attr = "vehicle.parked"
        xy = _point(road, along, side * (road.hw - w / 2 - 0.25))
        return scene.add(det_class, cat, wlh, xy, _heading(road, direction), 0.0, attr, margin=0.3)
    if kind == "carpark":
        near = [cp for cp in town.carparks if np.hypot(*(0.5 * (cp[:2] + cp[2:]) - center)) < radius]
        if not near:
            return False
        cp = near[int(rng.integers(len(near)))]
        yaw = float(rng.choice([0.0, np.pi / 2, np.pi, -np.pi / 2]))
        ext = max(l, w) / 2 + 0.5
        if cp[2] - cp[0] < 2 * ext or cp[3] - cp[1] < 2 * ext:
            return False
        xy = np.array([rng.uniform(cp[0] + ext, cp[2] - ext), rng.uniform(cp[1] + ext, cp[3] - ext)])
        attr = "cycle.without_rider" if det_class in ("bicycle", "motorcycle") else "vehicle.parked"
        return scene.add(det_class, cat, wlh, xy, yaw, 0.0, attr, margin=0.4)
    if kind == "walkway":  # pedestrians walking or standing, parked bicycles
        side = 1 if rng.random() < 0.5 else -1
        if det_class == "bicycle":
            across = side * (road.hw + WALKWAY - 0.6)
            xy = _point(road, along, across)
            yaw = _heading(road, 1) + float(rng.choice([0.0, np.pi / 2, np.pi]))
            wlh[2] *= 0.65
            ok = not _road_band(town, xy)
            return ok and scene.add(det_class, cat, wlh, xy, yaw, 0.0, "cycle.without_rider", margin=0.2)
        across = side * (road.hw + float(rng.uniform(0.6, WALKWAY - 0.6)))
        xy = _point(road, along, across)
        moving = rng.random() < 0.7
        speed = float(rng.uniform(0.8, 1.7)) if moving else 0.0
        yaw = _heading(road, 1 if rng.random() < 0.5 else -1) if moving else float(rng.uniform(-np.pi, np.pi))
        ts = scene.check_times()
        path = xy[None] + speed * ts[:, None] * np.array([np.cos(yaw), np.sin(yaw)])[None]
        if any(_road_band(town, p) for p in path):
            return False
        return scene.add(det_class, cat, wlh, xy, yaw, speed, "pedestrian.moving" if moving else
                         "pedestrian.standing", margin=0.2)
    if kind == "crossing":  # pedestrians on a zebra crossing, walking across the road
        perp = town.perpendicular(road)
        p = perp[int(np.argmin([abs(along - q.c) for q in perp]))]
        arm = 1 if rng.random() < 0.5 else -1
        a = p.c + arm * (p.hw + 0.5 + CROSSING / 2)
        if abs(a - along) > 25:
            return False
        across0 = float(rng.uniform(-road.hw, road.hw))
        direction = 1 if rng.random() < 0.5 else -1
        yaw = _heading(road, 1) + direction * np.pi / 2
        xy = _point(road, a + rng.uniform(-1.0, 1.0), across0)
        return scene.add(det_class, cat, wlh, xy, yaw, float(rng.uniform(0.9, 1.5)), "pedestrian.moving",
                         margin=0.2)
    if kind == "row":  # traffic cones / barriers in a row along the curb or a lane divider
        if _near_intersection(town, road, along, 8.0):
            return False
        side = 1 if rng.random() < 0.5 else -1
        across = side * (road.hw - 0.5) if rng.random() < 0.6 else side * road.hw / 2
        step = 2.6 if det_class == "barrier" else float(rng.uniform(2.0, 3.5))
        yaw = _heading(road, 1) + (np.pi / 2 if det_class == "barrier" else float(rng.uniform(0, np.pi)))
        placed = 0
        for k in range(int(rng.integers(3, 7))):
            cat, wlh = _shape(rng, det_class)
            placed += scene.add(det_class, cat, wlh, _point(road, along + k * step, across), yaw, 0.0, None,
                                margin=0.1)
        return placed > 0
    raise ValueError(f"unknown placement kind {kind!r}")


# kinds that can place each class
_KINDS = {"car": ("lane", "lane", "curb", "carpark"), "truck": ("lane", "curb"), "bus": ("lane",),
          "trailer": ("curb", "lane"), "construction_vehicle": ("curb", "lane"), "pedestrian": ("walkway",
          "walkway", "walkway", "crossing"), "motorcycle": ("lane", "curb"), "bicycle": ("lane", "walkway"),
          "traffic_cone": ("row",), "barrier": ("row",)}
_FILL_WEIGHTS = {"car": 0.44, "truck": 0.07, "bus": 0.04, "trailer": 0.03, "construction_vehicle": 0.03,
                 "pedestrian": 0.25, "motorcycle": 0.04, "bicycle": 0.04, "traffic_cone": 0.03, "barrier": 0.03}


def make_scene(town: Town, rig: Rig, seed: int, index: int, n_keyframes: int = 10, n_sweeps: int = 9,
               n_objects: int = 40, min_per_class: int = 1) -> Scene:
    """Ego in a lane of a random road near the middle of the town, then agents placed around its path:
    ``min_per_class`` of each detection class within 30 m, then random ones up to ``n_objects`` within 55 m."""
    rng = rng_for(seed, "scene", index)
    sc = Scene(town, rig, index, n_keyframes, n_sweeps)
    s = town.size
    central = [i for i, r in enumerate(town.roads) if 0.3 * s < r.c < 0.7 * s] or list(range(len(town.roads)))
    ri = central[int(rng.integers(len(central)))]
    road = town.roads[ri]
    lanes = [ln for ln in town.lanes if ln[0] == ri]
    if rng.random() < 0.7:
        lanes = [ln for ln in lanes if abs(ln[1]) < road.hw / 2]
    _, off, direction = lanes[int(rng.integers(len(lanes)))]
    sc.ego_speed = 0.0 if rng.random() < 0.2 else float(rng.uniform(3, 10))
    sc.ego_yaw = _heading(road, direction)
    along = float(rng.uniform(0.35 * s, 0.65 * s))
    sc.ego_xy0 = _point(road, along, off)
    center = sc.ego_xy((n_keyframes - 1) * KEYFRAME_DT / 2)
    for cls in rng.permutation(list(_SHAPES)):
        got, tries = 0, 0
        while got < min_per_class and tries < 300:
            tries += 1
            kinds = _KINDS[cls]
            got += _try(sc, rng, kinds[int(rng.integers(len(kinds)))], cls, center, 30.0)
    classes = list(_FILL_WEIGHTS)
    p = np.array([_FILL_WEIGHTS[c] for c in classes])
    tries = 0
    while len(sc.yaw) < n_objects and tries < 40 * n_objects:
        tries += 1
        cls = classes[int(rng.choice(len(classes), p=p / p.sum()))]
        kinds = _KINDS[cls]
        _try(sc, rng, kinds[int(rng.integers(len(kinds)))], cls, center, 55.0)
    return sc
