"""MinkUNet18 (SPVNAS): parameter counts, forward/backward smoke, row order, parity with spconv."""
from __future__ import annotations

import sys

import pytest
import torch
from conftest import REPO, random_coords

import sparse3d
from sparse3d.models import MinkUNet
from sparse3d.models.spvnas import ResidualBlock, sparse_cat
from sparse3d.models.spvnas.minkunet import minkunet_channels


def _count_rule(cr: float, num_classes: int = 19) -> int:
    """Counting rule of the reference (segmentation.md): conv k^3*Cin*Cout, BN 2C, Linear + bias."""
    cs = [int(cr * c) for c in (32, 32, 64, 128, 256, 256, 128, 96, 96)]

    def res(a, b):
        return 27 * a * b + 27 * b * b + 4 * b + ((a * b + 2 * b) if a != b else 0)

    n = 27 * 4 * cs[0] + 27 * cs[0] ** 2 + 4 * cs[0]
    for i in range(1, 5):
        n += 8 * cs[i - 1] ** 2 + 2 * cs[i - 1] + res(cs[i - 1], cs[i]) + res(cs[i], cs[i])
    for i, skip in zip(range(5, 9), (cs[3], cs[2], cs[1], cs[0])):
        n += 8 * cs[i - 1] * cs[i] + 2 * cs[i] + res(cs[i] + skip, cs[i]) + res(cs[i], cs[i])
    return n + cs[8] * num_classes + num_classes


def _nparams(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("cr,millions", [(0.5, 5.44), (0.64, 8.77), (1.0, 21.72)])
def test_parameter_counts(cr, millions):
    n = _nparams(MinkUNet(in_channels=4, num_classes=19, cr=cr))
    assert round(n / 1e6, 2) == millions
    assert n == _count_rule(cr)


def test_channel_truncation_like_spvnas():
    # spvnas: cs = [int(cr * x) for x in cs] (truncation, not rounding)
    assert minkunet_channels(0.64) == [20, 20, 40, 81, 163, 163, 81, 61, 61]
    assert minkunet_channels(1.0) == [32, 32, 64, 128, 256, 256, 128, 96, 96]


def _cloud(n=1500, extent=24, batch=2, seed=0, low=-9, cin=4):
    c = random_coords(n, extent=extent, batch=batch, seed=seed, low=low)
    g = torch.Generator().manual_seed(seed)
    return sparse3d.SparseTensor(torch.randn(len(c), cin, generator=g), c)


def test_forward_backward_smoke():
    torch.manual_seed(0)
    model = MinkUNet(in_channels=4, num_classes=7, cr=0.25)
    x = _cloud()
    out = model(x)
    assert out.shape == (len(x), 7) and out.dtype == torch.float32
    target = torch.randint(0, 7, (len(x),), generator=torch.Generator().manual_seed(1))
    loss = torch.nn.functional.cross_entropy(out, target)
    assert torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    # every conv weight receives gradient (no dead branch in the U-Net wiring)
    for name, m in model.named_modules():
        if isinstance(m, sparse3d.nn.Conv3d):
            assert m.weight.grad.abs().sum() > 0, name


@pytest.mark.parametrize("arch", ["minkunet", "spvcnn"])
def test_rows_follow_input_order(arch):
    """Output rows follow the input row order (MinkUNet and SPVCNN)."""
    from sparse3d.models.spvnas.spvcnn import SPVCNN
    torch.manual_seed(0)
    model = (MinkUNet if arch == "minkunet" else SPVCNN)(cr=0.25).eval()
    x = _cloud(seed=3)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        a = model(x)
        b = model(sparse3d.SparseTensor(x.feats[perm], x.coords[perm]))
    torch.testing.assert_close(b, a[perm], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("n", [0, 1])
def test_tiny_inputs_eval(n):
    model = MinkUNet(cr=0.25).eval()
    c = torch.full((n, 4), -7, dtype=torch.int32)
    c[:, 0] = 0
    with torch.no_grad():
        out = model(sparse3d.SparseTensor(torch.randn(n, 4), c))
    assert out.shape == (n, 19)
    assert torch.isfinite(out).all()


def test_batch_samples_are_independent():
    # the same cloud in sample 0 alone and next to another sample gives the same logits (eval)
    torch.manual_seed(0)
    model = MinkUNet(cr=0.25).eval()
    x = _cloud(batch=1, seed=5)
    other = _cloud(batch=1, seed=6)
    both = sparse3d.sparse_collate([x, other])
    with torch.no_grad():
        a = model(x)
        b = model(both)[: len(x)]
    torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)


def test_bad_inputs():
    model = MinkUNet(cr=0.25)
    with pytest.raises(ValueError, match="in_channels"):
        model(_cloud(cin=3))
    with pytest.raises(TypeError, match="SparseTensor"):
        model(torch.randn(4, 4))
    with pytest.raises(ValueError, match="cr"):
        MinkUNet(cr=0)
    with pytest.raises(ValueError, match="cr"):
        MinkUNet(cr=0.01)


def test_residual_block_shortcut():
    assert len(ResidualBlock(8, 8).downsample) == 0
    assert len(ResidualBlock(8, 16).downsample) == 2


def test_sparse_cat():
    x = _cloud(n=50)
    y = sparse_cat([x, x.replace(x.feats * 2)])
    assert y.feats.shape == (len(x), 8) and y.coords is x.coords
    torch.testing.assert_close(y.feats[:, 4:], 2 * x.feats)
    with pytest.raises(ValueError, match="coords"):
        sparse_cat([x, _cloud(n=50, seed=9)])
    with pytest.raises(ValueError, match="at least one"):
        sparse_cat([])


@pytest.mark.slow
@pytest.mark.parametrize("cr", [0.25, 0.5])
def test_parity_with_spconv(cr):
    pytest.importorskip("spconv")
    sys.path.insert(0, str(REPO / "tools"))
    try:
        from _spconv_minkunet import SpconvMinkUNet, _weight_to_spconv, load_from_sparse3d, to_spconv_tensor
    finally:
        sys.path.remove(str(REPO / "tools"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the spconv CPU build is racy with more than one thread
    try:
        torch.manual_seed(0)
        model = MinkUNet(cr=cr).eval()
        with torch.no_grad():  # non-trivial BN statistics
            for m in model.modules():
                if isinstance(m, torch.nn.BatchNorm1d):
                    m.running_mean.uniform_(-0.2, 0.2)
                    m.running_var.uniform_(0.5, 1.5)
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.uniform_(-0.2, 0.2)
        twin = load_from_sparse3d(SpconvMinkUNet(cr=cr), model).eval()
        # the private fallback converter agrees with the one used (sparse3d.interop when present)
        for name, m in model.named_modules():
            if isinstance(m, sparse3d.nn.Conv3d) and m.kernel_volume > 1:
                assert torch.equal(_weight_to_spconv(m.weight.detach(), m.kernel_size),
                                   twin.get_submodule(name).weight.detach()), name
        x = _cloud(n=4000, extent=40, low=-17, seed=1)  # negative coords, 2 samples
        with torch.no_grad():
            ours = model(x)
            sp_in = to_spconv_tensor(x.feats, x.coords)
            theirs = twin(sp_in)
        assert ours.shape == theirs.shape == (len(x), 19)
        # sort both by coordinates (spconv rows follow its own index order)
        key = lambda c: ((c[:, 0].long() * 4096 + c[:, 1]) * 4096 + c[:, 2]) * 4096 + c[:, 3]  # noqa: E731
        ours = ours[torch.argsort(key(x.coords.long()))]
        theirs = theirs[torch.argsort(key(sp_in.indices.long()))]
        scale = ours.abs().max()
        assert scale > 0
        assert (ours - theirs).abs().max() <= 1e-4 * scale
    finally:
        torch.set_num_threads(threads)
