r"""Box-frame (RoI) refinement of the heading direction and the velocity, a light second stage for the TransFusion
head (cf. CenterPoint's two-stage refinement, which samples BEV features at points of each first-stage box).

Why: a box's *axis* is visible in its shape, but which end is the front is a small cue (a lower bonnet, the side
the older sweeps trail behind on), and its position in the BEV map depends on the heading. Per-query regression of
(sin, cos) or of (vx, vy) then faces two-sided targets and settles at ~0 (the L1 / L2 optimum of ``±t``). Sampled
in the frame of the predicted axis, the same cue sits at fixed sample positions (front samples first), so a small
MLP reads it directly: a logit "the heading is the reverse of the axis direction" and the velocity in box
coordinates (forward, left).

Conventions: BEV maps ``[B, C, X, Y]`` over ``point_cloud_range[:2]`` (dim 2 = LiDAR x); boxes by centre
``(x, y)`` metres, size ``(l, w)`` metres (``l`` along the heading) and yaw (rad, counter-clockwise from +x).
Samples ``s = i * nv + j``: ``i`` along the heading from back (``i = 0``) to front, ``j`` from right to left.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..lidar.sparse_encoder import time_binned_means

__all__ = ["BoxFrameRefiner", "roi_raster", "box_sample_uv", "box_sample_points", "sample_bev"]


def roi_raster(points: Sequence[torch.Tensor], time_bins: Sequence[float], point_cloud_range: Sequence[float],
               shape: Sequence[int]) -> torch.Tensor:
    """``[B, 2 T, X, Y]`` float32 per Δt bin: ``log1p`` point count (channels ``0..T-1``), then the mean height of
    those points scaled to ``[0, 1]`` over the range's z extent (``T..2T-1``; 0 where empty).

    Args:
        points: B tensors ``[P_i, >=5]`` (x, y, z, intensity, Δt); points outside the range or the bins are skipped.
        time_bins: increasing Δt edges (s), ``T = len - 1``. shape: ``(X, Y)`` cells over the range.
    """
    z0, z1 = float(point_cloud_range[2]), float(point_cloud_range[5])
    return time_binned_means(points, time_bins, point_cloud_range, shape, lambda fx, fy, z: [(z - z0) / (z1 - z0)], 1,
                             "BoxFrameRefiner: points")


def box_sample_uv(sizes: torch.Tensor, samples: Sequence[int], margin: Sequence[float]):
    """Box-frame sample coordinates ``(u, v)``, each ``[B, Q, nu * nv]`` metres (``u`` forward, ``v`` left) of
    :func:`box_sample_points` for ``sizes`` ``[B, Q, 2]`` (l, w)."""
    nu, nv = int(samples[0]), int(samples[1])
    dt = sizes.dtype
    fu = (torch.arange(nu, dtype=dt, device=sizes.device) + 0.5) / nu - 0.5    # [nu] in (-0.5, 0.5)
    fv = (torch.arange(nv, dtype=dt, device=sizes.device) + 0.5) / nv - 0.5
    u = fu[:, None].expand(nu, nv).reshape(-1) * (sizes[..., :1] + 2 * margin[0])  # [B, Q, S]
    v = fv[None, :].expand(nu, nv).reshape(-1) * (sizes[..., 1:2] + 2 * margin[1])
    return u, v


def box_sample_points(centers: torch.Tensor, sizes: torch.Tensor, yaw: torch.Tensor, samples: Sequence[int],
                      margin: Sequence[float]) -> torch.Tensor:
    """``[B, Q, nu * nv, 2]`` metres: an ``nu x nv`` grid of cell centres over each box grown by ``margin``
    ``(mu, mv)`` metres on every side (``nu`` along the heading, back to front; ``nv`` across, right to left).

    Args:
        centers: ``[B, Q, 2]``; sizes: ``[B, Q, 2]`` (l, w); yaw: ``[B, Q]``.
    """
    u, v = box_sample_uv(sizes, samples, margin)
    c, s = torch.cos(yaw)[..., None], torch.sin(yaw)[..., None]
    return torch.stack([centers[..., :1] + u * c - v * s, centers[..., 1:2] + u * s + v * c], -1)


def sample_bev(bev: torch.Tensor, xy: torch.Tensor, point_cloud_range: Sequence[float]) -> torch.Tensor:
    """Bilinear samples ``[B, C, Q, S]`` of ``bev`` ``[B, C, X, Y]`` (cell ``(i, j)`` centred at
    ``range_min + (i + 0.5, j + 0.5) * cell``) at ``xy`` ``[B, Q, S, 2]`` metres; 0 outside the map."""
    x0, y0, x1, y1 = (float(point_cloud_range[k]) for k in (0, 1, 3, 4))
    gx = (xy[..., 0] - x0) / (x1 - x0) * 2 - 1   # along X = grid_sample's H
    gy = (xy[..., 1] - y0) / (y1 - y0) * 2 - 1   # along Y = grid_sample's W
    grid = torch.stack([gy, gx], -1).to(bev.dtype)
    return F.grid_sample(bev, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


class BoxFrameRefiner(nn.Module):
    """Heading direction and velocity of each query box, read in the box's own frame.

    ``forward(feat [B, C, X, Y], points: list of B [P_i, >=5], centers [B, Q, 2] m, sizes [B, Q, 2] (l, w) m,
    yaw [B, Q], raster=None) -> {"dir": [B, Q] logit that the heading is yaw + pi, "vel": [B, Q, 2] (forward,
    left) m/s in the frame of yaw, "raster": the point raster [B, 2T, X', Y'] (pass it back to skip
    rebuilding it)}``. Box inputs are treated as constants (no gradient through the sample positions).

    Training (:meth:`gt_loss`) runs on the ground-truth boxes, jittered and with the axis reversed at random, not
    on the first stage's proposals: from the first step the samples sit on real objects (early proposals are
    noise, on which an MLP learns only constants), and every box is a training example.

    Args:
        feat_channels: C of ``feat`` (the head's shared features); 0 to read only the point raster.
        point_cloud_range: of the BEV maps. raster_shape: ``(X, Y)`` of the point raster (finer than ``feat``
            resolves short trails: 0.4 m cells on a +-51.2 m range is ``(256, 256)``).
        time_bins: Δt edges of the raster (:func:`roi_raster`).
        samples: ``(nu, nv)`` sample grid; margin: ``(mu, mv)`` metres added on each side (the trail of a moving
            object lies behind it: 10 m/s over a 0.45 s sweep window is 4.5 m).
        hidden: MLP width. detach_features: sample ``feat.detach()`` so these losses train only this module.
        dir_weight, vel_weight: loss weights; vel_loss: ``"l1"`` or ``"l2"`` on the box-frame velocity.
        jitter: std of the training boxes' centre (m), yaw (rad) and log size noise, so that the module also
            reads proposals that are a little off.
        centroids: also give the MLP, per Δt bin, the count-weighted mean box-frame position ``(u, v)`` (m) of the
            sampled raster and its ``log1p`` total: the trail of a moving object as ``T`` centroids, so that the
            velocity is about a linear function of the input.
    """

    def __init__(self, feat_channels: int, point_cloud_range: Sequence[float], raster_shape: Sequence[int],
                 time_bins: Sequence[float] = (0.0, 0.025, 0.125, 0.275, 0.5), samples: Sequence[int] = (12, 4),
                 margin: Sequence[float] = (1.5, 0.3), hidden: int = 128, detach_features: bool = True,
                 dir_weight: float = 1.0, vel_weight: float = 0.25, vel_loss: str = "l1",
                 jitter: Sequence[float] = (0.2, 0.15, 0.1), centroids: bool = False) -> None:
        super().__init__()
        pcr = [float(v) for v in point_cloud_range]
        if len(pcr) != 6 or not all(math.isfinite(v) for v in pcr) or pcr[3] <= pcr[0] or pcr[4] <= pcr[1] \
                or pcr[5] <= pcr[2]:
            raise ValueError(f"point_cloud_range must be 6 finite values with max > min, got {point_cloud_range!r}")
        tb = [float(t) for t in time_bins]
        if len(tb) < 2 or any(not math.isfinite(t) for t in tb) or any(b <= a for a, b in zip(tb, tb[1:])):
            raise ValueError(f"time_bins must be >= 2 increasing finite Δt edges (seconds), got {time_bins!r}")
        for name, v in (("raster_shape", raster_shape), ("samples", samples)):
            if len(v) != 2 or any(int(a) != a or a < 1 for a in v):
                raise ValueError(f"{name} must be two positive ints, got {v!r}")
        if len(margin) != 2 or min(margin) < 0:
            raise ValueError(f"margin must be two values >= 0 (metres), got {margin!r}")
        if int(feat_channels) != feat_channels or feat_channels < 0 or int(hidden) != hidden or hidden < 1:
            raise ValueError(f"feat_channels must be an int >= 0 and hidden a positive int, got {feat_channels}, "
                             f"{hidden}")
        if vel_loss not in ("l1", "l2") or not (dir_weight >= 0 and vel_weight >= 0):
            raise ValueError(f"need vel_loss 'l1' / 'l2' and weights >= 0, got {vel_loss!r}, {dir_weight}, "
                             f"{vel_weight}")
        self.point_cloud_range, self.time_bins = pcr, tb
        self.raster_shape = (int(raster_shape[0]), int(raster_shape[1]))
        self.samples, self.margin = (int(samples[0]), int(samples[1])), (float(margin[0]), float(margin[1]))
        self.feat_channels, self.detach_features = int(feat_channels), bool(detach_features)
        self.dir_weight, self.vel_weight, self.vel_loss = float(dir_weight), float(vel_weight), vel_loss
        if len(jitter) != 3 or min(jitter) < 0:
            raise ValueError(f"jitter must be 3 values >= 0 (centre m, yaw rad, log size), got {jitter!r}")
        self.jitter = tuple(float(j) for j in jitter)
        n_ch = self.feat_channels + 2 * (len(tb) - 1)
        n_in = n_ch * self.samples[0] * self.samples[1]
        self.input_norm = nn.BatchNorm2d(n_ch)   # per channel over (query, sample): counts, heights and features
        self.centroids = bool(centroids)
        if self.centroids:
            n_in += 3 * (len(tb) - 1)
        self.mlp = nn.Sequential(nn.Linear(n_in, hidden), nn.LayerNorm(hidden), nn.ReLU(inplace=True),
                                 nn.Linear(hidden, hidden), nn.ReLU(inplace=True))
        self.dir = nn.Linear(hidden, 1)
        self.vel = nn.Linear(hidden, 2)

    def forward(self, feat: torch.Tensor | None, points: Sequence[torch.Tensor], centers: torch.Tensor,
                sizes: torch.Tensor, yaw: torch.Tensor, raster: torch.Tensor | None = None) -> dict:
        B, Q = yaw.shape
        if centers.shape != (B, Q, 2) or sizes.shape != (B, Q, 2):
            raise ValueError(f"centers and sizes must be [{B}, {Q}, 2], got {tuple(centers.shape)}, "
                             f"{tuple(sizes.shape)}")
        dt = self.dir.weight.dtype
        xy = box_sample_points(centers.detach().to(dt), sizes.detach().to(dt), yaw.detach().to(dt), self.samples,
                               self.margin)
        if raster is None:
            if not isinstance(points, (list, tuple)) or len(points) != B:
                raise ValueError(f"points must be a list of {B} [P_i, >=5] tensors (x, y, z, intensity, Δt)")
            raster = roi_raster(points, self.time_bins, self.point_cloud_range, self.raster_shape)
        elif raster.shape != (B, 2 * (len(self.time_bins) - 1), *self.raster_shape):
            raise ValueError(f"raster must be [{B}, {2 * (len(self.time_bins) - 1)}, {self.raster_shape[0]}, "
                             f"{self.raster_shape[1]}], got {tuple(raster.shape)}")
        raster = raster.to(xy.device, dt)
        parts = [sample_bev(raster, xy, self.point_cloud_range)]                 # [B, 2T, Q, S]
        extra = self.centroid_features(parts[0], sizes.detach().to(dt)) if self.centroids else None
        if self.feat_channels:
            if feat is None or feat.shape[:2] != (B, self.feat_channels):
                raise ValueError(f"feat must be [{B}, {self.feat_channels}, X, Y], got "
                                 f"{None if feat is None else tuple(feat.shape)}")
            f = feat.detach() if self.detach_features else feat
            parts.append(sample_bev(f.to(dt), xy, self.point_cloud_range))
        x = self.input_norm(torch.cat(parts, 1)).permute(0, 2, 1, 3).reshape(B, Q, -1)   # [B, Q, C * S]
        if extra is not None:
            x = torch.cat([x, extra.transpose(1, 2)], -1)
        h = self.mlp(x)
        return {"dir": self.dir(h)[..., 0], "vel": self.vel(h), "raster": raster}

    def centroid_features(self, samples: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
        """``[B, 3 T, Q]``: per Δt bin the count-weighted mean ``u``, mean ``v`` (m, box frame; 0 without points) and
        ``log1p`` of the summed counts of the raster ``samples`` ``[B, 2 T, Q, S]`` (counts are ``expm1`` of the
        first T channels) of boxes with ``sizes`` ``[B, Q, 2]``."""
        T = len(self.time_bins) - 1
        cnt = torch.expm1(samples[:, :T]).clamp(min=0)                   # [B, T, Q, S]
        u, v = box_sample_uv(sizes, self.samples, self.margin)          # [B, Q, S]
        tot = cnt.sum(-1)                                                 # [B, T, Q]
        mu = (cnt * u[:, None]).sum(-1) / tot.clamp(min=1e-6)
        mv = (cnt * v[:, None]).sum(-1) / tot.clamp(min=1e-6)
        return torch.cat([mu, mv, torch.log1p(tot)], 1)

    @staticmethod
    def to_box_frame(v: torch.Tensor, yaw: torch.Tensor) -> torch.Tensor:
        """``v [..., 2]`` (x, y) -> (forward, left) in the frame of ``yaw [...]``."""
        c, s = torch.cos(yaw), torch.sin(yaw)
        return torch.stack([c * v[..., 0] + s * v[..., 1], -s * v[..., 0] + c * v[..., 1]], -1)

    @staticmethod
    def from_box_frame(v: torch.Tensor, yaw: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`to_box_frame`."""
        c, s = torch.cos(yaw), torch.sin(yaw)
        return torch.stack([c * v[..., 0] - s * v[..., 1], s * v[..., 0] + c * v[..., 1]], -1)

    def loss(self, dir_logit: torch.Tensor, vel: torch.Tensor, yaw: torch.Tensor, gt_yaw: torch.Tensor,
             gt_vel: torch.Tensor, avg_factor: float) -> dict:
        """Summed over ``N`` matched queries, divided by ``avg_factor``: ``loss_dir`` = BCE of ``dir_logit [N]``
        against ``cos(gt_yaw - yaw) < 0``; ``loss_vel`` = L1 / L2 of ``vel [N, 2]`` against ``gt_vel [N, 2]``
        (x, y) turned into the frame of ``yaw [N]`` (the sampling frame)."""
        flip = (torch.cos(gt_yaw - yaw) < 0).to(dir_logit.dtype)
        bce = F.binary_cross_entropy_with_logits(dir_logit, flip, reduction="sum")
        err = vel - self.to_box_frame(gt_vel.to(vel.dtype), yaw.to(vel.dtype))
        err = err.abs() if self.vel_loss == "l1" else err.square()
        a = max(float(avg_factor), 1.0)
        return {"loss_dir": self.dir_weight * bce / a, "loss_vel": self.vel_weight * err.sum() / a}

    def gt_loss(self, feat: torch.Tensor | None, raster: torch.Tensor, gt_boxes: Sequence[torch.Tensor],
                generator: torch.Generator | None = None) -> dict:
        """``loss_dir`` / ``loss_vel`` (:meth:`loss`, averaged over all boxes) on the ground truth: each box of
        ``gt_boxes`` (B tensors ``[M_i, 9]`` (x, y, z, l, w, h, yaw, vx, vy)) jittered by ``jitter`` and read in the
        frame of its yaw reversed with probability 1/2. ``feat`` ``[B, C, X, Y]`` / ``raster`` as :meth:`forward`."""
        if len(gt_boxes) != raster.shape[0]:
            raise ValueError(f"gt_boxes must be a list of {raster.shape[0]} [M_i, 9] tensors, got {len(gt_boxes)}")
        total = sum(int(b.shape[0]) for b in gt_boxes)
        zero = raster.new_zeros(()) + 0 * sum(p.sum() for p in self.parameters())   # keeps DDP's graph whole
        dev = raster.device
        out = {"loss_dir": zero, "loss_vel": zero}
        for b, gt in enumerate(gt_boxes):
            if not len(gt):
                continue
            gt = gt.detach().to(dev, torch.float32)
            M = gt.shape[0]
            noise = torch.randn(M, 5, generator=generator).to(dev)
            flip = (torch.rand(M, generator=generator) < 0.5).to(dev, torch.float32)
            centers = gt[:, :2] + self.jitter[0] * noise[:, :2]
            sizes = gt[:, 3:5] * torch.exp(self.jitter[2] * noise[:, 2:4])
            yaw = gt[:, 6] + math.pi * flip + self.jitter[1] * noise[:, 4]
            r = self(None if feat is None else feat[b:b + 1], None, centers[None], sizes[None], yaw[None],
                     raster=raster[b:b + 1])
            part = self.loss(r["dir"][0], r["vel"][0], yaw, gt[:, 6], gt[:, 7:9], avg_factor=total)
            out = {k: out[k] + part[k] for k in out}
        return out
