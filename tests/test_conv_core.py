"""Convolution core: dataflows vs brute force, gradcheck, empty input, dtypes, determinism, bad input.

spconv parity and dense conv3d parity live in test_conv_spconv.py / test_conv_dense.py.
"""
import numpy as np
import pytest
import torch
from torch.autograd import gradcheck

import sparse3d
from conftest import random_coords
from sparse3d import SparseTensor
from sparse3d.nn import Conv3d
from sparse3d.nn import functional as F
from sparse3d.nn.functional.conv import Conv3dFunction, _plan_groups
from sparse3d.nn.functional.kmap import get_kernel_map, output_coords
from sparse3d.ops.conv.reference import conv_bruteforce
from sparse3d.ops.kmap import kernel_offsets

DATAFLOWS = ["fused", "gather_gemm_scatter", "reference"]
# (kernel_size, stride, dilation, input tensor stride)
VARIANTS = [
    ((3, 3, 3), (1, 1, 1), (1, 1, 1), 1),
    ((5, 5, 5), (1, 1, 1), (1, 1, 1), 1),
    ((1, 1, 3), (1, 1, 1), (1, 1, 1), 1),
    ((3, 3, 3), (1, 1, 1), (2, 2, 2), 1),
    ((2, 2, 2), (2, 2, 2), (1, 1, 1), 1),
    ((3, 3, 3), (2, 2, 2), (1, 1, 1), 1),
    ((1, 1, 2), (1, 1, 2), (1, 1, 1), 1),
    ((3, 3, 3), (1, 1, 1), (1, 1, 1), 2),
    ((2, 2, 2), (2, 2, 2), (1, 1, 1), 2),
    ((2, 2, 2), (1, 1, 1), (1, 1, 1), 1),
]


def _input(n=150, c=3, t=1, seed=0, dtype=torch.float64, low=-4):
    coords = random_coords(n, extent=6, batch=2, seed=seed, low=low)
    coords[:, 1:] *= t
    g = torch.Generator().manual_seed(seed)
    return SparseTensor(torch.randn(len(coords), c, generator=g, dtype=dtype), coords, stride=t)


def _expected_out_coords(x, stride):
    s = np.array([1, *[a * b for a, b in zip(stride, x.stride)]])
    return np.unique(np.floor_divide(x.coords.numpy().astype(np.int64), s) * s, axis=0)


@pytest.mark.parametrize("ks,s,d,t", VARIANTS)
@pytest.mark.parametrize("dataflow", DATAFLOWS)
def test_forward_matches_bruteforce(ks, s, d, t, dataflow):
    x = _input(t=t)
    w = torch.randn(int(np.prod(ks)), 3, 4, dtype=torch.float64)
    y = F.conv3d(x, w, ks, stride=s, dilation=d, dataflow=dataflow)
    if s == (1, 1, 1):
        assert y.coords is x.coords and y.stride == x.stride
    else:
        assert np.array_equal(y.coords.numpy(), _expected_out_coords(x, s))
        assert y.stride == tuple(a * t for a in s)
    off = kernel_offsets(ks, d, x.stride)
    ref = conv_bruteforce(x.coords, x.feats, y.coords, w, off)
    torch.testing.assert_close(y.feats, ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("ks", [(2, 2, 2), (3, 3, 3), (1, 1, 2)])
@pytest.mark.parametrize("dataflow", DATAFLOWS)
def test_transposed_is_adjoint_of_strided(ks, dataflow):
    """<down(x), y> == <x, up(y)> with the same weight (transposed conv = adjoint of the strided conv)."""
    s = tuple(2 if k > 1 else 1 for k in ks) if ks != (3, 3, 3) else (2, 2, 2)
    x = _input(c=3)
    w = torch.randn(int(np.prod(ks)), 3, 4, dtype=torch.float64)
    down = F.conv3d(x, w, ks, stride=s, dataflow=dataflow)
    yv = torch.randn_like(down.feats)
    up = F.conv3d(down.replace(yv), w.transpose(1, 2).contiguous(), ks, stride=s, transposed=True,
                  dataflow=dataflow)
    assert up.coords is x.coords and up.stride == x.stride
    lhs = (down.feats * yv).sum()
    rhs = (x.feats * up.feats).sum()
    torch.testing.assert_close(lhs, rhs)


@pytest.mark.parametrize("ks,s,d,t", VARIANTS[:7])
@pytest.mark.parametrize("dataflow", ["fused", "gather_gemm_scatter"])
def test_gradcheck(ks, s, d, t, dataflow):
    x = _input(n=40, c=2, t=t, seed=1)
    km, _, _ = get_kernel_map(x, ks, s, d)
    feats = x.feats.clone().requires_grad_()
    w = torch.randn(km.kernel_volume, 2, 3, dtype=torch.float64, requires_grad=True)
    assert gradcheck(lambda f, w: Conv3dFunction.apply(f, w, km, dataflow), (feats, w))
    kt = km.transpose()
    g = torch.randn(kt.n_in, 2, dtype=torch.float64, requires_grad=True)
    assert gradcheck(lambda f, w: Conv3dFunction.apply(f, w, kt, dataflow), (g, w))


@pytest.mark.parametrize("ks,s", [((3, 3, 3), (1, 1, 1)), ((2, 2, 2), (2, 2, 2))])
def test_empty_input_passes_through(ks, s):
    x = SparseTensor(torch.zeros(0, 3, requires_grad=True), torch.zeros(0, 4, dtype=torch.int32))
    conv = Conv3d(3, 5, ks, stride=s, bias=True)
    y = conv(x)
    assert y.feats.shape == (0, 5) and y.coords.shape == (0, 4)
    y.feats.sum().backward()
    assert conv.weight.grad is not None and torch.all(conv.weight.grad == 0)


def test_single_point():
    x = SparseTensor(torch.randn(1, 2, dtype=torch.float64), torch.tensor([[0, -7, 3, 1]], dtype=torch.int32))
    w = torch.randn(27, 2, 2, dtype=torch.float64)
    y = F.conv3d(x, w, 3)
    torch.testing.assert_close(y.feats, x.feats @ w[13])
    d = F.conv3d(x, torch.randn(8, 2, 2, dtype=torch.float64), 2, stride=2)
    assert d.coords.tolist() == [[0, -8, 2, 0]]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_reduced_precision(dtype):
    x = _input(n=300, c=8, dtype=torch.float32)
    conv = Conv3d(8, 8, 3)
    ref = conv(x).feats
    y = conv(x.to(dtype))
    assert y.feats.dtype == dtype
    torch.testing.assert_close(y.feats.float(), ref, rtol=0.05, atol=0.05)


def test_bias_and_module_matches_functional():
    x = _input(c=3, dtype=torch.float32)
    conv = Conv3d(3, 4, 3, bias=True)
    y = conv(x)
    ref = F.conv3d(x, conv.weight, 3) .feats + conv.bias
    torch.testing.assert_close(y.feats, ref)
    assert conv.weight.shape == (27, 3, 4)
    assert "kernel_size=(3, 3, 3)" in repr(conv)


def test_kernel_size_one_is_linear():
    x = _input(c=3, dtype=torch.float32)
    conv = Conv3d(3, 4, 1)
    torch.testing.assert_close(conv(x).feats, x.feats @ conv.weight[0])


def test_unet_round_trip_shares_maps():
    x = _input(c=2, dtype=torch.float32)
    down = Conv3d(2, 4, 2, stride=2)
    sub = Conv3d(4, 4, 3)
    up = Conv3d(4, 2, 2, stride=2, transposed=True)
    y = up(sub(sub(down(x))))
    assert y.coords is x.coords and y.stride == (1, 1, 1)
    # one strided map, one submanifold map at stride 2, reused by the transposed conv
    assert len(x._caches.kmaps) == 2


def test_deterministic_bitwise():
    sparse3d.set_deterministic(True)
    try:
        outs = []
        for _ in range(2):
            torch.manual_seed(0)
            x = _input(n=400, c=16, dtype=torch.float32, seed=5)
            x.feats.requires_grad_()
            net = torch.nn.ModuleList([Conv3d(16, 32, 3), Conv3d(32, 32, 2, stride=2), Conv3d(32, 16, 2, stride=2,
                                                                                          transposed=True)])
            y = x
            for m in net:
                y = m(y)
            y.feats.square().sum().backward()
            outs.append([y.feats.detach(), x.feats.grad] + [p.grad for p in net.parameters()])
        for a, b in zip(*outs):
            assert torch.equal(a, b)
    finally:
        sparse3d.set_deterministic(False)


def test_dataflows_agree_on_real_scan(kitti_coords):
    g = torch.Generator().manual_seed(0)
    x = SparseTensor(torch.randn(len(kitti_coords), 8, generator=g), kitti_coords)
    w = torch.randn(27, 8, 8, generator=g)
    a = F.conv3d(x, w, 3, dataflow="fused").feats
    b = F.conv3d(x, w, 3, dataflow="gather_gemm_scatter").feats
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_group_plan_covers_offsets_once():
    sizes = [10, 0, 50, 48, 47, 5, 6, 100, 9]
    groups = _plan_groups(sizes, center=7, eps=0.3)
    flat = sorted(k for g in groups for k in g)
    assert flat == [0, 2, 3, 4, 5, 6, 8]
    for g in groups:
        mx, tot = max(sizes[k] for k in g), sum(sizes[k] for k in g)
        assert mx * len(g) - tot <= 0.3 * tot


def test_bad_input():
    x = _input(c=3, dtype=torch.float32)
    with pytest.raises(ValueError, match="channels"):
        Conv3d(4, 2, 3)(x)
    with pytest.raises(TypeError, match="SparseTensor"):
        Conv3d(3, 2, 3)(x.feats)
    with pytest.raises(ValueError, match="does not divide"):
        Conv3d(3, 2, 2, stride=2, transposed=True)(x)
    with pytest.raises(ValueError, match="finer coordinates"):
        Conv3d(3, 2, 2, stride=2, transposed=True)(_input(c=3, t=2, dtype=torch.float32))
    with pytest.raises(ValueError, match="kernel_size"):
        Conv3d(3, 2, (3, 3))
    with pytest.raises(ValueError, match=r"weight must be \[K=27"):
        F.conv3d(x, torch.randn(8, 3, 2), 3)
    with pytest.raises(ValueError, match="dataflow"):
        F.conv3d(x, torch.randn(27, 3, 2), 3, dataflow="nope")


@pytest.mark.parametrize("ks,s", [((3, 3, 3), (1, 1, 1)), ((2, 2, 2), (2, 2, 2)), ((1, 1, 3), (1, 1, 1))])
def test_device_agnostic_torch_path(device, ks, s, monkeypatch):
    """The torch kernel map + torch gather-GEMM-scatter (the CUDA path) match the numba CPU path."""
    x = _input(n=300, c=4, dtype=torch.float32, seed=7)
    w = torch.randn(int(np.prod(ks)), 4, 5)
    ref = F.conv3d(x, w, ks, stride=s)
    monkeypatch.setenv("SPARSE3D_KMAP", "torch")
    import sparse3d.nn.functional.conv as conv_mod
    monkeypatch.setattr(conv_mod, "_numba_ok", lambda t: False)  # pure torch ops, as on CUDA
    xd = SparseTensor(x.feats.to(device).requires_grad_(), x.coords.to(device))
    y = F.conv3d(xd, w.to(device), ks, stride=s, dataflow="gather_gemm_scatter")
    assert y.feats.device.type == device.type
    torch.testing.assert_close(y.coords.cpu(), ref.coords)
    torch.testing.assert_close(y.feats.cpu(), ref.feats, rtol=1e-4, atol=1e-4)
    y.feats.sum().backward()
    assert xd.feats.grad.shape == xd.feats.shape


def test_cpu_autocast_bf16_trains():
    x = _input(n=300, c=8, dtype=torch.float32)
    conv = Conv3d(8, 8, 3)
    ref = conv(x).feats
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = conv(x)
        assert y.feats.dtype == torch.bfloat16
        y.feats.float().square().sum().backward()
    assert conv.weight.grad.dtype == torch.float32 and torch.isfinite(conv.weight.grad).all()
    torch.testing.assert_close(y.feats.float(), ref, rtol=0.05, atol=0.05)


def test_parallel_and_serial_kernel_builds_do_not_share_numba_cache():
    """numba's on-disk cache is keyed by qualname + line, not by ``parallel``: the two builds of one kernel body
    must have distinct cache files, or the parallel build silently loads the serial machine code."""
    from sparse3d.ops.conv import numba_cpu as K
    for par, ser in ((K._fused, K._fused_serial), (K._gather, K._gather_serial), (K._scatter, K._scatter_serial)):
        assert par.targetoptions.get("parallel") and not ser.targetoptions.get("parallel")
        assert par._cache._cache_file._index_name != ser._cache._cache_file._index_name
        assert par.py_func.__code__ is ser.py_func.__code__          # one body, two builds
