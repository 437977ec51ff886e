"""ConfusionMatrix: hand-built cases, both mIoU conventions, ignored labels, bad input, DDP reduce."""
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparse3d.metrics.segmentation import ConfusionMatrix


def _cm(pred, target, C=3, ignore=255):
    cm = ConfusionMatrix(C, ignore_index=ignore)
    cm.update(torch.tensor(pred), torch.tensor(target))
    return cm


def test_hand_built_matrix_and_iou():
    # target: 0 0 1 1 2 ; pred: 0 1 1 1 0
    cm = _cm([0, 1, 1, 1, 0], [0, 0, 1, 1, 2])
    assert cm.matrix.dtype == torch.int64
    assert cm.matrix.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]  # rows = target, cols = pred
    # class 0: tp 1, fp 1 (pred 0 on target 2), fn 1 -> 1/3 ; class 1: tp 2, fp 1, fn 0 -> 2/3 ; class 2: 0/1
    iou = cm.iou()
    assert iou.dtype == torch.float64
    torch.testing.assert_close(iou, torch.tensor([1 / 3, 2 / 3, 0.0], dtype=torch.float64))
    assert cm.miou() == pytest.approx(1 / 3)
    assert cm.miou("nuscenes") == pytest.approx(1 / 3)  # all classes present
    assert cm.accuracy() == pytest.approx(3 / 5)


def test_absent_class_both_conventions():
    # class 2 never appears in target or pred
    cm = _cm([0, 1, 1, 0], [0, 1, 1, 1])
    tp, fp, fn = cm.stats()
    assert (tp + fp + fn)[2] == 0
    iou = cm.iou()
    assert iou[2] == 0.0
    assert cm.miou("semantickitti") == pytest.approx((1 / 2 + 2 / 3 + 0) / 3)
    assert cm.miou("nuscenes") == pytest.approx((1 / 2 + 2 / 3) / 2)


def test_predicted_but_absent_in_target_counts_in_both():
    # class 2 only predicted (fp) -> IoU 0 and present under nuscenes too
    cm = _cm([0, 2], [0, 0])
    assert cm.iou().tolist() == [0.5, 0.0, 0.0]
    assert cm.miou("semantickitti") == pytest.approx(0.5 / 3)
    assert cm.miou("nuscenes") == pytest.approx(0.5 / 2)


def test_ignored_targets_are_dropped_whatever_the_prediction():
    cm = _cm([0, 1, 2, 2], [0, 255, 255, 1])
    assert cm.matrix.sum() == 2
    assert cm.matrix.tolist() == [[1, 0, 0], [0, 0, 1], [0, 0, 0]]
    # a custom ignore index
    cm = ConfusionMatrix(3, ignore_index=-1)
    cm.update(torch.tensor([0, 1]), torch.tensor([-1, 1]))
    assert cm.matrix.tolist() == [[0, 0, 0], [0, 1, 0], [0, 0, 0]]


def test_empty_and_reset_and_accumulate():
    cm = ConfusionMatrix(4)
    cm.update(torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long))
    assert cm.matrix.sum() == 0
    assert cm.miou() == 0.0
    assert math.isnan(cm.miou("nuscenes"))
    assert math.isnan(cm.accuracy())
    cm.update(torch.tensor([1]), torch.tensor([1]))
    cm.update(torch.tensor([1, 3]), torch.tensor([1, 2]))
    assert cm.matrix[1, 1] == 2 and cm.matrix[2, 3] == 1
    cm.reset()
    assert cm.matrix.sum() == 0


def test_all_ignored():
    cm = _cm([0, 1], [255, 255])
    assert cm.matrix.sum() == 0


def test_bad_input():
    with pytest.raises(ValueError, match="num_classes"):
        ConfusionMatrix(0)
    with pytest.raises(ValueError, match="ignore_index"):
        ConfusionMatrix(3, ignore_index=1)
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match="pred has 2 entries but target has 3"):
        cm.update(torch.tensor([0, 1]), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="target has ids \\[5\\]"):
        cm.update(torch.tensor([0, 1]), torch.tensor([0, 5]))
    with pytest.raises(ValueError, match="pred has ids \\[-1\\]"):
        cm.update(torch.tensor([0, -1]), torch.tensor([0, 1]))
    with pytest.raises(TypeError, match="pred must be an integer tensor"):
        cm.update(torch.tensor([0.0]), torch.tensor([0]))
    with pytest.raises(TypeError, match="target must be a torch.Tensor"):
        cm.update(torch.tensor([0]), [0])
    with pytest.raises(ValueError, match="convention"):
        cm.miou("kitti")


def _np_ioueval(pred, target, C, ignore):
    """semantic-kitti-api np_ioueval: rows = pred, cols = gt, conf[:, ignore] = 0."""
    conf = np.zeros((C + 1, C + 1), np.int64)  # extra slot for the ignore class id C
    t = np.where(target == ignore, C, target)
    np.add.at(conf, (pred, t), 1)
    conf[:, C] = 0
    tp = np.diag(conf)[:C]
    fp = conf[:C].sum(1) - tp
    fn = conf[:, :C].sum(0) - tp
    iou = tp / (tp + fp + fn + 1e-15)
    return iou, iou.mean()


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 6), st.integers(0, 60), st.integers(0, 2**31 - 1))
def test_matches_semantic_kitti_api(C, n, seed):
    rng = np.random.default_rng(seed)
    pred = rng.integers(0, C, n)
    target = rng.integers(0, C + 1, n)
    target[target == C] = 255
    cm = ConfusionMatrix(C)
    cm.update(torch.from_numpy(pred), torch.from_numpy(target))
    iou, miou = _np_ioueval(pred, target, C, 255)
    np.testing.assert_allclose(cm.iou().numpy(), iou, atol=1e-12)
    assert cm.miou() == pytest.approx(miou, abs=1e-12)


def test_all_reduce_without_distributed_is_a_noop():
    cm = _cm([0, 1], [0, 1])
    before = cm.matrix.clone()
    cm.all_reduce()
    assert torch.equal(cm.matrix, before)
