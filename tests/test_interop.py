"""sparse3d.interop: spconv tensor/weight/state-dict conversion and TorchSparse weight layouts."""
from __future__ import annotations

import sys
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from conftest import random_coords, run_spconv
from sparse3d import SparseTensor
from sparse3d import nn as snn
from sparse3d.interop import spconv as isp
from sparse3d.interop import torchsparse as its
from sparse3d.nn import functional as F
from sparse3d.ops.conv.reference import conv_bruteforce

warnings.filterwarnings("ignore", category=FutureWarning, module="spconv")


def _x(n=300, extent=12, low=-6, stride=(1, 1, 1), cin=4, seed=0, batch=2):
    c = random_coords(n, extent=extent, batch=batch, seed=seed, low=low)
    c[:, 1:] *= torch.tensor(stride, dtype=torch.int32)
    g = torch.Generator().manual_seed(seed + 1)
    return SparseTensor(torch.randn(c.shape[0], cin, generator=g), c, stride)


def _sorted(coords, feats):
    c = coords.long()
    perm = torch.from_numpy(np.lexsort(c.numpy().T[::-1].copy()))
    return c[perm], feats[perm]


# ============================================================================= spconv: tensors
def test_require_spconv_missing_raises_clear_import_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "spconv", None)
    monkeypatch.setitem(sys.modules, "spconv.pytorch", None)
    with pytest.raises(ImportError, match="spconv"):
        isp.require_spconv()
    with pytest.raises(ImportError, match="pip install"):
        isp.to_spconv(_x())
    # weight conversion is pure torch and works without spconv
    assert isp.weight_from_spconv(torch.zeros(2, 3, 3, 3, 4)).shape == (27, 4, 2)


@pytest.mark.parametrize("axes", ["xyz", "zyx"])
@pytest.mark.parametrize("stride", [(1, 1, 1), (2, 2, 2), (1, 2, 4)])
def test_tensor_roundtrip_with_origin(stride, axes):
    pytest.importorskip("spconv.pytorch")
    x = _x(stride=stride)
    assert (x.coords[:, 1:] < 0).any()
    org = isp.origin_for(x, tuple(2 * s for s in stride))
    assert all(o % (2 * s) == 0 for o, s in zip(org, stride))
    t = isp.to_spconv(x, origin=org, axes=axes)
    perm = [0, 1, 2] if axes == "xyz" else [2, 1, 0]
    expect = ((x.coords[:, 1:].long() - torch.tensor(org)) // torch.tensor(stride))[:, perm]
    assert t.indices.dtype == torch.int32 and t.indices.is_contiguous()
    assert torch.equal(t.indices[:, 1:].long(), expect)
    assert torch.equal(t.indices[:, 0], x.coords[:, 0])
    assert (t.indices[:, 1:] >= 0).all()
    assert t.spatial_shape == (expect.max(0).values + 1).tolist()
    assert t.batch_size == 2
    assert t.features is x.feats
    back = isp.from_spconv(t, stride, origin=org, axes=axes)
    assert back.stride == stride
    assert torch.equal(back.coords, x.coords)
    assert back.feats is x.feats


def test_to_spconv_negative_coords_without_origin_raise():
    pytest.importorskip("spconv.pytorch")
    x = _x()
    with pytest.raises(ValueError, match="origin"):
        isp.to_spconv(x)
    # non-negative coordinates need no origin; index == coordinate
    y = _x(low=0)
    t = isp.to_spconv(y)
    assert torch.equal(t.indices, y.coords)


def test_to_spconv_argument_checks():
    pytest.importorskip("spconv.pytorch")
    x2 = _x(low=0, stride=(2, 2, 2))
    with pytest.raises(ValueError, match="origin"):
        isp.to_spconv(x2, origin=(1, 0, 0))
    with pytest.raises(ValueError, match="spatial_shape"):
        isp.to_spconv(_x(low=0, extent=12), spatial_shape=(4, 4, 4))
    with pytest.raises(ValueError, match="axes"):
        isp.to_spconv(x2, axes="xzy")
    with pytest.raises(ValueError, match="batch_size"):
        isp.to_spconv(x2, batch_size=1)
    with pytest.raises(TypeError, match="SparseTensor"):
        isp.to_spconv(x2.feats)
    with pytest.raises(TypeError, match="SparseConvTensor"):
        isp.from_spconv(x2.feats)
    with pytest.raises(ValueError, match="origin"):
        isp.from_spconv(isp.to_spconv(x2), stride=2, origin=(3, 0, 0))


def test_to_spconv_spatial_shape_rounding_and_explicit():
    pytest.importorskip("spconv.pytorch")
    x = _x(low=0, extent=11)
    need = (x.coords[:, 1:].max(0).values + 1).tolist()
    t = isp.to_spconv(x, shape_multiple=(4, 1, 8))
    assert t.spatial_shape == [-(-need[0] // 4) * 4, need[1], -(-need[2] // 8) * 8]
    t = isp.to_spconv(x, spatial_shape=(40, 41, 42))
    assert t.spatial_shape == [40, 41, 42]


def test_empty_tensor_roundtrip():
    pytest.importorskip("spconv.pytorch")
    x = SparseTensor(torch.zeros(0, 3), torch.zeros(0, 4, dtype=torch.int32), 2)
    t = isp.to_spconv(x)
    assert t.batch_size == 1 and t.features.shape == (0, 3)
    back = isp.from_spconv(t, 2)
    assert back.coords.shape == (0, 4) and back.stride == (2, 2, 2)


def test_origin_for():
    c = torch.tensor([[0, -5, 3, 0], [1, 7, -9, 16]], dtype=torch.int32)
    assert isp.origin_for(c, 4) == (-8, -12, 0)
    assert isp.origin_for(c, (1, 2, 8)) == (-5, -10, 0)
    assert isp.origin_for(torch.zeros(0, 4, dtype=torch.int32), 4) == (0, 0, 0)


# ============================================================================= spconv: weights
@pytest.mark.parametrize("axes", ["xyz", "zyx"])
def test_weight_from_spconv_offset_order(axes):
    """A one-hot spconv tap at spatial index (ix, iy, iz) lands on k = ix + Kx*(iy + Ky*iz)."""
    ks = (2, 3, 4)
    cin, cout = 3, 2
    for ix, iy, iz in [(0, 0, 0), (1, 0, 0), (0, 2, 0), (1, 1, 3), (0, 2, 1)]:
        w = torch.zeros(cout, *(ks if axes == "xyz" else ks[::-1]), cin)
        idx = (ix, iy, iz) if axes == "xyz" else (iz, iy, ix)
        w[1, idx[0], idx[1], idx[2], 2] = 1.0
        ours = isp.weight_from_spconv(w, axes=axes)
        assert ours.shape == (24, cin, cout)
        nz = ours.nonzero().tolist()
        assert nz == [[ix + ks[0] * (iy + ks[1] * iz), 2, 1]]


@settings(max_examples=40, deadline=None)
@given(ks=st.tuples(*[st.integers(1, 4)] * 3), cin=st.integers(1, 3), cout=st.integers(1, 3),
       axes=st.sampled_from(["xyz", "zyx"]), layout=st.sampled_from(isp.LAYOUTS), conv1x1=st.booleans())
def test_weight_roundtrip_property(ks, cin, cout, axes, layout, conv1x1):
    K = ks[0] * ks[1] * ks[2]
    c1 = conv1x1 and K == 1 and layout == "KRSC"
    w = torch.randn(K, cin, cout, dtype=torch.float64)
    sw = isp.weight_to_spconv(w, ks, axes=axes, layout=layout, conv1x1=c1)
    sks = ks if axes == "xyz" else ks[::-1]
    expected = {"KRSC": (cout, *sks, cin), "RSCK": (*sks, cin, cout), "RSKC": (*sks, cout, cin)}[layout]
    assert sw.shape == expected
    assert torch.equal(isp.weight_from_spconv(sw, axes=axes, layout=layout, conv1x1=c1), w)


def test_weight_layouts_agree():
    w = torch.randn(5, 3, 1, 2, 4)  # KRSC, kernel (3, 1, 2)
    a = isp.weight_from_spconv(w)
    assert torch.equal(isp.weight_from_spconv(w.permute(1, 2, 3, 4, 0), layout="RSCK"), a)
    assert torch.equal(isp.weight_from_spconv(w.permute(1, 2, 3, 0, 4), layout="RSKC"), a)


def test_weight_conv1x1_storage():
    """spconv 2.x computes its 1x1 path as features @ weight.view(Cin, Cout) (issue #450)."""
    w = torch.randn(5, 1, 1, 1, 3)
    assert torch.equal(isp.weight_from_spconv(w)[0], w.view(3, 5))
    assert torch.equal(isp.weight_from_spconv(w, conv1x1=False)[0], w[:, 0, 0, 0, :].t())
    with pytest.raises(ValueError, match="conv1x1"):
        isp.weight_from_spconv(torch.randn(5, 3, 3, 3, 3), conv1x1=True)


def test_weight_conversion_bad_shapes():
    with pytest.raises(ValueError, match="5-D"):
        isp.weight_from_spconv(torch.zeros(27, 3, 4))
    with pytest.raises(ValueError, match="kernel_size"):
        isp.weight_to_spconv(torch.zeros(26, 3, 4), 3)
    with pytest.raises(ValueError, match="layout"):
        isp.weight_from_spconv(torch.zeros(2, 3, 3, 3, 4), layout="KCRS")
    assert isp.weight_to_spconv(torch.zeros(3, 4), 1).shape == (4, 1, 1, 1, 3)


# ============================================================================= spconv: state dicts
def _spconv_net(sp, record=False):
    from spconv.core import ConvAlgo
    torch.manual_seed(0)
    net = sp.SparseSequential(
        sp.SubMConv3d(4, 6, 3, bias=False, algo=ConvAlgo.Native, indice_key="s1"),
        nn.BatchNorm1d(6),
        nn.ReLU(),
        sp.SparseConv3d(6, 8, 2, 2, bias=False, algo=ConvAlgo.Native, record_voxel_count=record),
        sp.SubMConv3d(8, 5, 1, bias=False, algo=ConvAlgo.Native),
        sp.SubMConv3d(5, 3, (1, 3, 1), bias=False, algo=ConvAlgo.Native),
    )
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm1d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
                m.weight.normal_()
                m.bias.normal_()
            elif hasattr(m, "weight") and m.weight is not None and m.weight.dim() == 5:
                m.weight.normal_()
    return net.eval()


def _our_net(k_last=(1, 3, 1)):
    return nn.Sequential(
        snn.Conv3d(4, 6, 3), snn.BatchNorm(6), snn.ReLU(), snn.Conv3d(6, 8, 2, stride=2), snn.Conv3d(8, 5, 1),
        snn.Conv3d(5, 3, k_last)).eval()


def test_load_spconv_state_dict_forward_parity():
    sp = pytest.importorskip("spconv.pytorch")
    net = _spconv_net(sp)  # record_voxel_count needs CUDA in forward; its buffer is added by hand
    sd = net.state_dict()
    assert "3.max_num_voxels_during_training" in _spconv_net(sp, record=True).state_dict()
    sd["3.max_num_voxels_during_training"] = torch.zeros(1, dtype=torch.int32)
    ours = _our_net()
    res = isp.load_spconv_state_dict(ours, sd)
    assert not res.missing_keys and not res.unexpected_keys
    x = _x(n=800, extent=16, low=-8, cin=4, seed=3)
    org = isp.origin_for(x, 2)
    ref = isp.from_spconv(run_spconv(net, isp.to_spconv(x, origin=org, shape_multiple=2)), 2, origin=org)
    with torch.no_grad():
        y = ours(x)
    assert y.stride == (2, 2, 2)
    ca, fa = _sorted(y.coords, y.feats)
    cb, fb = _sorted(ref.coords, ref.feats)
    assert torch.equal(ca, cb)
    assert float((fa - fb).abs().max()) <= 1e-4 * max(1.0, float(fb.abs().max()))


def test_state_dict_roundtrip_through_spconv_model():
    sp = pytest.importorskip("spconv.pytorch")
    net = _spconv_net(sp)
    ours = _our_net()
    plain = isp.state_dict_from_spconv(net.state_dict())
    ours.load_state_dict(plain)  # strict: names and shapes fit
    back = isp.state_dict_to_spconv(ours.state_dict(), ours)
    net2 = _spconv_net(sp)
    for m in net2.modules():
        if hasattr(m, "weight") and isinstance(m.weight, torch.Tensor):
            nn.init.zeros_(m.weight)
    net2.load_state_dict(back)
    for (k, a), (_, b) in zip(net.state_dict().items(), net2.state_dict().items()):
        assert torch.equal(a, b), k
    # a kernel-size mapping works as well as the model (stride-1 kernel-1 convs use the 1x1 storage)
    ks = {"0": 3, "3": 2, "4": 1, "5": (1, 3, 1)}
    back2 = isp.state_dict_to_spconv(ours.state_dict(), ks)
    for k in back:
        assert torch.equal(back[k], back2[k]), k


def test_state_dict_from_spconv_convs_and_drops():
    sd = {"a.weight": torch.randn(4, 3, 3, 3, 2), "a.max_num_voxels_during_training": torch.zeros(1),
          "dense.weight": torch.randn(4, 2, 3, 3, 3), "bn.weight": torch.randn(4),
          "s.weight": torch.randn(4, 1, 1, 1, 2)}
    out = isp.state_dict_from_spconv(sd, convs=["a", "s"], strided_1x1=["s"])
    assert "a.max_num_voxels_during_training" not in out
    assert out["a.weight"].shape == (27, 2, 4)
    assert out["dense.weight"] is sd["dense.weight"]  # excluded: not a sparse conv
    assert out["bn.weight"] is sd["bn.weight"]
    assert torch.equal(out["s.weight"][0], sd["s.weight"][:, 0, 0, 0, :].t())
    default = isp.state_dict_from_spconv(sd)
    assert default["dense.weight"].shape == (18, 3, 4)  # documented: every 5-D weight is read as KRSC
    with pytest.raises(ValueError, match="missing"):
        isp.state_dict_from_spconv(sd, convs=["nope"])


def test_load_spconv_state_dict_kernel_mismatch_names_key():
    sp = pytest.importorskip("spconv.pytorch")
    sd = _spconv_net(sp).state_dict()
    with pytest.raises(ValueError, match=r"^5\.weight"):
        isp.load_spconv_state_dict(_our_net(k_last=(3, 1, 1)), sd)


# ============================================================================= torchsparse
def ts_kernel_offsets(ks, tensor_stride=(1, 1, 1), dilation=(1, 1, 1)):
    """TorchSparse's offsets (``torchsparse/nn/utils/kernel.py``), re-implemented from its documentation:
    per axis ``arange(-K//2 + 1, K//2 + 1) * t * d``; x fastest for an odd kernel volume, z fastest otherwise."""
    ax = [np.arange(-k // 2 + 1, k // 2 + 1) * t * d for k, t, d in zip(ks, tensor_stride, dilation)]
    if np.prod(ks) % 2 == 1:
        offs = [[x, y, z] for z in ax[2] for y in ax[1] for x in ax[0]]
    else:
        offs = [[x, y, z] for x in ax[0] for y in ax[1] for z in ax[2]]
    return torch.tensor(offs, dtype=torch.int32)


@pytest.mark.parametrize("ks,stride,t", [
    pytest.param(3, 1, 1, id="k3"),
    pytest.param((1, 1, 3), 1, 1, id="k113"),
    pytest.param((3, 1, 5), 1, 1, id="k315"),
    pytest.param(2, 2, 1, id="k2s2"),
    pytest.param(2, 2, 2, id="k2s2-t2"),
    pytest.param((1, 1, 2), (1, 1, 2), 1, id="k112-s112"),
    pytest.param((3, 1, 2), 1, 1, id="k312-even-volume"),
    pytest.param((2, 3, 1), 1, 2, id="k231-even-volume-t2"),
])
def test_torchsparse_weights_match_torchsparse_offsets(ks, stride, t):
    ks3 = (ks,) * 3 if isinstance(ks, int) else ks
    t3 = (t,) * 3
    K = int(np.prod(ks3))
    x = _x(n=250, extent=8, low=-4, stride=t3, cin=3, seed=5)
    w_ts = torch.randn(K, 3, 4, dtype=torch.float64)
    xd = SparseTensor(x.feats.double(), x.coords, t3)
    y = F.conv3d(xd, its.weight_from_torchsparse(w_ts, ks3), ks3, stride=stride)
    ref = conv_bruteforce(xd.coords, xd.feats, y.coords, w_ts, ts_kernel_offsets(ks3, t3))
    torch.testing.assert_close(y.feats, ref)
    assert torch.equal(its.weight_to_torchsparse(its.weight_from_torchsparse(w_ts, ks3), ks3, stride), w_ts)


def test_torchsparse_transposed_uses_same_offsets():
    x = _x(n=250, extent=8, low=-4, cin=3, seed=6)
    xd = SparseTensor(x.feats.double(), x.coords)
    down = F.conv3d(xd, torch.randn(8, 3, 3, dtype=torch.float64), 2, stride=2)
    w_ts = torch.randn(8, 3, 4, dtype=torch.float64)
    up = F.conv3d(down, its.weight_from_torchsparse(w_ts, 2), 2, stride=2, transposed=True)
    # transposed: fine(c) += coarse(o) @ W[k] for every pair c = o + off_k
    offs = ts_kernel_offsets((2, 2, 2))
    ref = torch.zeros(up.coords.shape[0], 4, dtype=torch.float64)
    for k in range(8):
        q = down.coords.long().clone()
        q[:, 1:] += offs[k].long()
        eq = (up.coords.long()[:, None, :] == q[None, :, :]).all(-1).double()  # [fine, coarse]
        ref += eq @ down.feats @ w_ts[k]
    torch.testing.assert_close(up.feats, ref)


def test_torchsparse_kernel_1_layouts():
    w2 = torch.randn(3, 4)
    assert torch.equal(its.weight_from_torchsparse(w2, 1), w2.unsqueeze(0))
    assert torch.equal(its.weight_to_torchsparse(w2.unsqueeze(0), 1), w2)
    assert its.weight_to_torchsparse(w2.unsqueeze(0), 1, stride=2).shape == (1, 3, 4)
    with pytest.raises(ValueError, match="kernel_size"):
        its.weight_from_torchsparse(w2, 3)


def test_torchsparse_bad_inputs():
    with pytest.raises(ValueError, match="size >= 4"):
        its.weight_from_torchsparse(torch.zeros(64, 2, 2), 4)
    with pytest.raises(ValueError, match="size >= 4"):
        its.weight_to_torchsparse(torch.zeros(4, 2, 2), (1, 1, 4))
    with pytest.raises(ValueError, match="offsets"):
        its.weight_from_torchsparse(torch.zeros(26, 2, 2), 3)
    with pytest.raises(ValueError, match=r"\[K, Cin, Cout\]"):
        its.weight_from_torchsparse(torch.zeros(2, 2, 2, 2), 2)


class _TsLike(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = snn.Conv3d(3, 4, 3)
        self.bn = snn.BatchNorm(4)
        self.down = snn.Conv3d(4, 5, 2, stride=2)
        self.side = snn.Conv3d(5, 5, (1, 1, 2))
        self.head = snn.Conv3d(5, 2, 1)


def _ts_state_dict():
    g = torch.Generator().manual_seed(0)
    return {
        "stem.kernel": torch.randn(27, 3, 4, generator=g),
        "bn.weight": torch.randn(4, generator=g), "bn.bias": torch.randn(4, generator=g),
        "bn.running_mean": torch.randn(4, generator=g), "bn.running_var": torch.rand(4, generator=g) + 0.5,
        "bn.num_batches_tracked": torch.tensor(3),
        "down.kernel": torch.randn(8, 4, 5, generator=g),
        "side.kernel": torch.randn(2, 5, 5, generator=g),
        "head.kernel": torch.randn(5, 2, generator=g),
    }


def test_torchsparse_state_dict_roundtrip_and_load():
    sd = _ts_state_dict()
    model = _TsLike()
    res = its.load_torchsparse_state_dict(model, sd)
    assert not res.missing_keys and not res.unexpected_keys
    assert torch.equal(model.stem.weight, sd["stem.kernel"])
    assert torch.equal(model.down.weight, its.weight_from_torchsparse(sd["down.kernel"], 2))
    assert not torch.equal(model.down.weight, sd["down.kernel"])  # even kernels are reordered
    assert torch.equal(model.head.weight[0], sd["head.kernel"])
    assert torch.equal(model.bn.running_var, sd["bn.running_var"])
    back = its.state_dict_to_torchsparse(model.state_dict(), model)
    assert set(back) == set(sd)
    for k in sd:
        assert torch.equal(back[k], sd[k]), k
    # mapping specs (prefix -> kernel size / ConvSpec) give the same result
    specs = {"down": its.ConvSpec((2, 2, 2), (2, 2, 2)), "side": (1, 1, 2), "stem": 3, "head": 1}
    conv = its.state_dict_from_torchsparse(sd, specs)
    for k, v in model.state_dict().items():
        assert torch.equal(conv[k], v), k
    assert its.conv_specs(model)["down."] == its.ConvSpec((2, 2, 2), (2, 2, 2))


def test_torchsparse_state_dict_even_kernel_needs_spec():
    sd = _ts_state_dict()
    with pytest.raises(ValueError, match="down.kernel"):
        its.state_dict_from_torchsparse(sd)
    odd_only = {k: v for k, v in sd.items() if k.split(".")[0] in ("stem", "bn", "head")}
    out = its.state_dict_from_torchsparse(odd_only)  # odd volumes and 2-D kernels need no spec
    assert torch.equal(out["stem.weight"], sd["stem.kernel"]) and out["head.weight"].shape == (1, 5, 2)
