"""The three-panel PNG of one sample: strongest patches, P-stream evidence, G-stream Grad-CAM.

Panels show the region the network saw at ORIGINAL resolution (original pixels, never the
resampled network input): small regions are enlarged with nearest-neighbour so each original pixel
stays a visible block, only regions larger than ``MAX_PANEL_PX`` are shown reduced. Tick labels are
original pixel coordinates; the dashed white rectangle is the ROI. The figure is composed with
numpy and PIL (no matplotlib figure): drawing is a few milliseconds, which matters over thousands
of samples (explain's budget is 0.3 s per vertebra on two CPU cores).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from spine_dfl.atomic import atomic_output
from spine_dfl.heatmap.display import RANK_COLOURS, grey_rgb, heat_overlay, heatmap_colormap

if TYPE_CHECKING:
    from PIL import Image, ImageDraw, ImageFont

__all__ = ["MAX_PANEL_PX", "MIN_PANEL_PX", "RANK_COLOURS", "render_sample_figure"]

MIN_PANEL_PX = 360  # small ROIs are enlarged to at least this for legibility (nearest neighbour)
MAX_PANEL_PX = 1400  # larger regions (whole-image models) are shown reduced, to keep PNGs reasonable
_FONT_PX, _SMALL_PX = 13, 11
_LEFT, _TOP, _GAP, _BAR_W = 56, 74, 120, 14
_LINE = 16  # text line height


@functools.lru_cache(maxsize=4)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: fixed bitmap font
        return ImageFont.load_default()


@functools.lru_cache(maxsize=1)
def _ramp(height: int) -> np.ndarray:
    """(height, _BAR_W, 3) uint8 colour bar, high at the top."""
    colours = heatmap_colormap()(np.linspace(1.0, 0.0, height))[:, :3]
    return np.repeat((colours * 255.0 + 0.5).astype(np.uint8)[:, None], _BAR_W, axis=1)


def _to_uint8(rgb: np.ndarray) -> np.ndarray:
    return (np.clip(rgb, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _rank_colour(rank: int) -> str:
    return RANK_COLOURS[(rank - 1) % len(RANK_COLOURS)]


def _nice_ticks(low: float, high: float, count: int = 4) -> list[float]:
    """Round tick positions (1, 2 or 5 x 10^n apart) inside [low, high]."""
    span = max(high - low, 1e-9)
    raw = span / count
    magnitude = 10.0 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    first = math.ceil(low / step) * step
    return [first + i * step for i in range(int((high - first) / step) + 1)]


class _Panel:
    """Original-pixel coordinates -> panel pixels for one region shown at `scale`."""

    def __init__(self, region: tuple[int, int, int, int], scale: float) -> None:
        self.x0, self.y0, self.x1, self.y1 = region
        self.scale = scale
        self.width = max(1, round((self.x1 - self.x0) * scale))
        self.height = max(1, round((self.y1 - self.y0) * scale))

    def xy(self, x: float, y: float) -> tuple[float, float]:
        return (x - self.x0) * self.scale, (y - self.y0) * self.scale

    def image(self, rgb: np.ndarray) -> Image.Image:
        from PIL import Image

        return Image.fromarray(_to_uint8(rgb)).resize((self.width, self.height), Image.Resampling.NEAREST)


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
    points: np.ndarray | None = None,
) -> None:
    """Write the three-panel PNG for one sample (atomically).

    pixels: (y1-y0, x1-x0) original pixels of `region` (x0, y0, x1, y1), VOI already applied.
    boxes: from ``heatmap.class_patches`` (original pixels). evidence / gradcam: maps on the same
    pixels as `pixels` (NaN = not seen by the network). points: the vertebra's six landmarks (6, 2)
    sa, sm, sp, ia, im, ip in original pixels, drawn as the two endplates, or None.
    """
    from PIL import Image, ImageDraw

    longest = max(pixels.shape)
    panel = _Panel(region, min(max(1.0, MIN_PANEL_PX / longest), MAX_PANEL_PX / longest))
    grey = grey_rgb(pixels)
    cmap = heatmap_colormap()
    heat = [heat_overlay(grey, evidence, cmap, None), heat_overlay(grey, gradcam, cmap, (0.0, 1.0))]
    images = [panel.image(grey)] + [panel.image(blended) for blended, _, _ in heat]
    for image in images:
        _draw_roi(ImageDraw.Draw(image), panel, roi)
        _draw_points(ImageDraw.Draw(image), panel, points)
    _draw_patches(images, panel, boxes)

    legend_lines = len(boxes) + 1
    width = _LEFT + 3 * panel.width + 3 * _GAP
    height = _TOP + panel.height + 40 + _LINE * (legend_lines + 1)
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    lefts = [_LEFT + n * (panel.width + _GAP) for n in range(3)]
    for left, image in zip(lefts, images):
        canvas.paste(image, (left, _TOP))
        draw.rectangle((left - 1, _TOP - 1, left + panel.width, _TOP + panel.height), outline="black")
        _draw_ticks(draw, panel, left, x_axis=True)
    _draw_ticks(draw, panel, lefts[0], x_axis=False)
    plural = "es" if len(boxes) != 1 else ""
    titles = (f"strongest {len(boxes)} distinct patch{plural} of {class_name}\n(box = effective field, number = rank)",
              f"P-stream evidence for {class_name}\n(max of its filters' responses)",
              f"G-stream Grad-CAM for {class_name}\n(class-gradient weighted last block)")
    for left, text in zip(lefts, titles):
        draw.multiline_text((left, _TOP - 2 * _LINE - 6), text, fill="black", font=_font(_FONT_PX), spacing=2)
    for n, ((_, vmin, vmax), label) in enumerate(zip(heat, (evidence_label, gradcam_label)), start=1):
        _draw_colour_bar(canvas, draw, lefts[n] + panel.width + 8, panel.height, vmin, vmax)
        draw.text((lefts[n], _TOP + panel.height + 20), label, fill="black", font=_font(_SMALL_PX))
    draw.multiline_text((8, 4), title, fill="black", font=_font(_FONT_PX), spacing=2)
    _draw_legend(draw, boxes, class_name, region, _TOP + panel.height + 40)
    with atomic_output(path) as handle:
        canvas.save(handle, format="PNG", compress_level=1)


def _draw_ticks(draw: ImageDraw.ImageDraw, panel: _Panel, left: int, x_axis: bool) -> None:
    """Original-pixel tick labels under (x) or left of (y) a panel."""
    font = _font(_SMALL_PX - 1)
    low, high = (panel.x0, panel.x1) if x_axis else (panel.y0, panel.y1)
    for value in _nice_ticks(low, high):
        px = panel.xy(value, panel.y0)[0] if x_axis else panel.xy(panel.x0, value)[1]
        text = f"{value:g}"
        if x_axis:
            draw.line((left + px, _TOP + panel.height, left + px, _TOP + panel.height + 4), fill="black")
            draw.text((left + px, _TOP + panel.height + 5), text, fill="black", font=font, anchor="mt")
        else:
            draw.line((left - 5, _TOP + px, left - 1, _TOP + px), fill="black")
            draw.text((left - 7, _TOP + px), text, fill="black", font=font, anchor="rm")


def _draw_points(draw: ImageDraw.ImageDraw, panel: _Panel, points: np.ndarray | None) -> None:
    """The six points as dots joined along each endplate (superior cyan, inferior green)."""
    if points is None:
        return
    for endplate, colour in ((points[:3], "cyan"), (points[3:], "lime")):
        xy = [panel.xy(float(x), float(y)) for x, y in endplate]
        draw.line(xy, fill=colour, width=1)
        for x, y in xy:
            draw.ellipse((x - 2.5, y - 2.5, x + 2.5, y + 2.5), outline="black", fill=colour)


def _draw_roi(draw: ImageDraw.ImageDraw, panel: _Panel, roi: tuple[float, float, float, float] | None) -> None:
    """The ROI as a dashed white rectangle."""
    if roi is None:
        return
    (ax, ay), (bx, by) = panel.xy(roi[0], roi[1]), panel.xy(roi[2], roi[3])
    for start, end in (((ax, ay), (bx, ay)), ((bx, ay), (bx, by)), ((bx, by), (ax, by)), ((ax, by), (ax, ay))):
        length = math.hypot(end[0] - start[0], end[1] - start[1])
        for t in np.arange(0.0, max(length, 1e-9), 10.0):
            u, v = t / max(length, 1e-9), min(t + 6.0, length) / max(length, 1e-9)
            draw.line((start[0] + (end[0] - start[0]) * u, start[1] + (end[1] - start[1]) * u,
                       start[0] + (end[0] - start[0]) * v, start[1] + (end[1] - start[1]) * v), fill="white")


def _draw_patches(images: list[Image.Image], panel: _Panel, boxes: Sequence[Mapping[str, Any]]) -> None:
    """Effective-field boxes on panel 1; numbered peak markers on panels 1 and 2 (rank 1 on top)."""
    from PIL import ImageDraw

    draws = [ImageDraw.Draw(image) for image in images[:2]]
    font = _font(_FONT_PX)
    for box in reversed(list(boxes)):
        colour = _rank_colour(box["rank"])
        if box["in_image"]:
            (ax, ay), (bx, by) = panel.xy(box["x_min"], box["y_min"]), panel.xy(box["x_max"], box["y_max"])
            draws[0].rectangle((ax, ay, max(ax, bx - 1), max(ay, by - 1)), outline=colour,
                               width=3 if box["rank"] == 1 else 2)
        px, py = panel.xy(box["peak_x"], box["peak_y"])
        for draw in draws:
            draw.ellipse((px - 4, py - 4, px + 4, py + 4), fill=colour, outline="black")
            label = str(box["rank"])
            left, top, right, bottom = draw.textbbox((px + 6, py - 6), label, font=font)
            draw.rectangle((left - 2, top - 1, right + 2, bottom + 1), fill=colour)
            draw.text((px + 6, py - 6), label, fill="black", font=font)


def _draw_colour_bar(canvas: Image.Image, draw: ImageDraw.ImageDraw, left: int, height: int, vmin: float, vmax: float) -> None:
    from PIL import Image

    canvas.paste(Image.fromarray(_ramp(height)), (left, _TOP))
    draw.rectangle((left - 1, _TOP - 1, left + _BAR_W, _TOP + height), outline="black")
    font = _font(_SMALL_PX - 1)
    draw.text((left + _BAR_W + 4, _TOP), f"{vmax:.3g}", fill="black", font=font, anchor="lt")
    draw.text((left + _BAR_W + 4, _TOP + height), f"{vmin:.3g}", fill="black", font=font, anchor="lb")


def _draw_legend(
    draw: ImageDraw.ImageDraw, boxes: Sequence[Mapping[str, Any]], class_name: str, region: tuple[int, int, int, int], top: int
) -> None:
    """One legend line per patch: rank, filter, response, other filters at the same place, where it lies."""
    x0, y0, x1, y1 = region
    font = _font(_SMALL_PX)
    draw.text((_LEFT, top), "rank, filter, peak response (strongest first)", fill="black", font=font)
    for n, box in enumerate(boxes, start=1):
        y = top + n * _LINE
        inside = x0 <= box["peak_x"] <= x1 and y0 <= box["peak_y"] <= y1
        where = "" if inside else ("  (peak outside this view)" if box["in_image"] else "  (outside the image)")
        same = box.get("same_place_filters") or []
        also = f"  + filter{'s' if len(same) > 1 else ''} {', '.join(map(str, same))} at the same place" if same else ""
        draw.ellipse((_LEFT, y + 2, _LEFT + 9, y + 11), fill=_rank_colour(box["rank"]), outline="black")
        draw.text((_LEFT + 16, y), f"#{box['rank']}  filter {box['filter']} ({class_name} filter "
                  f"{box['filter_in_class'] + 1})  response {box['score']:.3g}{also}{where}", fill="black", font=font)
