"""sparse3d.utils.threads: small inputs run single-threaded (torch and numba), concurrent_map, numba pool start."""
from __future__ import annotations

import pytest
import torch

import sparse3d.utils.threads as T
from conftest import torch_threads


@pytest.fixture
def two_threads():
    with torch_threads(2):
        yield


def test_small_input_runs_single_threaded_and_restores(two_threads):
    with T.small_input_threads(100, limit=1000):
        assert torch.get_num_threads() == 1 and T.numba_thread_target() == 1
        with T.small_input_threads(10, limit=1000):            # nested
            assert torch.get_num_threads() == 1 and T.numba_thread_target() == 1
        assert torch.get_num_threads() == 1 and T.numba_thread_target() == 1
    assert torch.get_num_threads() == 2 and T.numba_thread_target() == 2
    with T.small_input_threads(1000, limit=1000):              # at the limit: unchanged
        assert torch.get_num_threads() == 2
    with T.small_input_threads(5, limit=0):                    # 0 disables
        assert torch.get_num_threads() == 2
    with pytest.raises(RuntimeError, match="boom"):
        with T.small_input_threads(5, limit=1000):
            raise RuntimeError("boom")
    assert torch.get_num_threads() == 2 and T.numba_thread_target() == 2


def test_numba_follows_torch_count(two_threads):
    import numba
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("numba has a single thread here")
    with T.small_input_threads(5, limit=1000):
        T.sync_numba_threads()
        assert numba.get_num_threads() == 1                  # small inputs: numba single-threaded too
    with T.small_input_threads(5000, limit=1000):
        T.sync_numba_threads()
        assert numba.get_num_threads() == 2
    torch.set_num_threads(1)
    T.sync_numba_threads()
    assert numba.get_num_threads() == 1
    torch.set_num_threads(2)
    T.sync_numba_threads()
    assert numba.get_num_threads() == 2


@pytest.mark.parametrize("arch", ["minkunet", "spvcnn", "calo"])
def test_models_give_the_same_output_with_and_without_the_policy(two_threads, monkeypatch, arch):
    from conftest import random_coords

    import sparse3d
    torch.manual_seed(0)
    if arch == "calo":
        from sparse3d.datasets.calo import generate_events
        from sparse3d.datasets.calo.module import CaloCollate
        from sparse3d.models.calo import CaloSPVCNN
        model = CaloSPVCNN(cr=0.25, res_blocks=1, devoxelize="nearest").eval()
        x = CaloCollate().events(generate_events(1, None, seed=4))
        run = (lambda: model.hit_features(x))
    else:
        from sparse3d.models import MinkUNet
        from sparse3d.models.spvnas.spvcnn import SPVCNN
        model = (MinkUNet if arch == "minkunet" else SPVCNN)(cr=0.25).eval()
        c = random_coords(800, extent=20, batch=2, seed=1)
        x = sparse3d.SparseTensor(torch.randn(len(c), 4), c)
        run = (lambda: model(x))
    seen = []
    hook = model.stage1.register_forward_hook(lambda *args: seen.append(torch.get_num_threads()))
    with torch.no_grad():
        monkeypatch.setattr(T, "SMALL_INPUT_ROWS", 0)
        a = run()
        monkeypatch.setattr(T, "SMALL_INPUT_ROWS", 10 ** 9)
        b = run()
    hook.remove()
    assert seen == [2, 1]      # policy off: 2 torch threads inside the net; on: 1
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert torch.get_num_threads() == 2


def test_concurrent_map_order_errors_threads_and_grad_mode():
    import numba

    seen = []

    def f(x):
        seen.append((torch.get_num_threads(), numba.get_num_threads(), torch.is_grad_enabled()))
        return x * x

    with torch_threads(2):
        assert T.concurrent_map(f, range(7), 2) == [x * x for x in range(7)]
        assert torch.get_num_threads() == 2                       # restored
        with torch.no_grad():
            T.concurrent_map(f, range(3), 2)
    assert {s[:2] for s in seen} == {(1, 1)}                      # single-thread workers
    assert [s[2] for s in seen] == [True] * 7 + [False] * 3       # the caller's grad mode
    assert T.concurrent_map(f, [], 2) == [] and T.concurrent_map(f, [3], 4) == [9]

    def bad(x):
        if x == 2:
            raise KeyError("item 2")
        return x

    with torch_threads(2):
        with pytest.raises(KeyError, match="item 2"):
            T.concurrent_map(bad, range(4), 2)
        assert torch.get_num_threads() == 2


def test_concurrent_map_runs_sparse_convs_side_by_side_exactly():
    """Batches run concurrently give the outputs of the sequential loop: kernel maps are built per input and the
    gather/product workspaces of the gather-GEMM-scatter dataflow are per thread (a shared one raced)."""
    from sparse3d import SparseTensor
    import sparse3d.nn as spnn
    import sparse3d.nn.functional.conv as conv_mod

    torch.manual_seed(0)
    net = torch.nn.Sequential(spnn.Conv3d(32, 64, 3), spnn.Conv3d(64, 64, 3), spnn.Conv3d(64, 64, 2, stride=2),
                              spnn.Conv3d(64, 32, 2, stride=2, transposed=True)).eval()
    xs = []
    for i in range(6):
        c = torch.unique(torch.randint(-12, 12, (6000, 3), dtype=torch.int32), dim=0)
        c = torch.cat([torch.full((len(c), 1), i % 2, dtype=torch.int32), c], 1)
        xs.append(SparseTensor(torch.randn(len(c), 32), c))
    with torch.no_grad():
        with torch_threads(1):
            ref = [net(x).feats for x in xs]
        assert getattr(conv_mod._WORKSPACE, "bufs", None)   # the workspace dataflow ran
        for _ in range(3):
            with torch_threads(2):
                got = T.concurrent_map(lambda x: net(x).feats, xs, 2)
            for r, g in zip(ref, got):
                torch.testing.assert_close(g, r, rtol=1e-6, atol=1e-6)


def test_numba_pool_start_keeps_torch_thread_count():
    """numba's OpenMP pool start used to reset torch to NUMBA_NUM_THREADS threads (shared libgomp); a fresh
    process checks that torch.set_num_threads(1) survives importing the kernels, numba.set_num_threads and a conv."""
    import subprocess
    import sys
    code = """
import sparse3d, torch, numba
torch.set_num_threads(1)
assert torch.get_num_threads() == 1   # torch's per-thread OpenMP state is initialized from here on
numba.set_num_threads(1)              # would start numba's pool here, had import sparse3d not done it
assert torch.get_num_threads() == 1, torch.get_num_threads()
import sparse3d.nn as spnn
assert torch.get_num_threads() == 1, torch.get_num_threads()
from sparse3d import SparseTensor
c = torch.unique(torch.randint(0, 30, (4000, 3), dtype=torch.int32), dim=0)
x = SparseTensor(torch.randn(len(c), 4), torch.cat([torch.zeros(len(c), 1, dtype=torch.int32), c], 1))
spnn.Conv3d(4, 4, 3)(x)
assert torch.get_num_threads() == 1, torch.get_num_threads()
print("ok")
"""
    env = dict(__import__("os").environ, NUMBA_NUM_THREADS="2", OMP_NUM_THREADS="2")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-2000:]
