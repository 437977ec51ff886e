"""sparse3d.utils.threads: small inputs run with one torch thread, numba keeps the outer count."""
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
        assert torch.get_num_threads() == 1 and T.numba_thread_target() == 2
        with T.small_input_threads(10, limit=1000):            # nested: the outermost count is kept
            assert torch.get_num_threads() == 1 and T.numba_thread_target() == 2
        assert torch.get_num_threads() == 1 and T.numba_thread_target() == 2
    assert torch.get_num_threads() == 2 and T.numba_thread_target() == 2
    with T.small_input_threads(1000, limit=1000):              # at the limit: unchanged
        assert torch.get_num_threads() == 2
    with T.small_input_threads(5, limit=0):                    # 0 disables
        assert torch.get_num_threads() == 2
    with pytest.raises(RuntimeError, match="boom"):
        with T.small_input_threads(5, limit=1000):
            raise RuntimeError("boom")
    assert torch.get_num_threads() == 2 and T.numba_thread_target() == 2


def test_numba_follows_outer_count(two_threads):
    import numba
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("numba has a single thread here")
    with T.small_input_threads(5, limit=1000):
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
