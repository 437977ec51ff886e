"""Rotated BEV / 3D IoU (sparse3d.models.bevfusion.heads.iou3d) against shapely and a Monte-Carlo reference."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparse3d.models.bevfusion.heads.iou3d import box_corners_bev, box_iou_3d, box_iou_bev, box_overlap_bev

shapely = pytest.importorskip("shapely")
from shapely.geometry import Polygon  # noqa: E402


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def box(x=0.0, y=0.0, z=0.0, length=1.0, width=1.0, height=1.0, yaw=0.0):
    return [x, y, z, length, width, height, yaw, 0.0, 0.0]


def T(rows):
    return torch.tensor(rows, dtype=torch.float64)


def shapely_poly(b):
    x, y, _, length, width, _, yaw = b[:7]
    c, s = math.cos(yaw), math.sin(yaw)
    pts = [(x + c * dx - s * dy, y + s * dx + c * dy)
           for dx, dy in ((length / 2, width / 2), (-length / 2, width / 2), (-length / 2, -width / 2),
                          (length / 2, -width / 2))]
    return Polygon(pts)


def shapely_iou_bev(a, b):
    pa, pb = shapely_poly(a), shapely_poly(b)
    inter = pa.intersection(pb).area
    union = pa.area + pb.area - inter
    return inter / union if union > 0 else 0.0


def monte_carlo_iou_3d(a, b, n=400_000, seed=0):
    """IoU from uniform samples in the joint bounding box (reference for the 3D IoU)."""
    rng = np.random.default_rng(seed)
    ra, rb = [0.5 * math.hypot(t[3], t[4]) for t in (a, b)]
    lo = np.array([min(a[0] - ra, b[0] - rb), min(a[1] - ra, b[1] - rb), min(a[2] - a[5] / 2, b[2] - b[5] / 2)])
    hi = np.array([max(a[0] + ra, b[0] + rb), max(a[1] + ra, b[1] + rb), max(a[2] + a[5] / 2, b[2] + b[5] / 2)])
    p = rng.uniform(lo, hi, size=(n, 3))

    def inside(t):
        c, s = math.cos(t[6]), math.sin(t[6])
        dx, dy = p[:, 0] - t[0], p[:, 1] - t[1]
        u, v = c * dx + s * dy, -s * dx + c * dy
        return (np.abs(u) <= t[3] / 2) & (np.abs(v) <= t[4] / 2) & (np.abs(p[:, 2] - t[2]) <= t[5] / 2)

    ia, ib = inside(a), inside(b)
    return (ia & ib).sum() / max((ia | ib).sum(), 1)


@pytest.mark.parametrize("yaw", [0.0, 0.3, -1.2, math.pi / 2, math.pi, 2.5])
def test_identical_boxes_give_one(yaw):
    b = T([box(3.0, -2.0, 0.5, 4.2, 1.8, 1.5, yaw)])
    assert box_iou_bev(b, b).item() == pytest.approx(1.0, abs=1e-9)
    assert box_iou_3d(b, b).item() == pytest.approx(1.0, abs=1e-9)


def test_disjoint_boxes_give_zero():
    a = T([box(0, 0, 0, 2, 1, 1, 0.3)])
    far = T([box(10, 0, 0, 2, 1, 1, 0.0), box(1.6, 0.0, 0, 1, 1, 1, 0.0), box(0, 0, 5, 2, 1, 1, 0.3)])
    iou_bev = box_iou_bev(a, far)
    assert iou_bev[0, 0].item() == 0.0
    assert iou_bev[0, 1].item() == pytest.approx(shapely_iou_bev(a[0].tolist(), far[1].tolist()), abs=1e-9)
    assert iou_bev[0, 2].item() == pytest.approx(1.0)  # same footprint, stacked 5 m higher
    assert box_iou_3d(a, far)[0, 2].item() == 0.0  # ... which is disjoint in 3D
    touching = T([box(2.0, 0, 0, 2, 1, 1, 0.0)])
    assert box_iou_bev(T([box(0, 0, 0, 2, 1, 1, 0.0)]), touching).item() == pytest.approx(0.0, abs=1e-12)


def test_rotated_square_and_flipped_rectangle_give_one():
    sq = T([box(1.0, 2.0, 0, 2.0, 2.0, 1.0, 0.2)])
    for dyaw in (math.pi / 2, math.pi, -math.pi / 2, 3 * math.pi / 2):
        rot = sq.clone()
        rot[0, 6] += dyaw
        assert box_iou_bev(sq, rot).item() == pytest.approx(1.0, abs=1e-9)
    rect = T([box(0, 0, 0, 4.0, 1.0, 1.0, 0.7)])
    flipped = rect.clone()
    flipped[0, 6] += math.pi
    assert box_iou_bev(rect, flipped).item() == pytest.approx(1.0, abs=1e-9)
    swapped = T([box(0, 0, 0, 1.0, 4.0, 1.0, 0.7 + math.pi / 2)])  # l and w swapped with a 90 degree turn
    assert box_iou_3d(rect, swapped).item() == pytest.approx(1.0, abs=1e-9)


def test_square_rotated_45_degrees_analytic():
    a = T([box(0, 0, 0, 1, 1, 1, 0.0)])
    b = T([box(0, 0, 0, 1, 1, 1, math.pi / 4)])
    inter = 2 * (math.sqrt(2) - 1)  # regular octagon
    assert box_overlap_bev(a, b).item() == pytest.approx(inter, rel=1e-12)
    assert box_iou_bev(a, b).item() == pytest.approx(inter / (2 - inter), rel=1e-12)


def test_containment():
    big = T([box(0, 0, 0, 6, 4, 2, 0.4)])
    small = T([box(0.5, 0.2, 0.1, 2, 1, 1, -0.9)])
    assert box_overlap_bev(big, small).item() == pytest.approx(2.0, rel=1e-12)
    assert box_iou_bev(big, small).item() == pytest.approx(2 / 24, rel=1e-12)
    assert box_iou_3d(small, big).item() == pytest.approx(2 / 48, rel=1e-12)


def test_partial_overlap_axis_aligned_3d():
    a = T([box(0, 0, 0, 2, 2, 2, 0)])
    b = T([box(1, 1, 1, 2, 2, 2, 0)])
    assert box_iou_3d(a, b).item() == pytest.approx(1 / 15, rel=1e-12)  # 1 / (8 + 8 - 1)
    assert box_iou_bev(a, b).item() == pytest.approx(1 / 7, rel=1e-12)


def test_against_shapely_random_batch():
    rng = np.random.default_rng(0)
    n, m = 40, 30
    a = np.concatenate([rng.uniform(-3, 3, (n, 3)), rng.uniform(0.2, 4, (n, 3)), rng.uniform(-4, 4, (n, 1))], 1)
    b = np.concatenate([rng.uniform(-3, 3, (m, 3)), rng.uniform(0.2, 4, (m, 3)), rng.uniform(-4, 4, (m, 1))], 1)
    got = box_iou_bev(torch.from_numpy(a), torch.from_numpy(b)).numpy()
    ref = np.array([[shapely_iou_bev(a[i], b[j]) for j in range(m)] for i in range(n)])
    assert (ref > 0).sum() > 50  # the batch really overlaps
    np.testing.assert_allclose(got, ref, atol=1e-9)
    # symmetry
    np.testing.assert_allclose(box_iou_bev(torch.from_numpy(b), torch.from_numpy(a)).numpy(), got.T, atol=1e-12)


finite = dict(allow_nan=False, allow_infinity=False)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.floats(-3, 3, **finite), min_size=2, max_size=2),
       st.lists(st.floats(0.05, 5, **finite), min_size=4, max_size=4),
       st.floats(-7, 7, **finite), st.floats(-7, 7, **finite), st.floats(-1e4, 1e4, **finite))
def test_property_bev_overlap_matches_shapely(offset, sizes, yaw_a, yaw_b, shift):
    a = [shift, -shift, 0, sizes[0], sizes[1], 1, yaw_a]
    b = [shift + offset[0], -shift + offset[1], 0, sizes[2], sizes[3], 1, yaw_b]
    # shapely on origin-shifted copies (exact reference even for large coordinates)
    ref_inter = shapely_poly([0, 0] + a[2:]).intersection(shapely_poly(offset + b[2:])).area
    got = box_overlap_bev(T([a]), T([b])).item()
    assert got == pytest.approx(ref_inter, abs=1e-9 + 1e-12 * abs(shift) * 25)
    iou = box_iou_bev(T([a]), T([b])).item()
    assert 0.0 <= iou <= 1.0


@pytest.mark.parametrize("case", range(4))
def test_3d_iou_matches_monte_carlo(case):
    rng = np.random.default_rng(case)
    a = [0.0, 0.0, 0.0, 4.0, 2.0, 1.5, rng.uniform(-3, 3)]
    b = [rng.uniform(-1, 1), rng.uniform(-1, 1), rng.uniform(-0.6, 0.6), rng.uniform(2, 5), rng.uniform(1, 3),
         rng.uniform(1, 2), rng.uniform(-3, 3)]
    got = box_iou_3d(T([a]), T([b])).item()
    assert got > 0.05
    assert got == pytest.approx(monte_carlo_iou_3d(a, b), abs=0.01)


def test_empty_and_degenerate_inputs():
    a = T([box(0, 0, 0, 2, 1, 1, 0.3)])
    empty = torch.zeros(0, 9, dtype=torch.float64)
    for fn in (box_iou_bev, box_iou_3d, box_overlap_bev):
        assert fn(empty, a).shape == (0, 1)
        assert fn(a, empty).shape == (1, 0)
        assert fn(empty, empty).shape == (0, 0)
    zero = T([box(0, 0, 0, 0, 0, 0, 0)])
    for fn in (box_iou_bev, box_iou_3d):
        assert fn(zero, zero).item() == 0.0  # union 0 -> 0, not NaN
        assert fn(zero, a).item() == 0.0
    flat = T([box(0, 0, 0, 2, 1, 0, 0.3)])  # zero height: BEV overlap but no volume
    assert box_iou_bev(flat, a).item() == pytest.approx(1.0)
    assert box_iou_3d(flat, a).item() == 0.0


def test_duplicates_large_coordinates_dtype_and_numpy():
    a = T([box(1e4, -1e4, 0, 3, 1, 1, 0.1), box(1e4, -1e4, 0, 3, 1, 1, 0.1)])
    iou = box_iou_bev(a, a)
    np.testing.assert_allclose(iou.numpy(), np.ones((2, 2)), atol=1e-7)
    f32 = box_iou_3d(a.float(), a.float())
    assert f32.dtype == torch.float32
    arr = box_iou_bev(a.numpy(), a.numpy())
    assert isinstance(arr, torch.Tensor) and arr.dtype == torch.float32


def test_corners_match_box_geometry():
    b = T([box(1.0, -2.0, 0, 4.0, 2.0, 1.0, 0.5)])
    corners = box_corners_bev(b)[0]
    assert corners.shape == (4, 2)
    poly = Polygon(corners.tolist())
    assert poly.area == pytest.approx(8.0)
    assert poly.exterior.is_ccw
    assert poly.centroid.x == pytest.approx(1.0) and poly.centroid.y == pytest.approx(-2.0)
    heading = torch.tensor([math.cos(0.5), math.sin(0.5)], dtype=torch.float64)
    assert float((corners[0] - b[0, :2]) @ heading) == pytest.approx(2.0)  # first corner is at the front


def test_bad_input_raises():
    a = T([box()])
    with pytest.raises(ValueError, match="boxes_a"):
        box_iou_bev(torch.zeros(3, 5), a)
    with pytest.raises(ValueError, match="boxes_b"):
        box_iou_3d(a, torch.zeros(3))
    with pytest.raises(TypeError, match="boxes_a"):
        box_iou_bev([[0.0] * 7], a)
