"""BEVFusion BEV map segmentation: grid transform orientation, head/loss, focal loss and the map IoU metric."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import sparse3d  # noqa: F401
from sparse3d.models.bevfusion.map_head import (MAP_CLASSES, MAP_THRESHOLDS, BEVGridTransform, BEVSegmentationHead,
                                                 MapIoU, map_iou, map_iou_counts, sigmoid_focal_loss)

torch.set_num_threads(2)


def l_shape(x, y):
    """An L off the diagonals: a long bar along +x and a short bar along +y from the corner (4, -32);
    a transposed or flipped copy does not overlap it. Edges lie on both the 0.8 m (from -51.2) and the
    0.5 m (from -50) cell borders."""
    return ((x >= 4) & (x < 44) & (y >= -32) & (y < -24)) | ((x >= 4) & (x < 12) & (y >= -32) & (y < -4))


def centers(lo, hi, step):
    n = int(round((hi - lo) / step))
    return lo + (np.arange(n) + 0.5) * step


# ----------------------------------------------------------------------------- grid transform
def test_grid_transform_identity_is_exact():
    t = BEVGridTransform(((-51.2, 51.2, 0.8), (-25.6, 25.6, 0.8)), ((-51.2, 51.2, 0.8), (-25.6, 25.6, 0.8)))
    x = torch.randn(2, 3, 128, 64)
    torch.testing.assert_close(t(x), x)


def test_grid_transform_keeps_l_orientation():
    t = BEVGridTransform()  # 128 x 128 at 0.8 m -> 200 x 200 at 0.5 m
    cx = centers(-51.2, 51.2, 0.8)
    mask_in = l_shape(cx[:, None], cx[None, :]).astype(np.float32)
    out = t(torch.from_numpy(mask_in)[None, None])[0, 0].numpy()
    assert out.shape == (200, 200)
    co = centers(-50, 50, 0.5)
    want = l_shape(co[:, None], co[None, :])
    # away from the edges (bilinear blur within one input cell) the resampled mask is the same L
    shifted = [l_shape(co[:, None] + dx, co[None, :] + dy) for dx in (-0.8, 0, 0.8) for dy in (-0.8, 0, 0.8)]
    inner, outer = np.logical_and.reduce(shifted), ~np.logical_or.reduce(shifted)
    assert inner.sum() > 500 and np.allclose(out[inner], 1.0) and np.allclose(out[outer], 0.0)
    def iou(a, b):
        return (a & b).sum() / (a | b).sum()
    got = out >= 0.5
    assert iou(got, want) == 1.0  # edges on cell borders: bilinear weights 0.8125 inside, 0.1875 outside
    # the transposed / flipped L does not match
    assert iou(got, want.T) == 0 and iou(got, want[::-1]) == 0 and iou(got, want[:, ::-1]) == 0


def test_grid_transform_outside_scope_is_zero():
    t = BEVGridTransform(((-10, 10, 1.0), (-10, 10, 1.0)), ((-20, 20, 1.0), (-20, 20, 1.0)))
    out = t(torch.ones(1, 1, 20, 20))[0, 0]
    assert out.shape == (40, 40)
    assert bool((out[:9] == 0).all()) and bool((out[:, 31:] == 0).all()) and bool((out[11:29, 11:29] == 1).all())


def test_grid_transform_bad_input():
    t = BEVGridTransform(((-51.2, 51.2, 0.8), (-25.6, 25.6, 0.8)))
    with pytest.raises(ValueError, match=r"\(128, 64\)"):
        t(torch.zeros(1, 2, 64, 128))  # a transposed map
    with pytest.raises(ValueError, match=r"\[B, C, X, Y\]"):
        t(torch.zeros(2, 64, 128))
    with pytest.raises(ValueError, match="input_scope"):
        BEVGridTransform(((0, -1, 0.5), (0, 1, 0.5)))
    with pytest.raises(ValueError, match="output_scope"):
        BEVGridTransform(output_scope=(1, 2, 3))


# ----------------------------------------------------------------------------- focal loss
@pytest.mark.parametrize("alpha,gamma", [(-1.0, 2.0), (0.25, 2.0), (0.5, 0.0), (0.75, 1.5)])
def test_focal_loss_matches_formula(alpha, gamma):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 30, generator=g, dtype=torch.float64) * 3
    y = (torch.rand(4, 30, generator=g) > 0.6).double()
    p = torch.sigmoid(x)
    pos = -((1 - p) ** gamma) * torch.log(p)
    neg = -(p ** gamma) * torch.log(1 - p)
    if alpha >= 0:
        pos, neg = alpha * pos, (1 - alpha) * neg
    direct = torch.where(y > 0, pos, neg)
    torch.testing.assert_close(sigmoid_focal_loss(x, y, alpha, gamma, "none"), direct)
    torch.testing.assert_close(sigmoid_focal_loss(x, y, alpha, gamma), direct.mean())
    torch.testing.assert_close(sigmoid_focal_loss(x, y, alpha, gamma, "sum"), direct.sum())


def test_focal_loss_gradcheck_and_errors():
    x = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    y = (torch.rand(3, 5) > 0.5).double()
    assert torch.autograd.gradcheck(lambda a: sigmoid_focal_loss(a, y, 0.25, 2.0), (x,))
    big = torch.tensor([60.0, -60.0, 0.0], requires_grad=True)  # saturated logits stay finite
    loss = sigmoid_focal_loss(big, torch.tensor([0.0, 1.0, 1.0]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(big.grad).all()
    with pytest.raises(ValueError, match="differ"):
        sigmoid_focal_loss(torch.zeros(2), torch.zeros(3))
    with pytest.raises(ValueError, match="reduction"):
        sigmoid_focal_loss(torch.zeros(2), torch.zeros(2), reduction="max")


# ----------------------------------------------------------------------------- head
def test_head_forward_loss_gradients():
    torch.manual_seed(0)
    head = BEVSegmentationHead(4)
    assert head.classes == MAP_CLASSES
    bev = torch.randn(2, 4, 128, 128, requires_grad=True)
    logits = head([bev])
    assert logits.shape == (2, 6, 200, 200)
    gt = (torch.rand(2, 6, 200, 200) > 0.7).to(torch.uint8)
    losses = head.loss(logits, gt)
    assert sorted(losses) == sorted(f"{c}/focal" for c in MAP_CLASSES)
    torch.testing.assert_close(losses["walkway/focal"], sigmoid_focal_loss(logits[:, 2], gt[:, 2].float()))
    sum(losses.values()).backward()
    assert torch.isfinite(bev.grad).all() and bool((bev.grad != 0).any())
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in head.parameters())
    probs = head.predict(logits)
    probs = probs.detach()
    assert float(probs.min()) >= 0 and float(probs.max()) <= 1


def test_head_options_and_bad_input():
    t = BEVGridTransform(((-25.6, 25.6, 0.4), (-25.6, 25.6, 0.4)), ((-25, 25, 0.5), (-25, 25, 0.5)))
    head = BEVSegmentationHead(4, t, classes=("drivable_area", "divider"), loss="xent")
    logits = head(torch.randn(1, 4, 128, 128))
    assert logits.shape == (1, 2, 100, 100)
    assert sorted(head.loss(logits, torch.zeros(1, 2, 100, 100))) == ["divider/xent", "drivable_area/xent"]
    head2 = BEVSegmentationHead(4, dict(input_scope=((-25.6, 25.6, 0.4), (-25.6, 25.6, 0.4)),
                                        output_scope=((-25, 25, 0.5), (-25, 25, 0.5))))
    assert head2(torch.randn(1, 4, 128, 128)).shape == (1, 6, 100, 100)
    with pytest.raises(ValueError, match="gt_masks"):
        head.loss(logits, torch.zeros(1, 2, 100, 99))
    with pytest.raises(ValueError, match=r"\[B, 4, X, Y\]"):
        head(torch.randn(1, 5, 128, 128))
    with pytest.raises(ValueError, match="loss"):
        BEVSegmentationHead(4, loss="dice")


def test_head_hidden_channels():
    torch.manual_seed(0)
    head = BEVSegmentationHead(8, hidden_channels=3)
    assert head.hidden_channels == 3 and BEVSegmentationHead(8).hidden_channels == 8
    widths = [(m.in_channels, m.out_channels) for m in head.classifier if isinstance(m, torch.nn.Conv2d)]
    assert widths == [(8, 3), (3, 3), (3, 6)]
    bev = torch.randn(1, 8, 128, 128, requires_grad=True)
    logits = head(bev)
    assert logits.shape == (1, 6, 200, 200)
    sum(head.loss(logits, torch.zeros_like(logits)).values()).backward()
    assert torch.isfinite(bev.grad).all() and bool((bev.grad != 0).any())
    with pytest.raises(ValueError, match="hidden_channels"):
        BEVSegmentationHead(8, hidden_channels=0)


def test_map_classes_match_dataset():
    from sparse3d.datasets.nuscenes.common import MAP_CLASSES as DATASET_CLASSES
    assert MAP_CLASSES == DATASET_CLASSES
    assert MAP_THRESHOLDS == (0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65)


# ----------------------------------------------------------------------------- metric
def bevfusion_evaluate_map(preds, gts, thresholds=MAP_THRESHOLDS):
    """BEVFusion ``nuscenes_dataset.py::evaluate_map`` (per-sample loop; eps 1e-7)."""
    th = torch.tensor(thresholds)
    K = preds[0].shape[0]
    tp = torch.zeros(K, len(th))
    fp = torch.zeros(K, len(th))
    fn = torch.zeros(K, len(th))
    for pred, label in zip(preds, gts):
        pred = pred.detach().reshape(K, -1)
        label = label.detach().bool().reshape(K, -1)
        pred = pred[:, :, None] >= th
        label = label[:, :, None]
        tp += (pred & label).sum(dim=1)
        fp += (pred & ~label).sum(dim=1)
        fn += (~pred & label).sum(dim=1)
    ious = tp / (tp + fp + fn + 1e-7)
    return ious, ious.max(dim=1).values, ious.max(dim=1).values.mean()


def test_map_iou_perfect_prediction():
    g = torch.Generator().manual_seed(0)
    gt = torch.rand(2, 6, 20, 30, generator=g) > 0.5
    r = map_iou(gt.float(), gt)
    assert torch.equal(r["iou"], torch.ones(6, 7, dtype=torch.float64))
    assert float(r["miou"]) == 1.0 and torch.equal(r["iou_max"], torch.ones(6, dtype=torch.float64))
    logits = torch.where(gt, 5.0, -5.0)  # logits are detected (values outside [0, 1]) and squashed
    assert float(map_iou(logits, gt)["miou"]) == 1.0
    assert float(map_iou(logits, gt, from_logits=True)["miou"]) == 1.0


def test_map_iou_hand_built():
    # one class, 5 pixels: probabilities and GT chosen so the counts change across thresholds
    pred = torch.tensor([0.9, 0.6, 0.5, 0.4, 0.1]).view(1, 1, 5)
    gt = torch.tensor([1, 1, 0, 1, 0]).view(1, 1, 5)
    r = map_iou(pred, gt, thresholds=(0.35, 0.5, 0.65), from_logits=False)
    # t=0.35: pred {0,1,2,3}: tp 3, fp 1, fn 0 -> 3/4; t=0.5 (>=): {0,1,2}: tp 2 fp 1 fn 1 -> 2/4; t=0.65: {0}: 1/3
    np.testing.assert_allclose(r["iou"].numpy(), [[0.75, 0.5, 1 / 3]])
    assert r["tp"].tolist() == [[3, 2, 1]] and r["fp"].tolist() == [[1, 1, 0]] and r["fn"].tolist() == [[0, 1, 2]]
    assert float(r["iou_max"][0]) == 0.75 and float(r["miou"]) == 0.75


def test_map_iou_empty_classes():
    pred = torch.zeros(3, 4, 4)
    gt = torch.zeros(3, 4, 4, dtype=torch.bool)
    gt[0, :2] = True
    pred[0, :2] = 0.9  # class 0 perfect
    pred[2, 0, 0] = 0.5  # class 2: no GT, one pixel predicted at t <= 0.5 (IoU 0 there, undefined above)
    # class 1: no GT, no prediction -> undefined at every threshold
    r = map_iou(pred, gt)
    assert torch.isnan(r["iou"][1]).all() and math.isnan(float(r["iou_max"][1]))
    assert r["iou"][2, :4].tolist() == [0.0] * 4 and torch.isnan(r["iou"][2, 4:]).all()
    assert float(r["iou_max"][2]) == 0.0
    assert float(r["miou"]) == pytest.approx(0.5)  # mean of classes 0 (1.0) and 2 (0.0); class 1 left out
    r1 = map_iou(pred, gt, empty_value=1.0)
    assert r1["iou_max"].tolist() == [1.0, 1.0, 1.0] and float(r1["miou"]) == 1.0
    r0 = map_iou(pred, gt, empty_value=0.0)
    assert r0["iou_max"].tolist() == [1.0, 0.0, 0.0] and float(r0["miou"]) == pytest.approx(1 / 3)
    # nothing anywhere: the mean is undefined too
    assert math.isnan(float(map_iou(torch.zeros(2, 3, 3), torch.zeros(2, 3, 3))["miou"]))


def test_map_iou_matches_bevfusion_and_accumulates():
    g = torch.Generator().manual_seed(1)
    preds = [torch.rand(6, 25, 25, generator=g) for _ in range(3)]
    gts = [(torch.rand(6, 25, 25, generator=g) * torch.linspace(0, 1, 6).view(6, 1, 1)) > 0.3 for _ in range(3)]
    gts[0][5] = False
    ref_iou, ref_max, ref_mean = bevfusion_evaluate_map(preds, gts)
    r = map_iou(torch.stack(preds), torch.stack(gts), empty_value=0.0)
    torch.testing.assert_close(r["iou"].float(), ref_iou, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(r["iou_max"].float(), ref_max, atol=1e-6, rtol=1e-6)
    assert float(r["miou"]) == pytest.approx(float(ref_mean), abs=1e-6)
    acc = MapIoU(empty_value=0.0, from_logits=False)
    for p, gt in zip(preds, gts):
        acc.update(p, gt.to(torch.uint8))  # [K, X, Y] samples, integer GT
    torch.testing.assert_close(acc.compute()["iou"], r["iou"])
    s = acc.summary()
    assert s["map/mean/iou@max"] == pytest.approx(float(ref_mean), abs=1e-6)
    assert s["map/divider/iou@0.35"] == pytest.approx(float(ref_iou[5, 0]), abs=1e-6)
    assert len(s) == 6 * 8 + 1
    acc.reset()
    assert int(acc.tp.sum()) == 0


def test_map_iou_float_gt_and_counts():
    pred = torch.tensor([[[0.2, 0.7], [0.5, 0.35]]])
    gt = torch.tensor([[[0.0, 1.0], [0.6, 0.4]]])  # float GT: >= 0.5 is positive
    # float32 0.35 >= threshold 0.35: thresholds are compared in pred's dtype (as BEVFusion)
    tp, fp, fn = map_iou_counts(pred, gt, thresholds=(0.35, 0.5))
    assert tp.tolist() == [[2, 2]] and fp.tolist() == [[1, 0]] and fn.tolist() == [[0, 0]]


def test_map_iou_bad_input():
    with pytest.raises(ValueError, match="gt must have pred's shape"):
        map_iou(torch.zeros(1, 2, 3, 3), torch.zeros(1, 2, 3, 4))
    with pytest.raises(ValueError, match="NaN"):
        map_iou(torch.full((2, 3, 3), math.nan), torch.zeros(2, 3, 3))
    with pytest.raises(TypeError, match="floating-point"):
        map_iou(torch.zeros(2, 3, 3, dtype=torch.long), torch.zeros(2, 3, 3))
    with pytest.raises(ValueError, match=r"\[B, K, X, Y\]"):
        map_iou(torch.zeros(3, 3), torch.zeros(3, 3))
    with pytest.raises(ValueError, match="classes"):
        MapIoU().update(torch.zeros(1, 2, 3, 3), torch.zeros(1, 2, 3, 3))
