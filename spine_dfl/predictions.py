"""The predictions table: one row per vertebra (or whole image), the hand-over from the model to the
report, the heatmaps and the DICOM output. `evaluate` and `score` both write it with these columns.

Columns, in this order (a group appears only where its writer knows it):

- ``image``: the input file as given (manifest path or scored file);
- ``status``, ``error`` (score): ``ok`` or ``error`` and why; a failed file has one row, no predictions;
- ``sop_instance_uid``, ``study_instance_uid`` (score), ``patient_id`` (evaluate; score with --keep-ids);
- ``vertebra``: level name, empty for a whole image;
- ``label`` (evaluate): the true class;
- ``pred`` and ``prob_<class>``: the fused prediction and its softmax, one column per class in
  checkpoint order (the class order *is* the order of the ``prob_`` columns);
- ``pred_g``, ``pred_p``, ``pred_side`` and ``g_prob_<class>``, ``p_prob_<class>``,
  ``side_prob_<class>`` (evaluate): each branch's prediction and softmax;
- ``x_min, y_min, x_max, y_max``: the ROI in original pixels, empty for a whole image;
- ``roi_source``, ``locator_confidence`` (ROI models): where the ROI came from (``file``: score's
  --rois, ``manifest``, ``locator``) and, for a located one, the locator's confidence (detection score
  times level confidence);
- ``shift_score``, ``in_distribution`` (score): the image's shift score (``engine.shift``: mean Mahalanobis
  distance of its vertebrae's grader features to the training split's) and ``yes``/``no`` (``no``: above the
  checkpoint's threshold, unlike the training images), the same on every row of the image; empty cells
  when the checkpoint has no training-distribution statistics;
- ``orientation`` (score): how the stored film was turned to canonical (head up, anterior left) for
  the models: ``as stored``, ``rot90``, ``flip``, ``flip+rot270``, ... (``io.orientation``); every
  box and point in the table is in the file's own pixels;
- ``level_confidence``, ``level_anchored`` (located vertebrae): the labelling's posterior of the
  level, and ``yes`` when the level was counted from an anchor the film shows (sacrum, C7/T1;
  ``locate.anchors``), ``no`` when the vertebrae carry relative names ``V1``, ``V2``, ... top to bottom;
  ``transitional``: transitional anatomy the count went through (``lumbarised S1 (L6)``), else empty;
- ``ha, hm, hp, height_unit, wedge_ratio, biconcave_ratio, crush_ratio, height_loss, morph_grade,
  morph_kind`` (where six points are known: manifest or locator): six-point morphometry
  (``locate.morphometry``); heights in ``height_unit`` ('detector mm', 'patient mm' or 'pixels'),
  ratios unitless, ``crush_ratio`` empty without an adjacent level; empty cells on rows without points;
  then the six points themselves, ``sa_x .. ip_y`` in the file's own pixels (the manifest's names).

Imports no torch: the report reads the table through `read_predictions`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from spine_dfl.io.errors import InputError
from spine_dfl.io.rois import ROI_COLUMNS
from spine_dfl.io.vocabulary import POINT_COLUMNS

IMAGE_COLUMN = "image"
STATUS_COLUMNS = ("status", "error")
STATUS_OK, STATUS_ERROR = "ok", "error"
PRED_COLUMN = "pred"
PROB_PREFIX = "prob_"
BRANCHES = ("g", "p", "side")
#: branch name -> prefix of its probability columns; the fused prediction uses the plain ``prob_`` ones.
BRANCH_PROB_PREFIXES: dict[str, str] = {b: f"{b}_{PROB_PREFIX}" for b in BRANCHES}
BRANCH_PRED_COLUMNS: dict[str, str] = {b: f"{PRED_COLUMN}_{b}" for b in BRANCHES}
ROI_SOURCE_COLUMNS = ("roi_source", "locator_confidence")
SHIFT_COLUMNS = ("shift_score", "in_distribution")
ORIENTATION_COLUMN = "orientation"  # how the stored film was turned to canonical (``io.orientation`` names)
LEVEL_COLUMNS = ("level_confidence", "level_anchored", "transitional")
MORPHOMETRY_COLUMNS = ("ha", "hm", "hp", "height_unit", "wedge_ratio", "biconcave_ratio", "crush_ratio",
                       "height_loss", "morph_grade", "morph_kind", *POINT_COLUMNS)
MORPHOMETRY_TEXT_COLUMNS = ("height_unit", "morph_grade", "morph_kind")
NUMERIC_EXTRA_COLUMNS = ("locator_confidence", "level_confidence", "shift_score",
                         *(c for c in MORPHOMETRY_COLUMNS if c not in MORPHOMETRY_TEXT_COLUMNS))


class PredictionsError(InputError):
    """A predictions file cannot be read; the message names the file, column and rows."""


def prob_columns(class_names: Sequence[str], branch: str | None = None) -> list[str]:
    """``prob_<class>`` (fused) or ``<branch>_prob_<class>`` for every class, in class order."""
    prefix = PROB_PREFIX if branch is None else BRANCH_PROB_PREFIXES[branch]
    return [f"{prefix}{name}" for name in class_names]


def table_classes(table: pd.DataFrame) -> list[str]:
    """Class names in the order of the ``prob_<class>`` columns."""
    return [str(c)[len(PROB_PREFIX):] for c in table.columns if str(c).startswith(PROB_PREFIX)]


def predictions_columns(
    class_names: Sequence[str], *, status: bool = False, study: bool = False, patient_id: bool = True,
    label: bool = False, branches: bool = False, roi_source: bool = False, morphometry: bool = False,
    orientation: bool = False, shift: bool = False,
) -> list[str]:
    """The column names, in order, of a table with the given groups (module doc)."""
    columns = [IMAGE_COLUMN]
    if status:
        columns += STATUS_COLUMNS
    columns.append("sop_instance_uid")
    if study:
        columns.append("study_instance_uid")
    if patient_id:
        columns.append("patient_id")
    columns.append("vertebra")
    if label:
        columns.append("label")
    columns += [PRED_COLUMN, *prob_columns(class_names)]
    if branches:
        columns += [BRANCH_PRED_COLUMNS[b] for b in BRANCHES]
        for branch in BRANCHES:
            columns += prob_columns(class_names, branch)
    columns += ROI_COLUMNS
    if roi_source:
        columns += ROI_SOURCE_COLUMNS
    if shift:
        columns += SHIFT_COLUMNS
    if orientation:
        columns.append(ORIENTATION_COLUMN)
    if morphometry:
        columns += LEVEL_COLUMNS
        columns += MORPHOMETRY_COLUMNS
    return columns


def morphometry_cells(measured: Any, points: np.ndarray) -> list[dict[str, Any]]:
    """Per vertebra, the morphometry columns' values of a ``locate.morphometry.Morphometry`` (floats, text;
    NaN where a ratio is undefined) and its six points ``points`` (N, 6, 2), (x, y) in the file's own
    pixels, as ``sa_x .. ip_y``: the points the heights were measured between."""
    h = measured.heights
    flat = np.asarray(points, dtype=np.float64).reshape(len(measured.grade), len(POINT_COLUMNS))
    return [
        {"ha": float(h.anterior[i]), "hm": float(h.middle[i]), "hp": float(h.posterior[i]), "height_unit": h.unit,
         "wedge_ratio": float(measured.wedge_ratio[i]), "biconcave_ratio": float(measured.biconcave_ratio[i]),
         "crush_ratio": float(measured.crush_ratio[i]), "height_loss": float(measured.height_loss[i]),
         "morph_grade": measured.grade[i], "morph_kind": measured.kind[i],
         **{column: float(value) for column, value in zip(POINT_COLUMNS, flat[i])}}
        for i in range(len(measured.grade))
    ]


def build_predictions(
    rows: Sequence[Mapping[str, Any]],
    probs: np.ndarray,
    class_names: Sequence[str],
    branch_probs: Mapping[str, np.ndarray] | None = None,
    *, label: bool = True, roi_source: bool = False, morphometry: bool = False,
) -> pd.DataFrame:
    """The table of ``rows`` (dicts with ``image``, ``vertebra``, ``patient_id``, ``sop_instance_uid``,
    ``label`` and ``roi`` = (x_min, y_min, x_max, y_max) or None) and their probabilities.

    probs: (n, M) fused softmax; branch_probs: ``{"g"|"p"|"side": (n, M)}`` or None. Text cells that
    are missing become ""; an absent ROI becomes NaN. With ``roi_source``/``morphometry`` the rows also
    give those columns' values by name (absent: empty text, NaN numbers).
    """
    names = np.asarray(class_names, dtype=object)
    branch_probs = dict(branch_probs or {})
    columns = predictions_columns(class_names, label=label, branches=bool(branch_probs), roi_source=roi_source,
                                  morphometry=morphometry)
    data: dict[str, Any] = {IMAGE_COLUMN: [str(r["image"]) for r in rows]}
    for key in ("sop_instance_uid", "patient_id", "vertebra", *(("label",) if label else ())):
        data[key] = [str(r.get(key) or "") for r in rows]
    data[PRED_COLUMN] = names[probs.argmax(axis=1)] if len(rows) else []
    data.update(zip(prob_columns(class_names), probs.T))
    for branch, values in branch_probs.items():
        data[BRANCH_PRED_COLUMNS[branch]] = names[values.argmax(axis=1)] if len(rows) else []
        data.update(zip(prob_columns(class_names, branch), values.T))
    for k, column in enumerate(ROI_COLUMNS):
        data[column] = [np.nan if r.get("roi") is None else r["roi"][k] for r in rows]
    for column in (*(ROI_SOURCE_COLUMNS if roi_source else ()), *(MORPHOMETRY_COLUMNS if morphometry else ())):
        if column in NUMERIC_EXTRA_COLUMNS:
            data[column] = np.array([_number(r.get(column)) for r in rows], dtype=np.float64)
        else:
            data[column] = [str(r.get(column) or "") for r in rows]
    return pd.DataFrame(data, columns=columns)


def text_rows(
    columns: Sequence[str], fields: Mapping[str, Any], vertebrae: Sequence[str],
    probs: np.ndarray | None, rois: Sequence[Sequence[float] | None], class_names: Sequence[str],
    extras: Sequence[Mapping[str, Any]] | None = None,
) -> list[list[str]]:
    """CSV cells, in ``columns`` order, of one file's rows (streamed by score).

    fields: the per-file cells (``image``, ``status``, ``error``, the UIDs, ``patient_id``).
    probs: (n, M) fused softmax for the n ``vertebrae`` with their ``rois``; None for a failed file,
    which gives one row with empty prediction cells. Probabilities are written with 6 decimals.
    extras: per row, more cells by column name (``roi_source``, morphometry); numbers with 6 digits.
    """
    if probs is None:
        return [[_cell(fields.get(c)) for c in columns]]
    prob_index = {name: j for j, name in enumerate(prob_columns(class_names))}
    roi_index = {name: k for k, name in enumerate(ROI_COLUMNS)}
    rows = []
    for j, (row_probs, vertebra, roi) in enumerate(zip(probs, vertebrae, rois)):
        cells = {**fields, **(extras[j] if extras else {}), "vertebra": vertebra,
                 PRED_COLUMN: class_names[int(row_probs.argmax())]}
        row = []
        for column in columns:
            if column in prob_index:
                row.append(f"{row_probs[prob_index[column]]:.6f}")
            elif column in roi_index:
                row.append("" if roi is None else f"{roi[roi_index[column]]:g}")
            else:
                row.append(_cell(cells.get(column)))
        rows.append(row)
    return rows


def _number(value: Any) -> float:
    return np.nan if value is None or value == "" else float(value)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}" if np.isfinite(value) else ""
    return "" if value is None else str(value)


def row_names(table: pd.DataFrame, mask: np.ndarray, limit: int = 5) -> str:
    """Human-readable list of the first rows selected by ``mask`` (index and image when present)."""
    index = table.index[mask]
    names = []
    for idx in index[:limit]:
        image = table.at[idx, IMAGE_COLUMN] if IMAGE_COLUMN in table.columns else None
        names.append(f"row {idx}" + (f" ({image})" if isinstance(image, str) and image else ""))
    more = f" and {len(index) - limit} more" if len(index) > limit else ""
    return ", ".join(names) + more


def read_predictions(path: str | Path) -> tuple[pd.DataFrame, list[str]]:
    """Read a predictions CSV; returns (table, classes in ``prob_`` column order).

    Text columns stay text (a class or patient called ``"NA"`` or ``"001"`` stays as written);
    probability columns become float and must be numbers on every row that has a prediction (rows of
    failed files, ``status`` not ``ok``, may be empty); ROI columns become float, empty = NaN.
    Raises PredictionsError for a missing or unreadable file and for non-numeric probabilities.
    """
    path = Path(path)
    if not path.is_file():
        raise PredictionsError(f"{path}: predictions file not found")
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise PredictionsError(f"{path}: cannot read the predictions table ({exc})") from exc
    predicted = np.ones(len(table), dtype=bool)
    if "status" in table.columns:
        predicted = (table["status"].str.strip() == STATUS_OK).to_numpy()
    prefixes = (PROB_PREFIX, *BRANCH_PROB_PREFIXES.values())
    for column in [c for c in table.columns if str(c).startswith(prefixes)]:
        converted = pd.to_numeric(table[column].str.strip(), errors="coerce")
        bad = converted.isna().to_numpy() & predicted
        if bad.any():
            raise PredictionsError(f"{path}: column '{column}' is not a number in {row_names(table, bad)}")
        table[column] = converted.astype(np.float64)
    for column in (*ROI_COLUMNS, *NUMERIC_EXTRA_COLUMNS):
        if column in table.columns:
            table[column] = pd.to_numeric(table[column].str.strip(), errors="coerce")
    return table, table_classes(table)
