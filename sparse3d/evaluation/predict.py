r"""Inference over a dataset with voxel predictions mapped back to every point, and checkpoint loading.

The dataset's transform must end with :class:`~sparse3d.datasets.transforms.Voxelize` *without*
``max_voxels`` so that ``lidar_inverse`` covers every point of the scan; each voxel's argmax is
copied to its points through ``lidar_inverse`` (the spvnas evaluation path).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple, Union

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..datasets.tta import point_scores
from ..utils.collate import sparse_collate_fn

__all__ = ["load_model_weights", "collate_with_sizes", "predict_batch", "predict_dataset"]

PathLike = Union[str, os.PathLike]


def _checkpoint_target(state: dict) -> Optional[str]:
    cfg = state.get("cfg")
    if not isinstance(cfg, str):
        return None
    try:
        import yaml
        doc = yaml.safe_load(cfg)
    except Exception:  # a cfg we cannot parse only loses the hint
        return None
    model = doc.get("model") if isinstance(doc, dict) else None
    return model.get("_target_") if isinstance(model, dict) else None


def load_model_weights(model: nn.Module, path: PathLike, expected_target: Optional[str] = None) -> dict:
    """Load ``state["model"]`` of a training checkpoint into ``model`` (strict).

    Args:
        model: the instantiated network.
        path: checkpoint written by :func:`sparse3d.engine.checkpoint.save_checkpoint`.
        expected_target: the ``_target_`` of the model config; when the checkpoint's own config names
            another model class, that is reported before comparing weights.

    Returns:
        The checkpoint dict (epoch, global_step, best_miou, cfg, ...).

    Raises:
        FileNotFoundError naming a missing file; ValueError naming the file when it is corrupt, has no
        ``model`` state, or was written for another model or number of classes.
    """
    from ..engine.checkpoint import load_checkpoint

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    state = load_checkpoint(path, map_location="cpu")
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        raise ValueError(f"checkpoint {path} has no 'model' state dict (keys: {sorted(state)[:10]})"
                         if isinstance(state, dict) else f"checkpoint {path} is not a dict")
    target = _checkpoint_target(state)
    if expected_target is not None and target is not None and target != expected_target:
        raise ValueError(f"checkpoint {path} was trained with model {target}, but the config builds "
                         f"{expected_target}; pick the matching model config")
    sd, own = state["model"], model.state_dict()
    missing, unexpected = sorted(set(own) - set(sd)), sorted(set(sd) - set(own))
    if missing or unexpected:
        raise ValueError(f"checkpoint {path} does not fit {type(model).__name__}"
                         + (f" (it was trained with {target})" if target else "")
                         + f": {len(missing)} missing keys {missing[:5]}, {len(unexpected)} unexpected keys "
                         f"{unexpected[:5]}")
    bad = [(k, tuple(sd[k].shape), tuple(v.shape)) for k, v in own.items()
           if isinstance(sd[k], torch.Tensor) and tuple(sd[k].shape) != tuple(v.shape)]
    if bad:
        hint = ""
        nc = getattr(model, "num_classes", None)
        for k, s_ck, s_m in bad:
            if nc is not None and "classifier" in k and s_m and s_ck and s_m[0] == nc != s_ck[0]:
                hint = f" (num_classes: checkpoint {s_ck[0]}, model {nc})"
                break
        raise ValueError(f"checkpoint {path} does not fit {type(model).__name__}{hint}: shape mismatch in "
                         + ", ".join(f"{k} checkpoint {a} vs model {b}" for k, a, b in bad[:5]))
    model.load_state_dict(sd, strict=True)
    return state


def collate_with_sizes(samples: List[Dict[str, Any]]) -> Tuple[Dict[str, Any], List[int]]:
    """:func:`sparse3d.sparse_collate_fn` plus the per-sample point counts (``len(lidar_inverse)``, or the
    number of distinct points of ``tta_inverse`` for :class:`~sparse3d.datasets.tta.RotationViews` samples)."""
    for s in samples:
        if "lidar" not in s or "lidar_inverse" not in s:
            raise ValueError("samples must come from Voxelize: keys 'lidar' and 'lidar_inverse' are needed, got "
                             f"{sorted(s)}")
    return sparse_collate_fn(samples), [_num_points(s) for s in samples]


def _num_points(sample: Dict[str, Any]) -> int:
    tta = sample.get("tta_inverse")   # RotationViews: lidar_inverse holds every point once per view
    if tta is not None:
        return int(tta.max()) + 1 if len(tta) else 0
    return len(sample["lidar_inverse"])


@torch.no_grad()
def predict_batch(model: nn.Module, batch: Dict[str, Any], sizes: List[int],
                  device: Union[str, torch.device] = "cpu") -> List[torch.Tensor]:
    """Per-point predictions of a collated batch.

    Args:
        model: ``forward(SparseTensor) -> [N_voxels, C]`` logits.
        batch, sizes: output of :func:`collate_with_sizes`.

    Returns:
        One ``[N_i]`` int64 CPU tensor of class ids per sample (voxel argmax through ``lidar_inverse``;
        for :class:`~sparse3d.datasets.tta.RotationViews` samples the argmax of the view-averaged
        probabilities, :func:`~sparse3d.datasets.tta.point_scores`).
    """
    x = batch["lidar"].to(device)
    logits = model(x)
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.shape[0] != x.feats.shape[0]:
        raise ValueError(f"model must return [N_voxels={x.feats.shape[0]}, num_classes] logits, got "
                         f"{getattr(logits, 'shape', type(logits).__name__)}")
    point_pred = point_scores(logits, batch).argmax(1).cpu()
    return list(torch.split(point_pred, sizes))


def _expected_points(dataset: Dataset, index: int) -> Optional[int]:
    scans = getattr(dataset, "scans", None)
    if isinstance(scans, list) and index < len(scans) and isinstance(scans[index], tuple):
        return Path(scans[index][1]).stat().st_size // 16
    return None


def predict_dataset(model: nn.Module, dataset: Dataset, device: Union[str, torch.device] = "cpu",
                    batch_size: int = 1, num_workers: int = 0,
                    progress: bool = False) -> Iterator[Dict[str, Any]]:
    """Run ``model`` (in eval mode) over ``dataset`` and yield one dict per scan::

        index     int, position in the dataset
        scan_id   the sample's scan id (or str(index))
        pred      [N] int64 class id of every point of the scan
        target    [N] int64 per-point labels (255 = ignore), or None without labels

    For a :class:`~sparse3d.datasets.semantic_kitti.SemanticKITTI` dataset ``N`` is checked against
    the ``.bin`` size, so a transform that drops points (``Voxelize(max_voxels=...)``) is an error.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    model.eval().to(device)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        collate_fn=collate_with_sizes)
    if progress:
        from tqdm import tqdm
        loader = tqdm(loader, desc="eval", unit="batch")
    index = 0
    for batch, sizes in loader:
        preds = predict_batch(model, batch, sizes, device)
        targets = (list(torch.split(batch["targets_mapped"], sizes)) if "targets_mapped" in batch
                   else [None] * len(sizes))
        scan_ids = batch.get("scan_id", [str(index + i) for i in range(len(sizes))])
        for pred, target, scan_id in zip(preds, targets, scan_ids):
            n = _expected_points(dataset, index)
            if n is not None and n != len(pred):
                raise ValueError(f"scan {scan_id}: {len(pred)} predictions for {n} points; the evaluation "
                                 "transform must keep every point (Voxelize without max_voxels)")
            yield {"index": index, "scan_id": scan_id, "pred": pred, "target": target}
            index += 1
