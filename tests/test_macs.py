"""MACs counter: hand-counted pairs, brute-force pair counts, dense layers, model invariants."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from conftest import KITTI_SCAN, random_coords
from torch import nn

import sparse3d
from sparse3d.models import MinkUNet
from sparse3d.models.pvcnn import PVConv
from sparse3d.models.spvnas.spvcnn import SPVCNN
from sparse3d.utils.macs import MacsReport, count_macs, scan_macs, sparse_conv_pairs


class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.sub = sparse3d.nn.Conv3d(2, 3, kernel_size=3)
        self.down = sparse3d.nn.Conv3d(3, 4, kernel_size=2, stride=2)
        self.up = sparse3d.nn.Conv3d(4, 5, kernel_size=2, stride=2, transposed=True)
        self.point = sparse3d.nn.Conv3d(5, 6, kernel_size=1)
        self.head = nn.Linear(6, 7)

    def forward(self, x):
        return self.head(self.point(self.up(self.down(self.sub(x)))).feats)


def test_hand_counted_pairs():
    # sample 0: two x-neighbours; sample 1: one voxel at the same xyz (must not pair across batches)
    coords = torch.tensor([[0, 0, 0, 0], [0, 1, 0, 0], [1, 0, 0, 0]], dtype=torch.int32)
    x = sparse3d.SparseTensor(torch.randn(3, 2), coords)
    rep = count_macs(_Tiny(), x)
    got = {L.name: (L.pairs, L.macs) for L in rep.layers}
    assert got == {
        "sub": (5, 5 * 2 * 3),     # 3 centre pairs + (0,0,0)<->(1,0,0) both ways
        "down": (3, 3 * 3 * 4),    # every voxel lands in one 2x2x2 cell: one pair each
        "up": (3, 3 * 4 * 5),      # the transposed map has the same pairs
        "point": (3, 3 * 5 * 6),   # 1x1x1: N pairs
        "head": (None, 3 * 6 * 7),
    }
    assert rep.total == 30 + 36 + 60 + 90 + 126
    assert [L.rows_out for L in rep.layers] == [3, 2, 3, 3, 3]
    assert "total" in rep.table() and "sub" in str(rep)
    assert rep.by_kind() == {"sparse_conv3d": 216, "linear": 126}


def _brute_pairs(coords: np.ndarray, ks: int, stride: int, dilation: int) -> int:
    """Count (input, output, offset) triples by enumeration (input tensor stride 1)."""
    inp = {tuple(c) for c in coords.tolist()}
    if stride == 1:
        outs = inp
    else:
        outs = {(b, *(np.floor_divide([x, y, z], stride) * stride)) for b, x, y, z in inp}
    rng = range(-(ks // 2), ks // 2 + 1) if ks % 2 else range(ks)
    n = 0
    for b, x, y, z in outs:
        for d in itertools.product(rng, repeat=3):
            if (b, x + d[0] * dilation, y + d[1] * dilation, z + d[2] * dilation) in inp:
                n += 1
    return n


@pytest.mark.parametrize("ks,stride,dilation", [(3, 1, 1), (3, 1, 2), (2, 2, 1), (3, 2, 1), (5, 1, 1)])
def test_pairs_match_brute_force(ks, stride, dilation):
    c = random_coords(300, extent=9, batch=3, seed=ks + stride + dilation, low=-4)
    x = sparse3d.SparseTensor(torch.randn(len(c), 2), c)
    conv = sparse3d.nn.Conv3d(2, 3, kernel_size=ks, stride=stride, dilation=dilation)
    rep = count_macs(conv, x)
    want = _brute_pairs(c.numpy(), ks, stride, dilation)
    assert rep.layers[0].pairs == want == sparse_conv_pairs(conv, x)
    assert rep.total == want * 2 * 3


def test_dense_layers():
    conv1 = nn.Conv1d(3, 5, 1)
    assert count_macs(conv1, torch.randn(2, 3, 10)).total == 2 * 10 * 3 * 5
    conv3 = nn.Conv3d(4, 6, 3, padding=1, groups=2)
    assert count_macs(conv3, torch.randn(1, 4, 5, 5, 5)).total == 125 * 6 * 2 * 27
    convt = nn.ConvTranspose3d(4, 6, 2, stride=2)
    assert count_macs(convt, torch.randn(2, 4, 3, 3, 3)).total == 2 * 4 * 27 * 6 * 8
    lin = nn.Linear(8, 3)
    assert count_macs(lin, torch.randn(2, 5, 8)).total == 10 * 8 * 3
    # PVConv: 2 dense k3 convs on R^3 + one k1 point MLP
    pv = PVConv(3, 4, resolution=4)
    R3 = 4 ** 3
    assert count_macs(pv, (torch.randn(2, 3, 50), torch.randn(2, 3, 50))).total == \
        2 * (R3 * 27 * 3 * 4 + R3 * 27 * 4 * 4) + 2 * 50 * 3 * 4


def test_reused_layer_and_state_untouched():
    lin = nn.Linear(4, 4)
    bn = nn.BatchNorm1d(4)
    model = nn.Sequential(lin, bn, lin).train()
    before = bn.running_mean.clone()
    rep = count_macs(model, torch.randn(6, 4))
    assert [L.name for L in rep.layers] == ["0", "0#2"] and rep.total == 2 * 6 * 16
    assert model.training and bn.training
    torch.testing.assert_close(bn.running_mean, before)  # eval mode during the count


def test_spvcnn_adds_only_point_branch_linears():
    c = random_coords(600, extent=16, batch=2, seed=7, low=-5)
    x = sparse3d.SparseTensor(torch.randn(len(c), 4), c)
    mink, spv = count_macs(MinkUNet(cr=0.25), x), count_macs(SPVCNN(cr=0.25), x)
    assert mink.by_kind()["sparse_conv3d"] == spv.by_kind()["sparse_conv3d"] > 0
    cs = [int(0.25 * v) for v in (32, 32, 64, 128, 256, 256, 128, 96, 96)]
    extra = len(x) * (cs[0] * cs[4] + cs[4] * cs[6] + cs[6] * cs[8])
    assert spv.total - mink.total == extra
    # every sparse conv of the network is counted once per call
    n_convs = sum(isinstance(m, sparse3d.nn.Conv3d) for m in SPVCNN(cr=0.25).modules())
    assert sum(L.kind == "sparse_conv3d" for L in spv.layers) == n_convs


def test_empty_input_and_bad_args():
    conv = sparse3d.nn.Conv3d(2, 3, kernel_size=3)
    empty = sparse3d.SparseTensor(torch.zeros(0, 2), torch.zeros(0, 4, dtype=torch.int32))
    assert count_macs(conv, empty).total == 0
    assert isinstance(count_macs(nn.ReLU(), torch.randn(3)), MacsReport)
    with pytest.raises(TypeError, match="model"):
        count_macs(lambda x: x, empty)
    with pytest.raises(TypeError, match="module"):
        sparse_conv_pairs(nn.Linear(2, 2), empty)
    with pytest.raises(TypeError, match="SparseTensor"):
        sparse_conv_pairs(conv, torch.zeros(3, 2))


def test_scan_bad_file(tmp_path):
    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"\x00" * 20)
    with pytest.raises(ValueError, match="bad.bin"):
        scan_macs(str(bad))


@pytest.mark.slow
def test_real_scan_macs():
    if not KITTI_SCAN.exists():
        pytest.skip(f"real scan not found at {KITTI_SCAN}")
    res = scan_macs(str(KITTI_SCAN), 0.05, 1.0)
    assert res["voxels"] == 94444
    assert res["MinkUNet"].total == 136_203_040_384
    assert res["SPVCNN"].total - res["MinkUNet"].total == 94444 * (32 * 256 + 256 * 128 + 128 * 96)
