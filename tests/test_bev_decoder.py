"""BEVFusion ConvFuser and the SECOND + SECONDFPN decoder: shapes, orientation, errors, gradients."""
from __future__ import annotations

import pytest
import torch

import sparse3d  # noqa: F401
from sparse3d.models.bevfusion.decoder import SECOND, SECONDFPN
from sparse3d.models.bevfusion.fuser import ConvFuser

torch.set_num_threads(2)


def test_conv_fuser_shapes_and_order():
    torch.manual_seed(0)
    f = ConvFuser([3, 5], 7).eval()
    cam, lid = torch.randn(2, 3, 16, 24), torch.randn(2, 5, 16, 24)
    out = f([cam, lid])
    assert out.shape == (2, 7, 16, 24) and bool((out >= 0).all())
    # it is exactly conv(cat([cam, lid])) -> BN -> ReLU
    ref = torch.relu(f[1](torch.nn.functional.conv2d(torch.cat([cam, lid], 1), f[0].weight, padding=1)))
    torch.testing.assert_close(out, ref)
    assert f[0].bias is None and f.out_channels == 7
    one = ConvFuser([4], 4)
    assert one([torch.randn(1, 4, 8, 8)]).shape == (1, 4, 8, 8)


def test_conv_fuser_bad_input():
    f = ConvFuser([3, 5], 7)
    with pytest.raises(ValueError, match="list of 2"):
        f([torch.randn(1, 3, 8, 8)])
    with pytest.raises(ValueError, match="list of 2"):
        f(torch.randn(1, 8, 8, 8))
    with pytest.raises(ValueError, match=r"inputs\[1\] has 4 channels"):
        f([torch.randn(1, 3, 8, 8), torch.randn(1, 4, 8, 8)])
    with pytest.raises(ValueError, match=r"inputs\[1\] has shape .*BEV grid"):
        f([torch.randn(1, 3, 8, 8), torch.randn(1, 5, 8, 4)])
    with pytest.raises(ValueError, match=r"inputs\[0\] must be"):
        f([torch.randn(3, 8, 8), torch.randn(1, 5, 8, 8)])
    with pytest.raises(ValueError, match="in_channels"):
        ConvFuser([], 3)


def test_conv_fuser_residual_starts_as_identity_and_learns():
    torch.manual_seed(0)
    f = ConvFuser([3, 5], 5, residual=1)
    cam, lidar = torch.randn(2, 3, 8, 6), torch.randn(2, 5, 8, 6).relu()
    for mode in (f.train, f.eval):
        mode()
        torch.testing.assert_close(f([cam, lidar]), lidar)   # the LiDAR map passes through unchanged
    f.train()
    opt = torch.optim.Adam(f.parameters(), 0.05)
    target = lidar + cam[:, :1].repeat(1, 5, 1, 1)   # "camera adds something"
    err0 = (f([cam, lidar]) - target).square().mean()
    for _ in range(100):
        loss = (f([cam, lidar]) - target).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss < 0.5 * err0 and f[1].weight.abs().sum() > 0 and len(f) == 2   # no ReLU
    g = ConvFuser([2, 3], 3, residual=1).double().eval()
    with torch.no_grad():
        g[1].weight.fill_(0.7)   # away from the zero init, so both paths carry gradient
    a, b = (torch.randn(1, c, 4, 3, dtype=torch.float64, requires_grad=True) for c in (2, 3))
    assert torch.autograd.gradcheck(lambda x, y: g([x, y]), (a, b))
    with pytest.raises(ValueError, match="residual"):
        ConvFuser([3, 5], 4, residual=1)
    with pytest.raises(ValueError, match="residual"):
        ConvFuser([3, 5], 5, residual=2)


def test_second_default_shapes():
    net = SECOND(8, [8, 8, 16], [1, 1, 1], [2, 2, 2])
    outs = net(torch.randn(2, 8, 32, 48))
    assert [tuple(o.shape) for o in outs] == [(2, 8, 16, 24), (2, 8, 8, 12), (2, 16, 4, 6)]
    fpn = SECONDFPN([8, 8, 16], [4, 4, 4], [1, 2, 4])
    y = fpn(outs)
    assert y.shape == (2, 12, 16, 24) and fpn.out_channels == 12
    assert isinstance(fpn.deblocks[0][0], torch.nn.ConvTranspose2d)  # stride 1 without use_conv_for_no_stride


def test_bevfusion_decoder_config():
    # BEVFusion: SECOND(in, [128, 256], [5, 5], [1, 2]) + SECONDFPN([128, 256], [256, 256], [1, 2], conv for stride 1);
    # the same structure at 1/16 of the width
    net = SECOND(16, [8, 16], layer_nums=[5, 5], layer_strides=[1, 2])
    fpn = SECONDFPN([8, 16], [16, 16], upsample_strides=[1, 2], use_conv_for_no_stride=True)
    assert isinstance(fpn.deblocks[0][0], torch.nn.Conv2d) and fpn.deblocks[0][0].kernel_size == (1, 1)
    assert isinstance(fpn.deblocks[1][0], torch.nn.ConvTranspose2d)
    n_conv = sum(isinstance(m, torch.nn.Conv2d) for m in net.modules())
    assert n_conv == 12
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            assert m.eps == 1e-3 and m.momentum == 0.01
    x = torch.randn(1, 16, 128, 128)
    y = fpn(net(x))
    assert y.shape == (1, 32, 128, 128)


def test_fractional_stride():
    fpn = SECONDFPN([4, 4], [2, 2], upsample_strides=[0.5, 1])
    assert fpn.deblocks[0][0].stride == (2, 2)
    y = fpn([torch.randn(1, 4, 16, 16), torch.randn(1, 4, 8, 8)])
    assert y.shape == (1, 4, 8, 8)
    with pytest.raises(ValueError, match="integer"):
        SECONDFPN([4], [2], upsample_strides=[1.5])
    with pytest.raises(ValueError, match="> 0"):
        SECONDFPN([4], [2], upsample_strides=[0])


@torch.no_grad()
def test_decoder_keeps_orientation():
    """A point response at cell (i, j) stays near (i, j) on a non-square grid (never transposed)."""
    torch.manual_seed(0)
    net = SECOND(4, [4, 8], [1, 1], [1, 2]).eval()
    fpn = SECONDFPN([4, 8], [4, 4], [1, 2], use_conv_for_no_stride=True).eval()
    for m in list(net.modules()) + list(fpn.modules()):
        if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
            m.weight.abs_()
        if isinstance(m, torch.nn.BatchNorm2d):
            m.bias.zero_()
    x = torch.zeros(1, 4, 40, 64)
    x[0, :, 6, 50] = 1.0
    y = fpn(net(x))
    assert y.shape == (1, 8, 40, 64)
    nz = (y[0].abs().sum(0) > 0).nonzero()
    assert len(nz) > 0
    # receptive field: two stride-1 3x3 convs + two 3x3 convs at stride 2 + 2x upsample -> within 8 cells
    assert int((nz[:, 0] - 6).abs().max()) <= 8 and int((nz[:, 1] - 50).abs().max()) <= 8
    assert y[0, :, 6, 50].sum() > 0


def test_decoder_gradients_finite():
    net = SECOND(6, [4, 8], [1, 1], [1, 2])
    fpn = SECONDFPN([4, 8], [4, 4], [1, 2], use_conv_for_no_stride=True)
    fuser = ConvFuser([3, 3], 6)
    a = torch.randn(2, 3, 16, 16, requires_grad=True)
    b = torch.randn(2, 3, 16, 16)
    y = fpn(net(fuser([a, b])))
    y.square().mean().backward()
    params = list(net.parameters()) + list(fpn.parameters()) + list(fuser.parameters())
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in params)
    assert a.grad is not None and torch.isfinite(a.grad).all() and bool((a.grad != 0).any())


def test_decoder_bad_input():
    net = SECOND(8, [8, 16], [1, 1], [1, 2])
    with pytest.raises(ValueError, match=r"\[B, 8, X, Y\]"):
        net(torch.randn(1, 4, 8, 8))
    with pytest.raises(ValueError, match="equal length"):
        SECOND(8, [8, 16], [1], [1, 2])
    fpn = SECONDFPN([8, 16], [4, 4], [1, 2])
    with pytest.raises(ValueError, match="different sizes"):
        fpn(net(torch.randn(1, 8, 15, 16)))  # odd grid: 15 -> 8 -> 16 != 15
    with pytest.raises(ValueError, match="list of 2"):
        fpn(torch.randn(1, 8, 8, 8))
    with pytest.raises(ValueError, match=r"x\[1\] must be"):
        fpn([torch.randn(1, 8, 8, 8), torch.randn(1, 8, 4, 4)])
