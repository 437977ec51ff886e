"""nuScenes for BEVFusion: a synthetic nuScenes writer (devkit-loadable ``v1.0-mini``) and a devkit-based loader.

    python tools/make_data.py nuscenes --out data/nuscenes_synth --seed 0
    loader = NuScenesLoader("data/nuscenes_synth", "v1.0-mini", nsweeps=2)
    sample = loader.load(loader.split_tokens("mini_train")[0])

The loader (and ``nuscenes-devkit``, a heavy import) is imported on first use of its names.
"""
from .command import add_arguments, cli, run
from .common import (ATTRIBUTES, CAMERAS, CATEGORIES, CLASS_COLORS, DETECTION_CLASSES, LIDAR, LOCATIONS,
                     MAP_CLASSES, TABLES)
from .writer import CUSTOM_SPLITS, build_scene, scene_names, write_nuscenes_synth

__all__ = [
    "cli", "add_arguments", "run", "write_nuscenes_synth", "build_scene", "scene_names", "CUSTOM_SPLITS",
    "NuScenesLoader", "NuScenesDataError", "check_dataroot", "ATTRIBUTES", "CAMERAS", "CATEGORIES",
    "CLASS_COLORS", "DETECTION_CLASSES", "LIDAR", "LOCATIONS", "MAP_CLASSES", "TABLES",
    "NuScenesDataModule", "NuScenesDataset", "collate_nuscenes", "NuScenesLidarSeg", "NuScenesLidarSegDataModule",
]
_LAZY = ("NuScenesLoader", "NuScenesDataError", "check_dataroot")


def __getattr__(name):
    if name in _LAZY:
        from . import loader
        return getattr(loader, name)
    if name in ("NuScenesDataModule", "NuScenesDataset", "collate_nuscenes"):
        from . import module
        return getattr(module, name)
    if name in ("NuScenesLidarSeg", "NuScenesLidarSegDataModule"):
        from . import lidarseg
        return getattr(lidarseg, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
