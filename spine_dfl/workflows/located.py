"""``evaluate --locator``: the grader on the locator's crops beside the manifest's crops, and six-point morphometry.

End to end: every radiograph of the split is located (``locate.locating.locate_rois``, as score
does); each located box is matched one-to-one to the manifest's boxes of that image at IoU >= 0.5
(``locate.evaluate.match_boxes``) and takes the matched row's label, vertebra, patient and row
number (the ``vertebra`` column is the manifest's level); the grader then grades the located
crop. Located boxes without a match have no truth and are left out (the locator figures count them as false detections); manifest vertebrae without a
match are counted in ``coverage``. The manifest-crop table gains ``roi_source = manifest`` and the
manifest's six-point morphometry; the located one ``roi_source = locator``, its confidence and the
locator's morphometry.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from spine_dfl.data.dataset import manifest_records
from spine_dfl.data.manifest import load_manifest
from spine_dfl.engine.checkpoint import load_checkpoint
from spine_dfl.engine.device import resolve_device
from spine_dfl.engine.predict import predict_records
from spine_dfl.io import read_image
from spine_dfl.io.errors import InputError
from spine_dfl.io.orientation import stored_orientation
from spine_dfl.io.vocabulary import LEVELS, POINT_COLUMNS
from spine_dfl.locate.evaluate import evaluate_locator, match_boxes
from spine_dfl.locate.locating import locate_rois, resolve_locator
from spine_dfl.locate.morphometry import UNIT_BY_SPACING_SOURCE, spine_morphometry
from spine_dfl.locate.samples import load_samples
from spine_dfl.predictions import LEVEL_COLUMNS, MORPHOMETRY_COLUMNS, ROI_SOURCE_COLUMNS, morphometry_cells

__all__ = ["MATCH_IOU", "evaluate_located", "located_records", "locator_figures", "manifest_morphometry",
           "with_roi_columns"]

MATCH_IOU = 0.5


def with_roi_columns(table: pd.DataFrame, cells: Sequence[dict[str, Any]], morphometry: bool) -> pd.DataFrame:
    """``table`` with the predictions table's ROI-source (and morphometry) columns from per-row ``cells``."""
    out = table.copy()
    for column in (*ROI_SOURCE_COLUMNS, *(LEVEL_COLUMNS + MORPHOMETRY_COLUMNS if morphometry else ())):
        values = [c.get(column) for c in cells]
        if column in ("roi_source", "height_unit", "morph_grade", "morph_kind", "level_anchored", "transitional"):
            out[column] = ["" if v is None else str(v) for v in values]
        else:
            out[column] = np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)
    return out


def _radiograph(image: str) -> Any:
    return read_image(image)


def manifest_morphometry(records: Sequence[dict[str, Any]], table: pd.DataFrame) -> list[dict[str, Any]]:
    """Per record, ``roi_source = manifest`` and, where the manifest row has six points, its morphometry."""
    cells: list[dict[str, Any]] = [{"roi_source": "manifest"} for _ in records]
    if not all(c in table.columns for c in POINT_COLUMNS):
        return cells
    by_row = table.set_index("row")[list(POINT_COLUMNS)].apply(pd.to_numeric, errors="coerce")
    by_image: dict[str, list[int]] = {}
    for i, record in enumerate(records):
        points = by_row.loc[record["row"]].to_numpy(np.float64)
        if np.isfinite(points).all() and record.get("vertebra") in LEVELS:
            by_image.setdefault(record["image"], []).append(i)
    for image, members in by_image.items():
        radiograph = _radiograph(image)
        source = radiograph.meta.spacing_source
        spacing = radiograph.spacing_mm if source in UNIT_BY_SPACING_SOURCE else None
        points = np.stack([by_row.loc[records[i]["row"]].to_numpy(np.float64).reshape(6, 2) for i in members])
        levels = [LEVELS.index(records[i]["vertebra"]) for i in members]
        measured = spine_morphometry(points, levels, spacing, source if spacing is not None else None)
        for i, values in zip(members, morphometry_cells(measured, points)):
            cells[i].update(values)
    return cells


def located_records(records: Sequence[dict[str, Any]], locator: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]], int]:
    """(records of the matched located crops, their table cells, manifest vertebrae matched)."""
    by_image: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        if record.get("roi") is not None:
            by_image.setdefault(record["image"], []).append(record)
    out, cells = [], []
    for image, truth in by_image.items():
        # on the canonical film per the header, as the crops are cut (data.dataset); the manifest is trusted
        turned = stored_orientation(str(image))
        if turned is None or turned[0].is_identity:
            found = locate_rois(locator, _radiograph(image))
        else:
            found = locate_rois(locator, _radiograph(image), turned[0])
        pairs = match_boxes(np.array([r["roi"] for r in truth], np.float64).reshape(-1, 4),
                            np.array(found.boxes, np.float64).reshape(-1, 4), MATCH_IOU)
        for t, p in sorted(pairs, key=lambda pair: pair[1]):
            out.append({**truth[t], "index": len(out), "roi": found.boxes[p]})
            cells.append({"roi_source": "locator", "locator_confidence": found.confidence[p], **found.morphometry[p]})
    return out, cells, len(out)


def evaluate_located(checkpoint: str | Path, locator_path: str | Path | None, manifest: str | Path, split: str,
                     device: str = "auto", batch_size: int = 32) -> tuple[pd.DataFrame, pd.DataFrame | None, dict[str, Any]]:
    """(manifest-crop table, located-crop table or None, figures: ``coverage`` and ``locator``)."""
    where = resolve_device(device)
    loaded = load_checkpoint(checkpoint, map_location=where)
    records = manifest_records(manifest, loaded.class_names, split, loaded.preprocessing.use_roi)
    table = load_manifest(manifest, check_files=False, check_rois=False, require_labels=False).table  # checked above

    def grade(rows: list[dict[str, Any]]) -> pd.DataFrame:
        return predict_records(loaded.model, rows, loaded.preprocessing, loaded.class_names, batch_size=batch_size,
                               device=where, temperatures=loaded.temperatures, shift=loaded.shift)

    if not loaded.preprocessing.use_roi:  # a whole-image model: no ROIs, no landmarks, nothing to locate
        if locator_path is not None:
            raise InputError(f"{checkpoint}: a whole-image model has no use for --locator")
        return grade(records), None, {}
    manifest_cells = manifest_morphometry(records, table)
    by_manifest = with_roi_columns(grade(records), manifest_cells, any("hp" in c for c in manifest_cells))
    source = resolve_locator(locator_path, loaded.raw, checkpoint)
    if source is None:
        return by_manifest, None, {}
    locator = source.load()
    rows, cells, matched = located_records(records, locator)
    if not rows:
        raise InputError(f"{manifest}: the locator matched none of the split's {len(records)} vertebrae at IoU >= 0.5")
    by_locator = with_roi_columns(grade(rows), cells, morphometry=True)
    figures = {"coverage": {"matched": matched, "manifest_vertebrae": sum(r.get("roi") is not None for r in records),
                            "min_iou": MATCH_IOU},
               "locator": locator_figures(locator, manifest, split)}
    return by_manifest, by_locator, figures


def locator_figures(locator: Any, manifest: str | Path, split: str) -> dict[str, Any]:
    """``locate.evaluate`` figures of a loaded locator on the split (as ``evaluate_checkpoint`` gives them)."""
    table = load_manifest(manifest, check_files=False, check_rois=False).table  # validated by the grader's pass
    samples = load_samples(table, locator.levels, locator.input_size, locator.percentiles, [split])
    return {"split": split, **evaluate_locator(locator.model, samples, locator.threshold)}
