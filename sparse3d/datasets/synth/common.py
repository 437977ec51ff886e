"""Raw SemanticKITTI ids of the synthetic classes, and small geometry helpers."""
from __future__ import annotations

import numpy as np

from ...utils.geometry import rot_x, rot_y, rot_z  # noqa: F401  (re-exported)

__all__ = ["CAR", "BICYCLE", "MOTORCYCLE", "TRUCK", "OTHER_VEHICLE", "PERSON", "BICYCLIST", "MOTORCYCLIST",
           "ROAD", "PARKING", "SIDEWALK", "OTHER_GROUND", "BUILDING", "FENCE", "VEGETATION", "TRUNK",
           "TERRAIN", "POLE", "TRAFFIC_SIGN", "SYNTH_RAW_IDS", "THING_IDS", "rot_x", "rot_y", "rot_z"]

CAR, BICYCLE, MOTORCYCLE, TRUCK, OTHER_VEHICLE = 10, 11, 15, 18, 20
PERSON, BICYCLIST, MOTORCYCLIST = 30, 31, 32
ROAD, PARKING, SIDEWALK, OTHER_GROUND = 40, 44, 48, 49
BUILDING, FENCE, VEGETATION, TRUNK, TERRAIN, POLE, TRAFFIC_SIGN = 50, 51, 70, 71, 72, 80, 81

#: The 19 raw ids the generator emits (sorted), one per SemanticKITTI evaluation class. Buses,
#: trailers and caravans all get other-vehicle (20); riders are static ids (31, 32), not the
#: moving variants.
SYNTH_RAW_IDS = (CAR, BICYCLE, MOTORCYCLE, TRUCK, OTHER_VEHICLE, PERSON, BICYCLIST, MOTORCYCLIST,
                 ROAD, PARKING, SIDEWALK, OTHER_GROUND, BUILDING, FENCE, VEGETATION, TRUNK, TERRAIN,
                 POLE, TRAFFIC_SIGN)
#: Classes that carry instance ids (upper 16 bits of the label).
THING_IDS = (CAR, BICYCLE, MOTORCYCLE, TRUCK, OTHER_VEHICLE, PERSON, BICYCLIST, MOTORCYCLIST)


