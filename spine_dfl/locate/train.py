"""``spine-dfl train MANIFEST`` with ``task: locator``: train the vertebra locator.

The grader's machinery, reused: the manifest, its patient split (``engine.prepare``), the seed,
``engine.device``, ``engine.distributed`` (DDP; each rank takes its share of every epoch's
images; rank 0 validates and writes), atomic checkpoints, metrics.csv, ``--resume`` from
``last.pt``. Every epoch's image order and augmentation come from (seed, epoch), so a resumed
run draws what the uninterrupted one would have. Selection on the val split: identification
rate (ties go to the smaller median centre error), or the val loss.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from spine_dfl.config import RunConfig, config_to_dict
from spine_dfl.engine.checkpoint import atomic_torch_save, read_checkpoint
from spine_dfl.engine.device import resolve_device
from spine_dfl.engine.distributed import Distributed, init_distributed
from spine_dfl.engine.prepare import prepare_manifest, seed_everything
from spine_dfl.engine.train import (BEST_NAME, DIVERGED, GO_ON, LAST_NAME, STOP, TrainingDiverged, TrainResult,
                                    _write_metrics_row, _yaml_dump, epoch_seed)
from spine_dfl.io.errors import InputError
from spine_dfl.locate.augment import LocatorAcquisition, augment_sample
from spine_dfl.locate.checkpoint import check_kind, locator_payload
from spine_dfl.locate.evaluate import evaluate_locator
from spine_dfl.locate.network import VertebraLocator
from spine_dfl.locate.preprocess import output_size
from spine_dfl.locate.samples import LocatorSample, load_samples, manifest_levels
from spine_dfl.locate.targets import collate_targets, encode_targets, locator_loss

log = logging.getLogger("spine_dfl.train")

# Identification rates differ in steps of 1 / (val vertebrae); the centre error (pixels) only breaks ties.
_TIE_BREAK = 1e-6


@dataclass
class _Run:
    """What the epochs share: data, model, optimiser, progress."""

    config: RunConfig
    out_dir: Path
    device: torch.device
    dist: Distributed
    levels: list[str]
    train: list[LocatorSample]
    val: list[LocatorSample]
    model: VertebraLocator
    optimizer: torch.optim.Optimizer
    scheduler: Any
    steps_per_epoch: int
    start_epoch: int = 0
    best_score: float = -math.inf
    best_epoch: int = -1
    stale: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)


def _schedule(config: RunConfig, steps_per_epoch: int) -> Any:
    """Linear warm-up, then cosine decay to 1 % over the run, stepped per batch."""
    total = max(1, config.train.epochs * steps_per_epoch)
    warm = int(config.train.warmup_epochs * steps_per_epoch)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        progress = min(1.0, (step - warm) / max(1, total - warm))
        return 0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def _set_up(manifest_path: str | Path, config: RunConfig, out_dir: Path) -> _Run:
    dist = init_distributed(config.device)
    device = resolve_device(config.device, dist.local_rank if dist.enabled else None)
    seed_everything(config.seed)
    manifest = prepare_manifest(manifest_path, config)
    settings = config.locator
    levels = manifest_levels(manifest.table)
    train = load_samples(manifest.table, levels, settings.input_size, settings.intensity_percentiles, ["train"])
    val = load_samples(manifest.table, levels, settings.input_size, settings.intensity_percentiles, ["val"])
    torch.manual_seed(config.seed)  # the same initial weights on every rank and every run
    model = VertebraLocator(levels, settings.blocks, settings.neck_channels, settings.head_channels).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.train.lr_backbone,
                                  weight_decay=config.train.weight_decay)
    share = math.ceil(len(train) / dist.world_size)
    steps = max(1, math.ceil(share / config.train.batch_size))
    if config.train.max_steps_per_epoch:
        steps = min(steps, config.train.max_steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(config, steps))
    if dist.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
    return _Run(config, out_dir, device, dist, levels, train, val, model, optimizer, scheduler, steps)


def _resume(run: _Run, path: Path) -> None:
    raw = read_checkpoint(path, map_location=run.device)
    check_kind(raw, path, "locator")
    if list(raw["levels"]) != run.levels:
        raise InputError(f"{path}: levels {raw['levels']} differ from the manifest's {run.levels}; cannot resume")
    run.model.load_state_dict(raw["model_state"])
    run.optimizer.load_state_dict(raw["optimizer_state"])
    run.scheduler.load_state_dict(raw["scheduler_state"])
    run.start_epoch = int(raw["epoch"]) + 1
    run.best_score, run.best_epoch = float(raw["best_score"]), int(raw["best_epoch"])
    run.stale, run.history = int(raw["stale_epochs"]), list(raw["history"])
    log.info("resuming after epoch %d from %s", run.start_epoch, path)


def _batch(run: _Run, samples: list[LocatorSample], rng: np.random.Generator | None = None,
           acquisition: LocatorAcquisition | None = None) -> tuple[torch.Tensor, dict]:
    """Images and targets of ``samples``, augmented when ``rng`` is given (then also through
    ``acquisition``, the epoch's acquisition augmentation)."""
    images, targets = [], []
    out_hw = output_size(run.config.locator.input_size)
    for s in samples:
        boxes, points = s.input_truth()
        image = s.tensor
        if rng is not None:
            image, boxes, points = augment_sample(image, boxes, points, run.config.locator.augment, rng)
        images.append(image)
        targets.append(encode_targets(boxes, out_hw, points, s.levels))
    batch = torch.stack(images)
    if rng is not None and acquisition is not None:
        batch = acquisition(batch, rng)
    return batch, collate_targets(targets)


def _train_epoch(run: _Run, net: torch.nn.Module, epoch: int) -> dict[str, Any]:
    tc, dist = run.config.train, run.dist
    rng = np.random.default_rng(epoch_seed(run.config.seed, epoch))
    order = rng.permutation(len(run.train))[dist.rank::dist.world_size]
    rng = np.random.default_rng([epoch_seed(run.config.seed, epoch), dist.rank])  # this rank's augmentation
    acquisition = LocatorAcquisition(run.config.locator.acquisition)  # once an epoch, not once a batch
    use_amp = run.device.type == "cuda" and tc.amp
    net.train()
    sums: dict[str, float] = {}
    seen, started = 0, time.monotonic()
    for step in range(run.steps_per_epoch):
        chunk = order[step * tc.batch_size:(step + 1) * tc.batch_size]
        if len(chunk) == 0:
            break
        images, targets = _batch(run, [run.train[i] for i in chunk], rng, acquisition)
        images, targets = images.to(run.device), {k: v.to(run.device) for k, v in targets.items()}
        with torch.autocast(device_type=run.device.type, enabled=use_amp):
            outputs = net(images)
        parts = locator_loss({k: v.float() for k, v in outputs.items()}, targets, run.config.locator.loss_weights)
        run.optimizer.zero_grad(set_to_none=True)
        parts["loss"].backward()
        if tc.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(net.parameters(), tc.grad_clip)
        run.optimizer.step()
        run.scheduler.step()
        for name, value in parts.items():
            sums[name] = sums.get(name, 0.0) + float(value.detach()) * len(chunk)
        seen += len(chunk)
    row = {"epoch": epoch + 1, "train_loss": sums["loss"] / max(1, seen)}
    row.update({f"train_loss_{k}": v / max(1, seen) for k, v in sums.items() if k != "loss"})
    row.update(lr=run.optimizer.param_groups[0]["lr"],
               images_per_s=seen * dist.world_size / max(1e-9, time.monotonic() - started))
    return row


@torch.no_grad()
def _validate(run: _Run) -> tuple[float, dict[str, Any]]:
    """Val loss (no augmentation) and the val split's locator figures."""
    run.model.eval()
    total, n = 0.0, 0
    for start in range(0, len(run.val), run.config.train.batch_size):
        chunk = run.val[start:start + run.config.train.batch_size]
        images, targets = _batch(run, chunk)
        outputs = run.model(images.to(run.device))
        parts = locator_loss(outputs, {k: v.to(run.device) for k, v in targets.items()},
                             run.config.locator.loss_weights)
        total, n = total + float(parts["loss"]) * len(chunk), n + len(chunk)
    return total / max(1, n), evaluate_locator(run.model, run.val, run.config.locator.threshold, refine=False)


def _end_epoch(run: _Run, epoch: int, row: dict[str, Any], started: float) -> int:
    """Rank 0: validate, select, write checkpoints and metrics.csv; GO_ON or STOP (raises on divergence)."""
    config = run.config
    val_loss, figures = _validate(run)
    if not math.isfinite(val_loss):
        raise TrainingDiverged(f"epoch {epoch + 1}: validation loss is {val_loss}, training diverged and stopped "
                               f"(try a lower learning rate); {run.out_dir / LAST_NAME} keeps the last epoch before")
    row.update(val_loss=val_loss, val_detection_recall=figures["detection_recall_iou50"],
               val_identification_rate=figures["identification_rate"],
               val_median_centre_error_px=figures["median_centre_error_px"],
               seconds=time.monotonic() - started)
    if config.train.select_metric == "loss":
        score = -val_loss
    else:
        score = (figures["identification_rate"] or 0.0) - _TIE_BREAK * (figures["median_centre_error_px"] or 0.0)
    improved = score > run.best_score
    if improved:
        run.best_score, run.best_epoch, run.stale = score, epoch, 0
    else:
        run.stale += 1
    run.history.append(row)
    payload = locator_payload(run.model, config_to_dict(config), {
        "epoch": epoch, "best_score": run.best_score, "best_epoch": run.best_epoch, "stale_epochs": run.stale,
        "select_metric": config.train.select_metric, "history": run.history, "val_figures": figures,
    })
    if improved:
        atomic_torch_save(payload, run.out_dir / BEST_NAME)
    payload.update(optimizer_state=run.optimizer.state_dict(), scheduler_state=run.scheduler.state_dict())
    atomic_torch_save(payload, run.out_dir / LAST_NAME)
    _write_metrics_row(run.out_dir / "metrics.csv", row)
    log.info("epoch %d: %s", epoch + 1, ", ".join(f"{k}={v:.4g}" for k, v in row.items()
                                                  if k != "epoch" and isinstance(v, float)))
    patience, budget = config.train.early_stop_patience, config.train.time_budget_s
    out_of_time = budget is not None and time.monotonic() - started > budget
    return STOP if (patience and run.stale >= patience) or out_of_time else GO_ON


def train_locator(manifest_path: str | Path, config: RunConfig, out_dir: str | Path, resume: bool = False,
                  progress: bool = True) -> TrainResult:
    """Train the locator on the manifest's train split, selecting on val; best.pt and last.pt in ``out_dir``."""
    out_dir = Path(out_dir)
    run = _set_up(manifest_path, config, out_dir)
    if resume and (out_dir / LAST_NAME).exists():
        _resume(run, out_dir / LAST_NAME)
    net: torch.nn.Module = run.model
    if run.dist.enabled:
        net = DistributedDataParallel(run.model, device_ids=[run.device.index] if run.device.type == "cuda" else None)
    if run.dist.is_main:
        (out_dir / "config.yaml").write_text(_yaml_dump(config_to_dict(config)))
        (out_dir / "levels.json").write_text(json.dumps(run.levels))
    started, epochs_run = time.monotonic(), run.start_epoch
    for epoch in range(run.start_epoch, config.train.epochs):
        row = _train_epoch(run, net, epoch)
        decision, diverged = GO_ON, None
        if run.dist.is_main:
            try:
                decision = _end_epoch(run, epoch, row, started)
            except TrainingDiverged as exc:  # tell the other ranks before leaving
                decision, diverged = DIVERGED, exc
        if run.dist.broadcast_code(decision) == DIVERGED:
            raise diverged or TrainingDiverged(f"epoch {epoch + 1}: validation loss not finite on rank 0")
        epochs_run = epoch + 1
        if decision == STOP:
            break
    run.dist.barrier()
    return TrainResult(out_dir, out_dir / BEST_NAME, run.best_epoch + 1, run.best_score, epochs_run,
                       history=run.history)
