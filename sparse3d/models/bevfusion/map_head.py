"""BEV map segmentation (BEVFusion ``models/heads/segm/vanilla.py`` and ``evaluate_map``).

* :class:`BEVGridTransform` resamples a BEV feature map from the model grid to the map grid
  (``grid_sample``, bilinear, ``align_corners=False``), keeping the ``[B, C, X, Y]`` orientation
  (dim 2 = LiDAR x, dim 3 = LiDAR y); output cells outside the input scope read 0.
* :class:`BEVSegmentationHead`: grid transform -> 2 × (3×3 conv + BN + ReLU) -> 1×1 conv, one
  sigmoid logit per class; per-class :func:`sigmoid_focal_loss`.
* :func:`map_iou` / :class:`MapIoU`: IoU at thresholds 0.35..0.65, the max over thresholds per
  class, and their mean (BEVFusion's map mIoU). Counts are summed over every pixel of every
  sample before dividing (dataset-level IoU, as BEVFusion).

Empty classes: a class whose union ``tp + fp + fn`` is 0 at some threshold (no GT and no predicted
pixel) has an undefined IoU there. By default it is NaN and left out: the max per class is taken
over the defined thresholds (NaN if none) and the mean over the classes with a defined max (NaN if
none). ``empty_value=1.0`` counts such agreement as perfect; ``empty_value=0.0`` reproduces
BEVFusion, whose ``tp / (tp + fp + fn + 1e-7)`` gives 0.
"""
from __future__ import annotations

import math
from typing import Dict, Mapping, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["BEVGridTransform", "BEVSegmentationHead", "sigmoid_focal_loss", "map_iou", "map_iou_counts",
           "MapIoU", "MAP_CLASSES", "MAP_THRESHOLDS"]

# == sparse3d.datasets.nuscenes.common.MAP_CLASSES (kept literal: models do not import the dataset package)
MAP_CLASSES = ("drivable_area", "ped_crossing", "walkway", "stop_line", "carpark_area", "divider")
MAP_THRESHOLDS = (0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65)

Scope = Sequence[Sequence[float]]


def _scope(scope: Scope, name: str):
    try:
        out = tuple((float(a), float(b), float(c)) for a, b, c in scope)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be ((xmin, xmax, step), (ymin, ymax, step)), got {scope!r}") from None
    if len(out) != 2 or any(not (hi > lo and st > 0) for lo, hi, st in out):
        raise ValueError(f"{name} must be ((xmin, xmax, step), (ymin, ymax, step)) with max > min, step > 0; "
                         f"got {scope!r}")
    return out


def _cells(lo: float, hi: float, step: float) -> int:
    return max(1, int(round((hi - lo) / step)))


class BEVGridTransform(nn.Module):
    r"""Resample ``[B, C, X, Y]`` from ``input_scope`` to ``output_scope`` (BEVFusion ``BEVGridTransform``).

    Args:
        input_scope: ((xmin, xmax, step), (ymin, ymax, step)) of the input grid; tiny config
            ((-51.2, 51.2, 0.8), (-51.2, 51.2, 0.8)) = 128 × 128.
        output_scope: the map grid; BEVFusion ((-50, 50, 0.5), (-50, 50, 0.5)) = 200 × 200.
        prescale_factor: bilinear ``interpolate`` of the input first (BEVFusion option; 1 = off).

    Output cell ``(i, j)`` samples the input at metric point
    ``(xmin_o + (i + 0.5) step_o, ymin_o + (j + 0.5) step_o)``; the input's cell ``(a, b)`` sits at
    ``(xmin_i + (a + 0.5) step_i, ...)``. ``forward(x [B, C, X_in, Y_in]) -> [B, C, X_out, Y_out]``;
    ValueError unless ``(X_in, Y_in)`` matches ``input_scope``.
    """

    def __init__(self, input_scope: Scope = ((-51.2, 51.2, 0.8), (-51.2, 51.2, 0.8)),
                 output_scope: Scope = ((-50.0, 50.0, 0.5), (-50.0, 50.0, 0.5)), prescale_factor: float = 1) -> None:
        super().__init__()
        self.input_scope = _scope(input_scope, "input_scope")
        self.output_scope = _scope(output_scope, "output_scope")
        self.prescale_factor = prescale_factor
        self.input_shape = tuple(_cells(*s) for s in self.input_scope)
        self.output_shape = tuple(_cells(*s) for s in self.output_scope)

    def extra_repr(self) -> str:
        return f"input_scope={self.input_scope}, output_scope={self.output_scope}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            raise ValueError(f"BEVGridTransform expects x [B, C, X, Y], got {getattr(x, 'shape', type(x).__name__)}")
        if tuple(x.shape[2:]) != self.input_shape:
            raise ValueError(f"BEVGridTransform: x has grid {tuple(x.shape[2:])}, input_scope {self.input_scope} "
                             f"implies {self.input_shape} (X, Y)")
        if self.prescale_factor != 1:
            x = F.interpolate(x, scale_factor=self.prescale_factor, mode="bilinear", align_corners=False)
        axes = []
        for (imin, imax, _), (omin, omax, ostep), n in zip(self.input_scope, self.output_scope, self.output_shape):
            c = omin + (torch.arange(n, dtype=torch.float64, device=x.device) + 0.5) * ostep
            axes.append(((c - imin) / (imax - imin) * 2 - 1).to(x.dtype))
        u, v = torch.meshgrid(axes[0], axes[1], indexing="ij")  # [X_out, Y_out]
        # grid_sample's grid[..., 0] indexes the last dim (Y), grid[..., 1] the one before (X)
        grid = torch.stack([v, u], dim=-1).unsqueeze(0).expand(x.shape[0], -1, -1, -1)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def sigmoid_focal_loss(inputs: torch.Tensor, targets: torch.Tensor, alpha: float = -1.0, gamma: float = 2.0,
                       reduction: str = "mean") -> torch.Tensor:
    r"""Sigmoid focal loss (Lin et al. 2017; torchvision / BEVFusion form).

    ``loss = alpha_t * (1 - p_t) ** gamma * BCE(inputs, targets)`` with ``p = sigmoid(inputs)``,
    ``p_t = p y + (1 - p)(1 - y)``, ``alpha_t = alpha y + (1 - alpha)(1 - y)`` (``alpha < 0``: no
    weighting, BEVFusion's map default).

    Args:
        inputs: logits, any shape, float. targets: same shape, in [0, 1].
        reduction: "mean" | "sum" | "none".
    Returns:
        scalar (mean/sum, computed in float32 or wider) or the elementwise loss.
    """
    if inputs.shape != targets.shape:
        raise ValueError(f"sigmoid_focal_loss: inputs {tuple(inputs.shape)} and targets {tuple(targets.shape)} differ")
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    dt = torch.promote_types(inputs.dtype, torch.float32)
    inputs, targets = inputs.to(dt), targets.to(dt)
    p = torch.sigmoid(inputs)
    ce = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


class BEVSegmentationHead(nn.Module):
    r"""BEV map segmentation head (BEVFusion ``BEVSegmentationHead``).

    Args:
        in_channels: channels of the decoder output (BEVFusion 512).
        grid_transform: a :class:`BEVGridTransform` or its kwargs (input_scope, output_scope,
            prescale_factor); default: 128 × 128 at 0.8 m -> 200 × 200 at 0.5 m.
        classes: map class names (default the 6 BEVFusion classes).
        loss: "focal" (sigmoid focal, alpha -1, gamma 2) or "xent" (BCE with logits).
        focal_alpha, focal_gamma: focal parameters.
        hidden_channels: width of the two 3×3 convs (default ``in_channels``, as BEVFusion). They run at
            the map resolution (200 × 200), so on a CPU they dominate a tiny model's step: 128 -> 32
            channels cuts the head's multiply-adds ~6x.

    ``forward(bev [B, in_channels, X, Y] or a list whose first entry is it) -> logits
    [B, len(classes), X_map, Y_map]``; ``loss(logits, gt_masks) -> {f"{name}/{loss}": scalar}``;
    ``predict(logits) -> probabilities``.
    """

    def __init__(self, in_channels: int, grid_transform: Union[BEVGridTransform, Mapping, None] = None,
                 classes: Sequence[str] = MAP_CLASSES, loss: str = "focal", focal_alpha: float = -1.0,
                 focal_gamma: float = 2.0, hidden_channels: Optional[int] = None) -> None:
        super().__init__()
        if loss not in ("focal", "xent"):
            raise ValueError(f"loss must be 'focal' or 'xent', got {loss!r}")
        if isinstance(grid_transform, BEVGridTransform):
            self.transform = grid_transform
        else:
            self.transform = BEVGridTransform(**dict(grid_transform or {}))
        self.in_channels = int(in_channels)
        self.classes = tuple(classes)
        if not self.classes:
            raise ValueError("classes must name at least one map class")
        self.loss_type = loss
        self.focal_alpha, self.focal_gamma = focal_alpha, focal_gamma
        c = self.in_channels
        h = c if hidden_channels is None else int(hidden_channels)
        if h < 1:
            raise ValueError(f"hidden_channels must be a positive int, got {hidden_channels!r}")
        self.hidden_channels = h
        self.classifier = nn.Sequential(
            nn.Conv2d(c, h, 3, padding=1, bias=False), nn.BatchNorm2d(h), nn.ReLU(True),
            nn.Conv2d(h, h, 3, padding=1, bias=False), nn.BatchNorm2d(h), nn.ReLU(True),
            nn.Conv2d(h, len(self.classes), 1),
        )

    def forward(self, x: Union[torch.Tensor, Sequence[torch.Tensor]]) -> torch.Tensor:
        if isinstance(x, (list, tuple)):
            x = x[0]
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"BEVSegmentationHead expects [B, {self.in_channels}, X, Y], got "
                             f"{getattr(x, 'shape', type(x).__name__)}")
        return self.classifier(self.transform(x))

    def loss(self, logits: torch.Tensor, gt_masks: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Per-class loss, mean over batch and pixels.

        Args:
            logits: ``[B, K, X_map, Y_map]`` from :meth:`forward`.
            gt_masks: same shape, {0, 1} (any numeric dtype).
        Returns:
            ``{f"{class}/{loss}": scalar}``.
        """
        if not isinstance(gt_masks, torch.Tensor) or gt_masks.shape != logits.shape:
            raise ValueError(f"gt_masks must have the logits' shape {tuple(logits.shape)} [B, K, X_map, Y_map], "
                             f"got {tuple(getattr(gt_masks, 'shape', ()))}")
        target = gt_masks.to(logits.dtype)
        out = {}
        for i, name in enumerate(self.classes):
            if self.loss_type == "focal":
                out[f"{name}/focal"] = sigmoid_focal_loss(logits[:, i], target[:, i], self.focal_alpha,
                                                          self.focal_gamma)
            else:
                out[f"{name}/xent"] = F.binary_cross_entropy_with_logits(logits[:, i], target[:, i])
        return out

    @staticmethod
    def predict(logits: torch.Tensor) -> torch.Tensor:
        """Per-class probabilities ``sigmoid(logits)``, same shape."""
        return torch.sigmoid(logits)


# ----------------------------------------------------------------------------- metric
def _as_binary(gt: torch.Tensor) -> torch.Tensor:
    return gt >= 0.5 if gt.is_floating_point() else gt != 0


def map_iou_counts(pred: torch.Tensor, gt: torch.Tensor, thresholds: Sequence[float] = MAP_THRESHOLDS,
                   from_logits: Optional[bool] = None):
    """True/false positive and false negative pixel counts per class and threshold.

    Args:
        pred: ``[B, K, X, Y]`` or ``[K, X, Y]`` float, probabilities or logits.
        gt: same shape; bool/int (nonzero = positive) or float (>= 0.5 = positive).
        thresholds: ``[T]`` probability thresholds; a pixel is predicted when ``p >= t``.
        from_logits: True: ``pred`` are logits (sigmoid applied); False: probabilities; None:
            logits if any value lies outside [0, 1] (logits that all fall inside [0, 1] would be
            read as probabilities, so pass it explicitly when it is known).
    Returns:
        ``(tp, fp, fn)``, each ``[K, T]`` int64.
    """
    if not isinstance(pred, torch.Tensor) or not pred.is_floating_point():
        raise TypeError(f"pred must be a floating-point tensor, got {getattr(pred, 'dtype', type(pred).__name__)}")
    if not isinstance(gt, torch.Tensor) or gt.shape != pred.shape:
        raise ValueError(f"gt must have pred's shape {tuple(pred.shape)}, got {tuple(getattr(gt, 'shape', ()))}")
    if pred.dim() not in (3, 4):
        raise ValueError(f"pred must be [B, K, X, Y] or [K, X, Y], got {tuple(pred.shape)}")
    if pred.numel() and bool(torch.isnan(pred).any()):
        raise ValueError("pred contains NaN")
    dt = torch.promote_types(pred.dtype, torch.float32)
    # thresholds in pred's dtype, so that a float32 probability 0.35 counts at threshold 0.35 (as BEVFusion)
    th = torch.as_tensor([float(t) for t in thresholds], dtype=dt, device=pred.device)
    if th.numel() == 0:
        raise ValueError("thresholds must not be empty")
    if pred.dim() == 3:
        pred, gt = pred.unsqueeze(0), gt.unsqueeze(0)
    K = pred.shape[1]
    if from_logits is None:
        from_logits = bool(pred.numel()) and (float(pred.min()) < 0 or float(pred.max()) > 1)
    p = pred.detach().to(dt)
    if from_logits:
        p = torch.sigmoid(p)
    p = p.transpose(0, 1).reshape(K, -1)
    g = _as_binary(gt.detach()).transpose(0, 1).reshape(K, -1)
    npos = g.sum(1)  # [K]
    tp = torch.empty((K, th.numel()), dtype=torch.long, device=pred.device)
    npred = torch.empty_like(tp)
    for t in range(th.numel()):  # one threshold at a time: no [K, P, T] temporary
        hit = p >= th[t]
        tp[:, t] = (hit & g).sum(1)
        npred[:, t] = hit.sum(1)
    return tp, npred - tp, npos.unsqueeze(1) - tp


def _nanmax(x: torch.Tensor, dim: int) -> torch.Tensor:
    allnan = torch.isnan(x).all(dim)
    m = torch.where(torch.isnan(x), torch.full_like(x, -math.inf), x).max(dim).values
    return torch.where(allnan, torch.full_like(m, math.nan), m)


def _iou_from_counts(tp, fp, fn, thresholds, empty_value: float) -> Dict[str, torch.Tensor]:
    union = (tp + fp + fn).double()
    iou = torch.where(union > 0, tp.double() / union.clamp(min=1), torch.full_like(union, float(empty_value)))
    iou_max = _nanmax(iou, 1)
    defined = ~torch.isnan(iou_max)
    miou = iou_max[defined].mean() if bool(defined.any()) else iou_max.new_tensor(math.nan)
    return {"iou": iou, "iou_max": iou_max, "miou": miou,
            "thresholds": torch.as_tensor([float(t) for t in thresholds], dtype=torch.float64),
            "tp": tp, "fp": fp, "fn": fn}


def map_iou(pred: torch.Tensor, gt: torch.Tensor, thresholds: Sequence[float] = MAP_THRESHOLDS,
            from_logits: Optional[bool] = None, empty_value: float = math.nan) -> Dict[str, torch.Tensor]:
    """BEVFusion map-segmentation IoU of one batch (pixels of all samples pooled).

    Args: as :func:`map_iou_counts`; ``empty_value``: IoU where ``tp + fp + fn == 0`` (module docstring).
    Returns:
        dict with ``iou [K, T]``, ``iou_max [K]`` (max over thresholds), ``miou`` (scalar, mean of
        ``iou_max``), ``thresholds [T]``, and the counts ``tp``, ``fp``, ``fn`` ``[K, T]``; float64.
    """
    tp, fp, fn = map_iou_counts(pred, gt, thresholds, from_logits)
    return _iou_from_counts(tp, fp, fn, thresholds, empty_value)


class MapIoU:
    """Dataset-level :func:`map_iou`: sums counts over ``update`` calls (BEVFusion ``evaluate_map``).

    Args:
        classes: class names (for :meth:`summary`). thresholds, from_logits, empty_value: as :func:`map_iou`.
    """

    def __init__(self, classes: Sequence[str] = MAP_CLASSES, thresholds: Sequence[float] = MAP_THRESHOLDS,
                 from_logits: Optional[bool] = None, empty_value: float = math.nan) -> None:
        self.classes = tuple(classes)
        self.thresholds = tuple(float(t) for t in thresholds)
        self.from_logits, self.empty_value = from_logits, empty_value
        self.reset()

    def reset(self) -> None:
        K, T = len(self.classes), len(self.thresholds)
        self.tp = torch.zeros((K, T), dtype=torch.long)
        self.fp = torch.zeros_like(self.tp)
        self.fn = torch.zeros_like(self.tp)

    def update(self, pred: torch.Tensor, gt: torch.Tensor) -> None:
        """Add a batch: ``pred``/``gt`` ``[B, K, X, Y]`` or ``[K, X, Y]`` (K = len(classes))."""
        k = pred.shape[1] if pred.dim() == 4 else pred.shape[0]
        if k != len(self.classes):
            raise ValueError(f"pred has {k} classes, MapIoU was built for {len(self.classes)}")
        tp, fp, fn = map_iou_counts(pred, gt, self.thresholds, self.from_logits)
        self.tp += tp.cpu()
        self.fp += fp.cpu()
        self.fn += fn.cpu()

    def compute(self) -> Dict[str, torch.Tensor]:
        """The :func:`map_iou` dict over everything added so far."""
        return _iou_from_counts(self.tp, self.fp, self.fn, self.thresholds, self.empty_value)

    def summary(self, prefix: str = "map") -> Dict[str, float]:
        """Flat floats with BEVFusion's keys: ``{prefix}/{class}/iou@{t:.2f}``, ``{prefix}/{class}/iou@max``,
        ``{prefix}/mean/iou@max``."""
        r = self.compute()
        out: Dict[str, float] = {}
        for i, name in enumerate(self.classes):
            for t, v in zip(self.thresholds, r["iou"][i].tolist()):
                out[f"{prefix}/{name}/iou@{t:.2f}"] = v
            out[f"{prefix}/{name}/iou@max"] = float(r["iou_max"][i])
        out[f"{prefix}/mean/iou@max"] = float(r["miou"])
        return out
