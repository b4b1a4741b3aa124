"""Vertebral levels in anatomical order, used to sort and label per-level results."""

from __future__ import annotations

LEVELS: tuple[str, ...] = (
    tuple(f"C{i}" for i in range(1, 8))
    + tuple(f"T{i}" for i in range(1, 13))
    + tuple(f"L{i}" for i in range(1, 6))
    + ("S1",)
)
_LEVEL_RANK = {name: rank for rank, name in enumerate(LEVELS)}


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


def sort_levels(names: list[object]) -> list[str]:
    """Unique level names in anatomical order, unknown names after the known ones."""
    return sorted({normalize_level(n) for n in names}, key=level_sort_key)
