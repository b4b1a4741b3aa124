"""Ground truth of a rendered vertebra: its record, and where its body lies in the image.

``VertebraTruth`` places a ``BodyShape`` in the image (centre, angle, scale); ``body_coverage``
and ``body_mask`` give the body exactly as ``render`` draws it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from spine_dfl.synth.anatomy import BodyShape, endplate_heights, wall_positions

@dataclass(frozen=True)
class VertebraTruth:
    """Ground truth of one vertebra in one image.

    Pixel geometry uses continuous coordinates (pixel (row r, col c) covers [c, c+1) x [r, r+1)).
    ``angle_deg`` is the image-space direction of the body's u axis (towards posterior), x right
    and y down; the v axis (towards the head) is (sin a, -cos a).  ``box`` is the tight body box
    and ``roi`` the padded, jittered localiser box; both (x_min, y_min, x_max, y_max) in pixels,
    max exclusive.  Heights in mm are measured at ``anatomy.MEASURE_X``.
    """

    level: str
    label: str
    shape: str
    height_loss: float
    anterior_height_mm: float
    middle_height_mm: float
    posterior_height_mm: float
    body: BodyShape
    centre_x: float
    centre_y: float
    angle_deg: float
    mm_per_px: float
    box: tuple[int, int, int, int]
    roi: tuple[int, int, int, int]

    @property
    def reference_height_mm(self) -> float:
        return self.body.reference_height_mm


def local_coordinates(truth: VertebraTruth, xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Image continuous coordinates (px) -> body frame (u, v) in mm."""
    angle = math.radians(truth.angle_deg)
    dx = (xs - truth.centre_x) * truth.mm_per_px
    dy = (ys - truth.centre_y) * truth.mm_per_px
    u = dx * math.cos(angle) + dy * math.sin(angle)
    v = dx * math.sin(angle) - dy * math.cos(angle)
    return u, v


def image_coordinates(truth: VertebraTruth, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Body frame (u, v) in mm -> image continuous px (x, y), shape (..., 2); the inverse of
    ``local_coordinates``."""
    angle = math.radians(truth.angle_deg)
    u, v = np.asarray(u, dtype=np.float64), np.asarray(v, dtype=np.float64)
    dx = u * math.cos(angle) + v * math.sin(angle)
    dy = u * math.sin(angle) - v * math.cos(angle)
    return np.stack([truth.centre_x + dx / truth.mm_per_px, truth.centre_y + dy / truth.mm_per_px], axis=-1)


def body_fields(
    body: BodyShape, u: np.ndarray, v: np.ndarray, mm_per_px: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Coverage (0..1 anti-aliased), wall-relative x, distances to upper/lower endplate (mm), x."""
    x = u / (body.depth_mm / 2.0)
    top, bottom = endplate_heights(body, x)
    u_anterior, u_posterior = wall_positions(body, v)
    d_top = top - v
    d_bottom = v + bottom
    d_min = np.minimum(np.minimum(d_top, d_bottom), np.minimum(u - u_anterior, u_posterior - u))
    coverage = np.clip(d_min / mm_per_px + 0.5, 0.0, 1.0)
    x_wall = (u - (u_anterior + u_posterior) / 2.0) / np.maximum((u_posterior - u_anterior) / 2.0, 1e-3)
    return coverage, x_wall, d_top, d_bottom, x


def body_coverage(truth: VertebraTruth, rows: int, cols: int) -> np.ndarray:
    """Anti-aliased body coverage in [0, 1], float32 (rows, cols): the body as rendered."""
    out = np.zeros((rows, cols), dtype=np.float32)
    x0, y0, x1, y1 = truth.box
    x0, y0, x1, y1 = max(x0 - 1, 0), max(y0 - 1, 0), min(x1 + 1, cols), min(y1 + 1, rows)
    if x1 <= x0 or y1 <= y0:
        return out
    ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float64)
    u, v = local_coordinates(truth, xs + 0.5, ys + 0.5)
    coverage = body_fields(truth.body, u, v, truth.mm_per_px)[0]
    out[y0:y1, x0:x1] = coverage
    return out


def body_mask(truth: VertebraTruth, rows: int, cols: int) -> np.ndarray:
    """Boolean mask (rows, cols) of the pixels whose centre lies inside the vertebral body."""
    return body_coverage(truth, rows, cols) >= 0.5

