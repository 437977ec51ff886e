"""Camera images of the synthetic scene: per-pixel ground texture (the town's ground raster) and sky, then every
box (agents' solid parts in flat class colours, buildings, trees) drawn as its visible faces, far to near
(painter's order)."""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from .common import CLASS_COLORS, SHADES
from .town import GROUND_COLORS

__all__ = ["render_camera", "project", "box_corners"]

_HAZE = np.array([200.0, 212.0, 225.0])
_ZENITH = np.array([95.0, 145.0, 215.0])
_NEAR = 0.3  # near clipping plane (m)
# box faces: corner indices (see box_corners), the local axis and sign of the outward normal, shade key
_FACES = (((0, 1, 2, 3), 0, 1, "front"), ((4, 5, 6, 7), 0, -1, "back"), ((0, 3, 7, 4), 1, 1, "side"),
          ((1, 2, 6, 5), 1, -1, "side"), ((0, 1, 5, 4), 2, 1, "top"))


_SIGNS = np.array([[1, 1, 1], [1, -1, 1], [1, -1, -1], [1, 1, -1], [-1, 1, 1], [-1, -1, 1], [-1, -1, -1],
                   [-1, 1, -1]], np.float64)


def box_corners(boxes: np.ndarray) -> np.ndarray:
    """``[..., 8, 3]`` corners of boxes ``[..., 7]`` (cx, cy, cz, l, w, h, yaw): 0-3 front (+x) face, 4-7 back
    face; within a face the order is (+y,+z), (-y,+z), (-y,-z), (+y,-z)."""
    boxes = np.asarray(boxes, np.float64)
    loc = _SIGNS * boxes[..., None, 3:6] / 2
    c, s = np.cos(boxes[..., 6:7]), np.sin(boxes[..., 6:7])
    return np.stack([c * loc[..., 0] - s * loc[..., 1] + boxes[..., 0:1],
                     s * loc[..., 0] + c * loc[..., 1] + boxes[..., 1:2], loc[..., 2] + boxes[..., 2:3]], -1)


def project(points_cam: np.ndarray, K: np.ndarray) -> np.ndarray:
    """``[N, 2]`` pixel coordinates of camera-frame points ``[N, 3]`` (z forward)."""
    p = points_cam @ K.T
    return p[:, :2] / p[:, 2:3]


def _clip_near(poly: np.ndarray) -> np.ndarray:
    """Sutherland-Hodgman clip of a camera-frame polygon ``[K, 3]`` against ``z >= _NEAR``."""
    out = []
    n = len(poly)
    for i in range(n):
        a, b = poly[i], poly[(i + 1) % n]
        ina, inb = a[2] >= _NEAR, b[2] >= _NEAR
        if ina:
            out.append(a)
        if ina != inb:
            out.append(a + (b - a) * (_NEAR - a[2]) / (b[2] - a[2]))
    return np.array(out).reshape(-1, 3)


def _background(scene, cam_pose: np.ndarray, K: np.ndarray, W: int, H: int) -> np.ndarray:
    """Sky gradient and ground texture. The per-pixel rays only depend on the camera orientation and height
    (constant within a scene: ego poses are yaw-only at z = 0), so they are cached on the scene."""
    cache = scene.__dict__.setdefault("_render_cache", {})
    key = (cam_pose[:3, :3].round(12).tobytes(), round(float(cam_pose[2, 3]), 12), K.tobytes(), W, H)
    if key not in cache:
        u, v = np.meshgrid(np.arange(W) + 0.5, np.arange(H) + 0.5)
        d_cam = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u)], -1)
        d = d_cam @ cam_pose[:3, :3].T
        d /= np.linalg.norm(d, axis=-1, keepdims=True)
        elev = np.arcsin(np.clip(d[..., 2], -1, 1))
        sky = _HAZE + (_ZENITH - _HAZE) * np.clip(elev / (np.pi / 4), 0, 1)[..., None]
        ground = np.nonzero((d[..., 2] < -1e-4).ravel())[0]
        dg = d.reshape(-1, 3)[ground]
        t = -cam_pose[2, 3] / dg[:, 2]
        fog = (1.0 - np.exp(-t * np.sqrt(1 - dg[:, 2] ** 2) / 150.0))[:, None]
        cache[key] = (sky.reshape(-1, 3), ground, t * dg[:, 0], t * dg[:, 1], fog, _HAZE * fog)
    sky, ground, gdx, gdy, fog, haze = cache[key]
    img = sky.copy()
    o = cam_pose[:3, 3]
    img[ground] = GROUND_COLORS[scene.town.ground_class(o[0] + gdx, o[1] + gdy)] * (1 - fog) + haze
    return img.reshape(H, W, 3)


def render_camera(scene, channel: str, t: float, max_dist: float = 120.0) -> np.ndarray:
    """``[H, W, 3]`` uint8 image of camera ``channel`` at time ``t`` (ego pose and agents at ``t``)."""
    rig = scene.rig
    W, H = rig.image_size
    K = rig.intrinsics[channel]
    cam_pose = scene.ego_pose(t) @ rig.cameras[channel]          # global from camera
    cam_from_global = np.linalg.inv(cam_pose)
    img = Image.fromarray(np.clip(_background(scene, cam_pose, K, W, H), 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    o = cam_pose[:3, 3]
    sidx = scene.town.statics_near(o[:2], max_dist)
    parts, owner = scene.agent_parts(t)
    boxes = np.concatenate([parts, scene.town.static_boxes[sidx]], 0)
    A = len(parts)  # agent parts come first
    agent_colors = np.array([CLASS_COLORS[c] for c in scene.det_class], np.float64).reshape(-1, 3)
    colors = np.concatenate([agent_colors[owner].reshape(-1, 3), scene.town.static_colors[sidx].astype(np.float64)], 0)
    # camera position in each box frame; the nearest box point gives the painter's order
    c, s = np.cos(boxes[:, 6]), np.sin(boxes[:, 6])
    rel = o[None] - boxes[:, :3]
    local = np.stack([c * rel[:, 0] + s * rel[:, 1], -s * rel[:, 0] + c * rel[:, 1], rel[:, 2]], 1)
    half = boxes[:, 3:6] / 2
    dist = np.linalg.norm(np.maximum(np.abs(local) - half, 0.0), axis=1)
    corners_all = box_corners(boxes) @ cam_from_global[:3, :3].T + cam_from_global[:3, 3]   # [N, 8, 3]
    z = corners_all[..., 2]
    uv = corners_all[..., :2] * (K[0, 0] / np.maximum(z, _NEAR))[..., None] + K[:2, 2]
    front = (z >= _NEAR).all(1)
    outside = front & ((uv[..., 0].max(1) < 0) | (uv[..., 0].min(1) > W) | (uv[..., 1].max(1) < 0)
                       | (uv[..., 1].min(1) > H))
    visible = (z >= _NEAR).any(1) & ~outside & (dist <= max_dist)
    for i in np.argsort(-dist, kind="stable"):
        if not visible[i]:
            continue
        corners = corners_all[i]
        fog = 0.0 if i < A else 1.0 - np.exp(-dist[i] / 150.0)
        for idx, axis, sign, shade in _FACES:
            if sign * local[i, axis] <= half[i, axis]:
                continue  # back face
            poly = _clip_near(corners[list(idx)])
            if len(poly) < 3:
                continue
            uv = project(poly, K)
            col = colors[i] * SHADES[shade] * (1 - fog) + _HAZE * fog
            draw.polygon([tuple(p) for p in uv], fill=tuple(int(round(v)) for v in col))
    return np.asarray(img)
