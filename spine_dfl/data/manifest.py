"""Manifest CSV: loading, validation, patient-level splitting and a text summary.

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
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from spine_dfl.vertebrae import level_sort_key, normalize_level

REQUIRED_COLUMNS: tuple[str, ...] = ("image", "label")
OPTIONAL_COLUMNS: tuple[str, ...] = ("vertebra", "patient_id", "split")
ROI_COLUMNS: tuple[str, ...] = ("x_min", "y_min", "x_max", "y_max")
SPLITS: tuple[str, ...] = ("train", "val", "test")
# Genant semiquantitative grades, in order of severity; used to order class names.
GENANT_GRADES: tuple[str, ...] = ("normal", "mild", "moderate", "severe")


class ManifestError(ValueError):
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

    def with_split(self, seed: int = 0, fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)) -> Manifest:
        """This manifest with a ``split`` column; a patient-level split by ``seed`` when it has none."""
        if self.has_split:
            return self
        table = self.table.copy()
        table["split"] = patient_split(table, seed=seed, fractions=fractions)
        return Manifest(table, list(self.class_names), self.has_roi, True, self.path,
                        self.has_vertebra, self.has_patient_id, list(self.extra_columns))


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


def patient_keys(table: pd.DataFrame) -> pd.Series:
    """Patient of every row: ``patient_id`` when given, else the image path (each image its own patient)."""
    image = table["image"].astype(str)
    if "patient_id" not in table.columns:
        return "image:" + image
    pid = table["patient_id"].fillna("").astype(str)
    return pid.where(pid != "", "image:" + image)


class ImageSizeReader:
    """(rows, cols) of image files, read as cheaply as possible and cached per path.

    DICOM: header only (pydicom ``stop_before_pixels``; Rows/Columns). Anything else (or a
    DICOM whose header lacks them): the full reader ``spine_dfl.io.read_image``, so the size is
    exactly what training will see. Unreadable files give the reader's reason.
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
        from spine_dfl import io as sio

        try:
            if sio.is_dicom(path):
                import pydicom

                ds = pydicom.dcmread(path, stop_before_pixels=True, force=True,
                                     specific_tags=["Rows", "Columns", "NumberOfFrames", "SamplesPerPixel"])
                rows, cols = ds.get("Rows"), ds.get("Columns")
                frames = int(ds.get("NumberOfFrames", 1) or 1)
                samples = int(ds.get("SamplesPerPixel", 1) or 1)
                if rows and cols and frames == 1 and samples == 1:
                    return int(rows), int(cols)
        except Exception:  # noqa: BLE001 - any header problem: let the full reader say what is wrong
            pass
        try:
            image = sio.read_image(path)
        except sio.ImageReadError as exc:
            return f"unreadable image: {exc}"
        except Exception as exc:  # noqa: BLE001 - a reader bug must still point at the row
            return f"unreadable image ({type(exc).__name__}: {exc})"
        rows, cols = image.pixels.shape[:2]
        return int(rows), int(cols)


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


def _load(
    path: str | Path,
    check_files: bool = True,
    check_rois: bool = True,
    require_labels: bool = True,
    class_names: Sequence[str] | None = None,
    size_reader: Callable[[str], tuple[int, int] | str] | None = None,
) -> tuple[Manifest | None, list[str]]:
    """Parse and validate; returns the manifest (None when unusable) and every error found."""
    path = Path(path).expanduser().resolve()
    raw = _read_csv(path)
    errors: list[str] = []
    raw.columns = [str(c).strip().lower() for c in raw.columns]

    duplicated_cols = sorted({c for c in raw.columns if list(raw.columns).count(c) > 1})
    for col in duplicated_cols:
        errors.append(f"{_where(path, None, col)}: column appears more than once")
    required = [c for c in REQUIRED_COLUMNS if c != "label" or require_labels]
    for col in required:
        if col not in raw.columns:
            errors.append(f"{_where(path, None, col)}: missing required column (columns found: "
                          f"{', '.join(raw.columns) or 'none'})")
    roi_present = [c for c in ROI_COLUMNS if c in raw.columns]
    if roi_present and len(roi_present) < len(ROI_COLUMNS):
        missing = [c for c in ROI_COLUMNS if c not in raw.columns]
        errors.append(f"{_where(path, None, missing)}: ROI columns must come as all four of "
                      f"{', '.join(ROI_COLUMNS)} (found only {', '.join(roi_present)})")
    if errors:
        return None, errors
    if raw.empty:
        return None, [f"{path}: manifest has a header but no data rows"]

    table = pd.DataFrame(index=raw.index)
    table["row"] = np.arange(1, len(raw) + 1)
    for col in raw.columns:
        table[col] = raw[col].astype(str).str.strip()
    if "label" not in table.columns:
        table["label"] = ""
    has_vertebra = "vertebra" in raw.columns
    has_patient_id = "patient_id" in raw.columns
    has_split = "split" in raw.columns
    has_roi = len(roi_present) == len(ROI_COLUMNS)
    table["vertebra"] = table["vertebra"].map(normalize_level) if has_vertebra else ""
    if not has_patient_id:
        table["patient_id"] = ""
    rows = table["row"].to_numpy()

    # image paths: relative to the manifest's folder
    resolved: list[str] = []
    for row, text in zip(rows, table["image"]):
        if text == "":
            errors.append(f"{_where(path, row, 'image')}: empty image path")
            resolved.append("")
            continue
        p = Path(text).expanduser()
        p = p if p.is_absolute() else path.parent / p
        # absolute and normalised, but symlinks kept: results name the files as the user does
        resolved.append(os.path.normpath(os.path.abspath(p)))
    table["image"] = resolved
    if check_files:
        for row, text, image in zip(rows, raw["image"], resolved):
            if image and not Path(image).is_file():
                what = "is a folder, not a file" if Path(image).is_dir() else "file not found"
                errors.append(f"{_where(path, row, 'image')}: {what}: {text!r} (resolved to {image})")

    # labels
    table["label"] = _canonical_labels(table["label"])
    if require_labels:
        for row in rows[(table["label"] == "").to_numpy()]:
            errors.append(f"{_where(path, row, 'label')}: empty label")
    if class_names is not None:
        known = set(class_names)
        for row, label in zip(rows, table["label"]):
            if label != "" and label not in known:
                errors.append(f"{_where(path, row, 'label')}: label {label!r} is not one of the classes "
                              f"{', '.join(class_names)}")
        names = list(class_names)
    else:
        names = class_order(table["label"])

    # split
    if has_split:
        table["split"] = table["split"].str.lower()
        for row, value in zip(rows, table["split"]):
            if value not in SPLITS:
                shown = "empty split" if value == "" else f"unknown split {value!r}"
                errors.append(f"{_where(path, row, 'split')}: {shown} (allowed: {', '.join(SPLITS)})")

    # ROI
    roi_ok = np.zeros(len(table), dtype=bool)
    if has_roi:
        values = np.full((len(table), 4), np.nan)
        for j, col in enumerate(ROI_COLUMNS):
            values[:, j] = pd.to_numeric(table[col], errors="coerce").to_numpy(dtype=np.float64)
        texts = table[list(ROI_COLUMNS)].to_numpy()
        for i, row in enumerate(rows):
            empty = [c for c, t in zip(ROI_COLUMNS, texts[i]) if t == ""]
            if len(empty) == 4:
                continue  # whole-image sample
            if empty:
                errors.append(f"{_where(path, row, empty)}: partial ROI: {', '.join(empty)} empty while the other "
                              f"ROI cells are filled (give all four or none)")
                continue
            bad = [c for c, v in zip(ROI_COLUMNS, values[i]) if not math.isfinite(v)]
            for c in bad:
                errors.append(f"{_where(path, row, c)}: ROI value {texts[i][ROI_COLUMNS.index(c)]!r} is not a finite number")
            if bad:
                continue
            x0, y0, x1, y1 = values[i]
            inverted = False
            if x1 <= x0:
                errors.append(f"{_where(path, row, 'x_max')}: inverted ROI: x_max {x1:g} <= x_min {x0:g}")
                inverted = True
            if y1 <= y0:
                errors.append(f"{_where(path, row, 'y_max')}: inverted ROI: y_max {y1:g} <= y_min {y0:g}")
                inverted = True
            roi_ok[i] = not inverted
        for j, col in enumerate(ROI_COLUMNS):
            table[col] = values[:, j]
        table.loc[~roi_ok, list(ROI_COLUMNS)] = np.nan
        if check_rois:
            sizes = size_reader or ImageSizeReader()
            for i, row in enumerate(rows):
                image = table["image"].iat[i]
                if not roi_ok[i] or not image or not Path(image).is_file():
                    continue
                size = sizes(image)
                if isinstance(size, str):
                    errors.append(f"{_where(path, row, 'image')}: {size}")
                    continue
                n_rows, n_cols = size
                x0, y0, x1, y1 = values[i]
                for col, value, low, high in (("x_min", x0, 0, n_cols), ("y_min", y0, 0, n_rows),
                                              ("x_max", x1, 0, n_cols), ("y_max", y1, 0, n_rows)):
                    if value < low or value > high:
                        axis = "columns" if col.startswith("x") else "rows"
                        errors.append(f"{_where(path, row, col)}: ROI outside the image: {col} = {value:g} but the image "
                                      f"has {high} {axis} (allowed 0..{high}; {n_rows} rows x {n_cols} columns)")
    else:
        for col in ROI_COLUMNS:
            table[col] = np.nan

    # duplicates: same image + vertebra + ROI
    roi_values = table[list(ROI_COLUMNS)].to_numpy(dtype=np.float64)

    def roi_key(i: int) -> tuple[Any, ...]:
        return tuple(None if math.isnan(v) else round(float(v), 6) for v in roi_values[i])

    first_seen: dict[tuple[Any, ...], int] = {}
    vertebra_seen: dict[tuple[str, str], tuple[int, tuple[Any, ...]]] = {}
    for i, row in enumerate(rows):
        image, vertebra = table["image"].iat[i], table["vertebra"].iat[i]
        if not image:
            continue
        key = (image, vertebra, roi_key(i))
        if key in first_seen:
            errors.append(f"{_where(path, row, ['image', 'vertebra', *ROI_COLUMNS])}: duplicate row: same image, vertebra "
                          f"and ROI as row {first_seen[key]}")
            continue
        first_seen[key] = row
        if vertebra:
            seen = vertebra_seen.get((image, vertebra))
            if seen is not None:
                errors.append(f"{_where(path, row, 'vertebra')}: vertebra {vertebra} of this image already appears in "
                              f"row {seen[0]} with another ROI")
            else:
                vertebra_seen[(image, vertebra)] = (row, key[2])

    # one image belongs to one patient
    if has_patient_id:
        by_image: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
        for row, image, pid in zip(rows, table["image"], table["patient_id"]):
            if image:
                by_image[image][pid].append(row)
        for image, pids in by_image.items():
            if len(pids) > 1:
                ordered = sorted(pids.items(), key=lambda kv: (-len(kv[1]), kv[1][0]))
                main_pid = ordered[0][0]
                for pid, pid_rows in ordered[1:]:
                    for row in pid_rows:
                        errors.append(f"{_where(path, row, 'patient_id')}: image {Path(image).name} is given patient "
                                      f"{pid!r} here but {main_pid!r} in {_rows_text(pids[main_pid])}")

    # one patient in one split
    if has_split:
        keys = patient_keys(table)
        groups: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
        for row, key, split in zip(rows, keys, table["split"]):
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
                    errors.append(f"{_where(path, row, 'split')}: {who} is in split {split!r} here but in "
                                  f"{main_split!r} in {_rows_text(main_rows)} (one patient must stay in one split)")

    errors.sort(key=lambda message: _row_of(path, message))  # stable: per row, in check order
    extra = [c for c in raw.columns if c not in (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS, *ROI_COLUMNS)]
    ordered_cols = ["row", "image", "label", "vertebra", "patient_id", *(["split"] if has_split else []),
                    *ROI_COLUMNS, *extra]
    table = table[ordered_cols].reset_index(drop=True)
    manifest = Manifest(table=table, class_names=names, has_roi=has_roi, has_split=has_split, path=path,
                        has_vertebra=has_vertebra, has_patient_id=has_patient_id, extra_columns=extra)
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
    check_rois: every ROI must lie inside its image (reads image sizes: DICOM header only).
    require_labels: labels are required (training, evaluation); False for unlabelled scoring.
    class_names: fix the class order (e.g. a checkpoint's); labels outside it are errors.
    """
    manifest, errors = _load(path, check_files=check_files, check_rois=check_rois,
                             require_labels=require_labels, class_names=class_names)
    if errors or manifest is None:
        raise ManifestError(Path(path), errors)
    return manifest


# --------------------------------------------------------------------------- split
def patient_split(
    table: pd.DataFrame,
    seed: int = 0,
    fractions: tuple[float, float, float] = (0.6, 0.2, 0.2),
) -> pd.Series:
    """Patient-level stratified train/val/test split by ``seed``; returns a Series aligned with ``table``.

    - Patients: ``patient_id`` when present and non-empty, else the image (each image its own
      patient). No patient is ever in two splits.
    - Presence first (greedy, rarest class first): for each class, patients carrying it who are
      not yet assigned are put into the splits (positive fraction only) that still lack the class,
      so every class is present in every split whenever enough unassigned patients carry it
      (a class on >= 3 patients always reaches all three splits when classes are processed
      rarest first and each patient carries one class; patients with several classes may
      already cover a split).
    - The rest: each patient is stratified by its rarest class (fewest patients overall) and
      goes to the split furthest below its target share within that stratum (ties: furthest
      below its overall target, then train, val, test).
    Shuffling uses ``numpy.random.default_rng(seed)``: same seed, same split.
    """
    fr = np.asarray(fractions, dtype=np.float64)
    if fr.shape != (3,) or (fr < 0).any() or fr.sum() <= 0:
        raise ValueError(f"split fractions must be three non-negative numbers with a positive sum, got {fractions}")
    fr = fr / fr.sum()
    active = [k for k in range(3) if fr[k] > 0]
    keys = patient_keys(table).to_numpy()
    labels = table["label"].fillna("").astype(str).to_numpy() if "label" in table.columns else np.full(len(table), "")

    patient_classes: dict[str, set[str]] = defaultdict(set)
    for key, label in zip(keys, labels):
        patient_classes[key]  # every patient appears even without labels
        if label != "":
            patient_classes[key].add(label)
    rng = np.random.default_rng(seed)
    patients = sorted(patient_classes)
    patients = [patients[i] for i in rng.permutation(len(patients))]
    class_patients = Counter(c for p in patients for c in patient_classes[p])
    # rarest first; ties by name so the order does not depend on row order
    classes = sorted(class_patients, key=lambda c: (class_patients[c], c))
    rank = {c: i for i, c in enumerate(classes)}

    assigned: dict[str, int] = {}
    split_classes: list[set[str]] = [set(), set(), set()]
    split_count = np.zeros(3)

    def assign(patient: str, k: int) -> None:
        assigned[patient] = k
        split_classes[k].update(patient_classes[patient])
        split_count[k] += 1

    for c in classes:
        candidates = [p for p in patients if c in patient_classes[p] and p not in assigned]
        # Fill the largest splits first so a class with too few patients lands in train, then val.
        for k in sorted(active, key=lambda k: (-fr[k], k)):
            if c in split_classes[k] or not candidates:
                continue
            # Prefer the candidate with the fewest other classes: it covers c without skewing others.
            best_pos = min(range(len(candidates)), key=lambda j: (len(patient_classes[candidates[j]]), j))
            best = candidates.pop(best_pos)
            assign(best, k)

    def stratum(p: str) -> str:
        return min(patient_classes[p], key=lambda c: rank[c]) if patient_classes[p] else ""

    strata: dict[str, list[str]] = defaultdict(list)
    for p in patients:
        strata[stratum(p)].append(p)
    total = len(patients)
    for s in sorted(strata, key=lambda s: (rank.get(s, len(rank)), s)):
        members = strata[s]
        counts = np.zeros(3)
        for p in members:
            if p in assigned:
                counts[assigned[p]] += 1
        for p in members:
            if p in assigned:
                continue
            deficit = fr * len(members) - counts
            overall = fr * total - split_count
            k = max(active, key=lambda k: (deficit[k], overall[k], -k))
            counts[k] += 1
            assign(p, k)
    return pd.Series([SPLITS[assigned[key]] for key in keys], index=table.index, name="split")


# --------------------------------------------------------------------------- summary
def summarize(manifest: Manifest) -> dict[str, Any]:
    """Counts for ``spine-dfl validate``: rows, images, patients; classes per split; vertebra x class.

    Returns ``{"manifest", "rows", "images", "patients", "class_names", "has_roi", "has_split",
    "splits": {name: {"rows", "images", "patients", "classes": {class: rows}}},
    "vertebrae": {level: {class: rows}}}``; ``splits`` holds ``all`` and, with a split
    column, train/val/test.
    """
    table = manifest.table
    keys = patient_keys(table)
    names = list(manifest.class_names)
    if (table["label"] == "").any():
        names.append("")

    def block(mask: pd.Series) -> dict[str, Any]:
        sub = table[mask]
        counts = sub["label"].value_counts()
        return {
            "rows": int(len(sub)),
            "images": int(sub["image"].nunique()),
            "patients": int(keys[mask].nunique()),
            "classes": {c: int(counts.get(c, 0)) for c in names},
        }

    splits = {"all": block(pd.Series(True, index=table.index))}
    if manifest.has_split:
        for s in SPLITS:
            splits[s] = block(table["split"] == s)
    vertebrae: dict[str, dict[str, int]] = {}
    if manifest.has_vertebra:
        for level in sorted(set(table["vertebra"]), key=level_sort_key):
            counts = table.loc[table["vertebra"] == level, "label"].value_counts()
            vertebrae[level or "(none)"] = {c: int(counts.get(c, 0)) for c in names}
    return {
        "manifest": str(manifest.path),
        "rows": int(len(table)),
        "images": int(table["image"].nunique()),
        "patients": int(keys.nunique()),
        "class_names": list(manifest.class_names),
        "has_roi": bool(manifest.has_roi),
        "has_split": bool(manifest.has_split),
        "splits": splits,
        "vertebrae": vertebrae,
    }


def _table_text(header: Sequence[str], body: Sequence[Sequence[Any]]) -> list[str]:
    cells = [list(map(str, header))] + [[str(v) for v in r] for r in body]
    widths = [max(len(r[j]) for r in cells) for j in range(len(header))]
    lines = []
    for i, r in enumerate(cells):
        lines.append("  ".join(v.ljust(widths[j]) if j == 0 else v.rjust(widths[j]) for j, v in enumerate(r)))
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return lines


def format_summary(summary: dict[str, Any]) -> str:
    """Plain-text tables of :func:`summarize`'s dict (fixed-width, for a terminal)."""
    names = [c for c in summary["class_names"]]
    label_cols = names + ([""] if any("" in b["classes"] for b in summary["splits"].values()) else [])
    shown = [c if c else "(no label)" for c in label_cols]
    lines = [
        f"manifest: {summary['manifest']}",
        f"rows: {summary['rows']}   images: {summary['images']}   patients: {summary['patients']}   "
        f"ROI: {'yes' if summary['has_roi'] else 'no (whole images)'}",
        f"classes: {', '.join(names) if names else '(none)'}",
        "",
    ]
    if not summary["has_split"]:
        lines.append("no split column: training makes a patient-level stratified split by seed")
    body = [[name, b["rows"], b["images"], b["patients"], *(b["classes"].get(c, 0) for c in label_cols)]
            for name, b in summary["splits"].items()]
    lines += _table_text(["split", "rows", "images", "patients", *shown], body)
    if summary["vertebrae"]:
        lines.append("")
        body = [[level, sum(counts.values()), *(counts.get(c, 0) for c in label_cols)]
                for level, counts in summary["vertebrae"].items()]
        lines += _table_text(["vertebra", "rows", *shown], body)
    return "\n".join(lines)


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
