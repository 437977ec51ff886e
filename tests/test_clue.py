"""CLUE: numba tiled kernels against the dense reference, hand-built cases, the HGCAL chain."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparse3d.clustering import HGCalCLUEParams, clue, clue_hgcal
from sparse3d.datasets.calo import default_geometry, generate_event
from sparse3d.metrics import PanopticQuality


def _random_points(n, seed, extent=10.0, n_layers=3, offset=0.0, dup=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, extent, n) + offset
    y = rng.uniform(0, extent, n) - offset
    layer = rng.integers(0, n_layers, n)
    w = rng.integers(1, 64, n) / 16.0          # dyadic: sums are exact in any order
    if dup and n:
        k = rng.integers(0, n, dup)
        x, y, layer, w = (np.r_[a, a[k]] for a in (x, y, layer, w))
    return x, y, layer, w


def _compare(x, y, layer, w, **kw):
    a = clue(x, y, layer, w, **kw)
    b = clue(x, y, layer, w, backend="reference", **kw)
    np.testing.assert_array_equal(a.rho, b.rho)          # exact: dyadic weights
    np.testing.assert_allclose(a.delta, b.delta, rtol=1e-14)   # numba may fuse d2 into an FMA
    np.testing.assert_array_equal(a.nearest_higher, b.nearest_higher)
    np.testing.assert_array_equal(a.is_seed, b.is_seed)
    np.testing.assert_array_equal(a.labels, b.labels)
    return a


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("layer_window", [0, 1, 2])
def test_numba_matches_reference(seed, layer_window):
    x, y, layer, w = _random_points(400, seed, dup=20)
    r = _compare(x, y, layer, w, dc=0.8, rhoc=2.0, deltao=1.6, layer_window=layer_window)
    assert r.n_clusters > 1 and (r.labels >= 0).any()


@pytest.mark.parametrize("deltao_factor", [4.0, 9.0])
def test_numba_matches_reference_wide_outlier_radius(deltao_factor):
    """deltao >> dc: the nearest-higher search runs on its own coarser tiling (tile = max(deltac, deltao))."""
    x, y, layer, w = _random_points(400, 11, dup=10)
    r = _compare(x, y, layer, w, dc=0.6, rhoc=1.5, deltac=0.9, deltao=deltao_factor * 0.6, layer_window=2)
    assert r.n_clusters > 1


@pytest.mark.parametrize("offset", [-1e4, 0.0, 3e5])
def test_numba_matches_reference_far_coordinates(offset):
    x, y, layer, w = _random_points(300, 5, extent=40.0, n_layers=60, offset=offset)
    _compare(x, y, layer * 7 - 100, w, dc=2.0, rhoc=1.0, deltac=3.0, deltao=5.0, layer_window=10)


def test_gaussian_kernel_matches_reference():
    x, y, layer, w = _random_points(300, 9)
    a = clue(x, y, layer, w, dc=1.0, rhoc=1.5, kernel="gaussian", layer_window=1)
    b = clue(x, y, layer, w, dc=1.0, rhoc=1.5, kernel="gaussian", layer_window=1, backend="reference")
    np.testing.assert_allclose(a.rho, b.rho, rtol=1e-12)
    np.testing.assert_array_equal(a.labels, b.labels)
    flat = clue(x, y, layer, w, dc=1.0, rhoc=1.5, layer_window=1)
    assert not np.allclose(a.rho, flat.rho)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(0, 40), seed=st.integers(0, 10_000), dc=st.sampled_from([0.5, 1.0, 2.5]),
       window=st.integers(0, 2), tile_factor=st.sampled_from([0.0, 0.4, 3.0]))
def test_property_matches_reference(n, seed, dc, window, tile_factor):
    x, y, layer, w = _random_points(n, seed, extent=5.0, dup=n // 4)
    _compare(x, y, layer, w, dc=dc, rhoc=1.0, deltao=1.5 * dc, layer_window=window, tile=tile_factor * dc)


def test_tile_size_does_not_change_result():
    x, y, layer, w = _random_points(500, 3)
    ref = clue(x, y, layer, w, dc=0.7, rhoc=2.0)
    for tile in (0.2, 0.7, 5.0, 100.0):
        r = clue(x, y, layer, w, dc=0.7, rhoc=2.0, tile=tile)
        np.testing.assert_array_equal(r.labels, ref.labels)
        np.testing.assert_array_equal(r.rho, ref.rho)


def test_empty_and_single_point():
    r = clue(np.zeros(0), np.zeros(0), np.zeros(0, int), np.zeros(0), dc=1.0, rhoc=1.0)
    assert r.labels.shape == (0,) and r.n_clusters == 0
    seed = clue([5.0], [-3.0], [2], [2.0], dc=1.0, rhoc=1.0)
    assert seed.labels.tolist() == [0] and seed.rho.tolist() == [2.0] and np.isinf(seed.delta[0])
    assert seed.nearest_higher.tolist() == [-1]
    out = clue([5.0], [-3.0], [2], [0.5], dc=1.0, rhoc=1.0)
    assert out.labels.tolist() == [-1] and not out.is_seed[0]


def test_hand_built_blobs_seeds_followers_outliers():
    # blob A around (0, 0), blob B around (10, 0), a lonely low hit at (5, 5), a weak follower of A
    x = np.array([0.0, 0.3, -0.3, 0.0, 10.0, 10.3, 9.7, 5.0, 0.9])
    y = np.array([0.0, 0.0, 0.0, 0.3, 0.0, 0.0, 0.0, 5.0, 0.0])
    w = np.array([4.0, 1.0, 1.0, 1.0, 3.0, 1.0, 1.0, 0.5, 0.25])
    layer = np.zeros(9, int)
    r = _compare(x, y, layer, w, dc=0.5, rhoc=2.0, deltac=0.5, deltao=1.0)
    # densities: self + 0.5 x neighbours within 0.5
    assert r.rho[0] == 4.0 + 0.5 * 3 and r.rho[4] == 3.0 + 0.5 * 2 and r.rho[7] == 0.5
    assert r.is_seed[[0, 4]].all() and r.is_seed.sum() == 2
    assert r.labels[:4].tolist() == [0] * 4 and r.labels[4:7].tolist() == [1] * 3
    assert r.labels[7] == -1                       # outlier: low rho, no higher within deltao
    assert r.nearest_higher[8] == 1 and r.labels[8] == 0   # follower through its nearest-higher
    # a higher outlier distance turns the far weak hit into a follower of a seed...
    r2 = clue(x, y, layer, w, dc=0.5, rhoc=2.0, deltac=0.5, deltao=8.0)
    assert r2.labels[7] in (0, 1)
    # ...and a lower rhoc makes it a seed of its own
    r3 = clue(x, y, layer, w, dc=0.5, rhoc=0.4, deltac=0.5, deltao=1.0)
    assert r3.is_seed[7] and r3.labels[7] >= 0


def test_layers_and_window():
    x = np.array([0.0, 0.2, 0.0, 0.2])
    y = np.zeros(4)
    w = np.array([2.0, 1.0, 2.0, 1.0])
    layer = np.array([1, 1, 2, 2])
    per_layer = _compare(x, y, layer, w, dc=0.5, rhoc=1.0)
    assert per_layer.n_clusters == 2 and per_layer.labels.tolist() == [0, 0, 1, 1]
    joint = _compare(x, y, layer, w, dc=0.5, rhoc=1.0, layer_window=1)
    assert joint.n_clusters == 1 and np.all(joint.labels == 0)
    far = _compare(x, y, np.array([1, 1, 3, 3]), w, dc=0.5, rhoc=1.0, layer_window=1)
    assert far.n_clusters == 2


def test_duplicate_points_tie_break():
    # equal densities: the higher index is "higher", so point 0 follows point 1
    r = _compare([1.0, 1.0], [2.0, 2.0], [0, 0], [1.0, 1.0], dc=0.5, rhoc=1.0)
    assert r.rho.tolist() == [1.5, 1.5]
    assert r.nearest_higher.tolist() == [1, -1] and r.delta[0] == 0.0
    assert r.is_seed.tolist() == [False, True] and r.labels.tolist() == [0, 0]


def test_torch_inputs_and_validation():
    t = torch.tensor([0.0, 0.1, 5.0])
    r = clue(t, t, torch.zeros(3, dtype=torch.int32), torch.tensor([1.0, 1.0, 2.0]), dc=0.5, rhoc=1.0)
    assert r.labels.tolist() == [0, 0, 1]
    ok = dict(x=np.zeros(3), y=np.zeros(3), layer=np.zeros(3, int), weight=np.ones(3))
    with pytest.raises(ValueError, match="'y' has 2 entries"):
        clue(**{**ok, "y": np.zeros(2)}, dc=1.0, rhoc=1.0)
    with pytest.raises(ValueError, match="'weight' contains NaN"):
        clue(**{**ok, "weight": np.array([1.0, np.nan, 1.0])}, dc=1.0, rhoc=1.0)
    with pytest.raises(ValueError, match="'weight' must be >= 0"):
        clue(**{**ok, "weight": -np.ones(3)}, dc=1.0, rhoc=1.0)
    with pytest.raises(ValueError, match="'x' must be 1-D"):
        clue(**{**ok, "x": np.zeros((3, 1))}, dc=1.0, rhoc=1.0)
    with pytest.raises(ValueError, match="'dc'"):
        clue(**ok, dc=0.0, rhoc=1.0)
    with pytest.raises(ValueError, match="'deltao'"):
        clue(**ok, dc=1.0, rhoc=1.0, deltao=-1.0)
    with pytest.raises(ValueError, match="'rhoc'"):
        clue(**ok, dc=1.0, rhoc=float("nan"))
    with pytest.raises(ValueError, match="'layer_window'"):
        clue(**ok, dc=1.0, rhoc=1.0, layer_window=-1)
    with pytest.raises(ValueError, match="'kernel'"):
        clue(**ok, dc=1.0, rhoc=1.0, kernel="box")
    with pytest.raises(ValueError, match="'backend'"):
        clue(**ok, dc=1.0, rhoc=1.0, backend="cuda")
    with pytest.raises(TypeError, match="'layer' must be numeric"):
        clue(**{**ok, "layer": np.array(["a", "b", "c"])}, dc=1.0, rhoc=1.0)


@pytest.fixture(scope="module")
def calo_events():
    g = default_geometry()
    return [generate_event(None, 2024, i, g) for i in range(6)]


def test_clue_hgcal_on_generated_events(calo_events):
    pq = PanopticQuality()
    noise_kept = []
    for ev in calo_events:
        labels, lc = clue_hgcal(ev.x, ev.y, ev.z, ev.layer, ev.energy, return_layer_clusters=True)
        assert labels.shape == (ev.n_hits,) and labels.dtype == np.int64
        assert np.all(labels[lc < 0] == -1)
        noise_kept.append(np.mean(labels[ev.truth_idx == -1] >= 0))
        # clusters never mix endcaps
        for c in np.unique(labels[labels >= 0]):
            assert np.unique(np.sign(ev.z[labels == c])).size == 1
        pq.update(labels, ev.labels(), ev.energy)
    assert np.mean(noise_kept) < 0.2                  # isolated ~1 MIP noise hits are outliers
    res = pq.compute()
    assert res["count"]["pq"] > 0.4 and res["energy"]["pq"] > 0.4


def test_clue_hgcal_edge_cases(calo_events):
    e = np.zeros(0)
    assert clue_hgcal(e, e, e, e.astype(int), e).shape == (0,)
    ev = calo_events[0]
    sub = ev.subset(np.arange(40))
    lab_n = clue_hgcal(sub.x, sub.y, sub.z, sub.layer, sub.energy)
    lab_r = clue_hgcal(sub.x, sub.y, sub.z, sub.layer, sub.energy, backend="reference")
    np.testing.assert_array_equal(lab_n, lab_r)
    p = HGCalCLUEParams(rhoc_mip=1e9)                 # nothing is dense enough: all outliers
    assert np.all(clue_hgcal(ev.x, ev.y, ev.z, ev.layer, ev.energy, p) == -1)
    with pytest.raises(ValueError, match="'layer' must be in"):
        clue_hgcal(ev.x, ev.y, ev.z, np.zeros(ev.n_hits, int), ev.energy)
    with pytest.raises(ValueError, match="'energy' must be >= 0"):
        clue_hgcal(ev.x, ev.y, ev.z, ev.layer, -ev.energy)
    with pytest.raises(ValueError, match="'z' has"):
        clue_hgcal(ev.x, ev.y, ev.z[:-1], ev.layer, ev.energy)
