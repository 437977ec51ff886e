"""Point-voxel ops (SPVCNN / PVCNN): numba vs torch kernels, brute-force loops, gradients, edge cases."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparse3d import PointTensor, SparseTensor
from sparse3d.nn.functional import pointops as P
from sparse3d.ops.pointops import numba_cpu as N
from sparse3d.ops.pointops import reference as R

torch.set_num_threads(2)
CORNERS = [(dx, dy, dz) for dx in (0, 1) for dy in (0, 1) for dz in (0, 1)]


@pytest.fixture(params=["numba", "torch"])
def backend(request, monkeypatch):
    monkeypatch.setenv("SPARSE3D_POINTOPS", request.param)
    return request.param


def make_points(n, extent=6.0, batch=2, C=3, seed=0, low=0.0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    xyz = torch.rand(n, 3, generator=g, dtype=torch.float64) * extent + low
    b = torch.randint(0, batch, (n, 1), generator=g).double()
    feats = torch.randn(n, C, generator=g, dtype=torch.float64).to(dtype)
    return PointTensor(feats, torch.cat([b, xyz], 1).to(dtype))


def make_sparse(n, extent=6, batch=2, C=3, stride=1, seed=0, low=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    b = torch.randint(0, batch, (n, 1), generator=g)
    s = torch.tensor(stride if isinstance(stride, tuple) else (stride,) * 3)
    xyz = torch.div(torch.randint(low, low + extent, (n, 3), generator=g), s, rounding_mode="floor") * s
    coords = torch.unique(torch.cat([b, xyz], 1), dim=0).int()
    feats = torch.randn(coords.shape[0], C, generator=g, dtype=torch.float64).to(dtype)
    return SparseTensor(feats, coords, stride)


# ----------------------------------------------------------------------------- brute force
def bf_voxel(p, s):
    return tuple([int(p[0])] + [math.floor(math.floor(v) / t) * t for v, t in zip(p[1:], s)])


def bf_scatter_mean(keys, feats, rows):
    """keys: per-point voxel tuple; rows: voxel tuple -> output row."""
    out = np.zeros((len(rows), feats.shape[1]))
    cnt = np.zeros(len(rows))
    for k, f in zip(keys, feats):
        if k in rows:
            out[rows[k]] += f
            cnt[rows[k]] += 1
    return out / np.maximum(cnt, 1)[:, None]


def bf_voxel_to_point(xc, xf, s, pc, nearest=False):
    rows = {tuple(c): i for i, c in enumerate(xc.tolist())}
    out = np.zeros((len(pc), xf.shape[1]))
    for j, p in enumerate(pc.tolist()):
        base = bf_voxel(p, s)
        if nearest:
            if base in rows:
                out[j] = xf[rows[base]]
            continue
        u = [(p[a + 1] - base[a + 1]) / s[a] for a in range(3)]
        acc, tot = np.zeros(xf.shape[1]), 0.0
        for d in CORNERS:
            key = (base[0],) + tuple(base[a + 1] + d[a] * s[a] for a in range(3))
            if key in rows:
                w = np.prod([u[a] if d[a] else 1 - u[a] for a in range(3)])
                acc += w * xf[rows[key]]
                tot += w
        out[j] = acc / (tot + 1e-8)
    return out


def bf_avg_voxelize(feats, coords, r):
    B, C, N_ = feats.shape
    out = np.zeros((B, C, r, r, r))
    cnt = np.zeros((B, r, r, r))
    for b in range(B):
        for n in range(N_):
            x, y, z = (int(np.round(v)) for v in coords[b, :, n])
            out[b, :, x, y, z] += feats[b, :, n]
            cnt[b, x, y, z] += 1
    return out / np.maximum(cnt, 1)[:, None]


def bf_trilinear_devox(grid, coords, r):
    B, C = grid.shape[:2]
    out = np.zeros((B, C, coords.shape[2]))
    for b in range(B):
        for n in range(coords.shape[2]):
            c = np.clip(coords[b, :, n], 0, r - 1)
            lo = np.floor(c).astype(int)
            u = c - lo
            for d in CORNERS:
                i = [min(lo[a] + d[a], r - 1) for a in range(3)]
                w = np.prod([u[a] if d[a] else 1 - u[a] for a in range(3)])
                out[b, :, n] += w * grid[b, :, i[0], i[1], i[2]]
    return out


# ----------------------------------------------------------------------------- kernels: numba vs torch
@pytest.mark.parametrize("parallel", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("P_,V,K", [(0, 5, 8), (1, 1, 1), (7, 0, 8), (300, 40, 8), (200, 17, 1)])
def test_numba_kernels_match_reference(dtype, P_, V, K, parallel, monkeypatch):
    monkeypatch.setattr(N, "PARALLEL_MIN_WORK", 0 if parallel else 1 << 62)
    g = torch.Generator().manual_seed(P_ + V + K)
    idx = torch.randint(-1, max(V, 1), (P_, K), generator=g) if V else torch.full((P_, K), -1)
    w = torch.rand(P_, K, generator=g, dtype=torch.float64).to(dtype)
    feats = torch.randn(V, 5, generator=g, dtype=torch.float64).to(dtype)
    src = torch.randn(P_, 5, generator=g, dtype=torch.float64).to(dtype)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12)
    got = N.gather_weighted(feats.numpy(), idx.numpy(), w.numpy())
    torch.testing.assert_close(torch.from_numpy(got), R.gather_weighted(feats, idx, w), **tol)
    got = N.scatter_weighted(src.numpy(), idx.numpy(), w.numpy(), V)
    torch.testing.assert_close(torch.from_numpy(got), R.scatter_weighted(src, idx, w, V), **tol)


def test_numba_kernels_noncontiguous_and_csr():
    g = torch.Generator().manual_seed(3)
    feats = torch.randn(5, 20, generator=g, dtype=torch.float64).t()  # [20, 5] non-contiguous
    idx = torch.randint(-1, 20, (8, 30), generator=g).t()  # [30, 8]
    w = torch.rand(8, 30, generator=g, dtype=torch.float64).t()
    got = N.gather_weighted(feats.numpy(), idx.numpy(), w.numpy())
    torch.testing.assert_close(torch.from_numpy(got), R.gather_weighted(feats, idx, w))
    indptr, order = N.csr_by_target(idx.numpy(), 20)
    flat = idx.reshape(-1).numpy()
    for v in range(20):
        ents = order[indptr[v]:indptr[v + 1]]
        assert (flat[ents] == v).all() and (np.diff(ents) > 0).all()
    assert indptr[-1] == (flat >= 0).sum()


def test_numba_kernels_reject_out_of_range_index():
    with pytest.raises(ValueError, match="idx"):
        N.gather_weighted(np.zeros((3, 2)), np.array([[3]]), np.ones((1, 1)))
    with pytest.raises(ValueError, match="idx"):
        N.scatter_weighted(np.zeros((1, 2)), np.array([[5]]), np.ones((1, 1)), 2)


# ----------------------------------------------------------------------------- gradients
def test_gradcheck_functions(backend):
    g = torch.Generator().manual_seed(1)
    feats = torch.randn(6, 3, generator=g, dtype=torch.float64, requires_grad=True)
    src = torch.randn(9, 3, generator=g, dtype=torch.float64, requires_grad=True)
    idx = torch.randint(-1, 6, (9, 8), generator=g)
    w = torch.rand(9, 8, generator=g, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda f: P.DevoxelizeFunction.apply(f, idx, w), (feats,))
    assert torch.autograd.gradcheck(lambda s: P.ScatterFunction.apply(s, idx, w, 6), (src,))
    assert torch.autograd.gradgradcheck(lambda f: P.DevoxelizeFunction.apply(f, idx, w), (feats,))
    assert torch.autograd.gradgradcheck(lambda s: P.ScatterFunction.apply(s, idx, w, 6), (src,))
    index = torch.randint(-1, 4, (9,), generator=g)
    assert torch.autograd.gradcheck(lambda s: P.scatter_mean(s, index, 4), (src,))


def test_gradcheck_ops(backend):
    # the two Functions are checked in full above; end-to-end ops use fast (projected) gradcheck
    check = dict(fast_mode=True)
    z = make_points(25, extent=5.0, C=2, seed=2)
    x = make_sparse(40, extent=6, C=2, stride=2, seed=3)
    xf = x.feats.clone().requires_grad_(True)
    zf = z.feats.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda f: P.initial_voxelize(z.replace(f)).feats, (zf,), **check)
    assert torch.autograd.gradcheck(lambda f: P.point_to_voxel(x, z.replace(f)).feats, (zf,), **check)
    for nearest in (False, True):
        assert torch.autograd.gradcheck(lambda f: P.voxel_to_point(x.replace(f), z, nearest).feats, (xf,),
                                        **check)
    g = torch.Generator().manual_seed(4)
    pf = torch.randn(2, 2, 10, generator=g, dtype=torch.float64, requires_grad=True)
    pc = torch.rand(2, 3, 10, generator=g, dtype=torch.float64) * 2
    grid = torch.randn(2, 2, 3, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda f: P.avg_voxelize(f, pc, 3), (pf,), **check)
    assert torch.autograd.gradcheck(lambda t: P.trilinear_devoxelize(t, pc, 3), (grid,), **check)


def test_devoxelize_eval_mode_has_no_grad():
    grid = torch.randn(1, 2, 3, 3, 3, requires_grad=True)
    pc = torch.rand(1, 3, 5) * 2
    assert not P.trilinear_devoxelize(grid, pc, 3, training=False).requires_grad
    out = P.trilinear_devoxelize(grid, pc, 3, training=True)
    torch.testing.assert_close(out, P.trilinear_devoxelize(grid, pc, 3, training=False))
    assert out.requires_grad


# ----------------------------------------------------------------------------- ops vs brute force
@pytest.mark.parametrize("low", [0.0, -7.3])
def test_initial_voxelize_brute_force(backend, low):
    z = make_points(200, extent=5.0, batch=3, low=low, seed=5)
    x = P.initial_voxelize(z)
    keys = [bf_voxel(p, (1, 1, 1)) for p in z.coords.tolist()]
    uniq = sorted(set(keys))
    assert x.coords.tolist() == [list(k) for k in uniq] and x.stride == (1, 1, 1)
    rows = {k: i for i, k in enumerate(uniq)}
    np.testing.assert_allclose(x.feats.numpy(), bf_scatter_mean(keys, z.feats.numpy(), rows), atol=1e-12)
    assert z.idx_query[(1, 1, 1)].tolist() == [rows[k] for k in keys]


def test_initial_voxelize_ratio_rescales_points(backend):
    z = make_points(50, extent=3.0, seed=6)
    xyz = z.coords[:, 1:].clone()
    z.idx_query[(2, 2, 2)] = torch.zeros(50, dtype=torch.long)  # stale entry must go
    x = P.initial_voxelize(z, voxel_size_ratio=2.5)
    torch.testing.assert_close(z.coords[:, 1:], xyz * 2.5)
    assert list(z.idx_query) == [(1, 1, 1)]
    assert x.coords.tolist() == [list(k) for k in sorted({bf_voxel(p, (1, 1, 1)) for p in z.coords.tolist()})]


@pytest.mark.parametrize("stride", [1, 2, (2, 4, 1)])
@pytest.mark.parametrize("low", [0, -9])
def test_point_to_voxel_brute_force(backend, stride, low):
    x = make_sparse(60, extent=8, batch=2, C=1, stride=stride, seed=7, low=low)
    z = make_points(150, extent=10.0, batch=3, low=low - 1.0, seed=8)  # some points fall outside x
    out = P.point_to_voxel(x, z)
    assert out.coords is x.coords and out.stride == x.stride and out._caches is x._caches
    rows = {tuple(c): i for i, c in enumerate(x.coords.tolist())}
    keys = [bf_voxel(p, x.stride) for p in z.coords.tolist()]
    np.testing.assert_allclose(out.feats.numpy(), bf_scatter_mean(keys, z.feats.numpy(), rows), atol=1e-12)
    assert z.idx_query[x.stride].tolist() == [rows.get(k, -1) for k in keys]
    assert (z.idx_query[x.stride] == -1).any()  # dropped points exist


@pytest.mark.parametrize("nearest", [False, True])
@pytest.mark.parametrize("stride", [1, 2, (1, 2, 4)])
@pytest.mark.parametrize("low", [0, -6])
def test_voxel_to_point_brute_force(backend, nearest, stride, low):
    x = make_sparse(80, extent=7, batch=2, C=2, stride=stride, seed=9, low=low)
    z = make_points(120, extent=8.0, batch=2, low=low - 0.5, seed=10)
    out = P.voxel_to_point(x, z, nearest=nearest)
    assert isinstance(out, PointTensor) and out.coords is z.coords and out.idx_query is z.idx_query
    ref = bf_voxel_to_point(x.coords.numpy(), x.feats.numpy(), x.stride, z.coords.numpy(), nearest)
    np.testing.assert_allclose(out.feats.numpy(), ref, atol=1e-10)
    key = (x.stride, "nearest" if nearest else "trilinear")
    K = 1 if nearest else 8
    assert z.idx_query[key].shape == (120, K) and z.weights[key].shape == (120, K)


def test_voxel_to_point_uses_cache(backend):
    x = make_sparse(50, extent=5, seed=11)
    z = make_points(40, extent=5.0, seed=12)
    P.voxel_to_point(x, z)
    key = (x.stride, "trilinear")
    idx, w = z.idx_query[key], z.weights[key]
    z.weights[key] = w * 0  # a cached map is reused, not recomputed
    assert (P.voxel_to_point(x, z).feats == 0).all()
    assert z.idx_query[key] is idx


def test_cache_not_reused_for_other_coords(backend):
    z = make_points(60, extent=5.0, seed=15)
    P.initial_voxelize(z)  # caches z.idx_query[(1, 1, 1)] against its own voxels
    other = make_sparse(40, extent=5, seed=16)  # a different coordinate set at the same stride
    out = P.point_to_voxel(other, z)
    rows = {tuple(c): i for i, c in enumerate(other.coords.tolist())}
    keys = [bf_voxel(p, (1, 1, 1)) for p in z.coords.tolist()]
    np.testing.assert_allclose(out.feats.numpy(), bf_scatter_mean(keys, z.feats.numpy(), rows), atol=1e-12)
    idx = z.idx_query[(1, 1, 1)]
    P.point_to_voxel(other.replace(other.feats * 2), z)  # same coords object: the cached map is reused
    assert z.idx_query[(1, 1, 1)] is idx


def test_avg_voxelize_brute_force(backend):
    g = torch.Generator().manual_seed(13)
    feats = torch.randn(2, 3, 60, generator=g, dtype=torch.float64)
    coords = torch.rand(2, 3, 60, generator=g, dtype=torch.float64) * 4
    out = P.avg_voxelize(feats, coords, 5)
    assert out.shape == (2, 3, 5, 5, 5)
    np.testing.assert_allclose(out.numpy(), bf_avg_voxelize(feats.numpy(), coords.numpy(), 5), atol=1e-12)
    # torch.round is half-to-even, as in PVCNN: 2.5 -> 2, 3.5 -> 4
    c = torch.tensor([[[2.5, 3.5], [0.0, 0.0], [0.0, 0.0]]])
    grid = P.avg_voxelize(torch.ones(1, 1, 2), c, 5)
    assert grid[0, 0, 2, 0, 0] == 1 and grid[0, 0, 4, 0, 0] == 1 and grid.sum() == 2


def test_trilinear_devoxelize_brute_force(backend):
    g = torch.Generator().manual_seed(14)
    grid = torch.randn(2, 3, 4, 4, 4, generator=g, dtype=torch.float64)
    coords = torch.rand(2, 3, 50, generator=g, dtype=torch.float64) * 5 - 0.5  # some outside: clamped
    coords[0, :, 0] = 3.0  # exactly on the upper border
    out = P.trilinear_devoxelize(grid, coords, 4)
    np.testing.assert_allclose(out.numpy(), bf_trilinear_devox(grid.numpy(), coords.numpy(), 4), atol=1e-12)
    torch.testing.assert_close(out[0, :, 0], grid[0, :, 3, 3, 3])


def test_real_scan(kitti_points, kitti_coords, monkeypatch):
    pts = torch.from_numpy(kitti_points).double()
    coords = torch.cat([torch.zeros(len(pts), 1, dtype=torch.float64), pts[:, :3] / 0.05], 1)
    z = PointTensor(pts.float(), coords)
    x = P.initial_voxelize(z)
    assert torch.equal(x.coords, kitti_coords)  # same voxels as sparse_quantize at 0.05 m
    torch.testing.assert_close(P.voxel_to_point(x, z, nearest=True).feats, x.feats[z.idx_query[(1, 1, 1)]])
    res = {}
    for b in ("numba", "torch"):  # both backends on every 16th point, through strides 1 and 4
        monkeypatch.setenv("SPARSE3D_POINTOPS", b)
        z = PointTensor(pts[::16].float(), coords[::16])
        x = P.initial_voxelize(z)
        c4 = torch.unique(torch.div(x.coords, torch.tensor([1, 4, 4, 4], dtype=torch.int32),
                                    rounding_mode="floor") * torch.tensor([1, 4, 4, 4], dtype=torch.int32), dim=0)
        x4 = P.point_to_voxel(SparseTensor(torch.zeros(len(c4), 4), c4, 4), z)
        y = P.voxel_to_point(x4, P.voxel_to_point(x, z))
        res[b] = (x.feats, x4.feats, y.feats)
    for a, b in zip(res["numba"], res["torch"]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_device_matches_cpu(device):
    """The torch path on ``device`` (CUDA when present) agrees with the CPU kernels."""
    z = make_points(300, extent=9.0, batch=2, C=4, seed=17, low=-4.0, dtype=torch.float32)
    x2 = make_sparse(200, extent=10, batch=2, C=4, stride=2, seed=18, low=-4, dtype=torch.float32)
    g = torch.Generator().manual_seed(19)
    pf, pc = torch.randn(2, 4, 50, generator=g), torch.rand(2, 3, 50, generator=g) * 5
    grid = torch.randn(2, 4, 6, 6, 6, generator=g)

    def run(dev):
        zd = PointTensor(z.feats.to(dev), z.coords.to(dev))
        xd = SparseTensor(x2.feats.to(dev), x2.coords.to(dev), 2)
        x1 = P.initial_voxelize(zd)
        return [x1.coords, x1.feats, P.point_to_voxel(xd, zd).feats, P.voxel_to_point(xd, zd).feats,
                P.voxel_to_point(xd, zd, nearest=True).feats, P.avg_voxelize(pf.to(dev), pc.to(dev), 6),
                P.trilinear_devoxelize(grid.to(dev), pc.to(dev), 6)]

    for a, b in zip(run(device), run(torch.device("cpu"))):
        assert a.device.type == device.type
        torch.testing.assert_close(a.cpu(), b, rtol=1e-5, atol=1e-5)


def test_half_precision_uses_reference():
    x = make_sparse(30, extent=4, C=2, seed=20, dtype=torch.float16)
    z = make_points(20, extent=4.0, seed=21, dtype=torch.float32)
    y = P.voxel_to_point(x, z)
    assert y.feats.dtype == torch.float16
    ref = P.voxel_to_point(x.float(), make_points(20, extent=4.0, seed=21, dtype=torch.float32)).feats
    torch.testing.assert_close(y.feats.float(), ref, rtol=1e-2, atol=1e-2)


# ----------------------------------------------------------------------------- edge cases
def test_empty_inputs(backend):
    z = PointTensor(torch.zeros(0, 3, dtype=torch.float64), torch.zeros(0, 4, dtype=torch.float64))
    x = P.initial_voxelize(z)
    assert x.coords.shape == (0, 4) and x.feats.shape == (0, 3)
    xs = make_sparse(10, C=3)
    assert P.point_to_voxel(xs, z).feats.shape == (len(xs), 3)
    assert (P.point_to_voxel(xs, z).feats == 0).all()
    assert P.voxel_to_point(xs, z).feats.shape == (0, 3)
    z2 = make_points(5, C=3)
    assert (P.voxel_to_point(x, z2).feats == 0).all()  # no voxels at all
    assert P.point_to_voxel(x, z2).feats.shape == (0, 3)
    assert P.avg_voxelize(torch.zeros(2, 3, 0), torch.zeros(2, 3, 0), 4).abs().sum() == 0
    assert P.trilinear_devoxelize(torch.zeros(2, 3, 4, 4, 4), torch.zeros(2, 3, 0), 4).shape == (2, 3, 0)


def test_one_point(backend):
    z = PointTensor(torch.tensor([[1.0, 2.0]]), torch.tensor([[0.0, 0.25, -0.5, 3.75]]))
    x = P.initial_voxelize(z)
    assert x.coords.tolist() == [[0, 0, -1, 3]]
    torch.testing.assert_close(x.feats, z.feats)
    y = P.voxel_to_point(x, z)  # only the (0,0,0) corner exists: renormalized to weight 1
    torch.testing.assert_close(y.feats, z.feats, rtol=1e-6, atol=1e-6)


def test_batches_do_not_mix(backend):
    xyz = torch.tensor([[0.5, 0.5, 0.5]] * 2)
    z = PointTensor(torch.tensor([[1.0], [10.0]]), torch.cat([torch.tensor([[0.0], [1.0]]), xyz], 1))
    x = P.initial_voxelize(z)
    assert x.coords.tolist() == [[0, 0, 0, 0], [1, 0, 0, 0]]
    assert x.feats.flatten().tolist() == [1.0, 10.0]
    # batch-1 voxel next door must not feed batch-0 points
    x2 = SparseTensor(torch.tensor([[1.0], [5.0]]), torch.tensor([[0, 0, 0, 0], [1, 1, 1, 1]]))
    y = P.voxel_to_point(x2, z)
    torch.testing.assert_close(y.feats[0], torch.tensor([1.0]), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(y.feats[1], torch.tensor([5.0]), rtol=1e-6, atol=1e-6)
    g = P.avg_voxelize(torch.tensor([[[1.0]], [[3.0]]]), torch.zeros(2, 3, 1), 2)
    assert g[0, 0, 0, 0, 0] == 1 and g[1, 0, 0, 0, 0] == 3


def test_all_neighbours_missing_gives_zeros(backend):
    x = SparseTensor(torch.ones(1, 2), torch.tensor([[0, 10, 10, 10]]), 1)
    z = PointTensor(torch.zeros(3, 1), torch.tensor([[0.0, 0.5, 0.5, 0.5], [1.0, 10.5, 10.5, 10.5],
                                                   [0.0, 10.0, 10.0, 10.0]]))
    y = P.voxel_to_point(x, z)
    assert y.feats[:2].abs().sum() == 0  # far away / other batch
    torch.testing.assert_close(y.feats[2], torch.ones(2), rtol=1e-6, atol=1e-6)
    assert (P.voxel_to_point(x, z, nearest=True).feats[:2] == 0).all()


def test_large_coordinates(backend):
    big = 2.0 ** 30
    z = PointTensor(torch.ones(2, 1, dtype=torch.float64),
                    torch.tensor([[0.0, big, -big, 3.5], [0.0, big + 1, -big, 3.5]], dtype=torch.float64))
    x = P.initial_voxelize(z)
    assert x.coords[:, 1].tolist() == [2 ** 30, 2 ** 30 + 1]
    assert P.voxel_to_point(x, z).feats.flatten().tolist() == pytest.approx([1.0, 1.0])


# ----------------------------------------------------------------------------- properties
@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 40), c=st.floats(-100, 100), stride=st.sampled_from([1, 2, 3]),
       seed=st.integers(0, 10 ** 6))
def test_property_scatter_mean_of_constant(n, c, stride, seed):
    z = make_points(n, extent=6.0, batch=2, C=1, seed=seed, low=-3.0)
    z = z.replace(torch.full((n, 1), c, dtype=torch.float64))
    x = P.initial_voxelize(z)
    torch.testing.assert_close(x.feats, torch.full_like(x.feats, c))
    xs = make_sparse(30, extent=6, stride=stride, seed=seed, low=-3)
    out = P.point_to_voxel(xs, z).feats
    hit = torch.zeros(len(xs), dtype=torch.bool)
    idx = z.idx_query[xs.stride]
    hit[idx[idx >= 0]] = True
    torch.testing.assert_close(out[hit], torch.full_like(out[hit], c))
    assert (out[~hit] == 0).all()
    feats = torch.full((1, 1, n), c, dtype=torch.float64)
    g = P.avg_voxelize(feats, torch.rand(1, 3, n, generator=torch.Generator().manual_seed(seed)) * 3, 4)
    occ = P.avg_voxelize(torch.ones(1, 1, n, dtype=torch.float64),
                         torch.rand(1, 3, n, generator=torch.Generator().manual_seed(seed)) * 3, 4) != 0
    torch.testing.assert_close(g[occ], torch.full_like(g[occ], c))
    assert (g[~occ] == 0).all() and 1 <= occ.sum() <= n


@settings(max_examples=25, deadline=None)
@given(a=st.lists(st.floats(-5, 5), min_size=4, max_size=4), stride=st.sampled_from([1, 2]),
       seed=st.integers(0, 10 ** 6))
def test_property_linear_field_is_reproduced(a, stride, seed):
    # full grid of voxels [0, 6s)^3 at stride s holding f(c) = a.c + a0 at their integer coordinate
    r = torch.arange(6) * stride
    gx, gy, gz = torch.meshgrid(r, r, r, indexing="ij")
    xyz = torch.stack([gx.flatten(), gy.flatten(), gz.flatten()], 1)
    coords = torch.cat([torch.zeros(len(xyz), 1, dtype=torch.long), xyz], 1).int()
    A = torch.tensor(a, dtype=torch.float64)
    x = SparseTensor((xyz.double() @ A[:3] + A[3]).unsqueeze(1), coords, stride)
    g = torch.Generator().manual_seed(seed)
    p = torch.rand(30, 3, generator=g, dtype=torch.float64) * 5 * stride  # interior: all 8 corners exist
    z = PointTensor(torch.zeros(30, 1, dtype=torch.float64), torch.cat([torch.zeros(30, 1), p], 1).double())
    y = P.voxel_to_point(x, z)
    torch.testing.assert_close(y.feats[:, 0], p @ A[:3] + A[3], rtol=1e-6, atol=1e-6)
    # PVCNN devoxelize of a linear dense grid is exact on all of [0, R-1]^3
    R_ = 5
    i = torch.arange(R_, dtype=torch.float64)
    G = (A[0] * i.view(-1, 1, 1) + A[1] * i.view(1, -1, 1) + A[2] * i.view(1, 1, -1) + A[3])[None, None]
    pc = torch.rand(1, 3, 20, generator=g, dtype=torch.float64) * (R_ - 1)
    out = P.trilinear_devoxelize(G, pc, R_)
    torch.testing.assert_close(out[0, 0], pc[0].t() @ A[:3] + A[3])


# ----------------------------------------------------------------------------- bad input
def test_bad_input_raises():
    z = make_points(10)
    x = make_sparse(10)
    z_nan = make_points(10)
    z_nan.coords[3, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        P.initial_voxelize(z_nan)
    with pytest.raises(ValueError, match="NaN"):
        P.voxel_to_point(x, z_nan)
    # checked coordinates are remembered (replace() shares them), but an in-place edit is re-checked
    z_ok = make_points(10)
    P.initial_voxelize(z_ok)
    z_rep = z_ok.replace(z_ok.feats * 2)
    assert z_rep.coords is z_ok.coords and z_rep._coords_checked[0] is z_ok.coords
    z_rep.coords[2, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        P.voxel_to_point(x, z_rep)
    with pytest.raises(ValueError, match="length mismatch"):
        z_ok.replace(z_ok.feats[:3])
    z_bad = make_points(10)
    z_bad.feats = z_bad.feats[:7]
    with pytest.raises(ValueError, match="z.feats has 7 rows"):
        P.point_to_voxel(x, z_bad)
    z_neg = make_points(10)
    z_neg.coords[0, 0] = -1
    with pytest.raises(ValueError, match="batch"):
        P.initial_voxelize(z_neg)
    z_huge = make_points(10)
    z_huge.coords[0, 1] = 1e12
    with pytest.raises(ValueError, match="int32"):
        P.initial_voxelize(z_huge)
    with pytest.raises(ValueError, match="voxel_size_ratio"):
        P.initial_voxelize(z, voxel_size_ratio=0)
    with pytest.raises(TypeError, match="x must be"):
        P.point_to_voxel(z, z)
    with pytest.raises(TypeError, match="z must be"):
        P.voxel_to_point(x, x)
    with pytest.raises(ValueError, match="index"):
        P.scatter_mean(torch.zeros(3, 2), torch.tensor([0, 1, 5]), 4)
    with pytest.raises(ValueError, match="idx"):
        P.devoxelize(torch.zeros(3, 2), torch.tensor([[0, 3]]), torch.ones(1, 2))
    f, c = torch.zeros(2, 3, 10), torch.rand(2, 3, 10)
    with pytest.raises(ValueError, match="coords has 9"):
        P.avg_voxelize(f, c[:, :, :9], 4)
    with pytest.raises(ValueError, match="batch"):
        P.avg_voxelize(f, c[:1], 4)
    with pytest.raises(ValueError, match=r"\[0, resolution-1\]"):
        P.avg_voxelize(f, c + 5, 4)
    c_nan = c.clone()
    c_nan[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        P.avg_voxelize(f, c_nan, 4)
    with pytest.raises(ValueError, match="NaN"):
        P.trilinear_devoxelize(torch.zeros(2, 3, 4, 4, 4), c_nan, 4)
    with pytest.raises(ValueError, match="grid must be"):
        P.trilinear_devoxelize(torch.zeros(2, 3, 4, 4, 3), c, 4)
    with pytest.raises(ValueError, match="resolution"):
        P.avg_voxelize(f, c, 0)
