"""Kernel maps: every backend against a brute-force neighbour search."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import random_coords
from sparse3d import SparseTensor
from sparse3d.nn.functional.kmap import build_kernel_map, get_kernel_map, get_transposed_kernel_map, output_coords
from sparse3d.ops.kmap import kernel_offsets

BACKENDS = ["merge", "hash", "torch"]


def brute_nbmap(in_coords, out_coords, offsets):
    """Dict-based reference: nb[j, k] = row of out[j] + off[k] in `in_coords`, else -1."""
    table = {tuple(r): i for i, r in enumerate(in_coords.tolist())}
    nb = np.full((len(out_coords), len(offsets)), -1, np.int32)
    for j, (b, x, y, z) in enumerate(out_coords.tolist()):
        for k, (dx, dy, dz) in enumerate(offsets.tolist()):
            nb[j, k] = table.get((b, x + dx, y + dy, z + dz), -1)
    return nb


def brute_downsample(coords, stride):
    c = coords.numpy().astype(np.int64)
    s = np.array([1, *stride])
    out = np.floor_divide(c, s) * s
    return np.unique(out, axis=0)


def test_offset_order_x_fastest():
    off = kernel_offsets((3, 3, 3), (1, 1, 1), (1, 1, 1))
    assert off[0].tolist() == [-1, -1, -1] and off[1].tolist() == [0, -1, -1] and off[3].tolist() == [-1, 0, -1]
    assert off[9].tolist() == [-1, -1, 0] and off[13].tolist() == [0, 0, 0]
    even = kernel_offsets((2, 2, 2), (1, 1, 1), (2, 2, 2))
    assert even[:3].tolist() == [[0, 0, 0], [2, 0, 0], [0, 2, 0]]
    asym = kernel_offsets((1, 1, 3), (1, 1, 2), (1, 1, 1))
    assert asym.tolist() == [[0, 0, -2], [0, 0, 0], [0, 0, 2]]


coord_sets = st.builds(
    lambda n, extent, batch, seed, low: random_coords(n, extent, batch, seed, low),
    st.integers(1, 120), st.integers(1, 9), st.integers(1, 3), st.integers(0, 10_000), st.integers(-20, 5))


@settings(max_examples=40, deadline=None)
@given(coords=coord_sets, ks=st.tuples(*[st.integers(1, 5)] * 3), dil=st.integers(1, 2))
def test_submanifold_map_matches_bruteforce(coords, ks, dil):
    off = kernel_offsets(ks, (dil,) * 3, (1, 1, 1))
    ref = brute_nbmap(coords, coords, off)
    sym = all(k % 2 for k in ks)
    for be in BACKENDS:
        km = build_kernel_map(coords, coords, off, (1, 1, 1), symmetric=sym, backend=be)
        assert np.array_equal(km.nbmap.numpy(), ref), be
        # pair lists agree with the map and are grouped by offset
        for k in range(len(off)):
            i, o = km.pairs(k)
            assert np.array_equal(ref[o.numpy(), k], i.numpy())
            assert (ref[:, k] >= 0).sum() == len(o)


@settings(max_examples=30, deadline=None)
@given(coords=coord_sets, ks=st.tuples(*[st.integers(1, 3)] * 3), s=st.tuples(*[st.integers(1, 3)] * 3),
       t=st.sampled_from([1, 2]))
def test_strided_map_matches_bruteforce(coords, ks, s, t):
    if s == (1, 1, 1):
        s = (2, 2, 2)
    coords = coords.clone()
    coords[:, 1:] *= t
    coords = torch.unique(coords, dim=0)
    ref_out = brute_downsample(coords, [a * t for a in s])
    for be in BACKENDS:
        x = SparseTensor(torch.zeros(len(coords), 1), coords, stride=t)
        km, out, out_stride = get_kernel_map(x, ks, s, (1, 1, 1), backend=be)
        assert out_stride == tuple(a * t for a in s)
        assert np.array_equal(out.numpy(), ref_out), be
        off = kernel_offsets(ks, (1, 1, 1), (t, t, t))
        assert np.array_equal(km.nbmap.numpy(), brute_nbmap(coords, out, off)), be
        # the transposed map is the same pairs swapped
        kt, fine, fs = get_transposed_kernel_map(SparseTensor(torch.zeros(len(out), 1), out, out_stride,
                                                              cache=x._caches), ks, s, (1, 1, 1), backend=be)
        assert fs == x.stride and fine is x.coords
        for k in range(len(off)):
            i, o = km.pairs(k)
            it, ot = kt.pairs(k)
            assert sorted(zip(i.tolist(), o.tolist())) == sorted(zip(ot.tolist(), it.tolist()))


def test_single_point_and_empty():
    one = torch.tensor([[0, 5, -3, 2]], dtype=torch.int32)
    off = kernel_offsets((3, 3, 3), (1, 1, 1), (1, 1, 1))
    empty = torch.zeros((0, 4), dtype=torch.int32)
    for be in BACKENDS:
        km = build_kernel_map(one, one, off, (1, 1, 1), True, be)
        assert km.nbmap[0].tolist() == [-1] * 13 + [0] + [-1] * 13 and km.num_pairs == 1
        km = build_kernel_map(empty, empty, off, (1, 1, 1), True, be)
        assert km.nbmap.shape == (0, 27) and km.num_pairs == 0
        x = SparseTensor(torch.zeros(0, 2), empty)
        km, out, _ = get_kernel_map(x, (2, 2, 2), (2, 2, 2), (1, 1, 1), backend=be)
        assert out.shape == (0, 4) and km.n_out == 0


def test_batch_boundaries_do_not_mix():
    c = torch.tensor([[0, 0, 0, 0], [1, 0, 0, 1], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=torch.int32)
    off = kernel_offsets((3, 3, 3), (1, 1, 1), (1, 1, 1))
    for be in BACKENDS:
        km = build_kernel_map(c, c, off, (1, 1, 1), True, be)
        assert np.array_equal(km.nbmap.numpy(), brute_nbmap(c, c, off))
        assert km.num_pairs == 4 + 4


@pytest.mark.parametrize("be", BACKENDS)
def test_duplicates_raise(be):
    c = torch.tensor([[0, 1, 2, 3], [0, 0, 0, 0], [0, 1, 2, 3]], dtype=torch.int32)
    off = kernel_offsets((3, 3, 3), (1, 1, 1), (1, 1, 1))
    with pytest.raises(ValueError, match="duplicate coordinates"):
        build_kernel_map(c, c, off, (1, 1, 1), True, be)


@pytest.mark.parametrize("be", BACKENDS)
def test_large_coordinates(be):
    big = 2**30
    c = torch.tensor([[0, -big, 0, big - 1], [0, -big + 1, 0, big - 1], [3, big - 1, -big, 7]], dtype=torch.int32)
    off = kernel_offsets((3, 3, 3), (1, 1, 1), (1, 1, 1))
    km = build_kernel_map(c[:2], c[:2], off, (1, 1, 1), True, be)
    assert np.array_equal(km.nbmap.numpy(), brute_nbmap(c[:2], c[:2], off))
    with pytest.raises(ValueError, match="too large to pack"):
        build_kernel_map(c, c, off, (1, 1, 1), True, be)


def test_unsorted_input_rows():
    c = random_coords(400, extent=7, batch=2, seed=3, low=-3)
    c = c[torch.randperm(len(c), generator=torch.Generator().manual_seed(0))]
    off = kernel_offsets((3, 3, 3), (1, 1, 1), (1, 1, 1))
    ref = brute_nbmap(c, c, off)
    for be in BACKENDS:
        assert np.array_equal(build_kernel_map(c, c, off, (1, 1, 1), True, be).nbmap.numpy(), ref)


def test_cache_shared_between_layers():
    c = random_coords(200, seed=1)
    x = SparseTensor(torch.randn(len(c), 2), c)
    km1, _, _ = get_kernel_map(x, (3, 3, 3), (1, 1, 1), (1, 1, 1))
    km2, _, _ = get_kernel_map(x.replace(torch.randn(len(c), 5)), (3, 3, 3), (1, 1, 1), (1, 1, 1))
    assert km1 is km2
    out1, _ = output_coords(x, (2, 2, 2))
    out2, _ = output_coords(x, (2, 2, 2))
    assert out1 is out2


def test_real_scan_map(kitti_coords):
    off = kernel_offsets((3, 3, 3), (1, 1, 1), (1, 1, 1))
    a = build_kernel_map(kitti_coords, kitti_coords, off, (1, 1, 1), True, "merge")
    b = build_kernel_map(kitti_coords, kitti_coords, off, (1, 1, 1), False, "hash")
    c = build_kernel_map(kitti_coords, kitti_coords, off, (1, 1, 1), True, "torch")
    assert torch.equal(a.nbmap, b.nbmap) and torch.equal(a.nbmap, c.nbmap)
    assert a.sizes == c.sizes and a.sizes[13] == len(kitti_coords)
