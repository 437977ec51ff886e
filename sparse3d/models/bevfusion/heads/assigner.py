"""One-to-one Hungarian assignment of TransFusion queries to ground-truth boxes (cf. upstream
``HungarianAssigner3D``): cost = focal classification cost + L1 on range-normalised BEV centres - 3D IoU,
solved by ``scipy.optimize.linear_sum_assignment`` on the CPU.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from scipy.optimize import linear_sum_assignment

from .iou3d import box_iou_3d

__all__ = ["AssignResult", "HungarianAssigner3D", "focal_cost", "bev_l1_cost"]


@dataclass
class AssignResult:
    """Result of :meth:`HungarianAssigner3D.assign` for ``Q`` queries and ``num_gts`` boxes.

    Attributes:
        num_gts: number of ground-truth boxes.
        gt_inds: ``[Q]`` int64, 0 = negative, ``i + 1`` = matched to ground truth ``i``.
        max_overlaps: ``[Q]`` float, 3D IoU with the matched box (0 for negatives).
        labels: ``[Q]`` int64, class of the matched box, -1 for negatives.
    """

    num_gts: int
    gt_inds: torch.Tensor
    max_overlaps: torch.Tensor
    labels: torch.Tensor

    @property
    def pos_inds(self) -> torch.Tensor:
        """``[P]`` int64 indices of the matched queries."""
        return torch.nonzero(self.gt_inds > 0).flatten()


def focal_cost(cls_logits: torch.Tensor, gt_labels: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0,
               eps: float = 1e-12) -> torch.Tensor:
    """Focal classification cost ``[Q, M]``: focal loss of "positive for class ``gt_labels[j]``" minus the loss of
    "negative" for query ``i`` (mmdet ``FocalLossCost``). ``cls_logits [Q, C]``, ``gt_labels [M]`` int64."""
    p = cls_logits.sigmoid()
    neg = -(1 - p + eps).log() * (1 - alpha) * p.pow(gamma)
    pos = -(p + eps).log() * alpha * (1 - p).pow(gamma)
    return pos[:, gt_labels] - neg[:, gt_labels]


def bev_l1_cost(pred_xy: torch.Tensor, gt_xy: torch.Tensor) -> torch.Tensor:
    """``[Q, M]`` L1 distance of ``pred_xy [Q, 2]`` and ``gt_xy [M, 2]`` (already normalised to the range)."""
    return torch.cdist(pred_xy, gt_xy, p=1)


class HungarianAssigner3D:
    """Hungarian matcher with the upstream TransFusion costs.

    Args:
        pc_range: ``(x_min, y_min, z_min, x_max, y_max, z_max)``; centres are normalised to ``[0, 1]`` by it.
        cls_weight, reg_weight, iou_weight: cost weights (upstream 0.15, 0.25, 0.25).
        alpha, gamma: focal-cost parameters.
    """

    def __init__(self, pc_range: Sequence[float], cls_weight: float = 0.15, reg_weight: float = 0.25,
                 iou_weight: float = 0.25, alpha: float = 0.25, gamma: float = 2.0):
        if len(pc_range) != 6:
            raise ValueError(f"pc_range must have 6 values, got {list(pc_range)}")
        self.pc_range = [float(v) for v in pc_range]
        self.cls_weight, self.reg_weight, self.iou_weight = float(cls_weight), float(reg_weight), float(iou_weight)
        self.alpha, self.gamma = float(alpha), float(gamma)

    def cost(self, boxes: torch.Tensor, gt_boxes: torch.Tensor, gt_labels: torch.Tensor,
             cls_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the ``[Q, M]`` matching cost and the ``[Q, M]`` 3D IoU (both detached, float)."""
        boxes, gt_boxes, cls_logits = boxes.detach().float(), gt_boxes.detach().float(), cls_logits.detach().float()
        start = boxes.new_tensor(self.pc_range[:2])
        extent = boxes.new_tensor(self.pc_range[3:5]) - start
        cls_cost = focal_cost(cls_logits, gt_labels.long(), self.alpha, self.gamma)
        reg_cost = bev_l1_cost((boxes[:, :2] - start) / extent, (gt_boxes[:, :2] - start) / extent)
        iou = box_iou_3d(boxes, gt_boxes)
        return self.cls_weight * cls_cost + self.reg_weight * reg_cost - self.iou_weight * iou, iou

    def assign(self, boxes: torch.Tensor, gt_boxes: torch.Tensor, gt_labels: torch.Tensor,
               cls_logits: torch.Tensor) -> AssignResult:
        """Match queries to ground truth one-to-one (``min(Q, M)`` pairs).

        Args:
            boxes: ``[Q, 9]`` decoded predicted boxes (x, y, z, l, w, h, yaw, vx, vy).
            gt_boxes: ``[M, 9]`` ground-truth boxes.
            gt_labels: ``[M]`` int64 class indices in ``[0, C)``.
            cls_logits: ``[Q, C]`` class logits of the queries.
        Returns:
            :class:`AssignResult` on ``boxes``'s device.
        """
        if boxes.ndim != 2 or boxes.shape[1] < 7:
            raise ValueError(f"boxes must be [Q, >=7], got shape {tuple(boxes.shape)}")
        if gt_boxes.ndim != 2 or gt_boxes.shape[1] < 7:
            raise ValueError(f"gt_boxes must be [M, >=7], got shape {tuple(gt_boxes.shape)}")
        if gt_labels.shape != gt_boxes.shape[:1]:
            raise ValueError(f"gt_labels must be [M={len(gt_boxes)}], got shape {tuple(gt_labels.shape)}")
        if cls_logits.ndim != 2 or cls_logits.shape[0] != boxes.shape[0]:
            raise ValueError(f"cls_logits must be [Q={len(boxes)}, C], got shape {tuple(cls_logits.shape)}")
        if gt_labels.numel() and (int(gt_labels.min()) < 0 or int(gt_labels.max()) >= cls_logits.shape[1]):
            raise ValueError(f"gt_labels must lie in [0, {cls_logits.shape[1]}), got {gt_labels.tolist()}")
        num_q, num_gts = boxes.shape[0], gt_boxes.shape[0]
        device = boxes.device
        gt_inds = torch.zeros(num_q, dtype=torch.long, device=device)
        labels = torch.full((num_q,), -1, dtype=torch.long, device=device)
        overlaps = torch.zeros(num_q, dtype=torch.float32, device=device)
        if num_gts == 0 or num_q == 0:
            return AssignResult(num_gts, gt_inds, overlaps, labels)
        cost, iou = self.cost(boxes, gt_boxes, gt_labels, cls_logits)
        cost = cost.cpu()
        if not torch.isfinite(cost).all():
            raise ValueError("assignment cost has NaN/inf entries (check boxes and cls_logits for NaN)")
        rows, cols = linear_sum_assignment(cost.numpy())
        rows_t = torch.as_tensor(rows, dtype=torch.long, device=device)
        cols_t = torch.as_tensor(cols, dtype=torch.long, device=device)
        gt_inds[rows_t] = cols_t + 1
        labels[rows_t] = gt_labels.to(device).long()[cols_t]
        overlaps[rows_t] = iou.to(device)[rows_t, cols_t].float()
        return AssignResult(num_gts, gt_inds, overlaps, labels)
