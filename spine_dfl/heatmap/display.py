"""How a radiograph and a heatmap are shown: THE display window, grey conversions, the colour map.

Used by the explain figures, the DICOM overlay and the report's thumbnails, so a radiograph looks
the same everywhere. numpy only at import time (matplotlib loads on the first colour-map use).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from matplotlib.colors import Colormap

__all__ = [
    "DISPLAY_PERCENTILES",
    "HEATMAP_ALPHA_MAX",
    "HEATMAP_ALPHA_MIN",
    "HEATMAP_CMAP",
    "RANK_COLOURS",
    "display_window",
    "grey_rgb",
    "heat_overlay",
    "heatmap_colormap",
    "to_display_uint8",
]

# Robust percentiles of the shown pixels. The readers have already applied the DICOM VOI window;
# the percentiles only stop a few extreme pixels (markers, collimator edges) from washing it out.
DISPLAY_PERCENTILES = (0.5, 99.5)
HEATMAP_CMAP = "inferno"  # perceptually uniform, readable in greyscale print
HEATMAP_ALPHA_MIN, HEATMAP_ALPHA_MAX = 0.15, 0.7  # overlay opacity at the map's minimum / maximum
# Patch rank colours (rank 1 first): high-contrast on a grey radiograph, distinct from the inferno ramp.
RANK_COLOURS = ("#00e5ff", "#ffd600", "#ff4081", "#76ff03", "#ff9100", "#e040fb", "#ffffff", "#1de9b6",
                "#ff1744", "#b388ff")


def display_window(pixels: np.ndarray, percentiles: tuple[float, float] = DISPLAY_PERCENTILES) -> tuple[float, float]:
    """(low, high) display window of `pixels`: their finite values' robust percentiles, low < high.

    Falls back to the finite min..max when the percentiles coincide (a mostly flat image), and to a
    window one unit wide when the image is constant; (0, 1) when nothing is finite.
    """
    values = np.asarray(pixels)
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return 0.0, 1.0
    low, high = np.percentile(finite, percentiles)
    if high <= low:
        low, high = float(finite.min()), float(finite.max())
    if high <= low:
        high = low + 1.0
    return float(low), float(high)


def grey_rgb(pixels: np.ndarray, window: tuple[float, float] | None = None) -> np.ndarray:
    """(h, w) pixels -> (h, w, 3) float RGB in [0, 1] through the display window (NaN shows as low)."""
    low, high = display_window(pixels) if window is None else window
    grey = np.clip((np.nan_to_num(pixels, nan=low) - low) / (high - low), 0.0, 1.0)
    return np.repeat(grey[..., None], 3, axis=2)


def to_display_uint8(image: np.ndarray, percentiles: tuple[float, float] = DISPLAY_PERCENTILES) -> np.ndarray:
    """(rows, cols) image (bone bright) -> uint8 (rows, cols) through the display window."""
    values = np.asarray(image, dtype=np.float32)
    low, high = display_window(values, percentiles)
    scaled = (np.nan_to_num(values, nan=low).astype(np.float64) - low) / (high - low)
    return (np.clip(scaled, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def heatmap_colormap() -> Colormap:
    """The heatmaps' matplotlib colour map (``HEATMAP_CMAP``)."""
    import matplotlib

    return matplotlib.colormaps[HEATMAP_CMAP]


def heat_overlay(
    grey: np.ndarray, values: np.ndarray, cmap: Colormap | None = None, value_range: tuple[float, float] | None = None
) -> tuple[np.ndarray, float, float]:
    """Blend a heat map over a grey image; returns (RGB (h, w, 3), vmin, vmax of the colour scale).

    grey: (h, w, 3) float RGB in [0, 1]; values: (h, w) map on the same pixels (NaN = not seen).
    cmap: a matplotlib colour map, default ``heatmap_colormap()``.
    value_range: fixed colour scale, or None for the map's own finite min..max.
    Opacity grows with the value, so the radiograph stays readable where evidence is low; pixels
    the network never saw (NaN) stay plain grey.
    """
    cmap = heatmap_colormap() if cmap is None else cmap
    finite = values[np.isfinite(values)]
    if value_range is not None:
        vmin, vmax = float(value_range[0]), float(value_range[1])
    else:
        vmin = float(finite.min()) if finite.size else 0.0
        vmax = float(finite.max()) if finite.size else 1.0
    if vmax <= vmin:
        vmax = vmin + 1e-6
    relative = np.clip(np.nan_to_num((values - vmin) / (vmax - vmin), nan=0.0), 0.0, 1.0)
    colours = cmap(relative)[..., :3]
    opacity = np.where(np.isfinite(values), HEATMAP_ALPHA_MIN + (HEATMAP_ALPHA_MAX - HEATMAP_ALPHA_MIN) * relative, 0.0)
    return grey * (1.0 - opacity[..., None]) + colours * opacity[..., None], vmin, vmax
