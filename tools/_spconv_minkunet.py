"""spconv twin of :class:`sparse3d.models.MinkUNet` (benchmarking and parity checks only).

Same topology and module names as the sparse3d model, built from ``spconv.pytorch``:
``SubMConv3d`` (one ``indice_key`` per resolution level), ``SparseConv3d`` k2 s2 and
``SparseInverseConv3d`` sharing the down conv's ``indice_key``; all ``bias=False``
and ``algo=ConvAlgo.Native`` (the only algorithm spconv has on the CPU).
``load_from_sparse3d`` copies a sparse3d MinkUNet's weights into it.

spconv's CPU build cannot train (its backward calls ``torch.cuda``) and is racy with
more than one torch thread in some builds: compute reference outputs single-threaded.
"""
from __future__ import annotations

import warnings
from typing import Sequence

import torch
from torch import nn

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import spconv.pytorch as spconv

__all__ = ["SpconvMinkUNet", "load_from_sparse3d", "to_spconv_tensor", "weight_to_spconv", "NUM_LEVELS"]

NUM_LEVELS = 5  # resolution levels: stride 1, 2, 4, 8, 16
ALGO = spconv.ConvAlgo.Native


def _weight_to_spconv(weight: torch.Tensor, kernel_size: Sequence[int]) -> torch.Tensor:
    """sparse3d ``[K, Cin, Cout]`` (offset ``k = ix + Kx*(iy + Ky*iz)``) -> spconv ``[Cout, Kx, Ky, Kz, Cin]``."""
    kx, ky, kz = kernel_size
    K, cin, cout = weight.shape
    if K != kx * ky * kz:
        raise ValueError(f"weight has K={K} offsets but kernel_size {tuple(kernel_size)} has {kx * ky * kz}")
    return weight.reshape(kz, ky, kx, cin, cout).permute(4, 2, 1, 0, 3).contiguous()


def weight_to_spconv(weight: torch.Tensor, kernel_size: Sequence[int]) -> torch.Tensor:
    """Convert a sparse3d conv weight ``[K, Cin, Cout]`` to what an spconv conv expects.

    KRSC ``[Cout, Kx, Ky, Kz, Cin]`` in general. Exception: spconv 2.3 computes 1x1x1 convs
    (``conv1x1``) as ``features @ weight.view(Cin, Cout)``, i.e. it reads the ``[Cout,1,1,1,Cin]``
    parameter's memory as ``[Cin, Cout]``; for K = 1 ``weight[0]``'s memory is stored as is.
    Uses :func:`sparse3d.interop.spconv.weight_to_spconv` when it is importable.
    """
    try:
        from sparse3d.interop.spconv import weight_to_spconv as _interop
    except ImportError:
        _interop = None
    if _interop is not None:
        return _interop(weight, tuple(kernel_size))
    if tuple(kernel_size) == (1, 1, 1):
        K, cin, cout = weight.shape
        if K != 1:
            raise ValueError(f"weight has K={K} offsets but kernel_size is (1, 1, 1)")
        return weight[0].contiguous().view(cout, 1, 1, 1, cin)
    return _weight_to_spconv(weight, kernel_size)


def _subm(cin: int, cout: int, ks: int, key) -> spconv.SubMConv3d:
    return spconv.SubMConv3d(cin, cout, ks, bias=False, indice_key=key, algo=ALGO)


class ConvBlock(spconv.SparseSequential):
    """SparseConv3d(k2, s2) -> BN -> ReLU; ``indice_key`` names the pairs for the inverse conv."""

    def __init__(self, inc: int, outc: int, key: str) -> None:
        super().__init__(spconv.SparseConv3d(inc, outc, 2, stride=2, bias=False, indice_key=key, algo=ALGO),
                         nn.BatchNorm1d(outc), nn.ReLU(True))


class DeconvBlock(spconv.SparseSequential):
    """SparseInverseConv3d(k2) of the down conv ``key`` -> BN -> ReLU."""

    def __init__(self, inc: int, outc: int, key: str) -> None:
        super().__init__(spconv.SparseInverseConv3d(inc, outc, 2, bias=False, indice_key=key, algo=ALGO),
                         nn.BatchNorm1d(outc), nn.ReLU(True))


class ResidualBlock(spconv.SparseModule):
    """relu(net(x) + shortcut(x)); the shortcut is a 1x1 SubMConv3d + BN when channels change."""

    def __init__(self, inc: int, outc: int, key: str) -> None:
        super().__init__()
        self.net = spconv.SparseSequential(
            _subm(inc, outc, 3, key), nn.BatchNorm1d(outc), nn.ReLU(True),
            _subm(outc, outc, 3, key), nn.BatchNorm1d(outc))
        if inc == outc:
            self.downsample = spconv.SparseSequential()
        else:
            self.downsample = spconv.SparseSequential(_subm(inc, outc, 1, None), nn.BatchNorm1d(outc))
        self.relu = nn.ReLU(True)

    def forward(self, x):
        out = self.net(x)
        sc = self.downsample(x)
        return out.replace_feature(self.relu(out.features + sc.features))


class SpconvMinkUNet(nn.Module):
    """MinkUNet18 in spconv.

    Input: ``SparseConvTensor`` (see :func:`to_spconv_tensor`); output: logits ``[N, num_classes]``
    in the input's row order.
    """

    def __init__(self, in_channels: int = 4, num_classes: int = 19, cr: float = 1.0) -> None:
        super().__init__()
        from sparse3d.models.spvnas.minkunet import minkunet_channels
        cs = minkunet_channels(cr)
        self.stem = spconv.SparseSequential(
            _subm(in_channels, cs[0], 3, "subm1"), nn.BatchNorm1d(cs[0]), nn.ReLU(True),
            _subm(cs[0], cs[0], 3, "subm1"), nn.BatchNorm1d(cs[0]), nn.ReLU(True))
        for i in range(1, 5):
            setattr(self, f"stage{i}", spconv.SparseSequential(
                ConvBlock(cs[i - 1], cs[i - 1], f"down{i}"),
                ResidualBlock(cs[i - 1], cs[i], f"subm{i + 1}"),
                ResidualBlock(cs[i], cs[i], f"subm{i + 1}")))
        for j in range(1, 5):
            i, skip, lvl = 4 + j, cs[4 - j], 5 - j
            setattr(self, f"up{j}", nn.ModuleList([
                DeconvBlock(cs[i - 1], cs[i], f"down{lvl}"),
                spconv.SparseSequential(ResidualBlock(cs[i] + skip, cs[i], f"subm{lvl}"),
                                        ResidualBlock(cs[i], cs[i], f"subm{lvl}"))]))
        self.classifier = nn.Sequential(nn.Linear(cs[8], num_classes))

    def forward(self, x) -> torch.Tensor:
        x0 = self.stem(x)
        x1 = self.stage1(x0)
        x2 = self.stage2(x1)
        x3 = self.stage3(x2)
        x4 = self.stage4(x3)
        y = x4
        for up, skip in zip((self.up1, self.up2, self.up3, self.up4), (x3, x2, x1, x0)):
            u = up[0](y)
            y = up[1](u.replace_feature(torch.cat([u.features, skip.features], 1)))
        return self.classifier(y.features)


@torch.no_grad()
def load_from_sparse3d(twin: SpconvMinkUNet, model: nn.Module) -> SpconvMinkUNet:
    """Copy every parameter and buffer of a sparse3d MinkUNet into ``twin`` (conv weights converted)."""
    from sparse3d.nn import Conv3d
    convs = {name: m for name, m in model.named_modules() if isinstance(m, Conv3d)}
    sd = {}
    for key, val in model.state_dict().items():
        mod, _, leaf = key.rpartition(".")
        if mod in convs and leaf == "weight":
            val = weight_to_spconv(val, convs[mod].kernel_size)
        sd[key] = val
    twin.load_state_dict(sd, strict=True)
    return twin


def to_spconv_tensor(feats: torch.Tensor, coords: torch.Tensor, levels: int = NUM_LEVELS):
    """sparse3d ``feats [N, C]``, ``coords [N, 4]`` (b, x, y, z) -> ``SparseConvTensor``.

    xyz are shifted by a multiple of ``2**(levels-1)`` so that they are non-negative and
    spconv's ``floor(x / 2)`` downsampling groups voxels exactly like sparse3d's
    ``floor(c / 2t) * 2t``; the spatial shape is padded to a multiple of the same factor.
    Rows keep their order.
    """
    f = 2 ** (levels - 1)
    xyz = coords[:, 1:].long()
    if len(xyz):
        lo = torch.div(xyz.min(0).values, f, rounding_mode="floor") * f
    else:
        lo = torch.zeros(3, dtype=torch.long)
    xyz = xyz - lo
    hi = xyz.max(0).values + 1 if len(xyz) else torch.ones(3, dtype=torch.long)
    shape = (torch.div(hi + f - 1, f, rounding_mode="floor") * f).tolist()
    idx = torch.cat([coords[:, :1].long(), xyz], 1).to(torch.int32).contiguous()
    batch = int(coords[:, 0].max()) + 1 if len(coords) else 1
    return spconv.SparseConvTensor(feats, idx, shape, batch)

