r"""BEVFusion composition (``mmdet3d/models/fusion_models/bevfusion.py``): encoders -> fuser -> decoder -> heads.

``BEVFusion(encoders={"camera": ..., "lidar": ...}, fuser, decoder, heads={"object": ..., "map": ...})``:

- ``camera``: a mapping (or ``nn.ModuleDict``) of ``backbone`` (``[B*N, 3, H, W] -> list of maps``), ``neck``
  (list -> list; its first output is used) and ``vtransform`` (``forward(img_feats [B, N, C, fH, fW], points,
  camera2lidar, camera_intrinsics, img_aug_matrix, lidar_aug_matrix) -> [B, C, X, Y]``), or one module whose
  ``forward`` takes batch keys by name (``img``, ``points``, ``camera2lidar``, ...);
- ``lidar``: a module ``forward(points: list of B [P_i, 5]) -> [B, C, X, Y]`` (``LidarEncoder``), or a mapping of
  ``voxelize`` and ``backbone`` (``backbone(voxelize(points), batch_size=B)``);
- ``fuser``: ``list of BEV maps -> one`` (``ConvFuser``), required with two encoders, unused with one
  (camera-only / LiDAR-only are the same class with one encoder);
- ``decoder``: a module, or a mapping of ``backbone`` (``SECOND``: map -> list) and ``neck`` (``SECONDFPN``: list ->
  map);
- ``motion``: optional ``forward(points) -> [B, C, X, Y]`` motion features (``MotionEncoder``) passed to the object
  head as ``head(features, motion=...)`` (its dense velocity branch, ``TransFusionHead(motion_channels=C)``);
  an object head with a ``refiner`` (``BoxFrameRefiner``) gets the point clouds as ``head(features, points=...)``;
- ``heads``: ``object`` (``TransFusionHead``: ``forward``, ``loss(preds, gt_boxes, gt_labels)``, ``get_bboxes``) and/or
  ``map`` (``BEVSegmentationHead``: ``forward``, ``loss(logits, gt_masks)``, ``predict``).

A camera encoder with an ``aux_head`` (``CameraEncoder(aux_head=PerspectiveHead(...))``) adds image-plane
supervision while training: ``outputs["camera_aux"]`` holds its logits and :meth:`BEVFusion.loss` adds
``camera/loss_perspective`` against :func:`~sparse3d.models.bevfusion.camera.perspective.perspective_targets`.

The batch is the dict of :func:`sparse3d.datasets.nuscenes.module.collate_nuscenes`; lists of tensors in it
(``points``, ``gt_boxes``, ``gt_labels``) are moved to the model's device here.
"""
from __future__ import annotations

import inspect
from typing import Any, Dict, List, Mapping, Optional, Sequence

import torch
from torch import nn

__all__ = ["BEVFusion"]

_ENCODER_ORDER = ("camera", "lidar")


def _as_module(value: Any, name: str) -> Optional[nn.Module]:
    if value is None or isinstance(value, nn.Module):
        return value
    if isinstance(value, Mapping):
        parts = {k: _as_module(v, f"{name}.{k}") for k, v in value.items() if v is not None}
        return nn.ModuleDict(parts)
    raise TypeError(f"{name} must be an nn.Module or a mapping of modules, got {type(value).__name__}")


def _first(x):
    return x[0] if isinstance(x, (list, tuple)) else x


class BEVFusion(nn.Module):
    r"""Camera / LiDAR / fusion BEV detector and map segmenter.

    Args:
        encoders: ``{"camera": ..., "lidar": ...}`` (at least one; see the module docstring).
        fuser: combines the encoders' BEV maps (in the order camera, lidar); required with two encoders.
        decoder: BEV backbone + neck (None: the fused map goes to the heads directly).
        heads: ``{"object": ..., "map": ...}`` (at least one).
        loss_scale: optional weight per head name (default 1).
        score_threshold / max_boxes: :meth:`predict` box filtering (nuScenes allows 500 boxes per sample).
        bn_momentum: if given, the running-statistics momentum of every BatchNorm (dense and sparse) in the model.
            mmdet3d's 0.01 suits upstream's ~70k iterations; short runs (the tiny configs: a few hundred steps)
            need 0.1, or the eval-mode statistics still lag far behind the weights.
        motion: optional motion-feature module for the object head's velocity branch (see the module docstring).
        init_from: a checkpoint (a trainer checkpoint with a ``model`` entry, or a bare state dict) whose tensors
            initialize every parameter / buffer of the same name and shape (see :meth:`load_matching`). Upstream
            BEVFusion trains the fusion model from a LiDAR-only checkpoint: its LiDAR encoder, decoder and heads
            load, the camera branch and the fuser start fresh.
        camera_from_epoch: with both encoders, the camera branch is skipped (its BEV map is zeros, no image is
            processed) while the epoch given to :meth:`set_epoch` is below this, so one run first trains the LiDAR
            side and then the fusion (upstream trains a LiDAR-only model first, then fine-tunes the fusion model).
            The trainer calls ``set_epoch`` before every epoch; the epoch is kept in the state dict
            (``trained_epoch``), so a checkpoint of the LiDAR phase evaluates without the camera, and a model never
            given an epoch uses the camera. Under DDP the camera parameters get no gradient in the LiDAR phase:
            set ``trainer.find_unused_parameters=true``.
    """

    def __init__(self, encoders: Mapping[str, Any], fuser: Optional[nn.Module] = None, decoder: Any = None,
                 heads: Optional[Mapping[str, Any]] = None, loss_scale: Optional[Mapping[str, float]] = None,
                 score_threshold: float = 0.0, max_boxes: int = 500, bn_momentum: Optional[float] = None,
                 init_from: Optional[str] = None, motion: Optional[nn.Module] = None,
                 camera_from_epoch: int = 0) -> None:
        super().__init__()
        if not isinstance(encoders, Mapping) or not encoders:
            raise ValueError("encoders must be a non-empty mapping with keys 'camera' and/or 'lidar'")
        bad = [k for k in encoders if k not in _ENCODER_ORDER]
        if bad:
            raise ValueError(f"encoders: unknown keys {bad} (allowed: {list(_ENCODER_ORDER)})")
        self.encoders = nn.ModuleDict({k: _as_module(encoders[k], f"encoders.{k}") for k in _ENCODER_ORDER
                                       if encoders.get(k) is not None})
        if not len(self.encoders):
            raise ValueError("encoders must configure at least one of 'camera' and 'lidar'")
        if "camera" in self.encoders and isinstance(self.encoders["camera"], nn.ModuleDict):
            missing = {"backbone", "neck", "vtransform"} - set(self.encoders["camera"])
            if missing:
                raise ValueError(f"encoders.camera is missing {sorted(missing)}")
        if "lidar" in self.encoders and isinstance(self.encoders["lidar"], nn.ModuleDict):
            missing = {"voxelize", "backbone"} - set(self.encoders["lidar"])
            if missing:
                raise ValueError(f"encoders.lidar is missing {sorted(missing)}")
        if len(self.encoders) > 1 and fuser is None:
            raise ValueError("a fuser is required with both camera and lidar encoders")
        self.fuser = fuser if len(self.encoders) > 1 else None
        self.decoder = _as_module(decoder, "decoder")
        if isinstance(self.decoder, nn.ModuleDict) and "backbone" not in self.decoder:
            raise ValueError("decoder mapping needs a 'backbone' (and optionally a 'neck')")
        heads = dict(heads or {})
        bad = [k for k in heads if k not in ("object", "map")]
        if bad:
            raise ValueError(f"heads: unknown keys {bad} (allowed: ['object', 'map'])")
        self.heads = nn.ModuleDict({k: v for k, v in heads.items() if v is not None})
        if not len(self.heads):
            raise ValueError("heads must configure at least one of 'object' and 'map'")
        if motion is not None and "object" not in self.heads:
            raise ValueError("motion features feed the object head; this model has none")
        self.motion = motion
        self.loss_scale = {k: float(v) for k, v in (loss_scale or {}).items()}
        self.score_threshold, self.max_boxes = float(score_threshold), int(max_boxes)
        if bn_momentum is not None:
            if not 0.0 < float(bn_momentum) <= 1.0:
                raise ValueError(f"bn_momentum must be in (0, 1], got {bn_momentum!r}")
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.momentum = float(bn_momentum)
        self.camera_from_epoch = int(camera_from_epoch)
        if self.camera_from_epoch < 0:
            raise ValueError(f"camera_from_epoch must be >= 0, got {camera_from_epoch}")
        if self.camera_from_epoch > 0:
            if self.fuser is None or not isinstance(getattr(self.fuser, "in_channels", None), Sequence):
                raise ValueError(f"camera_from_epoch={camera_from_epoch} needs both encoders and a fuser with "
                                 "in_channels [camera, lidar] (the camera map is zeros of that width until then)")
            # persistent, so that a checkpoint saved in the LiDAR phase is evaluated as it was trained
            self.register_buffer("trained_epoch", torch.tensor(-1, dtype=torch.long))
        self.init_report: Optional[Dict[str, List[str]]] = None
        if init_from is not None:
            self.init_report = self.load_matching(init_from)

    def load_matching(self, checkpoint: Any) -> Dict[str, List[str]]:
        """Copy every tensor of ``checkpoint`` (a path, a trainer checkpoint dict with ``model``, or a state dict)
        whose name and shape match this model's state dict; return ``{"loaded": [...], "skipped": [...]}``
        (skipped: checkpoint names absent here or of another shape). ValueError if nothing matches."""
        state = checkpoint
        if isinstance(checkpoint, (str, bytes)) or hasattr(checkpoint, "__fspath__"):
            state = torch.load(checkpoint, map_location="cpu", weights_only=False)
        if isinstance(state, Mapping) and "model" in state and isinstance(state["model"], Mapping):
            state = state["model"]
        if not isinstance(state, Mapping):
            raise TypeError(f"init_from: expected a state dict or a checkpoint with 'model', got {type(state).__name__}")
        own = self.state_dict()
        loaded = [k for k, v in state.items() if k in own and torch.is_tensor(v) and v.shape == own[k].shape]
        skipped = [k for k in state if k not in loaded]
        if not loaded:
            raise ValueError(f"init_from: no tensor of the checkpoint matches this model by name and shape "
                             f"({len(state)} checkpoint entries, e.g. {list(state)[:3]})")
        with torch.no_grad():
            for k in loaded:
                own[k].copy_(state[k])
        return {"loaded": loaded, "skipped": skipped}

    def set_epoch(self, epoch: int) -> None:
        """Called by the trainer before each (0-based) epoch; see ``camera_from_epoch``."""
        if int(epoch) < 0:
            raise ValueError(f"set_epoch: epoch must be >= 0, got {epoch}")
        if self.camera_from_epoch > 0:
            self.trained_epoch.fill_(int(epoch))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # checkpoints of models without staging (no ``trained_epoch``) load into staged ones as fully trained
        # (camera on), and staged checkpoints load into unstaged models, which always run the camera
        key = prefix + "trained_epoch"
        if self.camera_from_epoch > 0 and key not in state_dict:
            state_dict[key] = torch.tensor(-1, dtype=torch.long)
        elif self.camera_from_epoch == 0:
            state_dict.pop(key, None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def camera_active(self) -> bool:
        """Whether the camera branch runs: always with ``camera_from_epoch=0``; otherwise unless the last epoch
        given to :meth:`set_epoch` (stored in the state dict as ``trained_epoch``, -1 if never set) is below
        ``camera_from_epoch``."""
        if "camera" not in self.encoders:
            return False
        if self.camera_from_epoch == 0:
            return True
        e = int(self.trained_epoch)
        return e < 0 or e >= self.camera_from_epoch

    # ------------------------------------------------------------------ properties
    @property
    def modalities(self) -> List[str]:
        """Configured sensor branches, e.g. ``["camera", "lidar"]``."""
        return list(self.encoders.keys())

    @property
    def has_object_head(self) -> bool:
        return "object" in self.heads

    @property
    def map_classes(self) -> Optional[List[str]]:
        """Class names of the map head (None without one)."""
        return list(getattr(self.heads["map"], "classes", ())) if "map" in self.heads else None

    def _device(self) -> torch.device:
        p = next(self.parameters(), None)
        return p.device if p is not None else torch.device("cpu")

    # ------------------------------------------------------------------ forward
    def _camera(self, enc: nn.Module, batch: Dict[str, Any], extras: Dict[str, Any]) -> torch.Tensor:
        keys = ("points", "camera2lidar", "camera_intrinsics", "img_aug_matrix", "lidar_aug_matrix")
        if isinstance(enc, nn.ModuleDict):
            img = batch["img"]
            if img.ndim != 5:
                raise ValueError(f"batch['img'] must be [B, N, 3, H, W], got {tuple(img.shape)}")
            B, N = img.shape[:2]
            feats = _first(enc["neck"](enc["backbone"](img.flatten(0, 1))))
            feats = feats.view(B, N, *feats.shape[1:])
            return enc["vtransform"](feats, *(batch.get(k) for k in keys))
        params = inspect.signature(enc.forward).parameters
        kw = {k: v for k, v in batch.items() if k in params}
        aux = getattr(enc, "aux_head", None)
        if aux is None or not self.training:
            return enc(**kw)
        bev, feats = enc(**kw, return_features=True)
        extras["camera_aux"] = aux(feats.flatten(0, 1))
        return bev

    def _lidar(self, enc: nn.Module, points: List[torch.Tensor]) -> torch.Tensor:
        if isinstance(enc, nn.ModuleDict):
            return enc["backbone"](enc["voxelize"](points), batch_size=len(points))
        return enc(points)

    def extract_bev(self, batch: Dict[str, Any], extras: Optional[Dict[str, Any]] = None) -> torch.Tensor:
        """The fused BEV map ``[B, C, X, Y]`` (single encoder: its output). Training-time auxiliary outputs of the
        encoders (``camera_aux``) go into ``extras``."""
        extras = {} if extras is None else extras
        feats = {}
        if "lidar" in self.encoders:
            feats["lidar"] = self._lidar(self.encoders["lidar"], batch["points"])
        if "camera" in self.encoders:
            if self.camera_active:
                feats["camera"] = self._camera(self.encoders["camera"], batch, extras)
            else:
                lid = feats["lidar"]
                c = self.fuser.in_channels[list(self.encoders).index("camera")]
                feats["camera"] = lid.new_zeros(lid.shape[0], c, *lid.shape[2:])
        feats = [feats[k] for k in self.encoders]
        return self.fuser(feats) if self.fuser is not None else feats[0]

    def decode(self, bev: torch.Tensor) -> torch.Tensor:
        if self.decoder is None:
            return bev
        if isinstance(self.decoder, nn.ModuleDict):
            x = self.decoder["backbone"](bev)
            return _first(self.decoder["neck"](x)) if "neck" in self.decoder else _first(x)
        return _first(self.decoder(bev))

    def _to_device(self, batch: Dict[str, Any]) -> Dict[str, Any]:
        dev = self._device()
        out = dict(batch)
        for k, v in batch.items():
            if torch.is_tensor(v) and v.device != dev:
                out[k] = v.to(dev)
            elif isinstance(v, (list, tuple)) and v and all(torch.is_tensor(t) for t in v):
                out[k] = [t.to(dev) for t in v]
        return out

    def forward(self, batch: Dict[str, Any]) -> Dict[str, Any]:
        """``{"bev": fused map [B, C, X, Y], "features": decoder output, "object": head predictions,
        "map": logits [B, C_map, X_map, Y_map]}`` (head keys only for configured heads)."""
        if "points" not in batch or not isinstance(batch["points"], (list, tuple)):
            raise ValueError("batch['points'] must be a list of B [P_i, 5] tensors")
        if "camera" in self.encoders and "img" not in batch:
            raise ValueError("the camera encoder needs batch['img'] [B, N, 3, H, W] (dataset use_camera=true)")
        batch = self._to_device(batch)
        extras: Dict[str, Any] = {}
        bev = self.extract_bev(batch, extras)
        x = self.decode(bev)
        out: Dict[str, Any] = {"bev": bev, "features": x, **extras}
        for name, head in self.heads.items():
            kw = {}
            if name == "object" and self.motion is not None:
                kw["motion"] = self.motion(batch["points"])
            if getattr(head, "refiner", None) is not None:
                kw["points"] = batch["points"]
            out[name] = head(x, **kw)
        return out

    def loss(self, outputs: Dict[str, Any], batch: Dict[str, Any]) -> Dict[str, torch.Tensor]:
        """Named loss terms (every value is summed into the training loss) plus detached diagnostics under
        ``stats/`` (not to be summed): ``object/loss_heatmap``, ``object/loss_cls``, ``object/loss_bbox``,
        ``stats/object/matched_ious``, ``map/<class>/focal``."""
        batch = self._to_device(batch)
        out: Dict[str, torch.Tensor] = {}
        if "object" in self.heads:
            w = self.loss_scale.get("object", 1.0)
            for k, v in self.heads["object"].loss(outputs["object"], batch["gt_boxes"], batch["gt_labels"]).items():
                if k.startswith("loss"):
                    out[f"object/{k}"] = w * v
                else:
                    out[f"stats/object/{k}"] = v.detach() if torch.is_tensor(v) else torch.tensor(float(v))
        if "map" in self.heads:
            if "gt_masks_bev" not in batch:
                raise ValueError("the map head needs batch['gt_masks_bev'] (dataset map_classes)")
            w = self.loss_scale.get("map", 1.0)
            for k, v in self.heads["map"].loss(outputs["map"], batch["gt_masks_bev"]).items():
                out[f"map/{k}"] = w * v
        if "camera_aux" in outputs:
            out["camera/loss_perspective"] = self.loss_scale.get("camera", 1.0) * self._perspective_loss(
                outputs["camera_aux"], batch)
        return out

    def _perspective_loss(self, logits: torch.Tensor, batch: Dict[str, Any]) -> torch.Tensor:
        from .camera.perspective import perspective_targets
        head = self.encoders["camera"].aux_head
        for k in ("gt_boxes", "gt_labels"):
            if k not in batch:
                raise ValueError(f"the camera aux head needs batch['{k}']")
        targets = perspective_targets(batch["gt_boxes"], batch["gt_labels"], batch["camera2lidar"],
                                      batch["camera_intrinsics"], batch["img_aug_matrix"], batch["lidar_aug_matrix"],
                                      batch["img"].shape[-2:], logits.shape[-2:], background=head.num_classes)
        return head.loss(logits, targets)

    @torch.no_grad()
    def predict(self, outputs: Dict[str, Any], batch: Optional[Dict[str, Any]] = None) -> List[Dict[str, Any]]:
        """Per sample: ``boxes [K, 9]`` (augmented LiDAR frame), ``scores [K]`` (descending), ``labels [K]`` with
        an object head; ``masks [C_map, X_map, Y_map]`` probabilities with a map head."""
        B = outputs["bev"].shape[0]
        res: List[Dict[str, Any]] = [{} for _ in range(B)]
        if "object" in self.heads:
            boxes = self.heads["object"].get_bboxes(outputs["object"], score_threshold=self.score_threshold,
                                                    max_num=self.max_boxes)
            for r, d in zip(res, boxes):
                r.update(d)
        if "map" in self.heads:
            head = self.heads["map"]
            probs = head.predict(outputs["map"]) if hasattr(head, "predict") else outputs["map"].sigmoid()
            for i, r in enumerate(res):
                r["masks"] = probs[i]
        return res
