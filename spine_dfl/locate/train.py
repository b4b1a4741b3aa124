"""The vertebra locator as a training task: ``spine-dfl train MANIFEST`` with ``task: locator``.

The loop, checkpoints, stop rules, AMP with its scaler, channels-last and DDP are the engine's
(`spine_dfl.engine.loop`); the manifest and its patient split are the grader's
(`spine_dfl.engine.prepare`). This task brings the letterboxed samples, their exact geometric and
acquisition augmentation, the CenterNet loss, and selection on the val split: identification rate
(ties go to the smaller median centre error), or the val loss.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spine_dfl.config import RunConfig, config_to_dict
from spine_dfl.engine.checkpoint import CheckpointError, check_kind
from spine_dfl.engine.finetune import Parent
from spine_dfl.engine.loop import RunContext, StepLoss, TrainingTask, TrainResult, Validation, epoch_seed, fit
from spine_dfl.engine.prepare import prepare_manifest
from spine_dfl.io.errors import ConfigError, InputError
from spine_dfl.locate.augment import LocatorAcquisition, augment_sample
from spine_dfl.locate.checkpoint import locator_payload
from spine_dfl.locate.evaluate import evaluate_locator
from spine_dfl.locate.network import VertebraLocator
from spine_dfl.locate.preprocess import output_size
from spine_dfl.locate.samples import LocatorSample, load_samples, manifest_levels
from spine_dfl.locate.targets import collate_targets, encode_targets, locator_loss

__all__ = ["LocatorTask", "train_locator"]

# Identification rates differ in steps of 1 / (val vertebrae); the centre error (pixels) only breaks ties.
_TIE_BREAK = 1e-6


class LocatorTask(TrainingTask):
    """The locator on whole letterboxed radiographs, each rank its share of every epoch's images."""

    def __init__(self, context: RunContext) -> None:
        if context.config.task != "locator":
            raise ConfigError(f"config task {context.config.task!r}: this trains the locator (task: locator)")
        self.context = context
        config, settings = context.config, context.config.locator
        manifest = prepare_manifest(context.manifest_path, config)
        self.levels = manifest_levels(manifest.table)
        if context.parent is not None:
            self.levels = _parent_levels(context.parent, self.levels, manifest.path)
        self.train = load_samples(manifest.table, self.levels, settings.input_size, settings.intensity_percentiles,
                                  ["train"])
        self.val = load_samples(manifest.table, self.levels, settings.input_size, settings.intensity_percentiles,
                                ["val"])
        torch.manual_seed(config.seed)  # the same initial weights on every rank and every run
        self.model = VertebraLocator(self.levels, settings.blocks, settings.neck_channels,
                                     settings.head_channels).to(context.device)
        self.train_count = len(self.train)

    def parameter_groups(self) -> list[dict[str, Any]]:
        tc = self.context.config.train
        return self.model.param_groups(tc.lr_backbone, tc.lr_heads, tc.weight_decay)

    def _batch(self, samples: list[LocatorSample], rng: np.random.Generator | None = None,
               acquisition: LocatorAcquisition | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Images and targets of ``samples`` on the device, augmented when ``rng`` is given (then also
        through ``acquisition``, the epoch's acquisition augmentation)."""
        settings = self.context.config.locator
        images, targets = [], []
        out_hw = output_size(settings.input_size)
        for sample in samples:
            boxes, points = sample.input_truth()
            image = sample.tensor
            if rng is not None:
                image, boxes, points = augment_sample(image, boxes, points, settings.augment, rng)
            images.append(image)
            targets.append(encode_targets(boxes, out_hw, points, sample.levels))
        batch = torch.stack(images)
        if rng is not None and acquisition is not None:
            batch = acquisition(batch, rng)
        device = self.context.device
        batch = batch.to(device)
        if self.context.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        return batch, {k: v.to(device) for k, v in collate_targets(targets).items()}

    def batches(self, epoch: int) -> Iterator[tuple[torch.Tensor, dict[str, torch.Tensor]]]:
        config, dist = self.context.config, self.context.dist
        rng = np.random.default_rng(epoch_seed(config.seed, epoch))
        order = rng.permutation(len(self.train))[dist.rank::dist.world_size]
        rng = np.random.default_rng([epoch_seed(config.seed, epoch), dist.rank])  # this rank's augmentation
        acquisition = LocatorAcquisition(config.locator.acquisition)  # drawn once an epoch, not once a batch
        size = config.train.batch_size
        for start in range(0, len(order), size):
            yield self._batch([self.train[i] for i in order[start:start + size]], rng, acquisition)

    def step_loss(self, net: torch.nn.Module, batch: tuple[torch.Tensor, dict[str, torch.Tensor]]) -> StepLoss:
        images, targets = batch
        outputs = net(images)
        with torch.autocast(device_type=images.device.type, enabled=False):  # the focal loss in float32
            parts = locator_loss({k: v.float() for k, v in outputs.items()}, targets,
                                 self.context.config.locator.loss_weights)
        loss = parts.pop("loss")
        return StepLoss(loss, parts, int(images.shape[0]))

    @torch.no_grad()
    def validate(self) -> Validation:
        """Val loss (no augmentation) and the val split's locator figures."""
        config = self.context.config
        self.model.eval()
        total, n = 0.0, 0
        for start in range(0, len(self.val), config.train.batch_size):
            chunk = self.val[start:start + config.train.batch_size]
            images, targets = self._batch(chunk)
            parts = locator_loss(self.model(images), targets, config.locator.loss_weights)
            total, n = total + float(parts["loss"]) * len(chunk), n + len(chunk)
        loss = total / max(1, n)
        if not math.isfinite(loss):
            return Validation(loss)
        figures = evaluate_locator(self.model, self.val, config.locator.threshold, refine=False)
        columns = {"val_detection_recall": figures["detection_recall_iou50"],
                   "val_identification_rate": figures["identification_rate"],
                   "val_median_centre_error_px": figures["median_centre_error_px"]}
        if config.train.select_metric == "loss":
            score = -loss
        else:
            score = (figures["identification_rate"] or 0.0) - _TIE_BREAK * (figures["median_centre_error_px"] or 0.0)
        return Validation(loss, score, columns, {"val_figures": figures})

    def payload(self, progress: dict[str, Any], validation: Validation) -> dict[str, Any]:
        return locator_payload(self.model, config_to_dict(self.context.config), {**progress, **validation.extra})

    def check_resume(self, checkpoint: dict[str, Any], path: Path) -> None:
        check_kind(checkpoint, path, "locator")
        if list(checkpoint["levels"]) != self.levels:
            raise CheckpointError(f"{path}: levels {checkpoint['levels']} differ from the manifest's "
                                  f"{self.levels}; cannot resume")

    def run_files(self) -> dict[str, str]:
        return {"levels.json": json.dumps(self.levels)}


def _parent_levels(parent: Parent, levels: list[str], manifest_path: Path) -> list[str]:
    """The parent locator's levels (its heads name them), once the manifest's are found among them."""
    known = [str(level) for level in parent.raw["levels"]]
    unknown = [level for level in levels if level not in known]
    if unknown:
        raise InputError(f"{manifest_path}: levels {', '.join(unknown)} are not levels of the checkpoint "
                         f"({', '.join(known)}); fine-tuning keeps the checkpoint's levels")
    return known


def train_locator(manifest_path: str | Path, config: RunConfig, out_dir: str | Path, resume: bool = False,
                  progress: bool = True, init: Parent | None = None) -> TrainResult:
    """Train the locator on the manifest's train split, selecting on val; best.pt and last.pt in ``out_dir``
    (from the checkpoint ``init`` when given)."""
    return fit(LocatorTask, manifest_path, config, out_dir, resume=resume, progress=progress, init=init)
