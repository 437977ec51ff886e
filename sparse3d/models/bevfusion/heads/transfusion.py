r"""TransFusion detection head (Bai et al., "TransFusion: Robust LiDAR-Camera Fusion for 3D Object Detection with
Transformers", CVPR 2022, https://arxiv.org/abs/2203.11496), as used by BEVFusion — one decoder layer.

Pipeline: shared 3x3 conv -> class heatmap -> local maxima (3x3 max-pool NMS; kernel 1 for small classes) ->
top-K proposals over all classes -> query = BEV feature at the proposal + class embedding -> one transformer
decoder layer (self-attention among queries, cross-attention to the whole BEV map, FFN; learned positional
embeddings of BEV cell coordinates) -> per-query branches: center (2, offset added to the proposal cell centre),
height (1), log dims (3), rot (sin, cos), vel (2), class logits (C).

Conventions (see ``box_coder.py``): BEV input ``[B, C, X, Y]`` (dim 2 = LiDAR x), flattened index ``ix * Y + iy``,
query positions in cell units ``(ix + 0.5, iy + 0.5)``; boxes ``(x, y, z, l, w, h, yaw, vx, vy)`` with centre ``z``.
Differences from upstream, on purpose: the query labels are returned in the prediction dict instead of being
kept as module state; the heatmap target is ``[C, X, Y]`` with no axis swap (upstream swaps, valid only for square
grids); border cells can be local maxima; the small-class indices are an argument (upstream hard-codes 8, 9 of
its own class order); input channels and grid size are checked against the configuration.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .assigner import HungarianAssigner3D
from .box_coder import TransFusionBBoxCoder
from .gaussian import draw_heatmap_gaussian, gaussian_radius
from .heading import HeadingBins
from .roi import BoxFrameRefiner
from .losses import clip_sigmoid, gaussian_focal_loss, sigmoid_focal_loss, weighted_l1_loss

__all__ = ["TransFusionHead", "TransformerDecoderLayer", "PositionEmbeddingLearned", "PredictionHead"]

HEAD_KEYS = ("center", "height", "dim", "rot", "vel")


class PositionEmbeddingLearned(nn.Module):
    """Learned embedding of 2D positions: ``xy [B, P, 2] -> [B, F, P]`` (Conv1d-BN-ReLU-Conv1d)."""

    def __init__(self, in_channels: int = 2, num_pos_feats: int = 128):
        super().__init__()
        self.net = nn.Sequential(nn.Conv1d(in_channels, num_pos_feats, 1), nn.BatchNorm1d(num_pos_feats),
                                 nn.ReLU(inplace=True), nn.Conv1d(num_pos_feats, num_pos_feats, 1))

    def forward(self, xy: torch.Tensor) -> torch.Tensor:
        return self.net(xy.transpose(1, 2).contiguous())


class TransformerDecoderLayer(nn.Module):
    """Post-norm decoder layer with positional embeddings added to queries and keys (upstream layout).

    ``forward(query [B, C, Pq], key [B, C, Pk], query_pos [B, Pq, 2], key_pos [B, Pk, 2]) -> [B, C, Pq]``.
    """

    def __init__(self, d_model: int, num_heads: int = 8, ffn_channels: int = 256, dropout: float = 0.1):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, num_heads, dropout=dropout, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(d_model, num_heads, dropout=dropout, batch_first=True)
        self.linear1 = nn.Linear(d_model, ffn_channels)
        self.linear2 = nn.Linear(ffn_channels, d_model)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(d_model), nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.dropout, self.dropout1 = nn.Dropout(dropout), nn.Dropout(dropout)
        self.dropout2, self.dropout3 = nn.Dropout(dropout), nn.Dropout(dropout)
        self.self_posembed = PositionEmbeddingLearned(2, d_model)
        self.cross_posembed = PositionEmbeddingLearned(2, d_model)

    def forward(self, query, key, query_pos, key_pos):
        q_embed = self.self_posembed(query_pos).transpose(1, 2)  # [B, Pq, C]
        k_embed = self.cross_posembed(key_pos).transpose(1, 2)  # [B, Pk, C]
        query, key = query.transpose(1, 2), key.transpose(1, 2)
        q = query + q_embed
        query = self.norm1(query + self.dropout1(self.self_attn(q, q, q, need_weights=False)[0]))
        k = key + k_embed
        query = self.norm2(query + self.dropout2(self.cross_attn(query + q_embed, k, k, need_weights=False)[0]))
        ffn = self.linear2(self.dropout(F.relu(self.linear1(query))))
        query = self.norm3(query + self.dropout3(ffn))
        return query.transpose(1, 2)


class PredictionHead(nn.Module):
    """Per-query branches (upstream ``SeparateHead`` with Conv1d): ``[B, C, P] -> {name: [B, out, P]}``."""

    def __init__(self, in_channels: int, heads: dict, head_channels: int = 64, heatmap_bias: float = -2.19):
        super().__init__()
        self.names = list(heads)
        for name, out in heads.items():
            branch = nn.Sequential(nn.Conv1d(in_channels, head_channels, 1, bias=False), nn.BatchNorm1d(head_channels),
                                   nn.ReLU(inplace=True), nn.Conv1d(head_channels, out, 1))
            if name == "heatmap":
                nn.init.constant_(branch[-1].bias, heatmap_bias)
            self.add_module(name, branch)

    def forward(self, x: torch.Tensor) -> dict:
        return {name: getattr(self, name)(x) for name in self.names}


class TransFusionHead(nn.Module):
    """TransFusion head with one decoder layer.

    Args:
        in_channels: channels of the BEV input ``[B, in_channels, X, Y]``.
        num_classes: detection classes (nuScenes: 10, in ``DETECTION_CLASSES`` order).
        num_proposals: queries per sample (upstream 200; tiny 30–50).
        hidden_channels: query / shared-conv width (upstream 128; tiny 64).
        num_heads, ffn_channels, dropout: decoder layer (upstream 8, 256, 0.1).
        head_channels: hidden width of each prediction branch (upstream 64).
        nms_kernel_size: odd max-pool kernel for local maxima (upstream 3).
        nms_exempt_classes: class indices with kernel 1 (every cell a candidate); default ``(5, 8)`` =
            pedestrian, traffic_cone in ``DETECTION_CLASSES`` order. Pass ``()`` for other class sets.
        bbox_coder: :class:`TransFusionBBoxCoder` of the BEV grid (required; fixes ``X, Y``).
        assigner: :class:`HungarianAssigner3D` (default: upstream costs over ``bbox_coder.pc_range``).
        code_weights: 10 L1 weights of (cx, cy, z, log l, log w, log h, sin, cos, vx, vy).
        loss_cls_weight, loss_bbox_weight, loss_heatmap_weight: upstream 1.0, 0.25, 1.0.
        focal_alpha, focal_gamma: classification focal loss (0.25, 2).
        gaussian_overlap, min_radius: heatmap target (0.1, 2).
        dense_keys: regression branches (a subset of ``("rot", "vel")``) predicted CenterPoint-style on the
            dense BEV map instead of per query: a conv branch on the shared features gives ``[B, 2, X, Y]`` per key,
            trained by an L1 loss (``dense_weight``) on every cell within ``dense_radius`` cells (Chebyshev) of a GT
            centre, ~9x more supervised cells than matched queries; each query reads the cell of its proposal, so
            the matched-query L1 trains the same branch. Default ``()``: upstream (all branches per query).
            ``dense_loss``: ``"l1"`` or ``"l2"`` (squared error; its optimum is the mean, not the median, so a
            mostly static scene does not pull every velocity to 0 the way L1 does).
        motion_channels: with ``"vel"`` in ``dense_keys``, the dense velocity branch reads a separate motion
            feature map ``[B, motion_channels, X, Y]`` (``forward(bev, motion=...)``, e.g. from
            :class:`~sparse3d.models.bevfusion.lidar.MotionEncoder`) next to the *detached* shared features, so
            the velocity loss trains only the motion features and this branch, not the detection trunk.
            0 (default): the velocity branch reads the shared features.
        rot_bins: K > 0 predicts the heading per query as K bin logits plus K in-bin residuals
            (:class:`HeadingBins`; cross-entropy + residual L1, weighted by ``loss_bbox_weight`` and the mean of the
            sin / cos ``code_weights``) instead of regressing (sin, cos) with L1; ``rot`` is then the (sin, cos)
            of the decoded yaw (no gradient) and the extra keys ``rot_bin`` / ``rot_res`` ``[B, K, P]`` hold the
            raw outputs. 0 (default): upstream. Not with ``"rot"`` in ``dense_keys``.
        refiner: optional :class:`BoxFrameRefiner` (needs ``rot_bins``; not with a dense or motion velocity
            branch): samples the shared features and a point raster in the frame of each query's box, flips the
            heading where its ``dir`` logit is > 0 and gives the velocity (the per-query ``vel`` branch is
            dropped); ``forward(bev, points=...)`` then needs the point clouds, and the loss adds its
            ``loss_dir`` / ``loss_vel`` (:meth:`BoxFrameRefiner.gt_loss`, on the jittered GT boxes). Extra
            prediction keys: ``rot_axis [B, P]`` (the sampling yaw), ``dir [B, P]``, ``vel_box [B, P, 2]``,
            ``refine_raster`` and ``refine_feat`` (the refiner's inputs, for the loss).
    """

    def __init__(self, in_channels: int, num_classes: int = 10, num_proposals: int = 200,
                 hidden_channels: int = 128, num_heads: int = 8, ffn_channels: int = 256, dropout: float = 0.1,
                 head_channels: int = 64, nms_kernel_size: int = 3, nms_exempt_classes: Sequence[int] = (5, 8), *,
                 bbox_coder: TransFusionBBoxCoder, assigner: HungarianAssigner3D | None = None,
                 code_weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.2, 0.2),
                 loss_cls_weight: float = 1.0, loss_bbox_weight: float = 0.25, loss_heatmap_weight: float = 1.0,
                 focal_alpha: float = 0.25, focal_gamma: float = 2.0, gaussian_overlap: float = 0.1,
                 min_radius: int = 2, dense_keys: Sequence[str] = (), dense_weight: float = 1.0,
                 dense_radius: int = 1, dense_loss: str = "l1", motion_channels: int = 0, rot_bins: int = 0,
                 refiner: BoxFrameRefiner | None = None):
        super().__init__()
        if not isinstance(bbox_coder, TransFusionBBoxCoder):
            raise TypeError(f"bbox_coder must be a TransFusionBBoxCoder, got {type(bbox_coder).__name__}")
        for name, v in (("in_channels", in_channels), ("num_classes", num_classes),
                        ("num_proposals", num_proposals), ("hidden_channels", hidden_channels)):
            if int(v) != v or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v}")
        if hidden_channels % num_heads:
            raise ValueError(f"hidden_channels ({hidden_channels}) must be divisible by num_heads ({num_heads})")
        if nms_kernel_size < 1 or nms_kernel_size % 2 == 0:
            raise ValueError(f"nms_kernel_size must be a positive odd int, got {nms_kernel_size}")
        exempt = [int(c) for c in nms_exempt_classes]
        if any(c < 0 or c >= num_classes for c in exempt):
            raise ValueError(f"nms_exempt_classes {exempt} must lie in [0, num_classes={num_classes})")
        if len(code_weights) != TransFusionBBoxCoder.code_size:
            raise ValueError(f"code_weights must have 10 values, got {len(code_weights)}")
        self.in_channels, self.num_classes, self.num_proposals = in_channels, num_classes, num_proposals
        self.nms_kernel_size, self.nms_exempt_classes = nms_kernel_size, exempt
        self.bbox_coder = bbox_coder
        self.assigner = assigner if assigner is not None else HungarianAssigner3D(bbox_coder.pc_range)
        self.register_buffer("code_weights", torch.tensor(code_weights, dtype=torch.float32), persistent=False)
        self.loss_cls_weight, self.loss_bbox_weight = loss_cls_weight, loss_bbox_weight
        self.loss_heatmap_weight = loss_heatmap_weight
        self.focal_alpha, self.focal_gamma = focal_alpha, focal_gamma
        self.gaussian_overlap, self.min_radius = gaussian_overlap, int(min_radius)

        self.shared_conv = nn.Conv2d(in_channels, hidden_channels, 3, padding=1)
        self.heatmap_head = nn.Sequential(
            nn.Conv2d(hidden_channels, hidden_channels, 3, padding=1, bias=False), nn.BatchNorm2d(hidden_channels),
            nn.ReLU(inplace=True), nn.Conv2d(hidden_channels, num_classes, 3, padding=1))
        nn.init.constant_(self.heatmap_head[-1].bias, -2.19)
        self.class_encoding = nn.Conv1d(num_classes, hidden_channels, 1)
        self.decoder = TransformerDecoderLayer(hidden_channels, num_heads, ffn_channels, dropout)
        for p in self.decoder.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        self.dense_keys = [str(k) for k in dense_keys]
        if any(k not in ("rot", "vel") for k in self.dense_keys) or len(set(self.dense_keys)) != len(self.dense_keys):
            raise ValueError(f"dense_keys must be distinct names from ('rot', 'vel'), got {list(dense_keys)}")
        if not dense_weight >= 0 or int(dense_radius) != dense_radius or dense_radius < 0:
            raise ValueError(f"need dense_weight >= 0 and an int dense_radius >= 0, got {dense_weight}, {dense_radius}")
        if dense_loss not in ("l1", "l2"):
            raise ValueError(f"dense_loss must be 'l1' or 'l2', got {dense_loss!r}")
        self.dense_weight, self.dense_radius, self.dense_loss = float(dense_weight), int(dense_radius), dense_loss
        heads = dict(center=2, height=1, dim=3, rot=2, vel=2, heatmap=num_classes)
        for k in self.dense_keys:
            del heads[k]
        if int(rot_bins) != rot_bins or rot_bins < 0 or rot_bins == 1:
            raise ValueError(f"rot_bins must be 0 (sin / cos regression) or an int >= 2, got {rot_bins!r}")
        if rot_bins and "rot" in self.dense_keys:
            raise ValueError("rot_bins (per-query heading bins) cannot be combined with 'rot' in dense_keys")
        self.heading = HeadingBins(int(rot_bins)) if rot_bins else None
        if self.heading is not None:
            del heads["rot"]
            heads = dict(heads, rot_bin=self.heading.num_bins, rot_res=self.heading.num_bins)
        if refiner is not None:
            if not isinstance(refiner, BoxFrameRefiner):
                raise TypeError(f"refiner must be a BoxFrameRefiner, got {type(refiner).__name__}")
            if self.heading is None or "vel" in self.dense_keys or motion_channels:
                raise ValueError("refiner needs rot_bins > 0 and no dense / motion velocity branch (it predicts the "
                                 "velocity itself)")
            if refiner.feat_channels not in (0, hidden_channels):
                raise ValueError(f"refiner.feat_channels ({refiner.feat_channels}) must be 0 or hidden_channels "
                                 f"({hidden_channels})")
            del heads["vel"]
        self.refiner = refiner
        self.prediction_head = PredictionHead(hidden_channels, heads, head_channels)
        if int(motion_channels) != motion_channels or motion_channels < 0:
            raise ValueError(f"motion_channels must be an int >= 0, got {motion_channels!r}")
        if motion_channels and "vel" not in self.dense_keys:
            raise ValueError("motion_channels needs 'vel' in dense_keys (the motion features feed the dense "
                             "velocity branch)")
        self.motion_channels = int(motion_channels)
        shared_keys = [k for k in self.dense_keys if not (k == "vel" and self.motion_channels)]
        if shared_keys:
            self.dense_head = nn.Sequential(
                nn.Conv2d(hidden_channels, hidden_channels, 3, padding=1, bias=False), nn.BatchNorm2d(hidden_channels),
                nn.ReLU(inplace=True), nn.Conv2d(hidden_channels, 2 * len(shared_keys), 1))
        if self.motion_channels:
            cin = self.motion_channels + hidden_channels
            self.motion_head = nn.Sequential(
                nn.Conv2d(cin, hidden_channels, 3, padding=1, bias=False), nn.BatchNorm2d(hidden_channels),
                nn.ReLU(inplace=True), nn.Conv2d(hidden_channels, 2, 1))

    # ------------------------------------------------------------------ forward
    @staticmethod
    def bev_pos(size_x: int, size_y: int, device=None, dtype=torch.float32) -> torch.Tensor:
        """``[1, X*Y, 2]`` cell-centre coordinates ``(ix + 0.5, iy + 0.5)`` in flattening order ``ix * Y + iy``."""
        gx, gy = torch.meshgrid(torch.arange(size_x, device=device, dtype=dtype),
                                torch.arange(size_y, device=device, dtype=dtype), indexing="ij")
        return torch.stack([gx, gy], -1).reshape(1, -1, 2) + 0.5

    def forward(self, bev: torch.Tensor, motion: torch.Tensor | None = None, points=None) -> dict:
        """Predict boxes for a BEV map.

        Args:
            bev: ``[B, in_channels, X, Y]`` float, ``(X, Y) == bbox_coder.grid_size``.
            motion: ``[B, motion_channels, X, Y]`` motion features (required iff ``motion_channels``).
            points: list of B ``[P_i, >=5]`` point clouds (required iff ``refiner``).
        Returns:
            dict with ``center [B, 2, P]`` (cell units), ``height [B, 1, P]``, ``dim [B, 3, P]`` (log),
            ``rot [B, 2, P]`` (sin, cos), ``vel [B, 2, P]``, ``heatmap [B, C, P]`` (class logits),
            ``query_heatmap_score [B, C, P]`` (local-max heatmap at the proposals), ``query_labels [B, P]`` int64,
            ``query_pos [B, P, 2]`` and ``dense_heatmap [B, C, X, Y]`` (logits); ``P = min(num_proposals, C*X*Y)``.
            With ``dense_keys`` also ``dense_reg [B, 2 * len(dense_keys), X, Y]`` (those branches read from it);
            with ``rot_bins`` K also ``rot_bin`` / ``rot_res`` ``[B, K, P]`` (``rot`` is then their decoded yaw).
        """
        if not isinstance(bev, torch.Tensor) or bev.ndim != 4:
            raise ValueError(f"bev must be a [B, C, X, Y] tensor, got {getattr(bev, 'shape', type(bev))}")
        if bev.shape[1] != self.in_channels:
            raise ValueError(f"bev has {bev.shape[1]} channels but the head was built with "
                             f"in_channels={self.in_channels}")
        if tuple(bev.shape[2:]) != self.bbox_coder.grid_size:
            raise ValueError(f"bev grid {tuple(bev.shape[2:])} does not match bbox_coder.grid_size "
                             f"{self.bbox_coder.grid_size} (pc_range / (voxel_size * out_size_factor))")
        batch, _, size_x, size_y = bev.shape
        if self.motion_channels:
            if not isinstance(motion, torch.Tensor) or motion.shape != (batch, self.motion_channels, size_x, size_y):
                raise ValueError(f"motion must be a [{batch}, {self.motion_channels}, {size_x}, {size_y}] tensor "
                                 f"(motion_channels), got {getattr(motion, 'shape', type(motion))}")
        elif motion is not None:
            raise ValueError("motion features given but the head was built with motion_channels=0")
        feat = self.shared_conv(bev)
        flat = feat.flatten(2)  # [B, H, X*Y]
        bev_pos = self.bev_pos(size_x, size_y, bev.device, feat.dtype).expand(batch, -1, -1)

        dense_heatmap = self.heatmap_head(feat)
        heat = dense_heatmap.detach().sigmoid()
        pad = self.nms_kernel_size // 2
        local_max = F.max_pool2d(heat, self.nms_kernel_size, stride=1, padding=pad) if pad else heat.clone()
        for c in self.nms_exempt_classes:
            local_max[:, c] = heat[:, c]
        heat = (heat * (heat == local_max)).flatten(2)  # [B, C, X*Y]

        num_cells = size_x * size_y
        k = min(self.num_proposals, self.num_classes * num_cells)
        top = heat.flatten(1).topk(k, dim=1).indices  # [B, P], sorted by heatmap score
        labels, index = top // num_cells, top % num_cells
        query = flat.gather(2, index[:, None, :].expand(-1, flat.shape[1], -1))
        one_hot = F.one_hot(labels, self.num_classes).transpose(1, 2).to(query.dtype)
        query = query + self.class_encoding(one_hot)
        query_pos = bev_pos.gather(1, index[:, :, None].expand(-1, -1, 2))

        query = self.decoder(query, flat, query_pos, bev_pos)
        preds = self.prediction_head(query)
        preds["center"] = preds["center"] + query_pos.transpose(1, 2)
        if self.heading is not None:
            yaw = self.heading.decode(preds["rot_bin"].detach(), preds["rot_res"].detach())  # [B, P]
            preds["rot"] = torch.stack([yaw.sin(), yaw.cos()], 1)
        if self.refiner is not None:
            if points is None:
                raise ValueError("this head has a refiner: forward needs points (list of B [P_i, >=5] tensors)")
            centers = self.bbox_coder.from_cells(preds["center"].detach().transpose(1, 2))   # [B, P, 2] m
            sizes = preds["dim"].detach()[:, :2].clamp(-6.0, 6.0).exp().transpose(1, 2)     # [B, P, 2] (l, w)
            ref = self.refiner(feat, points, centers, sizes, yaw)
            flipped = yaw + math.pi * (ref["dir"].detach() > 0).to(yaw.dtype)
            preds["rot"] = torch.stack([flipped.sin(), flipped.cos()], 1)
            preds["vel"] = self.refiner.from_box_frame(ref["vel"], yaw).transpose(1, 2)       # [B, 2, P]
            preds.update(rot_axis=yaw, dir=ref["dir"], vel_box=ref["vel"], refine_raster=ref["raster"],
                         refine_feat=feat)
        if self.dense_keys:
            parts = {}
            if self.motion_channels:
                parts["vel"] = self.motion_head(torch.cat([motion.to(feat.dtype), feat.detach()], 1))
            rest = [k for k in self.dense_keys if k not in parts]
            if rest:
                shared = self.dense_head(feat)
                parts.update({k: shared[:, 2 * i:2 * i + 2] for i, k in enumerate(rest)})
            dense = torch.cat([parts[k] for k in self.dense_keys], 1)   # [B, 2 * len(dense_keys), X, Y]
            at_query = dense.flatten(2).gather(2, index[:, None, :].expand(-1, dense.shape[1], -1))
            for i, k in enumerate(self.dense_keys):
                preds[k] = at_query[:, 2 * i:2 * i + 2]
            preds["dense_reg"] = dense
        preds["query_heatmap_score"] = heat.gather(2, index[:, None, :].expand(-1, self.num_classes, -1))
        preds["query_labels"] = labels
        preds["query_pos"] = query_pos
        preds["dense_heatmap"] = dense_heatmap
        return preds

    @staticmethod
    def codes(preds: dict) -> torch.Tensor:
        """``[B, P, 10]`` regression codes (cx, cy, z, log l, log w, log h, sin, cos, vx, vy) of ``preds``."""
        return torch.cat([preds[k] for k in HEAD_KEYS], 1).transpose(1, 2)

    # ------------------------------------------------------------------ targets and loss
    def heatmap_target(self, gt_boxes: torch.Tensor, gt_labels: torch.Tensor) -> torch.Tensor:
        """``[C, X, Y]`` Gaussian heatmap of ``gt_boxes [M, 9]`` / ``gt_labels [M]`` (peak 1 at each centre cell;
        radius from the box's l, w in cells, at least ``min_radius``; centres outside the grid draw nothing)."""
        size_x, size_y = self.bbox_coder.grid_size
        heat = torch.zeros(self.num_classes, size_x, size_y, device=gt_boxes.device)
        if len(gt_boxes) == 0:
            return heat
        cells = self.bbox_coder.to_cells(gt_boxes[:, :2].detach().float()).floor().long().tolist()
        sizes = (gt_boxes[:, 3:5].detach().float().cpu() / torch.tensor(self.bbox_coder.cell_size)).tolist()
        for (ix, iy), (length, width), label in zip(cells, sizes, gt_labels.tolist()):
            if length <= 0 or width <= 0 or not (0 <= ix < size_x and 0 <= iy < size_y):
                continue
            radius = max(self.min_radius, int(gaussian_radius((length, width), self.gaussian_overlap)))
            draw_heatmap_gaussian(heat[label], (ix, iy), radius)
        return heat

    def dense_target(self, gt_boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Targets of the dense branches: ``([2 * len(dense_keys), X, Y]`` codes, ``[X, Y]`` 0/1 weights) with each
        GT's (sin, cos) / (vx, vy) on every cell within ``dense_radius`` of its centre cell (centres outside the
        grid skipped; where boxes overlap, the later box wins)."""
        size_x, size_y = self.bbox_coder.grid_size
        target = gt_boxes.new_zeros((2 * len(self.dense_keys), size_x, size_y))
        weight = gt_boxes.new_zeros((size_x, size_y))
        if len(gt_boxes) == 0:
            return target, weight
        codes = self.bbox_coder.encode(gt_boxes.detach())
        cols = {"rot": slice(6, 8), "vel": slice(8, 10)}
        vals = torch.cat([codes[:, cols[k]] for k in self.dense_keys], 1)   # [M, 2 * len(dense_keys)]
        cells = self.bbox_coder.to_cells(gt_boxes[:, :2].detach().float()).floor().long().tolist()
        r = self.dense_radius
        for (ix, iy), v in zip(cells, vals):
            if not (0 <= ix < size_x and 0 <= iy < size_y):
                continue
            x0, x1, y0, y1 = max(ix - r, 0), min(ix + r + 1, size_x), max(iy - r, 0), min(iy + r + 1, size_y)
            target[:, x0:x1, y0:y1] = v[:, None, None]
            weight[x0:x1, y0:y1] = 1.0
        return target, weight

    def _check_targets(self, gt_boxes, gt_labels, batch: int):
        if not isinstance(gt_boxes, (list, tuple)) or len(gt_boxes) != batch:
            raise ValueError(f"gt_boxes must be a list of {batch} tensors [M_i, 9], got {type(gt_boxes).__name__}"
                             f" of length {len(gt_boxes) if hasattr(gt_boxes, '__len__') else '?'}")
        if not isinstance(gt_labels, (list, tuple)) or len(gt_labels) != batch:
            raise ValueError(f"gt_labels must be a list of {batch} int64 tensors [M_i]")
        for i, (boxes, labels) in enumerate(zip(gt_boxes, gt_labels)):
            if boxes.ndim != 2 or boxes.shape[1] != 9:
                raise ValueError(f"gt_boxes[{i}] must be [M, 9], got shape {tuple(boxes.shape)}")
            if labels.shape != boxes.shape[:1]:
                raise ValueError(f"gt_labels[{i}] must be [M={len(boxes)}], got shape {tuple(labels.shape)}")
            if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
                raise ValueError(f"gt_labels[{i}] must lie in [0, {self.num_classes}), got {labels.tolist()}")

    def loss(self, preds: dict, gt_boxes: list, gt_labels: list) -> dict:
        """Losses for one batch.

        Args:
            preds: output of :meth:`forward`.
            gt_boxes: list of B float tensors ``[M_i, 9]`` (x, y, z, l, w, h, yaw, vx, vy), LiDAR frame.
            gt_labels: list of B int64 tensors ``[M_i]`` in ``[0, num_classes)``.
        Returns:
            ``loss_heatmap``, ``loss_cls``, ``loss_bbox``, with ``dense_keys`` ``loss_dense``, with ``rot_bins``
            ``loss_rot``, with a ``refiner`` ``loss_dir`` and ``loss_vel`` (scalars to sum: every key starting with
            ``loss``) and ``matched_ious`` (detached mean 3D IoU of the matched queries, for logging).
        """
        dense = preds["dense_heatmap"]
        batch = dense.shape[0]
        self._check_targets(gt_boxes, gt_labels, batch)
        codes = self.codes(preds)  # [B, P, 10]
        cls_logits = preds["heatmap"].transpose(1, 2)  # [B, P, C]
        num_q = codes.shape[1]
        labels = torch.full((batch, num_q), self.num_classes, dtype=torch.long, device=codes.device)
        bbox_targets = torch.zeros_like(codes)
        bbox_weights = torch.zeros_like(codes)
        heat_targets, ious = [], []
        match_codes = codes.detach().clone()
        match_codes[..., 3:6] = match_codes[..., 3:6].clamp(-6.0, 6.0)  # keep exp(log dims) finite for matching
        match_boxes = self.bbox_coder.decode(match_codes)
        for b in range(batch):
            gtb = gt_boxes[b].to(codes.device, codes.dtype)
            gtl = gt_labels[b].to(codes.device).long()
            res = self.assigner.assign(match_boxes[b], gtb, gtl, cls_logits[b].detach())
            pos = res.pos_inds
            if len(pos):
                bbox_targets[b, pos] = self.bbox_coder.encode(gtb[res.gt_inds[pos] - 1])
                bbox_weights[b, pos] = 1.0
                labels[b, pos] = res.labels[pos]
                ious.append(res.max_overlaps[pos])
            heat_targets.append(self.heatmap_target(gtb, gtl))
        heat_targets = torch.stack(heat_targets).to(dense.dtype)
        num_pos = max(int((labels < self.num_classes).sum()), 1)

        loss_heatmap = gaussian_focal_loss(clip_sigmoid(dense), heat_targets,
                                           avg_factor=max(int(heat_targets.eq(1).sum()), 1))
        loss_cls = sigmoid_focal_loss(cls_logits.reshape(-1, self.num_classes), labels.reshape(-1), None,
                                      self.focal_alpha, self.focal_gamma, avg_factor=num_pos)
        weights = bbox_weights * self.code_weights.to(codes.dtype)
        if self.heading is not None:
            weights[..., 6:8] = 0.0  # the heading is trained by the bin loss below
        if self.refiner is not None:
            weights[..., 8:10] = 0.0  # the velocity is trained by the refiner's loss below
        loss_bbox = weighted_l1_loss(codes, bbox_targets, weights, avg_factor=num_pos)
        matched = torch.cat(ious).mean() if ious else codes.new_zeros(())
        out = {"loss_heatmap": self.loss_heatmap_weight * loss_heatmap, "loss_cls": self.loss_cls_weight * loss_cls,
               "loss_bbox": self.loss_bbox_weight * loss_bbox, "matched_ious": matched.detach()}
        if self.heading is not None:
            pos = bbox_weights[..., 0] > 0  # [B, P]
            yaw = torch.atan2(bbox_targets[..., 6], bbox_targets[..., 7])[pos]
            per = self.heading.loss(preds["rot_bin"].transpose(1, 2)[pos], preds["rot_res"].transpose(1, 2)[pos], yaw)
            w = float(self.code_weights[6:8].mean())
            out["loss_rot"] = self.loss_bbox_weight * w * per.sum() / num_pos
        if self.refiner is not None:   # trained on the (jittered) GT boxes, not on the proposals
            out.update(self.refiner.gt_loss(preds["refine_feat"], preds["refine_raster"],
                                            [g.to(codes.device, torch.float32) for g in gt_boxes]))
        if self.dense_keys:
            dense = preds["dense_reg"]
            tw = [self.dense_target(gt_boxes[b].to(dense.device, dense.dtype)) for b in range(batch)]
            t, w = torch.stack([a for a, _ in tw]), torch.stack([b for _, b in tw])[:, None]
            err = (dense - t).abs() if self.dense_loss == "l1" else (dense - t).square()
            out["loss_dense"] = self.dense_weight * (err * w).sum() / max(float(w.sum()) * t.shape[1], 1.0)
        return out

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def get_bboxes(self, preds: dict, score_threshold: float = 0.0, max_num: int = 500,
                   center_range: Sequence[float] | None = None) -> list:
        """Decode predictions (no NMS, as upstream).

        Score = sigmoid(class logit) x local-max heatmap score, for the proposal's class.

        Args:
            preds: output of :meth:`forward`.
            score_threshold: keep boxes with score > threshold.
            max_num: at most this many boxes per sample (nuScenes submission limit: 500).
            center_range: optional ``(x_min, y_min, z_min, x_max, y_max, z_max)`` filter on box centres.
        Returns:
            list of B dicts: ``boxes [K, 9]`` (x, y, z, l, w, h, yaw, vx, vy) in the LiDAR frame of the input,
            ``scores [K]`` sorted descending, ``labels [K]`` int64; ``K <= max_num``.
        """
        if max_num < 0:
            raise ValueError(f"max_num must be >= 0, got {max_num}")
        one_hot = F.one_hot(preds["query_labels"], self.num_classes).transpose(1, 2)
        scores = preds["heatmap"].sigmoid() * preds["query_heatmap_score"] * one_hot
        scores, labels = scores.max(1)  # [B, P]
        codes = self.codes(preds).clone()
        codes[..., 3:6] = codes[..., 3:6].clamp(-6.0, 6.0)  # sizes stay finite (< 403 m) for the submission JSON
        boxes = self.bbox_coder.decode(codes)
        results = []
        for b in range(boxes.shape[0]):
            keep = scores[b] > score_threshold
            if center_range is not None:
                lo = boxes.new_tensor(center_range[:3])
                hi = boxes.new_tensor(center_range[3:6])
                keep &= ((boxes[b, :, :3] >= lo) & (boxes[b, :, :3] <= hi)).all(1)
            s, order = scores[b][keep].sort(descending=True)
            order = order[:max_num]
            results.append({"boxes": boxes[b][keep][order], "scores": s[:max_num], "labels": labels[b][keep][order]})
        return results
