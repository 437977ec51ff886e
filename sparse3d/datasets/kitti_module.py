r"""SemanticKITTI train/val DataLoaders from one config (the synthetic set is generated on first use).

``SemanticKITTIDataModule`` is what ``configs/dataset/*.yaml`` instantiate; ``tools/train.py`` and
``tools/eval.py`` call :meth:`~SemanticKITTIDataModule.train_dataloader` /
:meth:`~SemanticKITTIDataModule.val_dataloader`. Construction touches no files.

Sampling: training uses a ``DistributedSampler`` (also with one process, so the shuffle order
depends only on ``seed`` and the epoch); under DDP it pads the last round by repeating scans so
every rank takes the same number of steps (nothing is dropped). With ``balance_ranks`` DDP training
uses a ``BalancedDistributedSampler`` instead (step-mates of similar voxel counts). Validation shards scans
``rank::world_size`` without padding, so every scan is scored exactly once.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Union

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from ..engine import distributed as D
from ..engine.seed import seed_worker
from ..utils.collate import sparse_collate_fn
from ..utils.quantize import sparse_quantize
from .semantic_kitti import CLASS_NAMES, IGNORE_INDEX, NUM_CLASSES, SPLITS, SemanticKITTI, raw_to_train, read_labels
from .synthetic_lidar import ensure_synthetic_kitti
from .transforms import Compose, RandomFlip, RandomJitter, RandomRotateZ, RandomScale, Voxelize

__all__ = ["SemanticKITTIDataModule", "ShardSampler"]


class ShardSampler(Sampler[int]):
    """Indices ``rank, rank + world, ...`` of ``range(n)``, in order, without padding."""

    def __init__(self, n: int, rank: int = 0, world_size: int = 1) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        self.n, self.rank, self.world_size = n, rank, world_size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.n, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.world_size))


class SemanticKITTIDataModule:
    r"""Datasets and loaders for SemanticKITTI-format data.

    Args:
        root: folder containing ``sequences/``.
        synthetic: keyword arguments of :func:`ensure_synthetic_kitti` (``seed``, ``n_train``,
            ``n_val``, ``azimuth_steps``, ``spacing``); the set is generated under ``root`` when
            missing. None: ``root`` is real data and must exist.
        train_sequences / val_sequences: explicit sequence numbers; default: the official split,
            restricted for a synthetic set to the sequences it contains.
        voxel_size: metres. max_voxels: random voxel subset per training scan (None: all).
        batch_size / val_batch_size: scans per batch and rank.
        num_workers: DataLoader workers (seeded through ``seed_worker``).
        rotate: random z rotation: ``True`` (a full turn), ``False``, or ``(low, high)`` radians;
            scale: ``(low, high)`` or None; flip: random x/y mirroring;
            jitter: Gaussian xyz noise sigma in metres (0: off).
        seed: shuffle seed (the per-epoch order is ``seed + epoch``).
        num_classes / ignore_index / class_names: label space (SemanticKITTI's by default).
        miou_convention: how mIoU is reported for this data: ``"semantickitti"`` (absent classes
            count 0) or ``"nuscenes"`` (classes absent from targets and predictions skipped).
        instance_paste: ``{"classes": [train ids], "num": 6, "min_points": 20}`` pastes ``num`` objects of
            those classes, cut from the training scans and rotated about the sensor, into every training
            scan (:mod:`sparse3d.datasets.instance_paste`, PolarMix-style); None: off.
        tta_views: test-time augmentation for validation and ``tools/eval.py``: class probabilities
            averaged over this many z-rotations of each scan (1: off; see :mod:`sparse3d.datasets.tta`).
        balance_ranks: under DDP, give the ranks of each step training scans of similar voxel counts
            (:class:`~sparse3d.datasets.samplers.BalancedDistributedSampler`), so that fewer of them wait
            for a larger scan; False: ``DistributedSampler``.
    """

    def __init__(self, root: Union[str, os.PathLike], synthetic: Optional[Dict[str, Any]] = None,
                 train_sequences: Optional[Sequence[int]] = None, val_sequences: Optional[Sequence[int]] = None,
                 voxel_size: float = 0.05, max_voxels: Optional[int] = 80000, batch_size: int = 2,
                 val_batch_size: int = 1, num_workers: int = 0,
                 rotate: Union[bool, Sequence[float]] = True,
                 scale: Optional[Sequence[float]] = (0.95, 1.05), flip: bool = False, jitter: float = 0.0,
                 seed: int = 0, num_classes: int = NUM_CLASSES, ignore_index: int = IGNORE_INDEX,
                 class_names: Optional[Sequence[str]] = None, miou_convention: str = "semantickitti",
                 instance_paste: Optional[Dict[str, Any]] = None, tta_views: int = 1,
                 balance_ranks: bool = False) -> None:
        if not voxel_size > 0:
            raise ValueError(f"voxel_size must be > 0, got {voxel_size!r}")
        for name, v in (("batch_size", batch_size), ("val_batch_size", val_batch_size)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if not isinstance(num_workers, int) or num_workers < 0:
            raise ValueError(f"num_workers must be an int >= 0, got {num_workers!r}")
        if scale is not None and len(scale) != 2:
            raise ValueError(f"scale must be (low, high) or None, got {scale!r}")
        if not isinstance(rotate, bool) and rotate is not None:
            if (not isinstance(rotate, Sequence) or isinstance(rotate, str) or len(rotate) != 2
                    or not all(isinstance(a, (int, float)) and math.isfinite(a) for a in rotate)
                    or not rotate[0] <= rotate[1]):
                raise ValueError(f"rotate must be true, false or (low, high) radians with low <= high, got {rotate!r}")
            rotate = (float(rotate[0]), float(rotate[1]))
        self.root = Path(root)
        self.synthetic = dict(synthetic) if synthetic is not None else None
        self.train_sequences = list(train_sequences) if train_sequences is not None else None
        self.val_sequences = list(val_sequences) if val_sequences is not None else None
        self.voxel_size, self.max_voxels = float(voxel_size), max_voxels
        self.batch_size, self.val_batch_size, self.num_workers = batch_size, val_batch_size, num_workers
        self.rotate, self.scale, self.flip, self.jitter = rotate, scale, flip, float(jitter)
        self.seed = int(seed)
        self.num_classes, self.ignore_index = int(num_classes), int(ignore_index)
        self.class_names = list(class_names) if class_names is not None else list(CLASS_NAMES[:num_classes])
        if miou_convention not in ("semantickitti", "nuscenes"):
            raise ValueError(f"miou_convention must be 'semantickitti' or 'nuscenes', got {miou_convention!r}")
        self.miou_convention = miou_convention
        self.instance_paste = dict(instance_paste) if instance_paste else None
        if not isinstance(tta_views, int) or isinstance(tta_views, bool) or tta_views < 1:
            raise ValueError(f"tta_views must be an int >= 1, got {tta_views!r}")
        self.tta_views, self.balance_ranks = tta_views, bool(balance_ranks)
        if self.instance_paste is not None:
            unknown = set(self.instance_paste) - {"classes", "num", "min_points"}
            if unknown or "classes" not in self.instance_paste:
                raise ValueError(f"instance_paste takes classes (required), num, min_points; got {sorted(self.instance_paste)}")
            bad = [c for c in self.instance_paste["classes"] if not 0 <= int(c) < self.num_classes]
            if bad:
                raise ValueError(f"instance_paste.classes {bad} are not training class ids 0..{self.num_classes - 1}")
        if len(self.class_names) != self.num_classes:
            raise ValueError(f"class_names has {len(self.class_names)} names for num_classes={self.num_classes}")

    # ------------------------------------------------------------------ data
    def prepare_data(self) -> Path:
        """Generate the synthetic set if configured and missing; check that ``root`` exists."""
        if self.synthetic is not None:
            ensure_synthetic_kitti(self.root, **self.synthetic)
        if not (self.root / "sequences").is_dir():
            raise FileNotFoundError(f"no sequences/ folder under dataset root {self.root}")
        return self.root

    def _sequences(self, split: str) -> List[int]:
        explicit = self.train_sequences if split == "train" else self.val_sequences
        if explicit is not None:
            return [int(s) for s in explicit]
        meta = self.root / "synth_meta.json"
        if self.synthetic is not None and meta.exists():
            have = {int(s) for s in json.loads(meta.read_text())["sequences"]}
            seqs = [s for s in SPLITS[split] if s in have]
            if not seqs:
                raise ValueError(f"synthetic set {self.root} has no {split} sequences (it has {sorted(have)})")
            return seqs
        return list(SPLITS[split])

    def instance_bank(self):
        """The training scans' objects of ``instance_paste.classes`` (built once, ~1 s for 48 scans)."""
        if getattr(self, "_bank", None) is None:
            from .instance_paste import InstanceBank
            ds = SemanticKITTI(self.root, sequences=self._sequences("train"))
            self._bank = InstanceBank.from_dataset(ds, [int(c) for c in self.instance_paste["classes"]],
                                                   int(self.instance_paste.get("min_points", 20)))
        return self._bank

    def train_transform(self) -> Compose:
        ts: list = []
        if self.instance_paste is not None:   # before the scene augmentations, which then move the objects too
            from .instance_paste import InstancePaste
            ts.append(InstancePaste(self.instance_bank(), int(self.instance_paste.get("num", 6))))
        if isinstance(self.rotate, tuple):
            ts.append(RandomRotateZ(*self.rotate))
        elif self.rotate:
            ts.append(RandomRotateZ())
        if self.scale is not None:
            ts.append(RandomScale(float(self.scale[0]), float(self.scale[1])))
        if self.flip:
            ts.append(RandomFlip())
        if self.jitter > 0:
            ts.append(RandomJitter(self.jitter))
        ts.append(Voxelize(self.voxel_size, self.max_voxels))
        return Compose(ts)

    def val_transform(self) -> Compose:
        """Every point kept; with ``tta_views > 1`` the scan is voxelized in that many z-rotations
        (:class:`~sparse3d.datasets.tta.RotationViews`; predictions average over them)."""
        if self.tta_views > 1:
            from .tta import RotationViews
            return Compose([RotationViews(self.tta_views, Voxelize(self.voxel_size))])
        return Compose([Voxelize(self.voxel_size)])

    def train_dataset(self) -> SemanticKITTI:
        self.prepare_data()
        return SemanticKITTI(self.root, sequences=self._sequences("train"), transform=self.train_transform())

    def val_dataset(self) -> SemanticKITTI:
        self.prepare_data()
        return SemanticKITTI(self.root, sequences=self._sequences("val"), transform=self.val_transform())

    def class_counts(self) -> np.ndarray:
        """``[num_classes]`` int64 point counts of the training labels (ignored points left out); read
        from the label files once and cached."""
        if getattr(self, "_class_counts", None) is None:
            ds = SemanticKITTI(self.root, sequences=self._sequences("train")) if self.prepare_data() else None
            counts = np.zeros(self.num_classes, np.int64)
            for _, _, label_path in ds.scans:
                sem, _ = read_labels(label_path)
                t = raw_to_train(sem, str(label_path))
                t = t[t != self.ignore_index]
                counts += np.bincount(t, minlength=self.num_classes)[: self.num_classes]
            self._class_counts = counts
        return self._class_counts

    def voxel_counts(self, ds) -> np.ndarray:
        """``[len(ds)]`` int64 voxel count of every scan of ``ds`` (a dataset with ``read(i) -> {"points"}``) at
        ``voxel_size``, without augmentation. Reads every scan once (~0.03 s per 120k-point scan)."""
        counts = np.zeros(len(ds), np.int64)
        for i in range(len(ds)):
            pts = ds.read(i)["points"]
            counts[i] = len(sparse_quantize(pts[:, :3], self.voxel_size)) if len(pts) else 0
        return counts

    # ------------------------------------------------------------------ loaders
    def _loader(self, ds, batch_size: int, sampler: Sampler) -> DataLoader:
        return DataLoader(ds, batch_size=batch_size, sampler=sampler, num_workers=self.num_workers,
                          collate_fn=sparse_collate_fn, worker_init_fn=seed_worker,
                          persistent_workers=self.num_workers > 0)

    def train_dataloader(self, distributed: Optional[bool] = None) -> DataLoader:
        """Shuffled training loader; call ``loader.sampler.set_epoch(epoch)`` each epoch."""
        if distributed is None:
            distributed = D.is_distributed()
        ds = self.train_dataset()
        world, rank = (D.get_world_size(), D.get_rank()) if distributed else (1, 0)
        if self.balance_ranks and world > 1:
            from .samplers import BalancedDistributedSampler
            sampler = BalancedDistributedSampler(self.voxel_counts(ds), world, rank, self.batch_size, self.seed)
        else:
            sampler = DistributedSampler(ds, num_replicas=world, rank=rank, shuffle=True, seed=self.seed,
                                         drop_last=False)
        return self._loader(ds, self.batch_size, sampler)

    def val_dataloader(self, distributed: Optional[bool] = None) -> DataLoader:
        """Validation loader in scan order, sharded over ranks without padding."""
        if distributed is None:
            distributed = D.is_distributed()
        ds = self.val_dataset()
        world, rank = (D.get_world_size(), D.get_rank()) if distributed else (1, 0)
        return self._loader(ds, self.val_batch_size, ShardSampler(len(ds), rank, world))
