"""Manifest checks of the optional six-point landmark columns ``sa_x .. ip_y`` (``io.vocabulary.POINT_COLUMNS``).

A row either has all twelve cells as numbers or leaves all twelve empty. Points lie inside the
image (0..columns, 0..rows, original pixels). Within one image they are anatomically ordered:

- along the spine (the axis from the most cranial to the most caudal vertebra with points, so a
  head-down image is as valid as a head-up one), the levels' centres come in level order, and each
  superior endplate point lies above (cranial to) its inferior partner;
- the anterior points lie on the same side of the spine axis as on the image's other vertebrae
  (posterior to anterior points the same way on every vertebra and both endplates).

The axis needs two vertebrae with points and known levels; an image with one is checked for cells
and bounds only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from spine_dfl.io.vocabulary import POINT_COLUMNS, level_sort_key

Report = Callable[[int | None, "str | Sequence[str]", str], None]
SizeOf = Callable[[str], "tuple[int, int] | str"]


def check_point_header(columns: Sequence[str]) -> str | None:
    """The problem of a header with some but not all twelve point columns, else None."""
    present = [c for c in POINT_COLUMNS if c in columns]
    if present and len(present) < len(POINT_COLUMNS):
        missing = [c for c in POINT_COLUMNS if c not in columns]
        return (f"six-point landmark columns must come as all twelve of {', '.join(POINT_COLUMNS)} "
                f"(missing {', '.join(missing)})")
    return None


def parse_points(table: pd.DataFrame, rows: np.ndarray, report: Report) -> np.ndarray:
    """(N, 6, 2) points of the table's rows, NaN rows where all cells are empty or one is not a number."""
    text = table[list(POINT_COLUMNS)].astype(str).apply(lambda col: col.str.strip())
    values = text.apply(pd.to_numeric, errors="coerce").to_numpy(np.float64, copy=True)
    empty = (text == "").to_numpy()
    for i, row in enumerate(rows):
        if empty[i].all():
            continue
        bad = [c for c, ok in zip(POINT_COLUMNS, np.isfinite(values[i])) if not ok]
        if bad:
            report(int(row), bad, "six-point landmarks must be all numbers or all empty "
                                  f"(not a number: {', '.join(bad)})")
            values[i] = np.nan
    values[~np.isfinite(values).all(axis=1)] = np.nan
    return values.reshape(-1, 6, 2)


def check_inside(points: np.ndarray, images: Sequence[str], rows: np.ndarray, report: Report, size_of: SizeOf) -> None:
    """Every point lies inside its image (sizes from the headers; unreadable sizes are reported elsewhere)."""
    for i, image in enumerate(images):
        if not np.isfinite(points[i]).all() or not image:
            continue
        size = size_of(image)
        if isinstance(size, str):
            continue
        n_rows, n_cols = size
        outside = [POINT_COLUMNS[2 * k + axis] for k in range(6) for axis in (0, 1)
                   if not 0 <= points[i, k, axis] <= (n_cols, n_rows)[axis]]
        if outside:
            report(int(rows[i]), outside, f"landmark outside the image ({n_rows} rows x {n_cols} columns): "
                                          + ", ".join(f"{c} = {points[i].reshape(-1)[POINT_COLUMNS.index(c)]:g}"
                                                      for c in outside))


def check_order(points: np.ndarray, images: Sequence[str], levels: Sequence[str], rows: np.ndarray, report: Report) -> None:
    """Levels in order along the spine, superior above inferior, anterior on one side (module doc)."""
    by_image: dict[str, list[int]] = {}
    for i, image in enumerate(images):
        if np.isfinite(points[i]).all() and level_sort_key(levels[i])[0] == 0:
            by_image.setdefault(image, []).append(i)
    for members in by_image.values():
        if len(members) >= 2:
            _check_spine(points, sorted(members, key=lambda i: level_sort_key(levels[i])), levels, rows, report)


def _check_spine(points: np.ndarray, members: list[int], levels: Sequence[str], rows: np.ndarray, report: Report) -> None:
    """One image's vertebrae with points, cranial first."""
    centres = points[members].mean(axis=1)  # (n, 2)
    axis = centres[-1] - centres[0]
    length = float(np.hypot(*axis))
    if length == 0:
        return
    axis = axis / length  # cranial -> caudal
    along = centres @ axis
    for k in range(1, len(members)):
        if along[k] <= along[k - 1]:
            report(int(rows[members[k]]), "vertebra",
                   f"levels out of order along the spine: {levels[members[k]]} is not caudal to "
                   f"{levels[members[k - 1]]} (row {int(rows[members[k - 1]])}) by its six points")
    superior, inferior = points[members, :3], points[members, 3:]
    upside_down = ((inferior - superior) @ axis <= 0).any(axis=1)
    for k in np.flatnonzero(upside_down):
        report(int(rows[members[k]]), POINT_COLUMNS, "superior endplate points (sa, sm, sp) are not above the "
                                                     "inferior ones (ia, im, ip) along the spine")
    # Side of the anterior point relative to the spine axis: the sign of the cross product.
    anterior = np.concatenate([points[members, 0] - points[members, 2], points[members, 3] - points[members, 5]], 1)
    side = np.sign(axis[0] * anterior[:, 1::2] - axis[1] * anterior[:, 0::2])  # (n, 2): superior, inferior
    majority = 1.0 if (side > 0).sum() >= (side < 0).sum() else -1.0
    for k in np.flatnonzero((side != majority).any(axis=1)):
        report(int(rows[members[k]]), POINT_COLUMNS, "anterior and posterior landmarks are swapped: the anterior "
                                                     "points lie on the other side of the spine than on this "
                                                     "image's other vertebrae")
