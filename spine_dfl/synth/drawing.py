"""Drawing primitives for the renderer: polygon fills, curves, smooth steps and a fast blur.

Attenuation images are float32 (rows, cols) in continuous pixel coordinates: pixel (row r,
col c) covers [c, c+1) x [r, r+1).
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage


def add_polygon(image: np.ndarray, pts_xy: np.ndarray, value: float) -> None:
    """Add ``value`` to the pixels whose centre lies inside the polygon (x, y continuous px).

    Pillow's scanline fill on the polygon's bounding box: skimage.draw.polygon tests every
    vertex for every box pixel and is ~100x slower on the long rib outlines.
    """
    pts = np.asarray(pts_xy, dtype=np.float64) - 0.5  # pixel centres at integer coordinates
    rows, cols = image.shape
    x0, y0 = max(int(math.floor(pts[:, 0].min())), 0), max(int(math.floor(pts[:, 1].min())), 0)
    x1, y1 = min(int(math.ceil(pts[:, 0].max())) + 1, cols), min(int(math.ceil(pts[:, 1].max())) + 1, rows)
    if x1 <= x0 or y1 <= y0:
        return
    canvas = Image.new("L", (x1 - x0, y1 - y0), 0)
    ImageDraw.Draw(canvas).polygon((pts - (x0, y0)).ravel().tolist(), fill=1)
    image[y0:y1, x0:x1] += np.asarray(canvas, dtype=np.float32) * np.float32(value)


def add_hollow_polygon(image: np.ndarray, pts_xy: np.ndarray, value: float, wall_fraction: float = 0.55) -> None:
    """Bone with a denser cortex: the outline at full value, an inner shrunken copy lowered."""
    add_polygon(image, pts_xy, value)
    centroid = pts_xy.mean(axis=0)
    add_polygon(image, centroid + (pts_xy - centroid) * wall_fraction, -0.45 * value)


def bezier(points: np.ndarray, n: int) -> np.ndarray:
    t = np.linspace(0.0, 1.0, n)[:, None]
    p0, p1, p2, p3 = points
    return (1 - t) ** 3 * p0 + 3 * (1 - t) ** 2 * t * p1 + 3 * (1 - t) * t**2 * p2 + t**3 * p3


def polyline_normals(centre: np.ndarray) -> np.ndarray:
    """Unit normals (N, 2) of a polyline (N, 2), for outlining a band of given half width."""
    tangent = np.gradient(centre, axis=0)
    tangent /= np.maximum(np.linalg.norm(tangent, axis=1, keepdims=True), 1e-9)
    return np.stack([-tangent[:, 1], tangent[:, 0]], axis=1)


def smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def lowpass(image: np.ndarray, sigma_px: float) -> np.ndarray:
    """Large-kernel Gaussian via block-mean downsampling, blur and bilinear upsampling (fast)."""
    factor = int(max(1, min(16, sigma_px // 3)))
    rows, cols = image.shape
    pr, pc = (-rows) % factor, (-cols) % factor
    padded = np.pad(image, ((0, pr), (0, pc)), mode="edge")
    small = padded.reshape(padded.shape[0] // factor, factor, padded.shape[1] // factor, factor).mean(axis=(1, 3))
    small = ndimage.gaussian_filter(small, sigma_px / factor, mode="nearest")
    zoomed = ndimage.zoom(small, factor, order=1, mode="nearest", grid_mode=True)
    return zoomed[:rows, :cols].astype(np.float32)
