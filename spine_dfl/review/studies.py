"""The studies under review, read from a predictions table (``spine_dfl.predictions``) as ``score`` writes it.

One study is one scored image (rows with ``status`` ``ok``): its file, UIDs, orientation, shift flag
and the located (or ROI-file) vertebrae with box, level, grade, probabilities and the flags of the
level count (``level_anchored``, ``transitional``). Six points come from the table's ``sa_x .. ip_y``
columns where it has them; otherwise they are the ROI box's corners and edge midpoints
(``points_source`` = ``box``), for the reader to drag onto the endplates.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from spine_dfl.io.errors import InputError
from spine_dfl.io.rois import ROI_COLUMNS
from spine_dfl.io.vocabulary import POINT_COLUMNS
from spine_dfl.predictions import IMAGE_COLUMN, PRED_COLUMN, STATUS_OK, prob_columns, read_predictions

FLAG_COLUMNS = ("level_anchored", "transitional", "level_confidence", "locator_confidence", "roi_source",
                "morph_grade", "morph_kind")


class ReviewInputError(InputError):
    """What ``review`` was given cannot be reviewed (no predictions, no scored image); the message says why."""


@dataclass
class Vertebra:
    """One vertebra as the model saw it; ``key`` is unique within its study (``v0``, ``v1``, ...)."""

    key: str
    level: str
    pred: str
    prob: float
    probs: dict[str, float]
    box: list[float]
    points: list[list[float]]
    points_source: str  # 'model' (the table's six points) or 'box' (derived from the ROI)
    flags: dict[str, Any] = field(default_factory=dict)
    patches: list[dict[str, Any]] = field(default_factory=list)  # top patches of `spine-dfl explain` (attach_patches)


@dataclass
class Study:
    """One scored image and its vertebrae; ``id`` is its position in the table's order of images."""

    id: int
    image: str
    sop_instance_uid: str
    study_instance_uid: str
    patient_id: str
    orientation: str
    in_distribution: str
    shift_score: float | None
    vertebrae: list[Vertebra]

    def public(self) -> dict[str, Any]:
        """The study for the page: everything but the file path and patient id (no PHI in the browser's URLs)."""
        data = asdict(self)
        del data["image"], data["patient_id"]
        return data


def box_points(box: list[float]) -> list[list[float]]:
    """Six points (sa, sm, sp, ia, im, ip) on the box: the superior edge's left, middle and right, then the
    inferior edge's (anterior on the left, as on a canonical lateral film)."""
    x0, y0, x1, y1 = box
    xm = (x0 + x1) / 2
    return [[x0, y0], [xm, y0], [x1, y0], [x0, y1], [xm, y1], [x1, y1]]


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _text(row: pd.Series, column: str) -> str:
    value = row.get(column, "")
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)


def _vertebra(k: int, row: pd.Series, class_names: list[str]) -> Vertebra | None:
    box = [_number(row.get(c)) for c in ROI_COLUMNS]
    if any(v is None for v in box):
        return None  # a whole-image prediction has nothing to place on the film
    probs = {name: float(row[col]) for name, col in zip(class_names, prob_columns(class_names))}
    pred = str(row[PRED_COLUMN])
    points = [_number(row.get(c)) for c in POINT_COLUMNS]
    has_points = all(c in row.index for c in POINT_COLUMNS) and all(v is not None for v in points)
    flags = {c: (_number(row.get(c)) if c.endswith("confidence") else _text(row, c)) for c in FLAG_COLUMNS
             if c in row.index}
    return Vertebra(
        key=f"v{k}", level=_text(row, "vertebra"), pred=pred, prob=probs.get(pred, 0.0), probs=probs,
        box=[float(v) for v in box],  # type: ignore[arg-type]
        points=[[points[2 * i], points[2 * i + 1]] for i in range(6)] if has_points else box_points(box),  # type: ignore[list-item]
        points_source="model" if has_points else "box", flags=flags,
    )


def load_studies(predictions_csv: str | Path) -> tuple[list[Study], list[str]]:
    """The studies of a predictions table and its class names (in ``prob_`` column order).

    Failed files (``status`` not ``ok``) and whole-image rows are left out: there is nothing to review on
    them. ReviewInputError when the table has no class columns or no scored image with an ROI.
    """
    table, class_names = read_predictions(predictions_csv)
    if not class_names:
        raise ReviewInputError(f"{predictions_csv}: no prob_<class> columns: not a predictions table")
    if "status" in table.columns:
        table = table[table["status"].str.strip() == STATUS_OK]
    studies: list[Study] = []
    for image, rows in table.groupby(IMAGE_COLUMN, sort=False):
        vertebrae = [v for k, (_, row) in enumerate(rows.iterrows()) if (v := _vertebra(k, row, class_names))]
        if not vertebrae:
            continue
        first = rows.iloc[0]
        studies.append(Study(
            id=len(studies), image=str(image), sop_instance_uid=_text(first, "sop_instance_uid"),
            study_instance_uid=_text(first, "study_instance_uid"), patient_id=_text(first, "patient_id"),
            orientation=_text(first, "orientation"), in_distribution=_text(first, "in_distribution"),
            shift_score=_number(first.get("shift_score")), vertebrae=vertebrae,
        ))
    if not studies:
        raise ReviewInputError(f"{predictions_csv}: no scored image with vertebra ROIs to review")
    return studies, class_names


PATCH_FIELDS = ("rank", "class", "score", "x_min", "y_min", "x_max", "y_max")


def attach_patches(studies: list[Study], explain: str | Path) -> int:
    """Give each vertebra its top patches from a ``spine-dfl explain`` run on the same films (its
    ``patches.json``, or the folder holding it), matched by image and level; returns how many matched.
    ReviewInputError for a missing or malformed file."""
    path = Path(explain)
    path = path / "patches.json" if path.is_dir() else path
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(entries, list):
            raise TypeError("a list of samples expected")
        by_key = {(str(Path(e["image"]).resolve()), str(e.get("vertebra") or "")): e["boxes"] for e in entries}
    except FileNotFoundError:
        raise ReviewInputError(f"{path}: not found (give the output folder of `spine-dfl explain`)") from None
    except (ValueError, TypeError, KeyError) as exc:
        raise ReviewInputError(f"{path}: not a patches.json of `spine-dfl explain` ({exc})") from None
    matched = 0
    for study in studies:
        image = str(Path(study.image).resolve())
        for vertebra in study.vertebrae:
            boxes = by_key.get((image, vertebra.level))
            if boxes:
                vertebra.patches = [{k: box[k] for k in PATCH_FIELDS} for box in boxes]
                matched += 1
    return matched
