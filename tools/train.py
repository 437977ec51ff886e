"""Train a segmentation model (Hydra configs in ``configs/``), then print per-class val IoU.

    python tools/train.py                                   # SPVCNN on the synthetic set, CPU
    python tools/train.py model=minkunet optim=adamw trainer.max_epochs=3
    python tools/train.py experiment=spvcnn_semantickitti   # spvnas recipe on real data
    python tools/train.py resume=true                       # continue the newest run's last.pt
    torchrun --nproc_per_node 2 tools/train.py trainer=ddp  # DDP (gloo on CPU)
    python tools/train.py nproc=2 dataset.batch_size=1      # the same DDP, launched by this script

Runs are written to ``outputs/<experiment_name>/<timestamp>/`` (``config.yaml``,
``checkpoints/{last,best}.pt``, ``tb/`` TensorBoard scalars).
"""
import sparse3d  # noqa: F401  (before torch: passive OpenMP waiting)

import os
import time
from pathlib import Path
from typing import Any, Dict, Optional

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("SPARSE3D_ROOT", str(REPO))

import hydra  # noqa: E402
from hydra.utils import instantiate  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from sparse3d.engine import distributed as D  # noqa: E402
from hydra.utils import get_method  # noqa: E402

from sparse3d.engine import seed_everything  # noqa: E402


def find_resume(cfg: DictConfig) -> Optional[Path]:
    """``resume``: false -> None; a path -> that file; true -> the newest
    ``<output_root>/<experiment_name>/*/checkpoints/last.pt`` (FileNotFoundError if none)."""
    r = cfg.resume
    if r is None or r is False or (isinstance(r, str) and r.lower() in ("false", "")):
        return None
    if r is True or (isinstance(r, str) and r.lower() == "true"):
        base = Path(cfg.paths.output_root) / str(cfg.experiment_name)
        found = sorted(base.glob("*/checkpoints/last.pt"), key=lambda p: p.stat().st_mtime)
        if not found:
            raise FileNotFoundError(f"resume=true but no checkpoints/last.pt under {base}/*")
        return found[-1]
    return Path(str(r))


def train(cfg: DictConfig) -> Dict[str, Any]:
    """Compose -> instantiate -> fit; returns the trainer's result dict (rank 0 prints the table).

    An experiment whose method has no gradient training (e.g. CLUE's parameter search) names its own
    entry point in ``fit_fn`` (a dotted path, called with the config); otherwise the ``task`` group
    says what the generic trainer optimizes and validates."""
    if cfg.get("fit_fn"):
        return get_method(str(cfg.fit_fn))(cfg)
    D.init_distributed()
    try:
        rank, main = D.get_rank(), D.is_main_process()
        cfg.paths.run_dir = D.broadcast_object(str(cfg.paths.run_dir))  # one timestamp for all ranks
        resume = D.broadcast_object(find_resume(cfg) if main else None)
        cfg_yaml = OmegaConf.to_yaml(cfg, resolve=True)
        seed_everything(int(cfg.seed))
        datamodule = instantiate(cfg.dataset)
        if main:
            datamodule.prepare_data()  # generates the synthetic set on first use
        D.barrier()
        model = instantiate(cfg.model)
        if D.is_distributed():
            seed_everything(int(cfg.seed) + rank)  # same init (DDP broadcasts rank 0's), distinct augmentation
        trainer = instantiate(cfg.trainer)
        task = instantiate(cfg.task)
        scheduler = instantiate(cfg.optim.scheduler) if cfg.optim.get("scheduler") else None
        if main:
            n = sum(p.numel() for p in model.parameters())
            print(f"{type(model).__name__}: {n / 1e6:.2f}M parameters; run dir {cfg.paths.run_dir}", flush=True)
        t0 = time.perf_counter()
        result = trainer.fit(model, instantiate(cfg.optim.optimizer), datamodule, cfg.paths.run_dir,
                             scheduler=scheduler, resume=resume, cfg_yaml=cfg_yaml,
                             class_names=datamodule.class_names, task=task)
        if main and result.get("monitor") in result:
            print(f"\nval after {result['epoch']} epochs ({time.perf_counter() - t0:.0f} s):")
            print(task.format_result(result, datamodule.class_names))
            print(f"checkpoints: {Path(cfg.paths.run_dir) / 'checkpoints'}", flush=True)
        return result
    finally:
        D.cleanup()


@hydra.main(config_path="../configs", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> None:
    """``nproc > 1`` (outside torchrun): train in that many local DDP processes (``D.launch_local``)."""
    nproc = int(cfg.get("nproc") or 1)
    if nproc > 1 and "WORLD_SIZE" not in os.environ and not cfg.get("fit_fn"):
        OmegaConf.resolve(cfg)   # Hydra's ${hydra:...} / ${now:...} resolved once, here: the workers have no Hydra
        D.launch_local(train, nproc, cfg)
    else:
        train(cfg)


if __name__ == "__main__":
    main()
