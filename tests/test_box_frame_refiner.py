"""BoxFrameRefiner (box-frame heading direction + velocity): raster, sample geometry, bilinear sampling against
brute force, frame invariance, loss formula, gradcheck, a learnability fit, and the TransFusionHead wiring."""
from __future__ import annotations

import math

import pytest
import torch

from sparse3d.models.bevfusion.heads import TransFusionBBoxCoder, TransFusionHead
from sparse3d.models.bevfusion.heads.roi import BoxFrameRefiner, box_sample_points, roi_raster, sample_bev

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PCR = (-8.0, -6.4, -3.0, 8.0, 6.4, 3.0)   # non-square: 16 m x 12.8 m
EDGES = (0.0, 0.025, 0.2, 0.5)


def cloud(n, g, dt_max=0.45):
    p = torch.rand(n, 5, generator=g)
    p[:, 0] = p[:, 0] * 18 - 9   # some outside the range
    p[:, 1] = p[:, 1] * 14 - 7
    p[:, 2] = p[:, 2] * 7 - 3.5
    p[:, 4] = torch.where(torch.rand(n, generator=g) < 0.3, torch.zeros(n), p[:, 4] * dt_max)
    return p


def test_roi_raster_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    pts = [cloud(400, g), torch.zeros(0, 5)]
    X, Y = 20, 16
    r = roi_raster(pts, EDGES, PCR, (X, Y))
    assert r.shape == (2, 6, X, Y) and r.dtype == torch.float32 and not r[1].any()
    cnt = torch.zeros(3, X, Y, dtype=torch.float64)
    hs = torch.zeros(3, X, Y, dtype=torch.float64)
    for x, y, z, _, dt in pts[0].double().tolist():
        ix, iy = math.floor((x + 8.0) / 16.0 * X), math.floor((y + 6.4) / 12.8 * Y)
        t = [k for k in range(3) if EDGES[k] <= dt < EDGES[k + 1]]
        if not (0 <= ix < X and 0 <= iy < Y and -3.0 <= z < 3.0 and t):
            continue
        cnt[t[0], ix, iy] += 1
        hs[t[0], ix, iy] += (z + 3.0) / 6.0
    torch.testing.assert_close(r[0, :3], torch.log1p(cnt).float())
    torch.testing.assert_close(r[0, 3:], (hs / cnt.clamp(min=1)).float())
    assert cnt.sum() > 100


def test_box_sample_points_order_and_geometry():
    c = torch.tensor([[[1.0, 2.0]]])
    xy = box_sample_points(c, torch.tensor([[[4.0, 2.0]]]), torch.tensor([[0.0]]), (4, 2), (0.5, 0.0))
    assert xy.shape == (1, 1, 8, 2)
    # u over l + 2 * 0.5 = 5 m in 4 cells: -1.875 ... 1.875; v over 2 m in 2 cells: -0.5 (right), 0.5 (left)
    u = torch.tensor([-1.875, -0.625, 0.625, 1.875])
    ref = torch.stack([1.0 + u[:, None].expand(4, 2), 2.0 + torch.tensor([-0.5, 0.5])[None].expand(4, 2)], -1)
    torch.testing.assert_close(xy[0, 0], ref.reshape(8, 2))
    # yaw = 90 deg: "forward" is +y and "left" is -x
    xy90 = box_sample_points(c, torch.tensor([[[4.0, 2.0]]]), torch.tensor([[math.pi / 2]]), (4, 2), (0.5, 0.0))
    torch.testing.assert_close(xy90[0, 0, -1], torch.tensor([1.0 - 0.5, 2.0 + 1.875]))


def test_sample_bev_is_bilinear_interpolation_of_cell_centres():
    g = torch.Generator().manual_seed(1)
    X, Y = 10, 8
    bev = torch.randn(1, 3, X, Y, generator=g, dtype=torch.float64)
    cell = (16.0 / X, 12.8 / Y)
    xy = torch.rand(1, 5, 7, 2, generator=g, dtype=torch.float64) * torch.tensor([20.0, 16.0]) \
        - torch.tensor([10.0, 8.0])   # partly outside the map
    out = sample_bev(bev, xy, PCR)
    assert out.shape == (1, 3, 5, 7)
    for q in range(5):
        for s in range(7):
            fx = (float(xy[0, q, s, 0]) + 8.0) / cell[0] - 0.5
            fy = (float(xy[0, q, s, 1]) + 6.4) / cell[1] - 0.5
            i0, j0 = math.floor(fx), math.floor(fy)
            ref = torch.zeros(3, dtype=torch.float64)
            for i, wi in ((i0, 1 - (fx - i0)), (i0 + 1, fx - i0)):
                for j, wj in ((j0, 1 - (fy - j0)), (j0 + 1, fy - j0)):
                    if 0 <= i < X and 0 <= j < Y:   # zeros padding outside
                        ref += wi * wj * bev[0, :, i, j]
            torch.testing.assert_close(out[0, :, q, s], ref)
    # exactly at a cell centre: that cell's value
    centre = torch.tensor([[[[-8.0 + 2.5 * cell[0], -6.4 + 4.5 * cell[1]]]]], dtype=torch.float64)
    torch.testing.assert_close(sample_bev(bev, centre, PCR)[0, :, 0, 0], bev[0, :, 2, 4])


def refiner(**kw):
    torch.manual_seed(0)
    kw.setdefault("samples", (6, 3))
    return BoxFrameRefiner(kw.pop("feat_channels", 4), PCR, kw.pop("raster_shape", (40, 32)), EDGES, **kw)


def test_outputs_invariant_to_a_quarter_turn_of_the_scene():
    """Rotating points, features and boxes by 90 deg about the origin (on a square map) leaves the box-frame
    outputs unchanged: the samples land on the same (rotated) cells."""
    pcr = (-8.0, -8.0, -3.0, 8.0, 8.0, 3.0)
    torch.manual_seed(0)
    m = BoxFrameRefiner(4, pcr, (32, 32), EDGES, samples=(6, 3), margin=(0.7, 0.2)).eval()
    g = torch.Generator().manual_seed(2)
    pts = cloud(3000, g)
    feat = torch.randn(1, 4, 16, 16, generator=g)
    centers = torch.tensor([[[2.0, -1.0], [-3.0, 4.0]]])
    sizes = torch.tensor([[[4.2, 1.9], [0.8, 0.7]]])
    yaw = torch.tensor([[0.3, -2.0]])
    out = m(feat, [pts], centers, sizes, yaw)
    rot = pts.clone()
    rot[:, 0], rot[:, 1] = -pts[:, 1], pts[:, 0]                 # (x, y) -> (-y, x)
    feat_r = torch.rot90(feat, 1, dims=(2, 3))                   # cell (i, j) -> (X - 1 - j, i)
    c_r = torch.stack([-centers[..., 1], centers[..., 0]], -1)
    out_r = m(feat_r, [rot], c_r, sizes, yaw + math.pi / 2)
    torch.testing.assert_close(out_r["dir"], out["dir"], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out_r["vel"], out["vel"], atol=1e-5, rtol=1e-4)


def test_frames_loss_formula_gradcheck_and_bad_args():
    m = refiner().double()
    g = torch.Generator().manual_seed(3)
    v = torch.randn(5, 2, generator=g, dtype=torch.float64)
    yaw = torch.randn(5, generator=g, dtype=torch.float64)
    torch.testing.assert_close(m.from_box_frame(m.to_box_frame(v, yaw), yaw), v)
    torch.testing.assert_close(m.to_box_frame(torch.tensor([[0.0, 2.0]]), torch.tensor([math.pi / 2])),
                               torch.tensor([[2.0, 0.0]]), atol=1e-7, rtol=0)
    logit = torch.randn(5, generator=g, dtype=torch.float64)
    vb = torch.randn(5, 2, generator=g, dtype=torch.float64)
    gt_yaw = yaw + torch.tensor([0.1, 3.0, -3.0, 1.4, 1.7], dtype=torch.float64)
    gv = torch.randn(5, 2, generator=g, dtype=torch.float64)
    out = m.loss(logit, vb, yaw, gt_yaw, gv, avg_factor=4)
    flip = torch.tensor([0.0, 1.0, 1.0, 0.0, 1.0], dtype=torch.float64)
    bce = -(flip * torch.log(torch.sigmoid(logit)) + (1 - flip) * torch.log(1 - torch.sigmoid(logit))).sum()
    torch.testing.assert_close(out["loss_dir"], bce / 4)
    torch.testing.assert_close(out["loss_vel"], 0.25 * (vb - m.to_box_frame(gv, yaw)).abs().sum() / 4)
    # gradcheck through sampling and the MLP w.r.t. the features
    pts = [cloud(300, g).double(), cloud(50, g).double()]
    centers = torch.tensor([[[1.0, 1.0], [-2.0, 0.5]], [[0.0, -1.0], [3.0, 2.0]]], dtype=torch.float64)
    sizes = torch.full((2, 2, 2), 2.0, dtype=torch.float64)
    yaw2 = torch.tensor([[0.2, 1.0], [-0.7, 2.5]], dtype=torch.float64)
    m.detach_features = False
    feat = torch.randn(2, 4, 8, 8, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda f: m(f, pts, centers, sizes, yaw2)["vel"].double(), (feat,))
    with pytest.raises(ValueError, match="points"):
        m(feat, pts[:1], centers, sizes, yaw2)
    with pytest.raises(ValueError, match="feat"):
        m(feat[:, :3], pts, centers, sizes, yaw2)
    with pytest.raises(ValueError, match="centers"):
        m(feat, pts, centers[:, :1], sizes, yaw2)
    for bad in (dict(samples=(0, 2)), dict(margin=(-1.0, 0.0)), dict(vel_loss="huber"), dict(raster_shape=(4,))):
        with pytest.raises(ValueError):
            refiner(**bad)
    with pytest.raises(ValueError, match="time_bins"):
        BoxFrameRefiner(4, PCR, (8, 8), (0.1, 0.0))


def toy_scene(g, n_boxes=6):
    """Vehicles as point blobs: a body, a lower front part (the direction cue of a parked car) and, when moving,
    older sweeps displaced backwards by v * Δt. Returns points [P, 5], centres, sizes, yaw (true), velocity."""
    pts, boxes = [], []
    for _ in range(n_boxes):
        c = (torch.rand(2, generator=g) * 2 - 1) * torch.tensor([5.0, 3.5])
        yaw = float((torch.rand(1, generator=g) * 2 - 1) * math.pi)
        speed = float(torch.rand(1, generator=g)) * 8.0 if float(torch.rand(1, generator=g)) < 0.6 else 0.0
        L, W = 4.0, 1.8
        d = torch.tensor([math.cos(yaw), math.sin(yaw)])
        n = torch.tensor([-math.sin(yaw), math.cos(yaw)])
        for dt in (0.0, 0.1, 0.2, 0.3, 0.4):
            u = (torch.rand(120, generator=g) - 0.5) * L
            v = (torch.rand(120, generator=g) - 0.5) * W
            front = u > L * 0.25
            z = torch.where(front, torch.rand(120, generator=g) * 0.7, torch.rand(120, generator=g) * 1.5) - 1.5
            xy = c + u[:, None] * d + v[:, None] * n - speed * dt * d
            pts.append(torch.cat([xy, z[:, None], torch.zeros(120, 1), torch.full((120, 1), dt)], 1))
        boxes.append((c, torch.tensor([L, W]), yaw, speed * d))
    cen = torch.stack([b[0] for b in boxes])[None]
    siz = torch.stack([b[1] for b in boxes])[None]
    yaw = torch.tensor([[b[2] for b in boxes]])
    vel = torch.stack([b[3] for b in boxes])[None]
    return torch.cat(pts), cen, siz, yaw, vel


def test_refiner_learns_direction_and_velocity_from_points():
    """Given only the box axis (the true yaw or its reverse, at random), the points-only refiner learns which
    end is the front and the velocity: held-out direction accuracy > 90 %, velocity error < 1 m/s (speeds 0-8)."""
    torch.manual_seed(0)
    pcr = (-8.0, -6.4, -3.0, 8.0, 6.4, 3.0)
    m = BoxFrameRefiner(0, pcr, (40, 32), (0.0, 0.05, 0.15, 0.25, 0.5), samples=(10, 3), margin=(2.0, 0.3),
                        hidden=64, vel_weight=1.0)
    opt = torch.optim.Adam(m.parameters(), 3e-3)
    g = torch.Generator().manual_seed(5)

    def batch():
        p, c, s, yaw, v = toy_scene(g)
        axis = yaw + math.pi * (torch.rand(yaw.shape, generator=g) < 0.5).float()
        return p, c, s, yaw, v, axis

    for _ in range(250):
        p, c, s, yaw, v, axis = batch()
        out = m(None, [p], c, s, axis)
        losses = m.loss(out["dir"][0], out["vel"][0], axis[0], yaw[0], v[0], avg_factor=yaw.shape[1])
        opt.zero_grad()
        (losses["loss_dir"] + losses["loss_vel"]).backward()
        opt.step()
    acc, err = [], []
    with torch.no_grad():
        for _ in range(20):
            p, c, s, yaw, v, axis = batch()
            out = m(None, [p], c, s, axis)
            final = axis + math.pi * (out["dir"] > 0).float()
            acc.append(torch.cos(final - yaw) > 0)
            err.append((m.from_box_frame(out["vel"], axis) - v).norm(dim=-1))
    acc, err = torch.cat(acc, 1).float().mean(), torch.cat(err, 1).mean()
    assert acc > 0.9 and err < 1.0, (acc, err)


def head_with_refiner(**kw):
    torch.manual_seed(0)
    coder = TransFusionBBoxCoder((-8.0, -8.0, -3.0, 8.0, 8.0, 3.0), (0.2, 0.2), 4)   # 20 x 20 cells
    ref = BoxFrameRefiner(32, coder.pc_range, (40, 40), EDGES, samples=(6, 3))
    kw.setdefault("rot_bins", 12)
    return TransFusionHead(16, 3, 10, hidden_channels=32, num_heads=4, ffn_channels=64, head_channels=32,
                           dropout=0.0, nms_exempt_classes=(), bbox_coder=coder, refiner=ref, **kw)


def test_head_wiring_flip_velocity_and_losses():
    head = head_with_refiner().train()
    assert not hasattr(head.prediction_head, "vel")
    g = torch.Generator().manual_seed(6)
    pts = [cloud(500, g), cloud(10, g)]
    preds = head(torch.randn(2, 16, 20, 20), points=pts)
    flip = (preds["dir"] > 0).float()
    yaw = preds["rot_axis"] + math.pi * flip
    torch.testing.assert_close(preds["rot"], torch.stack([yaw.sin(), yaw.cos()], 1))
    torch.testing.assert_close(preds["vel"].transpose(1, 2),
                               head.refiner.from_box_frame(preds["vel_box"], preds["rot_axis"]))
    gt = [torch.tensor([[2.0, -3.1, -0.8, 4.2, 1.9, 1.6, 0.4, 3.0, -1.0]]), torch.zeros(0, 9)]
    labels = [torch.tensor([0]), torch.zeros(0, dtype=torch.long)]
    losses = head.loss(preds, gt, labels)
    assert {"loss_dir", "loss_vel", "loss_rot", "loss_bbox"} <= set(losses)
    sum(v for k, v in losses.items() if k.startswith("loss")).backward()
    assert head.refiner.dir.weight.grad.abs().sum() > 0 and head.refiner.vel.weight.grad.abs().sum() > 0
    # the velocity codes do not enter loss_bbox
    p2 = {k: (v.detach().clone() if torch.is_tensor(v) else v) for k, v in preds.items()}
    p2["vel"] = p2["vel"] + 5.0
    torch.testing.assert_close(head.loss(p2, gt, labels)["loss_bbox"], losses["loss_bbox"].detach())
    out = head.eval().get_bboxes(head(torch.randn(1, 16, 20, 20), points=pts[:1]))
    assert out[0]["boxes"].shape[1] == 9
    with pytest.raises(ValueError, match="points"):
        head(torch.randn(1, 16, 20, 20))
    with pytest.raises(ValueError, match="rot_bins"):
        head_with_refiner(rot_bins=0)
    with pytest.raises(ValueError, match="velocity"):
        head_with_refiner(dense_keys=["vel"])
    with pytest.raises(TypeError, match="BoxFrameRefiner"):
        TransFusionHead(16, 3, 10, hidden_channels=32, num_heads=4, nms_exempt_classes=(), bbox_coder=head.bbox_coder,
                        rot_bins=8,
                        refiner=torch.nn.Linear(2, 2))


def test_gt_loss_reads_the_gt_boxes_with_random_reversals():
    m = refiner(jitter=(0.0, 0.0, 0.0)).eval()
    g = torch.Generator().manual_seed(7)
    pts = [cloud(400, g), cloud(200, g)]
    feat = torch.randn(2, 4, 8, 8, generator=g)
    gt = [torch.tensor([[1.0, 2.0, -1.0, 4.0, 1.8, 1.5, 0.3, 3.0, 1.0],
                        [-3.0, 0.5, -1.0, 0.8, 0.7, 1.7, -2.0, 0.0, 0.0]]),
          torch.zeros(0, 9)]
    raster = roi_raster(pts, EDGES, PCR, (40, 32))
    out = m.gt_loss(feat, raster, gt, generator=torch.Generator().manual_seed(0))
    # the same draws by hand: noise [M, 5] first, then the reversal coin [M]
    gg = torch.Generator().manual_seed(0)
    torch.randn(2, 5, generator=gg)
    flip = (torch.rand(2, generator=gg) < 0.5).float()
    yaw = gt[0][:, 6] + math.pi * flip
    r = m(feat[:1], None, gt[0][None, :, :2], gt[0][None, :, 3:5], yaw[None], raster=raster[:1])
    ref = m.loss(r["dir"][0], r["vel"][0], yaw, gt[0][:, 6], gt[0][:, 7:9], avg_factor=2)
    torch.testing.assert_close(out["loss_dir"], ref["loss_dir"])
    torch.testing.assert_close(out["loss_vel"], ref["loss_vel"])
    empty = m.gt_loss(feat, raster, [torch.zeros(0, 9), torch.zeros(0, 9)])
    assert float(empty["loss_dir"].detach()) == 0.0 and float(empty["loss_vel"].detach()) == 0.0
    with pytest.raises(ValueError, match="gt_boxes"):
        m.gt_loss(feat, raster, gt[:1])
    with pytest.raises(ValueError, match="raster"):
        m(feat, None, torch.zeros(2, 1, 2), torch.ones(2, 1, 2), torch.zeros(2, 1), raster=raster[:, :3])
    with pytest.raises(ValueError, match="jitter"):
        refiner(jitter=(0.1, 0.1))


def test_centroid_features_by_hand_and_in_the_mlp_input():
    m = refiner(centroids=True, samples=(4, 2), margin=(0.5, 0.0))
    sizes = torch.tensor([[[4.0, 2.0]]])
    # sample u: -1.875 -0.625 0.625 1.875 (each for v = -0.5, 0.5); counts: bin 0 at the front, bin 1 behind
    cnt = torch.zeros(1, 3, 1, 8)
    cnt[0, 0, 0, 6] = 3.0     # u = 1.875, v = -0.5
    cnt[0, 0, 0, 7] = 1.0     # u = 1.875, v = 0.5
    cnt[0, 1, 0, 0] = 2.0     # u = -1.875, v = -0.5
    samples = torch.cat([torch.log1p(cnt), torch.rand(1, 3, 1, 8)], 1)
    f = m.centroid_features(samples, sizes)[0, :, 0]
    torch.testing.assert_close(f, torch.tensor([1.875, -1.875, 0.0, -0.25, -0.5, 0.0,
                                                math.log1p(4.0), math.log1p(2.0), 0.0]))
    assert m.mlp[0].in_features == (4 + 6) * 8 + 9
    g = torch.Generator().manual_seed(8)
    out = m(torch.randn(1, 4, 8, 8, generator=g), [cloud(300, g)], torch.zeros(1, 1, 2), sizes, torch.zeros(1, 1))
    assert out["vel"].shape == (1, 1, 2)
    m.train()   # one box of one sample trains (no per-query batch norm)
    assert torch.isfinite(m.gt_loss(torch.randn(1, 4, 8, 8, generator=g), out["raster"],
                                    [torch.tensor([[0.0, 0.0, -1.0, 4.0, 2.0, 1.5, 0.2, 1.0, 0.0]])])["loss_vel"])
