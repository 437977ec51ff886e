"""Calo losses: targets, CE, offset L1, object condensation (hand-built cases, loop reference, gradcheck)."""
from __future__ import annotations

import math

import pytest
import torch

from sparse3d.models.calo.losses import (Z_REF, cluster_centres, cluster_space, instance_ids,
                                         object_condensation_loss, offset_loss, semantic_loss)


def _oc_loop(embed, beta, cl, offsets, q_min=0.1, s_b=1.0):
    """Kieseler 2020 eq. by explicit loops (independent reference)."""
    terms = {"att": [], "rep": [], "beta_sig": [], "beta_noise": []}
    off = offsets.tolist()
    for e in range(len(off) - 1):
        s, t = off[e], off[e + 1]
        if t == s:
            continue
        n = t - s
        q = [math.atanh(min(float(b), 1 - 1e-4)) ** 2 + q_min for b in beta[s:t]]
        objs = sorted({int(c) for c in cl[s:t] if c >= 0})
        alpha = {k: max((i for i in range(n) if cl[s + i] == k), key=lambda i: (q[i], -i)) for k in objs}
        att = rep = 0.0
        for j in range(n):
            for k, a in alpha.items():
                d2 = float(((embed[s + j] - embed[s + a]) ** 2).sum())
                if cl[s + j] == k:
                    att += q[j] * q[a] * d2
                else:
                    rep += q[j] * q[a] * max(0.0, 1.0 - math.sqrt(d2 + 1e-12))
        terms["att"].append(att / n)
        terms["rep"].append(rep / n)
        terms["beta_sig"].append(sum(1 - float(beta[s + a]) for a in alpha.values()) / len(alpha) if alpha else 0.0)
        noise = [float(beta[s + i]) for i in range(n) if cl[s + i] < 0]
        terms["beta_noise"].append(sum(noise) / len(noise) if noise else 0.0)
    out = {k: sum(v) / len(v) for k, v in terms.items()}
    out["beta"] = out["beta_sig"] + s_b * out["beta_noise"]
    return out


def _random_case(seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    offsets = torch.tensor([0, 12, 12, 13, 30, 38])       # empty event, single-hit event
    P = int(offsets[-1])
    cl = torch.randint(-1, 3, (P,), generator=g)
    cl[30:] = -1                                           # an event with noise only
    cl[13:20] = 4                                          # an event whose cluster ids are not 0-based
    embed = torch.randn(P, 3, generator=g, dtype=dtype) * 0.6
    beta = torch.rand(P, generator=g, dtype=dtype) * 0.98 + 0.01
    return embed, beta, cl, offsets


# ----------------------------------------------------------------------------- targets
def test_instance_ids_and_centres():
    cl = torch.tensor([0, 1, 0, -1, 0, 0, 2])
    offsets = torch.tensor([0, 4, 4, 7])
    obj, obj_event = instance_ids(cl, offsets)
    assert obj.tolist() == [0, 1, 0, -1, 2, 2, 3] and obj_event.tolist() == [0, 0, 2, 2]
    xyz = torch.tensor([[0.0, 0, 0], [5, 5, 5], [4, 0, 0], [9, 9, 9], [1, 1, 1], [3, 3, 3], [7, 7, 7]])
    energy = torch.tensor([3.0, 1.0, 1.0, 1.0, 0.0, 0.0, -2.0])   # zero-energy cluster: plain mean
    c = cluster_centres(xyz, energy, cl, offsets)
    torch.testing.assert_close(c[0], torch.tensor([1.0, 0, 0]))    # (3*0 + 1*4) / 4
    torch.testing.assert_close(c[2], c[0])
    torch.testing.assert_close(c[1], xyz[1])
    torch.testing.assert_close(c[3], xyz[3])                        # noise: own position
    torch.testing.assert_close(c[4], torch.tensor([2.0, 2, 2]))
    torch.testing.assert_close(c[6], xyz[6])                        # negative energy counts as 0
    e_obj, e_ev = instance_ids(torch.full((3,), -1), torch.tensor([0, 3]))
    assert e_obj.tolist() == [-1, -1, -1] and e_ev.numel() == 0


def test_semantic_and_offset_loss():
    logits = torch.tensor([[5.0, -5.0], [-5.0, 5.0]], requires_grad=True)
    assert float(semantic_loss(logits, torch.tensor([0, 1])).detach()) < 1e-3
    assert float(semantic_loss(logits, torch.tensor([1, 0])).detach()) > 9.0
    empty = semantic_loss(torch.zeros(0, 2, requires_grad=True), torch.zeros(0, dtype=torch.long))
    assert float(empty.detach()) == 0.0 and empty.requires_grad
    xyz = torch.tensor([[0.0, 0, 0], [2, 0, 0], [7, 7, 7]])
    energy = torch.ones(3)
    cl = torch.tensor([0, 0, -1])
    off = torch.tensor([0, 3])
    perfect = torch.tensor([[1.0, 0, 0], [-1, 0, 0], [100, 100, 100]], requires_grad=True)   # noise ignored
    assert float(offset_loss(perfect, xyz, energy, cl, off).detach()) == 0.0
    pred = torch.zeros(3, 3, requires_grad=True)
    lo = offset_loss(pred, xyz, energy, cl, off, scale=2.0)
    assert float(lo.detach()) == pytest.approx(0.5)                          # mean |1| over 2 hits / scale 2
    lo.backward()
    assert pred.grad[2].abs().sum() == 0 and pred.grad[0, 0] < 0
    none = offset_loss(pred, xyz, energy, torch.full((3,), -1), off)
    assert float(none.detach()) == 0.0 and none.requires_grad


def test_projective_cluster_space_and_offset_loss():
    p = torch.tensor([[10.0, -20.0, 350.0], [20.0, -40.0, 700.0], [10.0, 5.0, -350.0], [1.0, 1.0, 0.0]])
    q = cluster_space(p, "projective", (1.0, 1.0, 5.0))
    torch.testing.assert_close(q[0], torch.tensor([10.0, -20.0, 70.0]))
    torch.testing.assert_close(q[1, :2], q[0, :2])               # same ray from the origin: same (u, v)
    torch.testing.assert_close(q[2], torch.tensor([10.0, 5.0, -70.0]))   # negative endcap: |z|
    assert torch.isfinite(q[3]).all()                            # |z| floored
    torch.testing.assert_close(cluster_space(p, "cartesian", (2.0, 2.0, 2.0)), p / 2)
    with pytest.raises(ValueError, match="space"):
        cluster_space(p, "polar")
    # a prediction off by a shift along the shower ray costs only the (down-weighted) depth term
    xyz = torch.tensor([[35.0, 0.0, 350.0], [37.0, 0.0, 370.0]])
    cl, off, energy = torch.tensor([0, 0]), torch.tensor([0, 2]), torch.ones(2)
    centre = cluster_centres(xyz, energy, cl, off)               # (36, 0, 360)
    along = centre * (380.0 / 360.0) - xyz                       # lands 20 cm deeper on the same ray
    lo = offset_loss(along, xyz, energy, cl, off, space="projective", axis_scale=(1.0, 1.0, 5.0))
    assert float(lo) == pytest.approx(20.0 / 5.0, rel=1e-5)
    lo_c = offset_loss(along, xyz, energy, cl, off)
    assert float(lo_c) > float(lo)
    assert Z_REF == 350.0


# ----------------------------------------------------------------------------- object condensation
@pytest.mark.parametrize("seed", range(3))
def test_oc_matches_loop_reference(seed):
    embed, beta, cl, offsets = _random_case(seed, torch.float64)
    got = object_condensation_loss(embed, beta, cl, offsets, q_min=0.3, s_b=0.5)
    ref = _oc_loop(embed, beta, cl, offsets, q_min=0.3, s_b=0.5)
    for k in ref:
        assert float(got[k]) == pytest.approx(ref[k], rel=1e-10, abs=1e-12), k


def test_oc_perfectly_condensed_has_no_potential_loss():
    # two objects, every hit exactly on its condensation point, objects 5 apart; noise far away
    embed = torch.tensor([[0.0, 0], [0, 0], [0, 0], [5, 0], [5, 0], [0, 9]], requires_grad=True)
    beta = torch.tensor([0.99, 0.2, 0.3, 0.2, 0.99, 0.0])
    cl = torch.tensor([0, 0, 0, 1, 1, -1])
    out = {k: v.detach() for k, v in object_condensation_loss(embed, beta, cl, torch.tensor([0, 6])).items()}
    assert float(out["att"]) < 1e-12 and float(out["rep"]) < 1e-5
    assert float(out["beta"]) == pytest.approx(0.01, abs=1e-6)       # 1 - 0.99, noise beta 0


def test_oc_collapsed_clusters_repel():
    cl = torch.tensor([0, 0, 0, 1, 1, 1])
    beta = torch.full((6,), 0.9)
    apart = torch.tensor([[0.0, 0], [0, 0], [0, 0], [3, 0], [3, 0], [3, 0]])
    collapsed = torch.zeros(6, 2)
    off = torch.tensor([0, 6])
    far = object_condensation_loss(apart, beta, cl, off)
    near = object_condensation_loss(collapsed, beta, cl, off)
    q = math.atanh(0.9) ** 2 + 0.1
    assert float(far["rep"]) < 1e-6
    # every hit sits on the other object's condensation point: rep = q * q * (1 - 0) for each hit
    assert float(near["rep"]) == pytest.approx(q * q, rel=1e-4)
    assert float(near["rep"]) > 1.0
    assert float(near["att"]) == pytest.approx(0.0, abs=1e-12)


def test_oc_attraction_grows_with_spread_and_charge():
    cl = torch.tensor([0, 0])
    off = torch.tensor([0, 2])
    e1 = torch.tensor([[0.0], [1.0]])
    e2 = torch.tensor([[0.0], [2.0]])
    b = torch.tensor([0.9, 0.5])
    a1 = float(object_condensation_loss(e1, b, cl, off)["att"])
    a2 = float(object_condensation_loss(e2, b, cl, off)["att"])
    assert a2 == pytest.approx(4 * a1)
    qa, qi = math.atanh(0.9) ** 2 + 0.1, math.atanh(0.5) ** 2 + 0.1
    assert a1 == pytest.approx(qa * qi * 1.0 / 2, rel=1e-5)        # alpha = highest beta (hit 0)


def test_oc_beta_terms():
    cl = torch.tensor([0, 0, 1, -1, -1])
    off = torch.tensor([0, 5])
    e = torch.zeros(5, 2)
    good = object_condensation_loss(e, torch.tensor([0.9999, 0.1, 0.9999, 0.0, 0.0]), cl, off)
    assert float(good["beta"]) < 1e-3
    half = object_condensation_loss(e, torch.full((5,), 0.5), cl, off, s_b=0.1)
    assert float(half["beta_sig"]) == pytest.approx(0.5) and float(half["beta_noise"]) == pytest.approx(0.5)
    assert float(half["beta"]) == pytest.approx(0.55)
    # raising noise beta raises the loss; raising the condensation point's beta lowers it
    b = torch.tensor([0.6, 0.1, 0.6, 0.3, 0.3], requires_grad=True)
    object_condensation_loss(e, b, cl, off)["beta"].backward()
    assert b.grad[0] < 0 and b.grad[2] < 0 and b.grad[3] > 0 and b.grad[1] == 0


def test_oc_empty_and_degenerate_batches():
    emb = torch.zeros(0, 3, requires_grad=True)
    out = object_condensation_loss(emb, torch.zeros(0), torch.zeros(0, dtype=torch.long), torch.tensor([0, 0, 0]))
    assert all(float(v.detach()) == 0.0 for v in out.values()) and out["att"].requires_grad
    # noise only: only the noise beta term
    e = torch.randn(4, 2)
    out = object_condensation_loss(e, torch.full((4,), 0.2), torch.full((4,), -1), torch.tensor([0, 4]))
    assert float(out["att"]) == 0.0 and float(out["rep"]) == 0.0 and float(out["beta"]) == pytest.approx(0.2)
    # beta = 1 exactly stays finite (clamped inside artanh)
    out = object_condensation_loss(e, torch.ones(4), torch.tensor([0, 0, 1, 1]), torch.tensor([0, 4]))
    assert all(math.isfinite(float(v)) for v in out.values())


def test_oc_gradcheck():
    embed, beta, cl, offsets = _random_case(7, torch.float64)
    embed.requires_grad_(True)
    beta.requires_grad_(True)

    def terms(e, b):
        out = object_condensation_loss(e, b, cl, offsets, q_min=0.2, s_b=0.7)
        return out["att"], out["rep"], out["beta"]
    assert torch.autograd.gradcheck(terms, (embed, beta), eps=1e-6, atol=1e-5)
