"""BUU-LSPINE: lumbar laterals (``LA/NNNN-S-AGEYv.jpg``) with their header-less endplate CSVs -> L1-L5 rows.

Each lateral's CSV (same stem, ``.csv``) has no header and one row ``x1,y1,x2,y2,code`` per endplate, top
to bottom: L1 superior, L1 inferior, ..., L5 inferior, S1 superior (11 rows; JPEG pixels, origin top-left).
A row of the manifest is one vertebra: its ROI the box of its four corners padded 7 % a side (as
``spine-dfl drr`` pads a body's silhouette), its six points the corners with the middle points derived
(the midpoint of each endplate: ``middle_points`` says so). Which corner is anterior is checked, not
assumed: lumbar lordosis bulges anteriorly and the sacral endplate slopes down anteriorly; where neither
tells, the file's order (first corner anterior, the published convention) is used and the report says so.
The JPEGs are referenced, not copied (the project reads JPEG). The AP folder is not imported (the toolkit
grades laterals). Labels are ``ungraded``: BUU-LSPINE grades no fracture.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from spine_dfl.datasets.common import (
    BASE_COLUMNS, UNGRADED, DatasetFormatError, ImportResult, Unmapped, finite_number, split_by_patient, staged_out,
    where, write_report, write_table,
)
from spine_dfl.io import ImageReadError, image_size

__all__ = ["BUU_COLUMNS", "LATERAL_ROWS", "import_buu", "read_endplates"]

LEVELS = ("L1", "L2", "L3", "L4", "L5")
LATERAL_ROWS = 11  # L1 superior .. L5 inferior, S1 superior
ROI_PAD = 0.07
NAME = re.compile(r"^(?P<patient>\d+)-(?P<sex>[MF])-(?P<age>\d+)Y(?P<view>[01])$", re.IGNORECASE)
BUU_COLUMNS: tuple[str, ...] = (
    *BASE_COLUMNS, "middle_points", "anterior_from", "corners_swapped", "code_superior", "code_inferior",
    "anchor", "s1_anterior_x", "s1_anterior_y", "s1_posterior_x", "s1_posterior_y", "sex", "age",
)
DERIVED = "derived: endplate midpoints"
LORDOSIS_SHARE = 0.02  # the middle lumbar centres must lie this share of the L1-L5 chord off it
SLOPE_DEG = 10.0  # the sacral endplate must tilt this much against the lumbar axis


@dataclass(frozen=True)
class Endplates:
    """One lateral's endplates: corners (11, 2, 2) as written (x, y), and each row's code (text)."""

    corners: np.ndarray
    codes: tuple[str, ...]


def read_endplates(path: Path, expected_rows: int = LATERAL_ROWS) -> Endplates:
    """Read a header-less BUU CSV; DatasetFormatError names file, row and field of the first problem."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetFormatError(f"{path}: not a readable CSV file ({exc})") from None
    rows = [r for r in csv.reader(text.splitlines()) if any(cell.strip() for cell in r)]
    corners, codes = [], []
    for number, cells in enumerate(rows, start=1):
        if len(cells) != 5:
            raise DatasetFormatError(f"{where(path, number)}: {len(cells)} fields, a BUU endplate row has 5 "
                                     "(x1, y1, x2, y2, code; no header)")
        values = []
        for name, cell in zip(("x1", "y1", "x2", "y2"), cells):
            value = finite_number(cell)
            if value is None:
                raise DatasetFormatError(f"{where(path, number, name)}: {cell.strip()!r} is not a number "
                                         "(BUU CSVs have no header)")
            values.append(value)
        corners.append(np.reshape(values, (2, 2)))
        codes.append(cells[4].strip())
    if len(rows) != expected_rows:
        raise DatasetFormatError(f"{path}: {len(rows)} endplate rows, a lateral has {expected_rows} "
                                 "(L1 superior .. L5 inferior, S1 superior)")
    return Endplates(np.asarray(corners), tuple(codes))


def anterior_side(corners: np.ndarray) -> tuple[np.ndarray, str]:
    """The unit vector pointing anterior in the image, and what told it (see the module docstring)."""
    centres = corners[:10].reshape(5, 4, 2).mean(axis=1)
    axis = centres[-1] - centres[0]
    length = float(np.hypot(*axis))
    axis = axis / length if length > 0 else np.array([0.0, 1.0])
    normal = np.array([-axis[1], axis[0]])
    votes: dict[str, float] = {}
    bulge = float(np.mean((centres[1:4] - centres[0]) @ normal))
    if abs(bulge) >= LORDOSIS_SHARE * length:
        votes["lordosis"] = np.sign(bulge)
    s1 = corners[10]
    along, across = (s1[1] - s1[0]) @ axis, (s1[1] - s1[0]) @ normal
    if np.degrees(np.arctan2(abs(along), abs(across))) >= SLOPE_DEG:
        lower = s1[1] if along > 0 else s1[0]  # the caudal corner of S1's endplate is the anterior one
        votes["sacral slope"] = np.sign((lower - s1.mean(axis=0)) @ normal)
    signs = set(votes.values())
    if len(signs) == 1:
        return normal * signs.pop(), " and ".join(sorted(votes))
    first = np.sign(np.sum((corners[:, 0] - corners[:, 1]) @ normal))
    return normal * (first or 1.0), "file order (unchecked)" if not votes else "file order (cues disagree)"


def _inside(path: Path, corners: np.ndarray, size: tuple[int, int]) -> None:
    n_rows, n_cols = size
    for k, pair in enumerate(corners, start=1):
        for j, (x, y) in enumerate(pair, start=1):
            for name, value, top in ((f"x{j}", x, n_cols), (f"y{j}", y, n_rows)):
                if not 0 <= value <= top:
                    raise DatasetFormatError(f"{where(path, k, name)}: {value:g} lies outside the image "
                                             f"({n_rows} rows x {n_cols} columns)")


def _vertebra_rows(image: Path, plates: Endplates, size: tuple[int, int], identity: dict[str, str]) -> list[dict[str, Any]]:
    """The five lumbar rows of one lateral."""
    anterior, told = anterior_side(plates.corners)
    ordered = [pair if (pair[0] - pair[1]) @ anterior >= 0 else pair[::-1] for pair in plates.corners]
    swapped = [(pair[0] - pair[1]) @ anterior < 0 for pair in plates.corners]
    s1 = ordered[10]
    n_rows, n_cols = size
    rows = []
    for k, level in enumerate(LEVELS):
        sup, inf = ordered[2 * k], ordered[2 * k + 1]
        points = [sup[0], sup.mean(axis=0), sup[1], inf[0], inf.mean(axis=0), inf[1]]
        box = np.vstack([sup, inf])
        lo, hi = box.min(axis=0), box.max(axis=0)
        pad = (hi - lo) * ROI_PAD
        roi = [max(lo[0] - pad[0], 0.0), max(lo[1] - pad[1], 0.0), min(hi[0] + pad[0], n_cols), min(hi[1] + pad[1], n_rows)]
        cells = {f"{name}_{axis}": float(p[i]) for name, p in zip(("sa", "sm", "sp", "ia", "im", "ip"), points)
                 for i, axis in enumerate("xy")}
        rows.append({
            "image": str(image), "label": UNGRADED, "vertebra": level, **identity,
            **dict(zip(("x_min", "y_min", "x_max", "y_max"), (float(v) for v in roi))), **cells,
            "middle_points": DERIVED, "anterior_from": told,
            "corners_swapped": "yes" if swapped[2 * k] or swapped[2 * k + 1] else "no",
            "code_superior": plates.codes[2 * k], "code_inferior": plates.codes[2 * k + 1],
            "anchor": "S1 superior endplate", "s1_anterior_x": float(s1[0][0]), "s1_anterior_y": float(s1[0][1]),
            "s1_posterior_x": float(s1[1][0]), "s1_posterior_y": float(s1[1][1]),
        })
    return rows


def _lateral_rows(image: Path, unmapped: Unmapped) -> list[dict[str, Any]]:
    """One lateral's rows; a file the layout does not fit is reported and gives none."""
    match = NAME.match(image.stem)
    if match is None:
        unmapped.add(image, "file name is not NNNN-S-AGEYv.jpg (no patient id)")
        return []
    if match["view"] != "1":
        unmapped.add(image, "an AP file (v = 0) in LA/: not a lateral")
        return []
    table = image.with_suffix(".csv")
    if not table.is_file():
        unmapped.add(image, "no endplate CSV beside it")
        return []
    plates = read_endplates(table)
    try:
        size = image_size(image)
    except ImageReadError as exc:
        raise DatasetFormatError(str(exc)) from None
    _inside(table, plates.corners, size)
    identity = {"patient_id": match["patient"], "sex": match["sex"].upper(), "age": str(int(match["age"]))}
    rows = _vertebra_rows(image.resolve(), plates, size, identity)
    if rows[0]["anterior_from"].startswith("file order"):
        unmapped.add(table, f"anterior corner not confirmed: {rows[0]['anterior_from']}, first corner taken as anterior")
    return rows


def import_buu(source: str | Path, out: str | Path, *, seed: int = 0, overwrite: bool = False) -> ImportResult:
    """Write OUT/manifest.csv (L1-L5 of every lateral, split by patient) and OUT/import_report.json."""
    source, out = Path(source), Path(out)
    lateral = source / "LA"
    if not lateral.is_dir():
        raise DatasetFormatError(f"{source}: no LA/ folder (BUU-LSPINE keeps its laterals in LA/ and AP/)")
    unmapped = Unmapped()
    images = sorted(p for p in lateral.iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))
    if not images:
        raise DatasetFormatError(f"{lateral}: no .jpg files")
    rows = [row for image in images for row in _lateral_rows(image, unmapped)]
    ap = source / "AP"
    for image in sorted(ap.glob("*.jpg")) if ap.is_dir() else []:
        unmapped.add(image, "AP film: not imported (the toolkit grades laterals)")
    if rows:
        splits = split_by_patient(pd.DataFrame(rows), seed)
        for row, split in zip(rows, splits):
            row["split"] = split
    summary = {"laterals": len({r["image"] for r in rows}), "patients": len({r["patient_id"] for r in rows}),
               "rows": len(rows), "seed": seed,
               "anterior_unconfirmed": sum(r["anterior_from"].startswith("file order") for r in rows[::5]),
               "corners_swapped_rows": sum(r["corners_swapped"] == "yes" for r in rows)}
    with staged_out(out, overwrite) as staging:
        write_table(staging / "manifest.csv", BUU_COLUMNS, rows)
        write_report(staging, "buu", source, unmapped, summary)
    return ImportResult(out, (out / "manifest.csv",), out / "import_report.json",
                        {**summary, "unmapped": unmapped.counts()})
