"""What every importer shares: its error class, the manifest columns, the report of what it could not
map, and OUT written whole or not at all (a staging folder beside OUT, renamed into place)."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from spine_dfl import __version__
from spine_dfl.atomic import atomic_write_text
from spine_dfl.data.splits import patient_split
from spine_dfl.io import ROI_COLUMNS
from spine_dfl.io.errors import InputError
from spine_dfl.io.vocabulary import POINT_COLUMNS

__all__ = ["BASE_COLUMNS", "DatasetFormatError", "ImportResult", "Unmapped", "finite_number", "staged_out", "where",
           "write_table"]

# The project's manifest columns (``data.manifest``, ``data.landmarks``); importers add their own after them.
BASE_COLUMNS: tuple[str, ...] = ("image", "label", "vertebra", "patient_id", "split", *ROI_COLUMNS, *POINT_COLUMNS)
UNGRADED = "ungraded"  # the label of a vertebra the data set does not grade (as ``spine-dfl drr`` writes)
REPORT_NAME = "import_report.json"


class DatasetFormatError(InputError):
    """A data set's file that is not in its published format; the message names file, row and field."""


def finite_number(cell: str) -> float | None:
    """The finite number a CSV cell holds; None for text, an empty cell, NaN or infinity."""
    try:
        value = float(cell)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def where(path: Path, row: int | None = None, field_name: str | None = None, line: int | None = None) -> str:
    """``<file>: row N (line L), field 'x'``: the place a message is about (rows 1-based)."""
    text = str(path)
    if row is not None:
        text += f": row {row}" + (f" (line {line})" if line is not None else "")
    if field_name is not None:
        text += (", " if row is not None else ": ") + f"field {field_name!r}"
    return text


@dataclass
class Unmapped:
    """What an importer could not map, each item with its file and reason (written to the report)."""

    items: list[dict[str, str]] = field(default_factory=list)

    def add(self, path: Path | str, reason: str, **more: str) -> None:
        self.items.append({"file": str(path), "reason": reason, **more})

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for item in self.items:
            out[item["reason"]] = out.get(item["reason"], 0) + 1
        return dict(sorted(out.items()))


@dataclass(frozen=True)
class ImportResult:
    out: Path
    manifests: tuple[Path, ...]
    report_path: Path
    summary: dict[str, Any]


def split_by_patient(table: pd.DataFrame, seed: int, fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)) -> pd.Series:
    """The project's patient-level split (``data.splits.patient_split``) of an importer's rows."""
    if table.empty:
        return pd.Series([], dtype=str, name="split")
    return patient_split(table, seed=seed, fractions=fractions)


def table_text(columns: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> str:
    """CSV text with ``columns`` as header; a missing cell is empty, floats at 0.01 pixel."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_cell(row.get(c, "")) for c in columns])
    return buffer.getvalue()


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.2f}"
    return "" if value is None else str(value)


def write_table(path: Path, columns: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> None:
    atomic_write_text(path, table_text(columns, rows))


def write_report(folder: Path, fmt: str, source: Path, unmapped: Unmapped, summary: Mapping[str, Any]) -> Path:
    """``import_report.json``: the counts, and every file, row or lesion that was not mapped with its reason."""
    report = {"format": fmt, "source": str(source), "generator": "spine-dfl import", "version": __version__,
              **summary, "unmapped_counts": unmapped.counts(), "unmapped": unmapped.items}
    path = folder / REPORT_NAME
    atomic_write_text(path, json.dumps(report, indent=1) + "\n")
    return path


def check_out(out: Path, overwrite: bool) -> None:
    """OUT may be new or empty; a non-empty OUT needs ``overwrite`` (it is replaced only once all is done)."""
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: is a file, not an output folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise InputError(f"{out}: output folder is not empty; pass --overwrite to replace it")


@contextmanager
def staged_out(out: Path, overwrite: bool) -> Iterator[Path]:
    """A staging folder beside OUT; on a clean exit it takes OUT's place (the old OUT is removed after)."""
    check_out(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        yield staging
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(staging, 0o777 & ~mask)
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
            os.replace(out, old / "out")
            os.replace(staging, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
