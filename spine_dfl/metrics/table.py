"""Validating the predictions table (``predictions.csv``) that the metrics are computed from.

The columns and the reader are ``spine_dfl.predictions``' (one definition for evaluate, score and
the report); this module checks what metrics need on top: labels, predictions and probabilities
on every row, and turns the table into arrays.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from spine_dfl.io import ROI_COLUMNS, normalize_level
from spine_dfl.io.errors import InputError
from spine_dfl.io.patients import patient_keys
from spine_dfl.predictions import (
    BRANCH_PRED_COLUMNS,
    BRANCH_PROB_PREFIXES,
    PROB_PREFIX,
    PredictionsError,
    read_predictions,
    table_classes,
)
from spine_dfl.predictions import row_names as _row_names
#: level name used for rows whose ``vertebra`` is empty or the column is absent.
MISSING_LEVEL = "(missing)"
#: a probability row may differ from summing to one by this much (CSV rounding) before it is an error.
PROB_SUM_TOLERANCE = 1e-2


class ReportError(InputError):
    """The predictions table cannot be evaluated; the message names what is wrong and where."""


@dataclass(frozen=True)
class PredictionArrays:
    """The validated table as arrays; n = number of rows, K = number of classes.

    y_true, y_pred: (n,) int64 class indices into ``classes``.
    probs: (n, K) float64 fused probabilities, as given (not renormalised).
    patient: (n,) str patient key (``patient_id``; ``"image:<image>"`` when empty; ``"row:<i>"`` when
    the image is empty too). level: (n,) str normalised vertebra level (``MISSING_LEVEL`` when empty).
    branch_pred / branch_probs: per available branch ("g", "p", "side") arrays of the same shapes.
    image: (n,) str image path as given. roi: (n, 4) float64 x_min, y_min, x_max, y_max in original
    pixels (NaN where absent).
    """

    classes: tuple[str, ...]
    y_true: np.ndarray
    y_pred: np.ndarray
    probs: np.ndarray
    patient: np.ndarray
    level: np.ndarray
    branch_pred: dict[str, np.ndarray]
    branch_probs: dict[str, np.ndarray]
    image: np.ndarray
    roi: np.ndarray


def _is_blank(values: pd.Series) -> np.ndarray:
    """(n,) bool: missing or whitespace-only cells."""
    return (values.isna() | values.astype(str).str.strip().eq("")).to_numpy()


def _prob_matrix(table: pd.DataFrame, prefix: str, classes: list[str], what: str) -> np.ndarray:
    """(n, K) float64 from ``<prefix><class>`` columns; errors for non-numbers, NaN, negatives, bad sums."""
    columns = [f"{prefix}{c}" for c in classes]
    try:
        matrix = table[columns].apply(pd.to_numeric, errors="raise").to_numpy(dtype=np.float64)
    except (ValueError, TypeError) as exc:
        raise ReportError(f"{what}: probability columns {columns} must be numbers ({exc})") from exc
    bad = ~np.isfinite(matrix).all(axis=1) | (matrix < 0).any(axis=1)
    if bad.any():
        raise ReportError(f"{what}: probabilities missing, infinite or negative in {_row_names(table, bad)}")
    off = np.abs(matrix.sum(axis=1) - 1.0) > PROB_SUM_TOLERANCE
    if off.any():
        raise ReportError(
            f"{what}: probabilities {columns} do not sum to 1 (tolerance {PROB_SUM_TOLERANCE}) in "
            f"{_row_names(table, off)}"
        )
    return matrix


def _class_indices(table: pd.DataFrame, column: str, classes: list[str], what: str) -> np.ndarray:
    """(n,) int64 index of each cell's class; errors name the unknown values and rows."""
    values = table[column]
    blank = _is_blank(values)
    if blank.any():
        raise ReportError(f"{what}: column '{column}' is empty in {_row_names(table, blank)}")
    text = values.astype(str).str.strip()
    lookup = {name: i for i, name in enumerate(classes)}
    codes = text.map(lookup)
    unknown = codes.isna().to_numpy()
    if unknown.any():
        names = sorted(set(text[unknown]))
        raise ReportError(
            f"{what}: column '{column}' has values {names} that are not classes {classes} "
            f"(in {_row_names(table, unknown)})"
        )
    return codes.to_numpy(dtype=np.int64)


def prepare(table: pd.DataFrame, classes: list[str] | None = None, source: str = "predictions") -> PredictionArrays:
    """Validate a predictions table and turn it into arrays.

    ``classes`` (checkpoint order) defaults to the ``prob_<class>`` column order; when given it must name
    exactly the classes that have ``prob_`` columns. Raises ReportError (naming ``source``) for an empty
    table, missing columns, classes that disagree, unknown or empty labels/preds, and bad probabilities.
    """
    if not isinstance(table, pd.DataFrame):
        raise ReportError(f"{source}: expected a pandas DataFrame, got {type(table).__name__}")
    if len(table) == 0:
        raise ReportError(f"{source}: the predictions table is empty (no rows to evaluate)")
    column_classes = table_classes(table)
    if not column_classes:
        raise ReportError(f"{source}: no '{PROB_PREFIX}<class>' columns; columns are {list(table.columns)}")
    if classes is None:
        classes = column_classes
    else:
        classes = [str(c) for c in classes]
        if len(set(classes)) != len(classes):
            raise ReportError(f"{source}: duplicate class names in {classes}")
        if set(classes) != set(column_classes):
            raise ReportError(
                f"{source}: classes {classes} disagree with the table's probability columns for {column_classes}"
            )
    if len(classes) < 2:
        raise ReportError(f"{source}: need at least two classes, got {classes}")
    missing = [c for c in ("label", "pred") if c not in table.columns]
    if missing:
        raise ReportError(f"{source}: missing required columns {missing}; columns are {list(table.columns)}")

    table = table.reset_index(drop=True)
    n = len(table)
    y_true = _class_indices(table, "label", classes, source)
    y_pred = _class_indices(table, "pred", classes, source)
    probs = _prob_matrix(table, PROB_PREFIX, classes, source)

    branch_pred: dict[str, np.ndarray] = {}
    branch_probs: dict[str, np.ndarray] = {}
    for branch, prefix in BRANCH_PROB_PREFIXES.items():
        present = [f"{prefix}{c}" for c in classes if f"{prefix}{c}" in table.columns]
        if not present:
            continue
        if len(present) != len(classes):
            absent = [f"{prefix}{c}" for c in classes if f"{prefix}{c}" not in table.columns]
            raise ReportError(f"{source}: branch '{branch}' has some probability columns but lacks {absent}")
        branch_probs[branch] = _prob_matrix(table, prefix, classes, source)
        pred_column = BRANCH_PRED_COLUMNS[branch]
        if pred_column in table.columns:
            branch_pred[branch] = _class_indices(table, pred_column, classes, source)
        else:  # the branch's prediction is its most probable class
            branch_pred[branch] = branch_probs[branch].argmax(axis=1)

    image = (table["image"].fillna("").astype(str).str.strip().to_numpy(dtype=object)
             if "image" in table.columns else np.full(n, "", dtype=object))
    patient = patient_keys(table).to_numpy(dtype=object)
    if "vertebra" in table.columns:
        blank = _is_blank(table["vertebra"])
        level = np.array(
            [MISSING_LEVEL if b else normalize_level(v) for v, b in zip(table["vertebra"], blank)], dtype=object
        )
    else:
        level = np.full(n, MISSING_LEVEL, dtype=object)
    roi = np.full((n, 4), np.nan)
    if all(c in table.columns for c in ROI_COLUMNS):
        roi = table[list(ROI_COLUMNS)].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
    return PredictionArrays(
        classes=tuple(classes), y_true=y_true, y_pred=y_pred, probs=probs, patient=patient, level=level,
        branch_pred=branch_pred, branch_probs=branch_probs, image=image, roi=roi,
    )


def load_predictions(path: str | Path) -> tuple[pd.DataFrame, list[str]]:
    """Read ``predictions.csv`` (``spine_dfl.predictions.read_predictions``) and validate it for a report;
    returns (table, classes in ``prob_`` column order). Raises ReportError naming the file for every
    problem the reader or ``prepare`` finds.
    """
    try:
        table, classes = read_predictions(path)
    except PredictionsError as exc:
        raise ReportError(str(exc)) from exc
    prepare(table, classes, source=str(path))  # validate now so errors name the file
    return table, classes
