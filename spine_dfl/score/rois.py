"""TEMPORARY: the ROI CSV reader of score until ``spine_dfl.io.rois`` lands (then this module goes)."""

from __future__ import annotations

import math
from pathlib import Path

from spine_dfl.score.errors import ScoreError
from spine_dfl.score.files import RoiEntry, RoiLookup, path_key

ROI_COLUMNS = ("x_min", "y_min", "x_max", "y_max")


def load_rois(path: str | Path) -> RoiLookup:
    """Read a ROI CSV keyed by ``sop_instance_uid`` and/or ``image`` (relative paths: to the CSV's folder)."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise ScoreError(f"{path}: ROI file not found")
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as exc:  # pandas raises several types for unreadable CSVs
        raise ScoreError(f"{path}: cannot read the ROI CSV ({type(exc).__name__}: {exc})") from exc
    table.columns = [str(c).strip() for c in table.columns]
    missing = [c for c in ROI_COLUMNS if c not in table.columns]
    if missing:
        raise ScoreError(f"{path}: ROI CSV lacks column(s) {', '.join(missing)} (needs {', '.join(ROI_COLUMNS)})")
    if "sop_instance_uid" not in table.columns and "image" not in table.columns:
        raise ScoreError(f"{path}: ROI CSV needs a 'sop_instance_uid' or an 'image' column to match images")
    by_uid: dict[str, list[RoiEntry]] = {}
    by_path: dict[str, list[RoiEntry]] = {}
    problems: list[str] = []
    for number, row in enumerate(table.to_dict("records"), start=2):  # line 1 is the header
        try:
            roi = tuple(float(row[c]) for c in ROI_COLUMNS)
        except ValueError:
            problems.append(f"line {number}: non-numeric ROI {[row[c] for c in ROI_COLUMNS]}")
            continue
        if not all(math.isfinite(v) for v in roi) or roi[2] <= roi[0] or roi[3] <= roi[1]:
            problems.append(f"line {number}: empty or invalid ROI {roi}")
            continue
        entry = (str(row.get("vertebra", "") or "").strip(), roi)
        uid = str(row.get("sop_instance_uid", "") or "").strip()
        image = str(row.get("image", "") or "").strip()
        if not uid and not image:
            problems.append(f"line {number}: neither sop_instance_uid nor image given")
            continue
        if uid:
            by_uid.setdefault(uid, []).append(entry)
        if image:
            image_path = Path(image) if Path(image).is_absolute() else path.parent / image
            by_path.setdefault(path_key(image_path), []).append(entry)
    if problems:
        shown = "; ".join(problems[:5]) + (f"; ... ({len(problems)} in all)" if len(problems) > 5 else "")
        raise ScoreError(f"{path}: bad ROI rows: {shown}")
    return RoiLookup(by_uid=by_uid, by_path=by_path)
