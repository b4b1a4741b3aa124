"""The image gate: is what the locator found a lateral vertebral column?

A locator finds "vertebrae" on anything: ribs on a chest film, bowel loops, noise. Before a
grade is written, the chain it found (on the canonical film: head up, anterior left) must look like
a lateral column, and the learned view score (``gate.view``) must agree:

- a chain: at least ``MIN_VERTEBRAE`` bodies, neighbours about one body height apart with no gap
  beyond a missed vertebra, on a smooth curve running head to foot;
- bodies of a vertebra's size where the pixel spacing is known (10-60 mm tall, 12-90 mm deep on
  the detector: magnification included);
- neighbours tilted alike (no kink beyond ``MAX_KINK_DEG`` between neighbours; from 5 bodies on
  without the single most tilted body, so one body's misplaced points do not refuse a film);
- the anterior side on the same side for (nearly) every body.

:func:`column_refusal` gives the reason ("no lateral vertebral column found: ...", naming what
was missing) or None. :func:`spine_order` and :func:`expected_steps` (the chain along the spine
and its gaps over the local spacing) are also the level labelling's (``locate.labelling``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NO_COLUMN = "no lateral vertebral column found"
MIN_VERTEBRAE = 3
MAX_STEP = 2.7  # a neighbour gap over the local median: up to one missed vertebra (2) with slack
MIN_STEP = 0.45
# median centre gap over median box height: boxes may hold the endplates' rims and some margin (DRR
# phantom bodies, seed 0: 0.8 on true columns), so a neighbour is at least 0.6 box heights away
GAP_PER_HEIGHT = (0.6, 2.6)
HEIGHT_MM = (10.0, 60.0)
DEPTH_MM = (12.0, 90.0)
MAX_AXIS_DEG = 50.0  # the chain's principal axis from the head-foot direction
MAX_KINK_DEG = 35.0  # between neighbours, without the one most tilted body from 5 bodies on (``_kink``)
MAX_OFF_CURVE = 0.6  # centre distance from the fitted curve, in body depths
MIN_SIDE_AGREEMENT = 0.8
MIN_VIEW_PROBABILITY = 0.5


def spine_order(centres: np.ndarray, degree: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Order of (N, 2) centres along the spine and the N-1 arc lengths between consecutive ones.

    The principal axis (largest variance) gives the running coordinate t; a polynomial
    s(t) of the perpendicular coordinate (degree at most ``degree`` and N - 2) is the spine
    curve, and the gaps are measured along it. The axis is oriented towards +y (image down), so
    the order is top to bottom for an upright spine whatever the input order.
    """
    pts = np.asarray(centres, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise ValueError(f"centres must have shape (N, 2), got {pts.shape}")
    n = len(pts)
    if n < 2:
        return np.arange(n), np.zeros(0)
    centred = pts - pts.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    axis = vt[0] if (vt[0][1], vt[0][0]) >= (0.0, 0.0) else -vt[0]
    normal = np.array([-axis[1], axis[0]])
    t, s = centred @ axis, centred @ normal
    order = np.argsort(t, kind="stable")
    t, s = t[order], s[order]
    deg = int(min(degree, max(n - 2, 0)))
    coef = np.polyfit(t, s, deg) if deg > 0 else np.zeros(1)
    dense = np.linspace(0.0, 1.0, 17)[None, :]  # samples per gap for the arc length
    ts = t[:-1, None] + (t[1:] - t[:-1])[:, None] * dense
    ss = np.polyval(coef, ts)
    gaps = np.hypot(np.diff(ts, axis=1), np.diff(ss, axis=1)).sum(axis=1)
    return order, gaps


def expected_steps(gaps: np.ndarray, window: int = 3) -> np.ndarray:
    """Each gap over the median of the other gaps within ``window`` on either side (1.0 if none)."""
    gaps = np.asarray(gaps, dtype=np.float64)
    out = np.ones_like(gaps)
    for i in range(gaps.size):
        others = np.concatenate([gaps[max(0, i - window): i], gaps[i + 1: i + 1 + window]])
        others = others[others > 0]
        if others.size:
            out[i] = gaps[i] / float(np.median(others))
    return out


@dataclass(frozen=True)
class ColumnCheck:
    """What the gate measured on one chain (for the reason and for tests)."""

    count: int
    steps: np.ndarray
    gap_per_height: float
    height_mm: float | None
    depth_mm: float | None
    axis_deg: float
    kink_deg: float
    off_curve: float
    side_agreement: float


def measure_column(points: np.ndarray, boxes: np.ndarray, spacing_mm: tuple[float, float] | None) -> ColumnCheck:
    """The chain's measurements from its (N, 6, 2) six points (sa, sm, sp, ia, im, ip) and (N, 4) boxes,
    canonical pixels, cranial first; ``spacing_mm`` (row, col) or None."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 6, 2)
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    n = len(pts)
    centres = pts.mean(axis=1)
    height_px = np.median(boxes[:, 3] - boxes[:, 1]) if n else 0.0
    depth_px = np.median(boxes[:, 2] - boxes[:, 0]) if n else 0.0
    order, gaps = spine_order(centres) if n >= 2 else (np.arange(n), np.zeros(0))
    steps = expected_steps(gaps) if gaps.size else np.zeros(0)
    gap_per_height = float(np.median(gaps) / height_px) if gaps.size and height_px > 0 else float("nan")
    height_mm = depth_mm = None
    if spacing_mm is not None and np.all(np.isfinite(spacing_mm)):
        height_mm, depth_mm = float(height_px * spacing_mm[0]), float(depth_px * spacing_mm[1])
    axis_deg = off_curve = 0.0
    if n >= 2:
        centred = centres - centres.mean(axis=0)
        direction = np.linalg.svd(centred, full_matrices=False)[2][0]
        axis_deg = float(np.degrees(np.arccos(min(1.0, abs(direction[1])))))
        if n >= 4:  # distance across the principal axis from a cubic along it
            t, s = centred @ direction, centred @ np.array([-direction[1], direction[0]])
            fit = np.polyval(np.polyfit(t, s, min(3, n - 2)), t)
            off_curve = float(np.max(np.abs(s - fit)) / max(depth_px, 1e-9))
    # each body's craniocaudal axis: from the inferior endplate's middle to the superior's
    axes = pts[:, 1] - pts[:, 4]
    angles = np.degrees(np.arctan2(axes[:, 0], -axes[:, 1]))
    kink = _kink(angles[order])
    anterior_left = (pts[:, 0, 0] + pts[:, 3, 0]) < (pts[:, 2, 0] + pts[:, 5, 0])
    agreement = float(max(anterior_left.mean(), 1.0 - anterior_left.mean())) if n else 0.0
    return ColumnCheck(n, steps, gap_per_height, height_mm, depth_mm, axis_deg, kink, off_curve, agreement)


def _kink(angles: np.ndarray) -> float:
    """The largest tilt between neighbours (degrees, wrapped to +-180), in chain order; from 5 bodies on
    without the one body furthest from the chain's median tilt (its points may be misplaced, which
    makes two neighbour pairs look kinked)."""
    if len(angles) < 2:
        return 0.0
    if len(angles) >= 5:
        deviation = np.abs((angles - np.median(angles) + 180.0) % 360.0 - 180.0)
        angles = np.delete(angles, int(np.argmax(deviation)))
    return float(np.max(np.abs((np.diff(angles) + 180.0) % 360.0 - 180.0)))


def column_problems(check: ColumnCheck, view_probability: float | None = None) -> list[str]:
    """What is wrong with a measured chain for a lateral column (empty: nothing)."""
    problems: list[str] = []
    if check.count < MIN_VERTEBRAE:
        return [f"{check.count} vertebra-like bodies (a column needs {MIN_VERTEBRAE})"]
    if view_probability is not None and view_probability < MIN_VIEW_PROBABILITY:
        problems.append(f"lateral-spine view score {view_probability:.2f}")
    if check.steps.size and (check.steps.max() > MAX_STEP or check.steps.min() < MIN_STEP):
        problems.append(f"neighbour gaps {check.steps.min():.1f}-{check.steps.max():.1f} times the local median")
    low, high = GAP_PER_HEIGHT
    if np.isfinite(check.gap_per_height) and not low <= check.gap_per_height <= high:
        problems.append(f"neighbours {check.gap_per_height:.1f} body heights apart")
    if check.height_mm is not None and not HEIGHT_MM[0] <= check.height_mm <= HEIGHT_MM[1]:
        problems.append(f"bodies {check.height_mm:.0f} mm tall (a vertebra: {HEIGHT_MM[0]:.0f}-{HEIGHT_MM[1]:.0f} mm)")
    if check.depth_mm is not None and not DEPTH_MM[0] <= check.depth_mm <= DEPTH_MM[1]:
        problems.append(f"bodies {check.depth_mm:.0f} mm deep (a vertebra: {DEPTH_MM[0]:.0f}-{DEPTH_MM[1]:.0f} mm)")
    if check.axis_deg > MAX_AXIS_DEG:
        problems.append(f"the chain runs {check.axis_deg:.0f} degrees off head-foot")
    if check.kink_deg > MAX_KINK_DEG:
        problems.append(f"neighbours tilted {check.kink_deg:.0f} degrees apart")
    if check.off_curve > MAX_OFF_CURVE:
        problems.append(f"bodies {check.off_curve:.1f} body depths off a smooth curve")
    if check.side_agreement < MIN_SIDE_AGREEMENT:
        problems.append(f"anterior side consistent for {100 * check.side_agreement:.0f}% of bodies")
    return problems


def column_refusal(points: np.ndarray, boxes: np.ndarray, spacing_mm: tuple[float, float] | None,
                   view_probability: float | None = None) -> str | None:
    """"no lateral vertebral column found: <what was missing>" for a chain that is not one, else None."""
    problems = column_problems(measure_column(points, boxes, spacing_mm), view_probability)
    return f"{NO_COLUMN}: {'; '.join(problems)}" if problems else None
