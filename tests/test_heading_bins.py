"""HeadingBins (multi-bin yaw classification + residual) and TransFusionHead(rot_bins=K)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from sparse3d.models.bevfusion.heads import HeadingBins, TransFusionBBoxCoder, TransFusionHead

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_encode_decode_round_trip_wrap_and_bin_edges():
    hb = HeadingBins(12)
    yaw = torch.linspace(-3 * math.pi, 3 * math.pi, 1001, dtype=torch.float64) + 1e-3  # off the bin edges (ties)
    k, r = hb.encode(yaw)
    assert k.dtype == torch.int64 and int(k.min()) >= 0 and int(k.max()) <= 11
    assert float(r.min()) >= -1 - 1e-12 and float(r.max()) < 1 + 1e-12
    logits = F.one_hot(k, 12).to(yaw.dtype)  # [N, K]
    res = r[:, None].expand(-1, 12).clone()
    back = hb.decode(logits, res)
    d = torch.remainder(back - yaw + math.pi, 2 * math.pi) - math.pi
    assert d.abs().max() < 1e-9
    # brute force bin: the centre nearest in angle
    c = hb.centers(yaw)
    ang = torch.remainder(yaw[:, None] - c[None] + math.pi, 2 * math.pi) - math.pi
    torch.testing.assert_close(k, ang.abs().argmin(1))
    # edges: -pi and +pi are the same heading (bin 0, residual -1); bin k starts at -pi + k w
    k2, r2 = hb.encode(torch.tensor([-math.pi, math.pi, -math.pi + hb.width + 1e-9], dtype=torch.float64))
    assert k2.tolist() == [0, 0, 1]
    torch.testing.assert_close(r2, torch.tensor([-1.0, -1.0, -1.0], dtype=torch.float64), atol=1e-7, rtol=0)
    # decode keeps the other dims and takes K along `dim`
    lg = torch.randn(2, 12, 5)
    out = hb.decode(lg, torch.zeros(2, 12, 5))
    torch.testing.assert_close(out, hb.centers(lg)[lg.argmax(1)])


def test_loss_formula_gradcheck_and_bad_input():
    hb = HeadingBins(8)
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 8, generator=g, dtype=torch.float64, requires_grad=True)
    res = torch.randn(6, 8, generator=g, dtype=torch.float64, requires_grad=True)
    yaw = (torch.rand(6, generator=g, dtype=torch.float64) * 2 - 1) * math.pi
    per = hb.loss(logits, res, yaw)
    k, r = hb.encode(yaw)
    ref = torch.stack([-torch.log_softmax(logits[i], 0)[k[i]] + (res[i, k[i]] - r[i]).abs() for i in range(6)])
    torch.testing.assert_close(per, ref)
    assert torch.autograd.gradcheck(lambda a, b: hb.loss(a, b, yaw), (logits, res))
    assert hb.loss(logits[:0], res[:0], yaw[:0]).shape == (0,)
    with pytest.raises(ValueError, match="num_bins"):
        HeadingBins(1)
    with pytest.raises(ValueError, match=r"\[N, 8\]"):
        hb.loss(logits[:, :4], res[:, :4], yaw)
    with pytest.raises(ValueError, match="yaw"):
        hb.loss(logits, res, yaw[:3])
    with pytest.raises(TypeError, match="float"):
        hb.encode(torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="must match"):
        hb.decode(torch.zeros(3, 8), torch.zeros(3, 7))


def test_two_sided_cue_decodes_the_majority_direction():
    """The targets of one (constant) input are theta 60 % of the time and theta + pi 40 %: after fitting, the
    bins decode theta and keep the 60 % as a probability."""
    torch.manual_seed(0)
    theta = 0.7
    yaw = torch.tensor([theta] * 6 + [theta - math.pi] * 4, dtype=torch.float64)
    hb = HeadingBins(12)
    logits = torch.zeros(1, 12, dtype=torch.float64, requires_grad=True)
    res = torch.zeros(1, 12, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([logits, res], lr=0.05)
    for _ in range(300):
        loss = hb.loss(logits.expand(10, -1), res.expand(10, -1), yaw).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert abs(float(hb.decode(logits.detach(), res.detach())[0]) - theta) < math.radians(3)
    p = torch.softmax(logits.detach(), 1)[0]
    assert 0.5 < float(p.max()) < 0.7


def rect_coder():
    return TransFusionBBoxCoder((-8.0, -8.0, -3.0, 8.0, 8.0, 3.0), (0.2, 0.2), 4)  # 20 x 20 cells


def make_head(**kw):
    torch.manual_seed(0)
    return TransFusionHead(16, 3, 10, hidden_channels=32, num_heads=4, ffn_channels=64, head_channels=32,
                           dropout=0.0, nms_exempt_classes=(), bbox_coder=rect_coder(), **kw)


GT = torch.tensor([[2.0, -3.1, -0.8, 4.2, 1.9, 1.6, 0.4, 3.0, -1.0],
                   [-4.3, 1.5, -0.2, 0.7, 0.6, 1.8, -2.9, 0.5, 0.0],
                   [5.9, 4.4, 0.1, 2.0, 0.8, 1.1, 2.8, 0.0, 0.0]])
LABELS = torch.tensor([0, 1, 2])


def test_head_keys_loss_terms_and_bad_args():
    head = make_head(rot_bins=12).train()
    assert not hasattr(head.prediction_head, "rot") and head.prediction_head.rot_bin[-1].out_channels == 12
    preds = head(torch.randn(2, 16, 20, 20))
    assert preds["rot_bin"].shape == (2, 12, 10) and preds["rot_res"].shape == (2, 12, 10)
    yaw = head.heading.decode(preds["rot_bin"], preds["rot_res"])
    torch.testing.assert_close(preds["rot"], torch.stack([yaw.sin(), yaw.cos()], 1))
    assert not preds["rot"].requires_grad
    losses = head.loss(preds, [GT, GT[:0]], [LABELS, LABELS[:0]])
    assert {"loss_rot", "loss_bbox"} <= set(losses) and torch.isfinite(losses["loss_rot"])
    # loss_rot by hand over the matched queries; loss_bbox ignores the (sin, cos) codes
    sum(v for k, v in losses.items() if k.startswith("loss")).backward()
    assert head.prediction_head.rot_bin[-1].weight.grad.abs().sum() > 0
    assert head.prediction_head.rot_res[-1].weight.grad.abs().sum() > 0
    p2 = {k: (v.detach().clone() if torch.is_tensor(v) else v) for k, v in preds.items()}
    p2["rot"] = -p2["rot"]
    l2 = head.loss(p2, [GT, GT[:0]], [LABELS, LABELS[:0]])
    torch.testing.assert_close(l2["loss_bbox"], losses["loss_bbox"].detach())
    # empty GT everywhere: finite, zero heading loss
    l0 = head.loss(head(torch.randn(1, 16, 20, 20)), [GT[:0]], [LABELS[:0]])
    assert float(l0["loss_rot"].detach()) == 0.0
    for bad in (1, -2, 2.5):
        with pytest.raises(ValueError, match="rot_bins"):
            make_head(rot_bins=bad)
    with pytest.raises(ValueError, match="rot_bins"):
        make_head(rot_bins=8, dense_keys=["rot"])
    make_head(rot_bins=8, dense_keys=["vel"])  # dense velocity + binned heading is fine


def test_loss_rot_matches_the_matched_queries_by_hand():
    head = make_head(rot_bins=8, code_weights=(1, 1, 1, 1, 1, 1, 2, 4, 0.2, 0.2), loss_bbox_weight=0.5).train()
    preds = head(torch.randn(1, 16, 20, 20))
    losses = head.loss(preds, [GT], [LABELS])
    # redo the assignment as the head does
    codes = head.codes(preds).detach().clone()
    codes[..., 3:6] = codes[..., 3:6].clamp(-6, 6)
    res = head.assigner.assign(head.bbox_coder.decode(codes)[0], GT, LABELS, preds["heatmap"][0].detach().T)
    pos = res.pos_inds
    yaw = GT[res.gt_inds[pos] - 1, 6]
    yaw = torch.atan2(torch.sin(yaw), torch.cos(yaw))
    per = head.heading.loss(preds["rot_bin"][0, :, pos].T, preds["rot_res"][0, :, pos].T, yaw)
    torch.testing.assert_close(losses["loss_rot"], 0.5 * 3.0 * per.sum() / max(len(pos), 1))
