"""Evaluate a trained segmentation model on SemanticKITTI-format data (Hydra config ``configs/eval.yaml``).

    python tools/eval.py checkpoint=outputs/spvcnn_semantic_kitti_synth/<run>/checkpoints/best.pt
    python tools/eval.py checkpoint=... model=minkunet                      # same overrides as training
    python tools/eval.py checkpoint=... dataset=semantic_kitti dataset.root=../shared/data/semantickitti
    python tools/eval.py checkpoint=... dataset=semantic_kitti split=test   # leaderboard bundle only

Writes to ``output_dir``: ``metrics.json``, ``iou.md`` / ``iou.json`` (per-class IoU, semantic-kitti-api
mIoU and the nuScenes nanmean variant), ``confusion_matrix.png``, ``render_XX_NNNNNN.png`` (open3d,
ground truth | prediction), ``submission/sequences/XX/predictions/*.label`` + ``description.txt`` and
``submission.zip`` (validated with the official rules). Predictions are per point (voxel argmax
through ``lidar_inverse``).
"""
import sparse3d  # noqa: F401  (before torch: passive OpenMP waiting)

import json
import os
from pathlib import Path
from typing import Any, Dict

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("SPARSE3D_ROOT", str(REPO))

import hydra  # noqa: E402
import torch  # noqa: E402
from hydra.utils import instantiate  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from sparse3d import evaluation as E  # noqa: E402
from sparse3d.datasets.semantic_kitti import SPLITS, SemanticKITTI  # noqa: E402
from sparse3d.metrics.segmentation import ConfusionMatrix  # noqa: E402


def build_dataset(datamodule, split: str, sequences):
    """The evaluation scans: every point kept (``Voxelize`` without a voxel cap). For nuScenes-lidarseg
    ``split`` is ``val`` (the datamodule's ``val_split``), ``test`` or a devkit split name."""
    if is_lidarseg(datamodule):
        from sparse3d.datasets.nuscenes.lidarseg import NuScenesLidarSeg
        if split == "val":
            return datamodule.val_dataset()
        datamodule.prepare_data()
        return NuScenesLidarSeg(datamodule.root, datamodule.version, split, datamodule.val_transform(),
                                require_labels=split != "test")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {sorted(SPLITS)}, got {split!r}")
    if split == "val" and sequences is None:
        return datamodule.val_dataset()
    datamodule.prepare_data()
    return SemanticKITTI(datamodule.root, split=split, sequences=None if sequences is None else list(sequences),
                         transform=datamodule.val_transform(), require_labels=split != "test")


def is_lidarseg(datamodule) -> bool:
    from sparse3d.datasets.nuscenes.lidarseg import NuScenesLidarSegDataModule
    return isinstance(datamodule, NuScenesLidarSegDataModule)


def evaluate(cfg: DictConfig) -> Dict[str, Any]:
    """Segmentation evaluation (this file's options), or the experiment's ``eval_fn`` (a dotted path
    called with the config, e.g. ``sparse3d.evaluation.calo.evaluate``)."""
    if cfg.get("eval_fn"):
        from hydra.utils import get_method
        return get_method(str(cfg.eval_fn))(cfg)
    if cfg.num_threads:
        torch.set_num_threads(int(cfg.num_threads))
    device = torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available() else
                          "cpu" if cfg.device == "auto" else cfg.device)
    out = Path(cfg.output_dir)
    dm = instantiate(cfg.dataset)
    dataset = build_dataset(dm, cfg.split, cfg.sequences)
    model = instantiate(cfg.model)
    state = E.load_model_weights(model, cfg.checkpoint, expected_target=cfg.model._target_)
    sub_dir = out / "submission"
    lidarseg = is_lidarseg(dm)
    # nuScenes-lidarseg results are named after the devkit eval set (mini_val, val, test ...)
    nus_split = (dm.val_split if cfg.split == "val" else str(cfg.split)) if lidarseg else None
    cm = ConfusionMatrix(dm.num_classes, dm.ignore_index)
    want = cfg.render.scan
    shown = None
    for r in E.predict_dataset(model, dataset, device, cfg.batch_size, cfg.num_workers, cfg.progress):
        if r["target"] is not None:
            cm.update(r["pred"], r["target"])
        if cfg.submission.enabled and lidarseg:
            lidar_token = dataset.loader.nusc.get("sample", r["scan_id"])["data"]["LIDAR_TOP"]
            E.write_nuscenes_lidarseg_prediction(sub_dir, nus_split, lidar_token, E.train_to_lidarseg(r["pred"]))
        elif cfg.submission.enabled:
            E.write_semantic_kitti_labels(sub_dir, r["scan_id"], r["pred"])
        if cfg.render.enabled and shown is None and (want is None or r["scan_id"] == want):
            shown = r
    result: Dict[str, Any] = {"checkpoint": str(cfg.checkpoint), "epoch": state.get("epoch"),
                              "split": cfg.split, "scans": len(dataset), "output_dir": str(out)}
    if int(cm.matrix.sum()):
        table = E.iou_table(cm.matrix, dm.class_names)
        result.update(miou=cm.miou(dm.miou_convention), miou_convention=dm.miou_convention,
                      miou_semantickitti=cm.miou("semantickitti"), miou_nuscenes=cm.miou("nuscenes"),
                      accuracy=cm.accuracy())
        if cfg.plots.enabled:
            E.write_iou_table(table, out, "iou", title=f"{cfg.experiment_name} {cfg.split} ({len(dataset)} scans)")
            E.plot_confusion_matrix(cm.matrix, dm.class_names, out / "confusion_matrix.png", cfg.plots.normalize)
        print(E.iou_table_markdown(table), flush=True)
    if cfg.submission.enabled and lidarseg:
        E.write_nuscenes_submission_meta(sub_dir, nus_split, use_lidar=True)
        expected = E.expected_points_from_nuscenes(dataset.loader.nusc, nus_split)
        result["submission"] = E.validate_nuscenes_lidarseg_submission(sub_dir, nus_split, expected)
        result["submission_dir"] = str(sub_dir)
        print(f"submission: {sub_dir} ({result['submission']['files']} keyframes, valid)", flush=True)
    elif cfg.submission.enabled:
        E.write_description(sub_dir, str(cfg.submission.description))
        zip_path = E.zip_semantic_kitti_submission(sub_dir, out / "submission.zip")
        result["submission"] = E.validate_semantic_kitti_submission(zip_path, dataset.root, cfg.split,
                                                                    sequences=dataset.sequences)
        result["submission_zip"] = str(zip_path)
        print(f"submission: {zip_path} ({result['submission']['scans']} scans, valid)", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    if cfg.render.enabled:
        if shown is None:
            raise ValueError(f"render.scan={want!r} is not a scan of the evaluated sequences {dataset.sequences}")
        points = dataset.read(shown["index"])["points"]
        png = out / f"render_{shown['scan_id'].replace('/', '_')}.png"
        E.render_prediction_vs_gt(points, shown["pred"], shown["target"], png, title=shown["scan_id"],
                                  width=cfg.render.width, height=cfg.render.height,
                                  point_size=cfg.render.point_size, max_points=cfg.render.max_points)
        result["render"] = str(png)
        (out / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"results: {out}", flush=True)
    return result


@hydra.main(config_path="../configs", config_name="eval", version_base="1.3")
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
