"""What the grader's training sets up before its first epoch: the manifest and its split, samples,
the model, and the filter-bank init of a fresh run. Used by `spine_dfl.engine.train`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from spine_dfl.config import RunConfig
from spine_dfl.data.dataset import build_dataset, records_from_table
from spine_dfl.data.manifest import Manifest, load_manifest
from spine_dfl.data.samplers import class_balanced_weights
from spine_dfl.data.splits import patient_split
from spine_dfl.data.transforms import Preprocessing
from spine_dfl.engine.distributed import Distributed
from spine_dfl.engine.predict import collate_samples
from spine_dfl.io.errors import InputError
from spine_dfl.model import DFLNet, init_filter_bank

if TYPE_CHECKING:
    from torch.utils.data import Dataset

    from spine_dfl.data.dataset import SpineDataset

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
    train_set: SpineDataset
    val_set: SpineDataset


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


def _filter_init_loader(
    dataset: Dataset, labels: np.ndarray, per_class: int, batch_size: int, seed: int, workers: int
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


def prepare_data(manifest_path: str | Path, config: RunConfig, out_dir: Path, dist: Distributed,
                 class_names: list[str] | None = None) -> TrainData:
    """Manifest -> train/val records -> datasets (cached as ``config.data.cache`` says).

    ``class_names``: the classes of the model being fine-tuned (``train --init``): the manifest's labels
    must be among them (one line names those that are not); a class without training rows is allowed
    (the model has learnt it already), where a model trained from scratch needs rows of every class.
    """
    manifest = prepare_manifest(manifest_path, config)
    present = manifest.class_names
    fine_tuning = class_names is not None
    if class_names is not None:
        unknown = [c for c in present if c not in class_names]
        if unknown:
            raise InputError(f"{manifest.path}: labels {', '.join(unknown)} are not classes of the checkpoint "
                             f"({', '.join(class_names)}); fine-tuning keeps the checkpoint's classes")
    class_names = list(present if class_names is None else class_names)
    pre = preprocessing_for(config, manifest)
    table = manifest.table
    train_records = records_from_table(table[table["split"] == "train"], class_names)
    val_records = records_from_table(table[table["split"] == "val"], class_names)
    train_labels = np.array([r["label"] for r in train_records])
    missing = [c for c in present if not (train_labels == class_names.index(c)).any()]
    if missing and not fine_tuning:
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
    return DFLNet(
        backbone=config.model.backbone,
        num_classes=len(class_names),
        filters_per_class=config.model.filters_per_class,
        fuse_weights=config.model.fuse_weights.as_tuple(),
        pretrained=config.model.pretrained,
        pstream_layer=config.model.pstream_layer,
        streams=config.model.streams,
        pstream_region=config.model.pstream_region,
    ).to(device)


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
