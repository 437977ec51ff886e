"""SPVCNN (SPVNAS): parameter counts, forward/backward smoke, batch independence, row order, bad input."""
from __future__ import annotations

import pytest
import torch
from conftest import random_coords

import sparse3d
from sparse3d.models import MinkUNet
from sparse3d.models.spvnas.spvcnn import SPVCNN


def _nparams(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def _point_branch_rule(cr: float) -> int:
    """Three Linear(+bias) + BatchNorm1d (2C) layers: cs0 -> cs4 -> cs6 -> cs8."""
    cs = [int(cr * c) for c in (32, 32, 64, 128, 256, 256, 128, 96, 96)]
    return sum(a * b + b + 2 * b for a, b in ((cs[0], cs[4]), (cs[4], cs[6]), (cs[6], cs[8])))


@pytest.mark.parametrize("cr,millions", [(0.5, 5.45), (0.64, 8.79), (1.0, 21.78)])
def test_parameter_counts(cr, millions):
    n = _nparams(SPVCNN(in_channels=4, num_classes=19, cr=cr))
    assert round(n / 1e6, 2) == millions
    extra = n - _nparams(MinkUNet(in_channels=4, num_classes=19, cr=cr))
    assert extra == _point_branch_rule(cr)
    if cr == 1.0:
        assert round(extra / 1e6, 2) == 0.05  # "only ~0.06M more than MinkUNet18" (0.0547M)


def test_state_dict_names_extend_minkunet():
    # spvnas module names: MinkUNet weights load into SPVCNN, only the point branch is new
    mink, spv = MinkUNet(cr=0.25), SPVCNN(cr=0.25)
    missing, unexpected = spv.load_state_dict(mink.state_dict(), strict=False)
    assert not unexpected
    assert missing and all(k.startswith("point_transforms.") for k in missing)


def _cloud(n=1200, extent=20, batch=2, seed=0, low=-7, cin=4, dtype=torch.float32):
    c = random_coords(n, extent=extent, batch=batch, seed=seed, low=low)
    g = torch.Generator().manual_seed(seed)
    return sparse3d.SparseTensor(torch.randn(len(c), cin, generator=g, dtype=dtype), c)


def test_forward_backward_smoke():
    torch.manual_seed(0)
    model = SPVCNN(in_channels=4, num_classes=7, cr=0.25)
    x = _cloud()
    assert x.batch_size == 2
    out = model(x)
    assert out.shape == (len(x), 7) and out.dtype == torch.float32
    target = torch.randint(0, 7, (len(x),), generator=torch.Generator().manual_seed(1))
    loss = torch.nn.functional.cross_entropy(out, target)
    assert torch.isfinite(loss)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    for name, m in model.named_modules():
        if isinstance(m, (sparse3d.nn.Conv3d, torch.nn.Linear)):
            assert m.weight.grad.abs().sum() > 0, name  # every layer is wired into the loss


def test_batch_samples_independent():
    torch.manual_seed(0)
    model = SPVCNN(cr=0.25, num_classes=5).eval()
    with torch.no_grad():  # non-trivial running stats
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm1d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    x = _cloud(seed=4)
    with torch.no_grad():
        full = model(x)
        for b in range(2):
            rows = x.coords[:, 0] == b
            c = x.coords[rows].clone()
            c[:, 0] = 0
            single = model(sparse3d.SparseTensor(x.feats[rows], c))
            torch.testing.assert_close(full[rows], single, rtol=1e-4, atol=1e-5)


def test_single_voxel_and_large_coords():
    torch.manual_seed(0)
    model = SPVCNN(cr=0.25, num_classes=3).eval()
    one = sparse3d.SparseTensor(torch.randn(1, 4), torch.tensor([[0, -5, 7, 1]], dtype=torch.int32))
    with torch.no_grad():
        assert torch.isfinite(model(one)).all() and model(one).shape == (1, 3)
        x = _cloud(n=300, seed=5)
        shifted = sparse3d.SparseTensor(x.feats, x.coords + torch.tensor([0, 48000, -48000, 16000],
                                                                         dtype=torch.int32))
        # translation by multiples of 16 (the deepest stride) leaves the output unchanged
        torch.testing.assert_close(model(shifted), model(x), rtol=1e-4, atol=1e-5)


def test_bad_input():
    model = SPVCNN(cr=0.25)
    with pytest.raises(TypeError, match="SparseTensor"):
        model(torch.randn(10, 4))
    with pytest.raises(ValueError, match="in_channels"):
        model(_cloud(cin=3))
    with pytest.raises(ValueError, match="empty"):
        model(sparse3d.SparseTensor(torch.zeros(0, 4), torch.zeros(0, 4, dtype=torch.int32)))
    with pytest.raises(ValueError, match="dropout"):
        SPVCNN(dropout=1.5)
    with pytest.raises(ValueError, match="voxel_size"):
        SPVCNN(voxel_size=0)
    with pytest.raises(ValueError, match="cr"):
        SPVCNN(cr=-1)


@pytest.mark.parametrize("arch", ["spvcnn", "minkunet"])
def test_input_norm_standardizes_the_input_features(arch):
    """input_norm=True = the same network on per-feature standardized inputs (batch statistics in training,
    running ones in eval); it adds no parameters."""
    from sparse3d import SparseTensor
    from sparse3d.models.spvnas import MinkUNet, SPVCNN
    Net = SPVCNN if arch == "spvcnn" else MinkUNet
    torch.manual_seed(0)
    a, b = Net(cr=0.125, input_norm=True), Net(cr=0.125)
    b.load_state_dict({k: v for k, v in a.state_dict().items() if not k.startswith("input_norm.")})
    assert sum(p.numel() for p in a.parameters()) == sum(p.numel() for p in b.parameters())
    c = torch.unique(torch.randint(0, 40, (3000, 3), dtype=torch.int32), dim=0)
    c = torch.cat([torch.zeros(len(c), 1, dtype=torch.int32), c], 1)
    f = torch.cat([torch.randn(len(c), 3) * 15 + 3, torch.rand(len(c), 1)], 1)   # x, y, z in metres, remission
    a, b = a.double(), b.double()
    f = f.double()
    fn = (f - f.mean(0)) / torch.sqrt(f.var(0, unbiased=False) + 1e-5)
    if arch == "spvcnn":
        a.dropout.p = b.dropout.p = 0.0
    torch.testing.assert_close(a(SparseTensor(f, c)), b(SparseTensor(fn, c)))
    a.eval(), b.eval()
    rm, rv = a.input_norm.running_mean, a.input_norm.running_var
    torch.testing.assert_close(a(SparseTensor(f, c)), b(SparseTensor((f - rm) / torch.sqrt(rv + 1e-5), c)))
