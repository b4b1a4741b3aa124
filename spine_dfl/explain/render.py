"""The three-panel PNG of one sample: strongest patches, P-stream evidence, G-stream Grad-CAM.

Panels show the region the network saw at ORIGINAL resolution (original pixels, never the
resampled network input): small regions are enlarged with nearest-neighbour so each original pixel
stays a visible block, only regions larger than ``MAX_PANEL_PX`` are shown reduced. Axes are in
original pixel coordinates; the dashed white rectangle is the ROI. The panels are composed as RGB
arrays (one image per axes, fixed layout): several times faster to draw than stacked alpha images
under a layout engine, which matters over thousands of samples. Figures are matplotlib ``Figure``
objects outside pyplot's registry, freed when dropped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from spine_dfl.atomic import atomic_output
from spine_dfl.heatmap.display import grey_rgb, heat_overlay, heatmap_colormap

__all__ = ["MAX_PANEL_PX", "MIN_PANEL_PX", "RANK_COLOURS", "render_sample_figure"]

# Rank colours: high-contrast on a grey radiograph and distinct from the inferno ramp's order.
RANK_COLOURS = ("#00e5ff", "#ffd600", "#ff4081", "#76ff03", "#ff9100", "#e040fb", "#ffffff", "#1de9b6",
                "#ff1744", "#b388ff")
MIN_PANEL_PX = 360  # small ROIs are enlarged to at least this for legibility (nearest neighbour)
MAX_PANEL_PX = 1400  # larger regions (whole-image models) are shown reduced, to keep PNGs reasonable


@dataclass(frozen=True)
class _Layout:
    """Figure geometry in display pixels (dpi 100)."""

    panel_w: float
    panel_h: float
    fig_w: float
    fig_h: float
    left: float = 70.0
    gap: float = 150.0
    bar_w: float = 16.0
    bottom: float = 0.0

    def rect(self, px_left: float, px_width: float) -> list[float]:
        return [px_left / self.fig_w, self.bottom / self.fig_h, px_width / self.fig_w, self.panel_h / self.fig_h]

    def panel_left(self, n: int) -> float:
        return self.left + n * (self.panel_w + self.gap)


def _layout(shape: tuple[int, int], n_boxes: int) -> _Layout:
    height, width = shape
    longest = max(height, width)
    scale = min(max(1.0, MIN_PANEL_PX / longest), MAX_PANEL_PX / longest)
    panel_w, panel_h = width * scale, height * scale
    left, gap, right, top = 70.0, 150.0, 90.0, 90.0
    bottom = 70.0 + 16.0 * (n_boxes + 1)
    return _Layout(panel_w, panel_h, left + 3 * panel_w + 2 * gap + right, top + panel_h + bottom, left, gap,
                   bottom=bottom)


def render_sample_figure(
    path: Path,
    pixels: np.ndarray,
    region: tuple[int, int, int, int],
    boxes: Sequence[Mapping[str, Any]],
    evidence: np.ndarray,
    gradcam: np.ndarray,
    title: str,
    class_name: str,
    roi: tuple[float, float, float, float] | None,
    evidence_label: str,
    gradcam_label: str,
) -> None:
    """Write the three-panel PNG for one sample (atomically).

    pixels: (y1-y0, x1-x0) original pixels of `region` (x0, y0, x1, y1), VOI already applied.
    boxes: from ``heatmap.class_boxes`` (original pixels). evidence / gradcam: maps on the same
    pixels as `pixels` (NaN = not seen by the network).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    x0, y0, x1, y1 = region
    layout = _layout(pixels.shape, len(boxes))
    fig = Figure(figsize=(layout.fig_w / 100.0, layout.fig_h / 100.0), dpi=100)
    FigureCanvasAgg(fig)
    extent = (x0, x1, y1, y0)  # continuous original coordinates: pixel i covers [i, i+1)
    grey = grey_rgb(pixels)
    axes = []
    for n in range(3):
        ax = fig.add_axes(layout.rect(layout.panel_left(n), layout.panel_w))
        ax.tick_params(labelsize=7)
        ax.set_xlabel("column (original px)", fontsize=7)
        axes.append(ax)
    axes[0].set_ylabel("row (original px)", fontsize=7)
    axes[0].imshow(grey, extent=extent, interpolation="nearest")
    _draw_heat_panels(fig, layout, axes, grey, extent, class_name,
                      ((evidence, None, evidence_label), (gradcam, (0.0, 1.0), gradcam_label)))
    for ax in axes:
        ax.set_xlim(x0, x1)
        ax.set_ylim(y1, y0)
        if roi is not None:
            ax.add_patch(Rectangle((roi[0], roi[1]), roi[2] - roi[0], roi[3] - roi[1], fill=False,
                                   edgecolor="white", linestyle="--", linewidth=0.9, alpha=0.8))
    _draw_patches(axes, boxes)
    axes[0].set_title(f"strongest {len(boxes)} patch{'es' if len(boxes) != 1 else ''} of predicted class "
                      f"{class_name}\n(box = receptive field, number = rank)", fontsize=9)
    _draw_legend(fig, layout, boxes, class_name, region)
    fig.suptitle(title, fontsize=10, y=1.0 - 8.0 / layout.fig_h, va="top")
    with atomic_output(path) as handle:
        fig.savefig(handle, format="png", dpi=100)


def _draw_heat_panels(
    fig: Any, layout: _Layout, axes: list[Any], grey: np.ndarray, extent: tuple[int, int, int, int],
    class_name: str, maps: Sequence[tuple[np.ndarray, tuple[float, float] | None, str]],
) -> None:
    """Panels 2 and 3: (map, fixed colour range or None for its own, colour-bar label) each."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    cmap = heatmap_colormap()
    titles = (f"P-stream evidence for {class_name}\n(max of its filters' responses)",
              f"G-stream Grad-CAM for {class_name}\n(class-gradient weighted last block)")
    for n, ((values, value_range, label), panel_title) in enumerate(zip(maps, titles), start=1):
        blended, vmin, vmax = heat_overlay(grey, values, cmap, value_range)
        ax = axes[n]
        ax.imshow(blended, extent=extent, interpolation="nearest")
        cax = fig.add_axes(layout.rect(layout.panel_left(n) + layout.panel_w + 10.0, layout.bar_w))
        colourbar = fig.colorbar(ScalarMappable(Normalize(vmin, vmax), cmap), cax=cax)
        colourbar.set_label(label, fontsize=7)
        colourbar.ax.tick_params(labelsize=7)
        ax.set_title(panel_title, fontsize=9)


def _rank_colour(rank: int) -> str:
    return RANK_COLOURS[(rank - 1) % len(RANK_COLOURS)]


def _draw_patches(axes: list[Any], boxes: Sequence[Mapping[str, Any]]) -> None:
    """Receptive-field boxes on panel 1, numbered peak markers on panels 1 and 2."""
    from matplotlib.patches import Rectangle

    # Several filters often peak at the same location: one marker, labelled with every rank ("1,3").
    ranks_at: dict[tuple[float, float], list[int]] = {}
    for box in boxes:
        ranks_at.setdefault((box["peak_x"], box["peak_y"]), []).append(box["rank"])
    for box in reversed(list(boxes)):  # rank 1 drawn last = on top
        colour = _rank_colour(box["rank"])
        if box["in_image"]:
            axes[0].add_patch(Rectangle((box["x_min"], box["y_min"]), box["x_max"] - box["x_min"],
                                        box["y_max"] - box["y_min"], fill=False, edgecolor=colour,
                                        linewidth=2.0 if box["rank"] == 1 else 1.3))
        ranks = ranks_at[(box["peak_x"], box["peak_y"])]
        if box["rank"] != min(ranks):
            continue  # drawn with the best rank at this location
        for ax in axes[:2]:
            ax.plot([box["peak_x"]], [box["peak_y"]], marker="o", markersize=5, color=colour,
                    markeredgecolor="black", clip_on=True)
            ax.annotate(",".join(str(r) for r in sorted(ranks)), (box["peak_x"], box["peak_y"]), xytext=(4, 4),
                        textcoords="offset points", color="black", fontsize=9, fontweight="bold",
                        annotation_clip=True,
                        bbox={"boxstyle": "round,pad=0.15", "facecolor": colour, "edgecolor": "none", "alpha": 0.9})


def _draw_legend(
    fig: Any, layout: _Layout, boxes: Sequence[Mapping[str, Any]], class_name: str, region: tuple[int, int, int, int]
) -> None:
    """One legend line per box under the panels: rank, filter, response, where its peak lies."""
    from matplotlib.lines import Line2D

    x0, y0, x1, y1 = region
    handles, texts = [], []
    for box in boxes:
        inside = x0 <= box["peak_x"] <= x1 and y0 <= box["peak_y"] <= y1
        where = "" if inside else ("  (peak outside this view)" if box["in_image"] else "  (outside the image)")
        handles.append(Line2D([], [], color=_rank_colour(box["rank"]), marker="o", markeredgecolor="black",
                              linewidth=2))
        texts.append(f"#{box['rank']}  filter {box['filter']} ({class_name} filter {box['filter_in_class'] + 1})"
                     f"  response {box['score']:.3g}{where}")
    if handles:
        fig.legend(handles, texts, loc="upper left",
                   bbox_to_anchor=(layout.left / layout.fig_w, (layout.bottom - 40.0) / layout.fig_h),
                   fontsize=7, frameon=False, title="rank, filter, peak response (strongest first)",
                   title_fontsize=7, alignment="left")
