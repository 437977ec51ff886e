"""Lovász-Softmax and class weights (sparse3d.nn.functional.loss) and the weighted segmentation loss."""
import pytest
import torch
from hypothesis import given, settings, strategies as st

from sparse3d.engine.tasks import SegmentationTask, segmentation_loss
from sparse3d.nn.functional import class_weights, lovasz_softmax


def _iou_loss(pred, labels, C, ignore=255):
    keep = labels != ignore
    pred, labels = pred[keep], labels[keep]
    out = []
    for c in range(C):
        if (labels == c).sum() == 0:
            continue
        inter = ((pred == c) & (labels == c)).sum().item()
        union = ((pred == c) | (labels == c)).sum().item()
        out.append(1 - inter / union)
    return sum(out) / len(out)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 60), C=st.integers(2, 6), seed=st.integers(0, 10_000))
def test_lovasz_equals_jaccard_loss_on_hard_predictions(n, C, seed):
    """On one-hot probabilities the Lovász extension is exact: the loss is mean_c (1 - IoU_c)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, C, (n,), generator=g)
    labels[torch.rand(n, generator=g) < 0.1] = 255
    pred = torch.randint(0, C, (n,), generator=g)
    probs = torch.nn.functional.one_hot(pred, C).double()
    if (labels != 255).sum() == 0:
        assert lovasz_softmax(probs, labels).item() == 0.0
        return
    assert lovasz_softmax(probs, labels).item() == pytest.approx(_iou_loss(pred, labels, C), abs=1e-12)


def test_lovasz_perfect_is_zero_and_gradcheck():
    labels = torch.tensor([0, 1, 2, 2, 1, 255])
    probs = torch.nn.functional.one_hot(labels.clamp(max=2), 3).double()
    assert lovasz_softmax(probs, labels).item() == 0.0
    logits = torch.randn(12, 4, dtype=torch.float64, requires_grad=True)
    lab = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 255, 2])
    assert torch.autograd.gradcheck(lambda z: lovasz_softmax(torch.softmax(z, 1), lab), (logits,))
    # 'all' also penalizes classes that are absent from the labels
    lab2 = torch.tensor([0, 0, 1, 1])
    p = torch.full((4, 3), 1 / 3, dtype=torch.float64)
    assert lovasz_softmax(p, lab2, classes="all") != lovasz_softmax(p, lab2)


def test_lovasz_empty_and_bad_shapes():
    z = torch.zeros(0, 3, requires_grad=True)
    out = lovasz_softmax(z, torch.zeros(0, dtype=torch.long))
    out.backward()
    assert out.item() == 0.0
    with pytest.raises(ValueError, match="probs"):
        lovasz_softmax(torch.zeros(3, 2), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="classes"):
        lovasz_softmax(torch.zeros(3, 2), torch.zeros(3, dtype=torch.long), classes="some")


def test_class_weights_schemes():
    c = torch.tensor([100.0, 25.0, 0.0, 4.0])
    w = class_weights(c, "inv_sqrt")
    seen = c > 0
    assert w[seen].mean().item() == pytest.approx(1.0)
    assert w[1] / w[0] == pytest.approx(2.0) and w[3] / w[1] == pytest.approx(2.5)
    assert w[2] == w[seen].max()
    assert torch.all(class_weights(c, "none") == 1)
    wl = class_weights(c, "inv_log")
    assert wl[3] > wl[1] > wl[0]
    with pytest.raises(ValueError, match="scheme"):
        class_weights(c, "median")
    with pytest.raises(ValueError, match="zero"):
        class_weights(torch.zeros(3))


def test_weighted_segmentation_loss_matches_torch_mean():
    logits = torch.randn(30, 4)
    y = torch.randint(0, 4, (30,))
    y[:5] = 255
    w = torch.tensor([0.5, 1.0, 2.0, 1.5])
    loss, n = segmentation_loss(logits, y, 255, 1, w)
    ref = torch.nn.functional.cross_entropy(logits, y, weight=w, ignore_index=255)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6) and int(n) == 25


class _DM:
    def class_counts(self):
        return torch.tensor([1000, 10, 100])


def test_segmentation_task_weighting_and_lovasz():
    task = SegmentationTask(3, 255, class_weighting="inv_sqrt", lovasz_weight=0.5)
    task.setup(_DM())
    assert task.weight.shape == (3,) and task.weight[1] > task.weight[2] > task.weight[0]
    net = torch.nn.Identity()

    x = torch.randn(20, 3, requires_grad=True)
    # the task calls net(batch["lidar"]); Identity returns the logits
    loss, logs = task.training_step(net, {"lidar": x, "targets": torch.randint(0, 3, (20,))})
    loss.backward()
    assert {"loss_ce", "loss_lovasz", "n_valid"} <= set(logs) and torch.isfinite(x.grad).all()
    with pytest.raises(ValueError, match="class_weighting"):
        SegmentationTask(3, class_weighting="median")
    with pytest.raises(ValueError, match="class_counts"):
        t = SegmentationTask(4, class_weighting="inv_log")
        t.setup(_DM())
