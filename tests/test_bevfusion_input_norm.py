"""SparseEncoder ``input_norm``: the raw point features (x, y, z, intensity, Δt) are standardized per channel
before the first convolution; one voxel and empty clouds still work; off by default (checkpoints unchanged)."""
from __future__ import annotations

import pytest
import torch

import sparse3d  # noqa: F401  (sets the OpenMP wait policy before torch work)
from sparse3d.models.bevfusion.lidar import LidarEncoder, SparseEncoder, Voxelization

PCR = (-51.2, -51.2, -5.0, 51.2, 51.2, 3.0)
SMALL = dict(base_channels=4, output_channels=4, encoder_channels=((4,), (4, 4), (4, 4)))


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def cloud(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    xy = (torch.rand(n, 2, generator=g) - 0.5) * 100
    z = torch.rand(n, 1, generator=g) * 4 - 2
    intensity = torch.rand(n, 1, generator=g) * 100
    dt = torch.randint(0, 10, (n, 1), generator=g).float() * 0.05
    return torch.cat([xy, z, intensity, dt], 1)


def encoder(input_norm):
    torch.manual_seed(0)
    vox = Voxelization((0.2, 0.2, 0.4), PCR, max_voxels=None)
    return LidarEncoder(vox, SparseEncoder(5, vox.sparse_shape, input_norm=input_norm, **SMALL))


def test_input_norm_standardizes_each_feature_before_conv_input():
    enc = encoder(True).train()
    seen = {}
    enc.backbone.conv_input.register_forward_pre_hook(lambda m, args: seen.setdefault("x", args[0]))
    with torch.no_grad():
        enc([cloud(3000, 0), cloud(2000, 1)])
    f = seen["x"].feats
    torch.testing.assert_close(f.mean(0), torch.zeros(5), atol=1e-4, rtol=0)
    var = f.var(0, unbiased=False)  # v / (v + eps), eps = 1e-3 (mmdet3d's sparse BN): ~0.9 for Δt (v ~ 0.01 s^2)
    assert ((var > 0.85) & (var < 1.0 + 1e-4)).all(), var
    assert enc.backbone.input_norm.running_var[4] < enc.backbone.input_norm.running_var[3]  # Δt vs intensity


def test_input_norm_one_voxel_and_empty_cloud():
    enc = encoder(True).eval()  # (one voxel in train mode has no batch statistics in any BatchNorm)
    with torch.no_grad():
        one = enc([torch.tensor([[1.0, 2.0, 0.0, 10.0, 0.0]])])
    assert one.shape == (1, enc.out_channels, 128, 128)
    assert torch.isfinite(one).all() and one.abs().sum() > 0
    for train in (True, False):
        enc.train(train)
        with torch.no_grad():
            empty = enc([torch.zeros(0, 5)])
        assert empty.shape == (1, enc.out_channels, 128, 128) and empty.abs().sum() == 0


def test_input_norm_is_off_by_default():
    enc = encoder(False)
    assert enc.backbone.input_norm is None
    assert not any("input_norm" in k for k in enc.state_dict())
    on = encoder(True)
    assert {k for k in on.state_dict() if "input_norm" in k} == {
        "backbone.input_norm.running_mean", "backbone.input_norm.running_var", "backbone.input_norm.num_batches_tracked"}
