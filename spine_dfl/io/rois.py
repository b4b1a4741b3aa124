"""THE one reader of ROI tables (``rois.csv``): vertebra boxes for images that carry no labels.

A ROI table is what a vertebra localiser produces and what ``spine-dfl synth`` writes next to its
manifest; ``score`` and ``explain`` read it through :func:`read_rois` (a training manifest has its
own ROI columns, read by ``spine_dfl.data``). Columns (names are stripped; other columns are
ignored):

- ``sop_instance_uid`` and/or ``image`` (at least one column, and in every row at least one value):
  how a row finds its image. ``image`` is a path, absolute or relative to the CSV's folder.
- ``vertebra`` (optional): the level, kept as written (stripped); "" when absent.
- ``x_min, y_min, x_max, y_max`` (:data:`ROI_COLUMNS`): the box in original-image pixels, x =
  column, y = row, max edges exclusive (the manifest's convention).

The rule for every row, one rule for every caller: all four ROI cells hold finite numbers with
``x_max > x_min`` and ``y_max > y_min``. A row with an empty ROI cell, all four included, is an
error, never "the whole image": a ROI table exists only for models trained on vertebra ROIs, and a
whole-image model reads no ROI table at all (its callers do not call this reader). Every bad row is
collected and reported in one :class:`RoiTableError` that names the file and each row as
``row N (line L)`` (row 1 is the first data row, line 1 the header), the manifest's convention.

Matching (:meth:`RoiTable.rows_for`): an image takes the rows whose ``sop_instance_uid`` is its SOP
Instance UID; when no row has its UID, the rows whose ``image`` resolves to its path. The UID wins
because it survives renaming and moving files.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from spine_dfl.io.errors import InputError
from spine_dfl.io.radiograph import PathLike

__all__ = ["ROI_COLUMNS", "ROI_KEY_COLUMNS", "RoiRow", "RoiTable", "RoiTableError", "read_rois"]

ROI_COLUMNS: tuple[str, ...] = ("x_min", "y_min", "x_max", "y_max")
ROI_KEY_COLUMNS: tuple[str, ...] = ("sop_instance_uid", "image")
Box = tuple[float, float, float, float]
_SHOWN_PROBLEMS = 5


class RoiTableError(InputError):
    """A ROI table cannot be used. ``str(error)`` names the file and the bad rows; ``problems`` lists every one."""

    def __init__(self, path: PathLike, message: str, problems: Sequence[str] = ()) -> None:
        self.path = str(path)
        self.problems = list(problems)
        super().__init__(f"{self.path}: {message}")


@dataclass(frozen=True)
class RoiRow:
    """One valid row of a ROI table.

    row: 1-based data row; line: its line in the file (the header is line 1).
    image: the ``image`` cell resolved (absolute, or joined to the CSV's folder), None when empty.
    """

    row: int
    line: int
    sop_instance_uid: str
    image: Path | None
    vertebra: str
    box: Box


def _path_key(path: PathLike) -> str:
    try:
        return str(Path(path).resolve())
    except OSError:
        return os.path.abspath(path)


class RoiTable:
    """The rows of one ROI table, in file order, indexed by SOP Instance UID and by image path."""

    def __init__(self, path: PathLike, rows: Sequence[RoiRow]) -> None:
        self.path = Path(path)
        self.rows: tuple[RoiRow, ...] = tuple(rows)
        self._by_uid: dict[str, list[RoiRow]] = {}
        self._by_path: dict[str, list[RoiRow]] = {}
        for row in self.rows:
            if row.sop_instance_uid:
                self._by_uid.setdefault(row.sop_instance_uid, []).append(row)
            if row.image is not None:
                self._by_path.setdefault(_path_key(row.image), []).append(row)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def has_uids(self) -> bool:
        """True when some row is keyed by SOP Instance UID (then matching needs each file's UID)."""
        return bool(self._by_uid)

    def rows_for(self, sop_instance_uid: str | None, image_path: PathLike) -> list[RoiRow]:
        """Rows of one image: by its SOP Instance UID when any row has it, else by its path; [] if none."""
        if sop_instance_uid and sop_instance_uid in self._by_uid:
            return list(self._by_uid[sop_instance_uid])
        return list(self._by_path.get(_path_key(image_path), []))

    def lookup(self, sop_instance_uid: str | None, image_path: PathLike) -> list[tuple[str, Box]]:
        """(vertebra, box) of each row of one image, as :meth:`rows_for` finds them."""
        return [(row.vertebra, row.box) for row in self.rows_for(sop_instance_uid, image_path)]

    def match(
        self, files: Sequence[PathLike], uid_of: Callable[[Path], str | None] | None = None
    ) -> tuple[list[tuple[Path, RoiRow]], list[RoiRow]]:
        """Pair every file with its rows: ([(file, row), ...] in file order then row order, rows matching no file).

        uid_of: a file's SOP Instance UID or None (default :func:`spine_dfl.io.header.dicom_uid`,
        which reads the header only); called only when some row is keyed by UID.
        """
        if uid_of is None:
            from spine_dfl.io.header import dicom_uid as uid_of
        pairs: list[tuple[Path, RoiRow]] = []
        used: set[int] = set()
        for file in (Path(f) for f in files):
            uid = uid_of(file) if self.has_uids else None
            for row in self.rows_for(uid, file):
                pairs.append((file, row))
                used.add(row.row)
        return pairs, [row for row in self.rows if row.row not in used]


def _box(cells: dict[str, str]) -> tuple[Box | None, str | None]:
    """(box, None) for four valid ROI cells, else (None, what is wrong in words)."""
    empty = [c for c in ROI_COLUMNS if cells[c] == ""]
    if len(empty) == len(ROI_COLUMNS):
        return None, (f"no ROI (all of {', '.join(ROI_COLUMNS)} are empty); every row of a ROI table needs a box "
                      "(a whole-image model reads no ROI table)")
    if empty:
        return None, f"empty ROI cell(s) {', '.join(empty)}; all four of {', '.join(ROI_COLUMNS)} are needed"
    values: list[float] = []
    for column in ROI_COLUMNS:
        try:
            value = float(cells[column])
        except ValueError:
            return None, f"column '{column}': ROI value {cells[column]!r} is not a number"
        if not math.isfinite(value):
            return None, f"column '{column}': ROI value {cells[column]!r} is not a finite number"
        values.append(value)
    x_min, y_min, x_max, y_max = values
    if x_max <= x_min:
        return None, f"column 'x_max': empty or inverted ROI: x_max {cells['x_max']} <= x_min {cells['x_min']}"
    if y_max <= y_min:
        return None, f"column 'y_max': empty or inverted ROI: y_max {cells['y_max']} <= y_min {cells['y_min']}"
    return (x_min, y_min, x_max, y_max), None


def _row(csv_path: Path, number: int, line: int, cells: dict[str, str]) -> tuple[RoiRow | None, str | None]:
    """(row, None) when valid, else (None, problem naming the row)."""
    where = f"row {number} (line {line})"
    uid = cells.get("sop_instance_uid", "")
    image = cells.get("image", "")
    if not uid and not image:
        return None, f"{where}: neither sop_instance_uid nor image given"
    box, problem = _box(cells)
    if box is None:
        return None, f"{where}: {problem}"
    image_path = None
    if image:
        image_path = Path(image) if Path(image).is_absolute() else csv_path.parent / image
    row = RoiRow(row=number, line=line, sop_instance_uid=uid, image=image_path,
                 vertebra=cells.get("vertebra", ""), box=box)
    return row, None


def _check_columns(csv_path: Path, columns: Sequence[str]) -> None:
    missing = [c for c in ROI_COLUMNS if c not in columns]
    if missing:
        raise RoiTableError(csv_path, f"ROI CSV lacks column(s) {', '.join(missing)} (needs {', '.join(ROI_COLUMNS)})")
    if not any(c in columns for c in ROI_KEY_COLUMNS):
        raise RoiTableError(csv_path, "ROI CSV needs a 'sop_instance_uid' or an 'image' column to match images")


def read_rois(path: PathLike) -> RoiTable:
    """Read and check a ROI table; see the module docstring for its columns, rule and matching.

    Raises RoiTableError (a ValueError) naming the file: not found, unreadable, missing columns, or
    bad rows (each named ``row N (line L)``; the first five are in the message, all in ``problems``).
    A table with a header and no rows is valid and matches nothing.
    """
    csv_path = Path(path)
    if not csv_path.is_file():
        raise RoiTableError(csv_path, "ROI file not found")
    rows: list[RoiRow] = []
    problems: list[str] = []
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            header = [name.strip() for name in next(reader, [])]
            if not header:
                raise RoiTableError(csv_path, "ROI CSV is empty (no header line)")
            _check_columns(csv_path, header)
            for record in reader:
                if not record or all(cell.strip() == "" for cell in record) and len(record) == 1:
                    continue  # a blank line
                cells = {name: (record[i].strip() if i < len(record) else "") for i, name in enumerate(header)}
                row, problem = _row(csv_path, len(rows) + len(problems) + 1, reader.line_num, cells)
                if row is not None:
                    rows.append(row)
                else:
                    problems.append(problem or "")
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise RoiTableError(csv_path, f"cannot read the ROI CSV ({type(error).__name__}: {error})") from error
    if problems:
        shown = "; ".join(problems[:_SHOWN_PROBLEMS])
        more = f"; ... ({len(problems)} bad rows in all)" if len(problems) > _SHOWN_PROBLEMS else ""
        raise RoiTableError(csv_path, f"bad ROI rows: {shown}{more}", problems)
    return RoiTable(csv_path, rows)
