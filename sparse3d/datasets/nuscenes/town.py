"""Procedural town for one nuScenes location: a grid of 4-lane roads with walkways, zebra crossings, stop
lines, lane/road dividers, car parks, buildings and trees.

The same geometry feeds every output of the synthetic writer: the map expansion JSON (polygons and lines the
devkit's ``NuScenesMap`` rasterizes), the map-table mask PNG, the ground classes under LiDAR hits (lidarseg)
and the ground texture of the camera images. World coordinates are metres in ``[0, size]^2`` (the canvas of the
map expansion), ground at ``z = 0``.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .common import CATEGORY_INDEX, make_token, rng_for

__all__ = ["Road", "Town", "GROUND_LABELS", "GROUND_COLORS", "HALF_WIDTH", "WALKWAY", "LANE"]

LANE = 3.5          # lane width (m)
HALF_WIDTH = 2 * LANE  # 4-lane roads
WALKWAY = 4.0       # walkway width (m)
CROSSING = 3.5      # zebra crossing length along the road (m)
RASTER_RES = 0.1    # ground raster resolution (m), also the map PNG resolution

# ground raster classes: 0 terrain, 1 road, 2 walkway, 3 white road marking, 4 car park
GROUND_LABELS = np.array([CATEGORY_INDEX["flat.terrain"], CATEGORY_INDEX["flat.driveable_surface"],
                          CATEGORY_INDEX["flat.sidewalk"], CATEGORY_INDEX["flat.driveable_surface"],
                          CATEGORY_INDEX["flat.driveable_surface"]], np.uint8)
GROUND_COLORS = np.array([(96, 128, 64), (78, 78, 82), (165, 160, 150), (235, 235, 235), (104, 104, 110)],
                         np.float32)
GROUND_INTENSITY = np.array([6.0, 10.0, 20.0, 60.0, 12.0], np.float32)


@dataclass(frozen=True)
class Road:
    """A straight road spanning the whole map: ``axis`` 0 runs along x at ``y = c``, axis 1 along y at ``x = c``."""
    axis: int
    c: float
    hw: float = HALF_WIDTH


def _rect(axis: int, a0: float, a1: float, b0: float, b1: float) -> np.ndarray:
    """Counter-clockwise ``[4, 2]`` rectangle with ``along`` range [a0, a1] and ``across`` range [b0, b1]."""
    if axis == 0:
        return np.array([[a0, b0], [a1, b0], [a1, b1], [a0, b1]], np.float64)
    return np.array([[b1, a0], [b1, a1], [b0, a1], [b0, a0]], np.float64)


def _seg(axis: int, a0: float, a1: float, b: float) -> np.ndarray:
    return np.array([[a0, b], [a1, b]] if axis == 0 else [[b, a0], [b, a1]], np.float64)


class Town:
    """Roads, map layers and static boxes of one location, generated from ``(seed, location)``.

    Attributes:
        roads: list of :class:`Road`.
        drive_side: +1 right-hand traffic (boston), -1 left-hand (singapore).
        polygons: layer name -> list of ``[K, 2]`` float64 polygons (global x, y).
        lines: ``road_divider`` / ``lane_divider`` -> list of ``[2, 2]`` straight segments.
        stop_line_crossing: per stop line, the index of the ped crossing it guards.
        lanes: list of ``(road_index, across_offset, direction)`` (direction +-1 along the road axis).
        carparks: list of ``[x0, y0, x1, y1]``.
        static_boxes: ``[S, 7]`` float64 (cx, cy, cz, l, w, h, yaw) of buildings and trees.
        static_labels: ``[S]`` uint8 lidarseg index; static_colors: ``[S, 3]`` uint8.
    """

    def __init__(self, location: str, seed: int, size: float = 400.0):
        self.location, self.seed, self.size = location, seed, float(size)
        self.drive_side = 1 if location.startswith("boston") else -1
        rng = rng_for(seed, "town", location)
        coords = []
        for _ in range(2):
            c, cs = float(rng.uniform(70, 90)), []
            while c < size - 70:
                cs.append(round(c, 1))
                c += float(rng.uniform(95, 125))
            coords.append(cs)
        self.roads = [Road(0, y) for y in coords[1]] + [Road(1, x) for x in coords[0]]
        self.polygons = {k: [] for k in ("drivable_area", "road_segment", "road_block", "lane", "ped_crossing",
                                         "walkway", "stop_line", "carpark_area")}
        self.intersection_flags: list[bool] = []
        self.lines = {"road_divider": [], "lane_divider": []}
        self.stop_line_crossing: list[int] = []
        self.lanes = []
        self.carparks: list[np.ndarray] = []
        self._build_roads()
        self._build_blocks(rng)
        self._raster = None

    # ------------------------------------------------------------------ roads
    def perpendicular(self, road: Road) -> list[Road]:
        return [r for r in self.roads if r.axis != road.axis]

    def _build_roads(self) -> None:
        s, P = self.size, self.polygons
        for ri, road in enumerate(self.roads):
            c, hw, ax = road.c, road.hw, road.axis
            P["drivable_area"].append(_rect(ax, 0.0, s, c - hw, c + hw))
            for off in (-0.75 * hw, -0.25 * hw, 0.25 * hw, 0.75 * hw):
                self.lanes.append((ri, off, -self.drive_side * int(np.sign(off))))
            perp = sorted(self.perpendicular(road), key=lambda r: r.c)
            cuts = [(0.0, None)] + [(p.c, p) for p in perp] + [(s, None)]
            for (a_prev, p_prev), (a_next, p_next) in zip(cuts[:-1], cuts[1:]):
                a0 = a_prev + (p_prev.hw if p_prev else 0.0)
                a1 = a_next - (p_next.hw if p_next else 0.0)
                poly = _rect(ax, a0, a1, c - hw, c + hw)
                P["road_segment"].append(poly)
                self.intersection_flags.append(False)
                P["road_block"].append(poly)
                for b0 in (c - hw, c - hw / 2, c, c + hw / 2):
                    P["lane"].append(_rect(ax, a0, a1, b0, b0 + hw / 2))
                for side in (-1, 1):
                    b = c + side * hw
                    P["walkway"].append(_rect(ax, a0, a1, min(b, b + side * WALKWAY), max(b, b + side * WALKWAY)))
                m0 = (CROSSING + 1.5) if p_prev else 0.0
                m1 = (CROSSING + 1.5) if p_next else 0.0
                if a1 - m1 - (a0 + m0) > 1.0:
                    self.lines["road_divider"].append(_seg(ax, a0 + m0, a1 - m1, c))
                    for b in (c - hw / 2, c + hw / 2):
                        self.lines["lane_divider"].append(_seg(ax, a0 + m0, a1 - m1, b))
            # zebra crossings and stop lines on both arms of every intersection
            for p in perp:
                for arm in (-1, 1):
                    e0 = p.c + arm * (p.hw + 0.5)
                    e1 = e0 + arm * CROSSING
                    P["ped_crossing"].append(_rect(ax, min(e0, e1), max(e0, e1), c - hw, c + hw))
                    f0 = e1 + arm * 0.5
                    f1 = f0 + arm * 0.4
                    inc = arm * self.drive_side  # incoming lanes lie on this side of the centre line
                    b0, b1 = (c, c + hw) if inc > 0 else (c - hw, c)
                    P["stop_line"].append(_rect(ax, min(f0, f1), max(f0, f1), b0, b1))
                    self.stop_line_crossing.append(len(P["ped_crossing"]) - 1)
        for h in (r for r in self.roads if r.axis == 0):
            for v in (r for r in self.roads if r.axis == 1):
                P["road_segment"].append(_rect(0, v.c - v.hw, v.c + v.hw, h.c - h.hw, h.c + h.hw))
                self.intersection_flags.append(True)

    # ------------------------------------------------------------------ blocks
    def _intervals(self, axis: int) -> list[tuple[float, float]]:
        """Free intervals between roads (+ walkways) along x (axis=1 roads) or y (axis=0 roads)."""
        edges = [0.0]
        for r in sorted((r for r in self.roads if r.axis == axis), key=lambda r: r.c):
            edges += [r.c - r.hw - WALKWAY, r.c + r.hw + WALKWAY]
        edges.append(self.size)
        return [(edges[i], edges[i + 1]) for i in range(0, len(edges), 2)]

    def _build_blocks(self, rng: np.random.Generator) -> None:
        boxes, labels, colors = [], [], []
        s = self.size
        for x0, x1 in self._intervals(1):
            for y0, y1 in self._intervals(0):
                taken: list[tuple[float, float, float, float]] = []
                # road-facing edges: (axis of the edge, fixed coordinate, inward sign, along range)
                edges = []
                if y0 > 0:
                    edges.append((0, y0, 1, x0, x1))
                if y1 < s:
                    edges.append((0, y1, -1, x0, x1))
                if x0 > 0:
                    edges.append((1, x0, 1, y0, y1))
                if x1 < s:
                    edges.append((1, x1, -1, y0, y1))
                if edges and rng.random() < 0.35:
                    ax, b, sg, a0, a1 = edges[int(rng.integers(len(edges)))]
                    length, depth = float(rng.uniform(25, 40)), float(rng.uniform(15, 22))
                    if a1 - a0 > length + 10:
                        am = float(rng.uniform(a0 + 5 + length / 2, a1 - 5 - length / 2))
                        rect = _rect(ax, am - length / 2, am + length / 2, min(b, b + sg * depth),
                                     max(b, b + sg * depth))
                        self.polygons["carpark_area"].append(rect)
                        self.polygons["drivable_area"].append(rect)
                        bb = (rect[:, 0].min(), rect[:, 1].min(), rect[:, 0].max(), rect[:, 1].max())
                        self.carparks.append(np.array(bb))
                        taken.append(bb)
                for ax, b, sg, a0, a1 in edges:
                    setback = float(rng.uniform(4, 8))
                    a = a0 + float(rng.uniform(1, 6))
                    while True:
                        width, depth = float(rng.uniform(10, 24)), float(rng.uniform(8, 16))
                        if a + width > a1 - 1:
                            break
                        c0, c1 = b + sg * setback, b + sg * (setback + depth)
                        rect = _rect(ax, a, a + width, min(c0, c1), max(c0, c1))
                        bb = (rect[:, 0].min(), rect[:, 1].min(), rect[:, 0].max(), rect[:, 1].max())
                        inside = bb[0] >= x0 and bb[2] <= x1 and bb[1] >= y0 and bb[3] <= y1
                        if inside and not any(_overlap(bb, t, 1.0) for t in taken):
                            taken.append(bb)
                            h = float(rng.uniform(5, 22))
                            boxes.append(((bb[0] + bb[2]) / 2, (bb[1] + bb[3]) / 2, h / 2,
                                          bb[2] - bb[0], bb[3] - bb[1], h, 0.0))
                            labels.append(CATEGORY_INDEX["static.manmade"])
                            g = int(rng.integers(120, 200))
                            colors.append((g, int(g * rng.uniform(0.85, 1.0)), int(g * rng.uniform(0.7, 0.95))))
                        a += width + float(rng.uniform(2, 8))
                    # trees in the strip between walkway and buildings
                    a = a0 + float(rng.uniform(2, 8))
                    while a < a1 - 2:
                        p = np.array([a, b + sg * 1.8]) if ax == 0 else np.array([b + sg * 1.8, a])
                        bb = (p[0] - 1.4, p[1] - 1.4, p[0] + 1.4, p[1] + 1.4)
                        if rng.random() < 0.8 and not any(_overlap(bb, t, 0.2) for t in taken):
                            top = float(rng.uniform(5, 7))
                            boxes.append((p[0], p[1], 1.4, 0.4, 0.4, 2.8, 0.0))
                            boxes.append((p[0], p[1], (2.6 + top) / 2, 2.6, 2.6, top - 2.6, 0.0))
                            labels += [CATEGORY_INDEX["static.vegetation"]] * 2
                            colors += [(90, 60, 30), (int(rng.integers(25, 50)), int(rng.integers(95, 130)), 30)]
                        a += float(rng.uniform(8, 14))
        self.static_boxes = np.array(boxes, np.float64).reshape(-1, 7)
        self.static_labels = np.array(labels, np.uint8)
        self.static_colors = np.array(colors, np.uint8).reshape(-1, 3)

    def statics_near(self, xy, radius: float) -> np.ndarray:
        """Indices of static boxes whose centre lies within ``radius`` (+ box extent) of ``xy``."""
        d = np.hypot(self.static_boxes[:, 0] - xy[0], self.static_boxes[:, 1] - xy[1])
        ext = 0.5 * np.hypot(self.static_boxes[:, 3], self.static_boxes[:, 4])
        return np.nonzero(d - ext < radius)[0]

    def line_of_sight(self, a, b) -> bool:
        """True unless the ground segment a -> b crosses a building footprint (buildings are axis-aligned)."""
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        bld = self.static_labels == CATEGORY_INDEX["static.manmade"]
        box = self.static_boxes[bld]
        d = b - a
        lo, hi = np.zeros(len(box)), np.ones(len(box))
        for k in range(2):
            b0 = box[:, k] - box[:, 3 + k] / 2 - a[k]
            b1 = box[:, k] + box[:, 3 + k] / 2 - a[k]
            if abs(d[k]) < 1e-12:
                inside = (b0 <= 0) & (b1 >= 0)
                lo = np.where(inside, lo, 2.0)
                continue
            t0, t1 = np.minimum(b0, b1) / d[k], np.maximum(b0, b1) / d[k]
            t0, t1 = np.minimum(t0, t1), np.maximum(t0, t1)
            lo, hi = np.maximum(lo, t0), np.minimum(hi, t1)
        return not bool((lo <= hi).any())

    # ------------------------------------------------------------------ rasters
    @property
    def raster(self) -> np.ndarray:
        """``[H, W]`` uint8 ground class (0 terrain, 1 road, 2 walkway, 3 marking, 4 car park) at 0.1 m;
        row = floor(y / 0.1), column = floor(x / 0.1)."""
        if self._raster is None:
            self._raster = self._draw_raster()
        return self._raster

    def _draw_raster(self) -> np.ndarray:
        n = int(round(self.size / RASTER_RES))
        g = np.zeros((n, n), np.uint8)

        def fill(polys, value):  # one call per polygon: a multi-contour fillPoly XORs overlaps
            for p in polys:
                cv2.fillPoly(g, [np.round(p / RASTER_RES).astype(np.int32)], value)

        fill(self.polygons["drivable_area"], 1)
        fill(self.polygons["carpark_area"], 4)
        fill(self.polygons["walkway"], 2)
        fill(self.polygons["stop_line"], 3)
        for poly in self.polygons["ped_crossing"]:  # zebra: stripes parallel to the road
            x0, y0 = poly.min(0)
            x1, y1 = poly.max(0)
            along_x = (x1 - x0) < (y1 - y0)  # crossing is thin along the road axis
            lo, hi = (y0, y1) if along_x else (x0, x1)
            for t in np.arange(lo + 0.25, hi - 0.25, 1.0):
                r = (np.array([[x0, t], [x1, t], [x1, t + 0.5], [x0, t + 0.5]]) if along_x
                     else np.array([[t, y0], [t + 0.5, y0], [t + 0.5, y1], [t, y1]]))
                fill([r], 3)
        for seg in self.lines["road_divider"]:
            for off in (-0.12, 0.12):
                d = seg[1] - seg[0]
                nrm = np.array([-d[1], d[0]]) / np.linalg.norm(d) * off
                p = np.round((seg + nrm) / RASTER_RES).astype(np.int32)
                cv2.line(g, tuple(int(v) for v in p[0]), tuple(int(v) for v in p[1]), 3, 1)
        for seg in self.lines["lane_divider"]:  # dashed 3 m on, 6 m off
            d = seg[1] - seg[0]
            length = float(np.linalg.norm(d))
            for t in np.arange(0.0, length - 3.0, 9.0):
                p0, p1 = seg[0] + d * t / length, seg[0] + d * (t + 3.0) / length
                cv2.line(g, tuple(int(v) for v in np.round(p0 / RASTER_RES)),
                         tuple(int(v) for v in np.round(p1 / RASTER_RES)), 3, 2)
        return g

    def ground_class(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Ground raster class at global ``(x, y)`` (terrain outside the map)."""
        r = self.raster
        ix = np.floor(np.asarray(x) / RASTER_RES).astype(np.int64)
        iy = np.floor(np.asarray(y) / RASTER_RES).astype(np.int64)
        ok = (ix >= 0) & (iy >= 0) & (ix < r.shape[1]) & (iy < r.shape[0])
        out = np.zeros(ix.shape, np.uint8)
        out[ok] = r[iy[ok], ix[ok]]
        return out

    def mask_png(self) -> np.ndarray:
        """Map-table semantic prior: ``[H, W]`` uint8 (255 on drivable surface and walkways), north up, as
        ``nuscenes.utils.map_mask.MapMask`` reads it at 0.1 m per pixel."""
        n = int(round(self.size / RASTER_RES))
        g = np.zeros((n, n), np.uint8)
        for p in self.polygons["drivable_area"] + self.polygons["walkway"]:
            cv2.fillPoly(g, [np.round(p / RASTER_RES).astype(np.int32)], 255)
        return np.ascontiguousarray(g[::-1])

    # ------------------------------------------------------------------ map expansion
    def expansion_json(self) -> dict:
        """The ``maps/expansion/<location>.json`` content (map version 1.3) for ``NuScenesMap``."""
        seed, loc = self.seed, self.location
        nodes, polygons, lines = [], [], []

        def tok(*k):
            return make_token(seed, "map", loc, *k)

        def add_nodes(pts, kind, i):
            toks = []
            for j, (x, y) in enumerate(pts):
                t = tok("node", kind, i, j)
                nodes.append({"token": t, "x": round(float(x), 3), "y": round(float(y), 3)})
                toks.append(t)
            return toks

        def add_polygon(poly, kind, i):
            t = tok("polygon", kind, i)
            polygons.append({"token": t, "exterior_node_tokens": add_nodes(poly, kind, i), "holes": []})
            return t

        def add_line(seg, kind, i):
            t = tok("line", kind, i)
            lines.append({"token": t, "node_tokens": add_nodes(seg, kind, i)})
            return t

        P = self.polygons
        da_token = tok("drivable_area", 0)
        out = {
            "version": "1.3", "canvas_edge": [self.size, self.size],
            "drivable_area": [{"token": da_token, "polygon_tokens": [add_polygon(p, "drivable_area", i)
                                                                       for i, p in enumerate(P["drivable_area"])]}],
            "road_segment": [{"token": tok("road_segment", i), "polygon_token": add_polygon(p, "road_segment", i),
                              "is_intersection": bool(self.intersection_flags[i]), "drivable_area_token": da_token}
                             for i, p in enumerate(P["road_segment"])],
            "road_block": [{"token": tok("road_block", i), "polygon_token": add_polygon(p, "road_block", i),
                            "from_edge_line_token": None, "to_edge_line_token": None,
                            "road_segment_token": tok("road_segment", i)} for i, p in enumerate(P["road_block"])],
            "lane": [{"token": tok("lane", i), "polygon_token": add_polygon(p, "lane", i), "lane_type": "CAR",
                      "from_edge_line_token": None, "to_edge_line_token": None,
                      "left_lane_divider_segments": [], "right_lane_divider_segments": []}
                     for i, p in enumerate(P["lane"])],
            "ped_crossing": [{"token": tok("ped_crossing", i), "polygon_token": add_polygon(p, "ped_crossing", i),
                              "road_segment_token": None} for i, p in enumerate(P["ped_crossing"])],
            "walkway": [{"token": tok("walkway", i), "polygon_token": add_polygon(p, "walkway", i)}
                        for i, p in enumerate(P["walkway"])],
            "stop_line": [{"token": tok("stop_line", i), "polygon_token": add_polygon(p, "stop_line", i),
                           "stop_line_type": "PED_CROSSING",
                           "ped_crossing_tokens": [tok("ped_crossing", self.stop_line_crossing[i])],
                           "traffic_light_tokens": [], "road_block_token": None}
                          for i, p in enumerate(P["stop_line"])],
            "carpark_area": [{"token": tok("carpark_area", i), "polygon_token": add_polygon(p, "carpark_area", i),
                              "orientation": 0.0, "road_block_token": None} for i, p in enumerate(P["carpark_area"])],
            "road_divider": [{"token": tok("road_divider", i), "line_token": add_line(s, "road_divider", i),
                              "road_segment_token": None} for i, s in enumerate(self.lines["road_divider"])],
            "lane_divider": [{"token": tok("lane_divider", i), "line_token": add_line(s, "lane_divider", i),
                              "lane_divider_segments": []} for i, s in enumerate(self.lines["lane_divider"])],
            "traffic_light": [], "lane_connector": [], "arcline_path_3": {}, "connectivity": {},
        }
        out["polygon"], out["line"], out["node"] = polygons, lines, nodes
        return out


def _overlap(a, b, margin: float) -> bool:
    return not (a[2] + margin <= b[0] or b[2] + margin <= a[0] or a[3] + margin <= b[1] or b[3] + margin <= a[1])
