r"""Rare-object instance pasting for LiDAR segmentation training (PolarMix-style instance rotate-pasting).

After PolarMix (Xiao et al., NeurIPS 2022, https://arxiv.org/abs/2208.00223), instance-level branch:
objects of rare "thing" classes are cut from training scans (all points of one ``(class, instance id)``
pair of the SemanticKITTI ``.label`` file) and pasted into the scan being trained on, each rotated
about the sensor's z axis by a random angle. A rotation about the sensor keeps each point's range and
elevation, so a pasted object keeps a plausible beam pattern and point density. As in PolarMix, the
pasted points are appended without occlusion handling.

:class:`InstanceBank` holds the objects (``points [n, 4]`` float32, ``label`` int); :class:`InstancePaste`
is the transform (a dict sample in, a dict sample with ``N + sum(n)`` points out), applied before the
scene-level augmentations and :class:`~sparse3d.datasets.transforms.Voxelize`.
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch

from .semantic_kitti import SemanticKITTI, raw_to_train, read_labels, read_points
from .transforms import rotate_z

__all__ = ["InstanceBank", "InstancePaste"]


class InstanceBank:
    """Objects of the given training classes, cut from labelled scans.

    Args:
        objects: list of ``(points [n, 4] float32, train label)``.
    """

    def __init__(self, objects: Sequence[Tuple[np.ndarray, int]]) -> None:
        self.objects = [(np.ascontiguousarray(p, np.float32), int(c)) for p, c in objects]
        for i, (p, _) in enumerate(self.objects):
            if p.ndim != 2 or p.shape[1] != 4 or not len(p):
                raise ValueError(f"object {i}: points must be a non-empty [n, 4] array, got {p.shape}")

    def __len__(self) -> int:
        return len(self.objects)

    @classmethod
    def from_dataset(cls, dataset: SemanticKITTI, classes: Sequence[int], min_points: int = 20) -> "InstanceBank":
        """Every ``(class, instance id)`` group with at least ``min_points`` points in the labelled scans of
        ``dataset`` whose training class is in ``classes`` (instance id 0 = no instance, skipped)."""
        want = np.zeros(256, bool)
        want[np.asarray(list(classes), np.int64)] = True
        objects: List[Tuple[np.ndarray, int]] = []
        for scan_id, bin_path, label_path in dataset.scans:
            if label_path is None:
                continue
            pts = read_points(bin_path)
            sem, inst = read_labels(label_path, len(pts))
            train = raw_to_train(sem, str(label_path))
            keep = want[np.minimum(train, 255)] & (inst > 0)
            if not keep.any():
                continue
            key = train[keep].astype(np.int64) * 65536 + inst[keep]
            rows = np.flatnonzero(keep)
            uniq, inv, counts = np.unique(key, return_inverse=True, return_counts=True)
            order = np.argsort(inv, kind="stable")
            for k, grp in zip(uniq, np.split(rows[order], np.cumsum(counts)[:-1])):
                if len(grp) >= min_points:
                    objects.append((pts[grp], int(k // 65536)))
        return cls(objects)

    def class_histogram(self, num_classes: int) -> np.ndarray:
        """``[num_classes]`` object count per class."""
        return np.bincount([c for _, c in self.objects], minlength=num_classes)


class InstancePaste:
    """Paste ``num`` random bank objects, each rotated about z by an angle ~ U(0, 2 pi), into the sample.

    Objects are drawn class-balanced: a class uniformly among the bank's classes, then an object of it.
    Input ``{"points": [N, 4], "labels": [N], ...}``; output the same keys with the pasted points
    appended (labels = the object's class). Samples without ``labels`` are returned unchanged.
    """

    def __init__(self, bank: InstanceBank, num: int = 6, generator: Optional[torch.Generator] = None) -> None:
        if isinstance(num, bool) or not isinstance(num, int) or num < 0:
            raise ValueError(f"num must be an int >= 0, got {num!r}")
        self.bank, self.num, self.generator = bank, num, generator
        by_class: dict = {}
        for i, (_, c) in enumerate(bank.objects):
            by_class.setdefault(c, []).append(i)
        self.by_class = [np.asarray(v) for _, v in sorted(by_class.items())]

    def __call__(self, sample: dict) -> dict:
        if "labels" not in sample or not self.by_class or self.num == 0:
            return sample
        g = self.generator
        pts, labs = [sample["points"]], [sample["labels"]]
        for _ in range(self.num):
            ids = self.by_class[int(torch.randint(len(self.by_class), (), generator=g))]
            p, c = self.bank.objects[int(ids[int(torch.randint(len(ids), (), generator=g))])]
            q = rotate_z(p, 2 * math.pi * float(torch.rand((), generator=g, dtype=torch.float64)))
            pts.append(q)
            labs.append(np.full(len(q), c, dtype=sample["labels"].dtype))
        return {**sample, "points": np.concatenate(pts), "labels": np.concatenate(labs)}
