"""Rotation test-time augmentation: RotationViews samples, collation, point_scores, eval/validate paths."""
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from sparse3d import SparseTensor, sparse_collate_fn
from sparse3d.datasets.transforms import Voxelize, rotate_z
from sparse3d.datasets.tta import RotationViews, point_scores
from sparse3d.evaluation.predict import collate_with_sizes, predict_batch


def _scan(n=300, seed=0, extent=4.0):
    rng = np.random.default_rng(seed)
    pts = np.concatenate([rng.uniform(-extent, extent, (n, 3)), rng.uniform(0, 1, (n, 1))], 1).astype(np.float32)
    pts[: min(5, n - 1)] = pts[n - 1]   # duplicates share a voxel in every view
    return {"points": pts, "labels": rng.integers(0, 5, n), "scan_id": f"s{seed}"}


class _Linear(torch.nn.Module):
    """Voxel logits from the voxel features (x, y, z, remission): [M, 4] -> [M, 3]."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 3)
        torch.nn.init.normal_(self.lin.weight, std=2.0)

    def forward(self, x: SparseTensor) -> torch.Tensor:
        return self.lin(x.feats)


def test_one_view_is_plain_voxelize():
    s = _scan()
    a, b = RotationViews(1, Voxelize(0.5))(s), Voxelize(0.5)(s)
    assert torch.equal(a["lidar"].coords, b["lidar"].coords) and torch.equal(a["lidar"].feats, b["lidar"].feats)
    assert torch.equal(a["lidar_inverse"], b["lidar_inverse"]) and "tta_inverse" not in a


def test_views_match_rotated_voxelizations():
    s, V, vs = _scan(), 3, 0.5
    out = RotationViews(V, Voxelize(vs))(s)
    P = len(s["points"])
    assert out["lidar_inverse"].shape == (V * P,) and out["targets_mapped"].shape == (P,)
    assert torch.equal(out["tta_inverse"], torch.arange(P).repeat(V))
    assert torch.equal(out["targets_mapped"], torch.as_tensor(s["labels"]))
    c, inv = out["lidar"].coords, out["lidar_inverse"]
    assert sorted(set(c[:, 0].tolist())) == list(range(V))
    for j in range(V):
        ref = Voxelize(vs)({**s, "points": rotate_z(s["points"], 2 * math.pi * j / V)})
        rows = c[:, 0] == j
        assert torch.equal(c[rows, 1:], ref["lidar"].coords[:, 1:])
        assert torch.equal(out["lidar"].feats[rows], ref["lidar"].feats)
        vi = inv[j * P:(j + 1) * P]
        assert bool((c[vi, 0] == j).all())   # every point of view j lands in a view-j voxel
        # brute force: the voxel of each point is floor(rotated xyz / vs) - min over the view
        q = np.floor(rotate_z(s["points"], 2 * math.pi * j / V)[:, :3].astype(np.float64) / vs).astype(np.int64)
        assert np.array_equal(c[vi, 1:].numpy(), q - q.min(0))
        assert torch.equal(out["targets"][rows], ref["targets"])
    # the 90-degree view of a 4-view set is a permutation of the grid: the x/y extents swap
    c4 = RotationViews(4, Voxelize(vs))(s)["lidar"].coords
    v0, v1 = c4[c4[:, 0] == 0, 1:], c4[c4[:, 0] == 1, 1:]
    assert (int(v0[:, 0].max()), int(v0[:, 1].max())) == (int(v1[:, 1].max()), int(v1[:, 0].max()))


def test_collate_and_point_scores_brute_force():
    V = 3
    samples = [RotationViews(V, Voxelize(0.5))(_scan(n, seed)) for n, seed in ((200, 1), (1, 2), (150, 3))]
    batch = sparse_collate_fn(samples)
    sizes = [len(s["points"]) for s in (_scan(200, 1), _scan(1, 2), _scan(150, 3))]
    # batch entries: views of scan 0 are 0..2, of scan 1 3..5, of scan 2 6..8
    assert sorted(set(batch["lidar"].coords[:, 0].tolist())) == list(range(3 * V))
    assert batch["targets_mapped"].shape == (sum(sizes),)
    torch.manual_seed(0)
    model = _Linear()
    logits = model(batch["lidar"])
    scores = point_scores(logits, batch)
    assert scores.shape == (sum(sizes), 3)
    # brute force: every scan alone, each view alone
    p0 = 0
    for s, n in zip(samples, sizes):
        ref = torch.zeros(n, 3)
        for j in range(V):
            rows = s["lidar"].coords[:, 0] == j
            first = int(torch.nonzero(rows)[0])
            lv = model(SparseTensor(s["lidar"].feats[rows], s["lidar"].coords[rows]))
            ref += torch.softmax(lv, 1)[s["lidar_inverse"][j * n:(j + 1) * n] - first]
        torch.testing.assert_close(scores[p0:p0 + n], ref)
        p0 += n
    torch.testing.assert_close(scores.sum(1), torch.full((sum(sizes),), float(V)))
    # the eval path: per-scan point predictions of the view average
    b2, sz = collate_with_sizes(samples)
    assert sz == sizes
    preds = predict_batch(model, b2, sz)
    assert [len(p) for p in preds] == sizes
    assert torch.equal(torch.cat(preds), scores.argmax(1))


def test_point_scores_without_views_is_voxel_logits():
    s = Voxelize(0.5)(_scan())
    batch = sparse_collate_fn([s, Voxelize(0.5)(_scan(seed=4))])
    logits = torch.randn(len(batch["lidar"]), 3)
    assert torch.equal(point_scores(logits, batch), logits[batch["lidar_inverse"]])


def test_bad_arguments():
    with pytest.raises(ValueError, match="views"):
        RotationViews(0, Voxelize(0.5))
    with pytest.raises(ValueError, match="views"):
        RotationViews(True, Voxelize(0.5))
    with pytest.raises(TypeError, match="Voxelize"):
        RotationViews(2, 0.5)
    with pytest.raises(ValueError, match="max_voxels"):
        RotationViews(2, Voxelize(0.5, max_voxels=10))
    with pytest.raises(ValueError, match="points"):
        RotationViews(2, Voxelize(0.5))({"points": np.zeros(3, np.float32)})
    with pytest.raises(ValueError, match="empty scan"):
        RotationViews(2, Voxelize(0.5))({"points": np.zeros((0, 4), np.float32), "scan_id": "e"})
    s = sparse_collate_fn([RotationViews(2, Voxelize(0.5))(_scan())])
    s["tta_inverse"] = s["tta_inverse"][:-1]
    with pytest.raises(ValueError, match="tta_inverse"):
        point_scores(torch.zeros(len(s["lidar"]), 3), s)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 60), views=st.integers(1, 7), seed=st.integers(0, 10_000),
       offset=st.floats(-1e4, 1e4, allow_nan=False))
def test_property_every_point_scored_once_per_view(n, views, seed, offset):
    s = _scan(n, seed, extent=3.0)
    s["points"][:, :2] += np.float32(offset)   # far from the sensor: large/negative coordinates
    out = RotationViews(views, Voxelize(0.3))(s)
    batch = sparse_collate_fn([out])
    logits = torch.randn(len(batch["lidar"]), 4, generator=torch.Generator().manual_seed(seed))
    sc = point_scores(logits, batch)
    assert sc.shape == (n, 4)
    if views == 1:
        assert torch.equal(sc, logits[batch["lidar_inverse"]])
    else:
        torch.testing.assert_close(sc.sum(1), torch.full((n,), float(views)))
        assert bool((batch["lidar"].coords[:, 1:] >= 0).all())


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    from sparse3d.datasets.synthetic_lidar import ensure_synthetic_kitti
    root = tmp_path_factory.mktemp("ttakitti") / "synth"
    ensure_synthetic_kitti(root, seed=3, n_train=1, n_val=2, azimuth_steps=120)
    return root


def test_datamodule_validation_averages_views(tiny_root):
    from sparse3d.datasets.kitti_module import SemanticKITTIDataModule
    from sparse3d.engine.tasks.segmentation import SegmentationTask
    from sparse3d.metrics.segmentation import ConfusionMatrix
    from sparse3d.models.spvnas import SPVCNN
    V = 3
    dm = SemanticKITTIDataModule(tiny_root, synthetic={"seed": 3, "n_train": 1, "n_val": 2, "azimuth_steps": 120},
                                 voxel_size=0.4, max_voxels=None, val_batch_size=2, tta_views=V)
    torch.manual_seed(0)
    model = SPVCNN(in_channels=4, num_classes=19, cr=0.125).eval()
    res = SegmentationTask(19).validate(model, dm.val_dataloader(distributed=False), torch.device("cpu"))
    # reference: every view of every scan voxelized and run on its own, probabilities summed per point
    ds = type(dm.val_dataset())(dm.root, sequences=dm._sequences("val"))
    cm = ConfusionMatrix(19, 255)
    with torch.no_grad():
        for i in range(len(ds)):
            s = ds[i]
            acc = 0
            for j in range(V):
                v = Voxelize(0.4)({**s, "points": rotate_z(s["points"], 2 * math.pi * j / V)})
                acc = acc + torch.softmax(model(v["lidar"]), 1)[v["lidar_inverse"]]
            cm.update(acc.argmax(1), v["targets_mapped"])
    assert torch.equal(res["confusion"].matrix, cm.matrix)
    # one view = the plain validation
    plain = SemanticKITTIDataModule(tiny_root, voxel_size=0.4, max_voxels=None, val_batch_size=2)
    assert type(plain.val_transform().transforms[0]) is Voxelize
    with pytest.raises(ValueError, match="tta_views"):
        SemanticKITTIDataModule(tiny_root, tta_views=0)


def test_sparse_collate_shifts_multi_entry_samples():
    from sparse3d import sparse_collate
    a = SparseTensor(torch.ones(3, 1), torch.tensor([[0, 0, 0, 0], [1, 0, 0, 0], [1, 2, 0, 0]], dtype=torch.int32))
    b = SparseTensor(torch.ones(1, 1), torch.tensor([[0, 5, 5, 5]], dtype=torch.int32))
    assert sparse_collate([b, a, b]).coords[:, 0].tolist() == [0, 1, 2, 2, 3]
    with pytest.raises(ValueError, match="batch index"):   # SparseTensor itself rejects negative batch indices
        SparseTensor(torch.ones(1, 1), torch.tensor([[-1, 0, 0, 0]], dtype=torch.int32))
