"""HungarianAssigner3D: hand-built matches, brute-force optimality, empty cases and the cost terms."""
from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparse3d.models.bevfusion.heads.assigner import HungarianAssigner3D, bev_l1_cost, focal_cost
from sparse3d.models.bevfusion.heads.iou3d import box_iou_3d

PC_RANGE = (-50.0, -50.0, -5.0, 50.0, 50.0, 3.0)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def logits_for(labels, num_classes=4, conf=4.0):
    """``[Q, C]`` logits that are confident (sigmoid ~0.98) in ``labels`` and low (~0.02) elsewhere."""
    out = torch.full((len(labels), num_classes), -conf)
    out[torch.arange(len(labels)), torch.tensor(labels)] = conf
    return out


GT = torch.tensor([[10.0, 5.0, 0.0, 4.0, 2.0, 1.5, 0.3, 1.0, 0.0],
                   [-20.0, 3.0, 0.5, 0.8, 0.6, 1.7, 1.0, 0.0, 0.0],
                   [0.0, -30.0, -0.5, 10.0, 2.5, 3.0, -2.0, 5.0, 2.0]])
GT_LABELS = torch.tensor([0, 2, 1])


def test_each_gt_gets_its_obvious_query():
    noise = torch.tensor([[0.1, -0.1, 0.05, 0.1, 0.0, 0.0, 0.05, 0.0, 0.0]])
    queries = torch.stack([
        torch.tensor([40.0, 40.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0]),  # far from everything
        GT[1] + noise[0], torch.tensor([-40.0, 40.0, 0, 2, 2, 2, 0, 0, 0]), GT[2] + noise[0], GT[0] + noise[0]])
    logits = logits_for([3, 2, 3, 1, 0])
    res = HungarianAssigner3D(PC_RANGE).assign(queries, GT, GT_LABELS, logits)
    assert res.num_gts == 3
    assert res.gt_inds.tolist() == [0, 2, 0, 3, 1]
    assert res.labels.tolist() == [-1, 2, -1, 1, 0]
    assert res.pos_inds.tolist() == [1, 3, 4]
    iou = box_iou_3d(queries, GT)
    for q, g in ((1, 1), (3, 2), (4, 0)):
        assert res.max_overlaps[q].item() == pytest.approx(iou[q, g].item(), abs=1e-6)
        assert res.max_overlaps[q].item() > 0.5
    assert res.max_overlaps[[0, 2]].tolist() == [0.0, 0.0]


def test_class_cost_breaks_a_geometric_tie():
    gt = GT[:1]
    queries = torch.stack([GT[0], GT[0]])  # two identical boxes, only the class score differs
    res = HungarianAssigner3D(PC_RANGE).assign(queries, gt, torch.tensor([0]), logits_for([3, 0]))
    assert res.gt_inds.tolist() == [0, 1]


def test_more_queries_than_gts_is_one_to_one():
    g = torch.Generator().manual_seed(0)
    q = 30
    queries = torch.cat([torch.rand(q, 2, generator=g) * 80 - 40, torch.zeros(q, 1), torch.rand(q, 3, generator=g) + 1,
                         torch.rand(q, 1, generator=g) * 6, torch.zeros(q, 2)], 1)
    res = HungarianAssigner3D(PC_RANGE).assign(queries, GT, GT_LABELS, torch.randn(q, 4, generator=g))
    assert len(res.pos_inds) == 3
    assert sorted(res.gt_inds[res.pos_inds].tolist()) == [1, 2, 3]
    assert (res.labels[res.gt_inds == 0] == -1).all()


def test_fewer_queries_than_gts():
    res = HungarianAssigner3D(PC_RANGE).assign(GT[:2].clone(), GT, GT_LABELS, logits_for([0, 2]))
    assert res.gt_inds.tolist() == [1, 2]


def test_zero_gts_all_negative_and_zero_queries():
    queries = GT.clone()
    res = HungarianAssigner3D(PC_RANGE).assign(queries, torch.zeros(0, 9), torch.zeros(0, dtype=torch.long),
                                               logits_for([0, 1, 2]))
    assert res.num_gts == 0
    assert res.gt_inds.tolist() == [0, 0, 0]
    assert res.labels.tolist() == [-1, -1, -1]
    assert res.max_overlaps.tolist() == [0.0, 0.0, 0.0]
    assert len(res.pos_inds) == 0
    res = HungarianAssigner3D(PC_RANGE).assign(torch.zeros(0, 9), GT, GT_LABELS, torch.zeros(0, 4))
    assert res.gt_inds.shape == (0,)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 5), st.integers(1, 4), st.integers(0, 10_000))
def test_property_assignment_is_optimal(num_q, num_gt, seed):
    g = torch.Generator().manual_seed(seed)

    def rand_boxes(n):
        return torch.cat([torch.rand(n, 2, generator=g) * 10 - 5, torch.rand(n, 1, generator=g),
                          torch.rand(n, 3, generator=g) * 3 + 0.5, torch.rand(n, 1, generator=g) * 6,
                          torch.zeros(n, 2)], 1)

    queries, gts = rand_boxes(num_q), rand_boxes(num_gt)
    labels = torch.randint(0, 3, (num_gt,), generator=g)
    logits = torch.randn(num_q, 3, generator=g)
    assigner = HungarianAssigner3D(PC_RANGE)
    cost, _ = assigner.cost(queries, gts, labels, logits)
    res = assigner.assign(queries, gts, labels, logits)
    pos = res.pos_inds
    assert len(pos) == min(num_q, num_gt)
    got = sum(cost[q, res.gt_inds[q] - 1].item() for q in pos.tolist())
    if num_q >= num_gt:  # every gt takes a distinct query
        best = min(sum(cost[q, j].item() for j, q in enumerate(qs))
                   for qs in itertools.permutations(range(num_q), num_gt))
    else:  # every query takes a distinct gt
        best = min(sum(cost[i, j].item() for i, j in enumerate(gs))
                   for gs in itertools.permutations(range(num_gt), num_q))
    assert got == pytest.approx(best, abs=1e-5)


def test_focal_cost_matches_formula_and_prefers_confident_class():
    logits = torch.tensor([[2.0, -1.0, 0.0], [-3.0, 3.0, 0.5]], dtype=torch.float64)
    labels = torch.tensor([1, 0, 1])
    got = focal_cost(logits, labels, alpha=0.25, gamma=2.0)
    assert got.shape == (2, 3)
    for i in range(2):
        for j, c in enumerate(labels.tolist()):
            p = 1 / (1 + math.exp(-logits[i, c].item()))
            pos = -math.log(p + 1e-12) * 0.25 * (1 - p) ** 2
            neg = -math.log(1 - p + 1e-12) * 0.75 * p ** 2
            assert got[i, j].item() == pytest.approx(pos - neg, rel=1e-9)
    assert got[1, 0] < got[0, 0]  # query 1 is confident in class 1
    xy = torch.tensor([[0.0, 0.0], [0.5, 0.25]])
    torch.testing.assert_close(bev_l1_cost(xy, xy), torch.tensor([[0.0, 0.75], [0.75, 0.0]]))


def test_bad_input_raises():
    assigner = HungarianAssigner3D(PC_RANGE)
    with pytest.raises(ValueError, match="gt_labels"):
        assigner.assign(GT, GT, torch.tensor([0, 1, 7]), logits_for([0, 1, 2]))
    with pytest.raises(ValueError, match="gt_labels"):
        assigner.assign(GT, GT, torch.tensor([0, 1]), logits_for([0, 1, 2]))
    with pytest.raises(ValueError, match="cls_logits"):
        assigner.assign(GT, GT, GT_LABELS, logits_for([0, 1]))
    with pytest.raises(ValueError, match="gt_boxes"):
        assigner.assign(GT, GT[:, :5], GT_LABELS, logits_for([0, 1, 2]))
    with pytest.raises(ValueError, match="NaN"):
        assigner.assign(GT, GT, GT_LABELS, torch.full((3, 4), float("nan")))
    with pytest.raises(ValueError, match="pc_range"):
        HungarianAssigner3D((0, 0, 1, 1))
