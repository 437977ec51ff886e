"""BatchNorm folding for inference (sparse3d.nn.utils.fuse_bn_eval / fuse_conv_bn_eval)."""
import pytest
import torch
from torch import nn

from conftest import random_coords
from sparse3d import SparseTensor
import sparse3d.nn as spnn
from sparse3d.nn.utils import fuse_bn_eval, fuse_conv_bn_eval


def _bn(c, seed):
    g = torch.Generator().manual_seed(seed)
    bn = spnn.BatchNorm(c).double()
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(c, generator=g, dtype=torch.float64))
        bn.running_var.copy_(torch.rand(c, generator=g, dtype=torch.float64) + 0.3)
        bn.weight.copy_(torch.randn(c, generator=g, dtype=torch.float64))
        bn.bias.copy_(torch.randn(c, generator=g, dtype=torch.float64))
    return bn.eval()


@pytest.mark.parametrize("ks,stride,bias", [(3, 1, False), (3, 1, True), (2, 2, False), (1, 1, True), (3, 2, True)])
def test_conv_bn_fold_equals_bn_of_conv(ks, stride, bias):
    torch.manual_seed(0)
    coords = random_coords(300, extent=12, batch=2, seed=1, low=-6)
    x = SparseTensor(torch.randn(len(coords), 5, dtype=torch.float64), coords)
    conv = spnn.Conv3d(5, 7, ks, stride=stride, bias=bias).double().eval()
    bn = _bn(7, 2)
    with torch.no_grad():
        ref = bn(conv(x))
        fused = fuse_conv_bn_eval(conv, bn)
        out = fused(SparseTensor(x.feats, x.coords))
    assert fused.bias is not None and fused.weight.shape == conv.weight.shape
    assert torch.equal(out.coords, ref.coords)
    torch.testing.assert_close(out.feats, ref.feats, rtol=1e-10, atol=1e-10)
    assert conv.bias is None or conv.bias.requires_grad   # the original is untouched


def test_transposed_conv_bn_fold():
    coords = random_coords(200, extent=10, batch=1, seed=3)
    x = SparseTensor(torch.randn(len(coords), 4, dtype=torch.float64), coords)
    down = spnn.Conv3d(4, 6, 2, stride=2).double().eval()
    up = spnn.Conv3d(6, 3, 2, stride=2, transposed=True).double().eval()
    bn = _bn(3, 4)
    with torch.no_grad():
        y = down(x)
        ref = bn(up(y))
        out = fuse_conv_bn_eval(up, bn)(y)
    torch.testing.assert_close(out.feats, ref.feats, rtol=1e-10, atol=1e-10)


def _perturb_bn_stats(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm1d):
            with torch.no_grad():
                m.running_mean.copy_(0.3 * torch.randn(m.num_features, generator=g))
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(1 + 0.2 * torch.randn(m.num_features, generator=g))
                m.bias.copy_(0.2 * torch.randn(m.num_features, generator=g))


def test_fuse_bn_eval_spvcnn_matches_and_removes_norms():
    from sparse3d.models.spvnas import SPVCNN
    torch.manual_seed(0)
    model = SPVCNN(in_channels=4, num_classes=5, cr=0.25, dropout=0.0)
    _perturb_bn_stats(model)
    model.eval()
    coords = random_coords(600, extent=24, batch=2, seed=5)
    x = SparseTensor(torch.randn(len(coords), 4), coords)
    fused = fuse_bn_eval(model)
    n_bn = sum(isinstance(m, nn.BatchNorm1d) for m in model.modules())
    assert n_bn > 0 and sum(isinstance(m, nn.BatchNorm1d) for m in fused.modules()) == 0
    assert sum(isinstance(m, nn.BatchNorm1d) for m in model.modules()) == n_bn   # copy, not in place
    with torch.no_grad():
        ref = model(SparseTensor(x.feats, x.coords))
        out = fused(SparseTensor(x.feats, x.coords))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


def test_fuse_bn_eval_calo_spvcnn_matches():
    from sparse3d.models.calo import CaloSPVCNN
    torch.manual_seed(1)
    model = CaloSPVCNN(in_channels=3, cr=0.25, res_blocks=1, devoxelize="nearest")
    _perturb_bn_stats(model, 1)
    model.eval()
    g = torch.Generator().manual_seed(2)
    pts = torch.cat([torch.zeros(300, 1), torch.rand(300, 3, generator=g) * 30 + torch.tensor([0, 0, 320.0])], 1)
    batch = {"points": pts, "feats": torch.rand(300, 3, generator=g), "offsets": torch.tensor([0, 300])}
    fused = fuse_bn_eval(model)
    with torch.no_grad():
        a, b = model(batch), fused(batch)
    for k in ("semantic_logits", "offset"):
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-4)


def test_fuse_bn_eval_rejects_training_mode_and_keeps_other_pairs():
    seq = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.BatchNorm1d(4))
    with pytest.raises(ValueError, match="eval mode"):
        fuse_bn_eval(seq)
    seq.eval()
    f = fuse_bn_eval(seq)
    assert isinstance(f[1], nn.Identity) and isinstance(f[3], nn.BatchNorm1d)   # a BN after ReLU stays
    x = torch.randn(6, 3)
    torch.testing.assert_close(f(x), seq(x))
    conv, bn = spnn.Conv3d(2, 3, 3).eval(), spnn.BatchNorm(4).eval()
    with pytest.raises(ValueError, match="channels"):
        fuse_conv_bn_eval(conv, bn)
    with pytest.raises(ValueError, match="eval mode"):
        fuse_conv_bn_eval(conv.train(), spnn.BatchNorm(3).eval())
