"""Pooling, GroupNorm/InstanceNorm and dense/BEV conversions against brute-force and dense torch references."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as TF
from conftest import random_coords
from hypothesis import given, settings
from hypothesis import strategies as st

from sparse3d import SparseTensor
from sparse3d.nn.functional.dense import height_collapse, to_dense
from sparse3d.nn.functional.kmap import get_kernel_map
from sparse3d.nn.functional.norm import group_norm, instance_norm
from sparse3d.nn.functional.pooling import (avg_pool3d, global_avg_pool, global_max_pool, max_pool3d,
                                            sparse_avg_pool, sparse_max_pool)
from sparse3d.nn.modules.conv import Conv3d
from sparse3d.nn.modules.dense import ToBEV, ToDense
from sparse3d.nn.modules.norm import GroupNorm, InstanceNorm
from sparse3d.nn.modules.pooling import AvgPool3d, GlobalAvgPool, GlobalMaxPool, MaxPool3d

torch.set_num_threads(min(2, torch.get_num_threads()))

IMPLS = ["numba", "torch"]


# ----------------------------------------------------------------------------- helpers
def distinct_feats(n: int, c: int, seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    """Features without ties (values at least 0.1 apart), so max pooling is differentiable."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randperm(n * c, generator=g).to(dtype) * 0.1 - 0.05 * n * c).view(n, c)


def brute_pool(coords, feats, tstride, ks, cs, dil, mode):
    """Pooling from the definition with python dicts: returns {coord tuple: [C] tensor}."""
    os_ = tuple(s * t for s, t in zip(cs, tstride))
    rows = {tuple(c): i for i, c in enumerate(coords.tolist())}
    if cs == (1, 1, 1):
        outs = list(rows)
    else:
        outs = sorted({(c[0], *(v // o * o for v, o in zip(c[1:], os_))) for c in rows})
    axes = [[((i - K // 2) if K % 2 else i) * d * t for i in range(K)] for K, d, t in zip(ks, dil, tstride)]
    f = feats.numpy()  # numpy: many tiny reductions are much cheaper than torch ops
    res = {}
    for o in outs:
        nb = [rows[q] for dz in axes[2] for dy in axes[1] for dx in axes[0]
              if (q := (o[0], o[1] + dx, o[2] + dy, o[3] + dz)) in rows]
        if not nb:
            res[o] = torch.zeros(f.shape[1], dtype=feats.dtype)
        else:
            res[o] = torch.from_numpy(f[nb].max(0) if mode == "max" else f[nb].mean(0))
    return res


def assert_matches(y: SparseTensor, expected: dict, **tol):
    got = {tuple(c): f for c, f in zip(y.coords.tolist(), y.feats)}
    assert set(got) == set(expected)
    assert y.coords.shape[0] == len(expected)
    if expected:
        keys = sorted(expected)
        torch.testing.assert_close(torch.stack([got[k] for k in keys]), torch.stack([expected[k] for k in keys]),
                                   **tol)


POOL_CASES = [  # kernel_size, stride, dilation
    (3, 1, 1), (2, 1, 1), (3, 1, 2), (2, 2, 1), (3, 2, 1), (3, 3, 1), (1, 2, 1),
    ((1, 1, 2), (1, 1, 2), 1), ((3, 1, 3), (2, 1, 1), 1), ((1, 3, 1), 1, (1, 2, 1)),
]


# ----------------------------------------------------------------------------- local pooling
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("mode", ["max", "avg"])
@pytest.mark.parametrize("ks,cs,dil", POOL_CASES)
def test_local_pool_matches_bruteforce(impl, mode, ks, cs, dil):
    coords = random_coords(250, extent=9, batch=2, seed=1, low=-5)  # negative coords included
    feats = distinct_feats(coords.shape[0], 3, dtype=torch.float32)
    x = SparseTensor(feats, coords)
    fn = max_pool3d if mode == "max" else avg_pool3d
    y = fn(x, ks, cs, dil, impl=impl)
    t3 = lambda v: (v,) * 3 if isinstance(v, int) else tuple(v)  # noqa: E731
    assert y.stride == tuple(s for s in t3(cs))
    assert_matches(y, brute_pool(coords, feats, (1, 1, 1), t3(ks), t3(cs), t3(dil), mode))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("mode", ["max", "avg"])
def test_local_pool_on_strided_tensor(impl, mode):
    """Input at tensor stride (2, 2, 1): offsets scale with the stride, output stride (4, 4, 2)."""
    c = random_coords(300, extent=6, batch=2, seed=2, low=-3)
    c[:, 1:3] *= 2
    c = torch.unique(c, dim=0)
    feats = distinct_feats(c.shape[0], 2, seed=3)
    x = SparseTensor(feats, c, stride=(2, 2, 1))
    fn = max_pool3d if mode == "max" else avg_pool3d
    y = fn(x, 3, 2, impl=impl)
    assert y.stride == (4, 4, 2)
    assert_matches(y, brute_pool(c, feats, (2, 2, 1), (3, 3, 3), (2, 2, 2), (1, 1, 1), mode))


def _full_grid(n=6, low=-4, C=3, B=2, seed=0):
    r = torch.arange(low, low + n)
    g = torch.stack(torch.meshgrid(torch.arange(B), r, r, r, indexing="ij"), -1).view(-1, 4).to(torch.int32)
    return SparseTensor(distinct_feats(g.shape[0], C, seed), g)


DENSE_CASES = [  # kernel, stride, dilation, padding for the dense op
    (3, 1, 1, 1), (2, 2, 1, 0), (3, 2, 1, 1), ((1, 1, 2), (1, 1, 2), 1, 0), (3, 1, 2, 2), ((3, 1, 1), 1, 1, (1, 0, 0)),
]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("ks,cs,dil,pad", DENSE_CASES)
def test_pool_matches_dense_on_full_grid(impl, ks, cs, dil, pad):
    x = _full_grid()
    dense_in = x.dense()
    mn = (-4, -4, -4)
    ymax = max_pool3d(x, ks, cs, dil, impl=impl)
    p3 = (pad,) * 3 if isinstance(pad, int) else pad
    padded = TF.pad(dense_in, (p3[2], p3[2], p3[1], p3[1], p3[0], p3[0]), value=-math.inf)
    ref = TF.max_pool3d(padded, ks, cs, 0, dil)  # torch caps padding at kernel/2: pad by hand
    torch.testing.assert_close(ymax.dense(ref.shape[2:], mn), ref)
    if dil == 1:
        yavg = avg_pool3d(x, ks, cs, dil, impl=impl)
        ref = TF.avg_pool3d(dense_in, ks, cs, pad, count_include_pad=False)
        torch.testing.assert_close(yavg.dense(ref.shape[2:], mn), ref)


@pytest.mark.parametrize("impl", IMPLS)
def test_max_pool_even_kernel_stride1_dense(impl):
    """Even kernel, stride 1: offsets 0..K-1, i.e. a dense pool padded at the far end only."""
    x = _full_grid(n=5, low=0, C=2, B=1)
    y = max_pool3d(x, 2, 1, impl=impl)
    d = TF.pad(x.dense(), (0, 1, 0, 1, 0, 1), value=-math.inf)
    torch.testing.assert_close(y.dense(), TF.max_pool3d(d, 2, 1))


@pytest.mark.parametrize("mode", ["max", "avg"])
@pytest.mark.parametrize("ks,cs,dil", [(3, 1, 1), (2, 2, 1), (3, 2, 2), ((1, 1, 2), (1, 1, 2), 1), (1, 2, 1)])
@pytest.mark.parametrize("impl", IMPLS)
def test_local_pool_gradcheck(impl, mode, ks, cs, dil):
    coords = random_coords(30, extent=4, batch=2, seed=5, low=-2)
    feats = distinct_feats(coords.shape[0], 2, seed=6).requires_grad_()
    x = SparseTensor(feats.detach(), coords)
    km, _, _ = get_kernel_map(x, *(tuple((v,) * 3 if isinstance(v, int) else v) for v in (ks, cs, dil)))
    fn = sparse_max_pool if mode == "max" else sparse_avg_pool
    assert torch.autograd.gradcheck(lambda f: fn(f, km, impl), (feats,), eps=1e-6, atol=1e-6, fast_mode=True)


@pytest.mark.parametrize("impl", IMPLS)
def test_max_pool_gradient_goes_to_argmax(impl):
    coords = random_coords(80, extent=5, batch=1, seed=7)
    feats = distinct_feats(coords.shape[0], 4, seed=8).requires_grad_()
    x = SparseTensor(feats, coords)
    y = max_pool3d(x, 3, 2, impl=impl)
    g = torch.randn_like(y.feats)
    y.feats.backward(g)
    # brute force: each output channel routes its gradient to the input that holds the max value
    expected = torch.zeros_like(feats)
    for j in range(y.feats.shape[0]):
        for c in range(y.feats.shape[1]):
            i = int((feats[:, c] == y.feats[j, c]).nonzero()[0])
            expected[i, c] += g[j, c]
    torch.testing.assert_close(feats.grad, expected)


@pytest.mark.parametrize("impl", IMPLS)
def test_max_pool_ties_route_gradient_once(impl):
    """With all values equal every output's gradient goes to exactly one input."""
    coords = random_coords(60, extent=4, batch=2, seed=9)
    feats = torch.ones(coords.shape[0], 3, dtype=torch.float64, requires_grad=True)
    y = max_pool3d(SparseTensor(feats, coords), 3, impl=impl)
    y.feats.sum().backward()
    torch.testing.assert_close(y.feats, torch.ones_like(y.feats))
    assert float(feats.grad.sum()) == y.feats.numel()
    assert ((feats.grad == feats.grad.round()) & (feats.grad >= 0)).all()


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(0, 120), extent=st.integers(1, 7),
       ks=st.sampled_from([1, 2, 3, (1, 1, 2), (3, 2, 1)]), cs=st.sampled_from([1, 2, 3, (1, 1, 2)]),
       mode=st.sampled_from(["max", "avg"]))
def test_numba_matches_torch_impl(seed, n, extent, ks, cs, mode):
    coords = random_coords(n, extent=extent, batch=3, seed=seed, low=-extent // 2)
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(coords.shape[0], 5, generator=g, dtype=torch.float64)
    outs, grads = [], []
    for impl in IMPLS:
        f = feats.clone().requires_grad_()
        fn = max_pool3d if mode == "max" else avg_pool3d
        y = fn(SparseTensor(f, coords), ks, cs, impl=impl)
        y.feats.backward(torch.ones_like(y.feats) + y.coords[:, 1:2].double())
        outs.append((y.coords, y.feats.detach()))
        grads.append(f.grad)
    assert torch.equal(outs[0][0], outs[1][0])
    torch.testing.assert_close(outs[0][1], outs[1][1])
    torch.testing.assert_close(grads[0], grads[1])


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("Pool", [MaxPool3d, AvgPool3d])
@pytest.mark.parametrize("cs", [1, 2])
def test_local_pool_empty_and_single_point(impl, Pool, cs):
    fn = max_pool3d if Pool is MaxPool3d else avg_pool3d
    f0 = torch.zeros(0, 4, requires_grad=True)
    y0 = fn(SparseTensor(f0, torch.zeros(0, 4, dtype=torch.int32)), 3, cs, impl=impl)
    assert y0.feats.shape == (0, 4) and y0.coords.shape == (0, 4)
    y0.feats.sum().backward()
    assert f0.grad.shape == (0, 4)
    f1 = torch.tensor([[1.0, -2.0, 3.0, 0.5]], requires_grad=True)
    y1 = fn(SparseTensor(f1, torch.tensor([[1, -3, 5, 7]], dtype=torch.int32)), 3, cs, impl=impl)
    torch.testing.assert_close(y1.feats, f1.detach())
    assert y1.coords.tolist() == ([[1, -3, 5, 7]] if cs == 1 else [[1, -4, 4, 6]])
    y1.feats.sum().backward()
    torch.testing.assert_close(f1.grad, torch.ones_like(f1))
    assert isinstance(Pool(3, cs)(SparseTensor(f1.detach(), torch.tensor([[0, 0, 0, 0]]))), SparseTensor)


@pytest.mark.parametrize("mode", ["max", "avg"])
def test_batch_samples_do_not_mix(mode):
    c0 = random_coords(100, extent=5, batch=1, seed=10)
    feats0 = torch.randn(c0.shape[0], 3)
    feats1 = torch.randn(c0.shape[0], 3) * 100  # same xyz in sample 1, very different values
    c1 = c0.clone()
    c1[:, 0] = 1
    fn = max_pool3d if mode == "max" else avg_pool3d
    both = fn(SparseTensor(torch.cat([feats0, feats1]), torch.cat([c0, c1])), 3, 2)
    alone = fn(SparseTensor(feats0, c0), 3, 2)
    sel = both.coords[:, 0] == 0
    exp = {tuple(c): f for c, f in zip(alone.coords.tolist(), alone.feats)}
    got = {tuple(c): f for c, f in zip(both.coords[sel].tolist(), both.feats[sel])}
    assert exp.keys() == got.keys()
    for k in exp:
        torch.testing.assert_close(got[k], exp[k])


def test_output_without_neighbours_is_zero():
    """Kernel 1 with stride 2 only sees the cell corner; a cell whose corner is empty outputs 0."""
    c = torch.tensor([[0, 1, 1, 1], [0, 2, 2, 2]], dtype=torch.int32)
    f = torch.tensor([[5.0], [7.0]], requires_grad=True)
    for fn in (max_pool3d, avg_pool3d):
        y = fn(SparseTensor(f, c), 1, 2)
        got = {tuple(k): float(v) for k, v in zip(y.coords.tolist(), y.feats[:, 0].detach())}
        assert got == {(0, 0, 0, 0): 0.0, (0, 2, 2, 2): 7.0}
        (grad,) = torch.autograd.grad(y.feats.sum(), f)
        assert grad[:, 0].tolist() == [0.0, 1.0]


def test_pool_shares_kernel_map_with_conv():
    coords = random_coords(150, extent=8, batch=2, seed=11)
    x = SparseTensor(torch.randn(coords.shape[0], 4), coords)
    y = MaxPool3d(2, 2)(x)
    key = ((1, 1, 1), (2, 2, 2), (2, 2, 2), (1, 1, 1))
    km = x._caches.kmaps[key]
    z = Conv3d(4, 4, 2, 2)(x)
    assert x._caches.kmaps[key] is km and len(x._caches.kmaps) == 1
    assert torch.equal(y.coords, z.coords) and y.stride == z.stride == (2, 2, 2)
    AvgPool3d(2, 2)(x)
    assert len(x._caches.kmaps) == 1


def test_max_pool_real_scan(kitti_coords):
    """Numba and torch max pooling agree on the real scan (94k voxels, strided)."""
    g = torch.Generator().manual_seed(0)
    x = SparseTensor(torch.randn(kitti_coords.shape[0], 4, generator=g), kitti_coords)
    a = max_pool3d(x, 2, 2, impl="numba")
    b = max_pool3d(x, 2, 2, impl="torch")
    assert torch.equal(a.feats, b.feats)
    assert a.coords.shape[0] < kitti_coords.shape[0]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("fn", [max_pool3d, avg_pool3d])
def test_pool_low_precision_uses_torch_path(fn, dtype):
    coords = random_coords(50, extent=4, batch=1, seed=12)
    f = torch.randn(coords.shape[0], 3)
    y16 = fn(SparseTensor(f.to(dtype), coords), 3, 2)
    y32 = fn(SparseTensor(f, coords), 3, 2)
    assert y16.feats.dtype == dtype
    torch.testing.assert_close(y16.feats.float(), y32.feats, atol=5e-2, rtol=5e-2)


@pytest.mark.parametrize("fn", [max_pool3d, avg_pool3d])
def test_pool_device_default_impl(device, fn):
    """Default implementation on every available device (torch path on CUDA) vs brute force."""
    coords = random_coords(120, extent=6, batch=2, seed=24, low=-3)
    feats = distinct_feats(coords.shape[0], 3, seed=25)
    y = fn(SparseTensor(feats.to(device), coords.to(device)), 3, 2)
    assert y.feats.device.type == device.type
    mode = "max" if fn is max_pool3d else "avg"
    assert_matches(y.cpu(), brute_pool(coords, feats, (1, 1, 1), (3, 3, 3), (2, 2, 2), (1, 1, 1), mode))


@pytest.mark.parametrize("impl", IMPLS)
def test_pool_non_contiguous_feats(impl):
    coords = random_coords(80, extent=5, batch=2, seed=26)
    wide = torch.randn(coords.shape[0], 8)
    f = wide[:, ::2]
    assert not f.is_contiguous()
    for fn in (max_pool3d, avg_pool3d):
        a = fn(SparseTensor(f, coords), 3, impl=impl)
        b = fn(SparseTensor(f.contiguous(), coords), 3, impl=impl)
        torch.testing.assert_close(a.feats, b.feats)


# ----------------------------------------------------------------------------- global pooling
def test_global_pool_matches_loop(device):
    coords = random_coords(200, extent=6, batch=3, seed=13, low=-3)
    feats = torch.randn(coords.shape[0], 5, dtype=torch.float64)
    x = SparseTensor(feats.to(device), coords.to(device))
    gmax, gavg = GlobalMaxPool()(x).cpu(), GlobalAvgPool()(x).cpu()
    assert gmax.shape == gavg.shape == (3, 5)
    for b in range(3):
        sel = coords[:, 0] == b
        torch.testing.assert_close(gmax[b], feats[sel].max(0).values)
        torch.testing.assert_close(gavg[b], feats[sel].mean(0))


def test_global_pool_empty_sample_and_batch_size():
    c = torch.tensor([[0, 0, 0, 0], [2, 1, 1, 1]], dtype=torch.int32)
    f = torch.tensor([[1.0, -1.0], [-3.0, 4.0]])
    x = SparseTensor(f, c)
    assert global_max_pool(x).tolist() == [[1.0, -1.0], [0.0, 0.0], [-3.0, 4.0]]
    assert global_avg_pool(x, batch_size=4).tolist() == [[1.0, -1.0], [0.0, 0.0], [-3.0, 4.0], [0.0, 0.0]]
    e = SparseTensor(torch.zeros(0, 2), torch.zeros(0, 4, dtype=torch.int32))
    assert global_max_pool(e).shape == (0, 2) and global_avg_pool(e, batch_size=2).tolist() == [[0, 0], [0, 0]]
    with pytest.raises(ValueError, match="batch_size"):
        global_avg_pool(x, batch_size=2)


def test_global_pool_gradcheck():
    coords = random_coords(30, extent=4, batch=2, seed=14)
    f = distinct_feats(coords.shape[0], 3, seed=15).requires_grad_()
    for fn in (global_avg_pool, global_max_pool):
        assert torch.autograd.gradcheck(lambda t: fn(SparseTensor(t, coords)), (f,), eps=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------- GroupNorm / InstanceNorm
def _per_sample(x: SparseTensor, fn):
    out = torch.empty_like(x.feats)
    for b in x.coords[:, 0].unique().tolist():
        sel = x.coords[:, 0] == b
        out[sel] = fn(x.feats[sel].t().unsqueeze(0))[0].t()
    return out


@pytest.mark.parametrize("G,C", [(1, 6), (2, 6), (3, 6), (6, 6)])
def test_group_norm_matches_torch_per_sample(G, C, device):
    coords = random_coords(300, extent=7, batch=3, seed=16, low=-3).to(device)
    g = torch.Generator().manual_seed(G)
    feats = (torch.randn(coords.shape[0], C, generator=g, dtype=torch.float64) * 3 + 2).to(device)
    x = SparseTensor(feats, coords)
    m = GroupNorm(G, C).double().to(device)
    with torch.no_grad():
        m.weight.normal_()
        m.bias.normal_()
    y = m(x)
    assert y.coords is x.coords and y._caches is x._caches
    torch.testing.assert_close(y.feats, _per_sample(x, lambda t: TF.group_norm(t, G, m.weight, m.bias, m.eps)))


def test_instance_norm_matches_torch_per_sample():
    coords = random_coords(200, extent=6, batch=2, seed=17)
    feats = torch.randn(coords.shape[0], 4, dtype=torch.float64) * 5
    x = SparseTensor(feats, coords)
    y = InstanceNorm(4)(x)
    torch.testing.assert_close(y.feats, _per_sample(x, lambda t: TF.instance_norm(t)))
    w, b = torch.randn(4, dtype=torch.float64), torch.randn(4, dtype=torch.float64)
    torch.testing.assert_close(instance_norm(x, w, b).feats,
                               _per_sample(x, lambda t: TF.instance_norm(t, weight=w, bias=b)))


def test_group_norm_samples_independent():
    coords = random_coords(150, extent=5, batch=2, seed=18)
    feats = torch.randn(coords.shape[0], 4)
    y0 = group_norm(SparseTensor(feats, coords), 2).feats
    f2 = feats.clone()
    f2[coords[:, 0] == 1] = f2[coords[:, 0] == 1] * 50 + 9
    y1 = group_norm(SparseTensor(f2, coords), 2).feats
    sel = coords[:, 0] == 0
    torch.testing.assert_close(y0[sel], y1[sel])
    torch.testing.assert_close(y0[~sel], y1[~sel], atol=1e-4, rtol=1e-4)  # affine-invariant


@pytest.mark.filterwarnings("ignore:Anomaly Detection")
def test_group_norm_gradcheck():
    coords = random_coords(20, extent=4, batch=2, seed=19)
    coords[:, 0] *= 2  # samples 0 and 2; sample 1 is empty
    f = torch.randn(coords.shape[0], 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda f_, w_, b_: group_norm(SparseTensor(f_, coords), 2, w_, b_).feats,
                                    (f, w, b))
    with torch.autograd.detect_anomaly():
        group_norm(SparseTensor(f, coords), 4, w, b).feats.square().sum().backward()
    assert torch.isfinite(f.grad).all() and torch.isfinite(w.grad).all()


def test_group_norm_empty_single_point_and_half():
    e = SparseTensor(torch.zeros(0, 4, requires_grad=True), torch.zeros(0, 4, dtype=torch.int32))
    assert GroupNorm(2, 4)(e).feats.shape == (0, 4)
    one = SparseTensor(torch.tensor([[1.0, 3.0, -2.0, 5.0]]), torch.tensor([[0, -7, 2, 9]]))
    torch.testing.assert_close(group_norm(one, 2).feats, TF.group_norm(one.feats.t()[None], 2)[0].t())
    torch.testing.assert_close(instance_norm(one).feats, torch.zeros(1, 4))
    coords = random_coords(100, extent=5, batch=2, seed=20)
    f = torch.randn(coords.shape[0], 8) * 4 + 100
    y16 = group_norm(SparseTensor(f.half(), coords), 4).feats
    assert y16.dtype == torch.float16
    torch.testing.assert_close(y16.float(), group_norm(SparseTensor(f, coords), 4).feats, atol=5e-2, rtol=1e-2)


# ----------------------------------------------------------------------------- dense / BEV
def test_to_dense_and_bev_layout():
    c = torch.tensor([[0, -2, 0, 1], [1, 0, 1, 0], [0, 2, 1, 0]], dtype=torch.int32)
    f = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    x = SparseTensor(f, c)
    d = ToDense((5, 2, 2), (-2, 0, 0))(x)
    assert d.shape == (2, 2, 5, 2, 2)
    bev = ToBEV((5, 2, 2), (-2, 0, 0))(x)
    assert bev.shape == (2, 4, 5, 2)  # [B, C*D, X, Y]
    expected = torch.zeros(2, 4, 5, 2)
    for (b, xx, yy, zz), feat in zip(c.tolist(), f):
        for ch in range(2):
            expected[b, ch * 2 + zz, xx + 2, yy] = feat[ch]  # channel c*D + z
            assert d[b, ch, xx + 2, yy, zz] == feat[ch]
    torch.testing.assert_close(bev, expected)
    assert d.sum() == f.sum()


def test_height_collapse_strided_and_default_extent():
    c = random_coords(80, extent=4, batch=2, seed=21, low=-2) * torch.tensor([1, 2, 2, 4], dtype=torch.int32)
    x = SparseTensor(torch.randn(c.shape[0], 3), c, stride=(2, 2, 4))
    d = to_dense(x)
    B, C, X, Y, Z = d.shape
    assert (X, Y, Z) == (4, 4, 4) and B == 2
    bev = height_collapse(x)
    assert bev.shape == (B, C * Z, X, Y)
    torch.testing.assert_close(bev.view(B, C, Z, X, Y), d.permute(0, 1, 4, 2, 3))


def test_dense_gradcheck():
    c = random_coords(15, extent=3, batch=2, seed=22, low=-1)
    f = torch.randn(c.shape[0], 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: height_collapse(SparseTensor(t, c), (3, 3, 3), (-1, -1, -1)), (f,))
    assert torch.autograd.gradcheck(lambda t: to_dense(SparseTensor(t, c)), (f,))


def test_dense_empty_and_out_of_range():
    e = SparseTensor(torch.zeros(0, 2), torch.zeros(0, 4, dtype=torch.int32))
    assert height_collapse(e, (3, 4, 2), batch_size=2).shape == (2, 4, 3, 4)
    x = SparseTensor(torch.ones(1, 2), torch.tensor([[0, 5, 0, 0]]))
    with pytest.raises(ValueError, match="spatial_shape"):
        to_dense(x, (3, 3, 3), (0, 0, 0))
    with pytest.raises(ValueError, match="min_coord"):
        to_dense(x, None, (6, 0, 0))
    with pytest.raises(ValueError, match="spatial_shape"):
        ToBEV((3, 3))(x)


# ----------------------------------------------------------------------------- bad input
def test_bad_inputs_raise_clear_errors():
    coords = random_coords(20, extent=4, batch=1, seed=23)
    x = SparseTensor(torch.randn(coords.shape[0], 6), coords)
    with pytest.raises(TypeError, match="SparseTensor"):
        max_pool3d(x.feats, 3)
    with pytest.raises(TypeError, match="SparseTensor"):
        AvgPool3d(3)(x.feats)
    with pytest.raises(TypeError, match="SparseTensor"):
        global_max_pool(x.feats)
    with pytest.raises(TypeError, match="SparseTensor"):
        to_dense(x.feats)
    with pytest.raises(TypeError, match="SparseTensor"):
        GroupNorm(2, 6)(x.feats)
    with pytest.raises(ValueError, match="channels"):
        GroupNorm(2, 8)(x)
    with pytest.raises(ValueError, match="channels"):
        InstanceNorm(4)(x)
    with pytest.raises(ValueError, match="num_groups"):
        group_norm(x, 4)
    with pytest.raises(ValueError, match="weight"):
        group_norm(x, 2, weight=torch.ones(4))
    with pytest.raises(ValueError, match="kernel_size"):
        MaxPool3d(0)
    with pytest.raises(ValueError, match="stride"):
        MaxPool3d(3, (1, 2))
    with pytest.raises(ValueError, match="track_running_stats"):
        InstanceNorm(6, track_running_stats=True)
    km, _, _ = get_kernel_map(x, (3, 3, 3), (1, 1, 1), (1, 1, 1))
    with pytest.raises(ValueError, match="rows"):
        sparse_max_pool(torch.randn(3, 6), km)
    with pytest.raises(ValueError, match="impl"):
        sparse_avg_pool(x.feats, km, impl="cuda")
    with pytest.raises(ValueError, match="numba"):
        sparse_max_pool(x.feats.half(), km, impl="numba")
