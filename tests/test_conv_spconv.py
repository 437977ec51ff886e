"""Forward parity of sparse3d convs with spconv 2.x on the CPU (``ConvAlgo.Native``, ``bias=False``).

spconv references are computed with one torch thread (sparse-conv.md: its CPU path is
wrong under two threads for some builds) and compared forward only (sparse-conv.md reports
spconv's CPU backward failing; gradients are checked against dense conv in test_conv_dense.py).
Rows are compared after sorting by (b, x, y, z); coordinate sets must be equal and the
max abs error must be <= 1e-4 relative to the output scale.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from conftest import random_coords, run_spconv
from sparse3d import SparseTensor
from sparse3d.interop import spconv as isp
from sparse3d.nn import functional as F

sp = pytest.importorskip("spconv.pytorch")
warnings.filterwarnings("ignore", category=FutureWarning, module="spconv")
from spconv.core import ConvAlgo  # noqa: E402

DATAFLOWS = ["fused", "gather_gemm_scatter"]


# ----------------------------------------------------------------------------- helpers
def spconv_layer(cls, cin, cout, ks, seed, **kw):
    torch.manual_seed(seed)
    m = cls(cin, cout, ks, bias=False, algo=ConvAlgo.Native, **kw)
    with torch.no_grad():
        m.weight.normal_()
    return m


def sort_rows(coords, feats):
    """Sort rows by (b, x, y, z); returns (coords int64, feats)."""
    c = coords.long()
    perm = torch.from_numpy(np.lexsort(c.numpy().T[::-1].copy()))
    return c[perm], feats[perm]


def assert_parity(ours: SparseTensor, ref: SparseTensor):
    assert ours.stride == ref.stride
    ca, fa = sort_rows(ours.coords, ours.feats.detach())
    cb, fb = sort_rows(ref.coords, ref.feats.detach())
    assert ca.shape == cb.shape, f"{ca.shape[0]} output rows vs spconv's {cb.shape[0]}"
    assert torch.equal(ca, cb), "output coordinate sets differ"
    scale = max(1.0, float(fb.abs().max())) if fb.numel() else 1.0
    err = float((fa - fb).abs().max()) if fb.numel() else 0.0
    assert err <= 1e-4 * scale, f"max abs error {err:.3g} > 1e-4 * scale {scale:.3g}"


def make_input(coords, cin, seed=0, stride=1):
    g = torch.Generator().manual_seed(seed)
    return SparseTensor(torch.randn(coords.shape[0], cin, generator=g), coords, stride)


@pytest.fixture(scope="module")
def kitti_x(kitti_coords):
    return make_input(kitti_coords, 4, seed=1)


@pytest.fixture(scope="module")
def random_x():
    """Two samples with negative coordinates."""
    return make_input(random_coords(5000, extent=24, batch=2, seed=3, low=-12), 6, seed=2)


def _subm_parity(x, ks, dilation, cout, dataflow, seed, axes="xyz"):
    org = isp.origin_for(x, 2)
    ks_sp = ks if axes == "xyz" else tuple(reversed(ks if isinstance(ks, tuple) else (ks,) * 3))
    m = spconv_layer(sp.SubMConv3d, x.feats.shape[1], cout, ks_sp, seed, dilation=dilation)
    ref = isp.from_spconv(run_spconv(m, isp.to_spconv(x, origin=org, axes=axes)), x.stride, origin=org, axes=axes)
    w = isp.weight_from_spconv(m.weight, axes=axes)
    y = F.conv3d(x, w, ks, dilation=dilation, dataflow=dataflow)
    assert torch.equal(y.coords, x.coords)
    assert_parity(y, ref)


SUBM_CASES = [
    pytest.param(1, 1, id="k1"),
    pytest.param(3, 1, id="k3"),
    pytest.param(5, 1, id="k5"),
    pytest.param(3, 2, id="k3-d2"),
    pytest.param((1, 1, 3), 1, id="k113"),
    pytest.param((3, 1, 1), 1, id="k311"),
]


# ----------------------------------------------------------------------------- submanifold
@pytest.mark.parametrize("ks,dilation", SUBM_CASES)
def test_subm_real_scan(kitti_x, ks, dilation):
    _subm_parity(kitti_x, ks, dilation, 8, None, seed=10)


@pytest.mark.parametrize("dataflow", DATAFLOWS)
def test_subm_k3_real_scan_dataflows(kitti_x, dataflow):
    _subm_parity(kitti_x, 3, 1, 8, dataflow, seed=11)


@pytest.mark.parametrize("dataflow", DATAFLOWS)
@pytest.mark.parametrize("ks,dilation", SUBM_CASES)
def test_subm_random(random_x, ks, dilation, dataflow):
    _subm_parity(random_x, ks, dilation, 5, dataflow, seed=12)


@pytest.mark.parametrize("ks", [(1, 1, 3), (3, 1, 5)])
def test_subm_zyx_axes(random_x, ks):
    """spconv fed (b, z, y, x) indices with its kernel in (z, y, x) order gives the same conv."""
    _subm_parity(random_x, ks, 1, 5, None, seed=13, axes="zyx")


def test_subm_tensor_stride_2(random_x):
    x2 = SparseTensor(random_x.feats, random_x.coords * torch.tensor([1, 2, 2, 2], dtype=torch.int32), 2)
    _subm_parity(x2, 3, 1, 5, None, seed=14)


# ----------------------------------------------------------------------------- down / inverse
def _down_up_parity(x, cmid, cout, dataflow, seed):
    """SparseConv3d k2 s2 then SparseInverseConv3d (same indice_key) vs stride-2 conv and its transpose."""
    t = x.stride
    org = isp.origin_for(x, tuple(2 * v for v in t))
    down = spconv_layer(sp.SparseConv3d, x.feats.shape[1], cmid, 2, seed, stride=2, indice_key="d1")
    up = spconv_layer(sp.SparseInverseConv3d, cmid, cout, 2, seed + 1, indice_key="d1")
    st = isp.to_spconv(x, origin=org, shape_multiple=tuple(2 * v for v in t))
    h_sp = run_spconv(down, st)
    o_sp = run_spconv(up, h_sp)
    ref_h = isp.from_spconv(h_sp, tuple(2 * v for v in t), origin=org)
    ref_o = isp.from_spconv(o_sp, t, origin=org)

    h = F.conv3d(x, isp.weight_from_spconv(down.weight), 2, stride=2, dataflow=dataflow)
    assert_parity(h, ref_h)
    o = F.conv3d(h, isp.weight_from_spconv(up.weight), 2, stride=2, transposed=True, dataflow=dataflow)
    assert torch.equal(o.coords, x.coords)
    assert_parity(o, ref_o)


@pytest.mark.parametrize("dataflow", DATAFLOWS)
def test_down_inverse_real_scan(kitti_x, dataflow):
    _down_up_parity(kitti_x, 8, 4, dataflow, seed=20)


@pytest.mark.parametrize("dataflow", DATAFLOWS)
def test_down_inverse_random(random_x, dataflow):
    _down_up_parity(random_x, 7, 3, dataflow, seed=21)


def test_down_inverse_tensor_stride_2(random_x):
    x2 = SparseTensor(random_x.feats, random_x.coords * torch.tensor([1, 2, 2, 2], dtype=torch.int32), 2)
    _down_up_parity(x2, 5, 4, None, seed=22)


def test_two_level_down_up_chain(random_x):
    """k2 s2 twice (stride 4) and back with two inverse convs; origin aligned to the coarsest stride."""
    org = isp.origin_for(random_x, 4)
    cin = random_x.feats.shape[1]
    d1 = spconv_layer(sp.SparseConv3d, cin, 5, 2, 30, stride=2, indice_key="a")
    d2 = spconv_layer(sp.SparseConv3d, 5, 6, 2, 31, stride=2, indice_key="b")
    u2 = spconv_layer(sp.SparseInverseConv3d, 6, 5, 2, 32, indice_key="b")
    u1 = spconv_layer(sp.SparseInverseConv3d, 5, 3, 2, 33, indice_key="a")
    net = sp.SparseSequential(d1, d2, u2, u1)
    ref = isp.from_spconv(run_spconv(net, isp.to_spconv(random_x, origin=org, shape_multiple=4)), origin=org)
    y = random_x
    for m, tr in ((d1, False), (d2, False), (u2, True), (u1, True)):
        y = F.conv3d(y, isp.weight_from_spconv(m.weight), 2, stride=2, transposed=tr)
    assert_parity(y, ref)


def test_empty_sample_batch_boundary():
    """Sample 1 of 3 is empty; batches stay separated (no pairs across the batch index)."""
    c = random_coords(400, extent=10, batch=3, seed=5)
    c = c[c[:, 0] != 1]
    x = make_input(c, 4, seed=6)
    m = spconv_layer(sp.SubMConv3d, 4, 3, 3, 40)
    st = isp.to_spconv(x, batch_size=3)
    ref = isp.from_spconv(run_spconv(m, st))
    assert_parity(F.conv3d(x, isp.weight_from_spconv(m.weight), 3), ref)


# ----------------------------------------------------------------------------- heavier
@pytest.mark.slow
@pytest.mark.parametrize("dataflow", DATAFLOWS)
def test_real_scan_wide_channels_k5_and_down_up(kitti_coords, dataflow):
    x = make_input(kitti_coords, 16, seed=50)
    _subm_parity(x, 5, 1, 16, dataflow, seed=51)
    _subm_parity(x, 3, 2, 16, dataflow, seed=52)
    _down_up_parity(x, 16, 16, dataflow, seed=53)
