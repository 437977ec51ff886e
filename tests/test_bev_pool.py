"""BEV pooling: numba interval kernels and the torch interval path against the naive ``index_add`` reference."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparse3d.nn.functional.bev_pool import (BEVPoolCache, BEVPoolPlan, bev_pool, bev_pool_depth,
                                             bev_pool_with_plan)
from sparse3d.ops.bev_pool import numba_cpu, reference

IMPLS = ["numba", "torch"]


def _points(M, B, X, Y, Z, C, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    geom = torch.stack([torch.randint(0, X, (M,), generator=g), torch.randint(0, Y, (M,), generator=g),
                        torch.randint(0, Z, (M,), generator=g)], 1).int()
    b = torch.randint(0, B, (M,), generator=g).int()
    feats = torch.randn(M, C, generator=g, dtype=torch.float64).to(dtype)
    return feats, geom, b


def _naive_grad(feats, geom, b, B, X, Y, Z, w):
    f = feats.detach().clone().requires_grad_()
    (reference.bev_pool_naive(f, geom, b, B, X, Y, Z) * w).sum().backward()
    return f.grad


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_naive_forward_backward(impl, dtype):
    B, X, Y, Z, C = 3, 9, 11, 2, 5
    feats, geom, b = _points(4000, B, X, Y, Z, C, dtype=dtype)
    ref = reference.bev_pool_naive(feats, geom, b, B, X, Y, Z)
    f = feats.clone().requires_grad_()
    out = bev_pool(f, geom, b, B, X, Y, Z, impl=impl)
    assert out.shape == (B, C, Z, X, Y) and out.dtype == dtype
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out, ref, **tol)
    w = torch.randn(out.shape, dtype=torch.float64).to(dtype)
    (out * w).sum().backward()
    torch.testing.assert_close(f.grad, _naive_grad(feats, geom, b, B, X, Y, Z, w), **tol)


def test_layout_is_b_c_z_x_y():
    feats = torch.tensor([[1.0, 10.0], [2.0, 20.0], [4.0, 40.0]], dtype=torch.float64)
    geom = torch.tensor([[1, 2, 0], [1, 2, 0], [0, 1, 1]], dtype=torch.int64)
    b = torch.tensor([1, 1, 0])
    for impl in IMPLS:
        out = bev_pool(feats, geom, b, 2, 3, 4, 2, impl=impl)
        expect = torch.zeros(2, 2, 2, 3, 4, dtype=torch.float64)
        expect[1, :, 0, 1, 2] = torch.tensor([3.0, 30.0])
        expect[0, :, 1, 0, 1] = torch.tensor([4.0, 40.0])
        torch.testing.assert_close(out, expect, rtol=0, atol=0)


@pytest.mark.parametrize("impl", IMPLS)
def test_gradcheck_float64(impl):
    feats, geom, b = _points(16, 2, 2, 3, 2, 2, seed=1)
    plan = BEVPoolPlan.build(geom, b, 2, 2, 3, 2, impl=impl)
    f = feats.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda x: bev_pool_with_plan(x, plan, impl=impl), (f,))


@pytest.mark.parametrize("impl", IMPLS)
def test_empty_input(impl):
    f = torch.zeros(0, 4, dtype=torch.float32, requires_grad=True)
    out = bev_pool(f, torch.zeros(0, 3, dtype=torch.int32), torch.zeros(0, dtype=torch.int32), 2, 3, 4, 1, impl=impl)
    assert out.shape == (2, 4, 1, 3, 4) and not out.any()
    out.sum().backward()
    assert f.grad.shape == (0, 4)


@pytest.mark.parametrize("impl", IMPLS)
def test_one_point_and_all_in_one_cell(impl):
    f = torch.tensor([[1.5, -2.0]], dtype=torch.float64, requires_grad=True)
    out = bev_pool(f, torch.tensor([[2, 0, 0]]), torch.tensor([0]), 1, 3, 1, 1, impl=impl)
    assert out[0, :, 0, 2, 0].tolist() == [1.5, -2.0] and out.abs().sum() == 3.5
    (out * 3).sum().backward()
    assert f.grad.tolist() == [[3.0, 3.0]]
    # 5000 points in the same cell: one interval spanning everything (and several chunks' worth)
    feats = torch.randn(5000, 3, dtype=torch.float64)
    geom = torch.tensor([[1, 1, 0]]).repeat(5000, 1)
    b = torch.ones(5000, dtype=torch.long)
    out = bev_pool(feats, geom, b, 2, 2, 2, 1, impl=impl)
    torch.testing.assert_close(out[1, :, 0, 1, 1], feats.sum(0))
    assert int((out != 0).sum()) == 3  # only that cell's 3 channels are non-zero
    plan = BEVPoolPlan.build(geom, b, 2, 2, 2, 1, impl=impl)
    assert plan.n_intervals == 1 and plan.starts.tolist() == [0, 5000]


@pytest.mark.parametrize("impl", IMPLS)
def test_batch_boundaries_do_not_mix(impl):
    # the last cell of sample 0 and the first cell of sample 1 have consecutive ranks
    X, Y, Z = 4, 5, 3
    geom = torch.tensor([[X - 1, Y - 1, Z - 1], [0, 0, 0], [X - 1, Y - 1, Z - 1], [0, 0, 0]])
    b = torch.tensor([0, 1, 1, 0])
    feats = torch.tensor([[1.0], [10.0], [100.0], [1000.0]], dtype=torch.float64)
    out = bev_pool(feats, geom, b, 2, X, Y, Z, impl=impl)
    assert out[0, 0, Z - 1, X - 1, Y - 1] == 1.0 and out[1, 0, 0, 0, 0] == 10.0
    assert out[1, 0, Z - 1, X - 1, Y - 1] == 100.0 and out[0, 0, 0, 0, 0] == 1000.0
    torch.testing.assert_close(out, reference.bev_pool_naive(feats, geom, b, 2, X, Y, Z))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("bad", [(-1, 0, 0), (0, -1, 0), (0, 0, -1), (4, 0, 0), (0, 5, 0), (0, 0, 2)])
def test_out_of_grid_points_raise(impl, bad):
    geom = torch.tensor([[1, 1, 1], list(bad)])
    with pytest.raises(ValueError, match=r"geom\[1\].*outside the grid"):
        bev_pool(torch.ones(2, 3), geom, torch.zeros(2, dtype=torch.long), 1, 4, 5, 2, impl=impl)


@pytest.mark.parametrize("impl", IMPLS)
def test_bad_batch_index_and_bad_arguments(impl):
    geom = torch.zeros(3, 3, dtype=torch.long)
    with pytest.raises(ValueError, match=r"batch_idx\[2\] = 2"):
        bev_pool(torch.ones(3, 2), geom, torch.tensor([0, 1, 2]), 2, 1, 1, 1, impl=impl)
    with pytest.raises(TypeError, match="geom must be an integer tensor"):
        bev_pool(torch.ones(3, 2), geom.float(), torch.zeros(3, dtype=torch.long), 1, 1, 1, 1, impl=impl)
    with pytest.raises(ValueError, match="geom must have shape"):
        bev_pool(torch.ones(3, 2), geom[:, :2], torch.zeros(3, dtype=torch.long), 1, 1, 1, 1, impl=impl)
    with pytest.raises(ValueError, match="batch_idx must have shape"):
        bev_pool(torch.ones(3, 2), geom, torch.zeros(2, dtype=torch.long), 1, 1, 1, 1, impl=impl)
    with pytest.raises(TypeError, match="feats must be a floating-point"):
        bev_pool(torch.ones(3, 2, dtype=torch.long), geom, torch.zeros(3, dtype=torch.long), 1, 1, 1, 1, impl=impl)
    with pytest.raises(ValueError, match="X must be a positive int"):
        bev_pool(torch.ones(3, 2), geom, torch.zeros(3, dtype=torch.long), 1, 0, 1, 1, impl=impl)
    plan = BEVPoolPlan.build(geom, torch.zeros(3, dtype=torch.long), 1, 1, 1, 1, impl=impl)
    with pytest.raises(ValueError, match="feats has 4 rows but the plan was built for 3"):
        bev_pool_with_plan(torch.ones(4, 2), plan)
    with pytest.raises(ValueError, match="impl must be one of"):
        bev_pool_with_plan(torch.ones(3, 2), plan, impl="cuda")


@pytest.mark.parametrize("impl", IMPLS)
def test_valid_mask_skips_points(impl):
    feats, geom, b = _points(300, 2, 5, 6, 1, 4, seed=3)
    valid = torch.rand(300, generator=torch.Generator().manual_seed(0)) < 0.6
    geom_bad = geom.clone()
    geom_bad[~valid, 0] = -7  # skipped points may lie anywhere
    plan = BEVPoolPlan.build(geom_bad, b, 2, 5, 6, 1, valid=valid, impl=impl)
    assert plan.n_points == 300 and plan.n_kept == int(valid.sum())
    f = feats.clone().requires_grad_()
    out = bev_pool_with_plan(f, plan, impl=impl)
    torch.testing.assert_close(out, reference.bev_pool_naive(feats[valid], geom[valid], b[valid], 2, 5, 6, 1))
    out.sum().backward()
    assert (f.grad[~valid] == 0).all() and (f.grad[valid] == 1).all()


def test_numba_and_torch_plans_identical_including_argsort_fallback():
    for X, Y in ((7, 9), (1500, 1000)):  # the second grid is far larger than the point set: argsort path
        feats, geom, b = _points(5000, 2, X, Y, 1, 2, seed=4)
        ranks = reference.flat_ranks(geom, b, 2, X, Y, 1)
        o_t, s_t, c_t = reference.build_intervals(ranks)
        o_n, s_n, c_n = numba_cpu.build_intervals(ranks.numpy(), 2 * X * Y)
        assert torch.equal(o_t, torch.from_numpy(o_n)) and torch.equal(s_t, torch.from_numpy(s_n))
        assert torch.equal(c_t, torch.from_numpy(c_n))
        torch.testing.assert_close(bev_pool(feats, geom, b, 2, X, Y, 1, impl="numba"),
                                   reference.bev_pool_naive(feats, geom, b, 2, X, Y, 1))


def test_large_and_negative_free_coordinates_far_corner():
    # a point in the very last cell of a large grid and one at the origin
    X, Y, Z, B = 1000, 700, 2, 2
    geom = torch.tensor([[X - 1, Y - 1, Z - 1], [0, 0, 0]], dtype=torch.int32)
    b = torch.tensor([B - 1, 0], dtype=torch.int32)
    feats = torch.tensor([[2.0], [3.0]], dtype=torch.float64)
    for impl in IMPLS:
        out = bev_pool(feats, geom, b, B, X, Y, Z, impl=impl)
        assert out[B - 1, 0, Z - 1, X - 1, Y - 1] == 2.0 and out[0, 0, 0, 0, 0] == 3.0 and out.sum() == 5.0


def test_deterministic_and_thread_count_independent():
    feats, geom, b = _points(20000, 2, 16, 16, 1, 8, seed=5, dtype=torch.float32)
    n = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        a = bev_pool(feats, geom, b, 2, 16, 16, 1, impl="numba")
        torch.set_num_threads(2)
        c = bev_pool(feats, geom, b, 2, 16, 16, 1, impl="numba")
        d = bev_pool(feats, geom, b, 2, 16, 16, 1, impl="numba")
    finally:
        torch.set_num_threads(n)
    assert torch.equal(a, c) and torch.equal(c, d)


def test_plan_reuse_and_torch_plan_equals_numba_plan():
    feats, geom, b = _points(3000, 2, 8, 8, 2, 4, seed=6)
    pn = BEVPoolPlan.build(geom, b, 2, 8, 8, 2, impl="numba")
    pt = BEVPoolPlan.build(geom, b, 2, 8, 8, 2, impl="torch")
    for name in ("ranks", "order", "starts", "cells"):
        assert torch.equal(getattr(pn, name), getattr(pt, name)), name
    for seed in range(3):  # one plan, several feature tensors
        f = torch.randn(3000, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
        torch.testing.assert_close(bev_pool_with_plan(f, pn), reference.bev_pool_naive(f, geom, b, 2, 8, 8, 2))
    assert "intervals=" in repr(pn) and pn.to("cpu") is pn


def test_cache_hits_and_misses():
    cache = BEVPoolCache(max_entries=2)
    k1 = (torch.eye(4), torch.ones(2, 3))
    assert cache.get(k1) is None
    cache.put(k1, "plan1")
    assert cache.get((torch.eye(4), torch.ones(2, 3))) == "plan1"
    k2 = (torch.eye(4) * 2, torch.ones(2, 3))
    assert cache.get(k2) is None
    cache.put(k2, "plan2")
    cache.put((torch.eye(3), torch.ones(1)), "plan3")  # evicts k1
    assert cache.get(k1) is None and cache.get(k2) == "plan2"
    assert cache.get((torch.eye(4).double(), torch.ones(2, 3))) is None  # dtype is part of the key
    assert cache.hits == 2 and cache.misses == 4
    k1[0][0, 0] = 5.0  # the stored key is a copy, so mutating the caller's tensor cannot fake a hit
    cache.clear()
    assert cache.get(k2) is None


def _depth_case(seed=0, dtype=torch.float64, small=False):
    g = torch.Generator().manual_seed(seed)
    BN, D, HW, C, B, X, Y, Z = (2, 3, 4, 2, 1, 3, 2, 2) if small else (4, 5, 6, 3, 2, 4, 5, 2)
    depth = torch.rand(BN, D, HW, generator=g, dtype=dtype)
    ctx = torch.randn(BN, HW, C, generator=g, dtype=dtype)
    M = BN * D * HW
    geom = torch.stack([torch.randint(-1, X, (M,), generator=g), torch.randint(0, Y, (M,), generator=g),
                        torch.randint(0, Z, (M,), generator=g)], 1)
    b = torch.arange(BN).repeat_interleave(D * HW) // 2
    valid = geom[:, 0] >= 0
    return depth, ctx, geom, b, valid, (B, X, Y, Z)


@pytest.mark.parametrize("impl", IMPLS)
def test_fused_depth_pool_equals_unfused_and_gradcheck(impl):
    depth, ctx, geom, b, valid, grid = _depth_case(small=True)
    plan = BEVPoolPlan.build(geom, b, *grid, valid=valid, impl=impl)
    BN, D, HW = depth.shape
    feats = (depth.unsqueeze(-1) * ctx.unsqueeze(1)).reshape(-1, ctx.shape[2])
    torch.testing.assert_close(bev_pool_depth(depth, ctx, plan, impl=impl),
                               reference.bev_pool_naive(feats[valid], geom[valid], b[valid], *grid))
    d = depth.clone().requires_grad_()
    c = ctx.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda x, y: bev_pool_depth(x, y, plan, impl=impl), (d, c))
    # gradient w.r.t. one input only
    out = bev_pool_depth(depth, c, plan, impl=impl)
    out.sum().backward()
    assert c.grad is not None and c.grad.shape == ctx.shape


def test_fused_depth_pool_float32_and_bad_args():
    depth, ctx, geom, b, valid, grid = _depth_case(1, torch.float32)
    plan = BEVPoolPlan.build(geom, b, *grid, valid=valid)
    feats = (depth.unsqueeze(-1) * ctx.unsqueeze(1)).reshape(-1, ctx.shape[2])
    torch.testing.assert_close(bev_pool_depth(depth, ctx, plan), bev_pool_with_plan(feats, plan))
    with pytest.raises(ValueError, match="context must be"):
        bev_pool_depth(depth, ctx[:, :-1], plan)
    with pytest.raises(ValueError, match="share dtype"):
        bev_pool_depth(depth, ctx.double(), plan)
    with pytest.raises(ValueError, match="frustum points but the plan"):
        bev_pool_depth(depth[:-1], ctx[:-1], plan)


@settings(max_examples=40, deadline=None)
@given(M=st.integers(0, 200), B=st.integers(1, 3), X=st.integers(1, 6), Y=st.integers(1, 6), Z=st.integers(1, 3),
       C=st.integers(1, 5), seed=st.integers(0, 2 ** 16))
def test_property_matches_naive_and_conserves_mass(M, B, X, Y, Z, C, seed):
    feats, geom, b = _points(M, B, X, Y, Z, C, seed=seed)
    ref = reference.bev_pool_naive(feats, geom, b, B, X, Y, Z)
    for impl in IMPLS:
        out = bev_pool(feats, geom, b, B, X, Y, Z, impl=impl)
        torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
        # every feature lands in exactly one cell
        torch.testing.assert_close(out.sum((2, 3, 4)).sum(0), feats.sum(0), rtol=1e-9, atol=1e-9)
    plan = BEVPoolPlan.build(geom, b, B, X, Y, Z)
    assert plan.n_intervals == len(np.unique(plan.ranks.numpy())) and int(plan.starts[-1]) == M
    # canonical plan: intervals ordered by their first point, points increasing within an interval,
    # one cell per interval, every cell once
    order, starts, ranks = plan.order.numpy(), plan.starts.numpy(), plan.ranks.numpy()
    assert (np.diff(order[starts[:-1]]) > 0).all() and len(set(plan.cells.tolist())) == plan.n_intervals
    for i in range(plan.n_intervals):
        seg = order[starts[i]:starts[i + 1]]
        assert (np.diff(seg) > 0).all() and (ranks[seg] == int(plan.cells[i])).all()


def test_torch_path_on_every_device(device):
    feats, geom, b = _points(500, 2, 5, 6, 2, 3, seed=7)
    ref = reference.bev_pool_naive(feats, geom, b, 2, 5, 6, 2)
    f = feats.to(device).requires_grad_()
    plan = BEVPoolPlan.build(geom.to(device), b.to(device), 2, 5, 6, 2)
    assert plan.device.type == device.type
    out = bev_pool_with_plan(f, plan)
    torch.testing.assert_close(out.cpu(), ref)
    out.sum().backward()
    assert (f.grad == 1).all()
    depth, ctx, geom, b, valid, grid = _depth_case(2)
    plan = BEVPoolPlan.build(geom, b, *grid, valid=valid).to(device)
    torch.testing.assert_close(bev_pool_depth(depth.to(device), ctx.to(device), plan).cpu(),
                               bev_pool_depth(depth, ctx, plan.to("cpu"), impl="torch"))
