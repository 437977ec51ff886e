r"""Perspective (image-plane) auxiliary supervision of the camera branch.

A randomly initialized image backbone learns little from the detection loss alone when it reaches it only
through the LSS splat and the fuser (its BEV map then carries no signal the detector uses, and the fuser learns to
ignore it). Dense image-plane supervision is the usual remedy in camera 3D detection (FCOS3D / BEVFormer v2
"perspective supervision", BEVDepth's depth loss): here each cell of the image feature map is classified into the
detection class of the nearest ground-truth box that covers it, or background.

- :func:`perspective_targets`: the projected GT boxes rasterized on the feature grid ``[B, N, fH, fW]``;
- :class:`PerspectiveHead`: ``conv3x3-BN-ReLU-conv1x1`` class logits on the neck features and its cross-entropy.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .vtransform import points_to_image

__all__ = ["box_lattice", "perspective_targets", "PerspectiveHead"]

_NEAR = 0.1  # metres: lattice points nearer than this (or behind the camera) are not projected


def box_lattice(boxes: torch.Tensor, n: int = 3) -> torch.Tensor:
    """``[M, n**3, 3]`` points of an ``n x n x n`` lattice spanning each box (corners, edge and face points, centre).

    Args:
        boxes: ``[M, >=7]`` (cx, cy, cz, l, w, h, yaw), z the box centre.
    """
    boxes = boxes.double()
    M = boxes.shape[0]
    t = torch.linspace(-0.5, 0.5, n, dtype=torch.float64, device=boxes.device)
    gx, gy, gz = torch.meshgrid(t, t, t, indexing="ij")
    loc = torch.stack((gx, gy, gz), -1).reshape(1, -1, 3) * boxes[:, None, 3:6]   # [M, n^3, 3] box frame
    c, s = boxes[:, 6:7].cos(), boxes[:, 6:7].sin()
    x = c * loc[..., 0] - s * loc[..., 1] + boxes[:, 0:1]
    y = s * loc[..., 0] + c * loc[..., 1] + boxes[:, 1:2]
    return torch.stack((x, y, loc[..., 2] + boxes[:, 2:3]), -1).reshape(M, n ** 3, 3)


def perspective_targets(gt_boxes: Sequence[torch.Tensor], gt_labels: Sequence[torch.Tensor],
                        camera2lidar: torch.Tensor, camera_intrinsics: torch.Tensor, img_aug_matrix: torch.Tensor,
                        lidar_aug_matrix: torch.Tensor, image_size: Sequence[int], feature_size: Sequence[int],
                        background: int) -> torch.Tensor:
    """Class index of every image feature cell: the nearest projected GT box covering it, else ``background``.

    A box's image footprint is the axis-aligned rectangle around the projections of its 3x3x3 lattice
    (:func:`box_lattice`) points that lie at least 0.1 m in front of the camera; this clips boxes that reach
    behind the camera, and is the box's silhouette hull. Feature cell ``(i, j)`` sits at the augmented-image pixel
    ``(u_j, v_i) = (j (iW - 1) / (fW - 1), i (iH - 1) / (fH - 1))``, as in the LSS frustum
    (:func:`~sparse3d.models.bevfusion.camera.vtransform.create_frustum`). Where footprints overlap, the box whose
    centre is nearest (camera z) wins.

    Args:
        gt_boxes: list of B ``[M_b, >=7]`` boxes in the augmented LiDAR frame; gt_labels: list of B ``[M_b]``.
        camera matrices: as in :func:`~sparse3d.models.bevfusion.camera.vtransform.points_to_image`.
        image_size: (iH, iW) of the augmented image; feature_size: (fH, fW).
        background: the index given to uncovered cells.
    Returns:
        ``[B, N, fH, fW]`` int64.
    """
    B, N = camera2lidar.shape[:2]
    if len(gt_boxes) != B or len(gt_labels) != B:
        raise ValueError(f"gt_boxes and gt_labels must be lists of B={B} tensors, got {len(gt_boxes)} and "
                         f"{len(gt_labels)}")
    iH, iW = (int(s) for s in image_size)
    fH, fW = (int(s) for s in feature_size)
    dev = camera2lidar.device
    u = torch.linspace(0, iW - 1, fW, dtype=torch.float64, device=dev)
    v = torch.linspace(0, iH - 1, fH, dtype=torch.float64, device=dev)
    out = torch.full((B, N, fH, fW), int(background), dtype=torch.long, device=dev)
    for b in range(B):
        boxes, labels = gt_boxes[b].to(dev), gt_labels[b].to(dev)
        if boxes.dim() != 2 or boxes.shape[1] < 7 or labels.shape != boxes.shape[:1]:
            raise ValueError(f"gt_boxes[{b}] must be [M, >=7] with gt_labels[{b}] [M], got "
                             f"{list(boxes.shape)} and {list(labels.shape)}")
        M = boxes.shape[0]
        if M == 0:
            continue
        lattice = box_lattice(boxes)                                          # [M, L, 3]
        L = lattice.shape[1]
        centre = boxes[:, :3].double()
        q = points_to_image([torch.cat((lattice.reshape(-1, 3), centre))], camera2lidar[b:b + 1],
                            camera_intrinsics[b:b + 1], img_aug_matrix[b:b + 1], lidar_aug_matrix[b:b + 1])[0]
        q, depth = q[:, :M * L].reshape(N, M, L, 3), q[:, M * L:, 2]           # [N, M, L, 3], [N, M]
        front = q[..., 2] >= _NEAR
        inf = torch.full_like(q[..., 0], float("inf"))
        umin = torch.where(front, q[..., 0], inf).amin(-1)
        vmin = torch.where(front, q[..., 1], inf).amin(-1)
        umax = torch.where(front, q[..., 0], -inf).amax(-1)
        vmax = torch.where(front, q[..., 1], -inf).amax(-1)                  # [N, M]; +-inf if no point in front
        cover = ((v.view(1, 1, fH, 1) >= vmin[..., None, None]) & (v.view(1, 1, fH, 1) <= vmax[..., None, None])
                 & (u.view(1, 1, 1, fW) >= umin[..., None, None]) & (u.view(1, 1, 1, fW) <= umax[..., None, None]))
        dist = torch.where(cover, depth[..., None, None], torch.full_like(cover, float("inf"), dtype=torch.float64))
        best, idx = dist.min(1)                                               # [N, fH, fW]
        out[b] = torch.where(torch.isfinite(best), labels.long()[idx], out[b])
    return out


class PerspectiveHead(nn.Module):
    """Per-cell class logits on the camera neck features, trained with :func:`perspective_targets`.

    Args:
        in_channels: channels of the neck output; num_classes: detection classes (logit ``num_classes`` is
            background); hidden_channels: width of the 3x3 conv.
        background_weight: cross-entropy weight of background cells (objects cover a few % of the cells).
        loss_weight: scale of the loss.

    ``forward(feats [B*N, C, fH, fW]) -> logits [B*N, num_classes + 1, fH, fW]``;
    ``loss(logits, targets [B, N, fH, fW]) -> scalar`` (weighted-mean cross-entropy).
    """

    def __init__(self, in_channels: int, num_classes: int, hidden_channels: int = 64, background_weight: float = 0.2,
                 loss_weight: float = 1.0) -> None:
        super().__init__()
        if int(num_classes) < 1 or not float(background_weight) > 0:
            raise ValueError(f"PerspectiveHead: num_classes must be >= 1 and background_weight > 0, got "
                             f"{num_classes}, {background_weight}")
        self.num_classes = int(num_classes)
        self.net = nn.Sequential(nn.Conv2d(int(in_channels), int(hidden_channels), 3, padding=1, bias=False),
                                 nn.BatchNorm2d(int(hidden_channels)), nn.ReLU(True),
                                 nn.Conv2d(int(hidden_channels), self.num_classes + 1, 1))
        weight = torch.ones(self.num_classes + 1)
        weight[-1] = float(background_weight)
        self.register_buffer("class_weight", weight, persistent=False)
        self.loss_weight = float(loss_weight)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.net(feats)

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        t = targets.reshape(-1, *targets.shape[-2:])
        if logits.shape[0] != t.shape[0] or logits.shape[-2:] != t.shape[-2:]:
            raise ValueError(f"PerspectiveHead.loss: logits {list(logits.shape)} do not match targets "
                             f"{list(targets.shape)}")
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))    # fp16 / bf16 -> fp32; fp64 stays
        return self.loss_weight * F.cross_entropy(logits, t, weight=self.class_weight.to(logits))
