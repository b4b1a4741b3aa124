"""The overlay the Secondary Capture shows: grey radiograph, evidence heatmaps and patches, ROI boxes, captions.

The windowed grey radiograph (``spine_dfl.heatmap.display``, the explain figures' window) with,
inside each vertebra's crop region (ROI + margin, what the network saw), the predicted grade's
P-stream evidence map (``spine_dfl.heatmap.evidence``) blended in the explain figures' colour map
and opacities, scaled per vertebra; ROI boxes coloured by grade and "level grade probability"
captions burned in on top. Outside every crop region the image stays plain grey (R = G = B). An image
unlike the training images (its findings' ``cells["in_distribution"]`` is ``no``, ``engine.shift``) gets
``SHIFT_BANNER`` across the top, white on dark red, over everything else.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from spine_dfl.dicom_out.findings import VertebraFinding
from spine_dfl.heatmap.display import RANK_COLOURS, heat_overlay, heatmap_colormap, to_display_uint8

if TYPE_CHECKING:
    from PIL import Image, ImageDraw, ImageFont

__all__ = ["SHIFT_BANNER", "blend_evidence", "render_roi_overlay", "shift_banner_height"]

SHIFT_BANNER = "unlike the training images: do not rely on these grades"


def _grade_colour(index: int, count: int) -> tuple[int, int, int]:
    """Colours by grade rank: first class green, last red, the ones between from yellow to orange."""
    if count <= 1:
        return (0, 220, 0)
    t = index / (count - 1)
    return (int(round(255 * min(1.0, 2 * t))), int(round(220 * min(1.0, 2 * (1 - t)))), 0)


def _evidence_on_source(findings: Sequence[VertebraFinding], image_shape: tuple[int, int]) -> list[Any]:
    """(region, map) on source pixels of every finding whose evidence map reaches the image."""
    mapped = []
    for finding in findings:
        if finding.evidence is not None:
            from spine_dfl.heatmap.evidence import evidence_on_source  # torch: only with heatmaps

            on_source = evidence_on_source(finding.evidence, image_shape)
            if on_source is not None:
                mapped.append(on_source)
    return mapped


def blend_evidence(gray: np.ndarray, findings: Sequence[VertebraFinding]) -> tuple[np.ndarray, bool]:
    """(rows, cols) uint8 grey -> ((rows, cols, 3) uint8 RGB, whether any heatmap was drawn).

    Each finding's evidence map is blended over the grey image inside its region with
    ``heatmap.heat_overlay`` (colour scale = that map's own min..max, i.e. per vertebra). Where
    regions of neighbouring vertebrae overlap, each pixel shows the map that is relatively hottest
    there. Every pixel outside all regions (and every pixel its maps never saw) keeps R = G = B.
    """
    rgb = np.repeat(gray[..., None], 3, axis=2)
    mapped = _evidence_on_source(findings, gray.shape)
    if not mapped:
        return rgb, False
    from spine_dfl.heatmap.geometry import STRIP_PIXELS

    cmap = heatmap_colormap()
    ux0, uy0 = min(r[0] for r, _ in mapped), min(r[1] for r, _ in mapped)
    ux1, uy1 = max(r[2] for r, _ in mapped), max(r[3] for r, _ in mapped)
    best = np.full((uy1 - uy0, ux1 - ux0), -np.inf, dtype=np.float32)  # relative value shown so far
    for (x0, y0, x1, y1), values in mapped:
        finite = values[np.isfinite(values)]
        value_range = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        step = max(1, STRIP_PIXELS // (x1 - x0))
        for top in range(0, y1 - y0, step):
            part = values[top : top + step]
            grey = gray[y0 + top : y0 + top + part.shape[0], x0:x1].astype(np.float32) / 255.0
            # The map's own range for every strip: the same as heat_overlay on the whole map.
            blended, vmin, vmax = heat_overlay(np.repeat(grey[..., None], 3, axis=2), part, cmap, value_range)
            relative = np.where(np.isfinite(part), np.clip((part - vmin) / (vmax - vmin), 0.0, 1.0), -1.0)
            window = best[y0 + top - uy0 : y0 + top + part.shape[0] - uy0, x0 - ux0 : x1 - ux0]
            take = relative > window
            target = rgb[y0 + top : y0 + top + part.shape[0], x0:x1]
            target[take] = (np.clip(blended[take], 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
            window[take] = relative[take]
    return rgb, True


def _draw_colour_legend(canvas: Image.Image, draw: ImageDraw.ImageDraw, font: ImageFont.FreeTypeFont | ImageFont.ImageFont,
                         x: int, y: int, font_size: int) -> None:
    """ "evidence for predicted grade: low [colour ramp] high" at (x, y) (top-left of the line)."""
    from PIL import Image

    label = "heatmap: evidence for the predicted grade (per vertebra)  low"
    style: dict[str, Any] = {"font": font, "stroke_width": 1, "stroke_fill": (0, 0, 0)}
    draw.text((x, y), label, fill=(255, 255, 255), **style)
    left = int(draw.textbbox((x, y), label, font=font, stroke_width=1)[2]) + font_size // 2
    width, height = max(20, 5 * font_size), max(4, int(font_size * 0.8))
    ramp = (heatmap_colormap()(np.linspace(0.0, 1.0, width))[:, :3] * 255.0 + 0.5).astype(np.uint8)
    canvas.paste(Image.fromarray(np.ascontiguousarray(np.repeat(ramp[None], height, axis=0))),
                 (left, y + max(0, (font_size - height) // 2)))
    draw.text((left + width + font_size // 2, y), "high", fill=(255, 255, 255), **style)


def _pixel_box(roi: tuple[float, float, float, float] | None, rows: int, cols: int) -> tuple[int, int, int, int] | None:
    """Continuous box -> inclusive pixel rectangle clipped to the image (so boxes at the border stay
    visible), or None when it misses the image."""
    from spine_dfl.heatmap.geometry import clip_boxes

    box = (0.0, 0.0, float(cols), float(rows)) if roi is None else roi
    x0, y0, x1, y1 = (float(v) for v in clip_boxes(np.asarray(box, dtype=np.float64), (rows, cols)))
    pixels = (int(np.floor(x0)), int(np.floor(y0)), int(np.ceil(x1)) - 1, int(np.ceil(y1)) - 1)
    return None if pixels[2] < pixels[0] or pixels[3] < pixels[1] else pixels


def _draw_patches(draw: ImageDraw.ImageDraw, findings: Sequence[VertebraFinding], rows: int, cols: int, line_width: int,
                  top_n: int) -> bool:
    """Each finding's strongest distinct evidence places (``heatmap.evidence_patches``): a box of the
    model's effective receptive field and a dot on the refined peak, in rank colours; whether any."""
    drawn = False
    for finding in findings:
        if finding.evidence is None or finding.evidence.patch_side <= 0:
            continue
        from spine_dfl.heatmap.evidence import evidence_patches  # torch: only with heatmaps

        for rank, (peak_x, peak_y, box) in reversed(list(enumerate(evidence_patches(finding.evidence, top_n), 1))):
            colour = RANK_COLOURS[(rank - 1) % len(RANK_COLOURS)]
            # Clipped to what the network saw: the box never reaches beyond the vertebra's crop.
            x0, y0, x1, y1 = finding.evidence.region
            clipped = (max(box[0], x0), max(box[1], y0), min(box[2], x1), min(box[3], y1))
            pixels = _pixel_box(clipped, rows, cols) if clipped[2] > clipped[0] and clipped[3] > clipped[1] else None
            if pixels is not None:
                draw.rectangle(pixels, outline=colour, width=line_width)
            radius = 2 * line_width + 1
            draw.ellipse((peak_x - radius, peak_y - radius, peak_x + radius, peak_y + radius), fill=colour,
                         outline=(0, 0, 0))
            drawn = True
    return drawn


def _draw_six_points(draw: ImageDraw.ImageDraw, findings: Sequence[VertebraFinding], line_width: int) -> bool:
    """Each finding's six points (``cells["points"]``: sa, sm, sp, ia, im, ip as (x, y) source pixels, the
    locator's) as dots joined along each endplate, superior cyan and inferior green as in the explain
    gallery (``explain.render``); whether any were drawn."""
    drawn = False
    for finding in findings:
        points = np.asarray(finding.cells.get("points", ()), dtype=np.float64)
        if points.shape != (6, 2) or not np.isfinite(points).all():
            continue
        radius = 2 * line_width + 0.5
        for endplate, colour in ((points[:3], (0, 255, 255)), (points[3:], (0, 255, 0))):
            xy = [(float(x), float(y)) for x, y in endplate]
            draw.line(xy, fill=colour, width=line_width)
            for x, y in xy:
                draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=colour, outline=(0, 0, 0))
        drawn = True
    return drawn


def shift_banner_height(rows: int, cols: int) -> int:
    """Pixel rows of the top band the shift banner fills on a (rows, cols) overlay."""
    short_side = min(rows, cols)
    return max(10, round(short_side / 45)) + 4 * max(1, round(short_side / 400))


def _draw_shift_banner(draw: ImageDraw.ImageDraw, font: ImageFont.FreeTypeFont | ImageFont.ImageFont, rows: int, cols: int) -> None:
    height = shift_banner_height(rows, cols)
    draw.rectangle((0, 0, cols - 1, height - 1), fill=(150, 0, 0))
    draw.text((2 * max(1, round(min(rows, cols) / 400)), 2 * max(1, round(min(rows, cols) / 400))), SHIFT_BANNER,
              fill=(255, 255, 255), font=font)


def render_roi_overlay(
    image: np.ndarray,
    findings: Sequence[VertebraFinding],
    class_names: Sequence[str],
    banner: str | None = "spine-dfl AI result - for review",
    patches_per_finding: int = 1,
) -> np.ndarray:
    """The heatmap overlay as (rows, cols, 3) uint8 RGB: evidence heatmaps, ROI boxes, captions.

    image: (rows, cols) float or uint8, bone bright; findings' ROIs in the same pixel grid.
    Findings with an ``evidence`` map get it blended in inside their region (``blend_evidence``).
    Boxes are coloured by predicted grade (first class green ... last class red), each captioned
    "level grade probability". With the model's patch side known, each finding's strongest
    ``patches_per_finding`` distinct evidence places are drawn inside (effective-field box, dot on
    the refined peak; rank 1 cyan). Findings whose cells give six points (``cells["points"]``, the
    locator's) get them drawn as the two endplates (superior cyan, inferior green). ``banner``
    (bottom left) says it is for review; with heatmaps a
    colour legend line goes above it.
    """
    from PIL import Image, ImageDraw, ImageFont

    gray = image if image.dtype == np.uint8 else to_display_uint8(image)
    rows, cols = gray.shape
    rgb, heatmaps = blend_evidence(gray, findings)
    canvas = Image.fromarray(rgb)
    del rgb
    draw = ImageDraw.Draw(canvas)
    short_side = min(rows, cols)
    line_width = max(1, round(short_side / 400))
    font_size = max(10, round(short_side / 45))
    try:
        font = ImageFont.load_default(size=font_size)
    except (TypeError, OSError):  # Pillow without FreeType: fixed bitmap font
        font = ImageFont.load_default()
    patches = _draw_patches(draw, findings, rows, cols, line_width, patches_per_finding)
    _draw_six_points(draw, findings, line_width)
    for finding in findings:
        box = _pixel_box(finding.roi, rows, cols)
        if box is None:
            continue
        colour = _grade_colour(list(class_names).index(finding.predicted), len(class_names))
        draw.rectangle(box, outline=colour, width=line_width)
        probability = float(finding.probabilities.get(finding.predicted, float("nan")))
        caption = f"{finding.vertebra or 'image'} {finding.predicted} {probability:.2f}"
        text_x = box[2] + 2 * line_width if box[2] + font_size * 6 < cols else max(0, box[0] - font_size * 6)
        text_y = box[1] if finding.roi is not None else box[1] + font_size
        draw.text((text_x, text_y), caption, fill=colour, font=font, stroke_width=1, stroke_fill=(0, 0, 0))
    if banner:
        # Bottom-left, where whole-image captions (top-left) and ROI captions do not go.
        banner_y = rows - font_size - 4 * line_width
        draw.text((line_width * 2, banner_y), banner, fill=(255, 255, 0), font=font, stroke_width=1,
                  stroke_fill=(0, 0, 0))
        if heatmaps:
            _draw_colour_legend(canvas, draw, font, line_width * 2, banner_y - font_size - 4 * line_width, font_size)
        if patches:  # on the banner's line, after it
            after = int(draw.textbbox((line_width * 2, banner_y), banner, font=font, stroke_width=1)[2]) + font_size
            draw.text((after, banner_y), "box + dot: strongest evidence patch (effective receptive field, peak)",
                      fill=RANK_COLOURS[0], font=font, stroke_width=1, stroke_fill=(0, 0, 0))
    if any(str(finding.cells.get("in_distribution", "")) == "no" for finding in findings):
        _draw_shift_banner(draw, font, rows, cols)
    return np.asarray(canvas, dtype=np.uint8)
