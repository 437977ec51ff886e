"""Shared fixtures: devices, repository paths, the real SemanticKITTI scan."""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import sparse3d  # noqa: F401  (before torch: passive OpenMP waiting, as in the entry scripts)

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
KITTI_SCAN = SHARED / "data" / "semantickitti" / "sequences" / "08" / "velodyne" / "000000.bin"

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=DEVICES)
def device(request):
    return torch.device(request.param)


@pytest.fixture(scope="session")
def repo_dir() -> Path:
    return REPO


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return REPO / "data"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    return SHARED


@pytest.fixture(scope="session")
def kitti_points() -> np.ndarray:
    """The real scan: ``[123389, 4]`` float32 (x, y, z, remission)."""
    if not KITTI_SCAN.exists():
        pytest.skip(f"real SemanticKITTI scan not found at {KITTI_SCAN}")
    return np.fromfile(KITTI_SCAN, dtype=np.float32).reshape(-1, 4)


@pytest.fixture(scope="session")
def kitti_coords(kitti_points) -> torch.Tensor:
    """Unique voxels of the real scan at 0.05 m: ``[94444, 4]`` int32 (b=0, x, y, z)."""
    from sparse3d import sparse_quantize
    c = sparse_quantize(kitti_points[:, :3], 0.05)
    return torch.from_numpy(np.concatenate([np.zeros((len(c), 1), np.int32), c], 1))


def run_spconv(module, tensor):
    """Run a spconv module without grad, single-threaded (the spconv CPU wheel returns wrong rows under
    2 torch threads); restores the thread count."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            return module(tensor)
    finally:
        torch.set_num_threads(n)


@contextmanager
def torch_threads(n: int):
    """Run the block with ``n`` torch intra-op threads, restored afterwards."""
    prev = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(prev)


@pytest.fixture
def one_torch_thread():
    """Run the test with one torch intra-op thread (small tensors: no thread wake-ups)."""
    with torch_threads(1):
        yield


def random_coords(n: int, extent: int = 8, batch: int = 2, seed: int = 0, low: int = 0) -> torch.Tensor:
    """Unique random ``[<=n, 4]`` int32 coords in ``[low, low+extent)^3`` over ``batch`` samples."""
    g = torch.Generator().manual_seed(seed)
    b = torch.randint(0, batch, (n, 1), generator=g)
    xyz = torch.randint(low, low + extent, (n, 3), generator=g)
    return torch.unique(torch.cat([b, xyz], 1), dim=0).to(torch.int32)


def compose_config(name: str, overrides=()):
    """Compose ``configs/<name>.yaml`` as the Hydra entry points do (``hydra:`` resolvers set, the ``hydra``
    node removed). Import with ``from conftest import compose_config``."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        cfg = compose(name, overrides=list(overrides), return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg
