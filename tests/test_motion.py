"""MotionEncoder (per-Δt-bin BEV occupancy -> conv tower) and the TransFusionHead velocity branch that reads it:
raster == time_raster, shapes incl. empty clouds, the velocity loss does not reach the detection trunk, the
per-query velocity is the branch's value at the proposal cell, a fit on moving point blobs recovers velocities,
the composed BEVFusion model, bad arguments."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from sparse3d.models.bevfusion.bevfusion import BEVFusion
from sparse3d.models.bevfusion.heads.box_coder import TransFusionBBoxCoder
from sparse3d.models.bevfusion.lidar import MotionEncoder
from sparse3d.models.bevfusion.lidar.sparse_encoder import time_raster

from test_transfusion_head import GT, GT_LABELS, rect_coder, tiny_head, total

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PCR = (-9.6, -6.4, -3.0, 9.6, 6.4, 3.0)   # rect_coder's range: 24 x 16 head cells of 0.8 m
BINS = (0.0, 0.025, 0.125, 0.275, 0.5)


def _cloud(n, seed, dt_max=0.45):
    g = torch.Generator().manual_seed(seed)
    p = torch.rand(n, 5, generator=g)
    p[:, 0] = p[:, 0] * 22 - 11   # some outside x range
    p[:, 1] = p[:, 1] * 14 - 7
    p[:, 2] = p[:, 2] * 8 - 4
    p[:, 4] = (p[:, 4] * 10).floor() * 0.05 * (dt_max / 0.45)
    return p


@pytest.mark.parametrize("upsample", [1, 2, 3])
def test_raster_and_shapes(upsample):
    enc = MotionEncoder(PCR, (24, 16), BINS, upsample=upsample, channels=8, dilations=(1, 2))
    pts = [_cloud(500, 0), torch.zeros(0, 5), _cloud(50, 1)]
    r = enc.raster(pts)
    assert r.shape == (3, 12, 24 * upsample, 16 * upsample)
    torch.testing.assert_close(r[:, :4], time_raster(pts, BINS, PCR, (24 * upsample, 16 * upsample)))
    assert r[1].abs().sum() == 0 and r[0].sum() > 0
    # mean offsets from the cell centre (cell units), brute force over the points of sample 2
    X, Y, T = 24 * upsample, 16 * upsample, len(BINS) - 1
    sums, n = torch.zeros(2, T, X, Y, dtype=torch.float64), torch.zeros(T, X, Y, dtype=torch.float64)
    for x, y, z, _, dt in pts[2].double().tolist():
        fx, fy = (x - PCR[0]) / (PCR[3] - PCR[0]) * X, (y - PCR[1]) / (PCR[4] - PCR[1]) * Y
        t = [k for k in range(T) if BINS[k] <= dt < BINS[k + 1]]
        if not (0 <= fx < X and 0 <= fy < Y and PCR[2] <= z < PCR[5] and t):
            continue
        i, j = int(math.floor(fx)), int(math.floor(fy))
        n[t[0], i, j] += 1
        sums[:, t[0], i, j] += torch.tensor([fx - i - 0.5, fy - j - 0.5], dtype=torch.float64)
    ref = (sums / n.clamp(min=1)).reshape(2 * T, X, Y).float()
    torch.testing.assert_close(r[2, T:], ref, atol=1e-6, rtol=0)
    assert r[:, T:].abs().max() <= 0.5
    out = enc(pts)
    assert out.shape == (3, 8, 24, 16) and torch.isfinite(out).all()
    assert enc.out_channels == 8


def test_motion_encoder_bad_args():
    with pytest.raises(ValueError, match="time_bins"):
        MotionEncoder(PCR, (24, 16), (0.1, 0.1))
    with pytest.raises(ValueError, match="point_cloud_range"):
        MotionEncoder((0, 0, 0, -1, 1, 1), (24, 16), BINS)
    with pytest.raises(ValueError, match="grid_size"):
        MotionEncoder(PCR, (0, 16), BINS)
    with pytest.raises(ValueError, match="grid_size"):
        MotionEncoder(PCR, (24, 16, 2), BINS)
    with pytest.raises(ValueError, match="upsample"):
        MotionEncoder(PCR, (24, 16), BINS, upsample=0)
    with pytest.raises(ValueError, match="dilations"):
        MotionEncoder(PCR, (24, 16), BINS, dilations=(1, 0))
    with pytest.raises(ValueError, match="Δt is the 5th"):
        MotionEncoder(PCR, (24, 16), BINS)([torch.zeros(3, 4)])
    with pytest.raises(ValueError, match="at least one"):
        MotionEncoder(PCR, (24, 16), BINS)([])


def test_head_velocity_branch_reads_motion_and_leaves_the_trunk_alone():
    head = tiny_head(dense_keys=["vel", "rot"], dense_loss="l2", motion_channels=6).train()
    bev = torch.randn(2, 8, 24, 16, requires_grad=True)
    motion = torch.randn(2, 6, 24, 16, requires_grad=True)
    preds = head(bev, motion=motion)
    dense = preds["dense_reg"]
    assert dense.shape == (2, 4, 24, 16)
    pos = preds["query_pos"].floor().long()
    for b in range(2):
        cell = dense[b][:, pos[b, :, 0], pos[b, :, 1]]
        torch.testing.assert_close(preds["vel"][b], cell[:2])
        torch.testing.assert_close(preds["rot"][b], cell[2:])
    # velocity channels come from the motion branch, rot from the shared dense branch
    feat = head.shared_conv(bev)
    torch.testing.assert_close(dense[:, :2], head.motion_head(torch.cat([motion, feat], 1)))
    torch.testing.assert_close(dense[:, 2:], head.dense_head(feat))
    # the dense velocity loss reaches the motion features but not the BEV trunk
    t, w = head.dense_target(GT)
    vel_loss = ((dense[0, :2] - t[:2]).square() * w).sum()
    g_bev, g_mot = torch.autograd.grad(vel_loss, [bev, motion], retain_graph=True)
    assert g_bev.abs().sum() == 0 and g_mot.abs().sum() > 0
    losses = head.loss(preds, [GT, GT[:0]], [GT_LABELS, GT_LABELS[:0]])
    total(losses).backward()
    assert head.motion_head[0].weight.grad.abs().sum() > 0 and bev.grad.abs().sum() > 0


def test_head_motion_bad_args():
    with pytest.raises(ValueError, match="needs 'vel'"):
        tiny_head(dense_keys=["rot"], motion_channels=4)
    with pytest.raises(ValueError, match="motion_channels must be"):
        tiny_head(dense_keys=["vel"], motion_channels=-1)
    head = tiny_head(dense_keys=["vel"], motion_channels=4)
    with pytest.raises(ValueError, match="motion must be"):
        head(torch.randn(1, 8, 24, 16))
    with pytest.raises(ValueError, match="motion must be"):
        head(torch.randn(1, 8, 24, 16), motion=torch.randn(1, 4, 12, 16))
    with pytest.raises(ValueError, match="motion_channels=0"):
        tiny_head()(torch.randn(1, 8, 24, 16), motion=torch.randn(1, 4, 24, 16))


def _moving_blobs(g, n_obj=3):
    """Points of ``n_obj`` 1.6 x 1.0 m blobs, each at ``c - v dt`` for the 10 sweeps dt = 0, 0.05, ..., 0.45 s
    (older sweeps trail behind a moving object), and the GT boxes ``[n_obj, 9]`` with their velocities."""
    boxes, pts = [], []
    for _ in range(n_obj):
        c = torch.rand(2, generator=g) * torch.tensor([12.0, 7.0]) - torch.tensor([6.0, 3.5])
        moving = float(torch.rand((), generator=g)) < 0.6
        v = (torch.rand(2, generator=g) * 12 - 6) if moving else torch.zeros(2)
        for k in range(10):
            dt = 0.05 * k
            q = torch.rand(30, 5, generator=g)
            q[:, 0] = c[0] - v[0] * dt + (q[:, 0] - 0.5) * 1.6
            q[:, 1] = c[1] - v[1] * dt + (q[:, 1] - 0.5) * 1.0
            q[:, 2], q[:, 4] = 0.0, dt
            pts.append(q)
        boxes.append([float(c[0]), float(c[1]), 0.0, 1.6, 1.0, 1.5, 0.0, float(v[0]), float(v[1])])
    return torch.cat(pts), torch.tensor(boxes)


def test_motion_branch_fits_velocity_of_moving_blobs():
    """Trained on fresh random scenes (moving and static blobs), the motion encoder + velocity branch predicts
    held-out velocities: mean error half the mean speed or less (predicting 0 errs by the mean speed;
    squared-error loss, 400 steps of 2 scenes)."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    enc = MotionEncoder(PCR, (24, 16), BINS, upsample=2, channels=16, dilations=(1, 2, 2))
    head = tiny_head(dense_keys=["vel"], dense_loss="l2", motion_channels=16).train()
    params = list(enc.parameters()) + list(head.motion_head.parameters())
    opt = torch.optim.Adam(params, 5e-3)
    bev = torch.zeros(2, 8, 24, 16)
    for _ in range(400):
        scenes = [_moving_blobs(g) for _ in range(2)]
        preds = head(bev, motion=enc([p for p, _ in scenes]))
        tw = [head.dense_target(b) for _, b in scenes]
        t, w = torch.stack([a for a, _ in tw]), torch.stack([b for _, b in tw])[:, None]
        loss = ((preds["dense_reg"] - t).square() * w).sum() / w.sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    enc.eval(), head.eval()
    errs, speeds = [], []
    with torch.no_grad():
        for _ in range(10):
            p, b = _moving_blobs(g)
            dense = head(bev[:1], motion=enc([p]))["dense_reg"][0]
            cells = head.bbox_coder.to_cells(b[:, :2]).floor().long()
            for (ix, iy), box in zip(cells.tolist(), b):
                errs.append(float((dense[:, ix, iy] - box[7:9]).norm()))
                speeds.append(float(box[7:9].norm()))
    mean_err, mean_speed = sum(errs) / len(errs), sum(speeds) / len(speeds)
    assert mean_speed > 1.5 and mean_err < 0.5 * mean_speed, (mean_err, mean_speed)


def test_bevfusion_passes_motion_to_the_object_head():
    class Lidar(nn.Module):
        def forward(self, points):
            return torch.stack([time_raster([p], BINS, PCR, (24, 16))[0] for p in points]).repeat(1, 2, 1, 1)

    torch.manual_seed(0)
    coder = TransFusionBBoxCoder(PCR, (0.1, 0.1), 8)
    head = tiny_head(coder=coder, dense_keys=["vel"], motion_channels=8)
    model = BEVFusion({"lidar": Lidar()}, heads={"object": head},
                      motion=MotionEncoder(PCR, (24, 16), BINS, channels=8, dilations=(1,)), bn_momentum=0.2)
    assert model.motion.tower[0][1].momentum == 0.2
    batch = {"points": [_cloud(300, 0), _cloud(200, 1)], "gt_boxes": [GT, GT[:1]],
             "gt_labels": [GT_LABELS, GT_LABELS[:1]]}
    out = model(batch)
    losses = model.loss(out, batch)
    sum(v for k, v in losses.items() if not k.startswith("stats/")).backward()
    assert model.motion.tower[0][0].weight.grad.abs().sum() > 0
    res = model.eval().predict(model(batch), batch)
    assert res[0]["boxes"].shape[1] == 9 and torch.isfinite(res[0]["boxes"]).all()
    with pytest.raises(ValueError, match="object head"):
        BEVFusion({"lidar": Lidar()}, heads={"map": nn.Identity()}, motion=MotionEncoder(PCR, (24, 16), BINS))
    assert math.isfinite(float(losses["object/loss_dense"]))


def test_gradcheck_motion_tower_and_velocity_branch():
    """float64 gradcheck of the motion tower (eval-mode BN) and of the head's velocity branch w.r.t. the motion
    features; the raster itself is a non-differentiable function of the points."""
    torch.manual_seed(0)
    enc = MotionEncoder(PCR, (6, 4), BINS, upsample=2, channels=3, dilations=(1,)).double().eval()
    raster = torch.randn(1, 12, 12, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(enc.tower, (raster,))
    head = tiny_head(dense_keys=["vel"], motion_channels=3).double().eval()
    feat = torch.randn(1, 32, 6, 4, dtype=torch.float64)
    motion = torch.randn(1, 3, 6, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda m: head.motion_head(torch.cat([m, feat], 1)), (motion,))
