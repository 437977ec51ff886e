r"""LSS view transforms: lift image features to a frustum of depth bins, splat them onto the BEV grid.

`Lift, Splat, Shoot <https://arxiv.org/abs/2008.05625>`_ as used by
`BEVFusion <https://arxiv.org/abs/2205.13542>`_ (``mmdet3d/models/vtransforms/{base,lss,depth_lss}.py``).

Geometry chain (:func:`frustum_geometry`), for a frustum point ``(u', v', d)`` in augmented-image pixels:

1. undo the image augmentation: ``(u, v, d) = post_rot^-1 ((u', v', d) - post_trans)`` with
   ``post_rot = img_aug_matrix[:3, :3]``, ``post_trans = img_aug_matrix[:3, 3]`` (the augmentation
   acts on the pixel coordinates only; its third row/column are the identity);
2. unproject: ``p_cam = K^-1 (u d, v d, d)``;
3. camera -> LiDAR: ``p = camera2lidar[:3, :3] p_cam + camera2lidar[:3, 3]``;
4. LiDAR augmentation: ``p' = lidar_aug[:3, :3] p + lidar_aug[:3, 3]``.

Cells are ``floor((p' - lower) / cell)`` per axis (BEVFusion truncates with ``.long()``, which
wrongly keeps points in ``(-1 cell, 0)``); points outside the grid are skipped. The depth x
context features are pooled with the fused :func:`sparse3d.nn.functional.bev_pool.bev_pool_depth`
(never building the ``[B*N*D*fH*fW, C]`` product) over a :class:`BEVPoolPlan` that is cached
while the calibration and augmentation matrices are unchanged.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ....nn.functional.bev_pool import BEVPoolCache, BEVPoolPlan, bev_pool_depth, bev_pool_with_plan

__all__ = ["create_frustum", "frustum_geometry", "grid_size", "geometry_to_cells", "points_to_image", "lidar_depth_map",
           "BaseTransform", "LSSTransform", "DepthLSSTransform"]

Bound = Sequence[float]


def create_frustum(image_size: Sequence[int], feature_size: Sequence[int], dbound: Bound,
                   dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``[D, fH, fW, 3]`` frustum ``(u, v, d)`` in augmented-image pixels (BEVFusion ``create_frustum``).

    ``u = linspace(0, iW - 1, fW)``, ``v = linspace(0, iH - 1, fH)``, ``d = arange(*dbound)``.
    """
    iH, iW = (int(s) for s in image_size)
    fH, fW = (int(s) for s in feature_size)
    ds = torch.arange(*(float(b) for b in dbound), dtype=torch.float64)
    if ds.numel() == 0 or float(ds[0]) <= 0:
        raise ValueError(f"dbound must give at least one positive depth (start, stop, step), got {tuple(dbound)}")
    D = ds.numel()
    d = ds.view(D, 1, 1).expand(D, fH, fW)
    u = torch.linspace(0, iW - 1, fW, dtype=torch.float64).view(1, 1, fW).expand(D, fH, fW)
    v = torch.linspace(0, iH - 1, fH, dtype=torch.float64).view(1, fH, 1).expand(D, fH, fW)
    return torch.stack((u, v, d), -1).to(dtype)


def _inv(m: torch.Tensor, name: str) -> torch.Tensor:
    inv, info = torch.linalg.inv_ex(m)
    bad = (info != 0) | ~torch.isfinite(inv).flatten(-2).all(-1)
    if bool(bad.any()):
        idx = [int(i) for i in bad.nonzero()[0]]
        raise ValueError(f"{name}{idx} is not invertible: {m[tuple(idx)].tolist()}")
    return inv


def _mat(m: torch.Tensor, name: str, lead: Tuple[int, ...], allow3: bool = False) -> torch.Tensor:
    """Checked float64 copy of a ``[*lead, 4, 4]`` (or, with ``allow3``, ``[*lead, 3, 3]``) matrix batch."""
    if not isinstance(m, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(m).__name__}")
    sizes = (3, 4) if allow3 else (4,)
    if tuple(m.shape[:-2]) != tuple(lead) or m.shape[-1] not in sizes or m.shape[-2] != m.shape[-1]:
        want = "[" + ", ".join(str(s) for s in lead) + ", 4, 4]" + (" or [..., 3, 3]" if allow3 else "")
        raise ValueError(f"{name} must have shape {want}, got {list(m.shape)}")
    if not bool(torch.isfinite(m).all()):
        raise ValueError(f"{name} has non-finite entries")
    return m.double()


def _mats(camera2lidar, camera_intrinsics, img_aug_matrix, lidar_aug_matrix, B: int, N: int):
    """float64 (camera2lidar [B,N,4,4], K [B,N,3,3], img_aug [B,N,4,4], lidar_aug [B,4,4]), shapes checked."""
    return (_mat(camera2lidar, "camera2lidar", (B, N)),
            _mat(camera_intrinsics, "camera_intrinsics", (B, N), allow3=True)[..., :3, :3],
            _mat(img_aug_matrix, "img_aug_matrix", (B, N)),
            _mat(lidar_aug_matrix, "lidar_aug_matrix", (B,)))


def _chain(camera2lidar, camera_intrinsics, img_aug_matrix, lidar_aug_matrix):
    """float64 (A, a, M, t) ``[B, N, 3(, 3)]``: undo the image aug ``A (q - a)``, then ``M (ud, vd, d) + t``."""
    if not isinstance(camera2lidar, torch.Tensor) or camera2lidar.dim() != 4:
        raise ValueError(f"camera2lidar must be [B, N, 4, 4], got {getattr(camera2lidar, 'shape', None)}")
    B, N = camera2lidar.shape[:2]
    c2l, K, aug, laug = _mats(camera2lidar, camera_intrinsics, img_aug_matrix, lidar_aug_matrix, B, N)
    A = _inv(aug[..., :3, :3], "img_aug_matrix")
    a = aug[..., :3, 3]
    Kinv = _inv(K, "camera_intrinsics")
    R = laug[:, None, :3, :3]
    M = R @ c2l[..., :3, :3] @ Kinv
    t = (R @ c2l[..., :3, 3:4]).squeeze(-1) + laug[:, None, :3, 3]
    return A, a, M, t


def frustum_geometry(frustum: torch.Tensor, camera2lidar: torch.Tensor, camera_intrinsics: torch.Tensor,
                     img_aug_matrix: torch.Tensor, lidar_aug_matrix: torch.Tensor) -> torch.Tensor:
    """LiDAR (augmented frame) coordinates of every frustum point (BEVFusion ``get_geometry``).

    Args:
        frustum: ``[D, fH, fW, 3]`` (u', v', d) from :func:`create_frustum`.
        camera2lidar: ``[B, N, 4, 4]``; camera_intrinsics: ``[B, N, 4, 4]`` or ``[B, N, 3, 3]``;
        img_aug_matrix: ``[B, N, 4, 4]``; lidar_aug_matrix: ``[B, 4, 4]``.
    Returns:
        ``[B, N, D, fH, fW, 3]`` (x, y, z) in the dtype of ``frustum``; the matrices are composed in float64.
    Raises:
        ValueError naming the matrix (and ``[b, n]``) if an intrinsic or augmentation matrix is singular.
    """
    A, a, M, t = _chain(camera2lidar, camera_intrinsics, img_aug_matrix, lidar_aug_matrix)
    dt = frustum.dtype
    f = frustum.to(A.device)
    # q = A (f - a): linear part applied to the frustum, offset -A a per camera
    B, N = A.shape[:2]
    shp = (B, N, 1, 1, 1, 3)
    q = torch.einsum("bnij,dhwj->bndhwi", A.to(dt), f) - (A @ a.unsqueeze(-1)).squeeze(-1).to(dt).view(shp)
    q = torch.cat((q[..., :2] * q[..., 2:3], q[..., 2:3]), -1)
    return torch.einsum("bnij,bndhwj->bndhwi", M.to(dt), q) + t.to(dt).view(shp)


def grid_size(xbound: Bound, ybound: Bound, zbound: Bound) -> Tuple[int, int, int]:
    """(X, Y, Z) cells of the grid ``bound = (lower, upper, cell)`` per axis (must divide evenly)."""
    out = []
    for name, b in (("xbound", xbound), ("ybound", ybound), ("zbound", zbound)):
        if len(b) != 3 or not float(b[2]) > 0 or not float(b[1]) > float(b[0]):
            raise ValueError(f"{name} must be (lower, upper, cell) with upper > lower and cell > 0, got {tuple(b)}")
        n = (float(b[1]) - float(b[0])) / float(b[2])
        if abs(n - round(n)) > 1e-6 * max(1.0, n):
            raise ValueError(f"{name}: (upper - lower) / cell = {n} is not an integer")
        out.append(int(round(n)))
    return out[0], out[1], out[2]


def geometry_to_cells(geom: torch.Tensor, xbound: Bound, ybound: Bound,
                      zbound: Bound) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``geom [B, N, D, fH, fW, 3]`` -> (cells ``[M, 3]`` int64 (x, y, z), batch ``[M]`` int64, valid ``[M]`` bool).

    ``M = B*N*D*fH*fW`` in the layout of ``geom``; ``cell = floor((p - lower) / cell_size)``;
    ``valid`` marks the points inside the grid.
    """
    X, Y, Z = grid_size(xbound, ybound, zbound)
    B = geom.shape[0]
    g = geom.reshape(-1, 3)
    lower = torch.tensor([xbound[0], ybound[0], zbound[0]], dtype=g.dtype, device=g.device)
    size = torch.tensor([xbound[2], ybound[2], zbound[2]], dtype=g.dtype, device=g.device)
    cells = torch.floor((g - lower) / size)
    hi = torch.tensor([X, Y, Z], dtype=g.dtype, device=g.device)
    valid = ((cells >= 0) & (cells < hi)).all(1)
    cells = torch.where(valid.unsqueeze(1), cells, torch.zeros_like(cells)).long()
    batch = torch.arange(B, device=g.device).repeat_interleave(g.shape[0] // max(B, 1))
    return cells, batch, valid


def points_to_image(points: Sequence[torch.Tensor], camera2lidar: torch.Tensor, camera_intrinsics: torch.Tensor,
                    img_aug_matrix: torch.Tensor, lidar_aug_matrix: torch.Tensor) -> List[torch.Tensor]:
    """Augmented-image coordinates of points, through the inverse of the frustum chain.

    A point ``p'`` (augmented LiDAR frame) -> ``lidar_aug^-1`` -> ``camera2lidar^-1`` -> ``K`` -> divide by depth
    -> ``img_aug``.

    Args:
        points: list of B tensors ``[P_b, >=3]`` (x, y, z, ...).
        camera2lidar ``[B, N, 4, 4]``, camera_intrinsics ``[B, N, 4, 4]`` or ``[B, N, 3, 3]``,
        img_aug_matrix ``[B, N, 4, 4]``, lidar_aug_matrix ``[B, 4, 4]``.
    Returns:
        list of B float64 tensors ``[N, P_b, 3]``: ``(u', v', depth)`` with depth the camera z in metres
        (``u', v'`` are meaningless where depth <= 0).
    """
    B, N = camera2lidar.shape[:2]
    if len(points) != B:
        raise ValueError(f"points must be a list of B={B} tensors, got {len(points)}")
    dev = camera2lidar.device
    c2l, K, aug, laug = _mats(camera2lidar, camera_intrinsics, img_aug_matrix, lidar_aug_matrix, B, N)
    l2c = _inv(c2l, "camera2lidar")
    linv = _inv(laug, "lidar_aug_matrix")
    out = []
    for b in range(B):
        p = points[b]
        if not isinstance(p, torch.Tensor) or p.dim() != 2 or p.shape[1] < 3:
            raise ValueError(f"points[{b}] must be a [P, >=3] tensor, got {getattr(p, 'shape', type(p))}")
        xyz = p[:, :3].to(dev, torch.float64)
        xyz = xyz @ linv[b, :3, :3].T + linv[b, :3, 3]
        cam = torch.einsum("nij,pj->npi", l2c[b, :, :3, :3], xyz) + l2c[b, :, None, :3, 3]  # [N, P, 3]
        pix = torch.einsum("nij,npj->npi", K[b], cam)
        d = cam[..., 2]
        uv = pix[..., :2] / pix[..., 2:3].clamp(min=1e-6)
        q = torch.cat((uv, d.unsqueeze(-1)), -1)
        out.append(torch.einsum("nij,npj->npi", aug[b, :, :3, :3], q) + aug[b, :, None, :3, 3])
    return out


def lidar_depth_map(points: Sequence[torch.Tensor], camera2lidar: torch.Tensor, camera_intrinsics: torch.Tensor,
                    img_aug_matrix: torch.Tensor, lidar_aug_matrix: torch.Tensor,
                    image_size: Sequence[int]) -> torch.Tensor:
    """Sparse LiDAR depth image per camera (points projected by :func:`points_to_image`).

    A point lands on pixel ``floor(u'), floor(v')``. Points with depth <= 1e-3 m or outside the image are
    dropped; when several land on a pixel the nearest wins.

    Args:
        points: list of B tensors ``[P_b, >=3]`` (x, y, z, ...).
        image_size: (iH, iW) of the augmented image.
    Returns:
        ``[B, N, 1, iH, iW]`` float32 depth (camera z, metres), 0 where no point.
    """
    B, N = camera2lidar.shape[:2]
    iH, iW = (int(s) for s in image_size)
    dev = camera2lidar.device
    out = torch.zeros(B, N, iH * iW, dtype=torch.float32, device=dev)
    for b, q in enumerate(points_to_image(points, camera2lidar, camera_intrinsics, img_aug_matrix,
                                          lidar_aug_matrix)):
        if q.shape[1] == 0:
            continue
        d = q[..., 2]
        u, v = torch.floor(q[..., 0]), torch.floor(q[..., 1])
        ok = (d > 1e-3) & (u >= 0) & (u < iW) & (v >= 0) & (v < iH)
        idx = (v * iW + u).long().clamp(0, iH * iW - 1)
        dd = torch.where(ok, d, torch.full_like(d, float("inf"))).float()
        m = torch.full((N, iH * iW), float("inf"), device=dev).scatter_reduce_(1, idx, dd, "amin")
        out[b] = torch.where(torch.isinf(m), torch.zeros_like(m), m)
    return out.view(B, N, 1, iH, iW)


def _conv_bn_relu(cin: int, cout: int, k: int, stride: int = 1) -> List[nn.Module]:
    return [nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False), nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True)]


class BaseTransform(nn.Module):
    """Frustum geometry, grid and cached BEV pooling shared by the LSS transforms.

    Args:
        in_channels: channels of the image features; out_channels: BEV channels ``C_out``.
        image_size: (iH, iW) network input; feature_size: (fH, fW) of the image features.
        xbound, ybound, zbound: ``(lower, upper, cell)`` metres; dbound: ``(start, stop, step)`` depth bins.
        downsample: 1 or 2 (BEVFusion's three 3x3 convs, the middle one strided).
        cache_geometry: reuse the pooling plan while the four matrices are unchanged.
    """

    def __init__(self, in_channels: int, out_channels: int, image_size: Sequence[int], feature_size: Sequence[int],
                 xbound: Bound, ybound: Bound, zbound: Bound, dbound: Bound, downsample: int = 1,
                 cache_geometry: bool = True):
        super().__init__()
        self.in_channels, self.C = int(in_channels), int(out_channels)
        self.image_size = tuple(int(s) for s in image_size)
        self.feature_size = tuple(int(s) for s in feature_size)
        if len(self.image_size) != 2 or len(self.feature_size) != 2 or min(self.image_size + self.feature_size) < 1:
            raise ValueError(f"image_size and feature_size must be (H, W), got {image_size}, {feature_size}")
        self.xbound, self.ybound, self.zbound, self.dbound = (tuple(float(v) for v in b)
                                                              for b in (xbound, ybound, zbound, dbound))
        self.nx = grid_size(self.xbound, self.ybound, self.zbound)
        self.register_buffer("frustum", create_frustum(self.image_size, self.feature_size, self.dbound),
                             persistent=False)
        self.D = self.frustum.shape[0]
        if downsample not in (1, 2):
            raise ValueError(f"downsample must be 1 or 2, got {downsample}")
        self.downsample_factor = int(downsample)
        cin = self.C * self.nx[2]
        if downsample == 2:
            self.downsample = nn.Sequential(*_conv_bn_relu(cin, self.C, 3), *_conv_bn_relu(self.C, self.C, 3, 2),
                                            *_conv_bn_relu(self.C, self.C, 3))
        elif cin != self.C:
            self.downsample = nn.Sequential(*_conv_bn_relu(cin, self.C, 1))
        else:
            self.downsample = nn.Identity()
        self.cache_geometry = bool(cache_geometry)
        self.plan_cache = BEVPoolCache(1)

    @property
    def bev_size(self) -> Tuple[int, int]:
        """(X, Y) of the output after downsampling."""
        s = self.downsample_factor
        return (self.nx[0] + s - 1) // s, (self.nx[1] + s - 1) // s

    def get_geometry(self, camera2lidar, camera_intrinsics, img_aug_matrix, lidar_aug_matrix) -> torch.Tensor:
        """``[B, N, D, fH, fW, 3]`` LiDAR coordinates of the frustum (see :func:`frustum_geometry`)."""
        return frustum_geometry(self.frustum, camera2lidar, camera_intrinsics, img_aug_matrix, lidar_aug_matrix)

    def get_plan(self, camera2lidar, camera_intrinsics, img_aug_matrix, lidar_aug_matrix) -> BEVPoolPlan:
        """Pooling plan of the frustum points (cached while the matrices are unchanged)."""
        key = (camera2lidar, camera_intrinsics, img_aug_matrix, lidar_aug_matrix)
        if self.cache_geometry:
            plan = self.plan_cache.get(key)
            if plan is not None:
                return plan
        geom = self.get_geometry(*key)
        cells, batch, valid = geometry_to_cells(geom, self.xbound, self.ybound, self.zbound)
        X, Y, Z = self.nx
        plan = BEVPoolPlan.build(cells, batch, geom.shape[0], X, Y, Z, valid=valid)
        if self.cache_geometry:
            self.plan_cache.put(key, plan)
        return plan

    def _check_feats(self, img_feats: torch.Tensor) -> Tuple[int, int]:
        if not isinstance(img_feats, torch.Tensor) or img_feats.dim() != 5:
            raise ValueError(f"img_feats must be [B, N, C, fH, fW], got {getattr(img_feats, 'shape', None)}")
        if tuple(img_feats.shape[3:]) != self.feature_size:
            raise ValueError(f"img_feats spatial size {tuple(img_feats.shape[3:])} != feature_size "
                             f"{self.feature_size}")
        return img_feats.shape[0], img_feats.shape[1]

    def splat(self, depth: torch.Tensor, context: torch.Tensor, plan: BEVPoolPlan, fused: bool = True) -> torch.Tensor:
        """``depth [BN, D, fH, fW]`` (softmax), ``context [BN, C, fH, fW]`` -> BEV ``[B, C*Z, X, Y]``."""
        BN, D, fH, fW = depth.shape
        d = depth.reshape(BN, D, fH * fW)
        c = context.flatten(2).transpose(1, 2)  # [BN, HW, C]
        if fused:
            bev = bev_pool_depth(d, c.contiguous(), plan)
        else:
            feats = (d.unsqueeze(-1) * c.unsqueeze(1)).reshape(-1, c.shape[2])
            bev = bev_pool_with_plan(feats, plan)
        return bev.flatten(1, 2)

    def depth_and_context(self, img_feats: torch.Tensor, points, camera2lidar, camera_intrinsics, img_aug_matrix,
                          lidar_aug_matrix) -> Tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def forward(self, img_feats: torch.Tensor, points: Optional[Sequence[torch.Tensor]], camera2lidar: torch.Tensor,
                camera_intrinsics: torch.Tensor, img_aug_matrix: torch.Tensor, lidar_aug_matrix: torch.Tensor,
                fused: bool = True) -> torch.Tensor:
        """Args: img_feats ``[B, N, C_in, fH, fW]``; points list of B ``[P, >=3]`` (augmented LiDAR frame; used
        by DepthLSS only); matrices as in :func:`frustum_geometry`. Returns ``[B, C_out, X, Y]``."""
        B, N = self._check_feats(img_feats)
        _mats(camera2lidar, camera_intrinsics, img_aug_matrix, lidar_aug_matrix, B, N)
        depth, context = self.depth_and_context(img_feats, points, camera2lidar, camera_intrinsics, img_aug_matrix,
                                                lidar_aug_matrix)
        plan = self.get_plan(camera2lidar, camera_intrinsics, img_aug_matrix, lidar_aug_matrix)
        if plan.device != depth.device:
            plan = plan.to(depth.device)
        return self.downsample(self.splat(depth, context, plan, fused))


class LSSTransform(BaseTransform):
    """LSS: a 1x1 ``depthnet`` -> ``D`` depth logits (softmax) + ``C_out`` context channels.

    ``forward(img_feats [B, N, C_in, fH, fW], points, camera2lidar, camera_intrinsics, img_aug_matrix,
    lidar_aug_matrix) -> [B, C_out, X, Y]`` (``points`` is ignored).
    """

    def __init__(self, in_channels: int, out_channels: int, image_size, feature_size, xbound, ybound, zbound, dbound,
                 downsample: int = 1, cache_geometry: bool = True):
        super().__init__(in_channels, out_channels, image_size, feature_size, xbound, ybound, zbound, dbound,
                         downsample, cache_geometry)
        self.depthnet = nn.Conv2d(self.in_channels, self.D + self.C, 1)

    def depth_and_context(self, img_feats, points, camera2lidar, camera_intrinsics, img_aug_matrix, lidar_aug_matrix):
        B, N, C, fH, fW = img_feats.shape
        x = self.depthnet(img_feats.reshape(B * N, C, fH, fW))
        return x[:, :self.D].softmax(dim=1), x[:, self.D:self.D + self.C]


def _depth_strides(s: int) -> Tuple[int, int]:
    s1 = 4 if s >= 8 else max(1, s // 2)
    return s1, max(1, s // s1)


class DepthLSSTransform(BaseTransform):
    """LSS with LiDAR depth: the sparse depth image (:func:`lidar_depth_map`) goes through ``dtransform``
    (1 -> 8 -> 32 (stride 4) -> 64 (stride 2) for stride-8 features) and is concatenated with the image
    features before a 3x3, 3x3, 1x1 ``depthnet`` (BEVFusion ``DepthLSSTransform`` before commit d0152cf).

    ``forward(img_feats, points, camera2lidar, camera_intrinsics, img_aug_matrix, lidar_aug_matrix)
    -> [B, C_out, X, Y]``; ``points`` is a list of B ``[P, >=3]`` tensors in the augmented LiDAR frame.
    """

    def __init__(self, in_channels: int, out_channels: int, image_size, feature_size, xbound, ybound, zbound, dbound,
                 downsample: int = 1, cache_geometry: bool = True):
        super().__init__(in_channels, out_channels, image_size, feature_size, xbound, ybound, zbound, dbound,
                         downsample, cache_geometry)
        s = max(1, round(self.image_size[0] / self.feature_size[0]))
        s1, s2 = _depth_strides(s)
        self.dtransform = nn.Sequential(
            nn.Conv2d(1, 8, 1), nn.BatchNorm2d(8), nn.ReLU(True),
            nn.Conv2d(8, 32, 5, stride=s1, padding=2), nn.BatchNorm2d(32), nn.ReLU(True),
            nn.Conv2d(32, 64, 5, stride=s2, padding=2), nn.BatchNorm2d(64), nn.ReLU(True))
        c = self.in_channels
        self.depthnet = nn.Sequential(
            nn.Conv2d(c + 64, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(True),
            nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(True),
            nn.Conv2d(c, self.D + self.C, 1))

    def depth_and_context(self, img_feats, points, camera2lidar, camera_intrinsics, img_aug_matrix, lidar_aug_matrix):
        B, N, C, fH, fW = img_feats.shape
        if points is None:
            raise ValueError("DepthLSSTransform needs points (a list of B [P, >=3] tensors)")
        dmap = lidar_depth_map(points, camera2lidar, camera_intrinsics, img_aug_matrix, lidar_aug_matrix,
                               self.image_size).to(img_feats.dtype)
        d = self.dtransform(dmap.view(B * N, 1, *self.image_size))
        if tuple(d.shape[-2:]) != (fH, fW):
            d = F.interpolate(d, size=(fH, fW), mode="bilinear", align_corners=False)
        x = self.depthnet(torch.cat([d, img_feats.reshape(B * N, C, fH, fW)], 1))
        return x[:, :self.D].softmax(dim=1), x[:, self.D:self.D + self.C]
