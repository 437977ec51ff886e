"""PVCNN / PVConv on CPU: PVCNN's voxelization definition, shapes, gradients, batch independence."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import sparse3d  # noqa: F401  (import order: sparse3d before torch work)
from sparse3d.models.pvcnn import PVCNN, PVConv, SharedMLP, Voxelization, normalize_coords


def _normalize_loop(coords: np.ndarray, r: int, normalize: bool, eps: float) -> np.ndarray:
    """PVCNN ``Voxelization.forward`` written out per cloud and per point, float64."""
    out = np.empty_like(coords, dtype=np.float64)
    for b in range(coords.shape[0]):
        pts = coords[b].T.astype(np.float64)  # [N, 3]
        n = pts - pts.mean(0)
        if normalize:
            radius = max(np.sqrt((p ** 2).sum()) for p in n)
            n = n / (radius * 2.0 + eps) + 0.5
        else:
            n = (n + 1) / 2.0
        out[b] = np.clip(n * r, 0, r - 1).T
    return out


@pytest.mark.parametrize("normalize,eps", [(True, 0.0), (True, 1e-3), (False, 0.0)])
def test_normalization_matches_pvcnn_definition(normalize, eps):
    g = torch.Generator().manual_seed(0)
    coords = torch.randn(3, 3, 57, generator=g, dtype=torch.float64) * 2.5 + 4.0
    for r in (1, 5, 16):
        got = normalize_coords(coords, r, normalize, eps)
        want = _normalize_loop(coords.numpy(), r, normalize, eps)
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-12, atol=1e-12)
        assert got.min() >= 0 and got.max() <= r - 1


def test_normalized_cloud_fits_the_grid():
    # normalize=True maps the bounding sphere (radius = farthest point) into [0, R]: no clamping needed
    g = torch.Generator().manual_seed(1)
    coords = torch.randn(2, 3, 200, generator=g, dtype=torch.float64) * 10 - 3
    r = 8
    c = coords - coords.mean(2, keepdim=True)
    unclamped = (c / (2 * c.norm(dim=1, keepdim=True).amax(2, keepdim=True)) + 0.5) * r
    assert unclamped.min() >= 0 and unclamped.max() <= r
    torch.testing.assert_close(normalize_coords(coords, r), unclamped.clamp(0, r - 1))


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 40), st.floats(-100, 100), st.floats(0.01, 50), st.integers(0, 10_000))
def test_normalization_invariant_to_translation_and_scale(n, shift, scale, seed):
    g = torch.Generator().manual_seed(seed)
    coords = torch.randn(2, 3, n, generator=g, dtype=torch.float64)
    a = normalize_coords(coords, 16)
    b = normalize_coords(coords * scale + shift, 16)
    assert torch.isfinite(b).all()
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_zero_radius_cloud_goes_to_centre():
    coords = torch.full((1, 3, 4), 2.5)  # upstream: 0/0 -> NaN
    out = normalize_coords(coords, 8)
    torch.testing.assert_close(out, torch.full_like(coords, 4.0))


def test_voxelization_grid_is_average_of_rounded_voxels():
    g = torch.Generator().manual_seed(2)
    B, C, N, R = 2, 3, 64, 4
    coords = torch.rand(B, 3, N, generator=g, dtype=torch.float64) * 5
    feats = torch.randn(B, C, N, generator=g, dtype=torch.float64)
    grid, norm = Voxelization(R)(feats, coords)
    assert grid.shape == (B, C, R, R, R)
    want = np.zeros((B, C, R, R, R))
    cnt = np.zeros((B, R, R, R))
    vox = np.round(norm.numpy()).astype(int)  # half to even, as torch.round / PVCNN
    for b in range(B):
        for i in range(N):
            x, y, z = vox[b, :, i]
            want[b, :, x, y, z] += feats[b, :, i].numpy()
            cnt[b, x, y, z] += 1
    want = np.where(cnt[:, None] > 0, want / np.maximum(cnt[:, None], 1), 0)
    np.testing.assert_allclose(grid.numpy(), want, rtol=1e-12, atol=1e-12)


def test_pvconv_shapes_and_gradcheck():
    torch.manual_seed(0)
    conv = PVConv(3, 4, kernel_size=3, resolution=3).double().train()
    g = torch.Generator().manual_seed(3)
    feats = torch.randn(2, 3, 8, generator=g, dtype=torch.float64, requires_grad=True)
    coords = torch.rand(2, 3, 8, generator=g, dtype=torch.float64)
    out, c = conv((feats, coords))
    assert out.shape == (2, 4, 8) and c is coords
    assert torch.autograd.gradcheck(lambda f: conv((f, coords))[0], (feats,), eps=1e-6, atol=1e-5)


def test_pvconv_is_voxel_plus_point_branch():
    torch.manual_seed(0)
    conv = PVConv(3, 6, resolution=8).eval()
    g = torch.Generator().manual_seed(4)
    feats, coords = torch.randn(2, 3, 30, generator=g), torch.randn(2, 3, 30, generator=g)
    out, _ = conv((feats, coords))
    grid, norm = conv.voxelization(feats, coords)
    voxel = sparse3d.nn.functional.trilinear_devoxelize(conv.voxel_layers(grid), norm, 8, False)
    torch.testing.assert_close(out, voxel + conv.point_features(feats))
    assert voxel.abs().sum() > 0


def test_pvcnn_structure():
    m = PVCNN(num_classes=13, in_channels=9)
    kinds = [(type(l).__name__, getattr(l, "resolution", None)) for l in m.point_features]
    assert kinds == [("PVConv", 32), ("PVConv", 16), ("PVConv", 16), ("PVConv", 16), ("SharedMLP", None)]
    assert m.point_features[-1].out_channels == 1024
    assert m.classifier[0][0].in_channels == 64 + 64 + 64 + 128 + 1024 + 128
    half = PVCNN(num_classes=13, in_channels=9, width_multiplier=0.5, voxel_resolution_multiplier=0.5)
    assert [getattr(l, "resolution", None) for l in half.point_features] == [16, 8, 8, 8, None]
    assert half.classifier[0][0].in_channels == 32 + 32 + 32 + 64 + 512 + 64


def test_pvcnn_forward_backward():
    torch.manual_seed(0)
    m = PVCNN(num_classes=5, in_channels=6, width_multiplier=0.125, voxel_resolution_multiplier=0.25)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 6, 256, generator=g)
    out = m(x)
    assert out.shape == (2, 5, 256) and out.dtype == torch.float32
    target = torch.randint(0, 5, (2, 256), generator=g)
    loss = torch.nn.functional.cross_entropy(out, target)
    assert torch.isfinite(loss)
    loss.backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    for name, mod in m.named_modules():
        if isinstance(mod, (torch.nn.Conv3d, torch.nn.Conv1d, torch.nn.Linear)):
            assert mod.weight.grad.abs().sum() > 0, name


def test_pvcnn_batch_samples_independent():
    torch.manual_seed(0)
    m = PVCNN(num_classes=4, in_channels=9, width_multiplier=0.125, voxel_resolution_multiplier=0.25).eval()
    g = torch.Generator().manual_seed(6)
    x = torch.randn(3, 9, 100, generator=g)
    x[1, :3] = x[1, :3] * 40 + 7  # a far larger, shifted cloud: normalization is per sample
    with torch.no_grad():
        full = m(x)
        for b in range(3):
            torch.testing.assert_close(full[b:b + 1], m(x[b:b + 1]), rtol=1e-4, atol=1e-5)


def test_single_point_cloud():
    m = PVCNN(num_classes=3, in_channels=3, width_multiplier=0.125, voxel_resolution_multiplier=0.25).eval()
    with torch.no_grad():
        out = m(torch.randn(1, 3, 1))
    assert out.shape == (1, 3, 1) and torch.isfinite(out).all()


def test_bad_input():
    m = PVCNN(num_classes=3, in_channels=9, width_multiplier=0.125)
    with pytest.raises(ValueError, match="inputs"):
        m(torch.randn(2, 6, 10))
    with pytest.raises(ValueError, match="inputs"):
        m(torch.randn(2, 9))
    with pytest.raises(ValueError, match="N = 0"):
        m(torch.randn(2, 9, 0))
    with pytest.raises(TypeError, match="Tensor"):
        m([1, 2, 3])
    with pytest.raises(ValueError, match="in_channels"):
        PVCNN(in_channels=2)
    with pytest.raises(ValueError, match="width_multiplier"):
        PVCNN(width_multiplier=0)
    with pytest.raises(ValueError, match="coords"):
        normalize_coords(torch.randn(2, 4, 5), 8)
    with pytest.raises(TypeError, match="coords"):
        normalize_coords(torch.zeros(2, 3, 5, dtype=torch.int32), 8)
    with pytest.raises(ValueError, match="resolution"):
        Voxelization(0)
    assert isinstance(SharedMLP(3, [4, 5])[3], torch.nn.Conv1d) and SharedMLP(3, [4, 5]).out_channels == 5
