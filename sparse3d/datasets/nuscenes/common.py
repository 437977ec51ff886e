"""Constants and small helpers shared by the synthetic nuScenes writer and the devkit loader.

Category order and names follow nuScenes-lidarseg (``category.json`` with ``index`` 0..31), the 10 detection
classes follow ``nuscenes.eval.detection`` and the 8 attributes / 4 visibility levels follow nuScenes v1.0.
"""
from __future__ import annotations

import hashlib

import numpy as np

from ...utils.geometry import rot_x, rot_y, rot_z  # noqa: F401  (re-exported)

__all__ = [
    "CATEGORIES", "CATEGORY_INDEX", "DETECTION_CLASSES", "ATTRIBUTES", "VISIBILITY_LEVELS", "CAMERAS",
    "LIDAR", "TABLES", "MAP_LAYERS", "MAP_CLASSES", "LOCATIONS", "CLASS_COLORS", "SHADES",
    "make_token", "yaw_quaternion", "rot_z", "rot_y", "rot_x", "transform", "rng_for",
]

# nuScenes-lidarseg general classes, in index order (category.json "index").
CATEGORIES = (
    "noise", "animal", "human.pedestrian.adult", "human.pedestrian.child",
    "human.pedestrian.construction_worker", "human.pedestrian.personal_mobility",
    "human.pedestrian.police_officer", "human.pedestrian.stroller", "human.pedestrian.wheelchair",
    "movable_object.barrier", "movable_object.debris", "movable_object.pushable_pullable",
    "movable_object.trafficcone", "static_object.bicycle_rack", "vehicle.bicycle", "vehicle.bus.bendy",
    "vehicle.bus.rigid", "vehicle.car", "vehicle.construction", "vehicle.emergency.ambulance",
    "vehicle.emergency.police", "vehicle.motorcycle", "vehicle.trailer", "vehicle.truck",
    "flat.driveable_surface", "flat.other", "flat.sidewalk", "flat.terrain", "static.manmade",
    "static.other", "static.vegetation", "vehicle.ego",
)
CATEGORY_INDEX = {name: i for i, name in enumerate(CATEGORIES)}

DETECTION_CLASSES = ("car", "truck", "bus", "trailer", "construction_vehicle", "pedestrian", "motorcycle",
                     "bicycle", "traffic_cone", "barrier")

ATTRIBUTES = ("cycle.with_rider", "cycle.without_rider", "pedestrian.moving", "pedestrian.sitting_lying_down",
              "pedestrian.standing", "vehicle.moving", "vehicle.parked", "vehicle.stopped")

# visibility token -> level (fraction of the object visible, in percent)
VISIBILITY_LEVELS = {"1": "v0-40", "2": "v40-60", "3": "v60-80", "4": "v80-100"}

CAMERAS = ("CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_BACK_RIGHT", "CAM_BACK", "CAM_BACK_LEFT", "CAM_FRONT_LEFT")
LIDAR = "LIDAR_TOP"

TABLES = ("attribute", "calibrated_sensor", "category", "ego_pose", "instance", "log", "map", "sample",
          "sample_annotation", "sample_data", "scene", "sensor", "visibility")

LOCATIONS = ("singapore-onenorth", "singapore-hollandvillage", "singapore-queenstown", "boston-seaport")

# every non-geometric layer written to maps/expansion/<location>.json
MAP_LAYERS = ("drivable_area", "road_segment", "road_block", "lane", "ped_crossing", "walkway", "stop_line",
              "carpark_area", "road_divider", "lane_divider", "traffic_light")
# the BEV map-segmentation classes of BEVFusion ("divider" = road_divider + lane_divider)
MAP_CLASSES = ("drivable_area", "ped_crossing", "walkway", "stop_line", "carpark_area", "divider")

# flat RGB colour of each detection class in the rendered camera images (well separated from the background)
CLASS_COLORS = {
    "car": (30, 80, 255), "truck": (220, 30, 30), "bus": (255, 215, 0), "trailer": (130, 65, 20),
    "construction_vehicle": (255, 130, 0), "pedestrian": (255, 0, 200), "motorcycle": (0, 210, 210),
    "bicycle": (130, 0, 255), "traffic_cone": (255, 150, 200), "barrier": (190, 255, 60),
}
# face shading of a rendered box: top, front (+x of the box), back, left/right sides
SHADES = {"top": 1.0, "front": 0.9, "back": 0.6, "side": 0.75}


def make_token(seed: int, *key) -> str:
    """Deterministic 32-hex-digit nuScenes token for ``key`` under ``seed``."""
    return hashlib.md5(("%d|" % seed + "|".join(str(k) for k in key)).encode()).hexdigest()


def rng_for(seed: int, *key) -> np.random.Generator:
    """A numpy Generator seeded from ``(seed, *key)``, independent of call order."""
    return np.random.default_rng(int(make_token(seed, "rng", *key)[:16], 16))


def yaw_quaternion(yaw: float) -> list[float]:
    """nuScenes quaternion ``[w, x, y, z]`` of a rotation by ``yaw`` (rad) about +z."""
    return [float(np.cos(yaw / 2)), 0.0, 0.0, float(np.sin(yaw / 2))]




def transform(rotation: np.ndarray, translation) -> np.ndarray:
    """``[4, 4]`` float64 homogeneous matrix from a ``[3, 3]`` rotation and a translation."""
    m = np.eye(4)
    m[:3, :3] = rotation
    m[:3, 3] = translation
    return m
