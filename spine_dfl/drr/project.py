"""A vertebral body on the film: its silhouette, visibility, six morphometry points and ROI.

The silhouette is the body's path length on the detector (``render.path_lengths`` of its
partial-volume coverage, rendered only in a window around its projection), so it is as exact as
the projection itself.  The six points follow the manifest's convention: on the superior and
inferior edges of the silhouette, 10 % of the body's depth inside its anterior and posterior
walls and at mid-depth, along the body's projected anterior and superior directions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from spine_dfl.drr.geometry import DrrGeometry, project_points, projection_matrix, sub_geometry
from spine_dfl.drr.render import path_lengths

__all__ = ["BodyOnFilm", "body_mask_3d", "body_on_film", "roi_of"]

SILHOUETTE_MM = 1.0  # path length that makes a pixel part of the silhouette
IN_FILM = 1.0  # a vertebra is in the film when its whole silhouette is (its six points and ROI then are too)
ROI_PAD = 0.07  # the ROI pads the body's box by this share of its size on each side (as synth)
_WALL_INSET = 0.1


@dataclass(frozen=True)
class BodyOnFilm:
    """A body on the detector (unstored, unrotated pixels): the share of its silhouette inside the
    film, its tight box, its six points (name -> (x, y)) and its centre."""

    visible: float
    box: tuple[float, float, float, float]
    points: dict[str, tuple[float, float]]
    centre: tuple[float, float]


def _direction(P: np.ndarray, centre: np.ndarray, axis: np.ndarray) -> np.ndarray:
    """Unit image direction of a world axis at ``centre``."""
    a, b = project_points(P, np.stack([centre - 5 * axis, centre + 5 * axis]))
    d = b - a
    return d / np.linalg.norm(d)


def body_on_film(coverage: np.ndarray, block_affine: np.ndarray, g: DrrGeometry, centre: np.ndarray,
                 up: np.ndarray, anterior: np.ndarray, reach_mm: float) -> BodyOnFilm | None:
    """The body whose partial-volume ``coverage`` (a block with its own affine) lies around world
    ``centre``; None when it projects nowhere near the film.  ``reach_mm`` bounds its size."""
    P = projection_matrix(g)
    c2 = project_points(P, centre[None])[0]
    half = reach_mm * g.magnification / g.pixel_mm
    x0, y0 = int(np.floor(c2[0] - half)), int(np.floor(c2[1] - half))
    x1, y1 = int(np.ceil(c2[0] + half)), int(np.ceil(c2[1] + half))
    if x1 <= 0 or y1 <= 0 or x0 >= g.cols or y0 >= g.rows:
        return None
    window = path_lengths(torch.from_numpy(np.ascontiguousarray(coverage)), block_affine, sub_geometry(g, x0, y0, x1, y1)).numpy()
    inside = window > SILHOUETTE_MM
    if not inside.any():
        return None
    ys, xs = np.nonzero(inside)
    xs, ys = xs + x0 + 0.5, ys + y0 + 0.5  # pixel centres on the whole detector
    in_film = (xs > 0) & (xs < g.cols) & (ys > 0) & (ys < g.rows)
    box = (float(xs.min() - 0.5), float(ys.min() - 0.5), float(xs.max() + 0.5), float(ys.max() + 0.5))
    a_dir, n_dir = _direction(P, centre, anterior), _direction(P, centre, up)
    rel = np.stack([xs - c2[0], ys - c2[1]], axis=1)
    s_a, s_n = rel @ a_dir, rel @ n_dir
    lo, hi = float(s_a.min()) - 0.5, float(s_a.max()) + 0.5
    depth = hi - lo
    points = {}
    for tag, position in (("a", hi - _WALL_INSET * depth), ("m", (lo + hi) / 2), ("p", lo + _WALL_INSET * depth)):
        band = np.abs(s_a - position) <= 0.75
        if not band.any():
            band = np.abs(s_a - position) <= np.abs(s_a - position).min() + 0.5
        for end, edge in (("s", float(s_n[band].max()) + 0.5), ("i", float(s_n[band].min()) - 0.5)):
            xy = c2 + position * a_dir + edge * n_dir
            points[end + tag] = (float(xy[0]), float(xy[1]))
    ordered = {name: points[name] for name in ("sa", "sm", "sp", "ia", "im", "ip")}
    return BodyOnFilm(float(in_film.mean()), box, ordered, (float(c2[0]), float(c2[1])))


def roi_of(box: tuple[float, float, float, float], rows: int, cols: int) -> tuple[int, int, int, int]:
    """The manifest ROI of a tight body box: padded by ROI_PAD a side, whole pixels, clipped to the film."""
    x0, y0, x1, y1 = box
    px, py = ROI_PAD * (x1 - x0), ROI_PAD * (y1 - y0)
    return (max(int(np.floor(x0 - px)), 0), max(int(np.floor(y0 - py)), 0),
            min(int(np.ceil(x1 + px)), cols), min(int(np.ceil(y1 + py)), rows))


def body_mask_3d(labels: np.ndarray, label: int, centroid_ijk: np.ndarray, affine: np.ndarray,
                 up: np.ndarray) -> np.ndarray:
    """The vertebral body of a whole-vertebra mask (VerSe masks hold body and posterior elements):
    the voxels of ``label`` anterior of the posterior wall, found where the mask ends walking
    posteriorly from the body centroid (the canal is empty in the mask)."""
    vertebra = labels == label
    posterior = np.array([0.0, -1.0, 0.0]) - up * (-up[1])  # patient posterior made perpendicular to the spine
    posterior /= np.linalg.norm(posterior)
    centre_w = affine[:3, :3] @ centroid_ijk + affine[:3, 3]
    to_voxel = np.linalg.inv(affine)
    step = 0.5 * float(np.abs(np.linalg.eigvalsh(affine[:3, :3].T @ affine[:3, :3])).min()) ** 0.5
    wall, distance = 0.0, 0.0
    while distance < 80.0:
        ijk = np.rint(to_voxel[:3, :3] @ (centre_w + distance * posterior) + to_voxel[:3, 3]).astype(int)
        if (ijk < 0).any() or (ijk >= vertebra.shape).any() or not vertebra[tuple(ijk)]:
            wall = distance
            break
        distance += step
    else:
        wall = distance
    ii, jj, kk = np.nonzero(vertebra)
    world = np.stack([ii, jj, kk], axis=1) @ affine[:3, :3].T + affine[:3, 3]
    keep = (world - centre_w) @ posterior < wall
    body = np.zeros_like(vertebra)
    body[ii[keep], jj[keep], kk[keep]] = True
    return body
