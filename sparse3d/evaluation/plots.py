r"""Evaluation reports: per-class IoU table (Markdown / JSON) and a confusion-matrix PNG (matplotlib)."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Dict, Optional, Sequence, Union

import numpy as np

__all__ = ["iou_table", "iou_table_markdown", "write_iou_table", "plot_confusion_matrix"]

PathLike = Union[str, os.PathLike]


def _as_numpy(x) -> np.ndarray:
    return np.asarray(x.cpu() if hasattr(x, "cpu") else x)


def iou_table(matrix, class_names: Sequence[str]) -> Dict[str, object]:
    """Per-class figures of a confusion matrix.

    Args:
        matrix: ``[C, C]`` integer counts, rows = target, cols = prediction (``ConfusionMatrix.matrix``).
        class_names: ``C`` names.

    Returns:
        ``{"classes": [{"name", "iou", "tp", "fp", "fn", "points"}...], "miou_semantickitti",
        "miou_nuscenes", "accuracy", "points"}``; IoU = tp/(tp+fp+fn), 0 for an absent class in
        ``miou_semantickitti``, absent classes skipped in ``miou_nuscenes`` (``None`` if all absent).
    """
    m = _as_numpy(matrix).astype(np.int64)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"matrix must be square [C, C], got shape {m.shape}")
    if len(class_names) != m.shape[0]:
        raise ValueError(f"class_names has {len(class_names)} entries but the matrix has {m.shape[0]} classes")
    tp = np.diag(m)
    fp, fn = m.sum(0) - tp, m.sum(1) - tp
    den = tp + fp + fn
    iou = np.where(den > 0, tp / np.maximum(den, 1), 0.0)
    total = int(m.sum())
    rows = [{"name": str(n), "iou": float(iou[i]), "tp": int(tp[i]), "fp": int(fp[i]), "fn": int(fn[i]),
             "points": int(tp[i] + fn[i])} for i, n in enumerate(class_names)]
    present = den > 0
    return {"classes": rows, "miou_semantickitti": float(iou.mean()),
            "miou_nuscenes": float(iou[present].mean()) if present.any() else None,
            "accuracy": float(tp.sum() / total) if total else None, "points": total}


def _pct(v: Optional[float]) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.2f}"


def iou_table_markdown(table: Dict[str, object], title: Optional[str] = None) -> str:
    """Markdown table (IoU in %) of :func:`iou_table`'s result, with the mIoU lines below."""
    lines = [f"## {title}", ""] if title else []
    lines += ["| class | IoU % | tp | fp | fn | GT points |", "|---|---:|---:|---:|---:|---:|"]
    for r in table["classes"]:
        absent = r["tp"] + r["fp"] + r["fn"] == 0
        lines.append(f"| {r['name']} | {_pct(r['iou'])}{' (absent)' if absent else ''} | {r['tp']} | {r['fp']} "
                     f"| {r['fn']} | {r['points']} |")
    lines += ["", f"- mIoU (semantic-kitti-api, absent classes count 0): **{_pct(table['miou_semantickitti'])}**",
              f"- mIoU (nuScenes nanmean, absent classes skipped): {_pct(table['miou_nuscenes'])}",
              f"- accuracy: {_pct(table['accuracy'])} over {table['points']} labelled points", ""]
    return "\n".join(lines)


def write_iou_table(table: Dict[str, object], out_dir: PathLike, stem: str = "iou",
                    title: Optional[str] = None) -> Dict[str, Path]:
    """Write ``<out_dir>/<stem>.md`` and ``<out_dir>/<stem>.json``; returns both paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md, js = out / f"{stem}.md", out / f"{stem}.json"
    md.write_text(iou_table_markdown(table, title))
    js.write_text(json.dumps(table, indent=2) + "\n")
    return {"markdown": md, "json": js}


def plot_confusion_matrix(matrix, class_names: Sequence[str], path: PathLike, normalize: bool = True,
                          title: str = "Confusion matrix", dpi: int = 120) -> Path:
    """Save the confusion matrix as a PNG heat map.

    Args:
        matrix: ``[C, C]`` counts, rows = target, cols = prediction.
        class_names: ``C`` axis labels.
        path: output ``.png``.
        normalize: show row-normalized fractions (recall per target class; rows without points stay 0)
            instead of raw counts.
    """
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    m = _as_numpy(matrix).astype(np.float64)
    if m.ndim != 2 or m.shape[0] != m.shape[1] or len(class_names) != m.shape[0]:
        raise ValueError(f"matrix must be [C, C] with C = len(class_names) = {len(class_names)}, got {m.shape}")
    if normalize:
        rows = m.sum(1, keepdims=True)
        m = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)
    c = len(class_names)
    size = max(4.0, 0.45 * c + 2.0)
    fig, ax = plt.subplots(figsize=(size + 1.0, size))
    try:
        im = ax.imshow(m, cmap="Blues", vmin=0.0, vmax=1.0 if normalize else max(m.max(), 1.0))
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
        ax.set_xticks(range(c), labels=list(class_names), rotation=90, fontsize=7)
        ax.set_yticks(range(c), labels=list(class_names), fontsize=7)
        ax.set_xlabel("prediction")
        ax.set_ylabel("ground truth")
        ax.set_title(title + (" (row-normalized)" if normalize else ""))
        if c <= 25:
            thresh = 0.5 * (1.0 if normalize else max(m.max(), 1.0))
            for i in range(c):
                for j in range(c):
                    if m[i, j] > 0:
                        txt = f"{m[i, j]:.2f}" if normalize else f"{int(m[i, j])}"
                        ax.text(j, i, txt, ha="center", va="center", fontsize=5,
                                color="white" if m[i, j] > thresh else "black")
        fig.tight_layout()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=dpi)
    finally:
        plt.close(fig)
    return path
