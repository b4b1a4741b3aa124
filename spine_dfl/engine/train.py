"""Training: ``spine-dfl train MANIFEST``.

One seed drives the split, the sampler, the filter-bank init, the augmentation and the
weight init. Model selection uses the validation split only, never test. Every epoch
writes ``last.pt`` (for ``--resume``) and, on improvement, ``best.pt``; both atomically.
Under ``torchrun`` the run is DDP (NCCL on GPU, gloo on CPU); rank 0 validates and writes.

The loop in phases: `_prepare_data` (manifest -> records -> datasets), `_build_model`,
`_build_optimisation`, `_resume` or `_init_filters`, then per epoch `_train_epoch` and
`_end_epoch` (validate, select, checkpoint, decide whether to go on), then `_finish`.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

from spine_dfl.config import RunConfig, config_to_dict
from spine_dfl.data.dataset import build_dataset, records_from_table
from spine_dfl.data.manifest import Manifest, load_manifest
from spine_dfl.data.samplers import DistributedWeightedSampler, class_balanced_weights
from spine_dfl.data.splits import patient_split
from spine_dfl.data.transforms import Preprocessing
from spine_dfl.engine.checkpoint import (
    CheckpointError,
    _bare_model,
    atomic_torch_save,
    checkpoint_payload,
    read_checkpoint,
)
from spine_dfl.engine.device import resolve_device
from spine_dfl.engine.distributed import Distributed, init_distributed
from spine_dfl.engine.predict import collate_samples, predict_logits, predictions_table
from spine_dfl.model import DFLNet, branch_loss, dfl_loss, init_filter_bank
from spine_dfl.predictions import prob_columns

log = logging.getLogger("spine_dfl.train")

BEST_NAME = "best.pt"
LAST_NAME = "last.pt"
# What rank 0 tells every rank after validating an epoch.
GO_ON, STOP, DIVERGED = 0, 1, 2


class TrainingDiverged(ValueError):
    """The validation loss stopped being a number: the weights diverged; later epochs are worthless."""


@dataclass
class TrainResult:
    out_dir: Path
    best_checkpoint: Path
    best_epoch: int
    best_score: float
    epochs_run: int
    val_predictions: Any = None  # pandas DataFrame of the best model on the validation split
    history: list[dict[str, float]] = field(default_factory=list)


@dataclass
class _Data:
    """The training and validation samples of one run."""

    class_names: list[str]
    pre: Preprocessing
    train_records: list[dict[str, Any]]
    val_records: list[dict[str, Any]]
    train_labels: np.ndarray  # (N,) class index of every training record
    sample_weights: np.ndarray  # (N,) drawing weight of every training record (config.data.balance)
    train_set: Any
    val_set: Any


@dataclass
class _Optimisation:
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    steps_per_epoch: int
    class_weight: torch.Tensor | None  # (M,) loss weight of each class, or None


@dataclass
class _Progress:
    """Where the run stands; stored in every checkpoint so that ``--resume`` carries on."""

    start_epoch: int = 0
    best_score: float = -math.inf
    best_epoch: int = -1  # 0-based; -1 before the first validation
    stale: int = 0
    history: list[dict[str, float]] = field(default_factory=list)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int) -> int:
    """Seed of one epoch's sampling and augmentation, so a resumed run draws what the original would."""
    return (seed * 1_000_003 + epoch * 7919) % 2**31


def preprocessing_for(config: RunConfig, manifest: Manifest) -> Preprocessing:
    use_roi = {"auto": manifest.has_roi, "yes": True, "no": False}[config.data.use_roi]
    if use_roi and not manifest.has_roi:
        raise ValueError(f"{manifest.path}: config asks for ROI crops (data.use_roi=yes) but the manifest has no ROI columns")
    return Preprocessing(
        input_size=config.data.input_size,
        roi_margin=config.data.roi_margin,
        use_roi=use_roi,
        intensity_percentiles=tuple(config.data.intensity_percentiles),
    )


def warmup_cosine(step: int, warmup_steps: int, total_steps: int) -> float:
    """LR multiplier: linear warm-up from ~0 to 1, then cosine decay to 0 at ``total_steps``."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def selection_score(metric: str, table: Any, class_names: list[str], loss: float) -> float:
    """Validation figure used for model selection (higher is better; loss is negated).

    Accuracy, balanced accuracy, macro F1 and macro AUC are the report's (`report.metrics`), so the
    epoch chosen here is the best by the figure the report shows. Where the macro AUC is undefined
    (fewer than two classes in the validation rows) selection falls back to balanced accuracy.
    """
    from spine_dfl.report.metrics import group_metrics

    if metric == "loss":
        return -loss
    y_true = table["label"].map({c: i for i, c in enumerate(class_names)}).to_numpy()
    probs = table[prob_columns(class_names)].to_numpy(dtype=np.float64)
    patients = table["patient_id"].to_numpy() if "patient_id" in table else table["image"].to_numpy()
    scores = group_metrics(y_true, probs.argmax(axis=1), probs, patients.astype(object), class_names,
                           n_bootstrap=0, seed=0)
    if metric == "macro_auc" and scores["macro_auc"] is None:
        return float(scores["balanced_accuracy"])
    value = scores[metric]
    return math.nan if value is None else float(value)


def _filter_init_loader(
    dataset: Any, labels: np.ndarray, per_class: int, batch_size: int, seed: int, workers: int
) -> DataLoader:
    """Deterministic loader over at most ``per_class`` training images of each class (eval transforms)."""
    rng = np.random.default_rng(seed)
    chosen: list[int] = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        chosen.extend(sorted(rng.permutation(members)[:per_class].tolist()))
    return DataLoader(Subset(dataset, sorted(chosen)), batch_size=batch_size, shuffle=False,
                      num_workers=workers, collate_fn=collate_samples)


def _write_metrics_row(path: Path, row: dict[str, Any]) -> None:
    new = not path.exists()
    with path.open("a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)
        handle.flush()
        os.fsync(handle.fileno())


def prepare_manifest(manifest_path: str | Path, config: RunConfig) -> Manifest:
    """Load and validate the manifest (fails before training with row + reason); split when needed."""
    manifest = load_manifest(manifest_path)
    if not manifest.has_split:
        manifest.table["split"] = patient_split(
            manifest.table, seed=config.seed, fractions=tuple(config.data.split_fractions)
        ).to_numpy()
        manifest.has_split = True
    for needed in ("train", "val"):
        if not (manifest.table["split"] == needed).any():
            raise ValueError(f"{manifest.path}: no rows in split {needed!r}; training needs train and val rows")
    return manifest


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
    dist = init_distributed(config.device)
    out_dir = Path(out_dir)
    device = resolve_device(config.device, dist.local_rank if dist.enabled else None)
    seed_everything(config.seed)
    data = _prepare_data(manifest_path, config, out_dir, dist)
    torch.manual_seed(config.seed)  # the same weights on every rank and every run
    model = _build_model(config, data.class_names, device)
    opt = _build_optimisation(model, config, data, dist, device)
    last_path = out_dir / LAST_NAME
    state = _Progress()
    if resume and last_path.exists():
        state = _resume(last_path, model, opt, data.class_names, device, dist)
    elif config.model.init == "nms_kmeans":
        _init_filters(model, data, config, out_dir, dist)
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


def _prepare_data(manifest_path: str | Path, config: RunConfig, out_dir: Path, dist: Distributed) -> _Data:
    """Manifest -> train/val records -> datasets (cached as ``config.data.cache`` says)."""
    manifest = prepare_manifest(manifest_path, config)
    class_names = manifest.class_names
    pre = preprocessing_for(config, manifest)
    table = manifest.table
    train_records = records_from_table(table[table["split"] == "train"], class_names)
    val_records = records_from_table(table[table["split"] == "val"], class_names)
    train_labels = np.array([r["label"] for r in train_records])
    missing = [c for i, c in enumerate(class_names) if not (train_labels == i).any()]
    if missing:
        raise ValueError(f"{manifest.path}: classes without training rows: {', '.join(missing)}")
    if dist.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
    cache_dir = config.data.cache_dir or str(out_dir / "cache")
    train_set = build_dataset(train_records, pre, aug=config.data.augment, cache=config.data.cache,
                              cache_dir=cache_dir, seed=config.seed)
    val_set = build_dataset(val_records, pre, aug=None, cache=config.data.cache, cache_dir=cache_dir)
    weights = class_balanced_weights(train_labels, [r["vertebra"] for r in train_records], mode=config.data.balance)
    return _Data(class_names, pre, train_records, val_records, train_labels, weights, train_set, val_set)


def _build_model(config: RunConfig, class_names: list[str], device: torch.device) -> DFLNet:
    model = DFLNet(
        backbone=config.model.backbone,
        num_classes=len(class_names),
        filters_per_class=config.model.filters_per_class,
        fuse_weights=config.model.fuse_weights.as_tuple(),
        pretrained=config.model.pretrained,
    ).to(device)
    if device.type == "cuda" and config.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def _build_optimisation(
    model: DFLNet, config: RunConfig, data: _Data, dist: Distributed, device: torch.device
) -> _Optimisation:
    """AdamW with warm-up + cosine schedule over the run's steps, AMP scaler, class weights of the loss."""
    tc = config.train
    optimizer = torch.optim.AdamW(model.param_groups(tc.lr_backbone, tc.lr_heads, tc.weight_decay))
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda" and tc.amp)
    steps_per_epoch = max(1, math.ceil(len(data.train_records) / dist.world_size / tc.batch_size))
    if tc.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, tc.max_steps_per_epoch)
    total_steps = steps_per_epoch * tc.epochs
    warmup_steps = int(round(tc.warmup_epochs * steps_per_epoch))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine(step, warmup_steps, total_steps)
    )
    class_weight = None
    if tc.class_weighted_loss:
        counts = np.bincount(data.train_labels, minlength=len(data.class_names)).astype(np.float64)
        class_weight = torch.tensor(counts.sum() / (len(counts) * counts), dtype=torch.float32, device=device)
    return _Optimisation(optimizer, scheduler, scaler, steps_per_epoch, class_weight)


def _resume(
    last_path: Path, model: DFLNet, opt: _Optimisation, class_names: list[str], device: torch.device,
    dist: Distributed,
) -> _Progress:
    state = read_checkpoint(last_path, map_location=device)
    if state.get("class_names") != class_names:
        raise CheckpointError(f"{last_path}: classes {state.get('class_names')} differ from the manifest's {class_names}")
    model.load_state_dict(state["model_state"])
    opt.optimizer.load_state_dict(state["optimizer_state"])
    opt.scheduler.load_state_dict(state["scheduler_state"])
    opt.scaler.load_state_dict(state["scaler_state"])
    progress = _Progress(
        start_epoch=int(state["epoch"]) + 1, best_score=float(state["best_score"]),
        best_epoch=int(state["best_epoch"]), stale=int(state["stale_epochs"]),
        history=list(state.get("history", [])),
    )
    if dist.is_main:
        log.info("resuming from %s at epoch %d", last_path, progress.start_epoch + 1)
    return progress


def _init_filters(model: DFLNet, data: _Data, config: RunConfig, out_dir: Path, dist: Distributed) -> None:
    """Filter bank from conv4 peaks of training images (their cached crops, not the files again).

    Every rank computes the same init from the same images, so no broadcast is needed.
    """
    init_set = data.train_set.without_augmentation()
    init_loader = _filter_init_loader(init_set, data.train_labels, config.model.init_max_images_per_class,
                                      config.train.batch_size, config.seed, config.data.workers)
    report = init_filter_bank(
        model,
        ((b["image"], b["label"]) for b in init_loader),
        peaks_per_image=config.model.init_peaks_per_image,
        nms_iou=config.model.init_nms_iou,
        max_features_per_class=config.model.init_max_features_per_class,
        seed=config.seed,
    )
    if dist.is_main:
        log.info("filter bank initialised from conv4 peaks: %s", report)
        (out_dir / "filter_init.json").write_text(json.dumps(_jsonable(report), indent=2))


def _epoch_loader(data: _Data, config: RunConfig, epoch: int, dist: Distributed, device: torch.device) -> DataLoader:
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
    net: torch.nn.Module, data: _Data, opt: _Optimisation, config: RunConfig, epoch: int, dist: Distributed,
    device: torch.device, progress: bool,
) -> dict[str, Any]:
    """One epoch of optimisation; returns its metrics.csv row (training part)."""
    tc = config.train
    loader = _epoch_loader(data, config, epoch, dist, device)
    use_amp = device.type == "cuda" and tc.amp
    channels_last = device.type == "cuda" and tc.channels_last
    net.train()
    sums = {"loss": 0.0, "g": 0.0, "p": 0.0, "side": 0.0}
    seen, epoch_start = 0, time.monotonic()
    bar = tqdm(total=opt.steps_per_epoch, desc=f"epoch {epoch + 1}/{tc.epochs}",
               disable=not (progress and dist.is_main), leave=False, unit="batch")
    for step, batch in enumerate(loader):
        if step >= opt.steps_per_epoch:
            break
        images = batch["image"].to(device, non_blocking=True)
        labels = batch["label"].to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device_type=device.type, enabled=use_amp):
            loss, parts = dfl_loss(net(images), labels, weights=config.model.loss_weights.as_tuple(),
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
    model: DFLNet, data: _Data, opt: _Optimisation, config: RunConfig, out_dir: Path, epoch: int,
    row: dict[str, Any], state: _Progress, started: float, tb_writer: Any, device: torch.device,
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
    row.update(val_loss=val_loss, **{f"val_{metric}": score}, seconds=time.monotonic() - started)
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


def _divergence_message(epoch: int, val_loss: float, state: _Progress, out_dir: Path) -> str:
    kept = "no checkpoint was written"
    if state.history:
        kept = (f"{out_dir / LAST_NAME} keeps epoch {state.history[-1]['epoch']}, "
                f"{out_dir / BEST_NAME} the best, epoch {state.best_epoch + 1}")
    return (f"epoch {epoch + 1}: validation loss is {val_loss}, training diverged and stopped "
            f"(try a lower learning rate); {kept}")


def _finish(
    model: DFLNet, data: _Data, config: RunConfig, out_dir: Path, state: _Progress, epochs_run: int,
    dist: Distributed, device: torch.device,
) -> TrainResult:
    """Rank 0 reloads best.pt and predicts the validation split with it; every rank waits for that."""
    best_path = out_dir / BEST_NAME
    result = TrainResult(out_dir, best_path, state.best_epoch + 1, state.best_score, epochs_run,
                         history=state.history)
    if dist.is_main:
        best = read_checkpoint(best_path, map_location=device)
        model.load_state_dict(best["model_state"])
        _, result.val_predictions = _validate(model, data.val_set, data.val_records, data.class_names,
                                              config, device)
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


def _jsonable(obj: Any) -> Any:
    from dataclasses import asdict, is_dataclass

    if is_dataclass(obj):
        obj = asdict(obj)
    return json.loads(json.dumps(obj, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))
