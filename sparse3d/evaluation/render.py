r"""Offscreen open3d render (PNG) of a scan's prediction next to its ground truth.

Points are coloured with the SemanticKITTI ``color_map`` (``semantic-kitti.yaml``, stored BGR),
through ``learning_map_inv`` for training ids; ignored points (255) are drawn black like raw id 0.

Rendering uses ``open3d.visualization.rendering.OffscreenRenderer`` (Filament). Without a display
open3d falls back to headless mode and Filament picks its Vulkan backend when a Vulkan device exists
(on CPU-only machines the Mesa software driver *lavapipe*, Debian packages ``libvulkan1
mesa-vulkan-drivers``), otherwise OpenGL/EGL. When neither works, Filament aborts the whole process
(an uncatchable C++ ``PostconditionPanic``), so the renderer runs in a child process (this file run
as a script, which needs only numpy and open3d) and a failure becomes an
:class:`OffscreenRenderError` carrying the child's log. The two panels are then composed with
matplotlib, with titles and a legend of the classes present.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple, Union

import numpy as np

__all__ = ["COLOR_MAP_BGR", "OffscreenRenderError", "semantic_kitti_colors", "render_views",
           "render_prediction_vs_gt"]

PathLike = Union[str, os.PathLike]

#: SemanticKITTI ``color_map`` (raw id -> [b, g, r]) from semantic-kitti-api ``config/semantic-kitti.yaml``.
COLOR_MAP_BGR: Dict[int, Tuple[int, int, int]] = {
    0: (0, 0, 0), 1: (0, 0, 255), 10: (245, 150, 100), 11: (245, 230, 100), 13: (250, 80, 100),
    15: (150, 60, 30), 16: (255, 0, 0), 18: (180, 30, 80), 20: (255, 0, 0), 30: (30, 30, 255),
    31: (200, 40, 255), 32: (90, 30, 150), 40: (255, 0, 255), 44: (255, 150, 255), 48: (75, 0, 75),
    49: (75, 0, 175), 50: (0, 200, 255), 51: (50, 120, 255), 52: (0, 150, 255), 60: (170, 255, 150),
    70: (0, 175, 0), 71: (0, 60, 135), 72: (80, 240, 150), 80: (150, 240, 255), 81: (0, 0, 255),
    99: (255, 255, 50), 252: (245, 150, 100), 256: (255, 0, 0), 253: (200, 40, 255), 254: (30, 30, 255),
    255: (90, 30, 150), 257: (250, 80, 100), 258: (180, 30, 80), 259: (255, 0, 0),
}


_CHILD = "import runpy, sys; runpy.run_path(sys.argv[1], run_name='__main__')"


class OffscreenRenderError(RuntimeError):
    """open3d could not render offscreen on this platform (no usable Vulkan or EGL driver)."""


def _train_lut() -> np.ndarray:
    from ..datasets.semantic_kitti import LEARNING_MAP_INV, NUM_CLASSES
    lut = np.zeros((256, 3), dtype=np.float32)  # 255 (ignore) and unused ids -> raw 0 (black)
    for t in range(NUM_CLASSES):
        b, g, r = COLOR_MAP_BGR[LEARNING_MAP_INV[t + 1]]
        lut[t] = (r / 255.0, g / 255.0, b / 255.0)
    return lut


def semantic_kitti_colors(train_ids) -> np.ndarray:
    """``[N]`` training ids (0..18, 255 = ignore) -> ``[N, 3]`` float32 RGB in [0, 1]."""
    t = np.asarray(train_ids.cpu() if hasattr(train_ids, "cpu") else train_ids)
    if t.dtype.kind not in "iu":
        raise TypeError(f"train_ids must be integers, got dtype {t.dtype}")
    if t.size and (t.min() < 0 or t.max() > 255):
        raise ValueError("train_ids must be in 0..255")
    return _train_lut()[t.astype(np.int64)]


def _camera(xyz: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Oblique view from behind/above the sensor, framing most of the scan: (center, eye, up)."""
    center = np.median(xyz, axis=0)
    r = float(np.percentile(np.linalg.norm(xyz[:, :2] - center[:2], axis=1), 80)) + 1.0
    eye = center + np.array([-0.9 * r, 0.0, 0.9 * r])
    return center, eye, np.array([0.0, 0.0, 1.0])


def _render_panels(xyz: np.ndarray, colors: np.ndarray, width: int, height: int,
                   point_size: float) -> np.ndarray:
    """Child-process side: ``[P, H, W, 3]`` uint8, one render per colour set ``colors [P, N, 3]``."""
    import open3d as o3d
    rendering = o3d.visualization.rendering

    renderer = rendering.OffscreenRenderer(width, height)
    renderer.scene.view.set_post_processing(False)  # no tone mapping: pixels keep the exact class colours
    mat = rendering.MaterialRecord()
    mat.shader, mat.point_size = "defaultUnlit", float(point_size)
    renderer.scene.set_background([1.0, 1.0, 1.0, 1.0])
    center, eye, up = _camera(xyz)
    pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(xyz.astype(np.float64)))
    images = []
    for c in colors:
        pcd.colors = o3d.utility.Vector3dVector(c.astype(np.float64))
        renderer.scene.clear_geometry()
        renderer.scene.add_geometry("scan", pcd, mat)
        renderer.setup_camera(50.0, center.astype(np.float32), eye.astype(np.float32), up.astype(np.float32))
        images.append(np.asarray(renderer.render_to_image()).copy())
    return np.stack(images)


def render_views(xyz: np.ndarray, colors: Sequence[np.ndarray], width: int = 800, height: int = 600,
                 point_size: float = 2.0, timeout: float = 300.0) -> np.ndarray:
    """Render one point cloud with several colourings, offscreen, in a child process.

    Args:
        xyz: ``[N, 3]`` float coordinates.
        colors: ``P`` arrays ``[N, 3]`` float RGB in [0, 1].
        width, height: image size in pixels.

    Returns:
        ``[P, height, width, 3]`` uint8 images (same camera for all).

    Raises:
        OffscreenRenderError with the child's log when open3d cannot render offscreen.
    """
    xyz = np.asarray(xyz, dtype=np.float32)
    if xyz.ndim != 2 or xyz.shape[1] != 3 or len(xyz) == 0:
        raise ValueError(f"xyz must be a non-empty [N, 3] array, got shape {xyz.shape}")
    cols = np.stack([np.asarray(c, dtype=np.float32) for c in colors])
    if cols.shape[1:] != xyz.shape:
        raise ValueError(f"each colour array must be [N, 3] = {list(xyz.shape)}, got {list(cols.shape[1:])}")
    if width < 16 or height < 16:
        raise ValueError(f"width and height must be >= 16, got {width}x{height}")
    with tempfile.TemporaryDirectory(prefix="sparse3d_render_") as tmp:
        src, dst = Path(tmp) / "in.npz", Path(tmp) / "out.npy"
        np.savez(src, xyz=xyz, colors=cols, size=np.array([width, height]), point_size=np.array(point_size))
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        try:
            # run this file as __main__ without putting its folder first on sys.path
            proc = subprocess.run([sys.executable, "-c", _CHILD, os.path.abspath(__file__), str(src), str(dst)],
                                  capture_output=True, text=True, timeout=timeout, env=env)
        except subprocess.TimeoutExpired as e:
            raise OffscreenRenderError(f"open3d offscreen render did not finish within {timeout:.0f} s") from e
        if proc.returncode != 0 or not dst.is_file():
            how = (f"killed by signal {-proc.returncode}" if proc.returncode < 0
                   else f"exit status {proc.returncode}")
            log = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
            raise OffscreenRenderError(
                f"open3d OffscreenRenderer failed ({how}). Offscreen rendering needs a Vulkan driver (on "
                "CPU-only Linux: apt-get install libvulkan1 mesa-vulkan-drivers, i.e. Mesa lavapipe) or an "
                f"EGL/OpenGL driver; this platform has neither working. open3d log:\n{log}")
        return np.load(dst)


def render_prediction_vs_gt(points, pred, target, path: PathLike, title: Optional[str] = None,
                            width: int = 800, height: int = 600, point_size: float = 2.0,
                            max_points: Optional[int] = None, seed: int = 0) -> Path:
    """Save a PNG: ground truth (left) and prediction (right) of one scan, SemanticKITTI colours.

    Args:
        points: ``[N, >=3]`` float (x, y, z, ...) of the scan.
        pred: ``[N]`` training ids 0..18 per point.
        target: ``[N]`` training ids (255 = ignore, drawn black), or None to render the prediction only.
        path: output ``.png``.
        title: figure title (e.g. the scan id).
        max_points: random subset of at most this many points (faster, same view).
    """
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    from ..datasets.semantic_kitti import CLASS_NAMES, NUM_CLASSES

    pts = np.asarray(points.cpu() if hasattr(points, "cpu") else points)
    pred = np.asarray(pred.cpu() if hasattr(pred, "cpu") else pred).reshape(-1)
    if pts.ndim != 2 or pts.shape[1] < 3:
        raise ValueError(f"points must be [N, >=3], got shape {pts.shape}")
    if len(pred) != len(pts):
        raise ValueError(f"pred has {len(pred)} entries but points has {len(pts)}")
    views, titles = [pred], ["prediction"]
    if target is not None:
        target = np.asarray(target.cpu() if hasattr(target, "cpu") else target).reshape(-1)
        if len(target) != len(pts):
            raise ValueError(f"target has {len(target)} entries but points has {len(pts)}")
        views, titles = [target, pred], ["ground truth", "prediction"]
    if max_points is not None and len(pts) > max_points:
        keep = np.sort(np.random.default_rng(seed).choice(len(pts), max_points, replace=False))
        pts, views = pts[keep], [v[keep] for v in views]
    images = render_views(pts[:, :3], [semantic_kitti_colors(v) for v in views], width, height, point_size)

    present = sorted(set(np.unique(np.concatenate(views)).tolist()) & set(range(NUM_CLASSES)))
    lut = _train_lut()
    fig, axes = plt.subplots(1, len(images), figsize=(len(images) * width / 100, height / 100 + 1.0), dpi=100,
                             gridspec_kw=dict(left=0.01, right=0.99, top=0.9, bottom=0.1, wspace=0.02))
    try:
        for ax, img, t in zip(np.atleast_1d(axes), images, titles):
            ax.imshow(img)
            ax.set_title(t)
            ax.axis("off")
        fig.legend(handles=[Patch(color=lut[c], label=CLASS_NAMES[c]) for c in present], loc="lower center",
                   ncol=min(len(present), 10), fontsize=7, frameon=False)
        if title:
            fig.suptitle(title)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path


def _main(argv: Sequence[str]) -> int:
    src, dst = argv
    data = np.load(src)
    width, height = (int(v) for v in data["size"])
    images = _render_panels(data["xyz"], data["colors"], width, height, float(data["point_size"]))
    np.save(dst, images)
    return 0


if __name__ == "__main__":  # child process of render_views (numpy + open3d only)
    sys.exit(_main(sys.argv[-2:]))
