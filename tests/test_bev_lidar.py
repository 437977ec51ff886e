"""BEVFusion LiDAR branch: mean-of-points Voxelization and the SparseEncoder -> BEV map.

The sparse convolutions themselves are checked against dense conv3d in test_conv_*.py; here:
voxelization vs a brute-force reference, caps, determinism, bad input, and the encoder's
shapes, BEV orientation (dim 2 = LiDAR x), empty clouds and gradients.
"""
from __future__ import annotations

import math
from collections import defaultdict

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import sparse3d  # noqa: F401  (sets the OpenMP wait policy before torch work)
from sparse3d.models.bevfusion.lidar import LidarEncoder, SparseEncoder, Voxelization, grid_size, voxelize
from sparse3d.models.bevfusion.lidar.sparse_encoder import to_bev
from sparse3d.nn.functional.dense import height_collapse

torch.set_num_threads(2)

PCR = (-51.2, -51.2, -5.0, 51.2, 51.2, 3.0)
VS = (0.1, 0.1, 0.2)
SMALL = dict(base_channels=4, output_channels=8, encoder_channels=((4, 4, 8), (8, 8, 8), (8, 8, 8), (8, 8)))


def brute_voxelize(points, vs, pcr, max_voxels=None, max_num_points=None):
    """Per-point Python loop: {(b, i, j, k): mean of the kept points}."""
    X, Y, Z = grid_size(vs, pcr)
    out = {}
    for b, p in enumerate(points):
        members = defaultdict(list)
        order = []
        for row in p.double().tolist():
            c = tuple(math.floor((row[a] - pcr[a]) / vs[a]) for a in range(3))
            if not all(0 <= c[a] < n for a, n in enumerate((X, Y, Z))):
                continue
            if c not in members:
                order.append(c)
            if max_num_points is None or len(members[c]) < max_num_points:
                members[c].append(row)
        if max_voxels is not None:
            order = order[:max_voxels]
        for c in order:
            out[(b, *c)] = np.mean(np.asarray(members[c]), axis=0)
    return out


def as_dict(x):
    return {tuple(c): f for c, f in zip(x.coords.tolist(), x.feats.double().numpy())}


def random_cloud(n, seed, extent=60.0, c=5):
    g = torch.Generator().manual_seed(seed)
    p = torch.rand(n, c, generator=g)
    p[:, :2] = (p[:, :2] * 2 - 1) * extent
    p[:, 2] = p[:, 2] * 10 - 6
    return p


def check_same(got, ref):
    assert set(got) == set(ref)
    for k in ref:
        np.testing.assert_allclose(got[k], ref[k], rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- voxelization
def test_grid_size():
    assert grid_size(VS, PCR) == (1024, 1024, 40)
    assert grid_size((0.075, 0.075, 0.2), (-54, -54, -5, 54, 54, 3)) == (1440, 1440, 40)
    with pytest.raises(ValueError, match="voxel_size"):
        grid_size((0.1, 0.1), PCR)
    with pytest.raises(ValueError, match="whole number"):
        grid_size((0.3, 0.1, 0.2), PCR)
    with pytest.raises(ValueError, match="point_cloud_range"):
        grid_size(VS, (0, 0, 0, -1, 1, 1))


def test_voxelize_matches_brute_force():
    # coarse voxels so that many points share voxels; some points fall outside the range
    pts = [random_cloud(400, 0), random_cloud(300, 1), random_cloud(50, 2)]
    vs, pcr = (6.4, 6.4, 2.0), PCR
    x = voxelize(pts, vs, pcr)
    assert x.coords.dtype == torch.int32 and x.stride == (1, 1, 1)
    check_same(as_dict(x), brute_voxelize(pts, vs, pcr))
    # rows sorted by (b, x, y, z)
    key = x.coords.long()
    flat = ((key[:, 0] * 100 + key[:, 1]) * 100 + key[:, 2]) * 100 + key[:, 3]
    assert bool((flat[1:] > flat[:-1]).all())


def test_voxel_coordinates_and_range_borders():
    pts = torch.tensor([[-51.2, -51.2, -5.0, 1, 0],     # on the min corner: kept, cell (0, 0, 0)
                        [51.2, 0.0, 0.0, 1, 0],         # x == xmax: dropped
                        [51.1999, 51.1999, 2.9999, 1, 0],  # last cell
                        [10.35, -20.05, 0.1, 1, 0]])
    x = voxelize([pts], VS, PCR)
    got = sorted(x.coords.tolist())
    assert got == sorted([[0, 0, 0, 0], [0, 1023, 1023, 39], [0, 615, 311, 25]])


def test_max_num_points_and_max_voxels():
    # voxel A (cell 0) gets 15 points, then voxel B, then voxel C
    a = torch.zeros(15, 5)
    a[:, 0] = 0.05
    a[:, 3] = torch.arange(15.0)
    b = torch.tensor([[5.05, 0.05, 0.05, 100.0, 0]])
    c = torch.tensor([[10.05, 0.05, 0.05, 200.0, 0]])
    pts = torch.cat([a[:3], b, a[3:], c])  # first-appearance order A, B, C
    pcr = (0.0, 0.0, 0.0, 12.8, 12.8, 1.0)
    vs = (0.1, 0.1, 0.1)
    x = voxelize([pts], vs, pcr, max_num_points=10)
    check_same(as_dict(x), brute_voxelize([pts], vs, pcr, max_num_points=10))
    feats = as_dict(x)
    assert feats[(0, 0, 0, 0)][3] == pytest.approx(np.mean(np.arange(10.0)))
    y = voxelize([pts, pts], vs, pcr, max_voxels=2)  # per sample: A and B kept, C dropped
    assert sorted(y.coords.tolist()) == [[0, 0, 0, 0], [0, 50, 0, 0], [1, 0, 0, 0], [1, 50, 0, 0]]
    check_same(as_dict(y), brute_voxelize([pts, pts], vs, pcr, max_voxels=2))


def test_voxelization_module_train_eval_caps():
    m = Voxelization(VS, PCR, max_voxels=(5, 7), max_num_points=None)
    assert m.sparse_shape == (1024, 1024, 40)
    pts = [random_cloud(200, 3, extent=50)]
    assert len(m.train()(pts)) == 5
    assert len(m.eval()(pts)) == 7
    with pytest.raises(ValueError, match="max_voxels"):
        Voxelization(VS, PCR, max_voxels=(1, 2, 3))


def test_voxelize_deterministic_and_permutation_invariant():
    p = random_cloud(3000, 4, extent=40)
    a = voxelize([p], VS, PCR)
    b = voxelize([p.clone()], VS, PCR)
    assert torch.equal(a.coords, b.coords) and torch.equal(a.feats, b.feats)
    perm = torch.randperm(p.shape[0], generator=torch.Generator().manual_seed(0))
    c = voxelize([p[perm]], VS, PCR)  # no caps: the same voxels and means in any point order
    assert torch.equal(a.coords, c.coords)
    torch.testing.assert_close(a.feats, c.feats)


def test_voxelize_empty_and_out_of_range():
    e = torch.zeros(0, 5)
    x = voxelize([e, e], VS, PCR)
    assert x.feats.shape == (0, 5) and x.coords.shape == (0, 4) and x.coords.dtype == torch.int32
    far = torch.tensor([[500.0, 0, 0, 1, 0], [0, 0, 50, 1, 0]])
    assert len(voxelize([far], VS, PCR)) == 0
    y = voxelize([e, random_cloud(100, 5, extent=40)], VS, PCR, max_voxels=10, max_num_points=2)
    assert len(y) == 10 and bool((y.coords[:, 0] == 1).all())


def test_voxelize_float64_and_gradient():
    p = random_cloud(200, 6, extent=5).double().requires_grad_(True)
    x = voxelize([p], (0.8, 0.8, 0.8), PCR)
    assert x.feats.dtype == torch.float64
    x.feats.sum().backward()
    # each point's gradient is 1 / (points in its voxel), so the total is the number of voxels
    assert p.grad is not None and float(p.grad[:, 0].sum()) == pytest.approx(len(x))


def test_voxelize_bad_input():
    good = random_cloud(10, 7)
    bad = good.clone()
    bad[4, 1] = float("nan")
    with pytest.raises(ValueError, match=r"points\[1\] contains NaN.*row 4, column 1 'y'"):
        voxelize([good, bad], VS, PCR)
    inf = good.clone()
    inf[2, 4] = float("inf")
    with pytest.raises(ValueError, match=r"points\[0\].*'dt'"):
        Voxelization()([inf])
    with pytest.raises(ValueError, match=r"points\[0\] must have shape"):
        voxelize([torch.zeros(3, 2)], VS, PCR)
    with pytest.raises(TypeError, match=r"points\[0\] must be floating point"):
        voxelize([torch.zeros(3, 5, dtype=torch.int32)], VS, PCR)
    with pytest.raises(ValueError, match=r"points\[1\] has 4 features"):
        voxelize([good, good[:, :4]], VS, PCR)
    with pytest.raises(TypeError, match="points"):
        voxelize(good.numpy(), VS, PCR)
    with pytest.raises(ValueError, match="empty list"):
        voxelize([], VS, PCR)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.lists(st.tuples(st.integers(-12, 12), st.integers(-12, 12), st.integers(-3, 3),
                                   st.floats(0, 1, width=32)), max_size=40), min_size=1, max_size=3),
       st.sampled_from([None, 1, 3]), st.sampled_from([None, 2, 5]))
def test_voxelize_property(clouds, max_num_points, max_voxels):
    # half-integer coordinates over a range of ±10 with 2 m voxels: duplicates, borders, points outside
    pts = [torch.tensor([[x / 2, y / 2, z / 2, f] for x, y, z, f in c], dtype=torch.float32).reshape(-1, 4)
           for c in clouds]
    pcr, vs = (-5.0, -5.0, -1.0, 5.0, 5.0, 1.0), (2.0, 2.0, 1.0)
    x = voxelize(pts, vs, pcr, max_voxels=max_voxels, max_num_points=max_num_points)
    check_same(as_dict(x), brute_voxelize(pts, vs, pcr, max_voxels, max_num_points))


# ----------------------------------------------------------------------------- encoder
def test_sparse_encoder_tiny_shapes():
    enc = SparseEncoder(5, (1024, 1024, 40), **SMALL)
    assert enc.stride == (8, 8, 16) and enc.bev_shape == (128, 128)
    assert enc.out_channels == 8 * 3  # D = ceil(40 / 16)
    default = SparseEncoder(5, (1024, 1024, 40))
    assert default.out_channels == 128 * 3
    three = SparseEncoder(5, (1024, 1024, 40), encoder_channels=((16, 16, 32), (32, 32, 64), (64, 64)))
    assert three.bev_shape == (256, 256)  # stride 4 -> 0.4 m cells on 0.1 m voxels
    vox = Voxelization((0.2, 0.2, 0.4), PCR)  # the cheaper tiny config: 0.2 m voxels, stride 4 -> 0.8 m cells
    cheap = SparseEncoder(5, vox.sparse_shape, output_channels=32,
                          encoder_channels=[[16, 16, 32], [32, 32, 64], [64, 64]])
    assert vox.sparse_shape == (512, 512, 20) and cheap.bev_shape == (128, 128) and cheap.out_channels == 96


def _positive_weights(model):
    """'Identity-ish' net: non-negative conv weights, the x/y/z input channels zeroed, so every
    occupied cell has strictly positive features and empty cells stay 0."""
    torch.manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, sparse3d.nn.Conv3d):
                m.weight.uniform_(0.05, 0.15)
        model.backbone.conv_input[0].weight[:, :3] = 0


@pytest.mark.parametrize("pt", [(10.35, -20.05, 0.1), (-50.0, 20.3, -4.9), (40.1, 24.3, 2.5)])
def test_single_point_lights_expected_bev_cell(pt):
    # non-square grid (x ±51.2 m, y ±25.6 m) so that a transposed map cannot pass
    pcr = (-51.2, -25.6, -5.0, 51.2, 25.6, 3.0)
    vox = Voxelization(VS, pcr, max_voxels=None)
    enc = LidarEncoder(vox, SparseEncoder(5, vox.sparse_shape, **SMALL)).eval()
    _positive_weights(enc)
    assert enc.bev_shape == (128, 64)
    x, y, z = pt
    other = torch.tensor([[-30.0, 10.0, 0.0, 1.0, 0.0]])
    with torch.no_grad():
        bev = enc([torch.tensor([[x, y, z, 1.0, 0.0]]), other])
    assert bev.shape == (2, enc.out_channels, 128, 64)
    i, j = math.floor((x - pcr[0]) / 0.8), math.floor((y - pcr[1]) / 0.8)
    D = 3
    kz = math.floor(math.floor((z - pcr[2]) / 0.2) / 16)
    nz = (bev[0].abs().sum(0) > 0).nonzero().tolist()
    assert nz == [[i, j]]
    # height folded into channels as c * D + z
    ch = (bev[0, :, i, j] > 0).nonzero().squeeze(1)
    assert len(ch) > 0 and bool((ch % D == kz).all())
    # the second sample only shows its own point
    assert (bev[1].abs().sum(0) > 0).nonzero().tolist() == [[math.floor(21.2 / 0.8), math.floor(35.6 / 0.8)]]


def test_encoder_empty_point_cloud():
    enc = LidarEncoder(Voxelization(), SparseEncoder(5, (1024, 1024, 40), **SMALL))
    e = torch.zeros(0, 5)
    for train in (True, False):
        enc.train(train)
        bev = enc([e, e])
        assert bev.shape == (2, 24, 128, 128) and bool((bev == 0).all())
    enc.train()
    bev = enc([random_cloud(500, 8, extent=40), e])
    assert bool((bev[1] == 0).all()) and bool((bev[0] != 0).any())
    bev.sum().backward()  # the graph stays connected
    # an empty batch leaves the BatchNorm running statistics finite
    enc([e])
    for m in enc.modules():
        if isinstance(m, torch.nn.BatchNorm1d):
            assert torch.isfinite(m.running_mean).all() and torch.isfinite(m.running_var).all()
    # the bare encoder with a trailing empty sample needs batch_size; without it B = max(b) + 1
    x = enc.voxelize([random_cloud(50, 9, extent=40), e])
    assert enc.backbone(x, batch_size=2).shape[0] == 2
    assert enc.backbone(x).shape[0] == 1


def test_encoder_gradients_finite():
    enc = LidarEncoder(Voxelization(), SparseEncoder(5, (1024, 1024, 40), **SMALL)).train()
    pts = [random_cloud(3000, 10, extent=45), random_cloud(2000, 11, extent=45)]
    bev = enc(pts)
    assert torch.isfinite(bev).all()
    (bev ** 2).mean().backward()
    grads = [p.grad for p in enc.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(int((g != 0).any()) for g in grads) >= 0.9 * len(grads)


def test_encoder_batch_independent():
    enc = LidarEncoder(Voxelization(), SparseEncoder(5, (1024, 1024, 40), **SMALL)).eval()
    a, b = random_cloud(800, 12, extent=45), random_cloud(600, 13, extent=45)
    with torch.no_grad():
        both = enc([a, b])
        torch.testing.assert_close(both[0:1], enc([a]))
        torch.testing.assert_close(both[1:2], enc([b]))


def test_encoder_bad_input():
    enc = SparseEncoder(5, (64, 64, 8), **SMALL)
    x = voxelize([random_cloud(50, 14, extent=3)], (0.1, 0.1, 0.2), (-3.2, -3.2, -1.0, 3.2, 3.2, 0.6))
    with pytest.raises(ValueError, match="in_channels"):
        SparseEncoder(4, (64, 64, 8), **SMALL)(x)
    with pytest.raises(ValueError, match="outside sparse_shape"):
        SparseEncoder(5, (32, 32, 8), **SMALL)(x)
    with pytest.raises(TypeError, match="SparseTensor"):
        enc(torch.zeros(3, 5))
    with pytest.raises(ValueError, match="batch_size"):
        enc(voxelize([torch.zeros(0, 5), random_cloud(200, 1, extent=3)], (0.1, 0.1, 0.2),
                     (-3.2, -3.2, -1.0, 3.2, 3.2, 0.6)), batch_size=1)
    with pytest.raises(ValueError, match="sparse_shape"):
        LidarEncoder(Voxelization(), enc)
    with pytest.raises(ValueError, match="encoder_channels"):
        SparseEncoder(5, (64, 64, 8), encoder_channels=())


def test_to_bev_matches_height_collapse():
    g = torch.Generator().manual_seed(0)
    X, Y, D, B = 6, 5, 3, 3
    flat = torch.randperm(2 * X * Y * D, generator=g)[:40]  # samples 0 and 1; sample 2 empty
    b, r = flat // (X * Y * D), flat % (X * Y * D)
    coords = torch.stack([b, (r // (Y * D)) * 8, ((r // D) % Y) * 8, (r % D) * 16], 1).int()
    feats = torch.randn(40, 2, dtype=torch.float64, requires_grad=True)
    x = sparse3d.SparseTensor(feats, coords, (8, 8, 16))
    got = to_bev(x, (X, Y, D), B)
    assert got.shape == (B, 2 * D, X, Y)
    torch.testing.assert_close(got, height_collapse(x, (X, Y, D), (0, 0, 0), B))
    assert torch.autograd.gradcheck(lambda f: to_bev(x.replace(f), (X, Y, D), B), (feats,))
    empty = sparse3d.SparseTensor(torch.zeros(0, 2), torch.zeros(0, 4, dtype=torch.int32), (8, 8, 16))
    assert torch.equal(to_bev(empty, (X, Y, D), 2), torch.zeros(2, 2 * D, X, Y))


def test_time_raster_matches_brute_force_and_encoder_channels():
    """LidarEncoder(time_bins=...): log1p point counts per (Δt bin, BEV cell) appended after the
    backbone's channels, on the same non-square BEV grid (brute-force per-point reference)."""
    from sparse3d.models.bevfusion.lidar.sparse_encoder import time_raster
    pcr = (-51.2, -25.6, -5.0, 51.2, 25.6, 3.0)
    edges = [0.0, 0.025, 0.225, 0.5]
    g = torch.Generator().manual_seed(0)
    pts = []
    for n in (700, 0, 50):
        p = torch.rand(n, 5, generator=g)
        p[:, 0] = p[:, 0] * 120 - 60      # some outside x range
        p[:, 1] = p[:, 1] * 60 - 30       # some outside y range
        p[:, 2] = p[:, 2] * 10 - 6        # some outside z range
        p[:, 4] = (p[:, 4] * 11).floor() * 0.05   # sweep times 0 .. 0.5 (0.5 is outside the last bin)
        pts.append(p)
    ras = time_raster(pts, edges, pcr, (128, 64))
    ref = torch.zeros(3, 3, 128, 64)
    for b, p in enumerate(pts):
        for x, y, z, _, dt in p.tolist():
            i, j = math.floor((x + 51.2) / 0.8), math.floor((y + 25.6) / 0.8)
            t = sum(dt >= e for e in edges) - 1
            if 0 <= i < 128 and 0 <= j < 64 and -5.0 <= z < 3.0 and 0 <= t < 3:
                ref[b, t, i, j] += 1
    assert ref[0].sum() > 100 and torch.allclose(ras, torch.log1p(ref))
    vox = Voxelization(VS, pcr, max_voxels=None)
    base = LidarEncoder(vox, SparseEncoder(5, vox.sparse_shape, **SMALL)).eval()
    enc = LidarEncoder(vox, SparseEncoder(5, vox.sparse_shape, **SMALL), time_bins=edges).eval()
    enc.load_state_dict(base.state_dict())
    assert enc.out_channels == base.out_channels + 3
    with torch.no_grad():
        out, ref_bev = enc(pts), base(pts)
    assert out.shape == (3, enc.out_channels, 128, 64)
    assert torch.equal(out[:, :base.out_channels], ref_bev) and torch.allclose(out[:, base.out_channels:], ras)
    for bad in ([0.1], [0.0, 0.0], [0.0, float("nan")]):
        with pytest.raises(ValueError, match="time_bins"):
            LidarEncoder(vox, SparseEncoder(5, vox.sparse_shape, **SMALL), time_bins=bad)
    with pytest.raises(ValueError, match="5th"):
        time_raster([torch.zeros(3, 4)], edges, pcr, (128, 64))
