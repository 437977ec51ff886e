"""CaloSPVCNN and GravNetOC: outputs per hit, per-event isolation, empty events, bad input, overfitting."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from sparse3d.datasets.calo import CaloGenConfig, generate_events
from sparse3d.models.calo import CaloHeads, CaloSPVCNN, GravNetConv, GravNetOC

SMALL = CaloGenConfig(n_particles=(2, 3), max_groups=1, energy_range=(5.0, 30.0), noise_hits=30.0)


def _features(ev):
    return np.stack([np.log1p(np.maximum(ev.energy, 0) / 0.0085) / 5, np.arcsinh(ev.time / 0.1) / 5,
                     ev.layer / 50.0], 1).astype(np.float32)


def make_batch(events):
    """The calo batch dict (as the data module's collate) from CaloEvents."""
    counts = [e.n_hits for e in events]
    off = np.r_[0, np.cumsum(counts)].astype(np.int64)
    b = np.repeat(np.arange(len(events), dtype=np.float32), counts)
    cat = (lambda f, d: np.concatenate([np.asarray(f(e), d) for e in events]) if events else np.zeros(0, d))
    xyz = np.stack([cat(lambda e: e.x, np.float32), cat(lambda e: e.y, np.float32), cat(lambda e: e.z, np.float32)], 1)
    lab = cat(lambda e: e.truth_idx, np.int64)
    feats = np.concatenate([_features(e) for e in events]) if events else np.zeros((0, 3), np.float32)
    return {"points": torch.from_numpy(np.concatenate([b[:, None], xyz.reshape(-1, 3)], 1)),
            "feats": torch.from_numpy(feats.reshape(-1, 3)),
            "energy": torch.from_numpy(cat(lambda e: e.energy, np.float32)),
            "cluster_idx": torch.from_numpy(lab), "semantic": torch.from_numpy((lab >= 0).astype(np.int64)),
            "offsets": torch.from_numpy(off), "event_id": [str(i) for i in range(len(events))]}


@pytest.fixture(autouse=True)
def one_thread():
    """One torch/numba thread: on a loaded machine, spinning OpenMP teams slow these small models 5-10x."""
    import numba
    t, nt = torch.get_num_threads(), numba.get_num_threads()
    torch.set_num_threads(1)
    numba.set_num_threads(1)
    yield
    torch.set_num_threads(t)
    numba.set_num_threads(nt)


@pytest.fixture(scope="module")
def events():
    return generate_events(3, SMALL, seed=11)


MODELS = {
    "spvcnn_offset": lambda: CaloSPVCNN(cr=0.25, instance_mode="offset"),
    "spvcnn_oc": lambda: CaloSPVCNN(cr=0.25, instance_mode="condensation", embed_dim=3),
    "spvcnn_light": lambda: CaloSPVCNN(cr=0.25, res_blocks=1, devoxelize="nearest", voxel_size=2.0),
    # q_min 0.5: with 2 events and lr 1e-2, the default 1.0 tends to collapse beta (see CaloHeads)
    "gravnet_oc": lambda: GravNetOC(k=16, instance_mode="condensation", q_min=0.5),
    "gravnet_offset": lambda: GravNetOC(n_blocks=2, k=8, instance_mode="offset"),
}


def _keys(mode):
    return {"semantic_logits", "offset"} if mode == "offset" else {"semantic_logits", "embed", "beta"}


@pytest.mark.parametrize("name", list(MODELS))
def test_forward_loss_cluster_contract(name, events):
    torch.manual_seed(0)
    m = MODELS[name]()
    b = make_batch(events)
    P = b["points"].shape[0]
    out = m(b)
    assert set(out) == _keys(m.instance_mode)
    assert out["semantic_logits"].shape == (P, 2)
    if m.instance_mode == "offset":
        assert out["offset"].shape == (P, 3)
    else:
        assert out["embed"].shape[0] == P and out["beta"].shape == (P,)
        assert ((out["beta"] > 0) & (out["beta"] < 1)).all()
    loss, logs = m.loss(out, b)
    assert loss.dim() == 0 and torch.isfinite(loss) and all(isinstance(v, float) for v in logs.values())
    loss.backward()
    assert all(p.grad is not None for p in m.parameters())       # every parameter is used
    m.eval()
    with torch.no_grad():
        clusters = m.cluster(m(b), b)
    assert [c.shape[0] for c in clusters] == [e.n_hits for e in events]
    assert all(c.dtype == np.int64 and (c >= -1).all() for c in clusters)


@pytest.mark.parametrize("name", ["spvcnn_offset", "gravnet_oc"])
def test_events_do_not_interact(name, events):
    """Eval mode: an event's outputs do not depend on the other events of the batch."""
    torch.manual_seed(1)
    m = MODELS[name]().eval()
    alone = make_batch(events[:1])
    both = make_batch(events[:2])
    n0 = events[0].n_hits
    with torch.no_grad():
        a, b = m(alone), m(both)
    for k in a:
        torch.testing.assert_close(a[k], b[k][:n0], rtol=1e-4, atol=1e-5)


def test_spvcnn_hits_sharing_a_voxel_get_their_own_outputs():
    torch.manual_seed(2)
    m = CaloSPVCNN(cr=0.25, voxel_size=(2.0, 2.0, 4.0)).eval()
    # rows 0 and 1 share a voxel
    pts = torch.tensor([[0, 10.1, 20.2, 330.5], [0, 11.7, 21.9, 333.0], [0, 30.0, 20.0, 330.0]])
    feats = torch.tensor([[0.5, 0.0, 0.1], [0.9, 0.3, 0.2], [0.2, 0.0, 0.1]])
    b = {"points": pts, "feats": feats, "offsets": torch.tensor([0, 3])}
    with torch.no_grad():
        out = m(b)
    assert not torch.allclose(out["offset"][0], out["offset"][1])
    assert not torch.allclose(out["semantic_logits"][0], out["semantic_logits"][1])
    # the voxel grid: anisotropic voxel size, one number or three
    assert CaloSPVCNN(cr=0.25, voxel_size=1.5).voxel_size == (1.5, 1.5, 1.5)
    with pytest.raises(ValueError, match="voxel_size"):
        CaloSPVCNN(voxel_size=(1.0, 0.0, 1.0))


@pytest.mark.parametrize("name", ["spvcnn_offset", "spvcnn_oc", "gravnet_oc"])
def test_empty_events_and_empty_batch(name, events):
    torch.manual_seed(3)
    m = MODELS[name]()
    empty = events[0].subset(np.zeros(events[0].n_hits, bool))
    b = make_batch([events[0], empty, events[1]])
    out = m(b)
    loss, _ = m.loss(out, b)
    loss.backward()
    m.eval()
    with torch.no_grad():
        cl = m.cluster(m(b), b)
    assert [c.shape[0] for c in cl] == [events[0].n_hits, 0, events[1].n_hits]
    # a batch with no hits at all
    m.train()
    b = make_batch([empty, empty])
    out = m(b)
    assert all(v.shape[0] == 0 for v in out.values())
    loss, logs = m.loss(out, b)
    assert float(loss.detach()) == 0.0 and loss.requires_grad
    loss.backward()
    assert [c.shape for c in m.cluster(out, b)] == [(0,), (0,)]


@pytest.mark.parametrize("name", ["spvcnn_offset", "gravnet_oc"])
def test_bad_input(name, events):
    m = MODELS[name]()
    good = make_batch(events[:2])
    cases = [
        ({"feats": good["feats"][:, :2]}, ValueError, "feats"),
        ({"feats": good["feats"].long()}, TypeError, "feats"),
        ({"points": good["points"][:, :3]}, ValueError, "points"),
        ({"points": good["points"].long()}, TypeError, "points"),
        ({"points": good["points"][:-1]}, ValueError, "rows"),
        ({"offsets": torch.tensor([0, 5])}, ValueError, "offsets"),
        ({"offsets": good["offsets"].float()}, ValueError, "offsets"),
    ]
    bad_pts = good["points"].clone()
    bad_pts[0, 1] = float("nan")
    cases.append(({"points": bad_pts}, ValueError, "NaN"))
    swapped = good["points"].clone()
    swapped[0, 0] = 1
    cases.append(({"points": swapped}, ValueError, "batch index"))
    for change, exc, match in cases:
        with pytest.raises(exc, match=match):
            m(dict(good, **change))
    with pytest.raises(ValueError, match="'feats'"):
        m({k: v for k, v in good.items() if k != "feats"})
    with pytest.raises(TypeError, match="dict"):
        m(good["points"])
    out = m(good)
    with pytest.raises(ValueError, match="cluster_idx"):
        m.loss(out, {k: v for k, v in good.items() if k != "cluster_idx"})
    with pytest.raises(TypeError, match="semantic"):
        m.loss(out, dict(good, semantic=good["semantic"].float()))


def test_constructor_checks():
    with pytest.raises(ValueError, match="instance_mode"):
        CaloSPVCNN(instance_mode="boxes")
    with pytest.raises(ValueError, match="res_blocks"):
        CaloSPVCNN(res_blocks=3)
    with pytest.raises(ValueError, match="devoxelize"):
        CaloSPVCNN(devoxelize="cubic")
    with pytest.raises(ValueError, match="cluster_scale"):
        CaloSPVCNN(cluster_scale=(1.0, 1.0))
    light = sum(p.numel() for p in CaloSPVCNN(cr=0.25, res_blocks=1).parameters())
    assert light < 0.7 * sum(p.numel() for p in CaloSPVCNN(cr=0.25).parameters())
    with pytest.raises(ValueError, match="in_channels"):
        GravNetOC(in_channels=0)
    with pytest.raises(ValueError, match="k must"):
        GravNetOC(k=0)
    with pytest.raises(TypeError):
        CaloSPVCNN(not_an_option=1)
    h = CaloHeads(8, instance_mode="condensation", embed_dim=5)
    out = h(torch.randn(4, 8))
    assert out["embed"].shape == (4, 5) and out["beta"].shape == (4,)


def test_gravnet_conv_gradcheck():
    torch.manual_seed(4)
    conv = GravNetConv(3, space_dim=2, prop_dim=2, out_dim=2, k=3).double()
    x = torch.randn(9, 3, dtype=torch.float64, requires_grad=True)
    off = torch.tensor([0, 4, 6, 9])          # one event with fewer hits than... k = 3 needs >= 3; event 1 has 2
    assert torch.autograd.gradcheck(lambda t: conv(t, off), (x,), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("name", ["spvcnn_offset", "spvcnn_oc", "gravnet_oc"])
def test_tiny_overfit(name):
    torch.manual_seed(5)
    evs = generate_events(2, CaloGenConfig(n_particles=(2, 2), max_groups=1, energy_range=(10.0, 20.0),
                                           noise_hits=20.0), seed=21)
    b = make_batch(evs)
    m = MODELS[name]()
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    losses = []
    for _ in range(40):
        loss, _ = m.loss(m(b), b)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    first, last = np.mean(losses[:3]), np.mean(losses[-3:])
    assert last < 0.5 * first, (first, last)   # at least halved
