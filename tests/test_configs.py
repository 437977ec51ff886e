"""Every Hydra config composes and instantiates (model, data module, optimizer, scheduler, trainer)."""
from pathlib import Path

import pytest
from conftest import compose_config
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"


def _options(group):
    return sorted(p.stem for p in (CONFIGS / group).glob("*.yaml"))


# segmentation models and datasets pair freely; the calorimeter and BEVFusion models/datasets are built by
# their experiments (test_experiments) and trained in their own tests
SEG_MODELS = [m for m in _options("model") if m in ("spvcnn", "minkunet")]
SEG_DATASETS = [d for d in _options("dataset") if d.startswith(("semantic_kitti", "nuscenes_lidarseg"))]


def compose_train(overrides=()):
    """Compose ``configs/train.yaml`` as ``tools/train.py`` would (``hydra:`` resolvers set)."""
    return compose_config("train", overrides)


def _instantiate_all(cfg, forward=False):
    model = instantiate(cfg.model)
    if forward:
        assert model(_tiny_input()).shape == (7, cfg.dataset.num_classes)
    dm = instantiate(cfg.dataset)
    assert dm.num_classes == cfg.dataset.num_classes and len(dm.class_names) == dm.num_classes
    opt = instantiate(cfg.optim.optimizer)(model.parameters())
    sched = instantiate(cfg.optim.scheduler)(opt, total_steps=10)
    trainer = instantiate(cfg.trainer)
    assert trainer.max_epochs >= 1
    return model, dm, opt, sched, trainer


def _tiny_input():
    from sparse3d import SparseTensor
    g = torch.Generator().manual_seed(0)
    coords = torch.zeros(7, 4, dtype=torch.int32)
    coords[:, 1:] = torch.randperm(64, generator=g)[:7].view(-1, 1) * torch.tensor([1, 2, 3])
    return SparseTensor(torch.randn(7, 4, generator=g), coords)


def test_groups_exist():
    for g in ("dataset", "model", "optim", "trainer", "task", "experiment", "paths"):
        assert _options(g), g
    assert {"spvcnn", "minkunet"} <= set(_options("model"))
    assert {"sgd", "adamw"} <= set(_options("optim"))
    assert {"cpu", "ddp"} <= set(_options("trainer"))


def test_default_config():
    cfg = compose_train()
    assert cfg.model._target_ == "sparse3d.models.spvnas.spvcnn.SPVCNN"
    assert cfg.dataset._target_ == "sparse3d.datasets.kitti_module.SemanticKITTIDataModule"
    # the default experiment (synth_cpu) trains with AdamW + class-weighted CE + Lovasz at 0.2 m, cr 0.5
    assert cfg.optim.optimizer._target_ == "torch.optim.AdamW"
    assert cfg.task._target_ == "sparse3d.engine.tasks.SegmentationTask" and cfg.task.lovasz_weight > 0
    assert cfg.dataset.voxel_size == 0.2 and cfg.model.cr == 0.5
    # two single-thread DDP processes started by tools/train.py, batch 1 each (global batch 2)
    assert cfg.nproc == 2 and cfg.dataset.batch_size == 1 and cfg.trainer.num_threads == 1
    assert cfg.model.input_norm is True
    assert compose_train(["experiment=calo_spvcnn"]).nproc == 1
    sgd = OmegaConf.load(CONFIGS / "optim" / "sgd.yaml").optimizer  # the upstream spvnas recipe
    assert sgd.lr == 0.24 and sgd.nesterov and sgd.momentum == 0.9 and sgd.weight_decay == 1e-4
    assert Path(cfg.paths.data_dir).name == "data"
    assert "outputs" in Path(cfg.paths.run_dir).parts
    OmegaConf.to_yaml(cfg, resolve=True)  # everything resolves


@pytest.mark.parametrize("model", SEG_MODELS)
@pytest.mark.parametrize("dataset", SEG_DATASETS)
def test_model_dataset_pairs(model, dataset):
    cfg = compose_train([f"model={model}", f"dataset={dataset}", "model.cr=0.125"])
    _instantiate_all(cfg, forward=True)


@pytest.mark.parametrize("optim", _options("optim"))
@pytest.mark.parametrize("trainer", _options("trainer"))
def test_optim_trainer(optim, trainer):
    cfg = compose_train([f"optim={optim}", f"trainer={trainer}", "model=minkunet", "model.cr=0.125"])
    model, _, opt, sched, tr = _instantiate_all(cfg)
    assert type(opt).__name__ == {"sgd": "SGD", "adamw": "AdamW"}[optim]
    assert type(sched).__name__ == "CosineWarmupLR"


@pytest.mark.parametrize("experiment", _options("experiment"))
def test_experiments(experiment):
    if experiment.startswith(("calo_", "bevfusion_")):
        cfg = compose_train([f"experiment={experiment}"])
        model, dm, task = instantiate(cfg.model), instantiate(cfg.dataset), instantiate(cfg.task)
        assert cfg.eval_fn and hasattr(task, "monitor") and hasattr(dm, "train_dataloader")
        if cfg.get("fit_fn") is None:
            instantiate(cfg.optim.optimizer)(model.parameters())
        return
    cfg = compose_train([f"experiment={experiment}", "model.cr=0.125"])
    model, dm, *_ = _instantiate_all(cfg)
    if experiment.endswith("semantickitti"):
        assert cfg.experiment_name == experiment
        assert type(model).__name__ == {"spvcnn": "SPVCNN", "minkunet": "MinkUNet"}[experiment.split("_")[0]]
        assert cfg.dataset.voxel_size == 0.05 and cfg.dataset.max_voxels == 80000
        assert dm.synthetic is None and cfg.trainer.max_epochs == 15
