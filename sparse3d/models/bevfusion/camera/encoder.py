"""The camera encoder of BEVFusion: backbone -> neck (first output) -> view transform -> BEV."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

__all__ = ["CameraEncoder"]


class CameraEncoder(nn.Module):
    """Compose an image backbone, a neck and an LSS view transform.

    Args:
        backbone: ``[B*N, 3, H, W] -> list of maps`` (e.g. :class:`ResNetBackbone`).
        neck: ``list -> list`` (e.g. :class:`GeneralizedLSSFPN`); its output ``neck_index`` feeds the transform.
        vtransform: :class:`LSSTransform` / :class:`DepthLSSTransform`.
        aux_head: optional image-plane head on the same neck output (e.g.
            :class:`~sparse3d.models.bevfusion.camera.perspective.PerspectiveHead`); :class:`BEVFusion` runs it
            while training and adds its loss.

    ``forward(img [B, N, 3, H, W], points, camera2lidar [B, N, 4, 4], camera_intrinsics [B, N, 4, 4],
    img_aug_matrix [B, N, 4, 4], lidar_aug_matrix [B, 4, 4], return_features=False) -> [B, C_out, X, Y]``,
    or ``(bev, neck features [B, N, C, fH, fW])`` with ``return_features``.
    """

    def __init__(self, backbone: nn.Module, neck: nn.Module, vtransform: nn.Module, neck_index: int = 0,
                 aux_head: Optional[nn.Module] = None):
        super().__init__()
        self.backbone, self.neck, self.vtransform = backbone, neck, vtransform
        self.neck_index = int(neck_index)
        self.aux_head = aux_head

    def forward(self, img: torch.Tensor, points: Optional[Sequence[torch.Tensor]], camera2lidar: torch.Tensor,
                camera_intrinsics: torch.Tensor, img_aug_matrix: torch.Tensor,
                lidar_aug_matrix: torch.Tensor, return_features: bool = False):
        if not isinstance(img, torch.Tensor) or img.dim() != 5 or img.shape[2] != 3:
            raise ValueError(f"img must be [B, N, 3, H, W], got {getattr(img, 'shape', type(img))}")
        B, N = img.shape[:2]
        feats = self.neck(self.backbone(img.flatten(0, 1)))
        x = feats[self.neck_index] if isinstance(feats, (list, tuple)) else feats
        x = x.view(B, N, *x.shape[1:])
        bev = self.vtransform(x, points, camera2lidar, camera_intrinsics, img_aug_matrix, lidar_aug_matrix)
        return (bev, x) if return_features else bev
