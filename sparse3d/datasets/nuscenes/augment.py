r"""BEVFusion augmentations on numpy data, as matrices: image ``ImageAug3D`` (resize, bottom-aligned crop, flip,
rotation) -> ``img_aug_matrix`` plus one exact affine warp; LiDAR ``GlobalRotScaleTrans`` + ``RandomFlip3D`` ->
``lidar_aug_matrix`` applied to points, boxes and the BEV map patch.

Pixel coordinates are continuous, pixel ``i`` covering ``[i, i + 1)`` (PIL's and the synthetic renderer's convention),
which makes BEVFusion's ``post_rot``/``post_trans`` formulas exact. Random draws use torch's RNG (optionally a
``torch.Generator``), so DataLoader workers are seeded by torch.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch
from PIL import Image

from .common import MAP_CLASSES

__all__ = ["image_aug_params", "image_aug_matrix", "warp_image", "pixel_affine4", "lidar_aug_matrix",
           "random_lidar_aug", "transform_points", "transform_boxes", "map_masks_augmented", "uniform"]


# ---------------------------------------------------------------------------------------------- image aug
def uniform(lo: float, hi: float, g: Optional[torch.Generator]) -> float:
    return float(lo) + (float(hi) - float(lo)) * float(torch.rand((), generator=g, dtype=torch.float64))


def image_aug_params(src_wh, final_dim, resize_lim, bot_pct_lim=(0.0, 0.0), rot_lim=(0.0, 0.0),
                     rand_flip: bool = False, train: bool = True, generator: Optional[torch.Generator] = None):
    """BEVFusion ``ImageAug3D.sample_augmentation``: ``(resize, resize_dims (W, H), crop (x0, y0, x1, y1), flip,
    rotate_deg)`` for a source image of ``src_wh`` = (W, H) and a network input ``final_dim`` = (H, W). Test mode
    uses the mean resize, a horizontally centred crop, no flip and no rotation."""
    W, H = int(src_wh[0]), int(src_wh[1])
    fH, fW = int(final_dim[0]), int(final_dim[1])
    if train:
        resize = uniform(*resize_lim, generator)
        bot = uniform(*bot_pct_lim, generator)
    else:
        resize, bot = float(np.mean(resize_lim)), float(np.mean(bot_pct_lim))
    newW, newH = int(W * resize), int(H * resize)
    crop_h = int((1 - bot) * newH) - fH
    crop_w = int(uniform(0, max(0, newW - fW), generator)) if train else int(max(0, newW - fW) / 2)
    flip = bool(train and rand_flip and float(torch.rand((), generator=generator)) < 0.5)
    rotate = uniform(*rot_lim, generator) if train else 0.0
    return resize, (newW, newH), (crop_w, crop_h, crop_w + fW, crop_h + fH), flip, rotate


def image_aug_matrix(resize: float, crop, flip: bool, rotate_deg: float) -> np.ndarray:
    """``[4, 4]`` float64 ``img_aug_matrix`` of BEVFusion (``post_rot`` in ``[:2, :2]``, ``post_trans`` in
    ``[:2, 3]``): source pixel ``(u, v)`` -> augmented pixel ``R (u, v) + t``; resize, crop, flip about the crop
    width, rotation by ``rotate_deg`` (counter-clockwise on screen, PIL ``rotate``) about the crop centre."""
    rot = np.eye(2) * resize
    trans = -np.asarray(crop[:2], np.float64)
    if flip:
        A = np.array([[-1.0, 0.0], [0.0, 1.0]])
        rot, trans = A @ rot, A @ trans + np.array([crop[2] - crop[0], 0.0])
    th = math.radians(rotate_deg)
    A = np.array([[math.cos(th), math.sin(th)], [-math.sin(th), math.cos(th)]])
    b = np.array([crop[2] - crop[0], crop[3] - crop[1]], np.float64) / 2
    rot, trans = A @ rot, A @ trans + (A @ -b + b)
    M = np.eye(4)
    M[:2, :2], M[:2, 3] = rot, trans
    return M


def warp_image(img: np.ndarray, aug: np.ndarray, final_dim) -> np.ndarray:
    """Resample ``img`` ``[H, W, 3]`` uint8 into the ``final_dim`` (H, W) augmented image with one bilinear affine
    warp: augmented pixel ``q`` takes the source value at ``aug^-1 q`` (0 outside the source)."""
    A = np.eye(3)
    A[:2, :2], A[:2, 2] = aug[:2, :2], aug[:2, 3]
    inv = np.linalg.inv(A)
    fH, fW = int(final_dim[0]), int(final_dim[1])
    out = Image.fromarray(img).transform((fW, fH), Image.AFFINE, data=tuple(inv[:2].reshape(-1)),
                                         resample=Image.BILINEAR)
    return np.asarray(out)


def pixel_affine4(aug: np.ndarray) -> np.ndarray:
    """``img_aug_matrix`` as a projective 4x4 acting on ``(u d, v d, d, 1)`` (translation scaled by depth)."""
    P = np.eye(4)
    P[:2, :2], P[:2, 2] = aug[:2, :2], aug[:2, 3]
    return P


# ---------------------------------------------------------------------------------------------- LiDAR aug
def lidar_aug_matrix(rotation: float = 0.0, scale: float = 1.0, translation=(0.0, 0.0, 0.0), flip_x: bool = False,
                     flip_y: bool = False) -> np.ndarray:
    """``[4, 4]`` float64 ``p' = F (s R_z(rotation) p + t)``; ``flip_y`` mirrors y (BEVFusion's horizontal flip),
    ``flip_x`` mirrors x (vertical flip)."""
    c, s_ = math.cos(rotation), math.sin(rotation)
    M = np.eye(4)
    M[:3, :3] = scale * np.array([[c, -s_, 0.0], [s_, c, 0.0], [0.0, 0.0, 1.0]])
    M[:3, 3] = np.asarray(translation, np.float64)
    F = np.diag([-1.0 if flip_x else 1.0, -1.0 if flip_y else 1.0, 1.0, 1.0])
    return F @ M


def random_lidar_aug(rot_lim=(-math.pi / 4, math.pi / 4), scale_lim=(0.9, 1.1), trans_std: float = 0.5,
                     flip: bool = True, generator: Optional[torch.Generator] = None) -> dict:
    """Keyword arguments of :func:`lidar_aug_matrix` drawn as BEVFusion's training pipeline: rotation
    ``U(rot_lim)``, scale ``U(scale_lim)``, translation ``N(0, trans_std)`` per axis, each mirror with p = 0.5."""
    rot = uniform(*rot_lim, generator)
    scale = uniform(*scale_lim, generator)
    trans = (torch.randn(3, generator=generator, dtype=torch.float64) * float(trans_std)).tolist()
    fy = flip and float(torch.rand((), generator=generator)) < 0.5
    fx = flip and float(torch.rand((), generator=generator)) < 0.5
    return dict(rotation=rot, scale=scale, translation=tuple(trans), flip_x=bool(fx), flip_y=bool(fy))


def transform_points(points: np.ndarray, M: np.ndarray) -> np.ndarray:
    """Apply ``M`` ``[4, 4]`` to the xyz of ``points`` ``[N, >=3]`` (other columns kept); same dtype."""
    out = points.copy()
    if len(points):
        out[:, :3] = (points[:, :3].astype(np.float64) @ M[:3, :3].T + M[:3, 3]).astype(points.dtype)
    return out


def transform_boxes(boxes: np.ndarray, M: np.ndarray) -> np.ndarray:
    """Apply a similarity ``M`` (z rotation, uniform scale, x/y mirror, translation) to boxes ``[K, 9]`` (x, y, z,
    l, w, h, yaw, vx, vy): centre by ``M``, sizes and velocity scaled, heading and velocity rotated/mirrored."""
    out = boxes.astype(np.float64).copy()
    if not len(boxes):
        return out.astype(boxes.dtype)
    L = M[:3, :3]
    scale = abs(np.linalg.det(L)) ** (1.0 / 3.0)
    out[:, :3] = out[:, :3] @ L.T + M[:3, 3]
    out[:, 3:6] *= scale
    h = np.stack([np.cos(boxes[:, 6]), np.sin(boxes[:, 6]), np.zeros(len(boxes))], 1) @ L.T
    yaw = np.arctan2(h[:, 1], h[:, 0])
    out[:, 6] = (yaw + np.pi) % (2 * np.pi) - np.pi
    v = np.stack([boxes[:, 7], boxes[:, 8], np.zeros(len(boxes))], 1) @ L.T
    out[:, 7:9] = v[:, :2]
    return out.astype(boxes.dtype)


def map_masks_augmented(loader, info: dict, xbound, ybound, classes=MAP_CLASSES, rotation: float = 0.0,
                        scale: float = 1.0, translation=(0.0, 0.0, 0.0), flip_x: bool = False,
                        flip_y: bool = False) -> np.ndarray:
    """BEV map labels ``[len(classes), X, Y]`` uint8 on the grid ``xbound``/``ybound`` of the *augmented* LiDAR
    frame (axis 1 = x, axis 2 = y; :meth:`NuScenesLoader.map_masks` conventions), for the augmentation
    :func:`lidar_aug_matrix` ``(rotation, scale, translation, flip_x, flip_y)``.

    The patch is rasterized by the devkit (``NuScenesMap.get_map_mask`` through ``loader.nusc_map``) in the frame
    ``r = R p + t / s`` (rotated, unscaled), covering the grid divided by ``s``; mirrors flip the array axes, which
    needs a grid symmetric about 0 on the mirrored axis."""
    nx, ny = int(round((xbound[1] - xbound[0]) / xbound[2])), int(round((ybound[1] - ybound[0]) / ybound[2]))
    for flag, b, axis in ((flip_x, xbound, "x"), (flip_y, ybound, "y")):
        if flag and not math.isclose(b[0], -b[1], abs_tol=1e-9):
            raise ValueError(f"map {axis}bound {tuple(b)} must be symmetric about 0 for a {axis} flip")
    c, s_ = math.cos(rotation), math.sin(rotation)
    B = np.eye(4)
    B[:3, :3] = [[c, -s_, 0.0], [s_, c, 0.0], [0.0, 0.0, 1.0]]
    B[:3, 3] = np.asarray(translation, np.float64) / scale
    r2g = info["lidar2global"] @ np.linalg.inv(B)
    center = np.array([(xbound[0] + xbound[1]) / 2 / scale, (ybound[0] + ybound[1]) / 2 / scale, 0.0, 1.0])
    cg = r2g @ center
    v = r2g[:3, :3] @ np.array([1.0, 0.0, 0.0])
    angle = float(np.degrees(np.arctan2(v[1], v[0])))
    patch_h, patch_w = (ybound[1] - ybound[0]) / scale, (xbound[1] - xbound[0]) / scale
    layers = {k: (["road_divider", "lane_divider"] if k == "divider" else [k]) for k in classes}
    names = sorted({n for ls in layers.values() for n in ls})
    masks = loader.nusc_map(info["location"]).get_map_mask((cg[0], cg[1], patch_h, patch_w), angle, names, (ny, nx))
    masks = masks.transpose(0, 2, 1).astype(bool)
    out = np.zeros((len(classes), nx, ny), np.uint8)
    for k, cls in enumerate(classes):
        for n in layers[cls]:
            out[k] |= masks[names.index(n)]
    if flip_x:
        out = out[:, ::-1]
    if flip_y:
        out = out[:, :, ::-1]
    return np.ascontiguousarray(out)
