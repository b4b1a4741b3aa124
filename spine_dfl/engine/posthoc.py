"""What training fits after its last epoch, with the best weights: calibration and the shift statistics.

One pass over the validation split (logits and features) and one over the training split (features,
deterministic eval transforms, no augmentation). The temperatures (``engine.calibration``) are fitted
on the validation logits; the shift statistics (``engine.shift``) on the training features, their
threshold on the validation images' scores. Both go into ``best.pt`` (rewritten atomically, under the
keys ``calibration`` and ``shift``: plain numbers and float32 tensors, weights_only-safe) and into
``calibration.json`` in the run folder (no tensors). Rank 0 only.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from spine_dfl.atomic import atomic_write_text
from spine_dfl.engine.calibration import Temperatures, calibration_summary, fit_calibration
from spine_dfl.engine.checkpoint import _bare_model, atomic_torch_save, read_checkpoint
from spine_dfl.engine.predict import collate_samples, predict_logits, predictions_table
from spine_dfl.engine.shift import ShiftModel, fit_shift, shift_summary

if TYPE_CHECKING:
    import pandas as pd
    from torch.utils.data import Dataset

    from spine_dfl.config import RunConfig
    from spine_dfl.engine.prepare import TrainData

log = logging.getLogger("spine_dfl.train")

CALIBRATION_JSON = "calibration.json"


def _logits(model: torch.nn.Module, dataset: Dataset, config: RunConfig, device: torch.device) -> dict[str, np.ndarray]:
    loader = DataLoader(dataset, batch_size=config.train.batch_size, shuffle=False, num_workers=config.data.workers,
                        collate_fn=collate_samples, pin_memory=device.type == "cuda")
    return predict_logits(_bare_model(model), loader, device, amp=config.train.amp, features=True)


def fit_after_training(model: torch.nn.Module, data: TrainData, config: RunConfig, out_dir: Path, best_path: Path,
                       device: torch.device) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Fit calibration + shift with the weights in ``model`` (the best's), store them in ``best_path`` and
    ``calibration.json``; returns (the validation predictions table, calibrated; calibration.json's content)."""
    started = time.monotonic()
    val = _logits(model, data.val_set, config, device)
    train_set = data.train_set.without_augmentation() if hasattr(data.train_set, "without_augmentation") \
        else data.train_set
    train_features = _logits(model, train_set, config, device)["features"]
    calibration = fit_calibration(val, val["label"])
    val_images = [data.val_records[i]["image"] for i in val["index"]]
    shift = fit_shift(train_features, val["features"], val_images)
    raw = read_checkpoint(best_path)
    raw["calibration"] = calibration
    raw["shift"] = shift
    atomic_torch_save(raw, best_path)
    summary = {"checkpoint": best_path.name, "calibration": calibration_summary(calibration),
               "shift": shift_summary(shift)}
    atomic_write_text(out_dir / CALIBRATION_JSON, json.dumps(summary, indent=2) + "\n")
    t = calibration["temperatures"]
    log.info("calibrated on %d validation vertebrae: temperatures %s; fused ECE %.3f -> %.3f; shift threshold "
             "%.2f (%d features, shrinkage %.3f) [%.1f s]", calibration["n"],
             ", ".join(f"{b} {t[b]:.3f}" for b in t), calibration["ece_before"]["fused"],
             calibration["ece_after"]["fused"], shift["threshold"], shift["dim"], shift["shrinkage"],
             time.monotonic() - started)
    temperatures = Temperatures(**{b: float(v) for b, v in t.items()}, fitted=True)
    table = predictions_table(data.val_records, val, data.class_names, temperatures, ShiftModel.from_record(shift))
    return table, summary
