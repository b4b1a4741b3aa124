"""Training: ``spine-dfl train MANIFEST``.

One seed drives the split, the sampler, the filter-bank init, the augmentation and the
weight init. Model selection uses the validation split only, never test. Every epoch
writes ``last.pt`` (for ``--resume``) and, on improvement, ``best.pt``; both atomically.
Under ``torchrun`` the run is DDP (NCCL on GPU, gloo on CPU); rank 0 validates and writes.
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
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

from spine_dfl.engine.checkpoint import CheckpointError, _bare_model, atomic_torch_save, checkpoint_payload, read_checkpoint
from spine_dfl.config import RunConfig, config_to_dict
from spine_dfl.data.dataset import (
    DistributedWeightedSampler,
    build_dataset,
    class_balanced_weights,
    records_from_table,
)
from spine_dfl.data.manifest import Manifest, load_manifest, patient_split
from spine_dfl.data.transforms import Preprocessing
from spine_dfl.model import DFLNet, branch_loss, dfl_loss, init_filter_bank
from spine_dfl.engine.predict import collate_samples, predict_logits, predictions_table, resolve_device

log = logging.getLogger("spine_dfl.train")

BEST_NAME = "best.pt"
LAST_NAME = "last.pt"


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


@dataclass
class TrainResult:
    out_dir: Path
    best_checkpoint: Path
    best_epoch: int
    best_score: float
    epochs_run: int
    val_predictions: Any = None  # pandas DataFrame of the best model on the validation split
    history: list[dict[str, float]] = field(default_factory=list)


def setup_distributed(device_name: str) -> DistInfo:
    """Join the process group when launched by torchrun (RANK/WORLD_SIZE set)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    use_cuda = torch.cuda.is_available() and device_name != "cpu"
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    if use_cuda:
        torch.cuda.set_device(info.local_rank)
    return info


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
    """Validation figure used for model selection (higher is better; loss is negated)."""
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, roc_auc_score

    if metric == "loss":
        return -loss
    y_true = table["label"].map({c: i for i, c in enumerate(class_names)}).to_numpy()
    probs = table[[f"prob_{c}" for c in class_names]].to_numpy()
    y_pred = probs.argmax(axis=1)
    if metric == "accuracy":
        return float(accuracy_score(y_true, y_pred))
    if metric == "balanced_accuracy":
        return float(balanced_accuracy_score(y_true, y_pred))
    if metric == "macro_f1":
        return float(f1_score(y_true, y_pred, average="macro", labels=range(len(class_names))))
    present = np.unique(y_true)
    if len(present) < 2:
        return float(balanced_accuracy_score(y_true, y_pred))
    if len(class_names) == 2:
        return float(roc_auc_score(y_true, probs[:, 1]))
    sub = probs[:, present]
    sub = sub / sub.sum(axis=1, keepdims=True)
    if len(present) == 2:
        return float(roc_auc_score(y_true == present[1], sub[:, 1]))
    return float(roc_auc_score(y_true, sub, multi_class="ovr", labels=present, average="macro"))


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
    """Train a DFLNet on the manifest's train split, selecting on its val split."""
    info = setup_distributed(config.device)
    out_dir = Path(out_dir)
    device = resolve_device(config.device)
    if device.type == "cuda" and info.enabled:
        device = torch.device("cuda", info.local_rank)
    seed_everything(config.seed)

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

    if info.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
    cache_dir = config.data.cache_dir or str(out_dir / "cache")
    train_set = build_dataset(train_records, pre, aug=config.data.augment, cache=config.data.cache,
                              cache_dir=cache_dir, seed=config.seed)
    val_set = build_dataset(val_records, pre, aug=None, cache=config.data.cache, cache_dir=cache_dir)
    init_set = train_set.without_augmentation()  # the init reads the cached crops, not the files again

    torch.manual_seed(config.seed)  # the same weights on every rank and every run
    model = DFLNet(
        backbone=config.model.backbone,
        num_classes=len(class_names),
        filters_per_class=config.model.filters_per_class,
        fuse_weights=config.model.fuse_weights.as_tuple(),
        pretrained=config.model.pretrained,
    ).to(device)
    use_cuda = device.type == "cuda"
    if use_cuda and config.train.channels_last:
        model = model.to(memory_format=torch.channels_last)

    optimizer = torch.optim.AdamW(
        model.param_groups(config.train.lr_backbone, config.train.lr_heads, config.train.weight_decay)
    )
    scaler = torch.amp.GradScaler("cuda", enabled=use_cuda and config.train.amp)

    weights = class_balanced_weights(
        train_labels, [r["vertebra"] for r in train_records], mode=config.data.balance
    )
    samples_per_epoch = len(train_records)
    steps_per_epoch = max(1, math.ceil(samples_per_epoch / info.world_size / config.train.batch_size))
    if config.train.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, config.train.max_steps_per_epoch)
    total_steps = steps_per_epoch * config.train.epochs
    warmup_steps = int(round(config.train.warmup_epochs * steps_per_epoch))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine(step, warmup_steps, total_steps)
    )
    class_weight = None
    if config.train.class_weighted_loss:
        counts = np.bincount(train_labels, minlength=len(class_names)).astype(np.float64)
        class_weight = torch.tensor(counts.sum() / (len(counts) * counts), dtype=torch.float32, device=device)

    start_epoch, best_score, best_epoch, stale = 0, -math.inf, -1, 0
    history: list[dict[str, float]] = []
    last_path, best_path = out_dir / LAST_NAME, out_dir / BEST_NAME
    config_dict = config_to_dict(config)
    if resume and last_path.exists():
        state = read_checkpoint(last_path, map_location=device)
        if state.get("class_names") != class_names:
            raise CheckpointError(f"{last_path}: classes {state.get('class_names')} differ from the manifest's {class_names}")
        model.load_state_dict(state["model_state"])
        optimizer.load_state_dict(state["optimizer_state"])
        scheduler.load_state_dict(state["scheduler_state"])
        scaler.load_state_dict(state["scaler_state"])
        start_epoch = int(state["epoch"]) + 1
        best_score, best_epoch, stale = float(state["best_score"]), int(state["best_epoch"]), int(state["stale_epochs"])
        history = list(state.get("history", []))
        if info.is_main:
            log.info("resuming from %s at epoch %d", last_path, start_epoch + 1)
    elif config.model.init == "nms_kmeans":
        # Every rank computes the same init from the same images, so no broadcast is needed.
        init_loader = _filter_init_loader(init_set, train_labels, config.model.init_max_images_per_class,
                                          config.train.batch_size, config.seed, config.data.workers)
        report = init_filter_bank(
            model,
            ((b["image"], b["label"]) for b in init_loader),
            peaks_per_image=config.model.init_peaks_per_image,
            nms_iou=config.model.init_nms_iou,
            max_features_per_class=config.model.init_max_features_per_class,
            seed=config.seed,
        )
        if info.is_main:
            log.info("filter bank initialised from conv4 peaks: %s", report)
            (out_dir / "filter_init.json").write_text(json.dumps(_jsonable(report), indent=2))

    net: torch.nn.Module = model
    if info.enabled:
        net = DistributedDataParallel(model, device_ids=[device.index] if use_cuda else None)

    if info.is_main:
        (out_dir / "config.yaml").write_text(_yaml_dump(config_dict))
        (out_dir / "classes.json").write_text(json.dumps(class_names))
    tb_writer = _tensorboard(out_dir, config) if info.is_main else None
    started = time.monotonic()
    epochs_run = start_epoch
    for epoch in range(start_epoch, config.train.epochs):
        train_set_seed = epoch_seed(config.seed, epoch)
        if hasattr(train_set, "set_epoch"):
            train_set.set_epoch(epoch)
        sampler = DistributedWeightedSampler(
            weights, num_samples=samples_per_epoch, rank=info.rank, world_size=info.world_size, seed=config.seed
        )
        sampler.set_epoch(epoch)
        torch.manual_seed(train_set_seed + info.rank)
        loader = DataLoader(
            train_set, batch_size=config.train.batch_size, sampler=sampler, num_workers=config.data.workers,
            collate_fn=collate_samples, pin_memory=use_cuda, drop_last=False,
            persistent_workers=False,
        )
        net.train()
        sums = {"loss": 0.0, "g": 0.0, "p": 0.0, "side": 0.0}
        seen, epoch_start = 0, time.monotonic()
        bar = tqdm(total=steps_per_epoch, desc=f"epoch {epoch + 1}/{config.train.epochs}",
                   disable=not (progress and info.is_main), leave=False, unit="batch")
        for step, batch in enumerate(loader):
            if step >= steps_per_epoch:
                break
            images = batch["image"].to(device, non_blocking=True)
            labels = batch["label"].to(device, non_blocking=True)
            if use_cuda and config.train.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device_type=device.type, enabled=use_cuda and config.train.amp):
                out = net(images)
                loss, parts = dfl_loss(out, labels, weights=config.model.loss_weights.as_tuple(),
                                       class_weights=class_weight)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if config.train.grad_clip > 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(net.parameters(), config.train.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            n = images.shape[0]
            seen += n
            sums["loss"] += float(loss.detach()) * n
            for name in ("g", "p", "side"):
                sums[name] += float(parts[name].detach()) * n
            rate = seen / max(1e-9, time.monotonic() - epoch_start)
            bar.set_postfix(loss=f"{sums['loss'] / seen:.3f}", img_s=f"{rate:.1f}")
            bar.update(1)
        bar.close()

        row: dict[str, Any] = {
            "epoch": epoch + 1,
            "train_loss": sums["loss"] / max(1, seen),
            **{f"train_loss_{k}": sums[k] / max(1, seen) for k in ("g", "p", "side")},
            "lr_backbone": optimizer.param_groups[0]["lr"],
            "images_per_s": seen * info.world_size / max(1e-9, time.monotonic() - epoch_start),
        }
        stop = torch.zeros(1)
        if info.is_main:
            val_loss, val_table = _validate(model, val_set, val_records, class_names, config, device)
            score = selection_score(config.train.select_metric, val_table, class_names, val_loss)
            row.update(val_loss=val_loss, **{f"val_{config.train.select_metric}": score},
                       seconds=time.monotonic() - started)
            improved = score > best_score
            if improved:
                best_score, best_epoch, stale = score, epoch, 0
            else:
                stale += 1
            history.append(row)
            payload = checkpoint_payload(model, config_dict, class_names, pre, {
                "epoch": epoch, "best_score": best_score, "best_epoch": best_epoch, "stale_epochs": stale,
                "select_metric": config.train.select_metric, "history": history,
            })
            if improved:
                atomic_torch_save(payload, best_path)
            payload.update(optimizer_state=optimizer.state_dict(), scheduler_state=scheduler.state_dict(),
                           scaler_state=scaler.state_dict())
            atomic_torch_save(payload, last_path)
            _write_metrics_row(out_dir / "metrics.csv", row)
            if tb_writer is not None:
                for key, value in row.items():
                    tb_writer.add_scalar(key, value, epoch + 1)
            log.info("epoch %d: %s", epoch + 1, ", ".join(f"{k}={v:.4g}" for k, v in row.items() if k != "epoch"))
            patience = config.train.early_stop_patience
            out_of_time = config.train.time_budget_s is not None and time.monotonic() - started > config.train.time_budget_s
            if (patience and stale >= patience) or out_of_time:
                log.info("stopping after epoch %d (%s)", epoch + 1, "time budget" if out_of_time else "no improvement")
                stop[0] = 1
        if info.enabled:
            dist.broadcast(stop, src=0)
        epochs_run = epoch + 1
        if stop.item():
            break

    if tb_writer is not None:
        tb_writer.close()
    result = TrainResult(out_dir, best_path, best_epoch + 1, best_score, epochs_run, history=history)
    if info.is_main:
        best = read_checkpoint(best_path, map_location=device)
        model.load_state_dict(best["model_state"])
        _, result.val_predictions = _validate(model, val_set, val_records, class_names, config, device)
    if info.enabled:
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
