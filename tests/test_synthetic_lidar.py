"""Synthetic SemanticKITTI generator: determinism, format round trip, classes, sensor, kernels."""
from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path

import numpy as np
import pytest

from sparse3d.datasets import SemanticKITTI, raw_to_train
from sparse3d.datasets.semantic_kitti import read_labels, read_points
from sparse3d.datasets.synth import objects as ob
from sparse3d.datasets.synth.common import (BICYCLE, BICYCLIST, MOTORCYCLE, MOTORCYCLIST, OTHER_GROUND,
                                            OTHER_VEHICLE, PARKING, ROAD, SIDEWALK, SYNTH_RAW_IDS, TERRAIN,
                                            THING_IDS, TRUCK)
from sparse3d.datasets.synth.primitives import PrimitiveList
from sparse3d.datasets.synth.primitives import BOX, CYLINDER, ELLIPSOID, intersect
from sparse3d.datasets.synth.raycast import intersect_one
from sparse3d.datasets.synth.scene import SENSOR_HEIGHT, build_scene
from sparse3d.datasets.synth.sensor import HDL64E, _ground_albedo, scan
from sparse3d.datasets.synthetic_lidar import ensure_synthetic_kitti, generate_sequence, generate_synthetic_kitti

TINY = dict(seed=3, n_train=2, n_val=1, azimuth_steps=500)


def _files(root: Path):
    return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file() and p.name != "synth_meta.json")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    generate_synthetic_kitti(root, **TINY)
    return root


def test_layout_is_semantickitti(tiny):
    seqs = sorted(p.name for p in (tiny / "sequences").iterdir())
    assert seqs == ["00", "01", "08"]
    for s in seqs:
        d = tiny / "sequences" / s
        bins = sorted(p.stem for p in (d / "velodyne").glob("*.bin"))
        labs = sorted(p.stem for p in (d / "labels").glob("*.label"))
        assert bins == labs == [f"{i:06d}" for i in range(len(bins))]
        assert (d / "calib.txt").exists()
        assert len((d / "poses.txt").read_text().splitlines()) == len(bins)


def test_deterministic_by_seed(tiny, tmp_path):
    again = tmp_path / "again"
    generate_synthetic_kitti(again, **TINY)
    files = _files(tiny)
    assert files == _files(again)
    for f in files:
        assert (tiny / f).read_bytes() == (again / f).read_bytes(), f
    other = tmp_path / "other"
    generate_synthetic_kitti(other, **{**TINY, "seed": 4})
    f = Path("sequences/00/velodyne/000000.bin")
    assert (tiny / f).read_bytes() != (other / f).read_bytes()


def test_round_trip_through_reader(tiny):
    train = SemanticKITTI(tiny, sequences=[0, 1])
    val = SemanticKITTI(tiny, split="val")
    assert len(train) == 2 and len(val) == 1
    for ds in (train, val):
        for i in range(len(ds)):
            s = ds[i]
            scan_id, bin_path, label_path = ds.scans[i]
            raw = np.fromfile(bin_path, dtype=np.float32).reshape(-1, 4)
            np.testing.assert_array_equal(s["points"], raw)
            lab = np.fromfile(label_path, dtype=np.uint32)
            sem, inst = lab & 0xFFFF, lab >> 16
            assert set(np.unique(sem).tolist()) <= set(SYNTH_RAW_IDS)
            np.testing.assert_array_equal(s["labels"], raw_to_train(sem))
            assert (s["labels"] != 255).all()  # no unlabeled points in the synthetic set
            things = np.isin(sem, THING_IDS)
            assert (inst[things] > 0).all() and (inst[~things] == 0).all()
            assert s["scan_id"] == f"{bin_path.parent.parent.name}/{bin_path.stem}"
            assert np.isfinite(raw).all() and (raw[:, 3] >= 0).all() and (raw[:, 3] < 1).all()


def test_poses_and_calib_round_trip(tiny):
    ds = SemanticKITTI(tiny, split="val")
    scene = build_scene(np.random.default_rng(np.random.SeedSequence([TINY["seed"], 8])), 1)
    assert len(scene.poses) == 1
    np.testing.assert_allclose(ds.poses(8), np.eye(4)[None], atol=1e-12)
    assert set(ds.calib(8)) == {"P0", "P1", "P2", "P3", "Tr"}


def test_poses_follow_the_drive(tmp_path):
    generate_sequence(tmp_path, 0, 4, seed=7, azimuth_steps=200)
    scene = build_scene(np.random.default_rng(np.random.SeedSequence([7, 0])), 4)
    got = SemanticKITTI(tmp_path, sequences=[0]).poses(0)
    np.testing.assert_allclose(got, np.linalg.inv(scene.poses[0]) @ scene.poses, atol=1e-9)
    steps = np.linalg.norm(np.diff(got[:, :3, 3], axis=0), axis=1)
    assert ((steps > 7) & (steps < 13)).all()  # one scan every ~10 m along the street
    # the scan content follows the pose: static road points of scan 0 and 1 overlap in the world
    ds = SemanticKITTI(tmp_path, sequences=[0])
    w = [(got[i][:3, :3] @ ds[i]["points"][:, :3].T).T + got[i][:3, 3] for i in (0, 1)]
    assert abs(np.median(w[0][:, 2]) - np.median(w[1][:, 2])) < 0.5


def test_instances_consistent_over_a_sequence(tiny):
    """The same object keeps its instance id and class across scans of a sequence."""
    d = tiny / "sequences" / "00" / "labels"
    pairs = set()
    for f in sorted(d.glob("*.label")):
        sem, inst = read_labels(f)
        pairs |= set(zip(inst[inst > 0].tolist(), sem[inst > 0].tolist()))
    ids = [i for i, _ in pairs]
    assert len(ids) == len(set(ids))


def test_all_classes_present(tiny):
    """The 19 raw ids are the 19 SemanticKITTI evaluation classes, and a few scans hold all of them."""
    assert len(SYNTH_RAW_IDS) == 19
    assert sorted(raw_to_train(np.array(SYNTH_RAW_IDS)).tolist()) == list(range(19))
    seen = set()
    for f in sorted(tiny.rglob("*.label")):
        seen |= set(np.unique(read_labels(f)[0]).tolist())
    assert seen == set(SYNTH_RAW_IDS)


def test_every_scan_has_the_rare_classes():
    """Each scan sees bicyclists, motorcyclists, motorcycles, other vehicles and other-ground."""
    scene = build_scene(np.random.default_rng(np.random.SeedSequence([5, 8])), 3)
    for i, pose in enumerate(scene.poses):
        _, sem, _ = scan(scene.prims, scene.layout, pose, np.random.default_rng(i), HDL64E(azimuth_steps=1000))
        n = np.bincount(sem, minlength=1 << 16)
        for c in (BICYCLIST, MOTORCYCLIST, MOTORCYCLE, OTHER_VEHICLE, OTHER_GROUND):
            assert n[c] > 0, (i, c)


def _extent(label):
    """Builds one object at the origin; (length, width, height) of its primitives' bounding box."""
    p = PrimitiveList()
    rng = np.random.default_rng(0)
    if label == BICYCLE:
        ob.add_bicycle(p, rng, 0.0, 0.0, 0.0, 0.0, 1)
    elif label == MOTORCYCLE:
        ob.add_motorcycle(p, rng, 0.0, 0.0, 0.0, 0.0, 1)
    else:
        ob.add_rider(p, rng, 0.0, 0.0, 0.0, 0.0, 1, label == MOTORCYCLIST)
    pr = p.finish()
    assert set(pr.label.tolist()) == {label} and set(pr.instance.tolist()) == {1}
    return _bbox(pr)


def _bbox(pr):
    """(size [3], bottom z, top z) of the axis-aligned box around all primitives (box bounds)."""
    corners = (np.abs(pr.rot) @ pr.half[:, :, None])[..., 0]  # half extents of the rotated primitives
    lo = (pr.center - corners).min(0)
    hi = (pr.center + corners).max(0)
    return hi - lo, lo[2], hi[2]


def test_riders_sit_on_their_vehicles():
    """A rider is a person on top of a bicycle / motorcycle, labelled as one object; the parked
    vehicles alone are lower."""
    for vehicle, rider in ((BICYCLE, BICYCLIST), (MOTORCYCLE, MOTORCYCLIST)):
        size_v, z0_v, top_v = _extent(vehicle)
        size_r, z0_r, top_r = _extent(rider)
        assert abs(z0_v) < 0.01 and abs(z0_r) < 0.01  # standing on the ground
        assert top_v < 1.35 and 1.45 < top_r < 2.1, (top_v, top_r)
        assert 0.9 < size_v[0] < 2.4 and size_v[1] < 1.0  # narrower and shorter than a car


def test_other_vehicles_are_long():
    for kind, (_, (lo, hi)) in enumerate(ob.OTHER_VEHICLE_KINDS):
        p = PrimitiveList()
        L = (lo + hi) / 2
        ob.add_other_vehicle(p, np.random.default_rng(kind), 0.0, 0.0, 0.0, 0.0, 1, kind, L)
        pr = p.finish()
        assert set(pr.label.tolist()) == {OTHER_VEHICLE}
        size, bottom, top = _bbox(pr)
        assert abs(bottom) < 0.01 and top > (2.8 if kind == 0 else 0.9)
        assert abs(size[0] - L) < 0.3 and 1.6 < size[1] < 2.9  # long and wide: not a car or a motorcycle


def test_median_is_raised_other_ground():
    """The main street's median is other-ground at curb height on the centre line, with road gaps."""
    scene = build_scene(np.random.default_rng(2), 1)
    lay = scene.layout
    main = lay.streets[0]
    assert main.median > 0
    u = np.linspace(-100, 100, 2001)
    x, y = main.world(u, np.zeros_like(u))
    cls, off = lay.classify(x, y)
    present = main.median_at(u)
    assert present.any() and (~present).any()
    far = np.ones_like(present)  # away from cross streets
    for cs in lay.streets[1:]:
        far &= np.abs(u - cs.offset) > 2 * max(cs.edges(0)[0], cs.edges(1)[0]) + 1
    assert (cls[present & far] == OTHER_GROUND).all()
    np.testing.assert_allclose(off[present & far], main.curb)
    assert (cls[~present & far] == ROAD).all() and (off[~present & far] == 0).all()


def test_remission_is_not_a_class_id(tiny):
    """A remission-only classifier (majority class per remission bin) is far from perfect."""
    rem, lab = [], []
    for f in sorted(tiny.rglob("*.bin")):
        rem.append(read_points(f)[:, 3])
        lab.append(read_labels(f.parent.parent / "labels" / (f.stem + ".label"))[0])
    rem, lab = np.concatenate(rem), np.concatenate(lab)
    bins = np.minimum((rem * 50).astype(int), 49)
    classes = np.array(SYNTH_RAW_IDS)
    counts = np.stack([np.bincount(bins[lab == c], minlength=50) for c in classes])  # [C, 50]
    pred = classes[counts.argmax(0)][bins]
    recall = [(pred[lab == c] == c).mean() for c in classes]
    assert np.mean(recall) < 0.4, recall


def test_scan_size_and_time():
    """A full-resolution scan (64 x 2000 rays): point count like a KITTI scan; time is only recorded."""
    scene = build_scene(np.random.default_rng(11), 2)
    scan(scene.prims, scene.layout, scene.poses[0], np.random.default_rng(0))  # warm up numba
    t0 = time.perf_counter()
    pts, sem, inst = scan(scene.prims, scene.layout, scene.poses[1], np.random.default_rng(1))
    dt = time.perf_counter() - t0
    print(f"full scan: {len(pts)} points in {dt:.3f} s")
    assert 80_000 < len(pts) < 128_000
    assert pts.dtype == np.float32 and sem.dtype == np.uint16 and inst.dtype == np.uint16
    r = np.linalg.norm(pts[:, :3], axis=1)
    assert r.min() >= HDL64E().min_range - 0.1 and r.max() <= HDL64E().max_range + 0.1
    el = np.degrees(np.arcsin(pts[:, 2] / r))
    assert el.min() > -25.5 and el.max() < 2.5
    # the road below the sensor is ~1.73 m down
    road = (sem == 40) & (r < 10)
    assert abs(np.median(pts[road, 2]) + SENSOR_HEIGHT) < 0.1


def test_ground_hits_lie_on_the_height_field():
    scene = build_scene(np.random.default_rng(5), 1)
    lay, pose = scene.layout, scene.poses[0]
    rng = np.random.default_rng(0)
    az = rng.uniform(0, 2 * np.pi, 4000)
    el = np.radians(rng.uniform(-25, 3, 4000))
    d = np.stack([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)], 1) @ pose[:3, :3].T
    t, cls = lay.intersect(pose[:3, 3], d, 120.0)
    hit = np.isfinite(t)
    assert hit.sum() > 1000 and not hit[el > np.radians(1.0)].any()
    p = pose[:3, 3] + t[hit, None] * d[hit]
    gap = p[:, 2] - lay.height(p[:, 0], p[:, 1])
    # the hit is the first crossing: at/below the surface there, above it 3 cm earlier on the ray
    # (curb faces are vertical steps, so the point may lie below the height at its own xy)
    assert (gap <= 1e-9).all()
    q = pose[:3, 3] + (t[hit, None] - 0.03) * d[hit]
    assert (q[:, 2] > lay.height(q[:, 0], q[:, 1])).mean() > 0.995
    assert (np.abs(gap) < 0.02).mean() > 0.9
    # the others lie on a vertical step (curb faces of sidewalks and medians): between the ground
    # heights 4 cm to either side
    off = np.abs(gap) >= 0.02
    nb = np.stack([lay.height(p[off, 0] + dx, p[off, 1] + dy)
                   for dx, dy in ((0.04, 0), (-0.04, 0), (0, 0.04), (0, -0.04))], 1)
    on_step = (nb.min(1) <= p[off, 2] + 0.02) & (p[off, 2] <= nb.max(1) + 0.02)
    assert (np.abs(gap) < 0.02).mean() + on_step.sum() / len(gap) > 0.99
    np.testing.assert_array_equal(cls[hit], lay.classify(p[:, 0], p[:, 1])[0])
    assert (cls[~hit] == 0).all()


@pytest.mark.parametrize("kind", [BOX, ELLIPSOID, CYLINDER])
def test_numba_intersection_matches_numpy_reference(kind):
    rng = np.random.default_rng(kind)
    for _ in range(20):
        half = rng.uniform(0.05, 3.0, 3)
        o = rng.uniform(-8, 8, 3)
        d = rng.normal(size=(300, 3))
        d[:20, rng.integers(3)] = 0.0  # rays parallel to a face / the axis
        t_ref, out_ref, _ = intersect(kind, o, d, half)
        got = np.array([intersect_one(kind, o, d[i], half)[:2] for i in range(len(d))])
        hit = np.isfinite(t_ref) & (out_ref > 0)
        np.testing.assert_allclose(got[hit, 0], t_ref[hit], rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(got[hit, 1], out_ref[hit], rtol=1e-9, atol=1e-9)
        assert not (np.isfinite(got[:, 0]) & (got[:, 1] > 0) & ~hit).any()
        # brute force: points at the entry lie on the surface
        p = o + got[hit, :1] * d[hit]
        if kind == ELLIPSOID:
            np.testing.assert_allclose(((p / half) ** 2).sum(1), 1.0, atol=1e-6)
        elif kind == BOX:
            np.testing.assert_allclose(np.abs(p / half).max(1), 1.0, atol=1e-6)


def test_ensure_synthetic_kitti(tmp_path):
    root = tmp_path / "set"
    kw = dict(seed=1, n_train=1, n_val=1, azimuth_steps=300)
    assert ensure_synthetic_kitti(root, **kw) == root
    meta = root / "synth_meta.json"
    stamp = meta.stat().st_mtime_ns
    ensure_synthetic_kitti(root, **kw)  # present: nothing regenerated
    assert meta.stat().st_mtime_ns == stamp
    assert len(SemanticKITTI(root, split="val")) == 1
    ensure_synthetic_kitti(root, **{**kw, "n_train": 2})  # other parameters: regenerated
    assert json.loads(meta.read_text())["params"]["n_train"] == 2
    assert len(SemanticKITTI(root, sequences=[0, 1])) == 2
    assert not list(tmp_path.glob(".set.tmp-*"))
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "mine.txt").write_text("keep")
    with pytest.raises(ValueError, match="not a generated synthetic set"):
        ensure_synthetic_kitti(foreign, **kw)
    assert (foreign / "mine.txt").read_text() == "keep"


def test_bad_generator_arguments(tmp_path):
    with pytest.raises(ValueError, match="n_train"):
        generate_synthetic_kitti(tmp_path, n_train=0, n_val=0)


def test_make_data_cli(repo_dir, tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("make_data", repo_dir / "tools" / "make_data.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "cli"
    mod.main(["semantickitti", "--out", str(out), "--seed", "2", "--train", "1", "--val", "1",
              "--azimuth-steps", "300"])
    assert len(SemanticKITTI(out, sequences=[0])) == 1 and len(SemanticKITTI(out, split="val")) == 1
    assert "road" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        mod.main([])


@pytest.mark.slow
def test_default_val_class_shares(tmp_path):
    """The default validation sequence (16 scans of seq 08) holds every class, rare ones >= 0.1 %."""
    st = generate_sequence(tmp_path, 8, 16, seed=0)
    total = st["points"]
    for c in SYNTH_RAW_IDS:
        assert st["histogram"].get(c, 0) / total >= 0.001, c


def test_curbs_and_parking_bays_beside_the_road():
    """Across a street: road at 0, then (where present) a parking bay right at the road edge raised by
    a half-height step, then the sidewalk at curb height (12-17 cm)."""
    seen_parking = 0
    for seed in range(6):
        scene = build_scene(np.random.default_rng(seed), 1)
        lay = scene.layout
        main = lay.streets[0]
        assert 0.12 <= main.curb <= 0.17
        far = [cs.offset for cs in lay.streets[1:]]
        u = next(uu for uu in np.arange(-100.0, 100.0, 7.0) if all(abs(uu - f) > 40 for f in far))
        for side, sg in ((0, -1.0), (1, 1.0)):
            e0, e1, e2, e3 = main.edges(side)
            v = sg * np.array([e0 - 0.1, e0 + 0.05, e1 - 0.05, e3 - 0.1])
            x, y = main.world(np.full(4, u), v)
            cls, off = lay.classify(np.asarray(x, float), np.asarray(y, float))
            assert cls[0] == ROAD and off[0] == 0.0
            assert cls[3] == SIDEWALK and off[3] == pytest.approx(main.curb)
            if main.parking[side] > 0:
                seen_parking += 1
                assert (cls[1:3] == PARKING).all()
                assert 0.05 <= off[1] == off[2] <= main.curb - 0.03  # a visible step up from the road
    assert seen_parking >= 3


def _local_z_residual(cls_id, seed=4):
    """Per-point z minus the ground height at its world xy, for one class of one scan (within 25 m)."""
    scene = build_scene(np.random.default_rng(seed), 1)
    pose = scene.poses[0]
    pts, sem, _ = scan(scene.prims, scene.layout, pose, np.random.default_rng(0), HDL64E(azimuth_steps=1000))
    m = (sem == cls_id) & (np.linalg.norm(pts[:, :2], axis=1) < 25)
    w = pts[m, :3].astype(np.float64) @ pose[:3, :3].T + pose[:3, 3]
    return w[:, 2] - scene.layout.height(w[:, 0], w[:, 1])


def test_terrain_is_rough_and_paving_is_flat():
    """Grass: terrain returns scatter a few cm below the ground top; paved sidewalks stay within the range noise."""
    grass = _local_z_residual(TERRAIN)
    walk = _local_z_residual(SIDEWALK)
    assert len(grass) > 200 and len(walk) > 200
    assert np.std(grass) > 0.015 and np.std(walk) < 0.01, (np.std(grass), np.std(walk))
    # below the top by up to the grass height (more where the ray continues over a bump), never above it
    assert np.percentile(grass, 5) > -0.25 and np.median(grass) < -0.01 and np.percentile(grass, 99) < 0.02


def test_parking_bays_have_markings():
    """Parking bays carry painted lines (an edge line along the road, transverse bay lines): a few
    per cent of the bay surface is bright paint, the rest is dark paving like the road."""
    scene = build_scene(np.random.default_rng(1), 1)
    main = scene.layout.streets[0]
    side = int(main.parking[1] > 0)
    assert main.parking[side] > 0
    e0, e1 = main.edges(side)[:2]
    sg = 1.0 if side else -1.0
    u, w = np.meshgrid(np.arange(-20.0, 20.0, 0.02), np.arange(e0 + 0.01, e1, 0.05))
    x, y = main.world(u.ravel(), sg * w.ravel())
    x, y = np.asarray(x, float), np.asarray(y, float)
    cls, _ = scene.layout.classify(x, y)
    keep = cls == PARKING
    alb = _ground_albedo(scene.layout, cls[keep], x[keep], y[keep], np.random.default_rng(0))
    bright = alb >= 0.5
    assert keep.mean() > 0.9 and 0.03 < bright.mean() < 0.2 and np.median(alb) < 0.4
    edge = w.ravel()[keep] - e0 < 0.24
    assert bright[edge].all()  # the broad solid edge line along the road


def test_trucks_are_stepped_and_buses_level():
    """A truck's cab is at least 0.5 m lower than its cargo box; a bus has one level roof over its length."""
    for seed in range(5):
        p = PrimitiveList()
        ob.add_truck(p, np.random.default_rng(seed), 0.0, 0.0, 0.0, 0.0, 1)
        pr = p.finish()
        tops = pr.center[:, 2] + pr.half[:, 2]
        front = pr.center[:, 0] > 0
        big = pr.half[:, 0] > 0.5  # cab and box (not wheels / glass)
        size, bottom, top = _bbox(pr)
        assert set(pr.label.tolist()) == {TRUCK} and abs(bottom) < 0.01 and 3.5 < top < 4.1
        cab = tops[front & big & (pr.half[:, 2] > 0.5)].max()
        assert cab < top - 0.5, (cab, top)
        assert 6.0 < size[0] < 11.0
        p = PrimitiveList()
        ob.add_other_vehicle(p, np.random.default_rng(seed), 0.0, 0.0, 0.0, 0.0, 1, 0, 12.0)
        pr = p.finish()
        tops = pr.center[:, 2] + pr.half[:, 2]
        roof = np.argmax(np.where(pr.half[:, 0] > 3.0, tops, -np.inf))  # the highest long part
        assert pr.half[roof, 0] > 5.9 and tops[roof] > 2.8  # spans the whole 12 m body
