"""Panoptic quality (hit-count and energy-weighted IoU), response / resolution, PNG plots."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from sparse3d.metrics import (
    PanopticQuality, ResponseMetric, binned_response, contingency, event_pq, fit_resolution, match_instances,
    resolution_model)

pytest.importorskip("matplotlib")
from sparse3d.metrics.calo_plots import plot_efficiency, plot_event_display, plot_response_resolution  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _pq(pred, truth, energy=None):
    m = PanopticQuality()
    m.update(np.asarray(pred), np.asarray(truth), None if energy is None else np.asarray(energy, float))
    return m.compute()


def test_perfect_match():
    truth = np.array([0, 0, 0, 1, 1, -1, 2, 2, 2, 2])
    pred = np.array([7, 7, 7, 3, 3, -1, 0, 0, 0, 0])         # different ids, same partition
    r = _pq(pred, truth, np.arange(1, 11))
    for k in ("count", "energy"):
        assert r[k]["pq"] == pytest.approx(1.0) and r[k]["sq"] == pytest.approx(1.0)
        assert r[k]["rq"] == 1.0 and (r[k]["tp"], r[k]["fp"], r[k]["fn"]) == (3, 0, 0)
        assert r[k]["pq_event"] == pytest.approx(1.0)


def test_split_cluster():
    truth = np.zeros(10, int)
    pred = np.array([0] * 6 + [1] * 4)
    s = event_pq(pred, truth)
    assert (s.tp, s.fp, s.fn) == (1, 1, 0)
    assert s.sq == pytest.approx(0.6) and s.rq == pytest.approx(2 / 3) and s.pq == pytest.approx(0.4)
    # energy weighting: the 4-hit part carries 12 of 18 GeV -> it is the match instead
    e = np.array([1.0] * 6 + [3.0] * 4)
    m = match_instances(pred, truth, e)
    assert m.pairs.tolist() == [[1, 0]] and m.matched_iou[0] == pytest.approx(12 / 18)
    se = event_pq(pred, truth, e)
    assert se.pq == pytest.approx((12 / 18) / 1.5)
    # an even split matches nothing (IoU = 0.5 is not > 0.5)
    s2 = event_pq(np.array([0] * 5 + [1] * 5), truth)
    assert (s2.tp, s2.fp, s2.fn, s2.pq) == (0, 2, 1, 0.0)


def test_merged_cluster():
    truth = np.array([0] * 6 + [1] * 4)
    pred = np.zeros(10, int)
    s = event_pq(pred, truth)
    assert (s.tp, s.fp, s.fn) == (1, 0, 1)
    assert s.sq == pytest.approx(0.6) and s.pq == pytest.approx(0.6 / 1.5)
    s_eq = event_pq(np.zeros(10, int), np.array([0] * 5 + [1] * 5))
    assert (s_eq.tp, s_eq.fp, s_eq.fn) == (0, 1, 2)


def test_noise_ignored():
    truth = np.array([0, 0, 0, 0, -1, -1, -1, -1, -1])
    energy = np.array([1.0, 1.0, 1.0, 1.0, 50.0, 50.0, 1.0, 1.0, 1.0])
    # the cluster swallows two heavy noise hits: they are void, IoU stays 1
    pred = np.array([0, 0, 0, 0, 0, 0, -1, -1, -1])
    r = _pq(pred, truth, energy)
    assert r["count"]["pq"] == pytest.approx(1.0) and r["energy"]["pq"] == pytest.approx(1.0)
    # a predicted cluster made of noise only is ignored (not a false positive)
    pred2 = np.array([0, 0, 0, 0, 1, 1, 1, -1, -1])
    r2 = _pq(pred2, truth, energy)
    assert r2["count"]["fp"] == 0 and r2["count"]["pq"] == pytest.approx(1.0)
    # mostly-void predictions are ignored too; a mostly-signal one is judged on its signal part
    m = match_instances(np.array([0, 0, 1, 1, 1, 1, 1, -1, -1]), truth)   # cluster 1: 3 of 5 hits void
    assert m.ignored.tolist() == [False, True]
    # noise left unclustered or predicted as noise changes nothing
    assert _pq(np.array([0, 0, 0, 0, -1, -1, -1, -1, -1]), truth)["count"]["pq"] == 1.0


def test_missed_hits_lower_iou():
    truth = np.zeros(4, int)
    pred = np.array([0, 0, 0, -1])                # one truth hit predicted as noise
    s = event_pq(pred, truth)
    assert s.tp == 1 and s.sq == pytest.approx(0.75)


def test_empty_events_and_aggregation():
    m = PanopticQuality()
    m.update(np.zeros(0, int), np.zeros(0, int), np.zeros(0))                 # zero hits
    m.update(np.full(3, -1), np.full(3, -1), np.ones(3))                      # noise only
    assert m.compute()["count"]["pq"] == 0.0 and m.compute()["count"]["n_events"] == 2
    # event 1: perfect (1 TP); event 2: split 6/4 of one truth (1 TP with IoU 0.6 + 1 FP)
    m.update(np.array([0, 0, 1]), np.array([0, 0, 1]), np.ones(3))
    m.update(np.array([0] * 6 + [1] * 4), np.zeros(10, int), np.ones(10))
    r = m.compute()["count"]
    assert (r["tp"], r["fp"], r["fn"]) == (3, 1, 0)
    assert r["sq"] == pytest.approx(2.6 / 3) and r["rq"] == pytest.approx(3 / 3.5)
    assert r["pq"] == pytest.approx(r["sq"] * r["rq"])            # pooled: PQ = SQ x RQ
    assert r["pq_event"] == pytest.approx((1.0 + 0.4) / 2)         # events with TP+FP+FN > 0 only
    assert r["sq_event"] == pytest.approx((1.0 + 0.6) / 2) and r["rq_event"] == pytest.approx((1 + 2 / 3) / 2)
    assert r["pq_event"] != pytest.approx(r["sq_event"] * r["rq_event"])   # per-event: PQ != SQ x RQ
    m.reset()
    assert m.compute()["energy"]["n_events"] == 0


def test_update_without_energy_and_torch_inputs():
    m = PanopticQuality()
    out = m.update(torch.tensor([0, 0, 1]), torch.tensor([1, 1, 0]))
    assert "energy" not in out and m.compute()["count"]["pq"] == 1.0
    assert m.compute()["energy"]["n_events"] == 0


def test_contingency_values():
    pred = np.array([0, 0, 1, 1, -1, 1])
    truth = np.array([0, 1, 1, -1, 1, 1])
    w = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    pid, tid, inter, pa, pv, ta = contingency(pred, truth, w)
    assert pid.tolist() == [0, 1] and tid.tolist() == [0, 1]
    np.testing.assert_array_equal(inter, [[1.0, 2.0], [0.0, 9.0]])
    np.testing.assert_array_equal(pa, [3.0, 9.0])
    np.testing.assert_array_equal(pv, [0.0, 4.0])
    np.testing.assert_array_equal(ta, [1.0, 16.0])
    empty = contingency(np.full(2, -1), np.array([0, -1]))
    assert empty[2].shape == (0, 1) and empty[2].dtype == np.float64


def test_bad_inputs():
    with pytest.raises(ValueError, match="'truth' has 2 entries"):
        event_pq(np.zeros(3, int), np.zeros(2, int))
    with pytest.raises(ValueError, match="'pred' labels must be >= -1"):
        event_pq(np.array([-2, 0]), np.zeros(2, int))
    with pytest.raises(ValueError, match="'weight' contains NaN"):
        event_pq(np.zeros(2, int), np.zeros(2, int), np.array([1.0, np.nan]))
    with pytest.raises(ValueError, match="'weight' must be >= 0"):
        event_pq(np.zeros(2, int), np.zeros(2, int), np.array([1.0, -1.0]))
    with pytest.raises(TypeError, match="integer labels"):
        event_pq(np.array([0.5, 0.0]), np.zeros(2, int))
    with pytest.raises(ValueError, match="threshold"):
        match_instances(np.zeros(2, int), np.zeros(2, int), threshold=0.3)


# ----------------------------------------------------------------------------- response


def test_response_metric_hand_built():
    rm = ResponseMetric()
    # truth A: 10 GeV in 2 hits, predicted with an extra 1 GeV noise hit -> E_reco / E_true = 1.1
    # truth B: 4 GeV split evenly in two predictions -> unmatched, two fakes of 2 GeV
    truth = np.array([0, 0, -1, 1, 1])
    pred = np.array([5, 5, 5, 8, 9])
    energy = np.array([5.0, 5.0, 1.0, 2.0, 2.0])
    rm.update(pred, truth, energy)
    s = rm.compute()
    b = lambda e: int(np.searchsorted(s["bins"], e, side="right") - 1)   # noqa: E731
    assert s["n_true"][b(10.0)] == 1 and s["efficiency"][b(10.0)] == 1.0
    assert s["n_true"][b(4.0)] == 1 and s["efficiency"][b(4.0)] == 0.0
    assert s["fake_rate"][b(2.0)] == 1.0 and s["n_pred"][b(2.0)] == 2
    assert s["fake_rate"][b(11.0)] == 0.0
    assert s["response_mean"] == pytest.approx(1.1)
    # with the true particle energies given, E_true is taken from them
    rm2 = ResponseMetric()
    rm2.update(pred, truth, energy, truth_energy=np.array([12.0, 5.0]))
    assert rm2.compute()["response_mean"] == pytest.approx(11.0 / 12.0)
    with pytest.raises(ValueError, match="truth_energy"):
        rm2.update(pred, truth, energy, truth_energy=np.array([1.0]))
    # per-type summaries: group 22 holds truth A only, group 211 truth B only
    rm3 = ResponseMetric()
    rm3.update(pred, truth, energy, truth_group=np.array([22, 211]))
    sa, sb = rm3.compute(group=22), rm3.compute(group=211)
    assert sa["n_true"].sum() == 1 and np.nansum(sa["efficiency"]) == 1.0 and sa["response_mean"] == pytest.approx(1.1)
    assert sb["n_true"].sum() == 1 and np.nansum(sb["efficiency"]) == 0.0 and np.isnan(sb["response_mean"])
    assert np.array_equal(sa["n_pred"], sb["n_pred"])                  # fakes are not split by group
    with pytest.raises(ValueError, match="truth_group"):
        rm3.update(pred, truth, energy, truth_group=np.array([22]))


def test_binned_response_values():
    e_true = np.array([1.5, 1.5, 1.5, 15.0, 15.0])
    e_reco = np.array([1.2, 1.5, 1.8, 15.0, 15.0])
    r = binned_response(e_true, e_reco, bins=(1.0, 2.0, 10.0, 20.0))
    assert r["n"].tolist() == [3, 0, 2]
    assert r["response"][0] == pytest.approx(1.0) and r["resolution"][0] == pytest.approx(0.2)
    assert np.isnan(r["response"][1]) and r["resolution"][2] == 0.0


def test_fit_resolution_recovers_parameters():
    e = np.geomspace(1, 500, 12)
    r = resolution_model(e, 0.25, 0.4, 0.01)
    fit = fit_resolution(e, r, 0.01 * r)
    assert fit["a"] == pytest.approx(0.25, rel=1e-3) and fit["b"] == pytest.approx(0.4, rel=1e-3)
    assert fit["c"] == pytest.approx(0.01, rel=1e-2) and fit["n_points"] == 12
    assert np.isnan(fit_resolution([1.0, 2.0], [0.1, 0.1])["a"])
    # quadrature sum
    assert resolution_model(4.0, 0.2, 0.0, 0.0) == pytest.approx(0.1)
    assert resolution_model(1.0, 0.3, 0.4, 0.0) == pytest.approx(0.5)


def test_response_on_generated_events():
    from sparse3d.clustering import clue_hgcal
    from sparse3d.datasets.calo import generate_events
    rm = ResponseMetric()
    for ev in generate_events(4, seed=99):
        rm.update(clue_hgcal(ev.x, ev.y, ev.z, ev.layer, ev.energy), ev.labels(), ev.energy, ev.particles["energy"])
    s = rm.compute()
    assert 0.5 < s["response_mean"] < 1.2
    assert np.nanmax(s["efficiency"]) > 0.5


# ----------------------------------------------------------------------------- plots


def _is_png(path):
    with open(path, "rb") as f:
        head = f.read(8)
    return head == PNG_MAGIC


def test_plots(tmp_path):
    rng = np.random.default_rng(0)
    rm = ResponseMetric()
    for _ in range(30):
        e_true = np.exp(rng.uniform(0, np.log(200)))
        e_hit = e_true * (1 + 0.2 / np.sqrt(e_true) * rng.standard_normal()) / 4
        rm.update(np.zeros(4, int), np.zeros(4, int), np.full(4, max(e_hit, 1e-3)), np.array([e_true]))
    s = rm.compute()
    p1 = plot_response_resolution([s, s], tmp_path / "resp.png", labels=["a", "b"], title="test")
    p2 = plot_efficiency(s, tmp_path / "sub" / "eff.png")
    for p in (p1, p2):
        assert _is_png(p)
    from sparse3d.datasets.calo import generate_event
    ev = generate_event(None, 1, 0)
    p3 = plot_event_display(ev.x, ev.y, ev.z, ev.labels(), tmp_path / "ev.png", ev.energy, title="truth")
    assert _is_png(p3)
    p4 = plot_event_display(np.zeros(0), np.zeros(0), np.zeros(0), np.zeros(0, int), tmp_path / "empty.png")
    assert _is_png(p4)
    with pytest.raises(ValueError, match="equal lengths"):
        plot_event_display(ev.x, ev.y, ev.z[:-1], ev.labels(), tmp_path / "bad.png")


def test_efficiency_plot_draws_identical_fake_rate_once(tmp_path, monkeypatch):
    import sparse3d.metrics.calo_plots as CP
    figs = []
    real_save = CP._save
    monkeypatch.setattr(CP, "_save", lambda fig, path: (figs.append(fig), real_save(fig, path))[1])
    e = np.array([1.0, 2.0, 4.0])
    mk = (lambda eff, fr: {"e_center": e, "efficiency": np.array(eff), "efficiency_err": np.full(3, 0.1),
                           "fake_rate": np.array(fr), "fake_rate_err": np.full(3, 0.05)})
    all_, pho, pi = mk([0.9, 0.95, 1.0], [0.2, 0.1, np.nan]), mk([0.8, 0.9, 1.0], [0.2, 0.1, np.nan]), \
        mk([0.5, 0.7, 0.9], [0.3, 0.1, 0.0])
    CP.plot_efficiency([all_, pho, pi], tmp_path / "e.png", ["all", "photons", "pions"])
    ax_e, ax_f = figs[0].axes
    assert [t.get_text() for t in ax_e.get_legend().get_texts()] == ["all", "photons", "pions"]
    assert [t.get_text() for t in ax_f.get_legend().get_texts()] == ["all", "pions"]


def test_plots_without_any_matched_cluster(tmp_path):
    """An untrained model matches nothing: every binned value is NaN; the plots still render (linear axes,
    'no data') instead of failing on an empty log scale."""
    from sparse3d.metrics.calo_plots import plot_efficiency, plot_response_resolution
    nan = np.full(4, np.nan)
    eff = {"e_center": np.array([1.0, 2.0, 4.0, 8.0]), "efficiency": nan, "efficiency_err": nan,
           "fake_rate": nan, "fake_rate_err": nan}
    res = {"e_mean": nan, "response": nan, "response_err": nan, "resolution": nan, "resolution_err": nan, "fit": {}}
    for p in (plot_efficiency(eff, tmp_path / "e.png"), plot_response_resolution(res, tmp_path / "r.png")):
        assert (tmp_path / p).stat().st_size > 5000
