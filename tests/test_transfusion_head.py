"""TransFusionHead: shapes, BEV axis order, local-max proposals, losses (incl. empty GT), get_bboxes, overfit;
plus the Gaussian heatmap targets and the loss functions."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from sparse3d.models.bevfusion.heads.box_coder import TransFusionBBoxCoder
from sparse3d.models.bevfusion.heads.gaussian import draw_heatmap_gaussian, gaussian_2d, gaussian_radius
from sparse3d.models.bevfusion.heads.losses import (clip_sigmoid, gaussian_focal_loss, sigmoid_focal_loss,
                                                    weighted_l1_loss)
from sparse3d.models.bevfusion.heads.transfusion import TransFusionHead


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def rect_coder():
    """Non-square grid: X = 24 cells (x in [-9.6, 9.6)), Y = 16 cells (y in [-6.4, 6.4)), 0.8 m cells."""
    return TransFusionBBoxCoder((-9.6, -6.4, -3.0, 9.6, 6.4, 3.0), (0.1, 0.1), 8)


def tiny_head(in_channels=8, num_classes=3, num_proposals=10, coder=None, **kw):
    torch.manual_seed(0)
    kw.setdefault("dropout", 0.0)
    return TransFusionHead(in_channels, num_classes, num_proposals, hidden_channels=32, num_heads=4,
                           ffn_channels=64, head_channels=32, nms_exempt_classes=kw.pop("nms_exempt_classes", ()),
                           bbox_coder=coder or rect_coder(), **kw)


class FixedMap(torch.nn.Module):
    """Stands in for the heatmap branch: returns a fixed ``[B, C, X, Y]`` logit map."""

    def __init__(self, dense):
        super().__init__()
        self.dense = dense

    def forward(self, feat):
        return self.dense


def total(losses):
    return sum(v for k, v in losses.items() if k.startswith("loss"))


GT = torch.tensor([[2.0, -3.1, -0.8, 4.2, 1.9, 1.6, 0.4, 3.0, -1.0],
                   [-4.3, 1.5, -0.2, 0.7, 0.6, 1.8, -1.2, 0.5, 0.0],
                   [6.9, 4.4, 0.1, 2.0, 0.8, 1.1, 2.8, 0.0, 0.0]])
GT_LABELS = torch.tensor([0, 1, 2])


# ---------------------------------------------------------------- Gaussian targets
def test_gaussian_radius_matches_centerpoint_formula():
    h, w, o = 5.25, 2.375, 0.1
    r1 = (h + w + math.sqrt((h + w) ** 2 - 4 * w * h * (1 - o) / (1 + o))) / 2
    r2 = (2 * (h + w) + math.sqrt(4 * (h + w) ** 2 - 16 * (1 - o) * w * h)) / 2
    r3 = (-2 * o * (h + w) + math.sqrt(4 * o * o * (h + w) ** 2 - 16 * o * (o - 1) * w * h)) / 2
    assert gaussian_radius((h, w), o) == pytest.approx(min(r1, r2, r3))
    assert gaussian_radius((w, h), o) == pytest.approx(gaussian_radius((h, w), o))
    assert gaussian_radius((10, 10), 0.7) < gaussian_radius((10, 10), 0.1)
    with pytest.raises(ValueError, match="min_overlap"):
        gaussian_radius((1, 1), 1.5)


def test_draw_heatmap_gaussian_axis_order_border_and_max_blend():
    heat = torch.zeros(24, 16)  # [X, Y]
    draw_heatmap_gaussian(heat, (20, 3), 2)
    assert heat[20, 3].item() == 1.0
    assert torch.nonzero(heat == 1).tolist() == [[20, 3]]
    g = gaussian_2d((5, 5), sigma=5 / 6)
    torch.testing.assert_close(heat[18:23, 1:6], torch.from_numpy(g).float())
    assert heat[:18].sum().item() == 0 and heat[:, 6:].sum().item() == 0
    # border: only the inside part is drawn; peak at the corner
    corner = draw_heatmap_gaussian(torch.zeros(24, 16), (23, 0), 3)
    assert corner[23, 0].item() == 1.0
    torch.testing.assert_close(corner[20:24, 0:4], torch.from_numpy(gaussian_2d((7, 7), 7 / 6)[0:4, 3:7]).float())
    # centre outside: nothing / partial, no wrap-around
    assert draw_heatmap_gaussian(torch.zeros(24, 16), (-10, 5), 2).sum().item() == 0
    out = draw_heatmap_gaussian(torch.zeros(24, 16), (-1, 5), 2)
    assert out[0, 5].item() == pytest.approx(float(gaussian_2d((5, 5), 5 / 6)[3, 2])) and out[23].sum() == 0
    # max-blend of two overlapping peaks keeps both maxima at 1
    heat2 = torch.zeros(10, 10)
    draw_heatmap_gaussian(heat2, (4, 4), 2)
    draw_heatmap_gaussian(heat2, (5, 4), 2)
    assert heat2[4, 4].item() == 1.0 and heat2[5, 4].item() == 1.0 and heat2.max().item() == 1.0
    zero_r = draw_heatmap_gaussian(torch.zeros(3, 3), (1, 1), 0)
    assert zero_r.sum().item() == 1.0
    with pytest.raises(ValueError, match="heatmap"):
        draw_heatmap_gaussian(torch.zeros(2, 3, 3), (1, 1), 1)
    with pytest.raises(ValueError, match="radius"):
        draw_heatmap_gaussian(torch.zeros(3, 3), (1, 1), -1)


# ---------------------------------------------------------------- losses
def test_gaussian_focal_loss_formula_and_gradcheck():
    g = torch.Generator().manual_seed(0)
    pred = torch.rand(2, 3, 5, 4, generator=g, dtype=torch.float64) * 0.98 + 0.01
    target = torch.rand(2, 3, 5, 4, generator=g, dtype=torch.float64) * 0.9
    target[0, 1, 2, 2] = 1.0
    target[1, 0, 4, 3] = 1.0
    ref = (-(pred.log()) * (1 - pred) ** 2 * (target == 1)
           - (1 - pred).log() * pred ** 2 * (1 - target) ** 4).sum() / 2
    assert gaussian_focal_loss(pred, target, avg_factor=2).item() == pytest.approx(ref.item(), rel=1e-9)
    pred.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda p: gaussian_focal_loss(p, target, avg_factor=2), (pred,))
    with pytest.raises(ValueError, match="same shape"):
        gaussian_focal_loss(pred, target[0])


def test_sigmoid_focal_loss_matches_torchvision_and_gradcheck():
    tv_ops = pytest.importorskip("torchvision.ops")
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(7, 4, generator=g, dtype=torch.float64)
    labels = torch.tensor([0, 4, 2, 4, 3, 1, 4])  # 4 = background
    target = F.one_hot(labels, 5)[:, :4].double()
    ref = tv_ops.sigmoid_focal_loss(logits, target, alpha=0.25, gamma=2.0, reduction="sum") / 4
    assert sigmoid_focal_loss(logits, labels, avg_factor=4).item() == pytest.approx(ref.item(), rel=1e-9)
    weights = torch.tensor([1.0, 0, 1, 1, 2, 1, 0], dtype=torch.float64)
    ref_w = (tv_ops.sigmoid_focal_loss(logits, target, reduction="none") * weights[:, None]).sum() / 3
    assert sigmoid_focal_loss(logits, labels, weights, avg_factor=3).item() == pytest.approx(ref_w.item(), rel=1e-9)
    logits.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: sigmoid_focal_loss(x, labels, weights, avg_factor=3), (logits,))
    with pytest.raises(ValueError, match="labels"):
        sigmoid_focal_loss(logits, labels[:3])


def test_weighted_l1_loss_and_gradcheck():
    pred = torch.tensor([[1.0, 2.0], [3.0, -1.0]], dtype=torch.float64, requires_grad=True)
    target = torch.tensor([[0.0, 2.5], [3.0, 1.0]], dtype=torch.float64)
    w = torch.tensor([[1.0, 0.2], [0.0, 1.0]], dtype=torch.float64)
    assert weighted_l1_loss(pred, target, w, avg_factor=2).item() == pytest.approx((1 + 0.1 + 2) / 2)
    assert torch.autograd.gradcheck(lambda p: weighted_l1_loss(p, target + 0.1, w, avg_factor=2), (pred,))
    assert clip_sigmoid(torch.tensor([-100.0, 100.0])).tolist() == pytest.approx([1e-4, 1 - 1e-4])


# ---------------------------------------------------------------- forward
def test_forward_shapes_and_proposal_count():
    head = tiny_head()
    preds = head(torch.randn(2, 8, 24, 16))
    p = 10
    assert preds["center"].shape == (2, 2, p) and preds["height"].shape == (2, 1, p)
    assert preds["dim"].shape == (2, 3, p) and preds["rot"].shape == (2, 2, p) and preds["vel"].shape == (2, 2, p)
    assert preds["heatmap"].shape == (2, 3, p) and preds["query_heatmap_score"].shape == (2, 3, p)
    assert preds["query_labels"].shape == (2, p) and preds["query_labels"].dtype == torch.int64
    assert preds["query_pos"].shape == (2, p, 2) and preds["dense_heatmap"].shape == (2, 3, 24, 16)
    # more proposals than candidates: clamped to C * X * Y
    small = TransFusionBBoxCoder((0.0, 0.0, -3, 1.6, 0.8, 3), (0.1, 0.1), 8)  # 2 x 1 grid
    preds = tiny_head(num_proposals=50, coder=small)(torch.randn(1, 8, 2, 1))
    assert preds["center"].shape == (1, 2, 6)


def test_bev_axis_order_and_geometry_chain_on_non_square_grid():
    """A heatmap peak at cell (ix=20, iy=3) must become the first query at (20.5, 3.5) cells, decode to that
    cell's centre in metres, and a GT box at that location must get its target peak at [cls, 20, 3]."""
    coder = rect_coder()
    head = tiny_head(coder=coder).eval()
    dense = torch.full((1, 3, 24, 16), -8.0)
    dense[0, 1, 20, 3] = 5.0
    head.heatmap_head = FixedMap(dense)
    with torch.no_grad():
        branch = head.prediction_head.center[-1]
        branch.weight.zero_()
        branch.bias.zero_()
        preds = head(torch.randn(1, 8, 24, 16))
    assert preds["query_labels"][0, 0].item() == 1
    assert preds["query_pos"][0, 0].tolist() == [20.5, 3.5]
    box = head.get_bboxes(preds, max_num=1)[0]
    assert box["labels"].tolist() == [1]
    x_expected, y_expected = -9.6 + 0.8 * 20.5, -6.4 + 0.8 * 3.5
    assert box["boxes"][0, :2].tolist() == pytest.approx([x_expected, y_expected], abs=1e-5)
    gt = torch.tensor([[x_expected, y_expected, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0]])
    target = head.heatmap_target(gt, torch.tensor([1]))
    assert target.shape == (3, 24, 16)
    assert torch.nonzero(target == 1).tolist() == [[1, 20, 3]]


def test_local_max_suppression_and_exempt_classes():
    dense = torch.full((1, 3, 24, 16), -8.0)
    dense[0, 0, 5, 5], dense[0, 0, 5, 6] = 3.0, 2.0  # adjacent: only the larger one is a local max
    dense[0, 2, 10, 10], dense[0, 2, 10, 11] = 3.0, 2.0  # class 2 is exempt: both kept
    dense[0, 1, 0, 0] = 1.0  # border cell can be a local max
    head = tiny_head(num_proposals=4, nms_exempt_classes=(2,)).eval()
    head.heatmap_head = FixedMap(dense)
    with torch.no_grad():
        preds = head(torch.randn(1, 8, 24, 16))
    got = {(int(c), tuple(p)) for c, p in zip(preds["query_labels"][0], preds["query_pos"][0].tolist())}
    assert got == {(0, (5.5, 5.5)), (2, (10.5, 10.5)), (2, (10.5, 11.5)), (1, (0.5, 0.5))}
    scores = preds["query_heatmap_score"][0]
    assert scores[0, preds["query_labels"][0] == 0].item() == pytest.approx(torch.sigmoid(torch.tensor(3.0)).item())


def test_channel_and_grid_mismatch_raise_clear_errors():
    """The upstream channel-mismatch failures (bevfusion #443/#458) surface as cryptic conv errors; here the
    head names the setting."""
    head = tiny_head()
    with pytest.raises(ValueError, match="in_channels=8"):
        head(torch.randn(1, 6, 24, 16))
    with pytest.raises(ValueError, match="grid_size"):
        head(torch.randn(1, 8, 16, 24))  # transposed BEV
    with pytest.raises(ValueError, match=r"\[B, C, X, Y\]"):
        head(torch.randn(8, 24, 16))
    with pytest.raises(ValueError, match="nms_exempt_classes"):
        TransFusionHead(8, 3, bbox_coder=rect_coder())  # default (5, 8) needs the 10 nuScenes classes
    with pytest.raises(ValueError, match="num_heads"):
        TransFusionHead(8, 10, hidden_channels=30, num_heads=4, bbox_coder=rect_coder())
    with pytest.raises(TypeError, match="bbox_coder"):
        TransFusionHead(8, 10, bbox_coder=None)
    with pytest.raises(ValueError, match="nms_kernel_size"):
        TransFusionHead(8, 10, nms_kernel_size=2, bbox_coder=rect_coder())
    preds = head(torch.randn(1, 8, 24, 16))
    with pytest.raises(ValueError, match="gt_boxes"):
        head.loss(preds, [GT, GT], [GT_LABELS, GT_LABELS])
    with pytest.raises(ValueError, match=r"gt_boxes\[0\]"):
        head.loss(preds, [GT[:, :7]], [GT_LABELS])
    with pytest.raises(ValueError, match=r"gt_labels\[0\]"):
        head.loss(preds, [GT], [torch.tensor([0, 1, 3])])


def test_default_nuscenes_head_builds():
    coder = TransFusionBBoxCoder((-51.2, -51.2, -5.0, 51.2, 51.2, 3.0), (0.1, 0.1, 0.2), 8)
    head = TransFusionHead(64, bbox_coder=coder)
    assert head.num_classes == 10 and head.num_proposals == 200 and head.nms_exempt_classes == [5, 8]


# ---------------------------------------------------------------- loss
def test_loss_keys_finite_and_backward(device):
    head = tiny_head().train().to(device)
    preds = head(torch.randn(2, 8, 24, 16, device=device))
    losses = head.loss(preds, [GT.to(device), GT[:1].to(device)], [GT_LABELS.to(device), GT_LABELS[:1].to(device)])
    assert all(v.device.type == device.type for v in losses.values())
    assert set(losses) == {"loss_heatmap", "loss_cls", "loss_bbox", "matched_ious"}
    assert all(torch.isfinite(v) and v.ndim == 0 for v in losses.values())
    assert 0.0 <= losses["matched_ious"].item() <= 1.0 and not losses["matched_ious"].requires_grad
    total(losses).backward()
    grads = [p.grad for p in head.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert head.shared_conv.weight.grad.abs().sum() > 0


def test_zero_gt_boxes_loss_is_finite_and_heatmap_is_negative_only():
    head = tiny_head().train()
    preds = head(torch.randn(2, 8, 24, 16))
    empty_boxes, empty_labels = torch.zeros(0, 9), torch.zeros(0, dtype=torch.long)
    losses = head.loss(preds, [empty_boxes, empty_boxes], [empty_labels, empty_labels])
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_bbox"].item() == 0.0
    assert losses["matched_ious"].item() == 0.0
    p = clip_sigmoid(preds["dense_heatmap"])
    negative_only = (-(1 - p + 1e-12).log() * p.pow(2)).sum()  # avg_factor 1 when there is no positive
    assert losses["loss_heatmap"].item() == pytest.approx(negative_only.item(), rel=1e-5)
    q = torch.sigmoid(preds["heatmap"])  # every query is background for the focal loss
    ref_cls = (-(1 - q).log() * 0.75 * q.pow(2)).sum()
    assert losses["loss_cls"].item() == pytest.approx(ref_cls.item(), rel=1e-4)
    total(losses).backward()
    assert all(torch.isfinite(p.grad).all() for p in head.parameters() if p.grad is not None)
    # a mixed batch: sample 1 without boxes
    preds = head(torch.randn(2, 8, 24, 16))
    mixed = head.loss(preds, [GT, empty_boxes], [GT_LABELS, empty_labels])
    assert all(torch.isfinite(v) for v in mixed.values()) and mixed["loss_bbox"].item() > 0


def test_boxes_outside_grid_do_not_break_targets():
    head = tiny_head()
    far = torch.tensor([[50.0, 50.0, 0.0, 4.0, 2.0, 1.5, 0.0, 0.0, 0.0], [-9.7, 0.0, 0.0, 4.0, 2.0, 1.5, 0.0, 0, 0]])
    target = head.heatmap_target(far, torch.tensor([0, 1]))
    assert target.sum().item() == 0.0
    losses = head.loss(head(torch.randn(1, 8, 24, 16)), [far], [torch.tensor([0, 1])])
    assert all(torch.isfinite(v) for v in losses.values())


# ---------------------------------------------------------------- inference
def test_get_bboxes_limits_sorting_and_format():
    head = tiny_head(num_proposals=12).eval()
    with torch.no_grad():
        preds = head(torch.randn(3, 8, 24, 16))
    results = head.get_bboxes(preds, score_threshold=0.0, max_num=5)
    assert len(results) == 3
    for b, r in enumerate(results):
        assert r["boxes"].shape == (5, 9) and r["scores"].shape == (5,) and r["labels"].dtype == torch.int64
        assert bool((r["scores"][:-1] >= r["scores"][1:]).all())
        assert bool((r["boxes"][:, 3:6] > 0).all())
        codes = head.codes(preds)[b]
        k = int(torch.nonzero(torch.isclose(head.bbox_coder.decode(codes)[:, 0], r["boxes"][0, 0]))[0])
        assert r["labels"][0].item() == preds["query_labels"][b, k].item()  # class = proposal class
        # vx, vy come straight from the velocity branch
        torch.testing.assert_close(r["boxes"][0, 7:9], preds["vel"][b, :, k])
    all_boxes = head.get_bboxes(preds, max_num=500)
    assert all(len(r["scores"]) == 12 for r in all_boxes)
    high = head.get_bboxes(preds, score_threshold=float(all_boxes[0]["scores"][3]), max_num=500)[0]
    assert len(high["scores"]) == 3
    huge = dict(preds, dim=torch.full_like(preds["dim"], 1e4))  # an untrained head: sizes stay finite
    assert torch.isfinite(head.get_bboxes(huge)[0]["boxes"]).all()
    none = head.get_bboxes(preds, score_threshold=1.0)
    assert all(r["boxes"].shape == (0, 9) for r in none)
    inside = head.get_bboxes(preds, center_range=(0.0, -10, -10, 10.0, 10, 10))
    assert all(bool((r["boxes"][:, 0] >= 0).all()) for r in inside)
    with pytest.raises(ValueError, match="max_num"):
        head.get_bboxes(preds, max_num=-1)


def test_predictions_carry_their_own_query_labels():
    """Upstream keeps ``self.query_labels`` as module state, so decoding an older forward's output after a newer
    forward mixes labels; here each prediction dict is self-contained."""
    head = tiny_head().eval()
    with torch.no_grad():
        preds_a = head(torch.randn(1, 8, 24, 16))
        first = head.get_bboxes(preds_a)
        head(torch.randn(1, 8, 24, 16) * 5)
        again = head.get_bboxes(preds_a)
    torch.testing.assert_close(first[0]["labels"], again[0]["labels"])
    torch.testing.assert_close(first[0]["scores"], again[0]["scores"])


def test_overfit_recovers_boxes():
    """One BEV map with 3 boxes (features mark the object cells, as a backbone would): 100 Adam steps make
    get_bboxes return each box with centre error < 1 cell and the right class."""
    coder = TransFusionBBoxCoder((-6.4, -6.4, -3.0, 6.4, 6.4, 3.0), (0.1, 0.1), 8)  # 16 x 16 cells of 0.8 m
    head = tiny_head(coder=coder)
    gt = torch.tensor([[2.0, -3.1, -0.8, 4.2, 1.9, 1.6, 0.4, 3.0, -1.0],
                       [-4.3, 1.5, -0.2, 0.7, 0.6, 1.8, -1.2, 0.5, 0.0],
                       [0.9, 4.4, 0.1, 2.0, 0.8, 1.1, 2.8, 0.0, 0.0]])
    labels = torch.tensor([0, 1, 2])
    g = torch.Generator().manual_seed(0)
    bev = 0.1 * torch.randn(1, 8, 16, 16, generator=g)
    for (ix, iy), c in zip(coder.to_cells(gt[:, :2]).floor().long().tolist(), labels.tolist()):
        bev[0, c, ix, iy] += 1.0
        bev[0, 3:, max(ix - 1, 0):ix + 2, max(iy - 1, 0):iy + 2] += 0.5
    opt = torch.optim.Adam(head.parameters(), lr=3e-3)
    head.train()
    first = None
    for _ in range(100):
        losses = head.loss(head(bev), [gt], [labels])
        loss = total(losses)
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.2 * first
    assert losses["matched_ious"].item() > 0.5  # the matched queries regress the full boxes
    head.eval()
    with torch.no_grad():
        out = head.get_bboxes(head(bev), score_threshold=0.0, max_num=3)[0]
    assert len(out["boxes"]) == 3
    dist = torch.cdist(out["boxes"][:, :2], gt[:, :2])  # [3 pred, 3 gt]
    match = dist.argmin(1)
    assert sorted(match.tolist()) == [0, 1, 2]
    assert (dist.min(1).values < 0.8).all(), dist
    assert out["labels"].tolist() == labels[match].tolist()
    assert (out["scores"] > 0).all()


# ---------------------------------------------------------------- dense (CenterPoint-style) rot / vel branches
def test_dense_branches_read_the_proposal_cell_and_targets_match_brute_force():
    head = tiny_head(dense_keys=["vel", "rot"], dense_radius=1).train()
    assert not hasattr(head.prediction_head, "vel") and not hasattr(head.prediction_head, "rot")
    preds = head(torch.randn(2, 8, 24, 16))
    dense = preds["dense_reg"]
    assert dense.shape == (2, 4, 24, 16)
    pos = preds["query_pos"].floor().long()   # the proposal cell of every query
    for b in range(2):
        cell = dense[b][:, pos[b, :, 0], pos[b, :, 1]]   # [4, P]
        torch.testing.assert_close(preds["vel"][b], cell[:2])
        torch.testing.assert_close(preds["rot"][b], cell[2:])
    # targets: brute force over all cells (Chebyshev distance <= 1 from the centre cell; non-square grid)
    t, w = head.dense_target(GT)
    codes = head.bbox_coder.encode(GT)
    cells = head.bbox_coder.to_cells(GT[:, :2]).floor().long()
    ref_t, ref_w = torch.zeros(4, 24, 16), torch.zeros(24, 16)
    for ix in range(24):
        for iy in range(16):
            for m in range(len(GT)):
                if max(abs(ix - int(cells[m, 0])), abs(iy - int(cells[m, 1]))) <= 1:
                    ref_t[:, ix, iy] = torch.cat([codes[m, 8:10], codes[m, 6:8]])
                    ref_w[ix, iy] = 1.0
    torch.testing.assert_close(t, ref_t)
    assert torch.equal(w, ref_w) and int(w.sum()) == 27
    losses = head.loss(preds, [GT, GT[:0]], [GT_LABELS, GT_LABELS[:0]])
    ref = ((dense[0] - t).abs() * w).sum() / (w.sum() * 4)
    torch.testing.assert_close(losses["loss_dense"], ref)
    total(losses).backward()
    assert head.dense_head[0].weight.grad.abs().sum() > 0
    # radius 0: only the centre cells; boxes outside the grid draw nothing
    t0, w0 = tiny_head(dense_keys=["vel"], dense_radius=0).dense_target(
        torch.cat([GT, torch.tensor([[50.0, 50.0, 0, 4, 2, 1.5, 0, 1, 1]])]))
    assert int(w0.sum()) == 3 and t0.shape == (2, 24, 16)
    # get_bboxes decodes the dense velocity of the proposal cell
    out = head.eval().get_bboxes(head(torch.randn(1, 8, 24, 16)), max_num=500)
    assert out[0]["boxes"].shape[1] == 9


def test_dense_branch_fits_velocity_and_bad_args():
    torch.manual_seed(0)
    head = tiny_head(dense_keys=["vel"], dense_weight=1.0).train()
    bev = torch.randn(1, 8, 24, 16)
    opt = torch.optim.Adam(head.parameters(), 3e-3)
    for _ in range(150):
        losses = head.loss(head(bev), [GT], [GT_LABELS])
        opt.zero_grad()
        total(losses).backward()
        opt.step()
    t, w = head.dense_target(GT)
    dense = head(bev)["dense_reg"]
    err = ((dense - t).abs() * w).sum() / w.sum() / 2
    assert err < 0.2, err   # GT velocities are up to 3 m/s
    with pytest.raises(ValueError, match="dense_keys"):
        tiny_head(dense_keys=["center"])
    with pytest.raises(ValueError, match="dense_keys"):
        tiny_head(dense_keys=["vel", "vel"])
    with pytest.raises(ValueError, match="dense_radius"):
        tiny_head(dense_keys=["vel"], dense_radius=-1)
    with pytest.raises(ValueError, match="dense_loss"):
        tiny_head(dense_keys=["vel"], dense_loss="huber")
    # l2: the squared-error formula
    h2 = tiny_head(dense_keys=["vel"], dense_loss="l2", dense_weight=0.5)
    p2 = h2(bev)
    t2, w2 = h2.dense_target(GT)
    ref = 0.5 * ((p2["dense_reg"][0] - t2).square() * w2).sum() / (w2.sum() * 2)
    torch.testing.assert_close(h2.loss(p2, [GT], [GT_LABELS])["loss_dense"], ref)
