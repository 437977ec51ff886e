"""LSS geometry: frustum -> LiDAR matches the analytic chain; projections land where the frustum says."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sparse3d.models.bevfusion.camera.vtransform import (DepthLSSTransform, LSSTransform, create_frustum,
                                                         frustum_geometry, geometry_to_cells, grid_size,
                                                         lidar_depth_map)

IMAGE, FEAT, DBOUND = (64, 176), (8, 22), (1.0, 30.0, 3.5)
GRID = dict(xbound=(-32.0, 32.0, 1.0), ybound=(-32.0, 32.0, 1.0), zbound=(-5.0, 3.0, 8.0))


def _rot(yaw, pitch=0.0):
    """camera -> LiDAR rotation of a camera looking along yaw (pitched down by ``pitch``): columns = camera x, y, z."""
    fwd = np.array([math.cos(yaw) * math.cos(pitch), math.sin(yaw) * math.cos(pitch), -math.sin(pitch)])
    right = np.array([math.sin(yaw), -math.cos(yaw), 0.0])
    down = np.cross(fwd, right)
    return np.stack([right, down, fwd], 1)


def _rig(B=2, N=3, flip=True, rotate=0.0, seed=0):
    """float64 numpy matrices + the parameters of the augmentation (for the analytic inverse)."""
    rng = np.random.default_rng(seed)
    c2l = np.tile(np.eye(4), (B, N, 1, 1))
    K = np.tile(np.eye(4), (B, N, 1, 1))
    aug = np.tile(np.eye(4), (B, N, 1, 1))
    laug = np.tile(np.eye(4), (B, 1, 1))
    params = {}
    for b in range(B):
        th, sc = rng.uniform(-0.7, 0.7), rng.uniform(0.9, 1.1)
        laug[b, :3, :3] = sc * np.array([[math.cos(th), -math.sin(th), 0], [math.sin(th), math.cos(th), 0], [0, 0, 1]])
        laug[b, :3, 3] = rng.normal(0, 0.5, 3)
        for n in range(N):
            c2l[b, n, :3, :3] = _rot(2 * math.pi * n / N + rng.uniform(-0.1, 0.1), rng.uniform(-0.05, 0.05))
            c2l[b, n, :3, 3] = rng.normal(0, 1.0, 3)
            fx, fy = rng.uniform(300, 500), rng.uniform(300, 500)
            K[b, n, :3, :3] = [[fx, 0.0, rng.uniform(300, 500)], [0.0, fy, rng.uniform(150, 250)], [0, 0, 1]]
            s = rng.uniform(0.2, 0.3)
            x0, y0 = rng.uniform(0, 40), rng.uniform(0, 60)
            fl = bool(flip and (b + n) % 2 == 0)
            R = np.diag([-s if fl else s, s])
            t = np.array([IMAGE[1] + x0 if fl else -x0, -y0])  # flip: u' = W - (s u - x0)
            if rotate:
                a = math.radians(rotate)
                A = np.array([[math.cos(a), math.sin(a)], [-math.sin(a), math.cos(a)]])
                c = np.array([IMAGE[1], IMAGE[0]]) / 2
                R, t = A @ R, A @ t + c - A @ c
            aug[b, n, :2, :2], aug[b, n, :2, 3] = R, t
            params[b, n] = (s, x0, y0, fl)
    return c2l, K, aug, laug, params


def _t(*arrs, dtype=torch.float64):
    return [torch.tensor(a, dtype=dtype) for a in arrs]


def test_frustum_layout():
    f = create_frustum(IMAGE, FEAT, DBOUND)
    assert f.shape == (9, 8, 22, 3) and f.dtype == torch.float32
    assert f[0, 0, -1, 0] == IMAGE[1] - 1 and f[0, -1, 0, 1] == IMAGE[0] - 1
    assert f[:, 0, 0, 2].tolist() == [1.0 + 3.5 * i for i in range(9)]
    with pytest.raises(ValueError, match="dbound"):
        create_frustum(IMAGE, FEAT, (0.0, 10.0, 1.0))


def test_geometry_matches_analytic_chain():
    """LiDAR point = lidar_aug (camera2lidar (d K^-1 [u, v, 1])), (u, v) = the un-augmented pixel,
    undoing resize + crop + horizontal flip by hand."""
    c2l, K, aug, laug, params = _rig()
    frustum = create_frustum(IMAGE, FEAT, DBOUND, dtype=torch.float64)
    geom = frustum_geometry(frustum, *_t(c2l, K, aug, laug)).numpy()
    fr = frustum.numpy()
    B, N = c2l.shape[:2]
    for b in range(B):
        for n in range(N):
            s, x0, y0, fl = params[b, n]
            up, vp, d = fr[..., 0], fr[..., 1], fr[..., 2]
            u = ((IMAGE[1] - up) + x0) / s if fl else (up + x0) / s
            v = (vp + y0) / s
            ray = np.stack([u, v, np.ones_like(u)], -1) @ np.linalg.inv(K[b, n, :3, :3]).T
            cam = d[..., None] * ray
            lidar = cam @ c2l[b, n, :3, :3].T + c2l[b, n, :3, 3]
            expect = lidar @ laug[b, :3, :3].T + laug[b, :3, 3]
            np.testing.assert_allclose(geom[b, n], expect, rtol=0, atol=1e-9)
    # float32 frustum: same up to float32 rounding
    g32 = frustum_geometry(create_frustum(IMAGE, FEAT, DBOUND), *_t(c2l, K, aug, laug, dtype=torch.float32))
    assert g32.dtype == torch.float32 and g32.shape == (B, N, 9, 8, 22, 3)
    np.testing.assert_allclose(g32.numpy(), geom, rtol=1e-5, atol=2e-4)


@pytest.mark.parametrize("rotate", [0.0, 5.4])
def test_lidar2image_projection_lands_on_the_frustum(rotate):
    """Project the frustum's LiDAR points with lidar2image = K @ camera2lidar^-1 (after undoing lidar_aug),
    then apply img_aug: they land on the frustum's (u', v') at its depth d."""
    c2l, K, aug, laug, _ = _rig(rotate=rotate, seed=1)
    frustum = create_frustum(IMAGE, FEAT, DBOUND, dtype=torch.float64)
    geom = frustum_geometry(frustum, *_t(c2l, K, aug, laug)).numpy()
    fr = frustum.numpy()
    for b in range(c2l.shape[0]):
        p = geom[b] @ np.linalg.inv(laug[b])[:3, :3].T + np.linalg.inv(laug[b])[:3, 3]
        for n in range(c2l.shape[1]):
            lidar2image = K[b, n] @ np.linalg.inv(c2l[b, n])
            q = p[n] @ lidar2image[:3, :3].T + lidar2image[:3, 3]
            d = q[..., 2]
            uv = q[..., :2] / d[..., None]
            uv_aug = uv @ aug[b, n, :2, :2].T + aug[b, n, :2, 3]
            np.testing.assert_allclose(uv_aug, fr[..., :2], atol=1e-7)
            np.testing.assert_allclose(d, fr[..., 2], atol=1e-9)


def test_random_points_round_trip_through_projection():
    c2l, K, aug, laug, _ = _rig(rotate=3.0, seed=2)
    rng = np.random.default_rng(0)
    b, n = 1, 2
    cam = np.stack([rng.uniform(-5, 5, 50), rng.uniform(-2, 2, 50), rng.uniform(2, 40, 50)], 1)
    P = (cam @ c2l[b, n, :3, :3].T + c2l[b, n, :3, 3]) @ laug[b, :3, :3].T + laug[b, :3, 3]  # augmented LiDAR
    p = P @ np.linalg.inv(laug[b])[:3, :3].T + np.linalg.inv(laug[b])[:3, 3]
    l2i = K[b, n] @ np.linalg.inv(c2l[b, n])
    q = p @ l2i[:3, :3].T + l2i[:3, 3]
    uv = q[:, :2] / q[:, 2:3] @ aug[b, n, :2, :2].T + aug[b, n, :2, 3]
    frustum = torch.tensor(np.concatenate([uv, q[:, 2:3]], 1)).view(50, 1, 1, 3)  # any [D, fH, fW, 3] works
    geom = frustum_geometry(frustum, *_t(c2l, K, aug, laug)).numpy()[b, n, :, 0, 0]
    np.testing.assert_allclose(geom, P, atol=1e-8)


def test_cells_use_floor_and_grid_size():
    assert grid_size(*GRID.values()) == (64, 64, 1)
    assert grid_size((-54, 54, 0.3), (-54, 54, 0.3), (-10, 10, 20)) == (360, 360, 1)
    with pytest.raises(ValueError, match="xbound"):
        grid_size((-1, 1, 0.3), (-1, 1, 1), (-1, 1, 2))
    with pytest.raises(ValueError, match="zbound"):
        grid_size((-1, 1, 1), (-1, 1, 1), (1, -1, 2))
    pts = torch.tensor([[-32.1, 0, 0], [-31.99, 0, 0], [31.999, 31.5, 2.9], [32.0, 0, 0], [0, 0, -5.01],
                        [-0.5, -0.5, -5.0]], dtype=torch.float64).view(1, 6, 1, 1, 1, 3)
    cells, batch, valid = geometry_to_cells(pts, **GRID)
    assert valid.tolist() == [False, True, True, False, False, True]  # -0.1 cell is outside (no truncation to 0)
    assert cells[1].tolist() == [0, 32, 0] and cells[2].tolist() == [63, 63, 0] and cells[5].tolist() == [31, 31, 0]
    assert batch.tolist() == [0] * 6


def test_singular_matrices_raise_naming_the_matrix():
    c2l, K, aug, laug, _ = _rig(B=1, N=2)
    frustum = create_frustum(IMAGE, FEAT, DBOUND)
    K[0, 1, 1] = 0.0
    with pytest.raises(ValueError, match=r"camera_intrinsics\[0, 1\] is not invertible"):
        frustum_geometry(frustum, *_t(c2l, K, aug, laug))
    K[0, 1, 1, 1] = 400.0
    aug[0, 0, :2, :2] = 0.0
    with pytest.raises(ValueError, match=r"img_aug_matrix\[0, 0\] is not invertible"):
        frustum_geometry(frustum, *_t(c2l, K, aug, laug))
    aug[0, 0, :2, :2] = np.eye(2)
    laug[0] = 0.0
    with pytest.raises(ValueError, match=r"lidar_aug_matrix\[0\] is not invertible"):
        lidar_depth_map([torch.zeros(3, 5)], *_t(c2l, K, aug, laug), IMAGE)
    with pytest.raises(ValueError, match="camera2lidar must have shape"):
        frustum_geometry(frustum, *_t(c2l[:, :, :3, :3], K, aug, np.tile(np.eye(4), (1, 1, 1))))
    c2l[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="camera2lidar has non-finite"):
        frustum_geometry(frustum, *_t(c2l, K, aug, np.tile(np.eye(4), (1, 1, 1))))


def test_lidar_depth_map_pixels_nearest_and_behind():
    c2l, K, aug, laug, _ = _rig(B=1, N=2, seed=3)
    mats = _t(c2l, K, aug, laug)
    # points on the ray of augmented pixel centre (10.5, 20.5) of camera 1 at depths 7 and 12, and (30.5, 5.5) at 4
    fr = torch.tensor([[10.5, 20.5, 7.0], [10.5, 20.5, 12.0], [30.5, 5.5, 4.0]], dtype=torch.float64).view(3, 1, 1, 3)
    P = frustum_geometry(fr, *mats)[0, 1, :, 0, 0]
    # a point behind camera 1: mirror a visible camera-frame point through the camera centre
    cam_vis = np.array([0.3, 0.2, 5.0])
    cam_behind = -cam_vis
    behind = (cam_behind @ c2l[0, 1, :3, :3].T + c2l[0, 1, :3, 3]) @ laug[0, :3, :3].T + laug[0, :3, 3]
    pts = torch.cat([P, torch.tensor(behind).view(1, 3)], 0)
    pts = torch.cat([pts, torch.zeros(4, 2, dtype=torch.float64)], 1).float()  # 5 features per point
    dm = lidar_depth_map([pts], *mats, IMAGE)
    assert dm.shape == (1, 2, 1, *IMAGE) and dm.dtype == torch.float32
    cam1 = dm[0, 1, 0]
    assert cam1[20, 10] == pytest.approx(7.0, abs=1e-4)  # nearest of the two points on the ray
    assert cam1[5, 30] == pytest.approx(4.0, abs=1e-4)
    assert int((cam1 > 0).sum()) == 2  # the point behind the camera is dropped
    assert int((dm[0, 0] > 0).sum()) <= 4
    empty = lidar_depth_map([torch.zeros(0, 5)], *mats, IMAGE)
    assert not empty.any()
    with pytest.raises(ValueError, match="points must be a list of B=1"):
        lidar_depth_map([pts, pts], *mats, IMAGE)


def _module_inputs(B=2, N=3, C=16, seed=0):
    c2l, K, aug, laug, _ = _rig(B, N, seed=seed)
    feats = torch.randn(B, N, C, *FEAT, generator=torch.Generator().manual_seed(seed))
    return feats, _t(c2l, K, aug, laug, dtype=torch.float32)


def test_lss_peaked_depth_splats_context_into_the_geometry_cells():
    """With the depth softmax peaked at bin k and context = 1, the BEV counts the pixels whose bin-k frustum
    point falls in each cell (the naive histogram of the geometry)."""
    vt = LSSTransform(16, 4, IMAGE, FEAT, dbound=DBOUND, **GRID).double()
    k = 3
    with torch.no_grad():
        vt.depthnet.weight.zero_()
        vt.depthnet.bias.zero_()
        vt.depthnet.bias[k] = 60.0
        vt.depthnet.bias[vt.D] = 1.0  # context channel 0 = 1
    feats, mats = _module_inputs()
    mats = [m.double() for m in mats]
    bev = vt(feats.double(), None, *mats)
    assert bev.shape == (2, 4, 64, 64)
    geom = vt.get_geometry(*mats)[:, :, k:k + 1]
    cells, batch, valid = geometry_to_cells(geom, **GRID)
    flat = (batch * 64 + cells[:, 0]) * 64 + cells[:, 1]
    hist = torch.bincount(flat[valid], minlength=2 * 64 * 64).view(2, 64, 64).double()
    torch.testing.assert_close(bev[:, 0], hist, atol=1e-9, rtol=1e-9)
    assert hist.sum() > 50 and not bev[:, 1:].any()


def test_lss_cache_fused_and_shapes():
    feats, mats = _module_inputs()
    vt = LSSTransform(16, 8, IMAGE, FEAT, dbound=DBOUND, **GRID)
    f = feats.clone().requires_grad_()
    out = vt(f, None, *mats)
    assert out.shape == (2, 8, 64, 64) and vt.bev_size == (64, 64)
    assert vt.plan_cache.misses == 1 and vt.plan_cache.hits == 0
    plan = vt.get_plan(*mats)
    assert vt.plan_cache.hits == 1 and vt.get_plan(*[m.clone() for m in mats]) is plan
    out2 = vt(feats, None, *mats, fused=False)
    torch.testing.assert_close(out, out2, rtol=1e-5, atol=1e-5)
    out.square().sum().backward()
    assert f.grad is not None and f.grad.abs().sum() > 0
    # changing the LiDAR augmentation invalidates the plan, and the result equals an uncached module's
    mats2 = list(mats)
    mats2[3] = mats[3].clone()
    mats2[3][:, 0, 3] += 3.0
    vt_nc = LSSTransform(16, 8, IMAGE, FEAT, dbound=DBOUND, cache_geometry=False, **GRID)
    vt_nc.load_state_dict(vt.state_dict())
    torch.testing.assert_close(vt(feats, None, *mats2), vt_nc(feats, None, *mats2))
    assert vt.get_plan(*mats2) is not plan and len(vt_nc.plan_cache._entries) == 0
    with pytest.raises(ValueError, match="feature_size"):
        vt(feats[..., :-1], None, *mats)
    with pytest.raises(ValueError, match="img_aug_matrix must have shape"):
        vt(feats, None, mats[0], mats[1], mats[2][:, :2], mats[3])


def test_downsample_and_multiple_z_bins():
    feats, mats = _module_inputs(B=1, N=2)
    vt = LSSTransform(16, 8, IMAGE, FEAT, xbound=(-32, 32, 0.5), ybound=(-32, 32, 0.5), zbound=(-5, 3, 4),
                      dbound=DBOUND, downsample=2)
    assert vt.nx == (128, 128, 2) and vt.bev_size == (64, 64)
    assert vt(feats, None, *mats).shape == (1, 8, 64, 64)
    vt1 = LSSTransform(16, 8, IMAGE, FEAT, xbound=(-32, 32, 1), ybound=(-32, 32, 1), zbound=(-5, 3, 2), dbound=DBOUND)
    assert vt1(feats, None, *mats).shape == (1, 8, 64, 64)
    with pytest.raises(ValueError, match="downsample"):
        LSSTransform(16, 8, IMAGE, FEAT, dbound=DBOUND, downsample=3, **GRID)


def test_depth_lss_uses_lidar_depth():
    feats, mats = _module_inputs(B=2, N=3)
    vt = DepthLSSTransform(16, 8, IMAGE, FEAT, dbound=DBOUND, **GRID).eval()
    g = torch.Generator().manual_seed(0)
    pts = [torch.cat([torch.randn(500, 3, generator=g) * 10, torch.zeros(500, 2)], 1) for _ in range(2)]
    out = vt(feats, pts, *mats)
    assert out.shape == (2, 8, 64, 64) and torch.isfinite(out).all()
    out_moved = vt(feats, [p + torch.tensor([3.0, 0, 0, 0, 0]) for p in pts], *mats)
    assert not torch.allclose(out, out_moved)  # the depth input matters
    out_empty = vt(feats, [torch.zeros(0, 5), torch.zeros(0, 5)], *mats)
    assert torch.isfinite(out_empty).all()
    with pytest.raises(ValueError, match="needs points"):
        vt(feats, None, *mats)
    # stride-16 features: the depth branch adapts its strides
    vt16 = DepthLSSTransform(16, 8, IMAGE, (4, 11), dbound=DBOUND, **GRID)
    assert vt16(feats[..., ::2, ::2], pts, *mats).shape == (2, 8, 64, 64)
