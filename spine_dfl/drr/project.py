"""Truth on the film: vertebral bodies from a label mask, their silhouettes, six points and ROIs.

A VerSe-style mask labels whole vertebrae (body and posterior elements, the canal empty).
``body_mask_3d`` keeps the body: from the body centroid it walks posteriorly along the local
anterior direction (patient +y made perpendicular to the spine axis, which comes from the
neighbouring centroids) until the mask ends at the canal, and keeps what lies anterior of that
posterior wall.  ``project_body`` renders a body's path lengths (``render.path_lengths``) on a
detector window around it (which may reach beyond the film); the silhouette is where they exceed
``SILHOUETTE_MM`` (``silhouette`` gives it on the whole film).  ``six_points`` and ``roi`` read the
manifest's truth off it, ``body_on_film`` does all of it for one body.

Pixels are continuous (x = column, y = row), pixel (r, c) covering [c, c+1) x [r, r+1).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from spine_dfl.drr.geometry import DrrGeometry, project_points, projection_matrix, sub_geometry
from spine_dfl.io.errors import InputError
from spine_dfl.io.vocabulary import POINT_NAMES

__all__ = [
    "ANATOMICAL_ORDER", "IN_FILM", "MEASURE_POSITIONS", "ROI_PAD", "SILHOUETTE_MM", "BodyMaskError", "BodyOnFilm",
    "BodyProjection", "body_mask_3d", "body_on_film", "image_directions", "local_anterior", "project_body", "roi",
    "roi_of", "silhouette", "six_points", "spine_axes",
]

SILHOUETTE_MM = 1.0  # a pixel is in a body's silhouette when its ray runs > 1 mm through the body
IN_FILM = 1.0  # a vertebra is in the film when its whole silhouette is (its six points and ROI then are too)
ROI_PAD = 0.07  # the ROI pads the silhouette's box by this share of its size per side (as spine-dfl synth)
MEASURE_POSITIONS = (0.1, 0.5, 0.9)  # anterior, middle, posterior points: share of the depth from the anterior edge
# VerSe labels from head to tail: C1-C7, T1-T12, T13 (28), L1-L6, sacrum, coccyx.
ANATOMICAL_ORDER: tuple[int, ...] = (*range(1, 20), 28, *range(20, 28))
_RANK = {label: rank for rank, label in enumerate(ANATOMICAL_ORDER)}


class BodyMaskError(InputError):
    """A vertebra whose body cannot be found in its mask (the centroid lies outside it)."""


def _world(affine: np.ndarray, ijk: np.ndarray) -> np.ndarray:
    affine = np.asarray(affine, dtype=np.float64)
    return np.atleast_2d(np.asarray(ijk, dtype=np.float64)) @ affine[:3, :3].T + affine[:3, 3]


def spine_axes(centroids_ijk: Mapping[int, Sequence[float]], affine: np.ndarray) -> dict[int, np.ndarray]:
    """Unit superior direction of the spine (world) at each centroid: from the caudal to the cranial
    neighbour in VerSe's anatomical order (one side at the ends); +z when there is one centroid."""
    labels = sorted(centroids_ijk, key=lambda label: _RANK.get(label, label))
    points = {label: _world(affine, centroids_ijk[label])[0] for label in labels}
    axes: dict[int, np.ndarray] = {}
    for k, label in enumerate(labels):
        cranial = points[labels[k - 1]] if k > 0 else points[label]
        caudal = points[labels[k + 1]] if k + 1 < len(labels) else points[label]
        axis = cranial - caudal
        norm = float(np.linalg.norm(axis))
        axes[label] = axis / norm if norm > 1e-6 else np.array([0.0, 0.0, 1.0])
    return axes


def local_anterior(axis: Sequence[float]) -> np.ndarray:
    """Patient anterior (+y) made perpendicular to the spine axis ``axis`` (unit, world)."""
    axis = np.asarray(axis, dtype=np.float64)
    anterior = np.array([0.0, 1.0, 0.0]) - axis[1] * axis
    norm = float(np.linalg.norm(anterior))
    if norm < 1e-3:
        raise BodyMaskError("the spine axis runs antero-posteriorly: no anterior direction across it")
    return anterior / norm


def body_mask_3d(labels: np.ndarray, label: int, centroid_ijk: Sequence[float], affine: np.ndarray,
                 axis: Sequence[float] = (0.0, 0.0, 1.0), tube_mm: float = 3.0) -> np.ndarray:
    """The vertebral body of vertebra ``label`` in a whole-vertebra mask: bool, shape of ``labels``.

    Walks from the centroid towards posterior through a thin tube (``tube_mm`` half-width, across
    and along the spine ``axis``) until the tube leaves the mask (the canal), and keeps the
    vertebra's voxels anterior of that posterior wall that connect to the centroid's part.  A mask
    of bodies only (no canal) is kept whole.
    """
    vertebra = np.asarray(labels) == label
    ijk = np.argwhere(vertebra)
    if not len(ijk):
        raise BodyMaskError(f"label {label} has no voxels in the mask")
    axis = np.asarray(axis, dtype=np.float64)
    anterior = local_anterior(axis)
    across = np.cross(axis, anterior)
    rel = _world(affine, ijk) - _world(affine, centroid_ijk)[0]
    s, side, height = rel @ anterior, rel @ across, rel @ axis
    # a voxel's largest extent along the walk: bins this wide leave no gap inside solid bone
    step = 1.01 * float(np.abs(np.asarray(affine, dtype=np.float64)[:3, :3].T @ anterior).max())
    tube = (np.abs(side) <= tube_mm) & (np.abs(height) <= tube_mm)
    occupied = set(np.round(s[tube] / step).astype(int).tolist())
    wall = _posterior_wall(occupied, start_gap=max(2, int(math.ceil(5.0 / step))))
    if wall is None:
        raise BodyMaskError(f"label {label}: its centroid does not lie in the vertebra's mask")
    keep = s >= (wall - 0.5) * step
    out = np.zeros(vertebra.shape, dtype=bool)
    out[tuple(ijk[keep].T)] = True
    return _body_component(out, centroid_ijk)


def _body_component(kept: np.ndarray, centroid_ijk: Sequence[float]) -> np.ndarray:
    """The connected part of ``kept`` nearest the centroid: a transverse process that an axially
    rotated vertebra swings anterior of the wall plane is cut off from the body with its pedicle."""
    from scipy.ndimage import label as connected

    parts, count = connected(kept, structure=np.ones((3, 3, 3), dtype=bool))
    if count <= 1:
        return kept
    ijk = np.argwhere(parts > 0)
    nearest = ijk[np.argmin(np.linalg.norm(ijk - np.asarray(centroid_ijk, dtype=np.float64), axis=1))]
    return parts == parts[tuple(nearest)]


def _posterior_wall(occupied: set[int], start_gap: int) -> int | None:
    """The last occupied bin walking from bin 0 to negative bins (posterior); the walk may start up
    to ``start_gap`` bins outside the mask, else None."""
    low = min(occupied, default=0)
    b = 0
    while b not in occupied:
        b -= 1
        if -b > start_gap or b < low:
            return None
    while b - 1 in occupied:
        b -= 1
    return b


@dataclass(frozen=True)
class BodyProjection:
    """A body's path lengths (mm) on the detector window [x0, x0 + cols) x [y0, y0 + rows) of the
    film's detector plane (x0, y0 may be negative: beyond the film); silhouette = field > level."""

    field: np.ndarray
    x0: int
    y0: int
    level: float = SILHOUETTE_MM

    @property
    def silhouette(self) -> np.ndarray:
        return self.field > self.level

    def on_film(self, rows: int, cols: int) -> np.ndarray:
        """The silhouette with its pixels beyond the film cleared (same window)."""
        sil = self.silhouette.copy()
        sil[: max(0, -self.y0)] = False
        sil[max(0, rows - self.y0):] = False
        sil[:, : max(0, -self.x0)] = False
        sil[:, max(0, cols - self.x0):] = False
        return sil

    def in_film(self, rows: int, cols: int) -> float:
        """Share of the silhouette's pixels that lie on the film (0 when the silhouette is empty)."""
        total = int(self.silhouette.sum())
        return int(self.on_film(rows, cols).sum()) / total if total else 0.0


def project_body(body: np.ndarray, affine: np.ndarray, g: DrrGeometry, level: float = SILHOUETTE_MM) -> BodyProjection:
    """Path lengths of ``body`` (bool mask, or partial-volume coverage in [0, 1], on the voxel grid of
    ``affine``) on the detector window around its projection (2 px margin)."""
    import torch

    from spine_dfl.drr.render import path_lengths

    ijk = np.argwhere(body)
    if not len(ijk):
        return BodyProjection(np.zeros((0, 0), dtype=np.float32), 0, 0, level)
    lo = np.maximum(ijk.min(axis=0) - 2, 0)
    hi = np.minimum(ijk.max(axis=0) + 3, body.shape)
    crop, crop_affine = _upsampled(body[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]], affine, lo)
    corners = np.array([[a, b, c] for a in (-0.5, crop.shape[0] - 0.5) for b in (-0.5, crop.shape[1] - 0.5)
                        for c in (-0.5, crop.shape[2] - 0.5)])
    uv = project_points(projection_matrix(g), _world(crop_affine, corners))
    x0, y0 = (int(math.floor(v)) - 2 for v in uv.min(axis=0))
    x1, y1 = (int(math.ceil(v)) + 2 for v in uv.max(axis=0))
    field = path_lengths(torch.from_numpy(crop), crop_affine, sub_geometry(g, x0, y0, x1, y1)).numpy()
    return BodyProjection(field.astype(np.float32), x0, y0, level)


def silhouette(body: np.ndarray, affine: np.ndarray, g: DrrGeometry, threshold_mm: float = SILHOUETTE_MM) -> np.ndarray:
    """The body's silhouette on the whole film of ``g``: bool (rows, cols), where its ray runs more
    than ``threshold_mm`` through ``body``; rendered on the body's own window (``project_body``)."""
    projection = project_body(body, affine, g, threshold_mm)
    out = np.zeros((g.rows, g.cols), dtype=bool)
    if not projection.field.size:
        return out
    sil = projection.on_film(g.rows, g.cols)
    ys, xs = np.nonzero(sil)
    out[ys + projection.y0, xs + projection.x0] = True
    return out


def _upsampled(crop: np.ndarray, affine: np.ndarray, lo: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A bool crop (voxel ``lo`` of ``affine`` first) split into f^3 sub-voxels (f = voxel size / 0.5 mm,
    1-4), and its affine: bilinear sampling then blurs the silhouette's edge by a sub-voxel, not a
    voxel.  Partial-volume coverage (float) is already sub-voxel exact and only cropped."""
    affine = np.asarray(affine, dtype=np.float64)
    f = 1
    if crop.dtype == bool:
        f = int(np.clip(math.ceil(float(np.linalg.norm(affine[:3, :3], axis=0).max()) / 0.5 - 1e-6), 1, 4))
    fine = crop
    for axis in range(3):
        fine = np.repeat(fine, f, axis=axis)
    to_coarse = np.diag([1.0 / f, 1.0 / f, 1.0 / f, 1.0])
    to_coarse[:3, 3] = np.asarray(lo, dtype=np.float64) + 0.5 / f - 0.5
    return np.ascontiguousarray(fine), affine @ to_coarse


def image_directions(P: np.ndarray, centroid_world: Sequence[float], axis: Sequence[float],
                     anterior: Sequence[float] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The vertebra's image axes at its centroid: unit (up, anterior) 2D vectors, the projected
    superior ``axis`` and anterior direction (default ``local_anterior(axis)``), anterior made
    perpendicular to up."""
    c = np.asarray(centroid_world, dtype=np.float64)
    axis = np.asarray(axis, dtype=np.float64)
    front_dir = local_anterior(axis) if anterior is None else np.asarray(anterior, dtype=np.float64)
    base, top, front = project_points(P, np.stack([c, c + 5.0 * axis, c + 5.0 * front_dir]))
    up = (top - base) / max(float(np.linalg.norm(top - base)), 1e-9)
    ahead = (front - base) - float((front - base) @ up) * up
    norm = float(np.linalg.norm(ahead))
    if norm < 1e-6:
        raise BodyMaskError("the anterior direction runs along the ray: no anterior axis on this film")
    return up, ahead / norm


def six_points(field: np.ndarray, up: Sequence[float], anterior: Sequence[float], level: float = 0.5,
               origin: tuple[float, float] = (0.0, 0.0)) -> dict[str, tuple[float, float]] | None:
    """The six morphometry points (``sa`` .. ``ip`` -> (x, y) film pixels) of the silhouette
    ``field > level`` (a bool silhouette works with level 0.5), ``origin`` = the window's film position.

    Along the anterior axis (``anterior`` made perpendicular to ``up``) the anterior and posterior
    points lie 10 % of the silhouette's depth inside its anterior and posterior edges (at
    mid-height), the middle ones at mid-depth; each on the upper (superior) and lower edge of the silhouette, where the
    bilinearly interpolated field crosses ``level``.  None when the silhouette is empty.
    """
    field = np.asarray(field, dtype=np.float64)
    ys, xs = np.nonzero(field > level)
    if not len(xs):
        return None
    up = np.asarray(up, dtype=np.float64) / np.linalg.norm(up)
    ant = np.asarray(anterior, dtype=np.float64) - float(np.dot(anterior, up)) * up
    ant /= np.linalg.norm(ant)
    pixels = np.stack([xs + 0.5, ys + 0.5], axis=1)
    centre = pixels.mean(axis=0)
    s, h = (pixels - centre) @ ant, (pixels - centre) @ up
    # the walls at mid-height (the middle half of the height): a body tilted against ``up`` or with
    # irregular corners keeps its 10 % points on the endplates, not on a wall
    mid = np.abs(h - (h.max() + h.min()) / 2.0) <= 0.25 * (h.max() - h.min()) + 0.5
    front, back = float(s[mid].max()) + 0.5, float(s[mid].min()) - 0.5
    reach = float(np.abs(h).max()) + 3.0
    points: dict[str, tuple[float, float]] = {}
    for fraction, part in zip(MEASURE_POSITIONS, ("a", "m", "p")):
        base = centre + (front - fraction * (front - back)) * ant
        top, bottom = _edges(field, base, up, reach, level)
        points[f"s{part}"] = (float(top[0] + origin[0]), float(top[1] + origin[1]))
        points[f"i{part}"] = (float(bottom[0] + origin[0]), float(bottom[1] + origin[1]))
    return {name: points[name] for name in POINT_NAMES}


def _edges(field: np.ndarray, base: np.ndarray, up: np.ndarray, reach: float, level: float,
           dt: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Where the line base + t up leaves the longest run of ``field > level``: (upper, lower) points,
    each at the linearly interpolated crossing of ``level``."""
    from scipy.ndimage import map_coordinates

    t = np.arange(-reach, reach + dt, dt)
    line = base[None, :] + t[:, None] * up[None, :]
    values = map_coordinates(field, [line[:, 1] - 0.5, line[:, 0] - 0.5], order=1, cval=0.0)
    inside = values > level
    if not inside.any():  # the line only grazes the silhouette: take its strongest samples
        inside = values >= values.max()
    padded = np.concatenate([[0], inside.astype(np.int8), [0]])
    starts, ends = np.flatnonzero(np.diff(padded) == 1), np.flatnonzero(np.diff(padded) == -1) - 1
    k = int(np.argmax(ends - starts))
    lo, hi = int(starts[k]), int(ends[k])

    def crossing(i: int, j: int) -> float:  # i inside, j outside (or off the line)
        if j < 0 or j >= len(t) or values[i] == values[j]:
            return float(t[i])
        return float(t[i] + (t[j] - t[i]) * (values[i] - level) / (values[i] - values[j]))

    return base + crossing(hi, hi + 1) * up, base + crossing(lo, lo - 1) * up


def roi_of(box: tuple[float, float, float, float], rows: int, cols: int,
           pad: float = ROI_PAD) -> tuple[int, int, int, int]:
    """The manifest ROI of a tight box (x_min, y_min, x_max, y_max): padded by ``pad`` of its size
    per side, whole pixels (floor / ceil), clipped to the film; max exclusive."""
    x0, y0, x1, y1 = box
    px, py = pad * (x1 - x0), pad * (y1 - y0)
    return (max(int(math.floor(x0 - px)), 0), max(int(math.floor(y0 - py)), 0),
            min(int(math.ceil(x1 + px)), cols), min(int(math.ceil(y1 + py)), rows))


def _box(silhouette: np.ndarray, origin: tuple[int, int]) -> tuple[float, float, float, float] | None:
    ys, xs = np.nonzero(silhouette)
    if not len(xs):
        return None
    return (float(xs.min() + origin[0]), float(ys.min() + origin[1]),
            float(xs.max() + 1 + origin[0]), float(ys.max() + 1 + origin[1]))


def roi(silhouette: np.ndarray, rows: int, cols: int, origin: tuple[int, int] = (0, 0),
        pad: float = ROI_PAD) -> tuple[int, int, int, int] | None:
    """``roi_of`` the silhouette's pixel box (its window at film pixel ``origin``); None when the
    silhouette is empty or the ROI is empty after clipping to the film."""
    box = _box(silhouette, origin)
    if box is None:
        return None
    out = roi_of(box, rows, cols, pad)
    return out if out[2] > out[0] and out[3] > out[1] else None


@dataclass(frozen=True)
class BodyOnFilm:
    """A body on the detector (unstored, unrotated pixels): the share of its silhouette inside the
    film, its tight pixel box (on the whole detector plane), its six points and its projected centre."""

    visible: float
    box: tuple[float, float, float, float]
    points: dict[str, tuple[float, float]]
    centre: tuple[float, float]


def body_on_film(body: np.ndarray, affine: np.ndarray, g: DrrGeometry, centre: Sequence[float], up: Sequence[float],
                 anterior: Sequence[float] | None = None, reach_mm: float | None = None) -> BodyOnFilm | None:
    """One body (bool mask or partial-volume coverage with its own ``affine``) around world ``centre``
    on the film of ``g``, with ``up`` its superior axis and ``anterior`` its anterior direction
    (default: patient +y across ``up``); None when its silhouette misses the film.  ``reach_mm`` is
    accepted for older callers and unused: the window follows the body's own extent."""
    projection = project_body(body, affine, g)
    visible = projection.in_film(g.rows, g.cols)
    if visible == 0.0:
        return None
    P = projection_matrix(g)
    up_2d, anterior_2d = image_directions(P, centre, up, anterior)
    points = six_points(projection.field, up_2d, anterior_2d, level=projection.level, origin=(projection.x0, projection.y0))
    box = _box(projection.silhouette, (projection.x0, projection.y0))
    c2 = project_points(P, np.asarray(centre, dtype=np.float64)[None])[0]
    return BodyOnFilm(visible, box, points, (float(c2[0]), float(c2[1])))  # type: ignore[arg-type]
