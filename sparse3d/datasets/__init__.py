"""Datasets and transforms: SemanticKITTI reader, synthetic LiDAR generator, augmentations."""
from .semantic_kitti import (CLASS_NAMES, IGNORE_INDEX, LEARNING_MAP, LEARNING_MAP_INV, NUM_CLASSES, SPLITS,
                             SemanticKITTI, raw_to_train, train_to_raw)
from .synthetic_lidar import SYNTH_RAW_IDS, ensure_synthetic_kitti, generate_synthetic_kitti
from .transforms import Compose, RandomFlip, RandomJitter, RandomRotateZ, RandomScale, Voxelize

__all__ = [
    "SemanticKITTI", "LEARNING_MAP", "LEARNING_MAP_INV", "CLASS_NAMES", "NUM_CLASSES", "IGNORE_INDEX",
    "SPLITS", "raw_to_train", "train_to_raw", "SYNTH_RAW_IDS", "ensure_synthetic_kitti",
    "generate_synthetic_kitti", "Compose", "RandomRotateZ", "RandomScale", "RandomFlip", "RandomJitter",
    "Voxelize",
]
