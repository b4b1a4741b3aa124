"""What a training run sets up before its first epoch: samples, model, optimisation, and either the
state of an interrupted run (``--resume``) or the filter-bank init. Used by `spine_dfl.engine.train`.
"""

from __future__ import annotations

import json
import logging
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from spine_dfl.config import RunConfig
from spine_dfl.data.dataset import build_dataset, records_from_table
from spine_dfl.data.manifest import Manifest, load_manifest
from spine_dfl.data.samplers import class_balanced_weights
from spine_dfl.data.splits import patient_split
from spine_dfl.data.transforms import Preprocessing
from spine_dfl.engine.checkpoint import CheckpointError, read_checkpoint
from spine_dfl.engine.distributed import Distributed
from spine_dfl.engine.predict import collate_samples
from spine_dfl.io.errors import InputError
from spine_dfl.model import DFLNet, init_filter_bank

log = logging.getLogger("spine_dfl.train")


@dataclass
class TrainData:
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
class Optimisation:
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    steps_per_epoch: int
    class_weight: torch.Tensor | None  # (M,) loss weight of each class, or None


@dataclass
class Progress:
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


def preprocessing_for(config: RunConfig, manifest: Manifest) -> Preprocessing:
    use_roi = {"auto": manifest.has_roi, "yes": True, "no": False}[config.data.use_roi]
    if use_roi and not manifest.has_roi:
        raise InputError(f"{manifest.path}: config asks for ROI crops (data.use_roi=yes) but the manifest has no ROI columns")
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
            raise InputError(f"{manifest.path}: no rows in split {needed!r}; training needs train and val rows")
    return manifest


def prepare_data(manifest_path: str | Path, config: RunConfig, out_dir: Path, dist: Distributed) -> TrainData:
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
        raise InputError(f"{manifest.path}: classes without training rows: {', '.join(missing)}")
    if dist.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
    cache_dir = config.data.cache_dir or str(out_dir / "cache")
    train_set = build_dataset(train_records, pre, aug=config.data.augment, cache=config.data.cache,
                              cache_dir=cache_dir, seed=config.seed, acquisition=config.data.acquisition)
    val_set = build_dataset(val_records, pre, aug=None, cache=config.data.cache, cache_dir=cache_dir)
    weights = class_balanced_weights(train_labels, [r["vertebra"] for r in train_records], mode=config.data.balance)
    return TrainData(class_names, pre, train_records, val_records, train_labels, weights, train_set, val_set)


def build_model(config: RunConfig, class_names: list[str], device: torch.device) -> DFLNet:
    model = DFLNet(
        backbone=config.model.backbone,
        num_classes=len(class_names),
        filters_per_class=config.model.filters_per_class,
        fuse_weights=config.model.fuse_weights.as_tuple(),
        pretrained=config.model.pretrained,
        pstream_layer=config.model.pstream_layer,
        streams=config.model.streams,
        pstream_region=config.model.pstream_region,
    ).to(device)
    if device.type == "cuda" and config.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def build_optimisation(
    model: DFLNet, config: RunConfig, data: TrainData, dist: Distributed, device: torch.device
) -> Optimisation:
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
    return Optimisation(optimizer, scheduler, scaler, steps_per_epoch, class_weight)


def resume_state(
    last_path: Path, model: DFLNet, opt: Optimisation, class_names: list[str], device: torch.device,
    dist: Distributed,
) -> Progress:
    state = read_checkpoint(last_path, map_location=device)
    if state.get("class_names") != class_names:
        raise CheckpointError(f"{last_path}: classes {state.get('class_names')} differ from the manifest's {class_names}")
    model.load_state_dict(state["model_state"])
    opt.optimizer.load_state_dict(state["optimizer_state"])
    opt.scheduler.load_state_dict(state["scheduler_state"])
    opt.scaler.load_state_dict(state["scaler_state"])
    progress = Progress(
        start_epoch=int(state["epoch"]) + 1, best_score=float(state["best_score"]),
        best_epoch=int(state["best_epoch"]), stale=int(state["stale_epochs"]),
        history=list(state.get("history", [])),
    )
    if dist.is_main:
        log.info("resuming from %s at epoch %d", last_path, progress.start_epoch + 1)
    return progress


def init_filters(model: DFLNet, data: TrainData, config: RunConfig, out_dir: Path, dist: Distributed) -> None:
    """Filter bank from conv4 peaks of training images (their cached crops, not the files again).

    Every rank computes the same init from the same images, so no broadcast is needed. A G-stream-only
    model has no filter bank: nothing to do.
    """
    if model.p_filters is None:
        return
    init_set = data.train_set.without_augmentation()
    init_loader = _filter_init_loader(init_set, data.train_labels, config.model.init_max_images_per_class,
                                      config.train.batch_size, config.seed, config.data.workers)
    report = init_filter_bank(
        model,
        ((b["image"], b["label"], b["roi_input"]) for b in init_loader),
        peaks_per_image=config.model.init_peaks_per_image,
        nms_iou=config.model.init_nms_iou,
        max_features_per_class=config.model.init_max_features_per_class,
        seed=config.seed,
    )
    if dist.is_main:
        log.info("filter bank initialised from conv4 peaks: %s", report)
        (out_dir / "filter_init.json").write_text(json.dumps(_jsonable(report), indent=2))


def _jsonable(obj: Any) -> Any:
    from dataclasses import asdict, is_dataclass

    if is_dataclass(obj):
        obj = asdict(obj)
    return json.loads(json.dumps(obj, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))
