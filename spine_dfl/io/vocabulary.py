"""The names results are labelled with: vertebral levels in anatomical order and the Genant grades.

One copy for the whole package: manifests, synthetic cohorts, reports and DICOM outputs sort and
spell levels and grades through here.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["GENANT_GRADES", "LEVELS", "POINT_COLUMNS", "POINT_NAMES", "grade_name", "level_sort_key", "normalize_level",
           "sort_levels"]

LEVELS: tuple[str, ...] = (
    tuple(f"C{i}" for i in range(1, 8))
    + tuple(f"T{i}" for i in range(1, 13))
    + tuple(f"L{i}" for i in range(1, 6))
    + ("S1",)
)
_LEVEL_RANK = {name: rank for rank, name in enumerate(LEVELS)}

# Genant semiquantitative grades, in order of severity (class 0 = no fracture).
GENANT_GRADES: tuple[str, ...] = ("normal", "mild", "moderate", "severe")

# Six-point vertebral morphometry: the anterior, middle and posterior points of the superior (s)
# and inferior (i) endplates, each (x, y) = (column, row) in original pixels.
POINT_NAMES: tuple[str, ...] = ("sa", "sm", "sp", "ia", "im", "ip")
POINT_COLUMNS: tuple[str, ...] = tuple(f"{name}_{axis}" for name in POINT_NAMES for axis in ("x", "y"))


def grade_name(text: str) -> str | None:
    """The Genant grade a grades-table cell names: ``normal`` .. ``severe`` or 0-3 (``2`` or ``2.0``, as
    VerSe's tables write it); None for anything else."""
    value = text.strip().lower()
    if value in GENANT_GRADES:
        return value
    if value in ("0", "1", "2", "3", "0.0", "1.0", "2.0", "3.0"):
        return GENANT_GRADES[int(float(value))]
    return None


def normalize_level(name: object) -> str:
    """Canonical spelling of a level (``" l1 "`` -> ``"L1"``); unknown text is kept as given (stripped)."""
    text = "" if name is None else str(name).strip()
    upper = text.upper()
    return upper if upper in _LEVEL_RANK else text


def level_sort_key(name: object) -> tuple[int, int, str]:
    """Sort key: known levels in anatomical order (C1 .. S1), then anything else alphabetically."""
    text = normalize_level(name)
    if text in _LEVEL_RANK:
        return (0, _LEVEL_RANK[text], text)
    return (1, 0, text)


def sort_levels(names: Iterable[object]) -> list[str]:
    """Unique level names in anatomical order, unknown names after the known ones."""
    return sorted({normalize_level(n) for n in names}, key=level_sort_key)
