"""Six-point vertebral morphometry: heights, Genant's height ratios and the morphometric grade.

Six points per vertebral body on a lateral radiograph, in this order along axis -2::

    sa  superior endplate, anterior      ia  inferior endplate, anterior
    sm  superior endplate, middle        im  inferior endplate, middle
    sp  superior endplate, posterior     ip  inferior endplate, posterior

each (x, y) = (column, row) in original pixels. Ha, Hm and Hp are the distances between the
matching superior and inferior points (Genant et al. 1993; six-point morphometry).

Ratios (quantitative morphometry): wedge Ha/Hp, biconcave Hm/Hp, crush Hp against the
expected posterior height, which is the mean Hp of the adjacent levels unless an expected
height is given. Height loss of a shape is ``1 - ratio``; the largest loss gives the deformity
kind and Genant's grade: < 20 % normal, 20-25 % mild, 25-40 % moderate, > 40 % severe.

Units: ImagerPixelSpacing is measured at the detector (distances are magnified by the
source-to-image / source-to-object ratio: "detector mm"); PixelSpacing on a projection
radiograph may be calibrated to the patient ("patient mm"). Without spacing, heights are in
pixels. Ratios are unitless either way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# The six points' order along axis -2 (POINT_NAMES) and their flat column names sa_x .. ip_y in the
# order of ``points.reshape(..., 12)`` (POINT_COLUMNS) are the manifest's, kept in one place.
from spine_dfl.io.vocabulary import GENANT_GRADES, POINT_COLUMNS, POINT_NAMES

DEFORMITY_KINDS: tuple[str, ...] = ("wedge", "biconcave", "crush")
MORPHOMETRIC_GRADES: tuple[str, ...] = GENANT_GRADES  # the morphometric grade uses the semi-quantitative names

# Lower edges of Genant's bands of height loss: mild from 20 %, moderate from 25 %, severe above 40 %.
MILD_LOSS, MODERATE_LOSS, SEVERE_LOSS = 0.20, 0.25, 0.40

UNIT_BY_SPACING_SOURCE: dict[str, str] = {
    "ImagerPixelSpacing": "detector mm",
    "PixelSpacing": "patient mm",
    "nifti": "patient mm",  # NIfTI voxel sizes are defined in the patient (scanner) space
}
UNITS: tuple[str, ...] = ("detector mm", "patient mm", "pixels")


@dataclass(frozen=True)
class Heights:
    """Anterior, middle and posterior body heights (arrays of the points' batch shape) and their unit."""

    anterior: np.ndarray
    middle: np.ndarray
    posterior: np.ndarray
    unit: str


@dataclass(frozen=True)
class Morphometry:
    """Per-vertebra morphometry along a spine (arrays of length N, one per vertebra).

    ``crush_ratio`` is NaN where no expected posterior height is known (a lone vertebra);
    ``height_loss`` is the largest of the three shapes' losses (0 when every ratio is >= 1),
    ``kind`` the shape with that loss ("none" when the grade is normal).
    """

    heights: Heights
    wedge_ratio: np.ndarray
    biconcave_ratio: np.ndarray
    crush_ratio: np.ndarray
    height_loss: np.ndarray
    grade: tuple[str, ...]
    kind: tuple[str, ...]


def height_unit(spacing_mm: Sequence[float] | None, spacing_source: str | None) -> str:
    """'detector mm', 'patient mm' or 'pixels' for a spacing and the attribute it came from.

    ``spacing_source`` is the DICOM attribute name ('ImagerPixelSpacing', 'PixelSpacing'),
    'nifti', or already a unit name.
    """
    if spacing_mm is None:
        return "pixels"
    if spacing_source in UNITS and spacing_source != "pixels":
        return str(spacing_source)
    if spacing_source not in UNIT_BY_SPACING_SOURCE:
        raise ValueError(
            f"spacing source {spacing_source!r} is not one of {sorted(UNIT_BY_SPACING_SOURCE)}: "
            "cannot tell detector mm from patient mm"
        )
    return UNIT_BY_SPACING_SOURCE[spacing_source]


def _check_points(points: np.ndarray) -> None:
    if points.ndim < 2 or points.shape[-2:] != (6, 2):
        raise ValueError(f"six-point landmarks must have shape (..., 6, 2), got {points.shape}")
    if not np.isfinite(points).all():
        raise ValueError("six-point landmarks contain non-finite coordinates")


def vertebral_heights(
    points: np.ndarray, spacing_mm: Sequence[float] | None = None, spacing_source: str | None = None
) -> Heights:
    """Ha, Hm, Hp from (..., 6, 2) points (x, y) in original pixels.

    ``spacing_mm`` is (row, column) mm per pixel, as in DICOM: y distances scale by the first,
    x distances by the second. Without it heights are in pixels.
    """
    pts = np.asarray(points, dtype=np.float64)
    _check_points(pts)
    unit = height_unit(spacing_mm, spacing_source)
    scale = np.ones(2) if spacing_mm is None else np.array([float(spacing_mm[1]), float(spacing_mm[0])])
    if not (np.isfinite(scale).all() and (scale > 0).all()):
        raise ValueError(f"pixel spacing must be positive and finite, got {spacing_mm}")
    delta = (pts[..., 0:3, :] - pts[..., 3:6, :]) * scale  # superior minus inferior, (..., 3, 2)
    lengths = np.linalg.norm(delta, axis=-1)
    return Heights(anterior=lengths[..., 0], middle=lengths[..., 1], posterior=lengths[..., 2], unit=unit)


def neighbour_posterior_height(posterior: np.ndarray, levels: Sequence[int] | None = None) -> np.ndarray:
    """Mean Hp of the adjacent levels (the one above and the one below, whichever are present).

    ``posterior``: (N,) heights of one spine. ``levels``: the vertebrae's level indices (consecutive
    integers for consecutive levels); a neighbour counts only when its level is exactly one away,
    so a missing level is not bridged. Without levels the array order is taken as consecutive.
    NaN where a vertebra has no neighbour.
    """
    hp = np.asarray(posterior, dtype=np.float64)
    idx = np.arange(hp.size) if levels is None else np.asarray(levels, dtype=np.int64)
    if idx.shape != hp.shape:
        raise ValueError(f"{idx.size} levels for {hp.size} heights")
    if np.unique(idx).size != idx.size:
        raise ValueError("a level occurs twice: neighbours are ambiguous")
    by_level = dict(zip(idx.tolist(), hp.tolist()))
    out = np.full(hp.shape, np.nan)
    for i, level in enumerate(idx.tolist()):
        adjacent = [by_level[n] for n in (level - 1, level + 1) if n in by_level]
        if adjacent:
            out[i] = float(np.mean(adjacent))
    return out


def genant_grade(height_loss: float) -> str:
    """Genant's morphometric grade of a fractional height loss (0.3 = 30 %)."""
    if not np.isfinite(height_loss):
        raise ValueError(f"height loss {height_loss} is not finite")
    if height_loss > SEVERE_LOSS:
        return "severe"
    if height_loss >= MODERATE_LOSS:
        return "moderate"
    if height_loss >= MILD_LOSS:
        return "mild"
    return "normal"


def spine_morphometry(
    points: np.ndarray,
    levels: Sequence[int] | None = None,
    spacing_mm: Sequence[float] | None = None,
    spacing_source: str | None = None,
    expected_posterior: Sequence[float] | None = None,
) -> Morphometry:
    """Heights, ratios, height loss, grade and kind for the (N, 6, 2) vertebrae of one image.

    ``expected_posterior`` (N,) replaces the neighbours' mean Hp as the crush reference (same
    unit as the heights); NaN entries fall back to the neighbours.
    """
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 3:
        raise ValueError(f"one spine's landmarks must have shape (N, 6, 2), got {pts.shape}")
    heights = vertebral_heights(pts, spacing_mm, spacing_source)
    hp = heights.posterior
    reference = neighbour_posterior_height(hp, levels)
    if expected_posterior is not None:
        given = np.asarray(expected_posterior, dtype=np.float64)
        if given.shape != hp.shape:
            raise ValueError(f"{given.size} expected heights for {hp.size} vertebrae")
        reference = np.where(np.isfinite(given), given, reference)
    with np.errstate(divide="ignore", invalid="ignore"):
        wedge = np.where(hp > 0, heights.anterior / hp, np.nan)
        biconcave = np.where(hp > 0, heights.middle / hp, np.nan)
        crush = np.where(reference > 0, hp / reference, np.nan)
    ratios = np.stack([wedge, biconcave, crush], axis=-1)  # (N, 3) in DEFORMITY_KINDS order
    losses = np.where(np.isfinite(ratios), 1.0 - ratios, -np.inf)
    worst = np.argmax(losses, axis=-1)
    loss = np.clip(np.take_along_axis(losses, worst[:, None], axis=-1)[:, 0], 0.0, None)
    loss = np.where(np.isfinite(loss), loss, 0.0)  # a degenerate body (Hp = 0) has no ratio
    grades = tuple(genant_grade(v) for v in loss.tolist())
    kinds = tuple("none" if g == "normal" else DEFORMITY_KINDS[k] for g, k in zip(grades, worst.tolist()))
    return Morphometry(heights, wedge, biconcave, crush, loss, grades, kinds)
