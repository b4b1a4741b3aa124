"""Manifest CSV: loading and validation (splits: ``data.splits``; counts: ``data.summary``).

A manifest is the training and evaluation contract: one row per sample (normally one
vertebra of one radiograph). Columns (names are case-insensitive, surrounding spaces
ignored; unknown columns are kept as text and passed through):

====================  ========  ==========================================================
column                required  meaning
====================  ========  ==========================================================
image                 yes       path of the image file; relative paths are relative to the
                                manifest's folder
label                 yes*      class name, e.g. a Genant grade (``normal``, ``mild``,
                                ``moderate``, ``severe``)
vertebra              no        level such as ``T12`` or ``L1`` (normalised to upper case)
patient_id            no        patient key; without it every image is its own patient
split                 no        ``train``, ``val`` or ``test`` (case-insensitive)
x_min,y_min,          no        ROI in original-image pixels, x = column, y = row, the max
x_max,y_max                     edges exclusive (a box ``[x_min, x_max) x [y_min, y_max)``);
                                all four columns or none; a row with all four cells empty is
                                a whole-image sample
====================  ========  ==========================================================

(*) ``require_labels=False`` accepts a missing label column or empty labels (scoring).

Row numbers in messages are 1-based *data* row numbers: row 1 is the first line after
the header (line 2 of the file); every message also gives the file line.
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from spine_dfl.data import landmarks
from spine_dfl.data.splits import SPLITS, patient_keys
from spine_dfl.data.summary import format_summary, summarize
from spine_dfl.io import GENANT_GRADES, ROI_COLUMNS, normalize_level
from spine_dfl.io.errors import InputError

REQUIRED_COLUMNS: tuple[str, ...] = ("image", "label")
OPTIONAL_COLUMNS: tuple[str, ...] = ("vertebra", "patient_id", "split")

SizeReader = Callable[[str], "tuple[int, int] | str"]

__all__ = [
    "OPTIONAL_COLUMNS", "REQUIRED_COLUMNS", "ImageSizeReader", "Manifest", "ManifestError", "class_order",
    "load_manifest", "validate_manifest",
]


class ManifestError(InputError):
    """A manifest has one or more problems; ``errors`` lists every one of them.

    Each message names the manifest file, the row (1-based data row and file line) and
    the column, e.g. ``manifest.csv: row 3 (line 4), column 'split': unknown split 'tst'``.
    """

    def __init__(self, path: str | Path, errors: Sequence[str]) -> None:
        self.path = str(path)
        self.errors: list[str] = list(errors)
        shown = "\n  ".join(self.errors[:20])
        more = f"\n  ... and {len(self.errors) - 20} more" if len(self.errors) > 20 else ""
        super().__init__(f"{len(self.errors)} error(s) in manifest {path}:\n  {shown}{more}")


@dataclass
class Manifest:
    """A validated manifest.

    table: one row per sample with columns ``row`` (1-based data row number), ``image``
        (absolute path str), ``label`` (str, "" when unknown), ``vertebra`` (str, "" when
        absent), ``patient_id`` (str, "" when absent), ``split`` (only when ``has_split``),
        ``x_min, y_min, x_max, y_max`` (float original pixels, NaN for whole-image rows or
        when the manifest has no ROI columns), plus any extra columns as text.
    class_names: class order (label index = position); see :func:`class_order`.
    """

    table: pd.DataFrame
    class_names: list[str]
    has_roi: bool
    has_split: bool
    path: Path
    has_vertebra: bool = False
    has_patient_id: bool = False
    extra_columns: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- helpers
def _where(path: Path, row: int | None, column: str | Sequence[str]) -> str:
    cols = column if isinstance(column, str) else ", ".join(column)
    col_text = f"column '{cols}'" if isinstance(column, str) else f"columns {cols}"
    if row is None:
        return f"{path}: header (line 1), {col_text}"
    return f"{path}: row {row} (line {row + 1}), {col_text}"


def _row_of(path: Path, message: str) -> int:
    """Row number a message of :func:`_where` refers to (0 for the header), to sort messages by row."""
    rest = message[len(str(path)) + 2:] if message.startswith(f"{path}: ") else message
    if rest.startswith("row "):
        number = rest[4:].split(" ", 1)[0]
        if number.isdigit():
            return int(number)
    return 0


def _rows_text(rows: Iterable[int]) -> str:
    rows = sorted(rows)
    shown = ", ".join(str(r) for r in rows[:10])
    return ("row " if len(rows) == 1 else "rows ") + shown + (f" and {len(rows) - 10} more" if len(rows) > 10 else "")


def class_order(labels: Iterable[str]) -> list[str]:
    """Class names in a stable, meaningful order.

    - all labels Genant grades (case-insensitive): severity order normal, mild, moderate,
      severe (only the grades present);
    - all labels integers (e.g. Genant 0-3): numeric order;
    - otherwise: sorted alphabetically (independent of row order, so two manifests with the
      same classes agree).
    Empty labels (unknown) are ignored.
    """
    present = {str(x) for x in labels if str(x) != ""}
    lowered = {x.lower() for x in present}
    if present and lowered <= set(GENANT_GRADES) and len(lowered) == len(present):
        return [g for g in GENANT_GRADES if g in lowered]
    try:
        return sorted(present, key=lambda x: (int(x), x))
    except ValueError:
        return sorted(present)


def _canonical_labels(labels: pd.Series) -> pd.Series:
    """Genant grades written in any case become lower case; other labels are kept as written."""
    present = {x for x in labels if x != ""}
    if present and {x.lower() for x in present} <= set(GENANT_GRADES):
        return labels.str.lower()
    return labels


class ImageSizeReader:
    """(rows, cols) of image files from their headers alone (``spine_dfl.io.image_size``), cached per path.

    Unreadable files give the reader's reason as a string.
    """

    def __init__(self) -> None:
        self._cache: dict[str, tuple[int, int] | str] = {}

    def __call__(self, path: str) -> tuple[int, int] | str:
        """(rows, cols), or a string saying why the size could not be read."""
        if path not in self._cache:
            self._cache[path] = self._read(path)
        return self._cache[path]

    @staticmethod
    def _read(path: str) -> tuple[int, int] | str:
        from spine_dfl.io import ImageReadError, image_size

        try:
            return image_size(path)
        except ImageReadError as exc:
            return f"unreadable image: {exc}"
        except Exception as exc:  # noqa: BLE001 - a reader bug must still point at the row
            return f"unreadable image ({type(exc).__name__}: {exc})"


# --------------------------------------------------------------------------- loading
def _read_csv(path: Path) -> pd.DataFrame:
    try:
        # Everything as text: patient ids such as 007 keep their zeros, "NA" stays a label.
        return pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[], encoding="utf-8-sig",
                           skipinitialspace=True)
    except FileNotFoundError as exc:
        raise ManifestError(path, [f"{path}: manifest file not found"]) from exc
    except pd.errors.EmptyDataError as exc:
        raise ManifestError(path, [f"{path}: manifest is empty (no header line)"]) from exc
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise ManifestError(path, [f"{path}: not a readable CSV file ({exc})"]) from exc


@dataclass
class _Parse:
    """A manifest being validated: the text table, its data row numbers and every error so far."""

    path: Path
    raw: pd.DataFrame
    table: pd.DataFrame
    rows: np.ndarray
    errors: list[str] = field(default_factory=list)
    _is_file: dict[str, bool] = field(default_factory=dict)

    def error(self, row: int | None, column: str | Sequence[str], message: str) -> None:
        self.errors.append(f"{_where(self.path, row, column)}: {message}")

    def is_file(self, image: str) -> bool:
        """Whether ``image`` is an existing file; asked once per distinct image (many rows share one)."""
        known = self._is_file.get(image)
        if known is None:
            known = self._is_file[image] = Path(image).is_file()
        return known


def _header_errors(path: Path, columns: list[str], require_labels: bool) -> list[str]:
    """Problems of the header alone: duplicated, missing required and incomplete ROI columns."""
    errors = [f"{_where(path, None, c)}: column appears more than once"
              for c in sorted({c for c in columns if columns.count(c) > 1})]
    for col in (c for c in REQUIRED_COLUMNS if c != "label" or require_labels):
        if col not in columns:
            errors.append(f"{_where(path, None, col)}: missing required column (columns found: "
                          f"{', '.join(columns) or 'none'})")
    roi_present = [c for c in ROI_COLUMNS if c in columns]
    if roi_present and len(roi_present) < len(ROI_COLUMNS):
        missing = [c for c in ROI_COLUMNS if c not in columns]
        errors.append(f"{_where(path, None, missing)}: ROI columns must come as all four of "
                      f"{', '.join(ROI_COLUMNS)} (found only {', '.join(roi_present)})")
    return errors


def _text_table(raw: pd.DataFrame) -> pd.DataFrame:
    """Stripped text cells plus ``row``, ``label``, normalised ``vertebra`` and ``patient_id`` columns."""
    table = pd.DataFrame(index=raw.index)
    table["row"] = np.arange(1, len(raw) + 1)
    for col in raw.columns:
        table[col] = raw[col].astype(str).str.strip()
    if "label" not in table.columns:
        table["label"] = ""
    table["vertebra"] = table["vertebra"].map(normalize_level) if "vertebra" in raw.columns else ""
    if "patient_id" not in raw.columns:
        table["patient_id"] = ""
    return table


def _resolve_images(p: _Parse, check_files: bool) -> None:
    """Image paths relative to the manifest's folder, absolute and normalised (symlinks kept: results
    name the files as the user does); with ``check_files`` every file must exist."""
    resolved: list[str] = []
    for row, text in zip(p.rows, p.table["image"]):
        if text == "":
            p.error(row, "image", "empty image path")
            resolved.append("")
            continue
        image = Path(text).expanduser()
        image = image if image.is_absolute() else p.path.parent / image
        resolved.append(os.path.normpath(os.path.abspath(image)))
    p.table["image"] = resolved
    if check_files:
        for row, text, image in zip(p.rows, p.raw["image"], resolved):
            if image and not p.is_file(image):
                what = "is a folder, not a file" if Path(image).is_dir() else "file not found"
                p.error(row, "image", f"{what}: {text!r} (resolved to {image})")


def _check_labels(p: _Parse, require_labels: bool, class_names: Sequence[str] | None) -> list[str]:
    """Canonical labels, empty-label and unknown-label errors; returns the class order."""
    p.table["label"] = _canonical_labels(p.table["label"])
    if require_labels:
        for row in p.rows[(p.table["label"] == "").to_numpy()]:
            p.error(row, "label", "empty label")
    if class_names is None:
        return class_order(p.table["label"])
    known = set(class_names)
    for row, label in zip(p.rows, p.table["label"]):
        if label != "" and label not in known:
            p.error(row, "label", f"label {label!r} is not one of the classes {', '.join(class_names)}")
    return list(class_names)


def _check_splits(p: _Parse) -> None:
    p.table["split"] = p.table["split"].str.lower()
    for row, value in zip(p.rows, p.table["split"]):
        if value not in SPLITS:
            shown = "empty split" if value == "" else f"unknown split {value!r}"
            p.error(row, "split", f"{shown} (allowed: {', '.join(SPLITS)})")


def _roi_row_ok(p: _Parse, row: int, texts: Sequence[str], values: np.ndarray) -> bool:
    """Errors of one row's ROI cells; True when they give a usable box (all four empty: whole image)."""
    empty = [c for c, t in zip(ROI_COLUMNS, texts) if t == ""]
    if len(empty) == 4:
        return False
    if empty:
        p.error(row, empty, f"partial ROI: {', '.join(empty)} empty while the other ROI cells are filled "
                            f"(give all four or none)")
        return False
    bad = [c for c, v in zip(ROI_COLUMNS, values) if not math.isfinite(v)]
    for c in bad:
        p.error(row, c, f"ROI value {texts[ROI_COLUMNS.index(c)]!r} is not a finite number")
    if bad:
        return False
    x0, y0, x1, y1 = values
    if x1 <= x0:
        p.error(row, "x_max", f"inverted ROI: x_max {x1:g} <= x_min {x0:g}")
    if y1 <= y0:
        p.error(row, "y_max", f"inverted ROI: y_max {y1:g} <= y_min {y0:g}")
    return bool(x1 > x0 and y1 > y0)


def _parse_rois(p: _Parse) -> tuple[np.ndarray, np.ndarray]:
    """ROI cells -> (N, 4) float boxes (NaN where unusable) and which rows have a usable box."""
    values = np.full((len(p.table), 4), np.nan)
    for j, col in enumerate(ROI_COLUMNS):
        values[:, j] = pd.to_numeric(p.table[col], errors="coerce").to_numpy(dtype=np.float64)
    texts = p.table[list(ROI_COLUMNS)].to_numpy()
    roi_ok = np.array([_roi_row_ok(p, row, texts[i], values[i]) for i, row in enumerate(p.rows)], dtype=bool)
    for j, col in enumerate(ROI_COLUMNS):
        p.table[col] = values[:, j]
    p.table.loc[~roi_ok, list(ROI_COLUMNS)] = np.nan
    return values, roi_ok


def _check_rois_inside(p: _Parse, values: np.ndarray, roi_ok: np.ndarray, sizes: SizeReader) -> None:
    """Every usable ROI lies inside its image (sizes from the image headers)."""
    for i, (row, image) in enumerate(zip(p.rows, p.table["image"].tolist())):
        if not roi_ok[i] or not image or not p.is_file(image):
            continue
        size = sizes(image)
        if isinstance(size, str):
            p.error(row, "image", size)
            continue
        n_rows, n_cols = size
        x0, y0, x1, y1 = values[i]
        for col, value, high in (("x_min", x0, n_cols), ("y_min", y0, n_rows), ("x_max", x1, n_cols),
                                 ("y_max", y1, n_rows)):
            if value < 0 or value > high:
                axis = "columns" if col.startswith("x") else "rows"
                p.error(row, col, f"ROI outside the image: {col} = {value:g} but the image has {high} {axis} "
                                  f"(allowed 0..{high}; {n_rows} rows x {n_cols} columns)")


def _check_duplicates(p: _Parse) -> None:
    """No two rows with the same image, vertebra and ROI; one ROI per vertebra of an image."""
    roi_values = p.table[list(ROI_COLUMNS)].to_numpy(dtype=np.float64)
    first_seen: dict[tuple[Any, ...], int] = {}
    vertebra_seen: dict[tuple[str, str], int] = {}
    for row, image, vertebra, values in zip(p.rows, p.table["image"].tolist(), p.table["vertebra"].tolist(),
                                            roi_values.tolist()):
        if not image:
            continue
        roi = tuple(None if math.isnan(v) else round(v, 6) for v in values)
        key = (image, vertebra, roi)
        if key in first_seen:
            p.error(row, ["image", "vertebra", *ROI_COLUMNS],
                    f"duplicate row: same image, vertebra and ROI as row {first_seen[key]}")
            continue
        first_seen[key] = row
        if vertebra:
            seen = vertebra_seen.get((image, vertebra))
            if seen is not None:
                p.error(row, "vertebra", f"vertebra {vertebra} of this image already appears in row {seen} "
                                         f"with another ROI")
            else:
                vertebra_seen[(image, vertebra)] = row


def _check_one_patient_per_image(p: _Parse) -> None:
    by_image: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    for row, image, pid in zip(p.rows, p.table["image"], p.table["patient_id"]):
        if image:
            by_image[image][pid].append(row)
    for image, pids in by_image.items():
        if len(pids) < 2:
            continue
        ordered = sorted(pids.items(), key=lambda kv: (-len(kv[1]), kv[1][0]))
        main_pid = ordered[0][0]
        for pid, pid_rows in ordered[1:]:
            for row in pid_rows:
                p.error(row, "patient_id", f"image {Path(image).name} is given patient {pid!r} here but "
                                           f"{main_pid!r} in {_rows_text(pids[main_pid])}")


def _check_one_split_per_patient(p: _Parse) -> None:
    groups: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    for row, key, split in zip(p.rows, patient_keys(p.table), p.table["split"]):
        if split in SPLITS:
            groups[key][split].append(row)
    for key, splits in groups.items():
        if len(splits) < 2:
            continue
        who = f"patient {key!r}" if not key.startswith("image:") else f"image {Path(key[6:]).name} (no patient_id)"
        ordered = sorted(splits.items(), key=lambda kv: (-len(kv[1]), SPLITS.index(kv[0])))
        main_split, main_rows = ordered[0]
        for split, split_rows in ordered[1:]:
            for row in split_rows:
                p.error(row, "split", f"{who} is in split {split!r} here but in {main_split!r} in "
                                      f"{_rows_text(main_rows)} (one patient must stay in one split)")


def _load(
    path: str | Path,
    check_files: bool = True,
    check_rois: bool = True,
    require_labels: bool = True,
    class_names: Sequence[str] | None = None,
    size_reader: SizeReader | None = None,
) -> tuple[Manifest | None, list[str]]:
    """Parse and validate; returns the manifest (None when unusable) and every error found.

    The checks run in a fixed order, and the errors are then sorted by row (stably), so one row's
    problems are listed together in check order.
    """
    path = Path(path).expanduser().resolve()
    raw = _read_csv(path)
    raw.columns = [str(c).strip().lower() for c in raw.columns]
    header_errors = _header_errors(path, list(raw.columns), require_labels)
    header_errors += [f"{path}: {e}" for e in [landmarks.check_point_header(list(raw.columns))] if e]
    if header_errors:
        return None, header_errors
    if raw.empty:
        return None, [f"{path}: manifest has a header but no data rows"]
    has = {c: c in raw.columns for c in ("vertebra", "patient_id", "split")}
    has_roi = all(c in raw.columns for c in ROI_COLUMNS)
    table = _text_table(raw)
    p = _Parse(path, raw, table, table["row"].to_numpy())
    _resolve_images(p, check_files)
    names = _check_labels(p, require_labels, class_names)
    if has["split"]:
        _check_splits(p)
    sizes = size_reader or ImageSizeReader()
    if has_roi:
        values, roi_ok = _parse_rois(p)
        if check_rois:
            _check_rois_inside(p, values, roi_ok, sizes)
    else:
        for col in ROI_COLUMNS:
            p.table[col] = np.nan
    if landmarks.POINT_COLUMNS[0] in raw.columns:  # all twelve, by the header check
        points, images = landmarks.parse_points(p.table, p.rows, p.error), p.table["image"].tolist()
        if check_rois:
            landmarks.check_inside(points, images, p.rows, p.error, sizes)
        landmarks.check_order(points, images, p.table["vertebra"].tolist(), p.rows, p.error)
    _check_duplicates(p)
    if has["patient_id"]:
        _check_one_patient_per_image(p)
    if has["split"]:
        _check_one_split_per_patient(p)
    errors = sorted(p.errors, key=lambda message: _row_of(path, message))
    extra = [c for c in raw.columns if c not in (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS, *ROI_COLUMNS)]
    ordered_cols = ["row", "image", "label", "vertebra", "patient_id", *(["split"] if has["split"] else []),
                    *ROI_COLUMNS, *extra]
    manifest = Manifest(table=p.table[ordered_cols].reset_index(drop=True), class_names=names, has_roi=has_roi,
                        has_split=has["split"], path=path, has_vertebra=has["vertebra"],
                        has_patient_id=has["patient_id"], extra_columns=extra)
    return manifest, errors


def load_manifest(
    path: str | Path,
    check_files: bool = True,
    check_rois: bool = True,
    require_labels: bool = True,
    class_names: Sequence[str] | None = None,
) -> Manifest:
    """Load and validate a manifest CSV; raise :class:`ManifestError` listing every problem.

    check_files: every image file must exist.
    check_rois: every ROI must lie inside its image (reads image sizes from the headers).
    require_labels: labels are required (training, evaluation); False for unlabelled scoring.
    class_names: fix the class order (e.g. a checkpoint's); labels outside it are errors.
    """
    manifest, errors = _load(path, check_files=check_files, check_rois=check_rois,
                             require_labels=require_labels, class_names=class_names)
    if errors or manifest is None:
        raise ManifestError(Path(path), errors)
    return manifest


def validate_manifest(
    path: str | Path,
    check_files: bool = True,
    check_rois: bool = True,
    require_labels: bool = True,
) -> tuple[str, list[str]]:
    """Everything ``spine-dfl validate`` prints: (summary text, errors).

    The summary is computed whenever the required columns could be read, even when there are
    row errors (so a user sees the counts and the problems together); it is "" otherwise.
    An empty error list means the manifest is valid.
    """
    try:
        manifest, errors = _load(path, check_files=check_files, check_rois=check_rois, require_labels=require_labels)
    except ManifestError as exc:
        return "", list(exc.errors)
    text = format_summary(summarize(manifest)) if manifest is not None else ""
    return text, errors
