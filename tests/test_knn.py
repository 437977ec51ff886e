"""Exact per-event kNN (sparse3d.ops.knn): numba vs brute-force reference, edge cases, gradients."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparse3d.ops.knn import knn, knn_distances
from sparse3d.ops.knn.reference import knn as knn_ref


def _brute(pos, offsets, k):
    """Independent check: per point, sort (d2, j) tuples in Python."""
    pos = pos.double().tolist()
    off = offsets.tolist()
    idx, d2 = [], []
    for b in range(len(off) - 1):
        for i in range(off[b], off[b + 1]):
            cand = sorted((sum((a - c) ** 2 for a, c in zip(pos[i], pos[j])), j) for j in range(off[b], off[b + 1]))
            cand = cand[:k] + [(float("inf"), -1)] * (k - min(k, len(cand)))
            d2.append([c[0] for c in cand])
            idx.append([c[1] for c in cand])
    return torch.tensor(idx, dtype=torch.long).view(-1, k), torch.tensor(d2, dtype=torch.float64).view(-1, k)


def _check_same(pos, offsets, k, exact=True):
    a_idx, a_d2 = knn(pos, offsets, k, backend="numba")
    r_idx, r_d2 = knn(pos, offsets, k, backend="reference")
    assert a_idx.dtype == torch.long and a_idx.shape == (pos.shape[0], k)
    if exact:
        assert torch.equal(a_idx, r_idx)
        assert torch.equal(a_d2, r_d2)
    else:   # float data: equal distances, indices equal unless a near-tie was ordered differently
        torch.testing.assert_close(a_d2, r_d2, rtol=1e-12, atol=1e-12)
    return a_idx, a_d2


@pytest.mark.parametrize("k", [1, 5, 40])
def test_numba_matches_reference_random(k):
    g = torch.Generator().manual_seed(k)
    pos = torch.randn(700, 4, generator=g) * torch.tensor([1.0, 3.0, 0.5, 2.0])
    offsets = torch.tensor([0, 300, 301, 301, 650, 700])   # incl. one single point and one empty event
    idx, d2 = _check_same(pos, offsets, k, exact=False)
    r_idx, _ = knn(pos, offsets, k, backend="reference")
    assert (idx == r_idx).float().mean() > 0.999


def test_matches_python_brute_force_small():
    g = torch.Generator().manual_seed(0)
    pos = torch.randint(-3, 4, (60, 3), generator=g).double()   # integers: many exact ties
    offsets = torch.tensor([0, 25, 25, 26, 60])
    for k in (1, 3, 30):
        e_idx, e_d2 = _brute(pos, offsets, k)
        for backend in ("numba", "reference"):
            idx, d2 = knn(pos, offsets, k, backend=backend)
            assert torch.equal(idx, e_idx), backend
            assert torch.equal(d2, e_d2), backend


def test_fewer_than_k_single_empty_and_duplicates():
    pos = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 0.0], [5.0, 5.0], [1.0, 0.0]])
    offsets = torch.tensor([0, 3, 3, 4, 5])
    idx, d2 = _check_same(pos, offsets, 4)
    # event 0: three points, padded
    assert idx[0].tolist() == [0, 1, 2, -1]
    assert idx[1].tolist() == [1, 2, 0, -1] and idx[2].tolist() == [1, 2, 0, -1]   # duplicates: ties by row
    assert d2[1].tolist() == [0.0, 0.0, 1.0, float("inf")]
    # single-point events see only themselves
    assert idx[3].tolist() == [3, -1, -1, -1] and idx[4].tolist() == [4, -1, -1, -1]


def test_no_cross_event_neighbours():
    g = torch.Generator().manual_seed(1)
    pos = torch.randn(400, 3, generator=g)
    pos[200:] = pos[:200] + 1e-3          # event 1 sits right on top of event 0
    offsets = torch.tensor([0, 200, 400])
    idx, _ = knn(pos, offsets, 10)
    ev = torch.repeat_interleave(torch.arange(2), torch.tensor([200, 200]))
    assert (ev[idx] == ev.unsqueeze(1)).all()


def test_large_and_negative_coordinates():
    g = torch.Generator().manual_seed(2)
    pos = torch.randint(-1000, 1000, (300, 4), generator=g).double() * 1e4 - 3e7
    offsets = torch.tensor([0, 150, 300])
    _check_same(pos, offsets, 16)


def test_empty_input_and_bad_arguments():
    idx, d2 = knn(torch.zeros(0, 3), torch.tensor([0]), 5)
    assert idx.shape == (0, 5) and d2.shape == (0, 5)
    idx, _ = knn(torch.zeros(0, 3), torch.tensor([0, 0, 0]), 5, backend="reference")
    assert idx.shape == (0, 5)
    pos = torch.zeros(4, 2)
    with pytest.raises(ValueError, match="offsets"):
        knn(pos, torch.tensor([0, 3]), 2)
    with pytest.raises(ValueError, match="offsets"):
        knn(pos, torch.tensor([0, 3, 2, 4]), 2)
    with pytest.raises(ValueError, match="k must"):
        knn(pos, torch.tensor([0, 4]), 0)
    with pytest.raises(TypeError, match="pos"):
        knn(torch.zeros(4, 2, dtype=torch.long), torch.tensor([0, 4]), 2)
    with pytest.raises(ValueError, match="pos"):
        knn(torch.zeros(4), torch.tensor([0, 4]), 2)
    with pytest.raises(ValueError, match="NaN"):
        knn(torch.tensor([[float("nan"), 0.0]]), torch.tensor([0, 1]), 1)
    with pytest.raises(ValueError, match="backend"):
        knn(pos, torch.tensor([0, 4]), 2, backend="cuda")


@settings(max_examples=30, deadline=None)
@given(sizes=st.lists(st.integers(0, 25), min_size=1, max_size=4), k=st.integers(1, 12),
       dim=st.integers(1, 4), seed=st.integers(0, 2 ** 16))
def test_property_numba_equals_reference(sizes, k, dim, seed):
    g = torch.Generator().manual_seed(seed)
    n = sum(sizes)
    pos = torch.randint(-4, 5, (n, dim), generator=g).double() / 4     # dyadic -> exact distances, ties
    offsets = torch.tensor([0] + sizes).cumsum(0)
    idx, d2 = _check_same(pos, offsets, k)
    counts = torch.tensor(sizes)
    valid = (idx >= 0).sum(1)
    assert torch.equal(valid, torch.repeat_interleave(counts.clamp(max=k), counts))
    assert (d2[:, :1] == 0).all() if n else True        # the point itself (or a duplicate) comes first


def test_knn_distances_gradcheck():
    g = torch.Generator().manual_seed(3)
    pos = torch.randn(9, 3, generator=g, dtype=torch.float64, requires_grad=True)
    offsets = torch.tensor([0, 5, 5, 9])
    idx, d2 = knn(pos, offsets, 6)
    torch.testing.assert_close(knn_distances(pos, idx).where(idx >= 0, torch.inf), d2)
    assert torch.autograd.gradcheck(lambda p: knn_distances(p, idx), (pos,))
    # the GravNet weight path: exp(-10 d^2) weighted messages
    h = torch.randn(9, 2, generator=g, dtype=torch.float64, requires_grad=True)

    def messages(p, f):
        w = torch.exp(-10.0 * knn_distances(p, idx)) * (idx >= 0)
        return (f[idx.clamp(min=0)] * w.unsqueeze(-1)).sum(1)
    assert torch.autograd.gradcheck(messages, (pos, h))


def test_reference_module_direct_call():
    pos = torch.tensor([[0.0], [2.0], [1.0]])
    idx, d2 = knn_ref(pos, torch.tensor([0, 3]), 2)
    assert idx.tolist() == [[0, 2], [1, 2], [2, 0]] and d2.tolist() == [[0.0, 1.0], [0.0, 1.0], [0.0, 1.0]]
