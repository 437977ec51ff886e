"""TransFusionHead box-regression path (issue #5 debugging): code round trip and cell alignment with the query
positions, per-sample query positions, nearest-proposal assignment, gradient flow into every regression branch
only through the matched queries, and a head-only overfit that must fit all 10 codes (heading and velocity
included) when the BEV features carry them."""
from __future__ import annotations

import math

import pytest
import torch

from sparse3d.models.bevfusion.heads.assigner import HungarianAssigner3D
from sparse3d.models.bevfusion.heads.box_coder import TransFusionBBoxCoder
from sparse3d.models.bevfusion.heads.transfusion import HEAD_KEYS, TransFusionHead
from test_transfusion_head import FixedMap


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def coder_rect():
    """Non-square grid: X = 20 cells (x in [-8, 8)), Y = 12 cells (y in [-4.8, 4.8)), 0.8 m cells."""
    return TransFusionBBoxCoder((-8.0, -4.8, -3.0, 8.0, 4.8, 3.0), (0.2, 0.2), 4)


def make_head(coder, in_channels=16, num_classes=3, num_proposals=12, **kw):
    torch.manual_seed(0)
    return TransFusionHead(in_channels, num_classes, num_proposals, hidden_channels=32, num_heads=2,
                           ffn_channels=64, head_channels=32, dropout=0.0, nms_exempt_classes=(), bbox_coder=coder,
                           **kw)


def random_boxes(n, coder, g, margin=1.0):
    lo = torch.tensor(coder.pc_range[:2]) + margin
    hi = torch.tensor(coder.pc_range[3:5]) - margin
    xy = lo + (hi - lo) * torch.rand(n, 2, generator=g)
    z = torch.rand(n, 1, generator=g) - 1.0
    lwh = 0.5 + 4.0 * torch.rand(n, 3, generator=g)
    yaw = (2 * torch.rand(n, 1, generator=g) - 1) * math.pi
    vel = 10.0 * (torch.rand(n, 2, generator=g) - 0.5)
    return torch.cat([xy, z, lwh, yaw, vel], 1)


def bev_carrying_codes(coder, gt, labels, g, channels=16):
    """``[B, channels, X, Y]`` noise with each box's 10 codes (centre as the offset from its cell centre) on its
    3x3 cells in channels 0-9 and a class mark (+2) at its centre cell in channel ``10 + label``, as a backbone
    that has learned them would provide."""
    X, Y = coder.grid_size
    bev = 0.1 * torch.randn(len(gt), channels, X, Y, generator=g)
    for b in range(len(gt)):
        codes = coder.encode(gt[b])
        codes[:, :2] -= codes[:, :2].floor() + 0.5  # offset from the cell centre
        for (ix, iy), c, lab in zip(coder.to_cells(gt[b][:, :2]).floor().long().tolist(), codes, labels[b]):
            bev[b, :10, ix - 1:ix + 2, iy - 1:iy + 2] = c[:, None, None]
            bev[b, 10 + lab, ix, iy] += 2.0
    return bev


def fit(head, bev, gt, labels, steps, lr=3e-3):
    """``steps`` Adam steps of the head's summed losses on one fixed batch (the head left in train mode)."""
    opt = torch.optim.Adam(head.parameters(), lr=lr)
    head.train()
    for _ in range(steps):
        losses = head.loss(head(bev), gt, labels)
        opt.zero_grad()
        sum(v for k, v in losses.items() if k.startswith("loss")).backward()
        opt.step()
    return losses


def test_encode_decode_round_trip_and_cell_units():
    coder = coder_rect()
    g = torch.Generator().manual_seed(0)
    boxes = random_boxes(50, coder, g, margin=0.0).double()
    codes = coder.encode(boxes)
    # centre in continuous cell units from pc_range[:2]; cell (ix, iy) spans [ix, ix + 1)
    torch.testing.assert_close(codes[:, 0], (boxes[:, 0] + 8.0) / 0.8)
    torch.testing.assert_close(codes[:, 1], (boxes[:, 1] + 4.8) / 0.8)
    torch.testing.assert_close(codes[:, 2], boxes[:, 2])
    torch.testing.assert_close(codes[:, 3:6], boxes[:, 3:6].log())
    torch.testing.assert_close(codes[:, 6], boxes[:, 6].sin())
    torch.testing.assert_close(codes[:, 7], boxes[:, 6].cos())
    torch.testing.assert_close(codes[:, 8:10], boxes[:, 7:9])
    torch.testing.assert_close(coder.decode(codes), boxes)
    # yaw comes back wrapped to (-pi, pi]
    turned = boxes.clone()
    turned[:, 6] += 2 * math.pi
    torch.testing.assert_close(coder.decode(coder.encode(turned)), boxes)


def test_heatmap_peak_query_pos_and_centre_target_share_one_cell():
    """The proposal at a box's heatmap peak has query_pos = that cell's centre, and the centre target differs
    from query_pos by less than half a cell per axis: offsets are relative to the query's own cell (dim 2 = x)."""
    coder = coder_rect()
    head = make_head(coder)
    g = torch.Generator().manual_seed(1)
    boxes = [random_boxes(4, coder, g), random_boxes(3, coder, g)]
    labels = [torch.tensor([0, 1, 2, 0]), torch.tensor([2, 2, 1])]
    # a heatmap that is exactly the Gaussian targets: the proposals are the peaks
    dense = torch.stack([head.heatmap_target(b, lab) for b, lab in zip(boxes, labels)])
    logits = torch.logit(dense.clamp(1e-4, 1 - 1e-4))
    head.heatmap_head = FixedMap(logits)
    with torch.no_grad():
        preds = head(torch.randn(2, 16, 20, 12, generator=g))
    for b in range(2):
        cells = coder.to_cells(boxes[b][:, :2])
        qpos = preds["query_pos"][b]  # [P, 2]
        for m in range(len(boxes[b])):
            d = (qpos - cells[m]).abs()
            hit = ((d <= 0.5).all(1) & (preds["query_labels"][b] == labels[b][m])).nonzero().flatten()
            assert len(hit) == 1, (b, m, qpos, cells[m])
            torch.testing.assert_close(qpos[hit[0]], cells[m].floor() + 0.5)
    # sample 1's proposals are its own peaks, not sample 0's
    assert not torch.equal(preds["query_pos"][0, :3], preds["query_pos"][1, :3])




def test_assignment_pairs_each_gt_with_its_nearest_query():
    coder = coder_rect()
    g = torch.Generator().manual_seed(2)
    gt = random_boxes(6, coder, g, margin=1.5)
    gt_labels = torch.tensor([0, 1, 2, 0, 1, 2])
    perm = torch.randperm(6, generator=g)
    near = gt[perm].clone()
    near[:, :2] += 0.2 * torch.randn(6, 2, generator=g)  # each query within ~0.5 m of one box
    far = random_boxes(10, coder, g)
    far[:, :2] = far[:, :2].sign() * 20.0  # distractors far from every box
    boxes = torch.cat([far[:5], near, far[5:]])
    logits = torch.zeros(16, 3)
    res = HungarianAssigner3D(coder.pc_range).assign(boxes, gt, gt_labels, logits)
    pos = res.pos_inds
    assert pos.tolist() == list(range(5, 11))
    assert (res.gt_inds[pos] - 1).tolist() == perm.tolist()
    assert (res.labels[pos] == gt_labels[perm]).all()
    assert (res.max_overlaps[pos] > 0.1).all()


def test_bbox_loss_reaches_every_regression_branch_through_matched_queries_only():
    coder = coder_rect()
    head = make_head(coder).train()
    g = torch.Generator().manual_seed(3)
    gt = [random_boxes(3, coder, g), random_boxes(2, coder, g)]
    labels = [torch.tensor([0, 1, 2]), torch.tensor([1, 1])]
    preds = head(torch.randn(2, 16, 20, 12, generator=g))
    for k in HEAD_KEYS:
        preds[k].retain_grad()
    head.loss(preds, gt, labels)["loss_bbox"].backward()
    matched = torch.zeros(2, head.num_proposals, dtype=torch.bool)
    for k in HEAD_KEYS:
        grad = preds[k].grad  # [B, n, P]
        assert grad is not None and grad.abs().sum() > 0, k
        matched |= grad.abs().sum(1) > 0
        branch = getattr(head.prediction_head, k)
        assert branch[-1].weight.grad is not None and branch[-1].weight.grad.abs().sum() > 0, k
    assert matched.sum(1).tolist() == [3, 2]  # only the matched queries carry a box loss
    assert head.shared_conv.weight.grad.abs().sum() > 0  # and it flows back into the BEV features
    assert head.prediction_head.heatmap[-1].weight.grad is None  # the class branch gets no box gradient


@pytest.mark.parametrize("rot_bins", [0, 12])
def test_head_fits_every_box_code_when_the_features_carry_it(rot_bins):
    """Overfit one batch of 2 samples: the BEV map carries each box's codes (heading as sin/cos, velocity) on
    its 3x3 cells as a backbone would; 150 Adam steps fit every code of every matched query, and get_bboxes
    returns the headings within 10 deg and the velocities within 0.5 m/s. Also with the heading as 12 bins
    (``rot_bins``; its (sin, cos) codes are then the decoded yaw's)."""
    coder = TransFusionBBoxCoder((-8.0, -8.0, -3.0, 8.0, 8.0, 3.0), (0.2, 0.2), 4)  # 20 x 20 cells
    head = make_head(coder, num_proposals=10, rot_bins=rot_bins)
    g = torch.Generator().manual_seed(4)
    gt = [random_boxes(4, coder, g, margin=1.5), random_boxes(4, coder, g, margin=1.5)]
    labels = [torch.tensor([0, 1, 2, 0]), torch.tensor([2, 1, 0, 1])]
    bev = bev_carrying_codes(coder, gt, labels, g)
    fit(head, bev, gt, labels, 150)
    head.train()
    with torch.no_grad():
        preds = head(bev)
    codes = head.codes(preds)
    err = []
    for b in range(2):
        boxes = coder.decode(codes[b].clone())
        res = head.assigner.assign(boxes, gt[b], labels[b], preds["heatmap"][b].T)
        pos = res.pos_inds
        err.append((codes[b, pos] - coder.encode(gt[b][res.gt_inds[pos] - 1])).abs())
    err = torch.cat(err).mean(0)  # per code, over the 8 matched queries
    assert (err < torch.tensor([0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.3, 0.3])).all(), err
    head.eval()
    with torch.no_grad():
        out = head.get_bboxes(head(bev), max_num=4)
    for b in range(2):
        d = torch.cdist(out[b]["boxes"][:, :2], gt[b][:, :2])
        j = d.argmin(1)
        assert sorted(j.tolist()) == [0, 1, 2, 3]
        dyaw = (out[b]["boxes"][:, 6] - gt[b][j, 6] + math.pi) % (2 * math.pi) - math.pi
        assert (dyaw.abs() < math.radians(10)).all(), dyaw
        assert ((out[b]["boxes"][:, 7:9] - gt[b][j, 7:9]).norm(dim=1) < 0.5).all()
