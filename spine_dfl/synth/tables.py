"""The cohort's tables: manifest.csv, rois.csv, vertebrae.csv and cohort.json.

``manifest.csv``   one row per labelled vertebra: image, label, vertebra, patient_id, split,
                   x_min, y_min, x_max, y_max (ROI in original pixels, x = column, y = row,
                   max exclusive): the vertebral body box padded ~7 % per side and jittered
                   +-4.5 % like a localiser, always holding the whole body; then the six
                   morphometry points sa_x, sa_y, sm_x, ..., ip_y (``POINT_COLUMNS``).
``rois.csv``       the same ROIs keyed by sop_instance_uid, without labels (scoring input).
``vertebrae.csv``  ground truth per vertebra (shape, height loss, heights in mm, body
                   centre/angle in pixels, tight body box); then the fracture ``kind``
                   (wedge, biconcave, crush, none: the same as ``shape``), the
                   ``deformed_part`` (anterior body, central endplates, whole body, or empty),
                   the body's four corners corner_sa_x .. corner_ia_y, the six points, and
                   ``body_polygon`` and ``deformed_polygon`` (empty when not fractured) as
                   JSON lists of [x, y]; not needed for training.
``cohort.json``    summary: counts per class, split and shape, seed, generator version, and the
                   acquisition ``style`` (its knobs) when it is not the default.

Every point is (x, y) = (column, row) in original pixels, continuous (pixel (row r, col c)
covers [c, c+1) x [r, r+1)), written to 0.01 px; ``landmarks`` says exactly where each lies.
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from spine_dfl.atomic import atomic_output, atomic_write_text
from spine_dfl.data.splits import SPLITS
from spine_dfl.io.rois import ROI_COLUMNS, ROI_KEY_COLUMNS
from spine_dfl.io.vocabulary import POINT_COLUMNS
from spine_dfl.synth.anatomy import CLASS_NAMES, LABELLED_LEVELS, SHAPES, SYNTH_VERSION
from spine_dfl.synth.dicom import SYNTAX_NAMES
from spine_dfl.synth.landmarks import CORNER_NAMES, DEFORMED_PARTS, body_corners, body_outline, deformed_outline, six_points
from spine_dfl.synth.records import CohortSummary, PatientRecord
from spine_dfl.synth.style import DEFAULT_STYLE, SynthStyle
from spine_dfl.synth.truth import VertebraTruth

MANIFEST_NAME, ROIS_NAME, VERTEBRAE_NAME, COHORT_JSON_NAME = "manifest.csv", "rois.csv", "vertebrae.csv", "cohort.json"
TABLE_NAMES: tuple[str, ...] = (MANIFEST_NAME, ROIS_NAME, VERTEBRAE_NAME, COHORT_JSON_NAME)

MANIFEST_COLUMNS: tuple[str, ...] = ("image", "label", "vertebra", "patient_id", "split", *ROI_COLUMNS, *POINT_COLUMNS)
ROIS_COLUMNS: tuple[str, ...] = (*ROI_KEY_COLUMNS, "vertebra", *ROI_COLUMNS)
CORNER_COLUMNS: tuple[str, ...] = tuple(f"corner_{name}_{axis}" for name in CORNER_NAMES for axis in ("x", "y"))
VERTEBRAE_COLUMNS: tuple[str, ...] = (
    "patient_id", "image", "sop_instance_uid", "vertebra", "label", "shape", "height_loss",
    "anterior_height_mm", "middle_height_mm", "posterior_height_mm", "reference_height_mm", "depth_mm",
    "centre_x", "centre_y", "angle_deg", "mm_per_px", "body_x_min", "body_y_min", "body_x_max", "body_y_max",
    "kind", "deformed_part", *CORNER_COLUMNS, *POINT_COLUMNS, "body_polygon", "deformed_polygon",
)


def write_tables(
    out: Path, seed: int, rows: int, cols: int, probs: dict[str, float], fractions: tuple[float, ...],
    compress: bool, records: tuple[PatientRecord, ...], style: SynthStyle = DEFAULT_STYLE,
) -> CohortSummary:
    """Write the four tables into ``out`` (each atomically) and return the cohort's summary."""
    manifest_path, rois_path = out / MANIFEST_NAME, out / ROIS_NAME
    vertebrae_path, json_path = out / VERTEBRAE_NAME, out / COHORT_JSON_NAME
    points = {(p.patient_id, v.level): _point_cells(six_points(v).values()) for p in records for v in p.vertebrae}
    _write_csv(manifest_path, MANIFEST_COLUMNS, (
        [p.image, v.label, v.level, p.patient_id, p.split, *v.roi, *points[p.patient_id, v.level]]
        for p in records for v in p.vertebrae
    ))
    _write_csv(rois_path, ROIS_COLUMNS, (
        [p.sop_instance_uid, p.image, v.level, *v.roi] for p in records for v in p.vertebrae
    ))
    _write_csv(vertebrae_path, VERTEBRAE_COLUMNS, (
        [
            p.patient_id, p.image, p.sop_instance_uid, v.level, v.label, v.shape, f"{v.height_loss:.4f}",
            f"{v.anterior_height_mm:.3f}", f"{v.middle_height_mm:.3f}", f"{v.posterior_height_mm:.3f}",
            f"{v.reference_height_mm:.3f}", f"{v.body.depth_mm:.3f}", f"{v.centre_x:.3f}", f"{v.centre_y:.3f}",
            f"{v.angle_deg:.3f}", f"{v.mm_per_px:.5f}", *v.box, *_lesion_cells(v), *points[p.patient_id, v.level],
            _polygon_cell(body_outline(v)), _polygon_cell(deformed_outline(v)),
        ]
        for p in records for v in p.vertebrae
    ))
    summary = _summary(seed, rows, cols, probs, fractions, compress, records)
    if style != DEFAULT_STYLE:  # absent = default, so a default cohort is byte-identical to earlier versions
        summary["style"] = style.as_dict()
    atomic_write_text(json_path, json.dumps(summary, indent=2) + "\n")
    return CohortSummary(
        out_dir=out, seed=seed, manifest_path=manifest_path, rois_path=rois_path, vertebrae_path=vertebrae_path,
        cohort_json_path=json_path, patients=records, summary=summary,
    )


def _point_cells(points: Iterable[tuple[float, float]]) -> list[str]:
    return [f"{c:.2f}" for point in points for c in point]


def _polygon_cell(polygon: np.ndarray | None) -> str:
    """A polygon as a JSON list of [x, y] (0.01 px); "" for None."""
    if polygon is None:
        return ""
    return json.dumps([[round(float(x), 2), round(float(y), 2)] for x, y in polygon], separators=(",", ":"))


def _lesion_cells(v: VertebraTruth) -> list[str]:
    """kind, deformed_part and the four body corners."""
    return [v.shape, DEFORMED_PARTS.get(v.shape, ""), *_point_cells(body_corners(v).values())]


def _write_csv(path: Path, columns: tuple[str, ...], rows: Iterable[Iterable[object]]) -> None:
    with atomic_output(path, "w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows(rows)


def _summary(seed: int, rows: int, cols: int, probs: dict[str, float], fractions: tuple[float, ...],
             compress: bool, records: tuple[PatientRecord, ...]) -> dict[str, Any]:
    """The content of cohort.json."""
    labels = [v.label for p in records for v in p.vertebrae]
    return {
        "generator": "spine-dfl synth",
        "generator_version": SYNTH_VERSION,
        "seed": seed,
        "patients": len(records),
        "images": len(records),
        "vertebrae": len(labels),
        "rows": rows,
        "cols": cols,
        "levels": list(LABELLED_LEVELS),
        "class_names": list(CLASS_NAMES),
        "grade_probabilities": {k: round(v, 6) for k, v in probs.items()},
        "split_fractions": list(fractions),
        "compress": compress,
        "class_counts": {c: labels.count(c) for c in CLASS_NAMES},
        "split_patients": {s: sum(p.split == s for p in records) for s in SPLITS},
        "split_class_counts": {
            s: {c: sum(v.label == c for p in records if p.split == s for v in p.vertebrae) for c in CLASS_NAMES}
            for s in SPLITS
        },
        "shape_counts": {
            g: {sh: sum(v.label == g and v.shape == sh for p in records for v in p.vertebrae) for sh in SHAPES}
            for g in CLASS_NAMES[1:]
        },
        "transfer_syntaxes": dict(sorted(Counter(SYNTAX_NAMES[p.transfer_syntax] for p in records).items())),
        "photometric": dict(sorted(Counter(p.photometric for p in records).items())),
        "modality": dict(sorted(Counter(p.modality for p in records).items())),
        "files": {"images": "images", "manifest": MANIFEST_NAME, "rois": ROIS_NAME, "vertebrae": VERTEBRAE_NAME},
    }
