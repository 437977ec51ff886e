"""Camera branch: backbones (shapes, local checkpoints), GeneralizedLSSFPN, and the tiny camera encoder end to end."""
from __future__ import annotations

import pytest
import torch
import torchvision

from sparse3d.models.bevfusion import (CameraEncoder, DepthLSSTransform, GeneralizedLSSFPN, LSSTransform,
                                       ResNetBackbone, SwinTBackbone)
from sparse3d.models.bevfusion.camera import load_pretrained

TINY = dict(xbound=(-51.2, 51.2, 0.8), ybound=(-51.2, 51.2, 0.8), zbound=(-5.0, 3.0, 8.0), dbound=(1.0, 49.0, 2.0))


def _rig(B, N, H, W):
    """A ring of N cameras (yaw 2 pi n / N) with a simple pinhole and identity augmentations."""
    c2l = torch.eye(4).repeat(B, N, 1, 1)
    for n in range(N):
        a = 2 * torch.pi * n / N
        ca, sa = float(torch.cos(torch.tensor(a))), float(torch.sin(torch.tensor(a)))
        c2l[:, n, :3, :3] = torch.tensor([[sa, 0.0, ca], [-ca, 0.0, sa], [0.0, -1.0, 0.0]])
        c2l[:, n, :3, 3] = torch.tensor([0.5 * ca, 0.5 * sa, 1.6])
    K = torch.eye(4).repeat(B, N, 1, 1)
    K[..., 0, 0] = K[..., 1, 1] = 0.6 * W
    K[..., 0, 2], K[..., 1, 2] = W / 2, H / 2
    return c2l, K, torch.eye(4).repeat(B, N, 1, 1), torch.eye(4).repeat(B, 1, 1)


def test_resnet_shapes_and_channels():
    torch.manual_seed(0)
    bb = ResNetBackbone(18)
    with torch.no_grad():
        outs = bb(torch.randn(1, 3, 128, 352))
    assert [tuple(o.shape) for o in outs] == [(1, 128, 16, 44), (1, 256, 8, 22), (1, 512, 4, 11)]
    assert bb.out_channels == [128, 256, 512] and bb.strides == [8, 16, 32]
    bb50 = ResNetBackbone(50, out_indices=(0, 1))
    with torch.no_grad():
        outs = bb50(torch.randn(1, 3, 64, 96))
    assert [tuple(o.shape) for o in outs] == [(1, 256, 16, 24), (1, 512, 8, 12)] and bb50.out_channels == [256, 512]
    with pytest.raises(ValueError, match="depth must be one of"):
        ResNetBackbone(101)
    with pytest.raises(ValueError, match="out_indices"):
        ResNetBackbone(18, out_indices=(2, 1))
    with pytest.raises(ValueError, match=r"images must be \[B\*N, 3, H, W\]"):
        bb(torch.randn(1, 1, 64, 64))


def test_swin_shapes_and_torchvision_checkpoint(tmp_path):
    torch.manual_seed(0)
    sw = torchvision.models.swin_t(weights=None)
    torch.save(sw.state_dict(), tmp_path / "swin_t.pth")  # head.* and the final norm.* are ignored
    bb = SwinTBackbone(pretrained=tmp_path / "swin_t.pth")
    assert torch.equal(bb.features[0][0].weight, sw.features[0][0].weight)
    assert torch.equal(bb.features[5][3].attn.qkv.weight, sw.features[5][3].attn.qkv.weight)
    with torch.no_grad():
        outs = bb(torch.randn(1, 3, 64, 176))
    assert [tuple(o.shape) for o in outs] == [(1, 192, 8, 22), (1, 384, 4, 11), (1, 768, 2, 6)]
    assert bb.out_channels == [192, 384, 768]


def test_pretrained_loading(tmp_path):
    torch.manual_seed(0)
    src = ResNetBackbone(18)
    p = tmp_path / "ours.pth"
    torch.save({"state_dict": {"backbone." + k: v for k, v in src.state_dict().items()}}, p)
    dst = ResNetBackbone(18, pretrained=str(p))
    for k, v in src.state_dict().items():
        assert torch.equal(v, dst.state_dict()[k]), k
    # a torchvision checkpoint (with its fc classifier) loads as is
    tv = torchvision.models.resnet18(weights=None)
    torch.save(tv.state_dict(), tmp_path / "resnet18.pth")
    dst = ResNetBackbone(18, pretrained=tmp_path / "resnet18.pth")
    assert torch.equal(dst.conv1.weight, tv.conv1.weight) and torch.equal(dst.layer4[1].conv2.weight,
                                                                          tv.layer4[1].conv2.weight)
    with pytest.raises(FileNotFoundError, match="never downloaded"):
        ResNetBackbone(18, pretrained=tmp_path / "missing.pth")
    sd = tv.state_dict()
    torch.save({**sd, "conv1.weight": torch.zeros(64, 3, 3, 3)}, tmp_path / "shape.pth")
    with pytest.raises(ValueError, match=r"shape mismatches: conv1.weight: checkpoint \(64, 3, 3, 3\)"):
        ResNetBackbone(18, pretrained=tmp_path / "shape.pth")
    del sd["layer1.0.conv1.weight"]
    sd["extra.weight"] = torch.zeros(1)
    torch.save(sd, tmp_path / "broken.pth")
    with pytest.raises(ValueError, match=r"missing keys: layer1.0.conv1.weight.*unexpected keys: extra.weight"):
        ResNetBackbone(18, pretrained=tmp_path / "broken.pth")
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="could not be read"):
        ResNetBackbone(18, pretrained=tmp_path / "garbage.pth")
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(ValueError, match="state dict"):
        load_pretrained(ResNetBackbone(18), tmp_path / "list.pth")


def test_generalized_lss_fpn():
    torch.manual_seed(0)
    neck = GeneralizedLSSFPN([128, 256, 512], 64, num_outs=3)
    # the coarsest pair sees the raw coarse input, the finer one the fused output (as upstream)
    assert neck.lateral_convs[1][0].in_channels == 256 + 512 and neck.lateral_convs[0][0].in_channels == 128 + 64
    xs = [torch.randn(2, 128, 16, 44), torch.randn(2, 256, 8, 22), torch.randn(2, 512, 4, 11)]
    outs = neck(xs)
    assert [tuple(o.shape) for o in outs] == [(2, 64, 16, 44), (2, 64, 8, 22)]
    # the finest output depends on the coarsest input (top-down path)
    xs2 = [xs[0], xs[1], xs[2] + 1.0]
    assert not torch.allclose(neck.eval()(xs2)[0], neck(xs)[0])
    n2 = GeneralizedLSSFPN([64, 128, 256, 512], 32, start_level=1)
    assert [tuple(o.shape) for o in n2([torch.randn(1, 64, 32, 88)] + xs_b1(xs))] == [(1, 32, 16, 44), (1, 32, 8, 22)]
    with pytest.raises(ValueError, match="expected 3 feature maps"):
        neck(xs[:2])
    with pytest.raises(ValueError, match=r"inputs\[1\] must be \[B, 256"):
        neck([xs[0], xs[0], xs[2]])
    with pytest.raises(ValueError, match="start_level"):
        GeneralizedLSSFPN([8, 16], 8, start_level=1)


def xs_b1(xs):
    return [x[:1] for x in xs]


@pytest.mark.parametrize("image,feat,N", [((128, 352), (16, 44), 2), ((64, 176), (8, 22), 6)])
def test_tiny_camera_encoder_lss_trains(image, feat, N):
    torch.manual_seed(0)
    B = 1
    bb = ResNetBackbone(18)
    neck = GeneralizedLSSFPN(bb.out_channels, 64)
    vt = LSSTransform(64, 32, image, feat, **TINY)
    enc = CameraEncoder(bb, neck, vt)
    img = torch.randn(B, N, 3, *image)
    mats = _rig(B, N, *image)
    out = enc(img, None, *mats)
    assert out.shape == (B, 32, 128, 128) and torch.isfinite(out).all()
    loss = out.square().mean()
    loss.backward()
    assert bb.conv1.weight.grad is not None and bb.conv1.weight.grad.abs().sum() > 0
    assert vt.depthnet.weight.grad.abs().sum() > 0
    # the BEV is non-zero only where some camera frustum reaches (a ring around the ego car)
    occ = out.detach().abs().sum(1)[0] > 0
    assert 0.02 < occ.float().mean() < 1.0


def test_realistic_feature_size_and_depth_lss():
    torch.manual_seed(0)
    B, N, image, feat = 1, 2, (256, 704), (32, 88)
    bb = ResNetBackbone(18)
    neck = GeneralizedLSSFPN(bb.out_channels, 64)
    vt = DepthLSSTransform(64, 16, image, feat, **TINY)
    enc = CameraEncoder(bb, neck, vt).eval()
    mats = _rig(B, N, *image)
    pts = [torch.cat([torch.randn(2000, 3) * 15, torch.zeros(2000, 2)], 1)]
    with torch.no_grad():
        out = enc(torch.randn(B, N, 3, *image), pts, *mats)
    assert out.shape == (B, 16, 128, 128) and torch.isfinite(out).all()
    with pytest.raises(ValueError, match=r"img must be \[B, N, 3, H, W\]"):
        enc(torch.randn(N, 3, *image), pts, *mats)
