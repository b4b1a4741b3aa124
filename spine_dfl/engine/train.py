"""Training: ``spine-dfl train MANIFEST``.

One seed drives the split, the sampler, the filter-bank init, the augmentation and the
weight init. Model selection uses the validation split only, never test. Every epoch
writes ``last.pt`` (for ``--resume``) and, on improvement, ``best.pt``; both atomically.
Under ``torchrun`` the run is DDP (NCCL on GPU, gloo on CPU); rank 0 validates and writes.

The run in phases: set-up in `spine_dfl.engine.prepare` (`prepare_data`: manifest -> records ->
datasets; `build_model`; `build_optimisation`; `resume_state` or `init_filters`), then per epoch
`_train_epoch` and `_end_epoch` (validate, select, checkpoint, decide whether to go on), then `_finish`.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from spine_dfl.config import RunConfig, config_to_dict
from spine_dfl.data.samplers import DistributedWeightedSampler
from spine_dfl.data.transforms.acquisition import RandomBatchAcquisition
from spine_dfl.engine.checkpoint import _bare_model, atomic_torch_save, checkpoint_payload, read_checkpoint
from spine_dfl.engine.device import resolve_device
from spine_dfl.engine.distributed import Distributed, init_distributed
from spine_dfl.engine.predict import collate_samples, predict_logits, predictions_table
from spine_dfl.engine.prepare import (
    Optimisation,
    Progress,
    TrainData,
    build_model,
    build_optimisation,
    init_filters,
    prepare_data,
    resume_state,
    seed_everything,
)
from spine_dfl.io.errors import SpineDflError
from spine_dfl.model import DFLNet, branch_loss, dfl_loss
from spine_dfl.predictions import prob_columns

log = logging.getLogger("spine_dfl.train")

BEST_NAME = "best.pt"
LAST_NAME = "last.pt"
# What rank 0 tells every rank after validating an epoch.
GO_ON, STOP, DIVERGED = 0, 1, 2


class TrainingDiverged(SpineDflError):
    """The validation loss stopped being a number: the weights diverged; later epochs are worthless."""


@dataclass
class TrainResult:
    out_dir: Path
    best_checkpoint: Path
    best_epoch: int
    best_score: float
    epochs_run: int
    val_predictions: Any = None  # pandas DataFrame of the best model on the validation split (calibrated)
    calibration: dict[str, Any] | None = None  # calibration.json's content (engine.posthoc), rank 0
    history: list[dict[str, float]] = field(default_factory=list)


def epoch_seed(seed: int, epoch: int) -> int:
    """Seed of one epoch's sampling and augmentation, so a resumed run draws what the original would."""
    return (seed * 1_000_003 + epoch * 7919) % 2**31


def selection_score(metric: str, table: Any, class_names: list[str], loss: float) -> float:
    """Validation figure used for model selection (higher is better; loss is negated).

    Accuracy, balanced accuracy, macro F1 and macro AUC are the report's (`report.metrics`), so the
    epoch chosen here is the best by the figure the report shows. Where the macro AUC is undefined
    (fewer than two classes in the validation rows) selection falls back to balanced accuracy.
    """
    from spine_dfl.io.patients import patient_keys
    from spine_dfl.metrics import group_metrics

    if metric == "loss":
        return -loss
    y_true = table["label"].map({c: i for i, c in enumerate(class_names)}).to_numpy()
    probs = table[prob_columns(class_names)].to_numpy(dtype=np.float64)
    patients = patient_keys(table).to_numpy(dtype=object)
    scores = group_metrics(y_true, probs.argmax(axis=1), probs, patients, class_names,
                           n_bootstrap=0, seed=0)
    if metric == "macro_auc" and scores["macro_auc"] is None:
        return float(scores["balanced_accuracy"])
    value = scores[metric]
    return math.nan if value is None else float(value)


def _write_metrics_row(path: Path, row: dict[str, Any]) -> None:
    new = not path.exists()
    with path.open("a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)
        handle.flush()
        os.fsync(handle.fileno())


def train(
    manifest_path: str | Path,
    config: RunConfig,
    out_dir: str | Path,
    resume: bool = False,
    progress: bool = True,
) -> TrainResult:
    """Train a DFLNet on the manifest's train split, selecting on its val split.

    Raises TrainingDiverged, naming the epoch, when the validation loss is not a number; the
    checkpoints then hold the last epoch that was.
    """
    if config.task == "locator":  # the vertebra locator has its own loop (same manifest, seed, DDP, checkpoints)
        from spine_dfl.locate.train import train_locator

        return train_locator(manifest_path, config, out_dir, resume=resume, progress=progress)
    dist = init_distributed(config.device)
    out_dir = Path(out_dir)
    device = resolve_device(config.device, dist.local_rank if dist.enabled else None)
    seed_everything(config.seed)
    data = prepare_data(manifest_path, config, out_dir, dist)
    torch.manual_seed(config.seed)  # the same weights on every rank and every run
    model = build_model(config, data.class_names, device)
    opt = build_optimisation(model, config, data, dist, device)
    last_path = out_dir / LAST_NAME
    state = Progress()
    if resume and last_path.exists():
        state = resume_state(last_path, model, opt, data.class_names, device, dist)
    elif config.model.init == "nms_kmeans":
        init_filters(model, data, config, out_dir, dist)
    net: torch.nn.Module = model
    if dist.enabled:
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if dist.is_main:
        (out_dir / "config.yaml").write_text(_yaml_dump(config_to_dict(config)))
        (out_dir / "classes.json").write_text(json.dumps(data.class_names))
    tb_writer = _tensorboard(out_dir, config) if dist.is_main else None
    started, epochs_run = time.monotonic(), state.start_epoch
    try:
        for epoch in range(state.start_epoch, config.train.epochs):
            row = _train_epoch(net, data, opt, config, epoch, dist, device, progress)
            decision, diverged = GO_ON, None
            if dist.is_main:
                try:
                    decision = _end_epoch(model, data, opt, config, out_dir, epoch, row, state, started,
                                          tb_writer, device)
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
    return _finish(model, data, config, out_dir, state, epochs_run, dist, device)


def _epoch_loader(data: TrainData, config: RunConfig, epoch: int, dist: Distributed, device: torch.device) -> DataLoader:
    """This rank's share of one epoch's class-balanced draw, seeded by (seed, epoch)."""
    if hasattr(data.train_set, "set_epoch"):
        data.train_set.set_epoch(epoch)
    sampler = DistributedWeightedSampler(data.sample_weights, num_samples=len(data.train_records), rank=dist.rank,
                                         world_size=dist.world_size, seed=config.seed)
    sampler.set_epoch(epoch)
    torch.manual_seed(epoch_seed(config.seed, epoch) + dist.rank)
    return DataLoader(data.train_set, batch_size=config.train.batch_size, sampler=sampler,
                      num_workers=config.data.workers, collate_fn=collate_samples,
                      pin_memory=device.type == "cuda", drop_last=False, persistent_workers=False)


def _train_epoch(
    net: torch.nn.Module, data: TrainData, opt: Optimisation, config: RunConfig, epoch: int, dist: Distributed,
    device: torch.device, progress: bool,
) -> dict[str, Any]:
    """One epoch of optimisation; returns its metrics.csv row (training part)."""
    tc = config.train
    loader = _epoch_loader(data, config, epoch, dist, device)
    use_amp = device.type == "cuda" and tc.amp
    channels_last = device.type == "cuda" and tc.channels_last
    net.train()
    # The batch part of the acquisition augmentation (window, unsharp mask, collimation; TorchIO's
    # parts ran per sample in the dataset), on whole batches on their device; training batches only
    # (validation never sees it). Its own generator, seeded per (seed, epoch, rank).
    acquisition = RandomBatchAcquisition(config.data.acquisition)
    generator = torch.Generator(device=device).manual_seed(epoch_seed(config.seed, epoch) + dist.rank)
    sums = {"loss": 0.0, "g": 0.0, "p": 0.0, "side": 0.0}
    seen, epoch_start = 0, time.monotonic()
    bar = tqdm(total=opt.steps_per_epoch, desc=f"epoch {epoch + 1}/{tc.epochs}",
               disable=not (progress and dist.is_main), leave=False, unit="batch")
    for step, batch in enumerate(loader):
        if step >= opt.steps_per_epoch:
            break
        images = batch["image"].to(device, non_blocking=True)
        labels = batch["label"].to(device, non_blocking=True)
        images = acquisition(images, generator)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device_type=device.type, enabled=use_amp):
            output = net(images, roi=batch["roi_input"].to(device, non_blocking=True))
            loss, parts = dfl_loss(output, labels, weights=config.model.loss_weights.as_tuple(),
                                   class_weights=opt.class_weight)
        opt.optimizer.zero_grad(set_to_none=True)
        opt.scaler.scale(loss).backward()
        if tc.grad_clip > 0:
            opt.scaler.unscale_(opt.optimizer)
            torch.nn.utils.clip_grad_norm_(net.parameters(), tc.grad_clip)
        opt.scaler.step(opt.optimizer)
        opt.scaler.update()
        opt.scheduler.step()
        n = images.shape[0]
        seen += n
        sums["loss"] += float(loss.detach()) * n
        for name in ("g", "p", "side"):
            sums[name] += float(parts[name].detach()) * n
        bar.set_postfix(loss=f"{sums['loss'] / seen:.3f}",
                        img_s=f"{seen / max(1e-9, time.monotonic() - epoch_start):.1f}")
        bar.update(1)
    bar.close()
    return {
        "epoch": epoch + 1,
        "train_loss": sums["loss"] / max(1, seen),
        **{f"train_loss_{k}": sums[k] / max(1, seen) for k in ("g", "p", "side")},
        "lr_backbone": opt.optimizer.param_groups[0]["lr"],
        "images_per_s": seen * dist.world_size / max(1e-9, time.monotonic() - epoch_start),
    }


def _end_epoch(
    model: DFLNet, data: TrainData, opt: Optimisation, config: RunConfig, out_dir: Path, epoch: int,
    row: dict[str, Any], state: Progress, started: float, tb_writer: Any, device: torch.device,
) -> int:
    """Rank 0: validate, select, write the checkpoints and metrics; GO_ON, STOP or DIVERGED.

    A validation loss that is not a number ranks below every other epoch and ends the run: nothing
    of this epoch is written, so ``last.pt`` and ``best.pt`` keep the last epoch whose loss was one.
    """
    metric = config.train.select_metric
    val_loss, val_table = _validate(model, data.val_set, data.val_records, data.class_names, config, device)
    if not math.isfinite(val_loss):
        raise TrainingDiverged(_divergence_message(epoch, val_loss, state, out_dir))
    score = selection_score(metric, val_table, data.class_names, val_loss)
    row["val_loss"] = val_loss
    if metric != "loss":  # selecting on the loss: its figure is val_loss itself
        row[f"val_{metric}"] = score
    row["seconds"] = time.monotonic() - started
    improved = score > state.best_score  # a NaN score is never an improvement
    if improved:
        state.best_score, state.best_epoch, state.stale = score, epoch, 0
    else:
        state.stale += 1
    state.history.append(row)
    payload = checkpoint_payload(model, config_to_dict(config), data.class_names, data.pre, {
        "epoch": epoch, "best_score": state.best_score, "best_epoch": state.best_epoch,
        "stale_epochs": state.stale, "select_metric": metric, "history": state.history,
    })
    if improved:
        atomic_torch_save(payload, out_dir / BEST_NAME)
    payload.update(optimizer_state=opt.optimizer.state_dict(), scheduler_state=opt.scheduler.state_dict(),
                   scaler_state=opt.scaler.state_dict())
    atomic_torch_save(payload, out_dir / LAST_NAME)
    _write_metrics_row(out_dir / "metrics.csv", row)
    if tb_writer is not None:
        for key, value in row.items():
            tb_writer.add_scalar(key, value, epoch + 1)
    log.info("epoch %d: %s", epoch + 1, ", ".join(f"{k}={v:.4g}" for k, v in row.items() if k != "epoch"))
    patience = config.train.early_stop_patience
    budget = config.train.time_budget_s
    out_of_time = budget is not None and time.monotonic() - started > budget
    if (patience and state.stale >= patience) or out_of_time:
        log.info("stopping after epoch %d (%s)", epoch + 1, "time budget" if out_of_time else "no improvement")
        return STOP
    return GO_ON


def _divergence_message(epoch: int, val_loss: float, state: Progress, out_dir: Path) -> str:
    kept = "no checkpoint was written"
    if state.history:
        kept = (f"{out_dir / LAST_NAME} keeps epoch {state.history[-1]['epoch']}, "
                f"{out_dir / BEST_NAME} the best, epoch {state.best_epoch + 1}")
    return (f"epoch {epoch + 1}: validation loss is {val_loss}, training diverged and stopped "
            f"(try a lower learning rate); {kept}")


def _finish(
    model: DFLNet, data: TrainData, config: RunConfig, out_dir: Path, state: Progress, epochs_run: int,
    dist: Distributed, device: torch.device,
) -> TrainResult:
    """Rank 0 reloads best.pt, fits calibration and the shift statistics with it (``engine.posthoc``: into
    best.pt and calibration.json) and predicts the validation split, calibrated; every rank waits for that."""
    from spine_dfl.engine.posthoc import fit_after_training

    best_path = out_dir / BEST_NAME
    result = TrainResult(out_dir, best_path, state.best_epoch + 1, state.best_score, epochs_run,
                         history=state.history)
    if dist.is_main:
        best = read_checkpoint(best_path, map_location=device)
        model.load_state_dict(best["model_state"])
        result.val_predictions, result.calibration = fit_after_training(model, data, config, out_dir, best_path,
                                                                        device)
    dist.barrier()
    return result


def _validate(
    model: DFLNet, val_set: Any, val_records: list[dict[str, Any]], class_names: list[str],
    config: RunConfig, device: torch.device,
) -> tuple[float, Any]:
    loader = DataLoader(val_set, batch_size=config.train.batch_size, shuffle=False,
                        num_workers=config.data.workers, collate_fn=collate_samples,
                        pin_memory=device.type == "cuda")
    logits = predict_logits(_bare_model(model), loader, device, amp=config.train.amp)
    loss, _ = branch_loss(*(torch.as_tensor(logits[b]) for b in ("g", "p", "side")),
                          torch.as_tensor(logits["label"]), weights=config.model.loss_weights.as_tuple())
    return float(loss), predictions_table(val_records, logits, class_names)


def _tensorboard(out_dir: Path, config: RunConfig) -> Any:
    if not config.train.tensorboard:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:  # tensorboard is an optional extra
        raise RuntimeError("train.tensorboard is on but tensorboard is not installed: pip install 'spine-dfl[tensorboard]'") from exc
    return SummaryWriter(log_dir=str(out_dir / "tensorboard"))


def _yaml_dump(tree: dict[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(tree, sort_keys=False)
