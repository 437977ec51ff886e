r"""Generic trainer: SGD/AdamW, per-step cosine-warmup schedule, gradient clipping, AMP, atomic
checkpoints with exact resume, TensorBoard scalars, tqdm bars, DDP (``torchrun``).

The trainer gets already-built pieces (model, optimizer/scheduler factories, a data module and a
task) so it knows nothing about Hydra; ``tools/train.py`` composes and instantiates them. What a
step computes and how validation scores the model belong to the task (:mod:`sparse3d.engine.tasks`):
segmentation by default, calorimeter clustering and BEVFusion detection through their own tasks.

Loss normalization is the task's: e.g. the segmentation cross-entropy is summed over the
non-ignored voxels of the local batch and divided by their count over *all* ranks (times the world
size, which DDP's gradient averaging divides out), so one DDP step has exactly the gradient of a
single-process step on the union of the ranks' batches.
"""
from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from . import distributed as D
from .checkpoint import load_checkpoint, save_checkpoint
from .seed import get_rng_state, set_rng_state
from .tasks.segmentation import SegmentationTask, format_iou_table, segmentation_loss

__all__ = ["Trainer", "segmentation_loss", "format_iou_table"]


def _to_device(batch: Dict[str, Any], device: torch.device) -> Dict[str, Any]:
    return {k: (v.to(device) if hasattr(v, "to") and not isinstance(v, (str, list)) else v) for k, v in batch.items()}


class Trainer:
    r"""Epoch-based trainer for voxel segmentation models (``model(SparseTensor) -> [N, C]``).

    Args:
        max_epochs: epochs to train.
        grad_clip: max global gradient norm (None: no clipping).
        amp: mixed precision: fp16 autocast + GradScaler on CUDA, bf16 autocast on CPU.
        amp_dtype: ``"auto"``, ``"float16"`` or ``"bfloat16"``.
        device: ``"auto"`` (cuda:LOCAL_RANK if available, else cpu), ``"cpu"`` or ``"cuda"``.
        num_threads: ``torch.set_num_threads`` per process (None: leave as is).
        deterministic: ``sparse3d.set_deterministic`` (fixed conv dataflow, ordered scatters).
        miou_convention, eval_level: settings of the default :class:`SegmentationTask` used when
            ``fit`` gets no ``task`` (see there).
        log_every: TensorBoard train scalars every this many steps.
        val_every: validate every this many epochs (and always after the last one).
        progress: tqdm bars (rank 0 only).
        tensorboard: write TensorBoard scalars to ``<run_dir>/tb`` (rank 0 only).
        find_unused_parameters: passed to DistributedDataParallel.
        sync_bn: convert BatchNorm to SyncBatchNorm under DDP (CUDA/nccl only).
    """

    def __init__(self, max_epochs: int = 15, grad_clip: Optional[float] = None, amp: bool = False,
                 amp_dtype: str = "auto", device: str = "auto", num_threads: Optional[int] = None,
                 deterministic: bool = False, miou_convention: str = "semantickitti", eval_level: str = "point",
                 log_every: int = 10, val_every: int = 1, progress: bool = True, tensorboard: bool = True,
                 find_unused_parameters: bool = False, sync_bn: bool = False) -> None:
        if not isinstance(max_epochs, int) or max_epochs < 1:
            raise ValueError(f"max_epochs must be a positive int, got {max_epochs!r}")
        if grad_clip is not None and not grad_clip > 0:
            raise ValueError(f"grad_clip must be > 0 or None, got {grad_clip!r}")
        if amp_dtype not in ("auto", "float16", "bfloat16"):
            raise ValueError(f"amp_dtype must be 'auto', 'float16' or 'bfloat16', got {amp_dtype!r}")
        if miou_convention not in ("semantickitti", "nuscenes"):
            raise ValueError(f"miou_convention must be 'semantickitti' or 'nuscenes', got {miou_convention!r}")
        if eval_level not in ("point", "voxel"):
            raise ValueError(f"eval_level must be 'point' or 'voxel', got {eval_level!r}")
        if device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")
        self.max_epochs, self.grad_clip, self.amp, self.amp_dtype = max_epochs, grad_clip, amp, amp_dtype
        self.device_name, self.num_threads, self.deterministic = device, num_threads, deterministic
        self.miou_convention, self.eval_level = miou_convention, eval_level
        self.log_every, self.val_every, self.progress, self.tensorboard = max(1, log_every), max(1, val_every), progress, tensorboard
        self.find_unused_parameters, self.sync_bn = find_unused_parameters, sync_bn
        self.history: list = []

    # ------------------------------------------------------------------ setup
    def _device(self) -> torch.device:
        import os
        want_cuda = self.device_name == "cuda" or (self.device_name == "auto" and torch.cuda.is_available())
        if want_cuda:
            if not torch.cuda.is_available():
                raise ValueError("trainer.device='cuda' but CUDA is not available")
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return torch.device("cpu")

    def _autocast(self, device: torch.device):
        if not self.amp:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=self._amp_torch_dtype(device))

    def _amp_torch_dtype(self, device: torch.device) -> torch.dtype:
        if self.amp_dtype == "auto":
            return torch.float16 if device.type == "cuda" else torch.bfloat16
        return getattr(torch, self.amp_dtype)

    # ------------------------------------------------------------------ fit
    def fit(self, model: nn.Module, optimizer: Callable[..., torch.optim.Optimizer], datamodule: Any,
            run_dir: str | Path, scheduler: Optional[Callable[..., Any]] = None,
            resume: Optional[str | Path] = None, cfg_yaml: str = "",
            class_names: Optional[Sequence[str]] = None, task: Any = None) -> Dict[str, Any]:
        """Train ``model``; returns the last validation's result (the task's keys, e.g. ``miou``, ``iou``,
        ``confusion`` for segmentation) plus ``best_miou`` (best monitored value), ``epoch``,
        ``global_step``, ``seconds`` and ``monitor`` (the task's monitored key).

        Args:
            optimizer: ``partial`` taking the parameters (Hydra ``_partial_: true``).
            scheduler: ``partial`` taking ``(optimizer, total_steps=...)`` or None (constant lr).
            datamodule: has ``train_dataloader(distributed)``, ``val_dataloader(distributed)``,
                ``num_classes``, ``ignore_index``.
            run_dir: checkpoints go to ``run_dir/checkpoints``, TensorBoard to ``run_dir/tb``.
            resume: a checkpoint path to continue from (model, optimizer, scheduler, scaler,
                epoch/step, best mIoU and RNG states).
            cfg_yaml: resolved config, stored in every checkpoint.
            task: see :mod:`sparse3d.engine.tasks`; None = :class:`SegmentationTask` with the
                datamodule's ``num_classes``/``ignore_index`` and this trainer's ``miou_convention``
                and ``eval_level``.
        """
        import sparse3d
        if self.num_threads:
            torch.set_num_threads(int(self.num_threads))
        if self.deterministic:
            sparse3d.set_deterministic(True)
        distributed = D.is_distributed()
        world, main = D.get_world_size(), D.is_main_process()
        device = self._device()
        run_dir = Path(run_dir)
        ckpt_dir = run_dir / "checkpoints"
        if task is None:
            task = SegmentationTask(int(datamodule.num_classes), int(datamodule.ignore_index),
                                    self.miou_convention, self.eval_level)
        monitor = str(task.monitor)
        if hasattr(task, "setup"):
            task.setup(datamodule)

        model = model.to(device)
        if distributed and self.sync_bn:
            if device.type != "cuda":
                raise ValueError("trainer.sync_bn needs CUDA (SyncBatchNorm has no CPU/gloo path)")
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        opt = optimizer(model.parameters())
        train_loader = datamodule.train_dataloader(distributed=distributed)
        val_loader = datamodule.val_dataloader(distributed=distributed)
        steps_per_epoch = len(train_loader)
        if steps_per_epoch == 0:
            raise ValueError("the training DataLoader is empty (no training scans)")
        sched = scheduler(opt, total_steps=self.max_epochs * steps_per_epoch) if scheduler is not None else None
        scaler = None
        if self.amp and device.type == "cuda" and self._amp_torch_dtype(device) == torch.float16:
            scaler = torch.amp.GradScaler("cuda")
        net = model
        if distributed:
            net = nn.parallel.DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None,
                find_unused_parameters=self.find_unused_parameters)

        start_epoch, global_step, best = 0, 0, -math.inf
        rng_to_restore = None
        if resume:
            state = load_checkpoint(resume, map_location=device)
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            if sched is not None:
                if state.get("scheduler") is None:
                    raise ValueError(f"{resume}: checkpoint has no scheduler state but a scheduler is configured")
                sched.load_state_dict(state["scheduler"])
            if scaler is not None and state.get("scaler") is not None:
                scaler.load_state_dict(state["scaler"])
            start_epoch, global_step = int(state["epoch"]), int(state["global_step"])
            best = float(state.get("best_miou", -math.inf))
            rng_to_restore = state.get("rng")
            if main:
                print(f"resumed from {resume}: epoch {start_epoch}, step {global_step}, best {monitor} {best:.4f}",
                      flush=True)

        writer = None
        if self.tensorboard and main:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:  # pragma: no cover
                raise ImportError("trainer.tensorboard=true needs the 'tensorboard' package "
                                  "(pip install tensorboard), or set trainer.tensorboard=false") from e
            writer = SummaryWriter(str(run_dir / "tb"), purge_step=global_step if resume else None)
        if main:
            run_dir.mkdir(parents=True, exist_ok=True)
            if cfg_yaml:
                (run_dir / "config.yaml").write_text(cfg_yaml)

        from tqdm import tqdm
        if rng_to_restore is not None:
            set_rng_state(rng_to_restore)
        result: Dict[str, Any] = {"best_miou": best, "epoch": start_epoch, "global_step": global_step,
                                  "monitor": monitor}
        t_start = time.perf_counter()
        for epoch in range(start_epoch, self.max_epochs):
            net.train()
            if hasattr(train_loader.sampler, "set_epoch"):
                train_loader.sampler.set_epoch(epoch)
            if callable(getattr(model, "set_epoch", None)):
                model.set_epoch(epoch)   # epoch-dependent models (e.g. BEVFusion's camera_from_epoch)
            bar = tqdm(train_loader, desc=f"epoch {epoch + 1}/{self.max_epochs}", disable=not (self.progress and main),
                       dynamic_ncols=True, leave=False)
            run_loss, run_n = 0.0, 0
            for batch in bar:
                batch = _to_device(batch, device)
                with self._autocast(device):
                    loss, logs = task.training_step(net, batch, world)
                if not torch.isfinite(loss):
                    ids = next((batch[k] for k in ("scan_id", "event_id", "token") if k in batch), None)
                    raise FloatingPointError(f"non-finite loss {float(loss)} at epoch {epoch + 1}, step {global_step}, "
                                             f"samples {ids}")
                lr = opt.param_groups[0]["lr"]  # the lr this step uses
                opt.zero_grad(set_to_none=True)
                if scaler is not None:
                    scaler.scale(loss).backward()
                    if self.grad_clip:
                        scaler.unscale_(opt)
                        torch.nn.utils.clip_grad_norm_(model.parameters(), self.grad_clip)
                    scaler.step(opt)
                    scaler.update()
                else:
                    loss.backward()
                    if self.grad_clip:
                        torch.nn.utils.clip_grad_norm_(model.parameters(), self.grad_clip)
                    opt.step()
                if sched is not None:
                    sched.step()
                global_step += 1
                loss_value = float(loss.detach())
                run_loss, run_n = run_loss + loss_value, run_n + 1
                bar.set_postfix(loss=f"{run_loss / run_n:.3f}", lr=f"{lr:.3g}")
                if writer is not None and global_step % self.log_every == 0:
                    writer.add_scalar("train/loss", loss_value, global_step)
                    writer.add_scalar("train/lr", lr, global_step)
                    for k, v in (logs or {}).items():
                        if isinstance(v, (int, float)):
                            writer.add_scalar(f"train/{k}", float(v), global_step)
            bar.close()
            if writer is not None:
                writer.add_scalar("train/epoch_loss", run_loss / max(1, run_n), epoch + 1)
            last = epoch + 1 == self.max_epochs
            if last or (epoch + 1) % self.val_every == 0:
                # the unwrapped model: DDP's forward would broadcast buffers, a collective that a
                # rank without val scans (the val shards are uneven) never joins
                val = self.validate(model, val_loader, device, task)
                score = float(val[monitor])
                if writer is not None:
                    names = class_names or []
                    for k, v in val.items():
                        if isinstance(v, (int, float)) and not isinstance(v, bool):
                            writer.add_scalar(f"val/{k}", float(v), epoch + 1)
                        elif k == "iou" and torch.is_tensor(v) and v.ndim == 1:
                            for i, x in enumerate(v.tolist()):
                                writer.add_scalar(f"val/iou/{names[i] if i < len(names) else i}", x, epoch + 1)
                if main:
                    extra = getattr(task, "miou_convention", None)
                    print(f"epoch {epoch + 1}/{self.max_epochs}: train loss {run_loss / max(1, run_n):.4f}, "
                          f"val {monitor}{f' ({extra})' if extra else ''} {100 * score:.2f}%, "
                          f"{time.perf_counter() - t_start:.0f} s", flush=True)
                self.history.append({"epoch": epoch + 1, "loss": run_loss / max(1, run_n), monitor: score,
                                     "seconds": time.perf_counter() - t_start})
                improved = score > best
                best = max(best, score)
                result.update(val)
            else:
                improved = False
            if main:
                state = {"model": model.state_dict(), "optimizer": opt.state_dict(),
                         "scheduler": sched.state_dict() if sched is not None else None,
                         "scaler": scaler.state_dict() if scaler is not None else None,
                         "epoch": epoch + 1, "global_step": global_step, "best_miou": best,
                         "rng": get_rng_state(), "cfg": cfg_yaml}
                save_checkpoint(ckpt_dir / "last.pt", state)
                if improved:
                    save_checkpoint(ckpt_dir / "best.pt", state)
            D.barrier()
            result.update(best_miou=best, epoch=epoch + 1, global_step=global_step)
        if writer is not None:
            writer.close()
        result["seconds"] = time.perf_counter() - t_start
        return result

    # ------------------------------------------------------------------ validation
    @torch.no_grad()
    def validate(self, net: nn.Module, loader: Any, device: torch.device, task: Any) -> Dict[str, Any]:
        """``task.validate`` on ``loader`` with the model in eval mode (restored to train mode after), a
        progress bar on rank 0 and this trainer's autocast."""
        from tqdm import tqdm
        net.eval()
        try:
            bar = tqdm(_DeviceLoader(loader, device), desc="val", total=len(loader) if hasattr(loader, "__len__") else None,
                       disable=not (self.progress and D.is_main_process()), dynamic_ncols=True, leave=False)
            with self._autocast(device):
                return task.validate(net, bar, device)
        finally:
            net.train()


class _DeviceLoader:
    """Iterates a loader and moves each batch to ``device``."""

    def __init__(self, loader: Any, device: torch.device) -> None:
        self.loader, self.device = loader, device
        self.dataset = getattr(loader, "dataset", None)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for batch in self.loader:
            yield _to_device(batch, self.device)
