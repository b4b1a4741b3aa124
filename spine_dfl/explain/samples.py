"""Records -> transformed samples for ``explain``, one at a time, each with what its figure shows.

A record is a mapping with ``image`` (path), ``roi`` ((x_min, y_min, x_max, y_max) original pixels,
or None), ``vertebra``, ``label`` / ``label_name`` (may be unknown) and ``sop_instance_uid``.
Unreadable images and, for a model trained on vertebra ROIs, records without an ROI are failures
of that record (logged, listed in the gallery), never of the run.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from spine_dfl.heatmap.geometry import display_region

if TYPE_CHECKING:
    from spine_dfl.data.transforms.settings import Preprocessing

log = logging.getLogger("spine_dfl.explain")

__all__ = ["PreparedSample", "batches", "label_name", "png_name", "prepare_samples", "record_roi"]


@dataclass
class PreparedSample:
    """One transformed sample waiting for its batch (holds only the displayed crop, not the image)."""

    seq: int
    record: Mapping[str, Any]
    image: Tensor  # (1, S, S) network input
    to_original: Tensor  # (3, 3) float64, input continuous (x, y, 1) -> original continuous (x, y, 1)
    image_shape: tuple[int, int]  # (rows, cols) of the original image
    region: tuple[int, int, int, int]  # (x0, y0, x1, y1) shown, original pixels, max exclusive
    pixels: np.ndarray  # (y1-y0, x1-x0) float32 original pixels of `region` (reader's VOI applied)
    sop_instance_uid: str


def label_name(record: Mapping[str, Any], class_names: Sequence[str]) -> str | None:
    """The record's true class name, or None when unknown (None, '', NaN, -1)."""
    name = record.get("label_name")
    if isinstance(name, str) and name.strip():
        return name.strip()
    label = record.get("label")
    if label is None:
        return None
    if isinstance(label, str):
        return label.strip() or None
    try:
        value = float(label)
    except (TypeError, ValueError):
        return None
    if math.isnan(value) or value < 0:
        return None
    index = int(value)
    return class_names[index] if index < len(class_names) else str(index)


def record_roi(record: Mapping[str, Any]) -> tuple[float, float, float, float] | None:
    """The record's ROI as 4 floats, or None (missing, or NaN as in whole-image manifest rows)."""
    roi = record.get("roi")
    if roi is None:
        return None
    values = tuple(float(v) for v in roi)
    if len(values) != 4 or any(math.isnan(v) for v in values):
        return None
    return values  # type: ignore[return-value]


def _missing_roi_reason(record: Mapping[str, Any]) -> str:
    where = f"row {record['row']}: " if record.get("row") not in (None, "") else ""
    return f"{where}no ROI (empty ROI cells), and this model was trained on vertebra ROIs"


def _failure(record: Mapping[str, Any], reason: str) -> dict[str, str]:
    log.warning("explain: skipping %s (%s)", record.get("image"), reason)
    return {"image": str(record.get("image")), "vertebra": str(record.get("vertebra", "") or ""), "reason": reason}


def prepare_samples(
    records: Iterable[Mapping[str, Any]], pre: Preprocessing, failures: list[dict[str, str]]
) -> Iterator[PreparedSample]:
    """Transform records one at a time; failed ones are appended to `failures` and skipped.

    pre: the checkpoint's ``Preprocessing``. The preprocessing's own loader reads each image once
    (its small LRU makes consecutive vertebrae of one radiograph share a single decode); its pixels
    are kept only for the crop shown.
    """
    from spine_dfl.data.transforms import deterministic_transforms

    steps = deterministic_transforms(pre)
    load, rest = steps[0], steps[1:]
    for seq, record in enumerate(records):
        roi = record_roi(record)
        if roi is None and pre.use_roi:
            # The same rule as score: a vertebra model never silently grades the whole image.
            failures.append(_failure(record, _missing_roi_reason(record)))
            continue
        try:
            # A located record of a turned film carries its orientation and its box on the canonical film:
            # the crop is cut from the canonical film, the region shown stays in the file's pixels.
            crop = record.get("crop_roi")
            loaded = load({"image": str(record["image"]), "roi": roi if crop is None else tuple(float(v) for v in crop),
                           "orientation": record.get("orientation")})
            original = torch.as_tensor(loaded["image"])[0]  # (rows, cols), shares the reader's array
            sample = loaded
            for step in rest:
                sample = step(sample)
        except Exception as exc:  # unreadable image, bad ROI: keep going, say why
            failures.append(_failure(record, f"{type(exc).__name__}: {exc}"))
            continue
        to_original = torch.as_tensor(sample["to_original"], dtype=torch.float64)
        image_shape = (int(original.shape[0]), int(original.shape[1]))
        region = display_region(to_original, pre, roi, image_shape)
        x0, y0, x1, y1 = region
        uid = str(record.get("sop_instance_uid") or "") or str(sample.get("meta", {}).get("sop_instance_uid") or "")
        yield PreparedSample(
            seq=seq,
            record=record,
            image=torch.as_tensor(sample["image"]).float(),
            to_original=to_original,
            image_shape=image_shape,
            region=region,
            pixels=original[y0:y1, x0:x1].numpy().astype(np.float32, copy=True),
            sop_instance_uid=uid,
        )


def batches(items: Iterator[PreparedSample], size: int) -> Iterator[list[PreparedSample]]:
    batch: list[PreparedSample] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _safe_name(text: str, limit: int = 60) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.")
    return cleaned[:limit] or "x"


def png_name(seq: int, record: Mapping[str, Any]) -> str:
    """``<NNNNN>_<image stem>_<vertebra>.png``: unique per run (seq), readable, filesystem-safe."""
    stem = Path(str(record["image"])).name
    stem = stem.rsplit(".", 1)[0] if "." in stem[1:] else stem
    vertebra = str(record.get("vertebra", "") or "")
    parts = [f"{seq:05d}", _safe_name(stem)] + ([_safe_name(vertebra, 16)] if vertebra else [])
    return "_".join(parts) + ".png"
