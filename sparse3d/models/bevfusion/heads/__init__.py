"""BEVFusion detection head: TransFusion with its box coder, Hungarian assigner, losses and CPU rotated IoU."""
from .assigner import AssignResult, HungarianAssigner3D
from .box_coder import TransFusionBBoxCoder
from .gaussian import draw_heatmap_gaussian, gaussian_radius
from .heading import HeadingBins
from .iou3d import box_iou_3d, box_iou_bev, box_overlap_bev
from .losses import gaussian_focal_loss, sigmoid_focal_loss, weighted_l1_loss
from .roi import BoxFrameRefiner
from .transfusion import TransFusionHead

__all__ = [
    "TransFusionHead", "TransFusionBBoxCoder", "HungarianAssigner3D", "AssignResult", "HeadingBins",
    "BoxFrameRefiner",
    "draw_heatmap_gaussian", "gaussian_radius", "box_iou_bev", "box_iou_3d", "box_overlap_bev",
    "gaussian_focal_loss", "sigmoid_focal_loss", "weighted_l1_loss",
]
