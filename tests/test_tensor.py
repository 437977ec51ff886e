"""SparseTensor / PointTensor / sparse_quantize / collate: semantics and bad input."""
import numpy as np
import pytest
import torch

import sparse3d
from sparse3d import PointTensor, SparseTensor, sparse_collate, sparse_collate_fn, sparse_quantize


def _coords(rows):
    return torch.tensor(rows, dtype=torch.int32)


def test_construct_and_aliases():
    c = _coords([[0, 0, 0, 0], [0, 1, 2, 3], [1, -4, 5, 6]])
    x = SparseTensor(torch.randn(3, 5), c)
    assert x.F is x.feats and x.C is x.coords and x.s == (1, 1, 1)
    assert x.batch_size == 2 and len(x) == 3
    assert x._caches.cmaps[(1, 1, 1)] is x.coords


def test_int64_coords_are_converted():
    x = SparseTensor(torch.randn(2, 1), torch.tensor([[0, 1, 2, 3], [0, 4, 5, 6]]))
    assert x.coords.dtype == torch.int32


@pytest.mark.parametrize("bad,exc,msg", [
    (dict(feats=torch.randn(3, 2), coords=torch.zeros(3, 4)), TypeError, "integer"),
    (dict(feats=torch.randn(3, 2), coords=torch.zeros(3, 3, dtype=torch.int32)), ValueError, r"\[N, 4\]"),
    (dict(feats=torch.randn(3), coords=torch.zeros(3, 4, dtype=torch.int32)), ValueError, r"\[N, C\]"),
    (dict(feats=torch.ones(3, 2, dtype=torch.int64), coords=torch.zeros(3, 4, dtype=torch.int32)), TypeError,
     "floating"),
    (dict(feats=torch.randn(2, 2), coords=torch.zeros(3, 4, dtype=torch.int32)), ValueError, "length mismatch"),
    (dict(feats=[[1.0]], coords=torch.zeros(1, 4, dtype=torch.int32)), TypeError, "feats"),
    (dict(feats=torch.randn(1, 2), coords=torch.tensor([[-1, 0, 0, 0]], dtype=torch.int32)), ValueError, "batch"),
    (dict(feats=torch.randn(1, 2), coords=torch.tensor([[0, 2**40, 0, 0]])), ValueError, "int32"),
])
def test_bad_input(bad, exc, msg):
    with pytest.raises(exc, match=msg):
        SparseTensor(**bad)


def test_coords_must_be_multiples_of_stride():
    with pytest.raises(ValueError, match="multiples of the tensor stride"):
        SparseTensor(torch.randn(2, 1), _coords([[0, 0, 0, 0], [0, 2, 3, 0]]), stride=2)
    SparseTensor(torch.randn(2, 1), _coords([[0, 0, 0, 0], [0, 2, -4, 4]]), stride=2)
    SparseTensor(torch.randn(1, 1), _coords([[0, 1, 1, 2]]), stride=(1, 1, 2))


def test_dense_layout():
    c = _coords([[0, 2, 4, 6], [1, 0, 0, 0], [1, 2, 0, 2]])
    f = torch.arange(6, dtype=torch.float32).view(3, 2)
    x = SparseTensor(f, c, stride=2)
    d = x.dense()
    assert d.shape == (2, 2, 2, 3, 4)
    assert torch.equal(d[0, :, 1, 2, 3], f[0]) and torch.equal(d[1, :, 0, 0, 0], f[1])
    assert torch.equal(d[1, :, 1, 0, 1], f[2])
    assert d.sum() == f.sum()
    with pytest.raises(ValueError, match="outside spatial_shape"):
        x.dense(spatial_shape=(1, 1, 1))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_to_dtype_keeps_cache(dtype):
    x = SparseTensor(torch.randn(4, 3), _coords([[0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]))
    y = x.to(dtype)
    assert y.dtype == dtype and y._caches is x._caches and y.coords is x.coords
    assert {x.half().dtype, x.bfloat16().dtype, x.double().float().dtype} == {torch.float16, torch.bfloat16,
                                                                                 torch.float32}


def test_sparse_quantize_matches_numpy():
    rng = np.random.default_rng(0)
    pts = rng.normal(size=(1000, 3)).astype(np.float32) * 3
    c, idx, inv = sparse_quantize(pts, 0.5, return_index=True, return_inverse=True)
    ref = np.floor(pts / 0.5).astype(np.int32)
    assert c.dtype == np.int32 and len(np.unique(c, axis=0)) == len(c)
    assert np.array_equal(c[inv], ref) and np.array_equal(c, ref[idx])
    ct = sparse_quantize(torch.from_numpy(pts), [0.5, 0.5, 0.5])
    assert isinstance(ct, torch.Tensor) and np.array_equal(ct.numpy(), c)


def test_sparse_quantize_real_scan(kitti_points):
    c = sparse_quantize(kitti_points[:, :3], 0.05)
    assert c.shape == (94444, 3)


@pytest.mark.parametrize("pts,exc,msg", [
    (np.array([[0.0, np.nan, 1.0]]), ValueError, "NaN or inf"),
    (np.array([[0.0, np.inf, 1.0]]), ValueError, "NaN or inf"),
    (np.zeros(3), ValueError, "2-D"),
    (np.array([["a", "b", "c"]]), TypeError, "numeric"),
])
def test_sparse_quantize_bad_input(pts, exc, msg):
    with pytest.raises(exc, match=msg):
        sparse_quantize(pts, 0.1)
    with pytest.raises(ValueError, match="voxel_size"):
        sparse_quantize(np.zeros((2, 3)), -1.0)


def test_sparse_quantize_empty():
    c, inv = sparse_quantize(np.zeros((0, 3), np.float32), 0.1, return_inverse=True)
    assert c.shape == (0, 3) and inv.shape == (0,)


def test_collate():
    a = SparseTensor(torch.ones(2, 1), _coords([[0, 0, 0, 0], [0, 1, 0, 0]]))
    b = SparseTensor(2 * torch.ones(1, 1), _coords([[0, 5, 5, 5]]))
    x = sparse_collate([a, b])
    assert x.coords[:, 0].tolist() == [0, 0, 1] and x.feats[:, 0].tolist() == [1, 1, 2]
    batch = sparse_collate_fn([
        {"lidar": a, "targets": torch.tensor([1, 2]), "lidar_inverse": torch.tensor([0, 1, 1]), "name": "a"},
        {"lidar": b, "targets": torch.tensor([3]), "lidar_inverse": torch.tensor([0, 0]), "name": "b"},
    ])
    assert batch["lidar"].coords.shape == (3, 4)
    assert batch["targets"].tolist() == [1, 2, 3]
    assert batch["lidar_inverse"].tolist() == [0, 1, 1, 2, 2]
    assert batch["name"] == ["a", "b"]


def test_point_tensor_bad_input():
    with pytest.raises(ValueError, match="NaN or inf"):
        PointTensor(torch.randn(1, 2), torch.tensor([[0.0, float("nan"), 0.0, 0.0]]))
    with pytest.raises(ValueError, match="mismatch"):
        PointTensor(torch.randn(2, 2), torch.zeros(3, 4))


def test_version_and_exports():
    assert sparse3d.__version__
    assert callable(sparse3d.set_deterministic)


@pytest.mark.parametrize("lo,hi,d", [(-50, 50, 3), (0, 3, 4), (-(2**31), 2**31 - 1, 4), (-(2**31), 2**31 - 1, 3)])
def test_unique_rows_packed_key_matches_numpy_axis0(lo, hi, d):
    """The packed-int64-key dedup (and its axis=0 fallback for spans over 63 bits) equals
    ``np.unique(axis=0)``: same sorted rows, first-occurrence index, inverse."""
    from sparse3d.utils.quantize import _unique_rows
    rng = np.random.default_rng(d + lo % 7)
    g = rng.integers(lo, hi, (3000, d), endpoint=True).astype(np.int32)
    g = np.concatenate([g, g[::3]])  # duplicates
    c, idx, inv = np.unique(g, axis=0, return_index=True, return_inverse=True)
    c2, idx2, inv2 = _unique_rows(g)
    assert np.array_equal(c, c2) and np.array_equal(idx, idx2) and np.array_equal(inv.reshape(-1), inv2)
    one = _unique_rows(g[:1])
    assert one[0].shape == (1, d) and one[1].tolist() == [0] and one[2].tolist() == [0]


def test_sparse_quantize_property_hypothesis():
    """Property: for any finite float cloud and voxel size, coords == np.unique(floor(p / v), axis=0),
    coords[inverse] == floor(p / v) and coords == floor(p[index] / v)."""
    from hypothesis import given, settings, strategies as st
    from hypothesis.extra.numpy import arrays

    @settings(max_examples=60, deadline=None)
    @given(arrays(np.float32, st.tuples(st.integers(0, 40), st.just(3)),
                  elements=st.floats(-1e5, 1e5, width=32)),
           st.sampled_from([0.05, 0.2, 1.0, 7.5]))
    def check(p, v):
        c, idx, inv = sparse_quantize(p, v, return_index=True, return_inverse=True)
        g = np.floor(p.astype(np.float64) / v).astype(np.int32)
        assert np.array_equal(c, np.unique(g, axis=0).reshape(-1, 3))
        assert np.array_equal(c[inv], g) and np.array_equal(c, g[idx])

    check()
