"""Sparse conv vs dense ``torch.nn.functional.conv3d`` / ``conv_transpose3d`` (float64, both dataflows).

Semantics under test (sparse-conv.md §7, MinkowskiEngine-style): with offsets ``off_k``
(x fastest; ``(i - K//2)*d*t`` for odd K, ``i*d*t`` for even K) a conv computes
``out(o) = sum_k x(o + off_k) @ W[k]``; stride 1 keeps the input coordinates, stride s
outputs ``unique(floor(c / (s*t)) * (s*t))``; the transposed conv scatters back along the
same pairs onto the cached finer coordinates.

Dense reference: the input is scattered into a grid of cell ``t`` whose origin ``m`` is a
multiple of ``s*t`` (so ``floor`` commutes with the shift), left-padded by ``(K//2)*d``
(odd K) or 0 (even K), and convolved with stride ``s`` and dilation ``d``; the sparse
output at ``o`` is the dense output at ``(o - m) / (s*t)``.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as TF
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import random_coords
from sparse3d import SparseTensor
from sparse3d.nn import Conv3d
from sparse3d.nn import functional as F

DATAFLOWS = ["fused", "gather_gemm_scatter"]
CIN, COUT = 3, 4


# ----------------------------------------------------------------------------- helpers
def _t3(v):
    return (v, v, v) if isinstance(v, int) else tuple(v)


def _centre(ks, dil):
    return [(k // 2) * d if k % 2 else 0 for k, d in zip(ks, dil)]


def _densify(coords, feats, cell, origin, shape, batch):
    """``[B, C, X, Y, Z]`` grid (differentiable in feats); voxel at ``(c - origin) / cell``."""
    g = torch.div(coords[:, 1:].long() - torch.tensor(origin), torch.tensor(cell), rounding_mode="floor")
    grid = feats.new_zeros((batch, *shape, feats.shape[1]))
    grid = grid.index_put((coords[:, 0].long(), g[:, 0], g[:, 1], g[:, 2]), feats)
    return grid.permute(0, 4, 1, 2, 3)


def _dense_weight(w, ks):
    """``[K, Cin, Cout]`` (x fastest) -> ``[Cout, Cin, Kx, Ky, Kz]``."""
    kx, ky, kz = ks
    return w.reshape(kz, ky, kx, w.shape[1], w.shape[2]).permute(4, 3, 2, 1, 0)


def _origin(coords, mult):
    mn = coords[:, 1:].long().min(0).values.tolist()
    return [(v // m) * m for v, m in zip(mn, mult)]


def dense_conv(x: SparseTensor, feats, w, ks, s, d, out_coords, bias=None):
    """Dense reference of a (strided or submanifold) conv, sampled at ``out_coords`` -> ``[M, Cout]``."""
    t = x.stride
    big = [si * ti for si, ti in zip(s, t)]
    m = _origin(torch.cat([x.coords, out_coords]), big)
    g = torch.div(x.coords[:, 1:].long() - torch.tensor(m), torch.tensor(t), rounding_mode="floor")
    shape = (g.max(0).values + 1).tolist()
    batch = int(max(x.coords[:, 0].max(), out_coords[:, 0].max())) + 1
    X = _densify(x.coords, feats, t, m, shape, batch)
    c = _centre(ks, d)
    right = [(k - 1) * di + si for k, di, si in zip(ks, d, s)]
    X = TF.pad(X, (c[2], right[2], c[1], right[1], c[0], right[0]))
    Y = TF.conv3d(X, _dense_weight(w, ks), stride=s, dilation=d)
    q = torch.div(out_coords[:, 1:].long() - torch.tensor(m), torch.tensor(big), rounding_mode="floor")
    assert (out_coords[:, 1:].long() - torch.tensor(m) == q * torch.tensor(big)).all()
    out = Y[out_coords[:, 0].long(), :, q[:, 0], q[:, 1], q[:, 2]]
    return out if bias is None else out + bias


def dense_conv_transpose(coarse: SparseTensor, feats, w, ks, s, d, fine_coords, fine_stride, bias=None):
    """Dense reference of the transposed conv (inverse of a stride-``s`` conv), sampled at ``fine_coords``."""
    T = coarse.stride
    m = _origin(torch.cat([coarse.coords, fine_coords]), T)
    q = torch.div(coarse.coords[:, 1:].long() - torch.tensor(m), torch.tensor(T), rounding_mode="floor")
    shape = (q.max(0).values + 3).tolist()
    batch = int(max(coarse.coords[:, 0].max(), fine_coords[:, 0].max())) + 1
    Y = _densify(coarse.coords, feats, T, m, shape, batch)
    kx, ky, kz = ks
    wt = w.reshape(kz, ky, kx, w.shape[1], w.shape[2]).permute(3, 4, 2, 1, 0)  # [Cin, Cout, Kx, Ky, Kz]
    Z = TF.conv_transpose3d(Y, wt, stride=s, dilation=d)
    c = _centre(ks, d)
    g = torch.div(fine_coords[:, 1:].long() - torch.tensor(m), torch.tensor(fine_stride), rounding_mode="floor")
    g = g + torch.tensor(c)
    out = Z[fine_coords[:, 0].long(), :, g[:, 0], g[:, 1], g[:, 2]]
    return out if bias is None else out + bias


def _expected_out_coords(coords, t, s):
    big = torch.tensor([1] + [si * ti for si, ti in zip(s, t)])
    c = torch.div(coords.long(), big, rounding_mode="floor") * big
    return torch.unique(c, dim=0)


def _sorted(coords):
    return torch.unique(coords.long(), dim=0)  # unique sorts lexicographically by (b, x, y, z)


def _make_input(n=120, extent=8, low=-4, t=(1, 1, 1), seed=0, dtype=torch.float64):
    c = random_coords(n, extent=extent, batch=2, seed=seed, low=low)
    c[:, 1:] *= torch.tensor(t, dtype=torch.int32)
    g = torch.Generator().manual_seed(seed + 100)
    feats = torch.randn(c.shape[0], CIN, generator=g, dtype=dtype)
    return c, feats


def _rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# (kernel_size, stride, dilation, tensor_stride)
FORWARD_CASES = [
    pytest.param(1, 1, 1, 1, id="subm-k1"),
    pytest.param(3, 1, 1, 1, id="subm-k3"),
    pytest.param(5, 1, 1, 1, id="subm-k5"),
    pytest.param((1, 1, 3), 1, 1, 1, id="subm-k113"),
    pytest.param((3, 1, 1), 1, 1, 1, id="subm-k311"),
    pytest.param((1, 3, 5), 1, 1, 1, id="subm-k135"),
    pytest.param(3, 1, 2, 1, id="subm-k3-d2"),
    pytest.param(3, 1, (1, 2, 3), 1, id="subm-k3-d123"),
    pytest.param(2, 1, 1, 1, id="stride1-k2-even"),
    pytest.param(2, 2, 1, 1, id="down-k2s2"),
    pytest.param(3, 2, 1, 1, id="down-k3s2"),
    pytest.param(3, 2, 2, 1, id="down-k3s2-d2"),
    pytest.param((1, 1, 2), (1, 1, 2), 1, 1, id="down-k112-s112"),
    pytest.param((2, 3, 1), (2, 1, 1), 1, 1, id="down-k231-s211"),
    pytest.param(3, 1, 1, 2, id="subm-k3-t2"),
    pytest.param(3, 1, 1, (1, 1, 2), id="subm-k3-t112"),
    pytest.param(2, 2, 1, 2, id="down-k2s2-t2"),
    pytest.param(3, 2, 1, 4, id="down-k3s2-t4"),
    pytest.param((1, 1, 2), (1, 1, 2), 1, (2, 2, 1), id="down-k112-s112-t221"),
]

TRANSPOSED_CASES = [
    pytest.param(2, 2, 1, 1, id="up-k2s2"),
    pytest.param(3, 2, 1, 1, id="up-k3s2"),
    pytest.param(2, 2, 1, 2, id="up-k2s2-t2"),
    pytest.param(3, 2, 1, 2, id="up-k3s2-t2"),
    pytest.param((1, 1, 2), (1, 1, 2), 1, 1, id="up-k112-s112"),
    pytest.param(3, 2, 2, 1, id="up-k3s2-d2"),
]


def _run_forward(ks, s, d, t, dataflow, bias, seed=0, n=120, extent=8, low=-4):
    ks, s, d, t = _t3(ks), _t3(s), _t3(d), _t3(t)
    coords, feats = _make_input(n, extent, low, t, seed)
    feats.requires_grad_(True)
    K = math.prod(ks)
    w = _rand(K, CIN, COUT, seed=seed + 1).requires_grad_(True)
    b = _rand(COUT, seed=seed + 2).requires_grad_(True) if bias else None
    x = SparseTensor(feats, coords, t)
    y = F.conv3d(x, w, ks, b, s, d, dataflow=dataflow)
    ref = dense_conv(x, feats, w, ks, s, d, y.coords, b)
    return x, y, ref, (feats, w, b)


# ----------------------------------------------------------------------------- forward
@pytest.mark.parametrize("dataflow", DATAFLOWS)
@pytest.mark.parametrize("ks,s,d,t", FORWARD_CASES)
def test_forward_matches_dense(ks, s, d, t, dataflow):
    x, y, ref, _ = _run_forward(ks, s, d, t, dataflow, bias=False)
    s3, t3 = _t3(s), _t3(t)
    expected_stride = tuple(a * b for a, b in zip(s3, t3))
    assert y.stride == expected_stride
    if s3 == (1, 1, 1):
        assert torch.equal(y.coords, x.coords)
    else:
        assert torch.equal(_sorted(y.coords), _expected_out_coords(x.coords, t3, s3))
    assert y.feats.dtype == torch.float64
    torch.testing.assert_close(y.feats, ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("dataflow", DATAFLOWS)
@pytest.mark.parametrize("ks,s,d,t", TRANSPOSED_CASES)
def test_transposed_matches_dense(ks, s, d, t, dataflow):
    ks, s, d, t = _t3(ks), _t3(s), _t3(d), _t3(t)
    coords, feats = _make_input(t=t, seed=3)
    x = SparseTensor(feats, coords, t)
    K = math.prod(ks)
    down = F.conv3d(x, _rand(K, CIN, CIN, seed=4), ks, None, s, d, dataflow=dataflow)
    h = _rand(down.coords.shape[0], CIN, seed=5)
    w = _rand(K, CIN, COUT, seed=6)
    up = F.conv3d(down.replace(h), w, ks, None, s, d, transposed=True, dataflow=dataflow)
    assert up.stride == t
    assert torch.equal(up.coords, x.coords)
    ref = dense_conv_transpose(down, h, w, ks, s, d, up.coords, t)
    torch.testing.assert_close(up.feats, ref, rtol=1e-10, atol=1e-10)


# ----------------------------------------------------------------------------- gradients
def _grads(out, params, g):
    return torch.autograd.grad(out, [p for p in params if p is not None], g)


@pytest.mark.parametrize("dataflow", DATAFLOWS)
@pytest.mark.parametrize("ks,s,d,t", [
    pytest.param(3, 1, 1, 1, id="subm-k3"),
    pytest.param((1, 1, 3), 1, 2, 1, id="subm-k113-d2"),
    pytest.param(1, 1, 1, 1, id="subm-k1"),
    pytest.param(2, 2, 1, 1, id="down-k2s2"),
    pytest.param(3, 2, 1, 2, id="down-k3s2-t2"),
    pytest.param((1, 1, 2), (1, 1, 2), 1, 1, id="down-k112-s112"),
])
def test_gradients_match_dense(ks, s, d, t, dataflow):
    x, y, ref, params = _run_forward(ks, s, d, t, dataflow, bias=True, seed=7)
    g = _rand(*y.feats.shape, seed=8)
    got = _grads(y.feats, params, g)
    exp = _grads(ref, params, g)
    for name, a, b in zip(("input", "weight", "bias"), got, exp):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10, msg=lambda m: f"{name} grad: {m}")


@pytest.mark.parametrize("dataflow", DATAFLOWS)
@pytest.mark.parametrize("ks,s", [pytest.param(2, 2, id="k2s2"), pytest.param(3, 2, id="k3s2")])
def test_transposed_gradients_match_dense(ks, s, dataflow):
    ks, s, d, t = _t3(ks), _t3(s), (1, 1, 1), (1, 1, 1)
    coords, feats = _make_input(seed=9)
    x = SparseTensor(feats, coords, t)
    K = math.prod(ks)
    down = F.conv3d(x, _rand(K, CIN, CIN, seed=10), ks, None, s, d, dataflow=dataflow)
    h = _rand(down.coords.shape[0], CIN, seed=11).requires_grad_(True)
    w = _rand(K, CIN, COUT, seed=12).requires_grad_(True)
    b = _rand(COUT, seed=13).requires_grad_(True)
    up = F.conv3d(down.replace(h), w, ks, b, s, d, transposed=True, dataflow=dataflow)
    ref = dense_conv_transpose(down, h, w, ks, s, d, up.coords, t, b)
    g = _rand(*up.feats.shape, seed=14)
    for name, a, e in zip(("input", "weight", "bias"), _grads(up.feats, (h, w, b), g), _grads(ref, (h, w, b), g)):
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-10, msg=lambda m: f"{name} grad: {m}")


# ----------------------------------------------------------------------------- module + bias
@pytest.mark.parametrize("dataflow", DATAFLOWS)
@pytest.mark.parametrize("ks,s,transposed", [
    pytest.param(3, 1, False, id="subm-k3"),
    pytest.param(2, 2, False, id="down-k2s2"),
    pytest.param(3, 2, True, id="up-k3s2"),
])
def test_module_with_bias_matches_dense(ks, s, transposed, dataflow):
    ks3, s3 = _t3(ks), _t3(s)
    coords, feats = _make_input(seed=15)
    x = SparseTensor(feats, coords)
    if transposed:
        x = Conv3d(CIN, CIN, ks, s, dataflow=dataflow).double()(x)
        x = x.replace(_rand(x.coords.shape[0], CIN, seed=16))
    conv = Conv3d(CIN, COUT, ks, s, bias=True, transposed=transposed, dataflow=dataflow).double()
    assert conv.dataflow == dataflow and conv.bias is not None
    y = conv(x)
    if transposed:
        ref = dense_conv_transpose(x, x.feats, conv.weight, ks3, s3, (1, 1, 1), y.coords, (1, 1, 1), conv.bias)
    else:
        ref = dense_conv(x, x.feats, conv.weight, ks3, s3, (1, 1, 1), y.coords, conv.bias)
    torch.testing.assert_close(y.feats, ref, rtol=1e-10, atol=1e-10)


# ----------------------------------------------------------------------------- edge cases
@pytest.mark.parametrize("dataflow", DATAFLOWS)
def test_single_point_and_large_coordinates(dataflow):
    """One voxel per sample, far from the origin and negative: only the centre tap contributes."""
    coords = torch.tensor([[0, -100000, 5, 70000], [1, 123456, -7, -3]], dtype=torch.int32)
    feats = _rand(2, CIN, seed=17)
    w = _rand(27, CIN, COUT, seed=18)
    y = F.conv3d(SparseTensor(feats, coords), w, 3, dataflow=dataflow)
    torch.testing.assert_close(y.feats, feats @ w[13])
    yd = F.conv3d(SparseTensor(feats, coords), _rand(8, CIN, COUT, seed=19), 2, stride=2, dataflow=dataflow)
    assert torch.equal(_sorted(yd.coords), _expected_out_coords(coords, (1, 1, 1), (2, 2, 2)))


@given(
    ks=st.tuples(*[st.integers(1, 3)] * 3),
    s=st.tuples(*[st.integers(1, 2)] * 3),
    d=st.tuples(*[st.integers(1, 2)] * 3),
    t=st.sampled_from([(1, 1, 1), (2, 2, 2), (1, 2, 1)]),
    seed=st.integers(0, 10_000),
    dataflow=st.sampled_from(DATAFLOWS),
)
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_property_random_configs_match_dense(ks, s, d, t, seed, dataflow):
    x, y, ref, _ = _run_forward(ks, s, d, t, dataflow, bias=False, seed=seed, n=60, extent=6, low=-3)
    if s != (1, 1, 1):
        assert torch.equal(_sorted(y.coords), _expected_out_coords(x.coords, t, s))
    torch.testing.assert_close(y.feats, ref, rtol=1e-10, atol=1e-10)
