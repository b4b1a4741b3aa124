"""The grader as a training task: ``spine-dfl train MANIFEST`` with ``task: grader``.

One seed drives the split, the sampler, the filter-bank init, the augmentation and the weight
init. Model selection uses the validation split only, never test. The loop, checkpoints, stop
rules, AMP and DDP are the engine's (`spine_dfl.engine.loop`); set-up is `spine_dfl.engine.prepare`
(manifest -> records -> datasets, the model, the filter-bank init); after the last epoch the best
model's calibration and shift statistics are fitted (`spine_dfl.engine.posthoc`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from spine_dfl.config import RunConfig, config_to_dict
from spine_dfl.data.samplers import DistributedWeightedSampler
from spine_dfl.data.transforms.acquisition import RandomBatchAcquisition
from spine_dfl.engine.checkpoint import (
    CheckpointError,
    _bare_model,
    checkpoint_payload,
    preprocessing_from_dict,
    read_checkpoint,
)
from spine_dfl.engine.finetune import Parent
from spine_dfl.engine.loop import (
    BEST_NAME,
    RunContext,
    StepLoss,
    TrainingDiverged,
    TrainingTask,
    TrainResult,
    Validation,
    epoch_seed,
    fit,
)
from spine_dfl.engine.predict import collate_samples, predict_logits, predictions_table
from spine_dfl.engine.prepare import TrainData, build_model, init_filters, prepare_data
from spine_dfl.io.errors import ConfigError, InputError
from spine_dfl.model import branch_loss, dfl_loss
from spine_dfl.predictions import prob_columns

__all__ = ["GraderTask", "TrainResult", "TrainingDiverged", "selection_score", "train"]


def selection_score(metric: str, table: pd.DataFrame, class_names: list[str], loss: float) -> float:
    """Validation figure used for model selection (higher is better; loss is negated).

    Accuracy, balanced accuracy, macro F1 and macro AUC are the report's (`spine_dfl.metrics`), so the
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


class GraderTask(TrainingTask):
    """DFL-CNN on the manifest's crops: class-balanced draws, the batch acquisition augmentation,
    the three-branch DFL loss; selection on the validation split's ``train.select_metric``. Fine-tuned
    (``context.parent``): the parent's classes and preprocessing, its filter bank kept."""

    def __init__(self, context: RunContext) -> None:
        if context.config.task != "grader":
            raise ConfigError(f"config task {context.config.task!r}: this trains the grader (task: grader)")
        self.context = context
        config = context.config
        parent = context.parent
        self.data = prepare_data(context.manifest_path, config, context.out_dir, context.dist,
                                 class_names=None if parent is None else list(parent.raw["class_names"]))
        if parent is not None:
            _check_preprocessing(parent, self.data, context.manifest_path)
        torch.manual_seed(config.seed)  # the same weights on every rank and every run
        self.model = build_model(config, self.data.class_names, context.device)
        self.train_count = len(self.data.train_records)
        self.class_weight = self._class_weight() if config.train.class_weighted_loss else None
        self.val_table: pd.DataFrame | None = None

    def _class_weight(self) -> torch.Tensor:
        counts = np.bincount(self.data.train_labels, minlength=len(self.data.class_names)).astype(np.float64)
        present = counts > 0  # a fine-tuning manifest may lack some of the checkpoint's classes
        weight = np.where(present, counts.sum() / (present.sum() * np.maximum(counts, 1.0)), 0.0)
        return torch.tensor(weight, dtype=torch.float32, device=self.context.device)

    def parameter_groups(self) -> list[dict[str, Any]]:
        tc = self.context.config.train
        return self.model.param_groups(tc.lr_backbone, tc.lr_heads, tc.weight_decay)

    def batches(self, epoch: int) -> Iterator[dict[str, Any]]:
        """This rank's share of the epoch's class-balanced draw, then the batch part of the acquisition
        augmentation (window, unsharp mask, collimation) on the device with its own generator."""
        context, config = self.context, self.context.config
        dist, device = context.dist, context.device
        if hasattr(self.data.train_set, "set_epoch"):
            self.data.train_set.set_epoch(epoch)
        sampler = DistributedWeightedSampler(self.data.sample_weights, num_samples=self.train_count, rank=dist.rank,
                                             world_size=dist.world_size, seed=config.seed)
        sampler.set_epoch(epoch)
        torch.manual_seed(epoch_seed(config.seed, epoch) + dist.rank)
        loader = DataLoader(self.data.train_set, batch_size=config.train.batch_size, sampler=sampler,
                            num_workers=config.data.workers, collate_fn=collate_samples,
                            pin_memory=device.type == "cuda", drop_last=False, persistent_workers=False)
        acquisition = RandomBatchAcquisition(config.data.acquisition)
        generator = torch.Generator(device=device).manual_seed(epoch_seed(config.seed, epoch) + dist.rank)
        for batch in loader:
            images = acquisition(batch["image"].to(device, non_blocking=True), generator)
            if context.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            yield {"image": images, "label": batch["label"].to(device, non_blocking=True),
                   "roi_input": batch["roi_input"].to(device, non_blocking=True)}

    def step_loss(self, net: torch.nn.Module, batch: dict[str, Any]) -> StepLoss:
        output = net(batch["image"], roi=batch["roi_input"])
        loss, parts = dfl_loss(output, batch["label"], weights=self.context.config.model.loss_weights.as_tuple(),
                               class_weights=self.class_weight)
        return StepLoss(loss, {name: parts[name] for name in ("g", "p", "side")}, int(batch["image"].shape[0]))

    def validate(self) -> Validation:
        config, data = self.context.config, self.data
        loader = DataLoader(data.val_set, batch_size=config.train.batch_size, shuffle=False,
                            num_workers=config.data.workers, collate_fn=collate_samples,
                            pin_memory=self.context.device.type == "cuda")
        logits = predict_logits(_bare_model(self.model), loader, self.context.device, amp=config.train.amp)
        loss, _ = branch_loss(*(torch.as_tensor(logits[b]) for b in ("g", "p", "side")),
                              torch.as_tensor(logits["label"]), weights=config.model.loss_weights.as_tuple())
        loss = float(loss)
        if not math.isfinite(loss):
            return Validation(loss)
        table = predictions_table(data.val_records, logits, data.class_names)
        metric = config.train.select_metric
        score = selection_score(metric, table, data.class_names, loss)
        # selecting on the loss: its figure is val_loss itself
        return Validation(loss, score, {} if metric == "loss" else {f"val_{metric}": score})

    def payload(self, progress: dict[str, Any], validation: Validation) -> dict[str, Any]:
        return checkpoint_payload(self.model, config_to_dict(self.context.config), self.data.class_names,
                                  self.data.pre, progress)

    def check_resume(self, checkpoint: dict[str, Any], path: Path) -> None:
        if checkpoint.get("class_names") != self.data.class_names:
            raise CheckpointError(f"{path}: classes {checkpoint.get('class_names')} differ from the manifest's "
                                  f"{self.data.class_names}")

    def start_fresh(self) -> None:
        if self.context.config.model.init == "nms_kmeans":
            init_filters(self.model, self.data, self.context.config, self.context.out_dir, self.context.dist)

    def run_files(self) -> dict[str, str]:
        return {"classes.json": json.dumps(self.data.class_names)}

    def finish(self, result: TrainResult) -> None:
        """Reload best.pt; fit calibration and the shift statistics with it (into best.pt and
        calibration.json) and predict the validation split, calibrated."""
        from spine_dfl.engine.posthoc import fit_after_training

        best_path = self.context.out_dir / BEST_NAME
        best = read_checkpoint(best_path, map_location=self.context.device)
        self.model.load_state_dict(best["model_state"])
        result.val_predictions, result.calibration = fit_after_training(
            self.model, self.data, self.context.config, self.context.out_dir, best_path, self.context.device)


def _check_preprocessing(parent: Parent, data: TrainData, manifest_path: str | Path) -> None:
    """InputError when the manifest makes the inputs another preprocessing than the parent was trained on
    (ROI crops against whole images: ``data.use_roi: auto`` follows the manifest's ROI columns)."""
    expected = preprocessing_from_dict(parent.raw["preprocessing"])
    if data.pre != expected:
        how = "ROI crops" if expected.use_roi else "whole images"
        raise InputError(f"{manifest_path}: the checkpoint {parent.path} was trained on {how} "
                         f"({expected}); this manifest gives {data.pre}")


def train(manifest_path: str | Path, config: RunConfig, out_dir: str | Path, resume: bool = False,
          progress: bool = True, init: Parent | None = None) -> TrainResult:
    """Train the grader (DFLNet) on the manifest's train split, selecting on its val split (from the
    checkpoint ``init`` when given)."""
    return fit(GraderTask, manifest_path, config, out_dir, resume=resume, progress=progress, init=init)
