"""Run a DFLNet over manifest records and build the predictions table (`spine_dfl.predictions`).

Probabilities are softmaxes of each branch's logits divided by that branch's temperature (the
checkpoint's ``engine.calibration.Temperatures``; 1 when none are given); ``prob_`` is the fused prediction.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from spine_dfl.data.dataset import build_dataset
from spine_dfl.data.transforms import Preprocessing
from spine_dfl.engine.calibration import Temperatures, calibrated_softmax
from spine_dfl.engine.device import resolve_device
from spine_dfl.model import DFLNet
from spine_dfl.predictions import BRANCHES, build_predictions

if TYPE_CHECKING:
    from torch.utils.data import Dataset

    from spine_dfl.engine.shift import ShiftModel


def collate_samples(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack images, their ROI boxes in input pixels and labels; keep the record index so rows can be
    matched back.

    MONAI's default collate chokes on meta dicts that hold None; the model needs only
    these four fields.
    """
    return {
        "image": torch.stack([torch.as_tensor(item["image"]).float() for item in batch]),
        "roi_input": torch.stack([torch.as_tensor(item["roi_input"]).float() for item in batch]),
        "label": torch.as_tensor([int(item.get("label", -1)) for item in batch], dtype=torch.long),
        "index": torch.as_tensor([int(item["index"]) for item in batch], dtype=torch.long),
    }


@torch.no_grad()
def predict_logits(
    model: DFLNet,
    loader: DataLoader,
    device: torch.device,
    amp: bool = True,
    features: bool = False,
) -> dict[str, np.ndarray]:
    """Logits of every branch for every sample of ``loader``, ordered by record index.

    Returns ``{"index": (N,), "label": (N,), "g"/"p"/"side"/"fused": (N, M)}``; with ``features`` also
    ``"features"``: (N, d) float32, the shift score's features (``engine.shift.shift_features``).
    """
    from spine_dfl.engine.shift import shift_features

    was_training = model.training
    model.eval()
    keys = ("index", "label", "g", "p", "side", "fused", *(("features",) if features else ()))
    chunks: dict[str, list[np.ndarray]] = {k: [] for k in keys}
    use_amp = amp and device.type == "cuda"
    for batch in loader:
        images = batch["image"].to(device, non_blocking=True)
        with torch.autocast(device_type=device.type, enabled=use_amp):
            out = model(images, roi=batch["roi_input"].to(device))
        for name in ("g", "p", "side", "fused"):
            chunks[name].append(getattr(out, name).float().cpu().numpy())
        if features:
            chunks["features"].append(shift_features(out).cpu().numpy())
        chunks["index"].append(batch["index"].numpy())
        chunks["label"].append(batch["label"].numpy())
    model.train(was_training)
    if not chunks["index"]:
        raise ValueError("no samples to predict")
    merged = {k: np.concatenate(v) for k, v in chunks.items()}
    order = np.argsort(merged["index"], kind="stable")
    return {k: v[order] for k, v in merged.items()}


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def predictions_table(
    records: Sequence[dict[str, Any]],
    logits: dict[str, np.ndarray],
    class_names: Sequence[str],
    temperatures: Temperatures | None = None,
    shift: ShiftModel | None = None,
) -> pd.DataFrame:
    """The predictions table (`spine_dfl.predictions`) of records (in index order) and branch logits,
    each branch's probabilities calibrated with ``temperatures`` (none: the raw softmax). With ``shift``
    (an ``engine.shift.ShiftModel``) and the logits' ``features`` it gains ``shift_score`` and
    ``in_distribution`` (per image, ``engine.shift.image_shift_cells``) as its last columns."""
    t = temperatures or Temperatures()
    rows = [records[i] for i in logits["index"]]
    identities = [
        {"image": r["image"], "vertebra": r.get("vertebra"), "patient_id": r.get("patient_id"),
         "label": r.get("label_name"), "sop_instance_uid": r.get("sop_instance_uid"), "roi": r.get("roi")}
        for r in rows
    ]
    branch_probs = {b: calibrated_softmax(logits[b], t.of(b)) for b in BRANCHES}
    table = build_predictions(identities, calibrated_softmax(logits["fused"], t.fused), class_names, branch_probs)
    if shift is not None and "features" in logits:
        from spine_dfl.engine.shift import image_shift_cells

        distances = shift.distances(torch.from_numpy(np.ascontiguousarray(logits["features"]))).numpy()
        cells = image_shift_cells([str(r["image"]) for r in rows], distances, shift.threshold)
        table["shift_score"] = np.array([c["shift_score"] for c in cells], dtype=np.float64)
        table["in_distribution"] = [c["in_distribution"] for c in cells]
    return table


def predict_records(
    model: DFLNet,
    records: Sequence[dict[str, Any]],
    pre: Preprocessing,
    class_names: Sequence[str],
    batch_size: int = 32,
    device: torch.device | str = "auto",
    workers: int = 0,
    dataset: Dataset | None = None,
    temperatures: Temperatures | None = None,
    shift: ShiftModel | None = None,
) -> pd.DataFrame:
    """Predictions table for ``records`` (deterministic eval transforms, no augmentation), its
    probabilities calibrated with ``temperatures`` (a loaded checkpoint's; none: the raw softmax), with
    the shift columns when ``shift`` (a loaded checkpoint's ``ShiftModel``) is given.

    ``dataset`` may be passed to reuse an already cached evaluation dataset of the same records.
    """
    device = resolve_device(device) if isinstance(device, str) else device
    if dataset is None:
        dataset = build_dataset(list(records), pre, aug=None, cache="none")
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=collate_samples,
        pin_memory=device.type == "cuda",
    )
    logits = predict_logits(model, loader, device, features=shift is not None)
    return predictions_table(records, logits, class_names, temperatures, shift)
