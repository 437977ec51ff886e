"""Box coder of the TransFusion head (cf. upstream ``TransFusionBBoxCoder``), in the sparse3d box convention.

Boxes are ``(x, y, z, l, w, h, yaw, vx, vy)`` in the (augmented) LiDAR frame: metres, ``z`` is the box centre
(as the nuScenes devkit gives it — no bottom/gravity-centre shift, unlike pre-refactor mmdet3d), ``l`` along the
heading, ``yaw`` in radians counter-clockwise about +z from +x, velocity in m/s.

Codes are ``(cx, cy, z, log l, log w, log h, sin yaw, cos yaw, vx, vy)`` where ``(cx, cy)`` is the centre in
continuous BEV-feature-cell units measured from ``pc_range[:2]``: cell ``(ix, iy)`` spans ``[ix, ix+1) x [iy, iy+1)``
and its centre is ``(ix + 0.5, iy + 0.5)``. One cell is ``voxel_size[:2] * out_size_factor`` metres.
"""
from __future__ import annotations

from typing import Sequence

import torch

__all__ = ["TransFusionBBoxCoder"]


class TransFusionBBoxCoder:
    """Encode / decode 9-dof LiDAR boxes to TransFusion regression codes.

    Args:
        pc_range: ``(x_min, y_min, z_min, x_max, y_max, z_max)`` metres of the BEV grid.
        voxel_size: ``(vx, vy[, vz])`` metres of the input voxels.
        out_size_factor: BEV feature stride in voxels (cell = voxel_size * out_size_factor).
    """

    code_size = 10
    box_size = 9

    def __init__(self, pc_range: Sequence[float], voxel_size: Sequence[float], out_size_factor: int = 8):
        pc_range = [float(v) for v in pc_range]
        voxel_size = [float(v) for v in voxel_size]
        if len(pc_range) != 6:
            raise ValueError(f"pc_range must have 6 values (x_min, y_min, z_min, x_max, y_max, z_max), got {pc_range}")
        if len(voxel_size) not in (2, 3) or min(voxel_size) <= 0:
            raise ValueError(f"voxel_size must be 2 or 3 positive values, got {voxel_size}")
        if int(out_size_factor) != out_size_factor or out_size_factor < 1:
            raise ValueError(f"out_size_factor must be a positive int, got {out_size_factor}")
        if pc_range[3] <= pc_range[0] or pc_range[4] <= pc_range[1]:
            raise ValueError(f"pc_range max must exceed min, got {pc_range}")
        self.pc_range = pc_range
        self.voxel_size = voxel_size
        self.out_size_factor = int(out_size_factor)
        self.cell_size = (voxel_size[0] * self.out_size_factor, voxel_size[1] * self.out_size_factor)
        self.grid_size = tuple(int(round((pc_range[3 + i] - pc_range[i]) / self.cell_size[i])) for i in range(2))

    def __repr__(self) -> str:
        return (f"TransFusionBBoxCoder(pc_range={self.pc_range}, voxel_size={self.voxel_size}, "
                f"out_size_factor={self.out_size_factor})")

    def to_cells(self, xy: torch.Tensor) -> torch.Tensor:
        """Metres ``[..., 2]`` -> continuous cell coordinates ``[..., 2]``."""
        origin = xy.new_tensor(self.pc_range[:2])
        return (xy - origin) / xy.new_tensor(self.cell_size)

    def from_cells(self, cells: torch.Tensor) -> torch.Tensor:
        """Continuous cell coordinates ``[..., 2]`` -> metres ``[..., 2]``."""
        return cells * cells.new_tensor(self.cell_size) + cells.new_tensor(self.pc_range[:2])

    def encode(self, boxes: torch.Tensor) -> torch.Tensor:
        """``boxes [..., 9]`` float -> ``codes [..., 10]``. Sizes must be positive (ValueError otherwise)."""
        if boxes.shape[-1] != self.box_size:
            raise ValueError(f"boxes must be [..., 9] (x, y, z, l, w, h, yaw, vx, vy), got shape {tuple(boxes.shape)}")
        if not boxes.is_floating_point():
            raise TypeError(f"boxes must be a float tensor, got {boxes.dtype}")
        if boxes.numel() and not bool((boxes[..., 3:6] > 0).all()):
            raise ValueError("boxes: sizes (l, w, h) must be > 0 to be log-encoded")
        return torch.cat([
            self.to_cells(boxes[..., 0:2]), boxes[..., 2:3], boxes[..., 3:6].log(),
            torch.sin(boxes[..., 6:7]), torch.cos(boxes[..., 6:7]), boxes[..., 7:9],
        ], -1)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """``codes [..., 10]`` -> ``boxes [..., 9]`` (yaw = atan2(sin, cos) in (-pi, pi])."""
        if codes.shape[-1] != self.code_size:
            raise ValueError(f"codes must be [..., 10], got shape {tuple(codes.shape)}")
        return torch.cat([
            self.from_cells(codes[..., 0:2]), codes[..., 2:3], codes[..., 3:6].exp(),
            torch.atan2(codes[..., 6:7], codes[..., 7:8]), codes[..., 8:10],
        ], -1)
