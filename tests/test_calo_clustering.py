"""Mean-shift and condensation-point clustering on hand-built blobs, per-event wrappers, bad input."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from sparse3d.clustering.condensation import condensation_clustering, condensation_events
from sparse3d.clustering.meanshift import mean_shift, mean_shift_events


def _blobs(centres, n, sigma, seed=0):
    rng = np.random.default_rng(seed)
    pts = np.concatenate([rng.normal(c, sigma, (n, len(c))) for c in centres])
    lab = np.repeat(np.arange(len(centres)), n)
    return pts, lab


def _same_partition(a, b):
    """Labels equal up to a renumbering (and -1 kept as -1)."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or not np.array_equal(a < 0, b < 0):
        return False
    pairs = set(zip(a[a >= 0].tolist(), b[b >= 0].tolist()))
    return len(pairs) == len({p[0] for p in pairs}) == len({p[1] for p in pairs})


# ----------------------------------------------------------------------------- mean-shift
@pytest.mark.parametrize("bin_seeding", [False, True])
def test_mean_shift_recovers_blobs(bin_seeding):
    pts, lab = _blobs([(0, 0, 0), (10, 0, 0), (0, 10, 5), (-8, -8, -30)], 40, 0.3)
    got, centres = mean_shift(pts, bandwidth=2.0, bin_seeding=bin_seeding, return_centres=True)
    assert _same_partition(got, lab)
    assert got.dtype == np.int64 and centres.shape == (4, 3)
    for k in range(4):   # each mode sits at its blob's mean (flat kernel covers the whole blob)
        np.testing.assert_allclose(centres[got[lab == k][0]], pts[lab == k].mean(0), atol=1e-9)


def test_mean_shift_labels_ranked_by_size_and_exact_modes():
    # a 3-point and a 2-point group on a line; flat kernel h = 1.5
    pts = np.array([[0.0], [1.0], [2.0], [10.0], [11.0]])
    lab, c = mean_shift(pts, 1.5, return_centres=True)
    assert lab.tolist() == [0, 0, 0, 1, 1]
    np.testing.assert_allclose(c[:, 0], [1.0, 10.5])


def test_mean_shift_min_count_drops_weak_modes():
    # a dense group of 6 and a stray pair 3 units away (h = 1): the pair is its own mode unless
    # min_count > 2, then it joins the nearest kept mode
    pts = np.array([[0.0], [0.1], [0.2], [0.0], [0.1], [0.2], [3.0], [3.1]])
    assert mean_shift(pts, 1.0).tolist() == [0] * 6 + [1] * 2
    assert mean_shift(pts, 1.0, min_count=3).tolist() == [0] * 8
    # if no mode reaches min_count the strongest one is kept
    assert mean_shift(pts[6:], 1.0, min_count=10).tolist() == [0, 0]
    out = mean_shift_events(pts, np.array([0, 8]), None, bandwidth=1.0, ignore_classes=(), min_count=3)
    assert out[0].tolist() == [0] * 8


def test_mean_shift_matches_sklearn_on_blobs():
    sk = pytest.importorskip("sklearn.cluster")
    pts, _ = _blobs([(0, 0), (6, 0), (0, 6), (6, 6), (20, 20)], 25, 0.7, seed=3)
    ours = mean_shift(pts, 2.5)
    ref = sk.MeanShift(bandwidth=2.5).fit(pts).labels_
    assert _same_partition(ours, ref)


def test_mean_shift_edge_cases():
    assert mean_shift(np.zeros((0, 3)), 1.0).shape == (0,)
    assert mean_shift(np.array([[5.0, -3.0, 1e6]]), 1.0).tolist() == [0]
    dup = np.array([[1.0, 1.0]] * 7 + [[-1e5, 3e5]] * 3)           # duplicates, far/negative coordinates
    assert mean_shift(dup, 0.5).tolist() == [0] * 7 + [1] * 3
    assert mean_shift(torch.tensor([[0.0], [0.1]]), 1.0).tolist() == [0, 0]   # torch input
    with pytest.raises(ValueError, match="bandwidth"):
        mean_shift(dup, 0.0)
    with pytest.raises(ValueError, match="points"):
        mean_shift(np.zeros(5), 1.0)
    with pytest.raises(ValueError, match="NaN"):
        mean_shift(np.array([[np.nan, 0.0]]), 1.0)
    with pytest.raises(ValueError, match="max_iter"):
        mean_shift(dup, 1.0, max_iter=0)


def test_mean_shift_events_per_event_and_class():
    a, la = _blobs([(0, 0, 0), (8, 0, 0)], 10, 0.3, seed=1)
    b, lb = _blobs([(0, 0, 0)], 12, 0.3, seed=2)           # same place, other event: must not merge
    pts = np.concatenate([a, b])
    cls = np.ones(len(pts), np.int64)
    cls[:3] = 0                                            # predicted noise -> -1
    cls[10:20] = 2                                         # second blob of event 0 has another class
    off = torch.tensor([0, 20, 20, 32])                    # event 1 is empty
    out = mean_shift_events(torch.from_numpy(pts), off, torch.from_numpy(cls), bandwidth=1.5)
    assert [o.shape[0] for o in out] == [20, 0, 12]
    assert out[0][:3].tolist() == [-1, -1, -1]
    assert set(out[0][3:10].tolist()) == {0} and set(out[0][10:20].tolist()) == {1}
    assert set(out[2].tolist()) == {0}
    # one class, nothing ignored
    out = mean_shift_events(pts, off, None, bandwidth=1.5, ignore_classes=())
    assert _same_partition(out[0], la) and _same_partition(out[2], lb)
    with pytest.raises(ValueError, match="offsets"):
        mean_shift_events(pts, torch.tensor([0, 5]), None, bandwidth=1.0)
    with pytest.raises(ValueError, match="classes"):
        mean_shift_events(pts, off, cls[:5], bandwidth=1.0)


# ----------------------------------------------------------------------------- condensation
def test_condensation_recovers_blobs_and_noise():
    pts, lab = _blobs([(0, 0), (3, 0), (0, -3)], 15, 0.05, seed=4)
    rng = np.random.default_rng(5)
    beta = rng.uniform(0.0, 0.05, len(pts))
    beta[[0, 15, 30]] = [0.9, 0.8, 0.95]                    # one condensation point per blob
    noise = rng.uniform(20, 30, (6, 2))                     # far away, low beta -> unassigned
    X = np.concatenate([pts, noise])
    B = np.concatenate([beta, np.full(6, 0.01)])
    got = condensation_clustering(X, B, t_beta=0.1, t_d=0.5)
    truth = np.concatenate([lab, np.full(6, -1)])
    assert _same_partition(got, truth)
    # ids in decreasing beta of the condensation points: blob 2 (0.95), blob 0 (0.9), blob 1 (0.8)
    assert got[30] == 0 and got[0] == 1 and got[15] == 2


def test_condensation_claim_rules():
    X = np.array([[0.0], [0.5], [1.0], [1.6], [3.0]])
    beta = np.array([0.9, 0.8, 0.7, 0.6, 0.05])
    # t_d = 1: point 0 claims 1 (0.5 < 1) but not 2 (|1 - 0| = 1 is not < 1); 1 is assigned so it is
    # skipped; 2 becomes a condensation point and claims 3; 4 has beta below threshold
    assert condensation_clustering(X, beta, t_beta=0.1, t_d=1.0).tolist() == [0, 0, 1, 1, -1]
    # masked hits are never clustered, never condensation points
    mask = np.array([False, True, True, True, True])
    assert condensation_clustering(X, beta, 0.1, 1.0, mask=mask).tolist() == [-1, 0, 0, 1, -1]
    # low-beta hits near a condensation point are claimed; ties in beta go to the lower index
    assert condensation_clustering(X, np.array([0.5, 0.5, 0.0, 0.0, 0.0]), 0.1, 0.6).tolist() == [0, 0, -1, -1, -1]
    assert condensation_clustering(np.zeros((0, 2)), np.zeros(0)).shape == (0,)
    # min_hits dissolves small clusters and renumbers the rest in order
    X2 = np.array([[0.0], [5.0], [5.1], [9.0], [9.1], [9.2]])
    b2 = np.array([0.9, 0.8, 0.1, 0.7, 0.1, 0.1])
    assert condensation_clustering(X2, b2, 0.5, 0.5).tolist() == [0, 1, 1, 2, 2, 2]
    assert condensation_clustering(X2, b2, 0.5, 0.5, min_hits=2).tolist() == [-1, 0, 0, 1, 1, 1]
    assert condensation_clustering(X2, b2, 0.5, 0.5, min_hits=9).tolist() == [-1] * 6
    assert condensation_clustering(np.ones((1, 3)), np.array([0.5])).tolist() == [0]


def test_condensation_events_and_bad_input():
    X = torch.tensor([[0.0, 0.0], [0.1, 0.0], [0.0, 0.0], [5.0, 5.0]])
    beta = torch.tensor([0.9, 0.2, 0.9, 0.9])
    out = condensation_events(X, beta, torch.tensor([0, 2, 2, 4]), t_beta=0.1, t_d=1.0)
    assert [o.tolist() for o in out] == [[0, 0], [], [0, 1]]     # per-event ids, no cross-event claims
    out = condensation_events(X, beta, torch.tensor([0, 4]), t_d=1.0, mask=torch.tensor([True, True, False, True]))
    assert out[0].tolist() == [0, 0, -1, 1]
    with pytest.raises(ValueError, match="beta"):
        condensation_clustering(np.zeros((3, 2)), np.zeros(2))
    with pytest.raises(ValueError, match="t_d"):
        condensation_clustering(np.zeros((3, 2)), np.zeros(3), t_d=0.0)
    with pytest.raises(ValueError, match="NaN"):
        condensation_clustering(np.full((1, 2), np.nan), np.zeros(1))
    with pytest.raises(ValueError, match="mask"):
        condensation_clustering(np.zeros((3, 2)), np.zeros(3), mask=np.ones(2, bool))
    with pytest.raises(ValueError, match="offsets"):
        condensation_events(X, beta, torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="min_hits"):
        condensation_clustering(np.zeros((3, 2)), np.zeros(3), min_hits=0)
