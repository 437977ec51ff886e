"""Evaluation of segmentation models: inference mapped to every point, leaderboard files
(SemanticKITTI, nuScenes-lidarseg) with validators, IoU tables, confusion-matrix plots and offscreen renders.

mIoU itself is computed by :class:`sparse3d.metrics.segmentation.ConfusionMatrix`. matplotlib and
open3d are imported only when a plot or render is made.
"""
from .nuscenes_lidarseg_submission import (LIDARSEG_CLASSES, META_KEYS, expected_points_from_nuscenes,
                                           train_to_lidarseg, validate_nuscenes_lidarseg_submission,
                                           write_nuscenes_lidarseg_prediction, write_nuscenes_submission_meta)
from .plots import iou_table, iou_table_markdown, plot_confusion_matrix, write_iou_table
from .predict import collate_with_sizes, load_model_weights, predict_batch, predict_dataset
from .render import COLOR_MAP_BGR, OffscreenRenderError, render_prediction_vs_gt, render_views, semantic_kitti_colors
from .semantic_kitti_submission import (VALID_RAW_IDS, SubmissionError, prediction_path, validate_semantic_kitti_submission,
                                        write_description, write_semantic_kitti_labels, zip_semantic_kitti_submission)

__all__ = [
    "SubmissionError", "VALID_RAW_IDS", "prediction_path", "write_semantic_kitti_labels", "write_description",
    "zip_semantic_kitti_submission", "validate_semantic_kitti_submission",
    "LIDARSEG_CLASSES", "META_KEYS", "train_to_lidarseg", "write_nuscenes_lidarseg_prediction",
    "write_nuscenes_submission_meta", "validate_nuscenes_lidarseg_submission", "expected_points_from_nuscenes",
    "iou_table", "iou_table_markdown", "write_iou_table", "plot_confusion_matrix",
    "COLOR_MAP_BGR", "OffscreenRenderError", "semantic_kitti_colors", "render_views", "render_prediction_vs_gt",
    "load_model_weights", "collate_with_sizes", "predict_batch", "predict_dataset",
]
