"""Sub-pixel endplate snapping of the locator's six points on the full-resolution radiograph.

The locator predicts the six points from its stride-4 maps of a downscaled input, a few pixels
off; Genant's ratios (Ha/Hp, Hm/Hp) of a ~40-pixel body then err by ~0.07, enough to move a
vertebra across a 5 % grade band. Each point lies on an endplate, which a lateral radiograph
shows as an intensity step: the body (bone, bright) on one side, the disc (dark) on the other.

For each vertebra the superior-inferior axis is the mean direction from its three superior
points to their inferior partners (the locator's own points, no truth). Along that axis, through
each point, the intensity profile is sampled (bilinear, ``step`` pixels) over +-``window`` of the
vertebra's mean height, averaged across a strip ``strip`` of the height wide along the endplate,
and smoothed with a Gaussian of ``sigma`` pixels. The point moves to the strongest step of the
right polarity -- rising into the body at a superior endplate, falling out of it at an inferior
one -- located to sub-sample precision by a parabola through the derivative's peak.

Along the endplates (where Ha, Hm, Hp are measured) the locator puts the anterior points a few
pixels too far back, which makes a wedge read too tall in front. So, before each axial pass, the
anterior and posterior walls are found the same way on profiles perpendicular to the axis (a rising
step into the body at the anterior wall, a falling one out of it at the posterior wall, measured on
strips near each endplate, away from the waisted mid-height and the rounded corners), and the points
are placed at the manifest's convention: ``wall_inset`` (0.1) of the wall-to-wall depth inside each
wall, the middle points at mid-depth (``spine-dfl synth`` writes them there: ``anatomy.MEASURE_X``).

A point keeps the locator's position (``refined`` False; along the endplate, ``walls`` False) when
its profile has no clear edge: the peak derivative is not ``min_contrast`` times the profile's noise
(the derivative's robust spread, from the median absolute deviation) or it lies on the window's
border, or the profile leaves the image. The same code runs on real radiographs (bone bright: MONOCHROME2 as read by
``spine_dfl.io``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

if TYPE_CHECKING:
    from spine_dfl.locate.run import LocatedVertebrae


@dataclass(frozen=True)
class RefineSettings:
    """Fractions of the vertebra's mean six-point height, and pixels where said."""

    # Half-length of the profile along the axis: long enough for a crushed body's points (up to ~0.4
    # of the locator's height off), short of the neighbour's same endplate (~1.2 heights away).
    window: float = 0.45
    strip: float = 0.08  # half-width of the strip averaged along the endplate
    step: float = 0.25  # profile sampling step, pixels
    sigma: float = 1.0  # Gaussian smoothing of the profile, pixels
    min_contrast: float = 4.0  # peak derivative / robust noise of the derivative
    passes: int = 3  # each pass re-derives the axis and height from the previous pass's points
    # Where the anterior and posterior points lie along the endplates: this fraction of the body's
    # wall-to-wall depth inside each wall, the middle points at mid-depth -- the manifest's convention
    # as ``spine-dfl synth`` writes it (``synth.anatomy.MEASURE_X`` = -0.8, 0, 0.8 of the half-depth).
    wall_inset: float = 0.1
    # Half-length of the wall profile along the endplates, around the wall the locator's points imply.
    wall_window: float = 0.25
    # The wall is sampled on two strips (fractions of the pair's height from its centre) near the
    # endplates: the walls are waisted at mid-height, and rounded at the endplates' corners.
    wall_strip: tuple[float, float] = (0.3, 0.42)


@dataclass(frozen=True)
class RefinedPoints:
    """``points`` (N, 6, 2) refined (or kept) points; ``refined`` (N, 6) which points moved to an edge;
    ``shift`` (N, 6) signed axial move in pixels (0 where kept); ``walls`` (N, 6) which points were placed
    along their endplate from a found wall (in the last pass)."""

    points: np.ndarray
    refined: np.ndarray
    shift: np.ndarray
    walls: np.ndarray


def vertebra_axis(points: np.ndarray) -> tuple[np.ndarray, float]:
    """(unit superior -> inferior direction (2,), mean height in pixels) of one vertebra's (6, 2) points."""
    pairs = points[3:6] - points[0:3]
    heights = np.hypot(pairs[:, 0], pairs[:, 1])
    mean = pairs.mean(axis=0)
    norm = float(np.hypot(*mean))
    if norm <= 0 or not np.isfinite(norm):
        return np.array([0.0, 1.0]), float(heights.mean())
    return mean / norm, float(heights.mean())


def edge_offset(profile: np.ndarray, step: float, sigma: float, rising: bool, min_contrast: float) -> float | None:
    """Offset (pixels, from the profile's centre sample) of the strongest step of the given polarity,
    sub-sample by a parabola through the derivative's peak; None when no clear step is there."""
    smooth = ndimage.gaussian_filter1d(profile.astype(np.float64), sigma / step, mode="nearest")
    derivative = np.gradient(smooth) / step * (1.0 if rising else -1.0)
    k = int(np.argmax(derivative))
    peak = float(derivative[k])
    noise = 1.4826 * float(np.median(np.abs(derivative - np.median(derivative))))
    if not np.isfinite(peak) or peak <= 0 or peak < min_contrast * noise or k == 0 or k == len(derivative) - 1:
        return None
    left, right = derivative[k - 1], derivative[k + 1]
    curvature = left - 2.0 * peak + right
    delta = 0.5 * (left - right) / curvature if curvature < 0 else 0.0
    return (k + float(np.clip(delta, -0.5, 0.5)) - (len(profile) - 1) / 2.0) * step


def _sample(image: np.ndarray, xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bilinear samples of ``image`` at continuous (x, y) positions ``xy`` (..., 2), and whether each lies
    in the image (pixel i covers [i, i+1), its centre is i + 0.5)."""
    rows, cols = image.shape
    inside = (xy[..., 0] >= 0.5) & (xy[..., 0] <= cols - 0.5) & (xy[..., 1] >= 0.5) & (xy[..., 1] <= rows - 0.5)
    coords = np.stack([xy[..., 1] - 0.5, xy[..., 0] - 0.5]).reshape(2, -1)
    samples = ndimage.map_coordinates(image, coords, order=1, mode="nearest").reshape(xy.shape[:-1])
    return samples, inside


def _profiles(image: np.ndarray, points: np.ndarray, axis: np.ndarray, height: float,
              settings: RefineSettings) -> tuple[np.ndarray, np.ndarray]:
    """(6, T) strip-averaged profiles through the six points along ``axis``, and (6,) whether each lies in the image."""
    half = settings.window * height
    t = np.arange(-np.floor(half / settings.step), np.floor(half / settings.step) + 1) * settings.step
    across = np.array([-axis[1], axis[0]])
    s = np.linspace(-settings.strip * height, settings.strip * height, 5)
    # (6, S, T) sample positions (x, y)
    xy = points[:, None, None, :] + t[None, None, :, None] * axis + s[None, :, None, None] * across
    samples, inside = _sample(image, xy)
    return samples.mean(axis=1), inside.all(axis=(1, 2))


def _wall_edge(image: np.ndarray, centre: np.ndarray, along: np.ndarray, across: np.ndarray, half: float,
               rising: bool, settings: RefineSettings) -> float | None:
    """Offset along ``along`` (pixels, from ``centre``) of a wall's edge, on a profile averaged over a strip
    ``across`` (S, 2) of offsets from ``centre``; None without a clear edge or when it leaves the image."""
    t = np.arange(-np.floor(half / settings.step), np.floor(half / settings.step) + 1) * settings.step
    xy = centre + t[None, :, None] * along + across[:, None, :]  # (S, T, 2)
    samples, inside = _sample(image, xy)
    if not inside.all():
        return None
    return edge_offset(samples.mean(axis=0), settings.step, settings.sigma, rising, settings.min_contrast)


def snap_to_walls(image: np.ndarray, points: np.ndarray, settings: RefineSettings) -> tuple[np.ndarray, np.ndarray]:
    """One vertebra's (6, 2) points moved along its endplates (perpendicular to its axis) to the manifest's
    convention -- the anterior and posterior points ``wall_inset`` of the wall-to-wall depth inside the anterior
    and posterior walls, the middle points at mid-depth -- and (6,) which points were placed from a found wall.

    Each endplate's walls are measured on a strip near it (``wall_strip`` of the anterior or posterior pair's
    height from the pair's centre), so that the superior and inferior points follow the walls even where the
    locator's axis is tilted. A wall is the strongest step of the right polarity (rising into the body at the
    anterior wall, falling out of it at the posterior one) within +-``wall_window`` of the height around where
    the locator's points put it. A point whose wall is not found keeps its position; with one wall of an
    endplate only, the depth is the one its points imply, and its middle point stays.
    """
    axis, height = vertebra_axis(points)
    along = np.array([-axis[1], axis[0]])
    if ((points[2] + points[5]) - (points[0] + points[3])) @ along < 0:
        along = -along  # anterior -> posterior
    placed = np.zeros(6, dtype=bool)
    inset = settings.wall_inset
    if not 0.0 <= inset < 0.5:
        return points, placed
    moved = points.copy()
    near, far = settings.wall_strip
    for first, sign in ((0, -1.0), (3, 1.0)):  # superior endplate (strips above the pairs' centres), inferior
        ends = np.array([first, first + 2])  # its anterior, posterior point
        span = float((points[ends[1]] - points[ends[0]]) @ along)
        if not span > 4 * settings.step:
            continue
        depth = span / (1.0 - 2.0 * inset)  # the depth the locator's points imply, wall to wall
        walls = [None, None]  # along-coordinates from this endplate's anterior point
        for side, (k, outward) in enumerate(((first, -1.0), (first + 2, 1.0))):
            pair = points[k + 3] - points[k] if k < 3 else points[k] - points[k - 3]
            centre = (points[k] + points[k + 3 if k < 3 else k - 3]) / 2.0
            across = sign * np.linspace(near, far, 6)[:, None] * abs(float(pair @ axis)) * axis
            guess = float((points[k] - points[first]) @ along) + outward * inset * depth
            anchor = centre + (guess - float((centre - points[first]) @ along)) * along
            offset = _wall_edge(image, anchor, along, across, settings.wall_window * height, outward < 0, settings)
            if offset is not None:
                walls[side] = guess + offset
        if walls[0] is not None and walls[1] is not None:
            if not walls[1] - walls[0] > 4 * settings.step:
                continue
            depth = walls[1] - walls[0]
        targets = {first: None if walls[0] is None else walls[0] + inset * depth,
                   first + 2: None if walls[1] is None else walls[1] - inset * depth,
                   first + 1: None if None in walls else (walls[0] + walls[1]) / 2.0}
        for k, u in targets.items():
            if u is not None:
                moved[k] = points[k] + (u - float((points[k] - points[first]) @ along)) * along
                placed[k] = True
    return moved, placed


def refine_points(pixels: np.ndarray, points: np.ndarray, settings: RefineSettings | None = None) -> RefinedPoints:
    """Snap each of the (N, 6, 2) points (sa, sm, sp, ia, im, ip; x, y original pixels) to its endplate edge
    on ``pixels`` (rows, cols), bone bright."""
    settings = settings or RefineSettings()
    image = np.asarray(pixels, dtype=np.float32)
    if image.ndim == 3 and image.shape[0] == 1:
        image = image[0]
    if image.ndim != 2:
        raise ValueError(f"a radiograph must be (rows, cols) or (1, rows, cols), got {image.shape}")
    start = np.asarray(points, dtype=np.float64).reshape(-1, 6, 2)
    current = start.copy()
    refined = np.zeros(start.shape[:2], dtype=bool)
    walls = np.zeros(start.shape[:2], dtype=bool)
    rising = np.array([True, True, True, False, False, False])  # superior: disc -> body; inferior: body -> disc
    for _ in range(max(1, settings.passes)):
        for n in range(len(current)):
            if not np.isfinite(current[n]).all():
                continue
            axis, height = vertebra_axis(current[n])
            if not height > 4 * settings.step:
                continue
            current[n], walls[n] = snap_to_walls(image, current[n], settings)
            profiles, inside = _profiles(image, current[n], axis, height, settings)
            for k in range(6):
                offset = edge_offset(profiles[k], settings.step, settings.sigma, bool(rising[k]),
                                     settings.min_contrast) if inside[k] else None
                if offset is not None:  # else the point stays where it is (the locator's, or the last pass's)
                    refined[n, k] = True
                    current[n, k] = current[n, k] + offset * axis
    shift = np.einsum("nkc,nkc->nk", current - start, _axes(current))
    return RefinedPoints(points=current, refined=refined, shift=np.where(refined, shift, 0.0), walls=walls)


def _axes(points: np.ndarray) -> np.ndarray:
    """(N, 6, 2) each point's vertebra axis."""
    out = np.zeros_like(points)
    for n in range(len(points)):
        if np.isfinite(points[n]).all():
            out[n] = vertebra_axis(points[n])[0]
    return out


def refine_located(located: LocatedVertebrae, pixels: np.ndarray, settings: RefineSettings | None = None) -> LocatedVertebrae:
    """``run.LocatedVertebrae`` with its detections' points refined on ``pixels`` (the radiograph they
    were located on, original pixels), ``refined`` and ``unrefined_points`` set."""
    det = located.detections
    if not len(det):
        return replace(located, refined=np.zeros((0, 6), bool), unrefined_points=det.points.copy())
    result = refine_points(pixels, det.points, settings)
    return replace(located, detections=replace(det, points=result.points), refined=result.refined,
                   unrefined_points=det.points)
