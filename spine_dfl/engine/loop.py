"""The training engine: one loop that every model of the toolkit trains through.

A task (the grader, ``spine_dfl.engine.train``; the locator, ``spine_dfl.locate.train``) brings
its data, model, batches, loss, validation and checkpoint payload. The engine owns the rest, once:
the run folder (``config.yaml``, ``metrics.csv``), ``best.pt`` and ``last.pt`` (atomic), patience,
the wall-clock budget, divergence, ``--resume``, AdamW with one warm-up + cosine schedule, AMP with
a GradScaler, channels-last, DDP under ``torchrun`` (rank 0 validates and writes; the stop
decision is broadcast), and fine-tuning: a run given a parent checkpoint (``engine.finetune``) starts
from its weights, skips what a fresh run initialises, and records the parent in every checkpoint. Every epoch's draw is seeded by (seed, epoch), so a resumed run draws what
the uninterrupted one would have.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import random
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from spine_dfl.atomic import atomic_write_text
from spine_dfl.config import RunConfig, config_to_dict
from spine_dfl.engine.checkpoint import atomic_torch_save, read_checkpoint
from spine_dfl.engine.device import resolve_device
from spine_dfl.engine.distributed import Distributed, init_distributed
from spine_dfl.engine.finetune import Parent
from spine_dfl.io.errors import CheckpointError, ConfigError, InputError, SpineDflError

log = logging.getLogger("spine_dfl.train")

BEST_NAME = "best.pt"
LAST_NAME = "last.pt"
METRICS_NAME = "metrics.csv"
# What rank 0 tells every rank after validating an epoch.
GO_ON, STOP, DIVERGED = 0, 1, 2


class TrainingDiverged(SpineDflError):
    """The validation loss stopped being a number: the weights diverged; later epochs are worthless."""


@dataclass
class RunContext:
    """What a task is built from: the run's manifest, config, folder, process group and device."""

    manifest_path: Path
    config: RunConfig
    out_dir: Path
    dist: Distributed
    device: torch.device
    parent: Parent | None = None  # fine-tuning (``train --init``): the checkpoint the run starts from

    @property
    def amp(self) -> bool:
        return self.device.type == "cuda" and self.config.train.amp

    @property
    def channels_last(self) -> bool:
        return self.device.type == "cuda" and self.config.train.channels_last


@dataclass
class StepLoss:
    """One batch's loss (a scalar tensor to back-propagate), its named parts and its image count."""

    loss: torch.Tensor
    parts: dict[str, torch.Tensor]
    count: int


@dataclass
class Validation:
    """One epoch's validation: loss, the selection score (higher is better), metrics.csv columns and
    what the checkpoint keeps besides."""

    loss: float
    score: float = math.nan
    columns: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Progress:
    """Where the run stands; stored in every checkpoint so that ``--resume`` carries on."""

    start_epoch: int = 0
    best_score: float = -math.inf
    best_epoch: int = -1  # 0-based; -1 before the first validation
    stale: int = 0
    history: list[dict[str, float]] = field(default_factory=list)

    def as_checkpoint(self, epoch: int, select_metric: str) -> dict[str, Any]:
        return {"epoch": epoch, "best_score": self.best_score, "best_epoch": self.best_epoch,
                "stale_epochs": self.stale, "select_metric": select_metric, "history": self.history}


@dataclass
class TrainResult:
    out_dir: Path
    best_checkpoint: Path
    best_epoch: int
    best_score: float
    epochs_run: int
    val_predictions: Any = None  # the grader's: a DataFrame of the best model on the validation split
    calibration: dict[str, Any] | None = None  # the grader's calibration.json content, rank 0
    history: list[dict[str, float]] = field(default_factory=list)


class TrainingTask(ABC):
    """One kind of model, as the engine trains it. Built from a `RunContext` after the seed is set."""

    model: torch.nn.Module  # the bare model, on the run's device
    train_count: int  # training samples per epoch, all ranks together

    @abstractmethod
    def parameter_groups(self) -> list[dict[str, Any]]:
        """AdamW parameter groups (``lr`` and ``weight_decay`` set in each)."""

    @abstractmethod
    def batches(self, epoch: int) -> Iterable[Any]:
        """This rank's training batches of ``epoch``, augmented, seeded by (seed, epoch, rank)."""

    @abstractmethod
    def step_loss(self, net: torch.nn.Module, batch: Any) -> StepLoss:
        """Forward one batch through ``net`` (the DDP wrapper, when there is one), under autocast."""

    @abstractmethod
    def validate(self) -> Validation:
        """Rank 0: the bare model on the validation split; score NaN where the loss is not finite."""

    @abstractmethod
    def payload(self, progress: dict[str, Any], validation: Validation) -> dict[str, Any]:
        """The checkpoint's content (weights_only-safe), without the optimiser's state."""

    def check_resume(self, checkpoint: dict[str, Any], path: Path) -> None:
        """Raise CheckpointError where ``last.pt`` belongs to another run (other classes, levels)."""

    def start_fresh(self) -> None:
        """A run that does not resume: initialise what training starts from (e.g. the filter bank)."""

    def start_from(self, parent: Parent) -> None:
        """A fine-tuning run: the parent's weights (its filter bank included, nothing re-initialised).
        The task has already matched its classes or levels to the parent's when it was built."""
        try:
            self.model.load_state_dict(parent.raw["model_state"])
        except (RuntimeError, KeyError) as exc:
            raise CheckpointError(f"{parent.path}: its weights do not fit the model this run builds: "
                                  f"{str(exc).splitlines()[0]}") from None

    def run_files(self) -> dict[str, str]:
        """Files the task writes into the run folder beside config.yaml (name -> text)."""
        return {}

    def finish(self, result: TrainResult) -> None:
        """Rank 0, after the last epoch: post-hoc fitting into best.pt, results into ``result``."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int) -> int:
    """Seed of one epoch's sampling and augmentation, so a resumed run draws what the original would."""
    return (seed * 1_000_003 + epoch * 7919) % 2**31


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, floor: float = 0.0) -> float:
    """LR multiplier: linear warm-up from ~0 to 1, then cosine decay to ``floor`` at ``total_steps``."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def steps_per_epoch(config: RunConfig, train_count: int, world_size: int) -> int:
    steps = max(1, math.ceil(train_count / world_size / config.train.batch_size))
    cap = config.train.max_steps_per_epoch
    return min(steps, cap) if cap else steps


@dataclass
class Optimisation:
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    steps_per_epoch: int


def build_optimisation(task: TrainingTask, context: RunContext) -> Optimisation:
    """AdamW over the task's groups, warm-up + cosine per batch over the run, a GradScaler for AMP."""
    tc = context.config.train
    optimizer = torch.optim.AdamW(task.parameter_groups())
    steps = steps_per_epoch(context.config, task.train_count, context.dist.world_size)
    total, warmup = steps * tc.epochs, int(round(tc.warmup_epochs * steps))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine(step, warmup, total, tc.final_lr_fraction))
    scaler = torch.amp.GradScaler("cuda", enabled=context.amp)
    return Optimisation(optimizer, scheduler, scaler, steps)


def fit(
    build_task: Callable[[RunContext], TrainingTask],
    manifest_path: str | Path,
    config: RunConfig,
    out_dir: str | Path,
    resume: bool = False,
    progress: bool = True,
    init: Parent | None = None,
) -> TrainResult:
    """Train the task ``build_task`` makes on the manifest's train split, selecting on its val split;
    with ``init``, fine-tune from that checkpoint (``engine.finetune``).

    Raises TrainingDiverged, naming the epoch, when the validation loss is not a number; the
    checkpoints then hold the last epoch that was.
    """
    if init is not None and resume:
        raise InputError("--resume and --init exclude each other: --resume continues OUT/last.pt (which "
                         "remembers its parent), --init starts a new run from a checkpoint")
    if init is not None and init.kind != config.task:
        raise ConfigError(f"{init.path} is a {init.kind} checkpoint but the config trains the {config.task}")
    dist = init_distributed(config.device)
    device = resolve_device(config.device, dist.local_rank if dist.enabled else None)
    context = RunContext(Path(manifest_path), config, Path(out_dir), dist, device, parent=init)
    seed_everything(config.seed)
    task = build_task(context)
    if context.channels_last:
        task.model.to(memory_format=torch.channels_last)
    opt = build_optimisation(task, context)
    state = Progress()
    last_path = context.out_dir / LAST_NAME
    if resume and last_path.exists():
        state = _resume(task, opt, last_path, context)
    elif init is not None:
        task.start_from(init)
    else:
        task.start_fresh()
    net: torch.nn.Module = task.model
    if dist.enabled:
        net = DistributedDataParallel(task.model, device_ids=[device.index] if device.type == "cuda" else None)
    if dist.is_main:
        _write_run_files(task, context, state)
    tb_writer = _tensorboard(context) if dist.is_main else None
    started, epochs_run = time.monotonic(), state.start_epoch
    try:
        for epoch in range(state.start_epoch, config.train.epochs):
            row = train_epoch(task, net, opt, context, epoch, progress)
            decision, diverged = GO_ON, None
            if dist.is_main:
                try:
                    decision = _end_epoch(task, opt, context, epoch, row, state, started, tb_writer)
                except TrainingDiverged as exc:  # tell the other ranks before leaving
                    decision, diverged = DIVERGED, exc
            if dist.broadcast_code(decision) == DIVERGED:
                raise diverged or TrainingDiverged(f"epoch {epoch + 1}: validation loss not finite on rank 0")
            epochs_run = epoch + 1
            if decision == STOP:
                break
    finally:
        if tb_writer is not None:
            tb_writer.close()
    result = TrainResult(context.out_dir, context.out_dir / BEST_NAME, state.best_epoch + 1, state.best_score,
                         epochs_run, history=state.history)
    if dist.is_main:
        task.finish(result)
    dist.barrier()
    return result


def train_epoch(
    task: TrainingTask, net: torch.nn.Module, opt: Optimisation, context: RunContext, epoch: int,
    progress: bool = False,
) -> dict[str, Any]:
    """One epoch of optimisation; returns its metrics.csv row (training part)."""
    tc = context.config.train
    net.train()
    sums: dict[str, float] = {}
    seen, epoch_start = 0, time.monotonic()
    bar = tqdm(total=opt.steps_per_epoch, desc=f"epoch {epoch + 1}/{tc.epochs}",
               disable=not (progress and context.dist.is_main), leave=False, unit="batch")
    # zip takes the step first: past the last step no further batch is drawn or augmented
    for _, batch in zip(range(opt.steps_per_epoch), task.batches(epoch)):
        with torch.autocast(device_type=context.device.type, enabled=context.amp):
            step_loss = task.step_loss(net, batch)
        opt.optimizer.zero_grad(set_to_none=True)
        opt.scaler.scale(step_loss.loss).backward()
        if tc.grad_clip > 0:
            opt.scaler.unscale_(opt.optimizer)  # clip the true gradients, not the scaled ones
            torch.nn.utils.clip_grad_norm_(net.parameters(), tc.grad_clip)
        opt.scaler.step(opt.optimizer)
        opt.scaler.update()
        opt.scheduler.step()
        n = step_loss.count
        seen += n
        sums["loss"] = sums.get("loss", 0.0) + float(step_loss.loss.detach()) * n
        for name, value in step_loss.parts.items():
            sums[name] = sums.get(name, 0.0) + float(value.detach()) * n
        bar.set_postfix(loss=f"{sums['loss'] / seen:.3f}",
                        img_s=f"{seen / max(1e-9, time.monotonic() - epoch_start):.1f}")
        bar.update(1)
    bar.close()
    row: dict[str, Any] = {"epoch": epoch + 1, "train_loss": sums.get("loss", 0.0) / max(1, seen)}
    row.update({f"train_loss_{k}": v / max(1, seen) for k, v in sums.items() if k != "loss"})
    row.update(lr_backbone=opt.optimizer.param_groups[0]["lr"],
               images_per_s=seen * context.dist.world_size / max(1e-9, time.monotonic() - epoch_start))
    return row


def _end_epoch(
    task: TrainingTask, opt: Optimisation, context: RunContext, epoch: int, row: dict[str, Any],
    state: Progress, started: float, tb_writer: Any,
) -> int:
    """Rank 0: validate, select, write the checkpoints and metrics; GO_ON or STOP (raises on divergence).

    A validation loss that is not a number ranks below every other epoch and ends the run: nothing
    of this epoch is written, so ``last.pt`` and ``best.pt`` keep the last epoch whose loss was one.
    """
    tc, out_dir = context.config.train, context.out_dir
    validation = task.validate()
    if not math.isfinite(validation.loss):
        raise TrainingDiverged(_divergence_message(epoch, validation.loss, state, out_dir))
    row["val_loss"] = validation.loss
    row.update(validation.columns)
    row["seconds"] = time.monotonic() - started
    improved = validation.score > state.best_score  # a NaN score is never an improvement
    if improved:
        state.best_score, state.best_epoch, state.stale = validation.score, epoch, 0
    else:
        state.stale += 1
    state.history.append(row)
    payload = task.payload(state.as_checkpoint(epoch, tc.select_metric), validation)
    if context.parent is not None:
        payload["parent"] = context.parent.record()
    if improved:
        atomic_torch_save(payload, out_dir / BEST_NAME)
    payload.update(optimizer_state=opt.optimizer.state_dict(), scheduler_state=opt.scheduler.state_dict(),
                   scaler_state=opt.scaler.state_dict())
    atomic_torch_save(payload, out_dir / LAST_NAME)
    write_metrics(out_dir / METRICS_NAME, state.history)
    if tb_writer is not None:
        for key, value in row.items():
            if isinstance(value, (int, float)):
                tb_writer.add_scalar(key, value, epoch + 1)
    log.info("epoch %d: %s", epoch + 1, ", ".join(f"{k}={v:.4g}" for k, v in row.items()
                                                  if k != "epoch" and isinstance(v, float)))
    out_of_time = tc.time_budget_s is not None and time.monotonic() - started > tc.time_budget_s
    if (tc.early_stop_patience and state.stale >= tc.early_stop_patience) or out_of_time:
        log.info("stopping after epoch %d (%s)", epoch + 1, "time budget" if out_of_time else "no improvement")
        return STOP
    return GO_ON


def write_metrics(path: Path, history: list[dict[str, Any]]) -> None:
    """metrics.csv, one row per epoch of this run (rewritten whole, atomically, so it always agrees
    with last.pt: a fresh run starts a fresh file, a resumed one carries the checkpoint's rows)."""
    if not history:
        path.unlink(missing_ok=True)
        return
    columns: list[str] = []
    for row in history:
        columns += [key for key in row if key not in columns]
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    atomic_write_text(path, text.getvalue())


def _resume(task: TrainingTask, opt: Optimisation, path: Path, context: RunContext) -> Progress:
    dist = context.dist
    checkpoint = read_checkpoint(path, map_location=context.device)
    task.check_resume(checkpoint, path)
    if isinstance(checkpoint.get("parent"), dict):  # a resumed fine-tuning run keeps naming its parent
        record = checkpoint["parent"]
        context.parent = Parent(Path(record["path"]), record["sha256"], record["kind"], {})
    task.model.load_state_dict(checkpoint["model_state"])
    opt.optimizer.load_state_dict(checkpoint["optimizer_state"])
    opt.scheduler.load_state_dict(checkpoint["scheduler_state"])
    if "scaler_state" in checkpoint:  # locator checkpoints before the one engine had none
        opt.scaler.load_state_dict(checkpoint["scaler_state"])
    state = Progress(start_epoch=int(checkpoint["epoch"]) + 1, best_score=float(checkpoint["best_score"]),
                     best_epoch=int(checkpoint["best_epoch"]), stale=int(checkpoint["stale_epochs"]),
                     history=list(checkpoint.get("history", [])))
    if dist.is_main:
        log.info("resuming from %s at epoch %d", path, state.start_epoch + 1)
    return state


def _write_run_files(task: TrainingTask, context: RunContext, state: Progress) -> None:
    import yaml

    out_dir = context.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "config.yaml", yaml.safe_dump(config_to_dict(context.config), sort_keys=False))
    for name, text in task.run_files().items():
        atomic_write_text(out_dir / name, text)
    write_metrics(out_dir / METRICS_NAME, state.history)  # fresh: no old rows; resumed: last.pt's rows


def _divergence_message(epoch: int, val_loss: float, state: Progress, out_dir: Path) -> str:
    kept = "no checkpoint was written"
    if state.history:
        kept = (f"{out_dir / LAST_NAME} keeps epoch {state.history[-1]['epoch']}, "
                f"{out_dir / BEST_NAME} the best, epoch {state.best_epoch + 1}")
    return (f"epoch {epoch + 1}: validation loss is {val_loss}, training diverged and stopped "
            f"(try a lower learning rate); {kept}")


def _tensorboard(context: RunContext) -> Any:
    if not context.config.train.tensorboard:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:  # tensorboard is an optional extra
        raise RuntimeError("train.tensorboard is on but tensorboard is not installed: "
                           "pip install 'spine-dfl[tensorboard]'") from exc
    return SummaryWriter(log_dir=str(context.out_dir / "tensorboard"))
