"""Perspective (image-plane) supervision of the camera branch: points_to_image, box_lattice, perspective_targets
against a brute-force numpy rasterizer, and PerspectiveHead's weighted cross-entropy."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sparse3d.models.bevfusion.camera import PerspectiveHead, box_lattice, perspective_targets, points_to_image
from sparse3d.models.bevfusion.camera.vtransform import frustum_geometry, lidar_depth_map

from test_vtransform import IMAGE, _rig, _t

FEAT = (8, 22)


def _project_np(P, c2l, K, aug, laug):
    """numpy reference of the chain: augmented LiDAR point -> (u', v', depth) per camera of one sample."""
    p = P @ np.linalg.inv(laug)[:3, :3].T + np.linalg.inv(laug)[:3, 3]
    out = []
    for n in range(c2l.shape[0]):
        l2i = K[n] @ np.linalg.inv(c2l[n])
        q = p @ l2i[:3, :3].T + l2i[:3, 3]
        d = q[:, 2]
        uv = q[:, :2] / np.maximum(d, 1e-6)[:, None] @ aug[n, :2, :2].T + aug[n, :2, 3]
        out.append(np.concatenate([uv, d[:, None]], 1))
    return np.stack(out)


def _brute_targets(boxes, labels, c2l, K, aug, laug, background):
    """Per cell, per box: the rectangle of the in-front (>= 0.1 m) lattice projections; nearest centre wins."""
    N = c2l.shape[0]
    fH, fW = FEAT
    out = np.full((N, fH, fW), background, dtype=np.int64)
    best = np.full((N, fH, fW), np.inf)
    for m in range(len(boxes)):
        cx, cy, cz, l, w, h, yaw = boxes[m, :7]
        pts = []
        for a in (-0.5, 0.0, 0.5):
            for b in (-0.5, 0.0, 0.5):
                for c in (-0.5, 0.0, 0.5):
                    x, y = a * l, b * w
                    pts.append([cx + math.cos(yaw) * x - math.sin(yaw) * y, cy + math.sin(yaw) * x + math.cos(yaw) * y,
                                cz + c * h])
        q = _project_np(np.array(pts), c2l, K, aug, laug)
        dc = _project_np(boxes[m:m + 1, :3], c2l, K, aug, laug)[:, 0, 2]
        for n in range(N):
            f = q[n, :, 2] >= 0.1
            if not f.any():
                continue
            u0, u1 = q[n, f, 0].min(), q[n, f, 0].max()
            v0, v1 = q[n, f, 1].min(), q[n, f, 1].max()
            for i in range(fH):
                for j in range(fW):
                    u, v = j * (IMAGE[1] - 1) / (fW - 1), i * (IMAGE[0] - 1) / (fH - 1)
                    if u0 <= u <= u1 and v0 <= v <= v1 and dc[n] < best[n, i, j]:
                        best[n, i, j], out[n, i, j] = dc[n], labels[m]
    return out


def _at(mats, b, n, u, v, d):
    """The augmented-LiDAR point seen at augmented pixel (u, v), depth d, by camera n of sample b."""
    fr = torch.tensor([[u, v, d]], dtype=torch.float64).view(1, 1, 1, 3)
    return frustum_geometry(fr, *mats)[b, n, 0, 0, 0].numpy()


def _boxes_in_view(mats, b, n_boxes, rng):
    """Boxes centred on random pixels of the cameras at 3-30 m (augmented LiDAR frame), random size / yaw."""
    N = mats[0].shape[1]
    return np.array([[*_at(mats, b, k % N, rng.uniform(0, IMAGE[1]), rng.uniform(0, IMAGE[0]), rng.uniform(3, 30)),
                      rng.uniform(0.5, 5), rng.uniform(0.5, 2.5), rng.uniform(0.8, 3), rng.uniform(-3, 3)]
                     for k in range(n_boxes)])


def test_points_to_image_inverts_the_frustum_chain():
    c2l, K, aug, laug, _ = _rig(B=2, N=3, rotate=4.0, seed=5)
    mats = _t(c2l, K, aug, laug)
    fr = torch.tensor([[3.5, 7.25, 2.0], [100.5, 40.5, 17.5], [150.5, 1.0, 40.0]], dtype=torch.float64)
    geom = frustum_geometry(fr.view(3, 1, 1, 3), *mats)                        # [B, N, 3, 1, 1, 3]
    for n in range(3):
        pts = [geom[b, n, :, 0, 0] for b in range(2)]
        q = points_to_image(pts, *mats)
        assert len(q) == 2 and q[0].shape == (3, 3, 3) and q[0].dtype == torch.float64
        for b in range(2):
            np.testing.assert_allclose(q[b][n].numpy(), fr.numpy(), atol=1e-8)
            np.testing.assert_allclose(q[b].numpy(), _project_np(pts[b].numpy(), c2l[b], K[b], aug[b], laug[b]),
                                       atol=1e-7)
    empty = points_to_image([torch.zeros(0, 5), torch.zeros(0, 3)], *mats)
    assert [e.shape for e in empty] == [(3, 0, 3), (3, 0, 3)]
    with pytest.raises(ValueError, match="points must be a list of B=2"):
        points_to_image([torch.zeros(1, 3)], *mats)
    with pytest.raises(ValueError, match=r"points\[1\] must be a \[P, >=3\]"):
        points_to_image([torch.zeros(1, 3), torch.zeros(4, 2)], *mats)
    # lidar_depth_map is built on it: the depth at the pixel of each point is its projected depth
    dm = lidar_depth_map([geom[0, 1, :, 0, 0].float(), torch.zeros(0, 5)], *mats, IMAGE)
    assert dm[0, 1, 0, 7, 3] == pytest.approx(2.0, abs=1e-4) and dm[0, 1, 0, 40, 100] == pytest.approx(17.5, abs=1e-4)


def test_box_lattice_corners_centre_and_rotation():
    box = torch.tensor([[1.0, 2.0, 3.0, 4.0, 2.0, 1.0, math.pi / 2]], dtype=torch.float64)
    lat = box_lattice(box)
    assert lat.shape == (1, 27, 3) and lat.dtype == torch.float64
    # rotated by 90 degrees: the 4 m length runs along y, the 2 m width along x
    np.testing.assert_allclose(lat[0].min(0).values.numpy(), [0.0, 0.0, 2.5], atol=1e-12)
    np.testing.assert_allclose(lat[0].max(0).values.numpy(), [2.0, 4.0, 3.5], atol=1e-12)
    assert any(torch.allclose(p, torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)) for p in lat[0])
    assert box_lattice(torch.zeros(0, 9)).shape == (0, 27, 3)
    assert box_lattice(box, n=2).shape == (1, 8, 3)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_targets_match_brute_force(seed):
    c2l, K, aug, laug, _ = _rig(B=2, N=3, rotate=2.0 * seed, seed=seed)
    rng = np.random.default_rng(seed)
    boxes = [_boxes_in_view(_t(c2l, K, aug, laug), b, 7, rng) for b in range(2)]
    labels = [rng.integers(0, 10, 7) for _ in range(2)]
    got = perspective_targets([torch.tensor(x, dtype=torch.float32) for x in boxes],
                              [torch.tensor(x) for x in labels], *_t(c2l, K, aug, laug, dtype=torch.float32),
                              IMAGE, FEAT, background=10)
    assert got.shape == (2, 3, *FEAT) and got.dtype == torch.long
    got64 = perspective_targets([torch.tensor(np.float32(x), dtype=torch.float64) for x in boxes],
                                [torch.tensor(x) for x in labels], *_t(c2l, K, aug, laug), IMAGE, FEAT, background=10)
    for b in range(2):
        # the float32 boxes are what the function saw
        ref = _brute_targets(np.float32(boxes[b]).astype(np.float64), labels[b], c2l[b], K[b], aug[b], laug[b], 10)
        assert (got[b].numpy() != ref).mean() < 0.002      # a cell on a rectangle edge may flip in float32
        np.testing.assert_array_equal(got64[b].numpy(), ref)
    assert (got != 10).float().mean() > 0.05


def test_nearest_box_wins_and_boxes_behind_are_ignored():
    c2l, K, aug, laug, _ = _rig(B=1, N=2, flip=False, seed=7)
    c2l, K, aug, laug = c2l[0], K[0], aug[0], laug[0]

    mats = _t(c2l[None], K[None], aug[None], laug[None])
    near, far = _at(mats, 0, 0, 88.0, 32.0, 6.0), _at(mats, 0, 0, 88.0, 32.0, 20.0)
    centre = laug[:3, :3] @ c2l[0, :3, 3] + laug[:3, 3]            # camera 0's centre
    behind = 2 * centre - _at(mats, 0, 0, 88.0, 32.0, 8.0)          # mirrored through it
    boxes = torch.tensor([[*far, 8.0, 8.0, 8.0, 0.0], [*near, 2.0, 2.0, 2.0, 0.0], [*behind, 2.0, 2.0, 2.0, 0.0]])
    t = perspective_targets([boxes], [torch.tensor([3, 5, 7])], *mats, IMAGE, FEAT, background=10)[0, 0]
    ref = _brute_targets(boxes.numpy().astype(np.float64), np.array([3, 5, 7]), c2l, K, aug, laug, 10)[0]
    np.testing.assert_array_equal(t.numpy(), ref)
    assert 5 in t and 3 in t and 7 not in t                     # near one in front of the big far one; behind: none
    # where both footprints overlap, the near box wins: remove it and those cells become the far box's
    t_far = perspective_targets([boxes[[0, 2]]], [torch.tensor([3, 7])], *mats, IMAGE, FEAT, background=10)[0, 0]
    assert ((t == 5) <= (t_far == 3)).all() and (t == 5).any()
    # a box straddling the camera plane is clipped to its part in front, not dropped nor inverted
    straddle = torch.tensor([[*_at(mats, 0, 0, 88.0, 32.0, 0.5), 4.0, 4.0, 4.0, 0.0]])
    t2 = perspective_targets([straddle], [torch.tensor([2])], *mats, IMAGE, FEAT, background=10)[0, 0]
    ref2 = _brute_targets(straddle.numpy().astype(np.float64), np.array([2]), c2l, K, aug, laug, 10)[0]
    np.testing.assert_array_equal(t2.numpy(), ref2)
    assert (t2 == 2).float().mean() > 0.5


def test_targets_empty_and_bad_input():
    c2l, K, aug, laug, _ = _rig(B=2, N=3, seed=0)
    mats = _t(c2l, K, aug, laug)
    t = perspective_targets([torch.zeros(0, 9), torch.zeros(0, 7)], [torch.zeros(0, dtype=torch.long)] * 2, *mats,
                            IMAGE, FEAT, background=4)
    assert t.shape == (2, 3, *FEAT) and (t == 4).all()
    with pytest.raises(ValueError, match="lists of B=2"):
        perspective_targets([torch.zeros(0, 9)], [torch.zeros(0)], *mats, IMAGE, FEAT, background=4)
    with pytest.raises(ValueError, match=r"gt_boxes\[1\] must be \[M, >=7\]"):
        perspective_targets([torch.zeros(0, 9), torch.zeros(2, 5)], [torch.zeros(0), torch.zeros(2)], *mats,
                            IMAGE, FEAT, background=4)
    with pytest.raises(ValueError, match=r"gt_labels\[0\] \[M\]"):
        perspective_targets([torch.zeros(2, 9), torch.zeros(0, 9)], [torch.zeros(3), torch.zeros(0)], *mats,
                            IMAGE, FEAT, background=4)


def test_perspective_head_shapes_and_weighted_ce():
    torch.manual_seed(0)
    head = PerspectiveHead(16, 4, hidden_channels=8, background_weight=0.25, loss_weight=2.0)
    feats = torch.randn(6, 16, *FEAT)
    logits = head(feats)
    assert logits.shape == (6, 5, *FEAT)
    targets = torch.randint(0, 5, (2, 3, *FEAT))
    loss = head.loss(logits, targets)
    t = targets.reshape(-1)
    lp = F.log_softmax(logits.permute(0, 2, 3, 1).reshape(-1, 5), 1)
    w = torch.where(t == 4, 0.25, 1.0)
    want = 2.0 * (-(w * lp[torch.arange(len(t)), t]).sum() / w.sum())
    assert float(loss.detach()) == pytest.approx(float(want.detach()), rel=1e-5)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in head.parameters())
    assert "class_weight" not in head.state_dict()
    x = torch.randn(2, 5, 3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda z: head.loss(z, torch.randint(0, 5, (1, 2, 3, 4),
                                                                         generator=torch.Generator().manual_seed(0))),
                                    (x,))
    assert head.loss(logits.detach().bfloat16(), targets).dtype == torch.float32
    with pytest.raises(ValueError, match="do not match"):
        head.loss(logits, targets[:1])
    with pytest.raises(ValueError, match="num_classes"):
        PerspectiveHead(16, 0)
    with pytest.raises(ValueError, match="background_weight"):
        PerspectiveHead(16, 3, background_weight=0.0)
