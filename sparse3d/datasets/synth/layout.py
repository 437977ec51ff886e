"""Street layout and the ground height field of a synthetic scene.

The world has a main street along x (centre line y = 0) and cross streets along y. Across a
street (lateral coordinate ``v``) the bands are median | road (lanes, then an optional bike lane)
| parking | verge (terrain) | sidewalk | lot (terrain). The median (other-ground) is a raised
paved strip on the centre line, interrupted by periodic gaps (turning openings) where the road
runs through. Ground height = ``grade`` plane + a band offset: road 0, parking 8 cm (a half-height bay
curb), sidewalk and median the curb height (~15 cm), terrain a rough bumpy surface in [0, 0.35] m. Where streets
overlap, road wins over median over parking over sidewalk over verge/lot. The per-point work
runs in the numba kernels of ``raycast.py``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Tuple

import numpy as np

from .common import OTHER_GROUND, PARKING, ROAD, SIDEWALK, TERRAIN
from .raycast import ground_classify, ground_intersect

__all__ = ["Street", "Layout", "H_MAX"]

H_MAX = 0.35  # upper bound of the ground offset above the grade plane
_PRIO_CLASS = np.array([TERRAIN, TERRAIN, SIDEWALK, PARKING, OTHER_GROUND, ROAD], np.uint16)


@dataclass
class Street:
    """A straight street. ``axis`` 0: along x at ``y = offset``; 1: along y at ``x = offset``.

    The street frame ``(u, v)`` is right-handed: u along the street, v across it; an object with
    yaw ``self.yaw()`` has its local x along u and local y along v. Widths are per side (index 0:
    v < 0, 1: v > 0), except ``half_road`` (half the width of the driving lanes) and ``median``
    (half width of the central median, 0 = none). The median is present where
    ``(u - median_phase) mod median_period < median_duty * median_period``.
    """

    axis: int
    offset: float
    half_road: float
    lane_w: float
    parking: Tuple[float, float]
    verge: Tuple[float, float]
    sidewalk: Tuple[float, float]
    curb: float
    u_range: Tuple[float, float]
    median: float = 0.0
    median_period: float = 1.0
    median_duty: float = 0.0
    median_phase: float = 0.0
    bike: Tuple[float, float] = (0.0, 0.0)

    @property
    def lanes(self) -> int:
        return int(round(2 * self.half_road / self.lane_w))

    def lane_v(self, k: int) -> float:
        """Centre ``v`` of driving lane ``k`` (0 .. lanes-1, from the v < 0 side)."""
        c = (k + 0.5 - self.lanes / 2) * self.lane_w
        return c + np.sign(c) * self.median

    def median_at(self, u) -> np.ndarray:
        """Whether the median is present at ``u`` (bool, shape of ``u``)."""
        u = np.asarray(u, np.float64)
        if self.median <= 0:
            return np.zeros(u.shape, bool)
        return np.mod(u - self.median_phase, self.median_period) < self.median_duty * self.median_period

    def local(self, x, y):
        """World xy -> (u along, v across)."""
        return (x, y - self.offset) if self.axis == 0 else (y, self.offset - x)

    def world(self, u, v):
        """(u, v) -> world (x, y)."""
        return (u, v + self.offset) if self.axis == 0 else (self.offset - v, u)

    def edges(self, side: int) -> Tuple[float, float, float, float]:
        """|v| of the outer edges of road (incl. median and bike lane), parking, verge and sidewalk
        on ``side`` (0 or 1)."""
        e0 = self.median + self.half_road + self.bike[side]
        e1 = e0 + self.parking[side]
        e2 = e1 + self.verge[side]
        return e0, e1, e2, e2 + self.sidewalk[side]

    def yaw(self) -> float:
        return 0.0 if self.axis == 0 else np.pi / 2


class Layout:
    """Streets + ground of one scene (one sequence).

    Args:
        streets: main street first.
        grade: ``(gx, gy)`` slope of the ground plane ``z = gx*x + gy*y``.
        rough: 8 random phases of the terrain bumps.
    """

    def __init__(self, streets: List[Street], grade: Tuple[float, float], rough: np.ndarray) -> None:
        self.streets = streets
        self.grade = np.asarray(grade, dtype=np.float64)
        self._args = (
            np.array([s.axis for s in streets], np.int64),
            np.array([s.offset for s in streets], np.float64),
            np.array([s.u_range for s in streets], np.float64).reshape(-1, 2),
            np.array([[s.edges(0), s.edges(1)] for s in streets], np.float64).reshape(-1, 2, 4),
            np.array([s.curb for s in streets], np.float64),
            np.array([[s.median, s.median_period, s.median_duty, s.median_phase] for s in streets],
                     np.float64).reshape(-1, 4),
            np.asarray(rough, dtype=np.float64),
        )

    def plane(self, x, y):
        return self.grade[0] * x + self.grade[1] * y

    def classify(self, x, y):
        """Ground class (raw id) ``[N]`` uint16 and offset above the grade plane ``[N]`` at world x, y."""
        x = np.ascontiguousarray(x, dtype=np.float64).reshape(-1)
        y = np.ascontiguousarray(y, dtype=np.float64).reshape(-1)
        prio, off = ground_classify(x, y, *self._args)
        return _PRIO_CLASS[prio], off

    def height(self, x, y):
        """Ground z at world ``x, y``."""
        return self.plane(np.asarray(x, np.float64).reshape(-1), np.asarray(y, np.float64).reshape(-1)) \
            + self.classify(x, y)[1]

    def intersect(self, origin: np.ndarray, dirs: np.ndarray, max_range: float, step: float = 0.25,
                  max_steps: int = 24, bisect: int = 6):
        """Ray / ground hits: ``t [R]`` (inf: no hit within ``max_range``) and raw ids ``[R]`` (0 on miss).

        Args:
            origin: ``[3]``; dirs: ``[R, 3]`` unit directions (world).
        """
        t, prio = ground_intersect(np.asarray(origin, np.float64), np.ascontiguousarray(dirs, np.float64),
                                   self.grade, *self._args, float(max_range), float(step), int(max_steps), int(bisect))
        cls = np.where(np.isfinite(t), _PRIO_CLASS[prio], 0).astype(np.uint16)
        return t, cls
