"""Rotated bird's-eye-view and 3D IoU of LiDAR boxes on the CPU (exact polygon intersection, numba).

Replaces upstream BEVFusion's ``iou3d_cuda`` (CUDA only). Boxes follow the sparse3d convention
``(x, y, z, l, w, h, yaw, ...)`` in the LiDAR frame: ``z`` is the box *centre*, ``l`` runs along the heading
``yaw`` (rad, counter-clockwise about +z from +x), ``w`` across it. Extra columns (velocity) are ignored.

The BEV intersection of two rotated rectangles is found by Sutherland-Hodgman clipping of one rectangle by the
other's four half-planes, in float64; its area comes from the shoelace formula. The result is exact up to
floating-point rounding, so identical boxes give 1 and a square rotated by 90 degrees gives 1.
The functions are not differentiable (they are used for matching costs and metrics only).
"""
from __future__ import annotations

import numpy as np
import torch
from numba import njit

__all__ = ["box_overlap_bev", "box_iou_bev", "box_iou_3d", "box_corners_bev"]


@njit(cache=True)
def _corners(x, y, length, width, yaw, out):
    """Write the 4 BEV corners of a box, counter-clockwise, into ``out[4, 2]``."""
    c, s = np.cos(yaw), np.sin(yaw)
    hl, hw = 0.5 * length, 0.5 * width
    lx = (hl, -hl, -hl, hl)
    ly = (hw, hw, -hw, -hw)
    for i in range(4):
        out[i, 0] = x + c * lx[i] - s * ly[i]
        out[i, 1] = y + s * lx[i] + c * ly[i]


@njit(cache=True)
def _clip(src, n, e0x, e0y, e1x, e1y, dst):
    """Keep the part of polygon ``src[:n]`` left of the directed line e0->e1; returns the vertex count."""
    ex, ey = e1x - e0x, e1y - e0y
    m = 0
    for i in range(n):
        px, py = src[i, 0], src[i, 1]
        j = (i + 1) % n
        qx, qy = src[j, 0], src[j, 1]
        dp = ex * (py - e0y) - ey * (px - e0x)
        dq = ex * (qy - e0y) - ey * (qx - e0x)
        p_in = dp >= 0.0
        q_in = dq >= 0.0
        if p_in:
            dst[m, 0] = px
            dst[m, 1] = py
            m += 1
        if p_in != q_in:  # dp and dq differ in sign strictly, so dp - dq != 0
            t = dp / (dp - dq)
            dst[m, 0] = px + t * (qx - px)
            dst[m, 1] = py + t * (qy - py)
            m += 1
    return m


@njit(cache=True)
def _area(poly, n):
    s = 0.0
    for i in range(n):
        j = (i + 1) % n
        s += poly[i, 0] * poly[j, 1] - poly[j, 0] * poly[i, 1]
    return 0.5 * abs(s)


@njit(cache=True)
def _overlap_bev_kernel(a, b):
    """``a [N, 5]``, ``b [M, 5]`` float64 rows (x, y, l, w, yaw) -> ``[N, M]`` BEV intersection areas."""
    n, m = a.shape[0], b.shape[0]
    out = np.zeros((n, m), np.float64)
    ca = np.empty((4, 2), np.float64)
    cb = np.empty((4, 2), np.float64)
    buf0 = np.empty((16, 2), np.float64)
    buf1 = np.empty((16, 2), np.float64)
    for i in range(n):
        ra = 0.5 * np.sqrt(a[i, 2] ** 2 + a[i, 3] ** 2)
        if a[i, 2] <= 0.0 or a[i, 3] <= 0.0:
            continue
        _corners(a[i, 0], a[i, 1], a[i, 2], a[i, 3], a[i, 4], ca)
        for j in range(m):
            if b[j, 2] <= 0.0 or b[j, 3] <= 0.0:
                continue
            rb = 0.5 * np.sqrt(b[j, 2] ** 2 + b[j, 3] ** 2)
            dx, dy = a[i, 0] - b[j, 0], a[i, 1] - b[j, 1]
            if dx * dx + dy * dy >= (ra + rb) ** 2:  # circumscribed circles apart
                continue
            _corners(b[j, 0], b[j, 1], b[j, 2], b[j, 3], b[j, 4], cb)
            for k in range(4):
                buf0[k, 0] = ca[k, 0]
                buf0[k, 1] = ca[k, 1]
            cnt = 4
            src, dst = buf0, buf1
            for k in range(4):
                k1 = (k + 1) % 4
                cnt = _clip(src, cnt, cb[k, 0], cb[k, 1], cb[k1, 0], cb[k1, 1], dst)
                src, dst = dst, src
                if cnt == 0:
                    break
            if cnt >= 3:
                out[i, j] = _area(src, cnt)
    return out


def _as_boxes(boxes, name: str) -> np.ndarray:
    if not isinstance(boxes, (torch.Tensor, np.ndarray)):
        raise TypeError(f"{name} must be a torch.Tensor or numpy array, got {type(boxes).__name__}")
    if boxes.ndim != 2 or boxes.shape[1] < 7:
        raise ValueError(f"{name} must be [N, >=7] (x, y, z, l, w, h, yaw, ...), got shape {tuple(boxes.shape)}")
    if isinstance(boxes, torch.Tensor):
        boxes = boxes.detach().to("cpu", torch.float64).numpy()
    return np.ascontiguousarray(boxes, dtype=np.float64)


def _wrap(result: np.ndarray, like) -> torch.Tensor:
    if isinstance(like, torch.Tensor):
        dtype = like.dtype if like.is_floating_point() else torch.float32
        return torch.from_numpy(result).to(like.device, dtype)
    return torch.from_numpy(result.astype(np.float32))


def _bev(boxes: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(boxes[:, [0, 1, 3, 4, 6]])


def box_corners_bev(boxes: torch.Tensor) -> torch.Tensor:
    """BEV corners of ``boxes [N, >=7]`` -> ``[N, 4, 2]`` (counter-clockwise: front-left, rear-left, rear-right,
    front-right), same dtype and device."""
    if boxes.ndim != 2 or boxes.shape[1] < 7:
        raise ValueError(f"boxes must be [N, >=7], got shape {tuple(boxes.shape)}")
    sx = boxes.new_tensor([0.5, -0.5, -0.5, 0.5])
    sy = boxes.new_tensor([0.5, 0.5, -0.5, -0.5])
    lx = boxes[:, 3:4] * sx  # [N, 4]
    ly = boxes[:, 4:5] * sy
    c, s = torch.cos(boxes[:, 6:7]), torch.sin(boxes[:, 6:7])
    return torch.stack([boxes[:, 0:1] + c * lx - s * ly, boxes[:, 1:2] + s * lx + c * ly], -1)


def box_overlap_bev(boxes_a, boxes_b) -> torch.Tensor:
    """Rotated BEV intersection areas.

    Args:
        boxes_a: ``[N, >=7]`` (x, y, z, l, w, h, yaw, ...), tensor or array.
        boxes_b: ``[M, >=7]``.
    Returns:
        ``[N, M]`` areas (m^2) on ``boxes_a``'s device, in its float dtype (float32 for arrays).
    """
    a, b = _as_boxes(boxes_a, "boxes_a"), _as_boxes(boxes_b, "boxes_b")
    if len(a) == 0 or len(b) == 0:
        return _wrap(np.zeros((len(a), len(b))), boxes_a)
    return _wrap(_overlap_bev_kernel(_bev(a), _bev(b)), boxes_a)


def box_iou_bev(boxes_a, boxes_b) -> torch.Tensor:
    """Rotated BEV IoU ``[N, M]`` of ``boxes_a [N, >=7]`` and ``boxes_b [M, >=7]`` (0 where the union is 0)."""
    a, b = _as_boxes(boxes_a, "boxes_a"), _as_boxes(boxes_b, "boxes_b")
    if len(a) == 0 or len(b) == 0:
        return _wrap(np.zeros((len(a), len(b))), boxes_a)
    inter = _overlap_bev_kernel(_bev(a), _bev(b))
    area_a = np.clip(a[:, 3], 0, None) * np.clip(a[:, 4], 0, None)
    area_b = np.clip(b[:, 3], 0, None) * np.clip(b[:, 4], 0, None)
    union = area_a[:, None] + area_b[None, :] - inter
    iou = np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)
    return _wrap(np.clip(iou, 0.0, 1.0), boxes_a)


def box_iou_3d(boxes_a, boxes_b) -> torch.Tensor:
    """3D IoU ``[N, M]`` of upright rotated boxes (``z`` = centre): BEV overlap x height overlap / union volume."""
    a, b = _as_boxes(boxes_a, "boxes_a"), _as_boxes(boxes_b, "boxes_b")
    if len(a) == 0 or len(b) == 0:
        return _wrap(np.zeros((len(a), len(b))), boxes_a)
    inter_bev = _overlap_bev_kernel(_bev(a), _bev(b))
    top = np.minimum(a[:, None, 2] + 0.5 * a[:, None, 5], b[None, :, 2] + 0.5 * b[None, :, 5])
    bottom = np.maximum(a[:, None, 2] - 0.5 * a[:, None, 5], b[None, :, 2] - 0.5 * b[None, :, 5])
    inter = inter_bev * np.clip(top - bottom, 0.0, None)
    vol_a = np.prod(np.clip(a[:, 3:6], 0, None), axis=1)
    vol_b = np.prod(np.clip(b[:, 3:6], 0, None), axis=1)
    union = vol_a[:, None] + vol_b[None, :] - inter
    iou = np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)
    return _wrap(np.clip(iou, 0.0, 1.0), boxes_a)
