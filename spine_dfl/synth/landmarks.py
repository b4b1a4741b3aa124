"""Where a rendered vertebra's landmarks lie, exactly, in original pixels.

From the same geometry that ``render`` draws (``anatomy.endplate_heights`` and
``anatomy.wall_positions``), for one ``VertebraTruth``:

- ``six_points``: the anterior, middle and posterior points of the superior and inferior
  endplates (``sa, sm, sp, ia, im, ip``), at ``anatomy.MEASURE_X`` (10 % of the depth inside
  the anterior wall, mid-depth, 10 % inside the posterior wall), where the grade's heights
  Ha, Hm, Hp are measured: the distance from ``sa`` to ``ia`` is Ha, and so on.  Each point
  lies on the body's outline.
- ``body_corners``: where each endplate meets the anterior and posterior wall.
- ``body_outline``: the outline as a polygon (endplates and walls sampled between corners).
- ``deformed_outline``: the part of the body a fracture deformed, as a polygon (None when
  normal): a wedge, the anterior half (where its height loss is at least half the loss at
  the anterior measurement point); a biconcave fracture, the central column between the
  depressed endplates (loss at least half the central loss); a crush, the whole body.

Coordinates are continuous pixels: pixel (row r, col c) covers [c, c+1) x [r, r+1).
"""

from __future__ import annotations

import functools
import math

import numpy as np

from spine_dfl.io.vocabulary import POINT_NAMES
from spine_dfl.synth.anatomy import MEASURE_X, BodyShape, endplate_heights, wall_positions
from spine_dfl.synth.truth import VertebraTruth, image_coordinates

CORNER_NAMES: tuple[str, ...] = ("sa", "sp", "ip", "ia")
"""Body corners in outline order: superior-anterior, superior-posterior, inferior-posterior, inferior-anterior."""

DEFORMED_PARTS: dict[str, str] = {"wedge": "anterior body", "biconcave": "central endplates", "crush": "whole body"}
"""What ``deformed_outline`` covers for each fracture kind."""

_BICONCAVE_HALF_WIDTH = 2.0 / math.pi * math.acos(0.5 ** (2.0 / 3.0))  # cos(x pi/2)^1.5 = 1/2
DEFORMED_X: dict[str, tuple[float, float]] = {
    "wedge": (-1.0, 0.0),
    "biconcave": (-_BICONCAVE_HALF_WIDTH, _BICONCAVE_HALF_WIDTH),
    "crush": (-1.0, 1.0),
}
"""The deformed part of each fracture kind as a range of x = 2u / depth (-1 anterior wall, +1
posterior wall): where the kind's loss profile is at least half its value at the most
depressed measurement point (wedge x <= 0, biconcave |x| <= 0.565), the whole body for a crush."""


def six_points(truth: VertebraTruth) -> dict[str, tuple[float, float]]:
    """The six morphometry points, name (``sa`` .. ``ip``) -> (x, y) in original pixels."""
    body = truth.body
    xs = np.asarray(MEASURE_X, dtype=np.float64)
    top, bottom = endplate_heights(body, xs)
    us = xs * body.depth_mm / 2.0
    points = image_coordinates(truth, np.concatenate([us, us]), np.concatenate([top, -bottom]))
    return {name: (float(x), float(y)) for name, (x, y) in zip(POINT_NAMES, points)}


def _wall_u(body: BodyShape, v: np.ndarray | float, anterior: np.ndarray | bool) -> np.ndarray:
    """u (mm) of the anterior or posterior wall at height v (mm), as rendered."""
    u_anterior, u_posterior = wall_positions(body, np.asarray(v, dtype=np.float64))
    return np.where(anterior, u_anterior, u_posterior)


def _endplate_v(body: BodyShape, u: np.ndarray | float, superior: bool) -> np.ndarray:
    """v (mm) of the superior or inferior endplate at u (mm)."""
    top, bottom = endplate_heights(body, np.asarray(u, dtype=np.float64) / (body.depth_mm / 2.0))
    return top if superior else -bottom


@functools.lru_cache(maxsize=4096)
def _corners_local(body: BodyShape) -> dict[str, tuple[float, float]]:
    """The four corners (u, v) in mm: where each endplate meets each wall (read-only, cached).

    For every corner at once: "u minus the wall's u at the endplate's height" changes sign
    between the wall's outer limit (outside the body) and mid-depth (inside); a grid of 256
    steps brackets the outermost crossing, then 11 bisections refine it to depth / 2**20.
    """
    superior = np.array([name[0] == "s" for name in CORNER_NAMES])[:, None]
    anterior = np.array([name[1] == "a" for name in CORNER_NAMES])[:, None]
    sign = np.where(anterior, -1.0, 1.0)
    half_depth = body.depth_mm / 2.0

    def inside(u: np.ndarray) -> np.ndarray:
        top, bottom = endplate_heights(body, u / half_depth)
        return sign * (_wall_u(body, np.where(superior, top, -bottom), anterior) - u) > 0

    grid = sign * half_depth * np.linspace(1.0, 0.0, 257)[None, :]  # outer limit -> mid-depth
    first = np.argmax(inside(grid), axis=1)  # mid-depth is always inside the body
    rows = np.arange(len(CORNER_NAMES))
    outer, inner = grid[rows, np.maximum(first - 1, 0)], grid[rows, first]
    for _ in range(11):
        mid = (outer + inner) / 2.0
        is_inside = inside(mid[:, None])[:, 0]
        outer, inner = np.where(is_inside, outer, mid), np.where(is_inside, mid, inner)
    u = (outer + inner) / 2.0
    top, bottom = endplate_heights(body, u / half_depth)
    v = np.where(superior[:, 0], top, -bottom)
    return {name: (float(u[i]), float(v[i])) for i, name in enumerate(CORNER_NAMES)}


def body_corners(truth: VertebraTruth) -> dict[str, tuple[float, float]]:
    """The four corners (``CORNER_NAMES``) -> (x, y) in original pixels."""
    corners = _corners_local(truth.body)
    points = image_coordinates(truth, [c[0] for c in corners.values()], [c[1] for c in corners.values()])
    return {name: (float(x), float(y)) for name, (x, y) in zip(corners, points)}


def _outline_local(body: BodyShape, x_range: tuple[float, float], endplate_points: int,
                   wall_points: int) -> tuple[np.ndarray, np.ndarray]:
    """(u, v) of a closed polygon around the part of the body with x = 2u / depth in
    ``x_range``: superior endplate anterior -> posterior, posterior side down, inferior endplate
    back, anterior side up.  A side is the body's wall where the range reaches it, else the
    straight cut at the range's end."""
    corners = _corners_local(body)
    lo, hi = x_range[0] * body.depth_mm / 2.0, x_range[1] * body.depth_mm / 2.0
    u_top = np.linspace(max(lo, corners["sa"][0]), min(hi, corners["sp"][0]), endplate_points)
    u_bottom = np.linspace(min(hi, corners["ip"][0]), max(lo, corners["ia"][0]), endplate_points)
    v_top, v_bottom = _endplate_v(body, u_top, True), _endplate_v(body, u_bottom, False)
    t = np.linspace(0.0, 1.0, wall_points + 2)[1:-1]
    v_post = v_top[-1] + (v_bottom[0] - v_top[-1]) * t
    v_ant = v_bottom[-1] + (v_top[0] - v_bottom[-1]) * t
    u_post = np.minimum(hi, _wall_u(body, v_post, False))
    u_ant = np.maximum(lo, _wall_u(body, v_ant, True))
    return np.concatenate([u_top, u_post, u_bottom, u_ant]), np.concatenate([v_top, v_post, v_bottom, v_ant])


def body_outline(truth: VertebraTruth, endplate_points: int = 24, wall_points: int = 8) -> np.ndarray:
    """The body outline as a closed polygon (N, 2) of (x, y) in original pixels (last != first)."""
    u, v = _outline_local(truth.body, (-1.0, 1.0), endplate_points, wall_points)
    return image_coordinates(truth, u, v)


def deformed_outline(truth: VertebraTruth, endplate_points: int = 24, wall_points: int = 8) -> np.ndarray | None:
    """The deformed part of a fractured body as a polygon (N, 2) in original pixels; None when
    the vertebra is not fractured.  A part of the body (see the module docstring)."""
    if truth.body.shape not in DEFORMED_X:
        return None
    u, v = _outline_local(truth.body, DEFORMED_X[truth.body.shape], endplate_points, wall_points)
    return image_coordinates(truth, u, v)
