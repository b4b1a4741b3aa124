"""Patch heatmaps for clinicians: which patches of the radiograph drove each vertebra's grade.

DFL-CNN's P-stream filters each fire on one discriminative patch; their peaks are the model's own
explanation. For every sample `explain` writes, into the output folder:

``<NNNNN>_<image stem>_<vertebra>.png``
    One figure with three panels of the radiograph region the network saw (the ROI + margin crop
    box, or the whole image, clipped to the image), shown at ORIGINAL resolution: original pixels,
    never the resampled network input; small regions are enlarged with nearest-neighbour so each
    original pixel stays a visible block, only regions larger than ``MAX_PANEL_PX`` are shown
    reduced. Windowed with robust percentiles of the already VOI-windowed pixels. Axes are in
    original pixel coordinates; the dashed white rectangle is the ROI.
      1. the top-N patches of the PREDICTED class: each of that class's k P-stream filters' peak,
         mapped back through pad / resize / crop to original pixels, as a receptive-field-sized box
         (clipped to the image), numbered by rank (highest filter response first), with a numbered
         marker at the peak centre and a legend giving filter and response;
      2. P-stream class evidence: max over the predicted class's k response maps, built in network
         input space (S x S) from the feature grid's receptive-field centres, warped to the original
         region through the sample's ``to_original`` affine, blended with ``inferno`` + colour bar;
      3. MONAI Grad-CAM of the G-stream (target: last block of the G-stream head, i.e. ResNet layer4's
         last block / VGG conv5_3's ReLU; class = predicted), mapped back the same way.
``patches.json``
    A JSON list, one object per sample: image, vertebra, sop_instance_uid, label, pred, correct,
    confidence, probs {class: p}, roi, region, png, boxes [{rank, filter, filter_in_class, class,
    class_index, score, x_min, y_min, x_max, y_max, peak_x, peak_y, in_image}] (original pixels,
    x = column, y = row, continuous coordinates, max exclusive), streamed to a temporary file while
    the run goes and renamed into place at the end.
``index.html``
    Self-contained gallery (inline CSS and JS, PNGs referenced by relative path, no network),
    filterable by level, predicted class and correct / wrong (when labels are known), sorted by
    confidence, with each vertebra's probabilities. Written atomically.

Memory stays flat: samples are transformed, batched through the model, rendered and written one
batch at a time; figures are matplotlib ``Figure`` objects outside pyplot's registry (freed when
dropped); only small per-sample dicts are kept for the gallery.
"""

from __future__ import annotations

import argparse
import copy
import html
import json
import logging
import math
import re
import sys
import time
import urllib.parse
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from spine_dfl.atomic import atomic_output, atomic_write_text

log = logging.getLogger(__name__)

__all__ = [
    "GStreamLogits",
    "add_explain_arguments",
    "class_boxes",
    "display_region",
    "explain",
    "explain_manifest",
    "feature_map_to_tensor_space",
    "gradcam_target_layer",
    "heat_overlay",
    "render_gallery",
    "render_sample_figure",
    "run_explain_command",
    "tensor_map_to_original",
    "view_region",
]

# Display window: robust percentiles of the shown region (the reader has already applied the
# DICOM VOI window; percentiles only stop a few extreme pixels from washing the display out).
DISPLAY_PERCENTILES = (0.5, 99.5)
HEATMAP_CMAP = "inferno"  # perceptually uniform, readable in greyscale print
HEATMAP_ALPHA_MIN, HEATMAP_ALPHA_MAX = 0.15, 0.7  # overlay opacity at the map's minimum / maximum
# Rank colours: high-contrast on a grey radiograph and distinct from the inferno ramp's order.
RANK_COLOURS = ("#00e5ff", "#ffd600", "#ff4081", "#76ff03", "#ff9100", "#e040fb", "#ffffff", "#1de9b6",
                "#ff1744", "#b388ff")
MIN_PANEL_PX = 360  # small ROIs are enlarged to at least this for legibility (nearest neighbour)
MAX_PANEL_PX = 1400  # larger regions (whole-image models) are shown reduced, to keep PNGs reasonable


# --------------------------------------------------------------------------- geometry
def view_region(to_original: Tensor | np.ndarray, input_size: int, image_shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """Original-pixel region the network input covers, clipped to the image.

    to_original: (3, 3) affine, homogeneous tensor continuous (x, y, 1) -> original continuous (x, y, 1).
    input_size: S (network input is S x S).
    image_shape: (rows, cols) of the original image.
    Returns integer (x0, y0, x1, y1), x1/y1 exclusive, non-empty: the bounding box of the S x S input
    square in original pixels (ROI + margin + any padding), intersected with the image.
    """
    affine = np.asarray(to_original, dtype=np.float64)
    corners = np.array([[0, 0, 1], [input_size, 0, 1], [0, input_size, 1], [input_size, input_size, 1]], dtype=np.float64)
    mapped = corners @ affine.T
    rows, cols = image_shape
    x0 = int(np.clip(math.floor(mapped[:, 0].min() + 1e-6), 0, cols - 1))
    y0 = int(np.clip(math.floor(mapped[:, 1].min() + 1e-6), 0, rows - 1))
    x1 = int(np.clip(math.ceil(mapped[:, 0].max() - 1e-6), x0 + 1, cols))
    y1 = int(np.clip(math.ceil(mapped[:, 1].max() - 1e-6), y0 + 1, rows))
    return x0, y0, x1, y1


def feature_map_to_tensor_space(maps: Tensor, input_size: int, stride: float, center_offset: float) -> Tensor:
    """Resample feature-grid maps to the network input's pixel grid.

    maps: (B, C, H, W); location (row, col) is centred at continuous input coordinate
        (center_offset + stride*col, center_offset + stride*row) (receptive-field centre).
    Returns (B, C, S, S) float32: bilinear between receptive-field centres, constant beyond the
    outermost ones. Input pixel u is sampled at its centre u + 0.5.
    """
    b, c, h, w = maps.shape
    centres = torch.arange(input_size, dtype=torch.float64, device=maps.device) + 0.5
    feat = (centres - center_offset) / stride  # fractional feature index of every input pixel centre

    def normalised(index: Tensor, size: int) -> Tensor:
        # grid_sample with align_corners=True: -1 and +1 are the centres of the first and last location.
        if size == 1:
            return torch.zeros_like(index)
        return (2.0 * index / (size - 1) - 1.0).clamp(-1.0, 1.0)

    gx = normalised(feat, w)
    gy = normalised(feat, h)
    grid = torch.stack(torch.meshgrid(gy, gx, indexing="ij")[::-1], dim=-1).to(torch.float32)  # (S, S, 2) = (x, y)
    grid = grid.unsqueeze(0).expand(b, -1, -1, -1)
    return F.grid_sample(maps.float(), grid, mode="bilinear", padding_mode="border", align_corners=True)


def tensor_map_to_original(
    maps: Tensor,
    to_original: Tensor | np.ndarray,
    region: tuple[int, int, int, int],
) -> np.ndarray:
    """Warp maps defined on the network input grid to original pixels of `region`.

    maps: (C, S, S) values on input pixels (pixel u covers [u, u+1)).
    to_original: (3, 3) affine, input continuous (x, y, 1) -> original continuous (x, y, 1).
    region: (x0, y0, x1, y1) original pixels, exclusive max.
    Returns (C, y1-y0, x1-x0) float32; original pixels whose centre falls outside the input square
    (never seen by the network) are NaN.
    """
    channels, s_rows, s_cols = maps.shape
    x0, y0, x1, y1 = region
    to_tensor = np.linalg.inv(np.asarray(to_original, dtype=np.float64))
    xs = np.arange(x0, x1, dtype=np.float64) + 0.5
    ys = np.arange(y0, y1, dtype=np.float64) + 0.5
    gx, gy = np.meshgrid(xs, ys)
    points = np.stack([gx, gy, np.ones_like(gx)], axis=-1) @ to_tensor.T  # (h, w, 3) input continuous coords
    tx, ty = points[..., 0], points[..., 1]
    # grid_sample with align_corners=False: -1/+1 are the outer edges of the first/last pixel, i.e.
    # continuous coordinates 0 and S.
    grid = np.stack([2.0 * tx / s_cols - 1.0, 2.0 * ty / s_rows - 1.0], axis=-1)
    sampled = F.grid_sample(
        maps.float().unsqueeze(0).cpu(),
        torch.from_numpy(grid).float().unsqueeze(0),
        mode="bilinear",
        padding_mode="border",
        align_corners=False,
    )[0].numpy()
    outside = (tx < 0) | (tx > s_cols) | (ty < 0) | (ty > s_rows)
    sampled[:, outside] = np.nan
    return sampled


def class_boxes(
    model: nn.Module,
    peak_index: Tensor,
    peak_score: Tensor,
    feature_size: tuple[int, int],
    class_index: int,
    class_name: str,
    to_original: Tensor | np.ndarray,
    image_shape: tuple[int, int],
    top_n: int,
) -> list[dict[str, Any]]:
    """The predicted class's top-N filter peaks as boxes in original pixels.

    peak_index, peak_score: (M*k,) one sample's flat conv4 peak indices and peak responses.
    class_index: the class whose k filters (channels class_index*k .. class_index*k + k-1) are used.
    to_original: (3, 3) input -> original affine. image_shape: (rows, cols) of the original image.
    Returns up to `top_n` dicts ranked by response (rank 1 = strongest): box (x_min, y_min, x_max,
    y_max) = the receptive field mapped to original pixels and clipped to the image; peak_x / peak_y
    = the receptive-field centre in original pixels (unclipped); in_image = the clipped box has area.
    """
    from spine_dfl.data.transforms import map_boxes_to_original

    k = int(model.filters_per_class)
    channels = torch.arange(class_index * k, (class_index + 1) * k)
    scores = peak_score.detach().float().cpu()[channels]
    order = torch.argsort(scores, descending=True, stable=True)[: max(0, int(top_n))]
    chosen = channels[order]
    boxes_tensor = model.peak_boxes(peak_index.detach().cpu()[chosen], feature_size)  # (n, 4) input coords
    boxes = np.asarray(map_boxes_to_original(boxes_tensor, to_original), dtype=np.float64).reshape(-1, 4)
    rows, cols = image_shape
    out: list[dict[str, Any]] = []
    for rank, (channel, box) in enumerate(zip(chosen.tolist(), boxes), start=1):
        x_min, x_max = sorted((float(box[0]), float(box[2])))
        y_min, y_max = sorted((float(box[1]), float(box[3])))
        peak_x, peak_y = (x_min + x_max) / 2, (y_min + y_max) / 2  # affine: the centre maps to the centre
        clipped = (
            float(np.clip(x_min, 0, cols)),
            float(np.clip(y_min, 0, rows)),
            float(np.clip(x_max, 0, cols)),
            float(np.clip(y_max, 0, rows)),
        )
        out.append(
            {
                "rank": rank,
                "filter": int(channel),
                "filter_in_class": int(channel - class_index * k),
                "class": class_name,
                "class_index": int(class_index),
                "score": float(peak_score[channel]),
                "x_min": round(clipped[0], 2),
                "y_min": round(clipped[1], 2),
                "x_max": round(clipped[2], 2),
                "y_max": round(clipped[3], 2),
                "peak_x": round(peak_x, 2),
                "peak_y": round(peak_y, 2),
                "in_image": bool(clipped[2] > clipped[0] and clipped[3] > clipped[1]),
            }
        )
    return out


# --------------------------------------------------------------------------- Grad-CAM of the G-stream
class GStreamLogits(nn.Module):
    """conv4 features (B, C, H, W) -> G-stream logits (B, M): the G-stream alone, for Grad-CAM.

    Holds a private deep copy of the model's G-stream so that the hooks MONAI registers (and the
    in-place ReLUs it must switch off for backward hooks) never touch the caller's model. The trunk
    is run once by the caller and its (detached) features fed here: the Grad-CAM target lies in the
    head, so gradients never need to reach the trunk.
    """

    def __init__(self, g_stream: nn.Module) -> None:
        super().__init__()
        self.g_stream = copy.deepcopy(g_stream)
        for module in self.g_stream.modules():
            if hasattr(module, "inplace"):
                module.inplace = False  # full backward hooks reject outputs modified in place
        for parameter in self.g_stream.parameters():
            parameter.requires_grad_(True)
        self.eval()

    def forward(self, features: Tensor) -> Tensor:
        return self.g_stream(features)


def gradcam_target_layer(wrapper: GStreamLogits) -> str:
    """Name (in `wrapper`) of the G-stream head's last block: ResNet layer4[-1], VGG conv5_3's ReLU."""
    head = wrapper.g_stream.head
    last = list(head.named_children())[-1][0]
    return f"g_stream.head.{last}"


class _GradCamRunner:
    """MONAI GradCAM over a GStreamLogits wrapper; one instance per `explain` run."""

    def __init__(self, model: nn.Module) -> None:
        from monai.visualize import GradCAM

        self.wrapper = GStreamLogits(model.g_stream).to(next(model.parameters()).device)
        self.target = gradcam_target_layer(self.wrapper)
        # Raw maps (no MONAI upsampling/normalisation): they are mapped to original pixels with the
        # head's own receptive-field geometry below, and normalised per sample for display.
        self.cam = GradCAM(nn_module=self.wrapper, target_layers=self.target,
                           upsampler=lambda size: (lambda x: x), postprocessing=lambda x: x)
        from spine_dfl.model.backbones import receptive_field

        geometry = receptive_field(nn.Sequential(model.trunk, model.g_stream.head))
        self.stride = float(geometry.stride)
        self.center_offset = float(geometry.center_offset)

    def maps(self, features: Tensor, classes: Tensor) -> Tensor:
        """features (B, C, H, W), classes (B,) -> Grad-CAM (B, 1, h, w) at the head's resolution (>= 0)."""
        out: Tensor | None = None
        with torch.enable_grad():
            for class_index in torch.unique(classes).tolist():
                # MONAI scores logits[:, class_idx] summed over the batch: one class per call.
                rows = (classes == class_index).nonzero().flatten()
                subset = features[rows].detach().clone().requires_grad_(True)
                cam = self.cam.compute_map(subset, class_idx=int(class_index)).detach()
                if out is None:
                    out = torch.zeros((features.shape[0], *cam.shape[1:]), dtype=cam.dtype, device=cam.device)
                out[rows] = cam
        assert out is not None
        return out


# --------------------------------------------------------------------------- samples
@dataclass
class _Prepared:
    """One transformed sample waiting for its batch (holds only the displayed crop, not the image)."""

    seq: int
    record: Mapping[str, Any]
    image: Tensor  # (1, S, S) network input
    to_original: Tensor  # (3, 3) float64, input continuous (x, y, 1) -> original continuous (x, y, 1)
    image_shape: tuple[int, int]  # (rows, cols) of the original image
    region: tuple[int, int, int, int]  # (x0, y0, x1, y1) shown, original pixels, max exclusive
    pixels: np.ndarray  # (y1-y0, x1-x0) float32 original pixels of `region` (reader's VOI applied)
    sop_instance_uid: str


def _label_name(record: Mapping[str, Any], class_names: Sequence[str]) -> str | None:
    """The record's true class name, or None when unknown (None, '', NaN, -1)."""
    name = record.get("label_name")
    if isinstance(name, str) and name.strip():
        return name.strip()
    label = record.get("label")
    if label is None:
        return None
    if isinstance(label, str):
        return label.strip() or None
    try:
        value = float(label)
    except (TypeError, ValueError):
        return None
    if math.isnan(value) or value < 0:
        return None
    index = int(value)
    return class_names[index] if index < len(class_names) else str(index)


def _roi(record: Mapping[str, Any]) -> tuple[float, float, float, float] | None:
    """The record's ROI as 4 floats, or None (missing, or NaN as in whole-image manifest rows)."""
    roi = record.get("roi")
    if roi is None:
        return None
    values = tuple(float(v) for v in roi)
    if len(values) != 4 or any(math.isnan(v) for v in values):
        return None
    return values  # type: ignore[return-value]


def display_region(
    to_original: Tensor | np.ndarray,
    pre: Any,
    roi: tuple[float, float, float, float] | None,
    image_shape: tuple[int, int],
) -> tuple[int, int, int, int]:
    """What the network saw, in original pixels: the ROI + margin crop box (whole image without ROI)
    intersected with the input square's footprint (`view_region`) and the image."""
    from spine_dfl.data.transforms import roi_crop_box

    rows, cols = image_shape
    vx0, vy0, vx1, vy1 = view_region(to_original, int(pre.input_size), image_shape)
    if roi is None or not pre.use_roi:
        return vx0, vy0, vx1, vy1
    bx0, by0, bx1, by1 = roi_crop_box(roi, float(pre.roi_margin), rows, cols)
    x0, y0 = max(vx0, bx0), max(vy0, by0)
    x1, y1 = min(vx1, bx1), min(vy1, by1)
    if x1 <= x0 or y1 <= y0:  # cannot happen for the crop/resize/pad geometry; never show nothing
        return vx0, vy0, vx1, vy1
    return x0, y0, x1, y1


def _prepare(records: Iterable[Mapping[str, Any]], pre: Any, failures: list[dict[str, str]]) -> Iterator[_Prepared]:
    """Transform records one at a time; unreadable ones are logged into `failures` and skipped.

    The preprocessing's own loader reads each image once (its small LRU makes consecutive
    vertebrae of one radiograph share a single decode); its pixels are kept only for the crop shown.
    """
    from spine_dfl.data.transforms import deterministic_transforms

    steps = deterministic_transforms(pre)
    load, rest = steps[0], steps[1:]
    for seq, record in enumerate(records):
        roi = _roi(record)
        try:
            loaded = load({"image": str(record["image"]), "roi": roi})
            original = torch.as_tensor(loaded["image"])[0]  # (rows, cols), shares the reader's array
            sample = loaded
            for step in rest:
                sample = step(sample)
        except Exception as exc:  # unreadable image, bad ROI: keep going, say why
            reason = f"{type(exc).__name__}: {exc}"
            log.warning("explain: skipping %s (%s)", record.get("image"), reason)
            failures.append({"image": str(record.get("image")), "vertebra": str(record.get("vertebra", "") or ""),
                             "reason": reason})
            continue
        to_original = torch.as_tensor(sample["to_original"], dtype=torch.float64)
        image_shape = (int(original.shape[0]), int(original.shape[1]))
        region = display_region(to_original, pre, roi, image_shape)
        x0, y0, x1, y1 = region
        uid = str(record.get("sop_instance_uid") or "") or str(sample.get("meta", {}).get("sop_instance_uid") or "")
        yield _Prepared(
            seq=seq,
            record=record,
            image=torch.as_tensor(sample["image"]).float(),
            to_original=to_original,
            image_shape=image_shape,
            region=region,
            pixels=original[y0:y1, x0:x1].numpy().astype(np.float32, copy=True),
            sop_instance_uid=uid,
        )


def _batches(items: Iterator[_Prepared], size: int) -> Iterator[list[_Prepared]]:
    batch: list[_Prepared] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _safe_name(text: str, limit: int = 60) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.")
    return cleaned[:limit] or "x"


def _png_name(seq: int, record: Mapping[str, Any]) -> str:
    stem = Path(str(record["image"])).name
    stem = stem.rsplit(".", 1)[0] if "." in stem[1:] else stem
    vertebra = str(record.get("vertebra", "") or "")
    parts = [f"{seq:05d}", _safe_name(stem)] + ([_safe_name(vertebra, 16)] if vertebra else [])
    return "_".join(parts) + ".png"


# --------------------------------------------------------------------------- rendering
def _display_window(pixels: np.ndarray) -> tuple[float, float]:
    finite = pixels[np.isfinite(pixels)]
    if finite.size == 0:
        return 0.0, 1.0
    low, high = np.percentile(finite, DISPLAY_PERCENTILES)
    if high <= low:
        low, high = float(finite.min()), float(finite.max())
    if high <= low:
        high = low + 1.0
    return float(low), float(high)


def _grey_rgb(pixels: np.ndarray) -> np.ndarray:
    """(h, w) original pixels -> (h, w, 3) float RGB in [0, 1] with the robust display window."""
    low, high = _display_window(pixels)
    grey = np.clip((np.nan_to_num(pixels, nan=low) - low) / (high - low), 0.0, 1.0)
    return np.repeat(grey[..., None], 3, axis=2)


def heat_overlay(
    grey_rgb: np.ndarray, values: np.ndarray, cmap: Any, value_range: tuple[float, float] | None = None
) -> tuple[np.ndarray, float, float]:
    """Blend a heat map over the grey image; returns (RGB (h, w, 3), vmin, vmax of the colour scale).

    grey_rgb: (h, w, 3) float RGB in [0, 1]; values: (h, w) map on the same pixels (NaN = not seen);
    cmap: a matplotlib colormap (e.g. ``matplotlib.colormaps[HEATMAP_CMAP]``). Used for the explain
    figures and for the Secondary Capture of ``spine_dfl.dicom_out``.
    value_range: fixed colour scale, or None for the map's own finite min..max.
    Opacity grows with the value, so the radiograph stays readable where evidence is low; pixels
    the network never saw (NaN) stay plain grey.
    """
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
    return grey_rgb * (1.0 - opacity[..., None]) + colours * opacity[..., None], vmin, vmax


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
    """Write the three-panel PNG for one sample.

    pixels: (y1-y0, x1-x0) original pixels of `region` (x0, y0, x1, y1), VOI already applied.
    boxes: from `class_boxes` (original pixels). evidence / gradcam: maps on the same pixels as
    `pixels` (NaN = not seen by the network). Axes are in original pixel coordinates. The panels are
    composed as RGB arrays here (one image per axes, fixed layout): several times faster to draw
    than stacked alpha images under a layout engine, which matters over thousands of samples.
    """
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Rectangle

    x0, y0, x1, y1 = region
    height, width = pixels.shape
    longest = max(height, width)
    scale = min(max(1.0, MIN_PANEL_PX / longest), MAX_PANEL_PX / longest)
    panel_w, panel_h = width * scale, height * scale  # display pixels (dpi 100)
    left, gap, bar_w, right = 70.0, 150.0, 16.0, 90.0
    top = 90.0
    bottom = 70.0 + 16.0 * (len(boxes) + 1)
    fig_w = left + 3 * panel_w + 2 * gap + right
    fig_h = top + panel_h + bottom
    fig = Figure(figsize=(fig_w / 100.0, fig_h / 100.0), dpi=100)
    FigureCanvasAgg(fig)
    cmap = matplotlib.colormaps[HEATMAP_CMAP]
    extent = (x0, x1, y1, y0)  # continuous original coordinates: pixel i covers [i, i+1)

    def rect(px_left: float, px_width: float) -> list[float]:
        return [px_left / fig_w, bottom / fig_h, px_width / fig_w, panel_h / fig_h]

    grey = _grey_rgb(pixels)
    axes = []
    for n in range(3):
        ax = fig.add_axes(rect(left + n * (panel_w + gap), panel_w))
        ax.tick_params(labelsize=7)
        ax.set_xlabel("column (original px)", fontsize=7)
        axes.append(ax)
    axes[0].set_ylabel("row (original px)", fontsize=7)
    axes[0].imshow(grey, extent=extent, interpolation="nearest")

    for ax, values, value_range, label, panel_title, n in (
        (axes[1], evidence, None, evidence_label, f"P-stream evidence for {class_name}\n(max of its filters' responses)", 1),
        (axes[2], gradcam, (0.0, 1.0), gradcam_label,
         f"G-stream Grad-CAM for {class_name}\n(class-gradient weighted last block)", 2),
    ):
        blended, vmin, vmax = heat_overlay(grey, values, cmap, value_range)
        ax.imshow(blended, extent=extent, interpolation="nearest")
        cax = fig.add_axes(rect(left + n * (panel_w + gap) + panel_w + 10.0, bar_w))
        colourbar = fig.colorbar(ScalarMappable(Normalize(vmin, vmax), cmap), cax=cax)
        colourbar.set_label(label, fontsize=7)
        colourbar.ax.tick_params(labelsize=7)
        ax.set_title(panel_title, fontsize=9)

    for ax in axes:
        ax.set_xlim(x0, x1)
        ax.set_ylim(y1, y0)
        if roi is not None:
            ax.add_patch(Rectangle((roi[0], roi[1]), roi[2] - roi[0], roi[3] - roi[1], fill=False,
                                   edgecolor="white", linestyle="--", linewidth=0.9, alpha=0.8))

    handles, texts = [], []
    # Several filters often peak at the same location: one marker, labelled with every rank ("1,3").
    ranks_at: dict[tuple[float, float], list[int]] = {}
    for box in boxes:
        ranks_at.setdefault((box["peak_x"], box["peak_y"]), []).append(box["rank"])
    for box in reversed(list(boxes)):  # rank 1 drawn last = on top
        colour = RANK_COLOURS[(box["rank"] - 1) % len(RANK_COLOURS)]
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
    for box in boxes:
        colour = RANK_COLOURS[(box["rank"] - 1) % len(RANK_COLOURS)]
        inside = x0 <= box["peak_x"] <= x1 and y0 <= box["peak_y"] <= y1
        where = "" if inside else ("  (peak outside this view)" if box["in_image"] else "  (outside the image)")
        handles.append(Line2D([], [], color=colour, marker="o", markeredgecolor="black", linewidth=2))
        texts.append(f"#{box['rank']}  filter {box['filter']} ({class_name} filter {box['filter_in_class'] + 1})"
                     f"  response {box['score']:.3g}{where}")
    axes[0].set_title(f"strongest {len(boxes)} patch{'es' if len(boxes) != 1 else ''} of predicted class "
                      f"{class_name}\n(box = receptive field, number = rank)", fontsize=9)
    if handles:
        fig.legend(handles, texts, loc="upper left", bbox_to_anchor=(left / fig_w, (bottom - 40.0) / fig_h),
                   fontsize=7, frameon=False, title="rank, filter, peak response (strongest first)",
                   title_fontsize=7, alignment="left")
    fig.suptitle(title, fontsize=10, y=1.0 - 8.0 / fig_h, va="top")
    _atomic_savefig(fig, path)


def _atomic_savefig(fig: Any, path: Path) -> None:
    with atomic_output(path) as handle:
        fig.savefig(handle, format="png", dpi=100)


# --------------------------------------------------------------------------- gallery
_GALLERY_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:1em;background:#f4f4f4;color:#222}
h1{font-size:1.3em;margin:.2em 0}.meta{color:#555;font-size:.85em;margin-bottom:.6em}
.controls{position:sticky;top:0;background:#f4f4f4;padding:.5em 0;border-bottom:1px solid #ccc;z-index:1}
.controls label{margin-right:1em;font-size:.9em}
.card{background:#fff;border:1px solid #ccc;border-radius:6px;margin:.8em 0;padding:.6em}
.card.wrong{border-left:6px solid #c62828}.card.correct{border-left:6px solid #2e7d32}
.card img{max-width:100%;height:auto;display:block}
.head{font-size:.95em;margin-bottom:.3em}.head b{font-size:1.05em}
table.probs{border-collapse:collapse;font-size:.8em;margin:.3em 0}
table.probs td{padding:1px 6px}
.bar{display:inline-block;height:.7em;background:#5e35b1;vertical-align:middle}
.tag{display:inline-block;padding:0 .4em;border-radius:3px;font-size:.85em;color:#fff}
.tag.wrong{background:#c62828}.tag.correct{background:#2e7d32}.tag.unknown{background:#777}
.failed{color:#c62828;font-size:.85em}
"""

_GALLERY_JS = """
(function(){
  var cards=Array.prototype.slice.call(document.querySelectorAll('.card'));
  var list=document.getElementById('cards');
  function val(id){var e=document.getElementById(id);return e?e.value:'';}
  function apply(){
    var lv=val('f-level'),pr=val('f-pred'),ok=val('f-correct'),so=val('f-sort'),shown=0;
    cards.sort(function(a,b){
      var ca=parseFloat(a.dataset.conf),cb=parseFloat(b.dataset.conf);
      if(so==='asc'){return ca-cb;} if(so==='level'){return parseInt(a.dataset.levelrank)-parseInt(b.dataset.levelrank)||cb-ca;}
      return cb-ca;});
    cards.forEach(function(c){
      var show=(!lv||c.dataset.level===lv)&&(!pr||c.dataset.pred===pr)&&(!ok||c.dataset.correct===ok);
      c.style.display=show?'':'none'; if(show){shown++;} list.appendChild(c);});
    document.getElementById('count').textContent=shown+' of '+cards.length+' shown';
  }
  ['f-level','f-pred','f-correct','f-sort'].forEach(function(id){
    var e=document.getElementById(id); if(e){e.addEventListener('change',apply);}});
  apply();
})();
"""


def _options(element_id: str, label: str, values: Sequence[str], all_label: str = "all") -> str:
    opts = [f'<option value="">{html.escape(all_label)}</option>'] + [
        f'<option value="{html.escape(v, quote=True)}">{html.escape(v)}</option>' for v in values
    ]
    return f'<label>{html.escape(label)} <select id="{element_id}">{"".join(opts)}</select></label>'


def render_gallery(
    entries: Sequence[Mapping[str, Any]],
    class_names: Sequence[str],
    title: str = "spine-dfl patch explanations",
    meta_lines: Sequence[str] = (),
    failures: Sequence[Mapping[str, str]] = (),
) -> str:
    """Self-contained HTML gallery of `entries` (the patches.json objects), most confident first.

    Each card shows the sample's PNG (relative link), vertebra, prediction, truth and every class's
    probability; filters by level, predicted class and correct/wrong (only when some label is known).
    No external resources.
    """
    from spine_dfl.vertebrae import level_sort_key, sort_levels

    ordered = sorted(entries, key=lambda e: -float(e["confidence"]))
    levels = sort_levels([e.get("vertebra", "") for e in ordered if e.get("vertebra")])
    has_labels = any(e.get("label") is not None for e in ordered)
    controls = [
        _options("f-level", "Level", levels),
        _options("f-pred", "Predicted", list(class_names)),
    ]
    if has_labels:
        controls.append(_options("f-correct", "Result", ["correct", "wrong", "unknown"]))
    controls.append(
        '<label>Sort <select id="f-sort"><option value="desc">confidence, high first</option>'
        '<option value="asc">confidence, low first</option><option value="level">level</option></select></label>'
    )
    controls.append('<span id="count"></span>')
    level_rank = {name: i for i, name in enumerate(sorted({str(e.get("vertebra", "") or "") for e in ordered}, key=level_sort_key))}

    cards = []
    for entry in ordered:
        vertebra = str(entry.get("vertebra", "") or "")
        label = entry.get("label")
        status = "unknown" if label is None else ("correct" if entry.get("correct") else "wrong")
        rows = []
        for name in class_names:
            p = float(entry["probs"].get(name, 0.0))
            weight = "<b>{}</b>" if name == entry["pred"] else "{}"
            rows.append(
                f"<tr><td>{weight.format(html.escape(name))}</td><td>{p:.3f}</td>"
                f'<td><span class="bar" style="width:{max(1, round(120 * p))}px"></span></td></tr>'
            )
        truth = "" if label is None else f' &middot; truth <b>{html.escape(str(label))}</b> <span class="tag {status}">{status}</span>'
        uid = entry.get("sop_instance_uid") or ""
        src = urllib.parse.quote(str(entry["png"]))
        boxes = ", ".join(f"#{b['rank']} filter {b['filter']} ({b['score']:.3g})" for b in entry.get("boxes", []))
        cards.append(
            f'<div class="card {status}" data-level="{html.escape(vertebra, quote=True)}" '
            f'data-levelrank="{level_rank.get(vertebra, 0)}" '
            f'data-pred="{html.escape(str(entry["pred"]), quote=True)}" data-correct="{status}" '
            f'data-conf="{float(entry["confidence"]):.6f}">'
            f'<div class="head"><b>{html.escape(vertebra or "whole image")}</b> &middot; '
            f'{html.escape(Path(str(entry["image"])).name)} &middot; predicted <b>{html.escape(str(entry["pred"]))}</b> '
            f'(p = {float(entry["confidence"]):.3f}){truth}</div>'
            f'<table class="probs">{"".join(rows)}</table>'
            f'<div class="meta">patches: {html.escape(boxes)}'
            + (f" &middot; SOP Instance UID {html.escape(str(uid))}" if uid else "")
            + "</div>"
            f'<img loading="lazy" src="{html.escape(src, quote=True)}" alt="{html.escape(vertebra)} {html.escape(str(entry["pred"]))}">'
            "</div>"
        )
    failed = ""
    if failures:
        items = "".join(f"<li>{html.escape(f['image'])} {html.escape(f.get('vertebra', ''))}: {html.escape(f['reason'])}</li>" for f in failures)
        failed = f'<details class="failed"><summary>{len(failures)} sample(s) could not be read</summary><ul>{items}</ul></details>'
    meta = "".join(f"<div>{html.escape(line)}</div>" for line in meta_lines)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{html.escape(title)}</title><style>{_GALLERY_CSS}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><div class=\"meta\">{meta}"
        "<div>Panels: (1) the predicted class's strongest P-stream patches, numbered by response, box = "
        "receptive field; (2) P-stream evidence (max of the predicted class's filter responses); (3) G-stream "
        "Grad-CAM. Dashed white: the vertebra ROI. Coordinates are original image pixels.</div></div>"
        f"{failed}<div class=\"controls\">{' '.join(controls)}</div><div id=\"cards\">{''.join(cards)}</div>"
        f"<script>{_GALLERY_JS}</script></body></html>\n"
    )


# --------------------------------------------------------------------------- main entry
def explain(
    checkpoint: Any,
    samples: Iterable[Mapping[str, Any]],
    out_dir: str | Path,
    top_n: int = 5,
    device: str | torch.device = "auto",
    batch_size: int = 8,
) -> list[dict[str, Any]]:
    """Write per-sample PNGs, ``patches.json`` and ``index.html`` into `out_dir`.

    checkpoint: a checkpoint path or a `LoadedCheckpoint` (model, class_names, preprocessing).
    samples: records (mappings) with ``image`` (path), ``roi`` ((x_min, y_min, x_max, y_max) original
        pixels, or None for whole-image models), ``vertebra``, ``label`` (class name, class index, or
        None / -1 when unknown; ``label_name`` wins when present) and ``sop_instance_uid``.
        Consumed lazily (a generator over thousands of records is fine).
    top_n: boxes per sample (the predicted class's strongest filters; at most k).
    Returns the patches.json objects (small dicts, no images). Samples whose image cannot be read
    are skipped, logged, and listed in the gallery; raises ValueError when none could be explained.
    """
    from spine_dfl.engine.checkpoint import LoadedCheckpoint, load_checkpoint
    from spine_dfl.engine.device import resolve_device

    run_device = resolve_device(device) if isinstance(device, str) else device
    loaded = checkpoint if isinstance(checkpoint, LoadedCheckpoint) else load_checkpoint(checkpoint, map_location=run_device)
    model = loaded.model.to(run_device).eval()
    class_names = list(loaded.class_names)
    pre = loaded.preprocessing
    input_size = int(pre.input_size)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    gradcam = _GradCamRunner(model)
    failures: list[dict[str, str]] = []
    entries: list[dict[str, Any]] = []
    started = time.monotonic()

    with atomic_output(out / "patches.json", "w") as json_file:
        json_file.write("[")
        for batch in _batches(_prepare(samples, pre, failures), max(1, int(batch_size))):
            images = torch.stack([item.image for item in batch]).to(run_device)
            captured: list[Tensor] = []
            # The trunk's output is caught on the way through the one forward pass (Grad-CAM
            # starts from it) instead of running the trunk a second time.
            hook = model.trunk.register_forward_hook(lambda _m, _i, output: captured.append(output))
            try:
                with torch.no_grad():
                    result = model(images, return_maps=True)
            finally:
                hook.remove()
            features = captured[-1]
            probs = torch.softmax(result.fused.float(), dim=1).cpu()
            preds = probs.argmax(dim=1)
            cams = gradcam.maps(features, preds.to(run_device)).cpu()
            k = int(model.filters_per_class)
            for i, item in enumerate(batch):
                entry = _explain_one(
                    item, model, class_names, input_size, probs[i], int(preds[i]),
                    result.peak_index[i].cpu(), result.peak_score[i].cpu(), result.feature_size,
                    result.response_maps[i, int(preds[i]) * k:(int(preds[i]) + 1) * k].cpu(),
                    cams[i], gradcam, top_n, out,
                )
                json_file.write(("\n" if not entries else ",\n") + json.dumps(entry))
                entries.append(entry)
            del images, features, result, cams
        json_file.write("\n]\n")
        if not entries:
            raise ValueError(f"no sample could be explained ({len(failures)} unreadable)")

    meta = [
        f"{len(entries)} samples, model {getattr(model, 'backbone_name', '?')} (stride {model.stride} px, receptive "
        f"field {model.receptive_field} px in a {input_size} px input), {model.filters_per_class} filters per class, "
        f"classes {', '.join(class_names)}; written in {time.monotonic() - started:.0f} s",
    ]
    atomic_write_text(out / "index.html", render_gallery(entries, class_names, meta_lines=meta, failures=failures))
    log.info("explain: %d samples -> %s (%d unreadable)", len(entries), out / "index.html", len(failures))
    return entries


def _explain_one(
    item: _Prepared,
    model: nn.Module,
    class_names: Sequence[str],
    input_size: int,
    probs: Tensor,
    pred: int,
    peak_index: Tensor,
    peak_score: Tensor,
    feature_size: tuple[int, int],
    class_maps: Tensor,
    cam: Tensor,
    gradcam: _GradCamRunner,
    top_n: int,
    out: Path,
) -> dict[str, Any]:
    """Boxes, maps, PNG and the patches.json object of one sample. Images are dropped on return."""
    record = item.record
    image_shape = item.image_shape
    pred_name = class_names[pred]
    boxes = class_boxes(model, peak_index, peak_score, feature_size, pred, pred_name, item.to_original, image_shape, top_n)
    region = item.region
    x0, y0, x1, y1 = region

    evidence_s = feature_map_to_tensor_space(class_maps.max(dim=0, keepdim=True).values.unsqueeze(0), input_size,
                                             float(model.stride), float(model.rf_center_offset))[0]
    evidence = tensor_map_to_original(evidence_s, item.to_original, region)[0]
    cam_s = feature_map_to_tensor_space(cam.unsqueeze(0), input_size, gradcam.stride, gradcam.center_offset)[0]
    cam_max = float(cam_s.max())
    cam_s = cam_s / cam_max if cam_max > 0 else cam_s
    cam_original = tensor_map_to_original(cam_s, item.to_original, region)[0]

    label = _label_name(record, class_names)
    confidence = float(probs[pred])
    vertebra = str(record.get("vertebra", "") or "")
    png = _png_name(item.seq, record)
    roi = _roi(record)
    verdict = "" if label is None else (f"  |  truth {label}: " + ("correct" if label == pred_name else "WRONG"))
    title = (f"{Path(str(record['image'])).name}  {vertebra or 'whole image'}  |  predicted {pred_name} "
             f"(p = {confidence:.3f}){verdict}\n"
             + "   ".join(f"{name}: {float(p):.3f}" for name, p in zip(class_names, probs.tolist())))
    render_sample_figure(
        out / png, item.pixels, region, boxes, evidence, cam_original, title, pred_name, roi,
        evidence_label=f"filter response (max of {pred_name}'s {class_maps.shape[0]} filters)",
        gradcam_label="Grad-CAM, relative to this image's maximum" + ("" if cam_max > 0 else " (zero everywhere)"),
    )
    return {
        "image": str(record["image"]),
        "vertebra": vertebra,
        "sop_instance_uid": item.sop_instance_uid,
        "label": label,
        "pred": pred_name,
        "correct": None if label is None else bool(label == pred_name),
        "confidence": round(confidence, 6),
        "probs": {name: round(float(p), 6) for name, p in zip(class_names, probs.tolist())},
        "roi": list(roi) if roi is not None else None,
        "region": [x0, y0, x1, y1],
        "png": png,
        "boxes": boxes,
    }


# --------------------------------------------------------------------------- inputs and CLI
ROI_COLUMNS = ("x_min", "y_min", "x_max", "y_max")


def _dicom_uid(path: Path) -> str | None:
    """SOPInstanceUID from the header only (pixel data is not read), or None."""
    from spine_dfl.io import ImageReadError, read_dicom_header

    try:
        header = read_dicom_header(path)
    except ImageReadError:  # not DICOM / unreadable: reading the pixels later says why
        return None
    uid = header.get("SOPInstanceUID")
    return str(uid) if uid else None


def roi_records(files: Sequence[Path], rois_csv: str | Path | None, use_roi: bool) -> list[dict[str, Any]]:
    """Records for image files, with vertebra ROIs from `rois_csv` when the model needs them.

    rois_csv columns: ``sop_instance_uid`` or ``image`` (path, absolute, relative to the CSV's folder
    or the working folder, or a file name), ``vertebra``, ``x_min, y_min, x_max, y_max`` (original
    pixels). Whole-image models (use_roi False) get one record per file and ignore the ROIs.
    Raises ValueError when ROIs are needed but missing or match no file.
    """
    import pandas as pd

    files = [Path(f) for f in files]
    if not use_roi:
        return [{"image": str(f), "roi": None, "vertebra": "", "label": None, "sop_instance_uid": _dicom_uid(f) or ""}
                for f in files]
    if rois_csv is None:
        raise ValueError("this model was trained on vertebra ROIs: pass --rois rois.csv (sop_instance_uid or image, "
                         "vertebra, x_min, y_min, x_max, y_max)")
    rois_csv = Path(rois_csv)
    table = pd.read_csv(rois_csv, dtype={"sop_instance_uid": str, "image": str, "vertebra": str})
    missing = [c for c in ROI_COLUMNS if c not in table.columns]
    if missing or not ({"sop_instance_uid", "image"} & set(table.columns)):
        raise ValueError(f"{rois_csv}: needs columns sop_instance_uid or image, and {', '.join(ROI_COLUMNS)}; "
                         f"missing {missing or ['sop_instance_uid/image']}")
    by_uid: dict[str, Path] = {}
    by_path: dict[str, Path] = {}
    by_name: dict[str, list[Path]] = {}
    for f in files:
        by_path[str(f.resolve())] = f
        by_name.setdefault(f.name, []).append(f)
        if "sop_instance_uid" in table.columns:
            uid = _dicom_uid(f)
            if uid:
                by_uid[uid] = f
    records: list[dict[str, Any]] = []
    unmatched = 0
    for row in table.itertuples(index=False):
        values = row._asdict()
        found: Path | None = None
        uid = str(values.get("sop_instance_uid") or "").strip() if "sop_instance_uid" in values else ""
        if uid and uid.lower() != "nan":
            found = by_uid.get(uid)
        image = str(values.get("image") or "").strip() if "image" in values else ""
        if found is None and image and image.lower() != "nan":
            for candidate in (Path(image), rois_csv.parent / image):
                found = found or by_path.get(str(candidate.resolve()))
            if found is None and len(by_name.get(Path(image).name, [])) == 1:
                found = by_name[Path(image).name][0]
        if found is None:
            unmatched += 1
            continue
        roi = tuple(float(values[c]) for c in ROI_COLUMNS)
        vertebra = values.get("vertebra")
        records.append({
            "image": str(found),
            "roi": roi,
            "vertebra": "" if vertebra is None or str(vertebra) == "nan" else str(vertebra),
            "label": None,
            "sop_instance_uid": uid or "",
        })
    if unmatched:
        log.warning("explain: %d ROI row(s) of %s match none of the input files", unmatched, rois_csv)
    if not records:
        raise ValueError(f"{rois_csv}: no ROI row matches any of the {len(files)} input file(s)")
    return records


def explain_manifest(
    checkpoint: str | Path,
    manifest: str | Path,
    out_dir: str | Path,
    split: str | None = None,
    top_n: int = 5,
    device: str = "auto",
    batch_size: int = 8,
) -> list[dict[str, Any]]:
    """`explain` over a manifest's rows (one split when given and the manifest has splits)."""
    from spine_dfl.engine.checkpoint import load_checkpoint
    from spine_dfl.engine.device import resolve_device

    loaded = load_checkpoint(checkpoint, map_location=resolve_device(device))
    from spine_dfl.data.dataset import manifest_records

    # require_labels False: an unlabelled manifest is fine (the gallery then has no correct/wrong).
    records = manifest_records(manifest, loaded.class_names, split, loaded.preprocessing.use_roi, require_labels=False)
    return explain(loaded, records, out_dir, top_n=top_n, device=device, batch_size=batch_size)


def add_explain_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``spine-dfl explain CHECKPOINT INPUT... [--out DIR] [--top N] [--split S] [--rois CSV]``."""
    parser.add_argument("checkpoint", type=Path, help="checkpoint (.pt) written by spine-dfl train")
    parser.add_argument("inputs", type=Path, nargs="+",
                        help="a manifest CSV, or DICOM files / folders (then --rois, unless the model is whole-image)")
    parser.add_argument("--out", type=Path, default=Path("runs/explain"),
                        help="output folder: one PNG per sample, patches.json, index.html (default runs/explain)")
    parser.add_argument("--top", type=int, default=5, help="patches drawn per sample, strongest first (default 5)")
    parser.add_argument("--split", default=None, help="manifest split to explain (default: every row)")
    parser.add_argument("--rois", type=Path, default=None,
                        help="CSV of vertebra ROIs for DICOM inputs: sop_instance_uid or image, vertebra, "
                             "x_min, y_min, x_max, y_max (original pixels)")
    parser.add_argument("--batch-size", type=int, default=8, help="images per model batch (default 8)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where the model runs")


def _is_manifest(inputs: Sequence[Path]) -> bool:
    from spine_dfl.io import is_dicom

    return (len(inputs) == 1 and inputs[0].is_file() and inputs[0].suffix.lower() in {".csv", ".tsv", ".txt"}
            and not is_dicom(inputs[0]))


def run_explain_command(args: argparse.Namespace) -> int:
    """``spine-dfl explain``: 0 all explained, 1 some samples unreadable, 2 bad usage / input."""
    from spine_dfl.engine.checkpoint import CheckpointError, load_checkpoint
    from spine_dfl.data.dataset import manifest_records
    from spine_dfl.engine.device import resolve_device

    if args.top < 1:
        print("--top must be at least 1", file=sys.stderr)
        return 2
    try:
        loaded = load_checkpoint(args.checkpoint, map_location=resolve_device(args.device))
        use_roi = bool(loaded.preprocessing.use_roi)
        if _is_manifest(args.inputs):
            records = manifest_records(args.inputs[0], loaded.class_names, args.split, use_roi, require_labels=False)
        else:
            from spine_dfl.io import find_inputs

            missing = [str(p) for p in args.inputs if not p.exists()]
            if missing:
                raise ValueError(f"input not found: {', '.join(missing)}")
            files = find_inputs(args.inputs)
            if not files:
                raise ValueError(f"no image files under {', '.join(str(p) for p in args.inputs)}")
            records = roi_records(files, args.rois, use_roi)
    except (CheckpointError, ValueError) as exc:
        print(f"spine-dfl explain: {exc}", file=sys.stderr)
        return 2
    try:
        entries = explain(loaded, records, args.out, top_n=args.top, device=args.device, batch_size=args.batch_size)
    except ValueError as exc:  # raised only when not a single sample could be read
        print(f"spine-dfl explain: {exc}", file=sys.stderr)
        return 1
    failed = len(records) - len(entries)
    print(f"{len(entries)} sample(s) explained -> {args.out / 'index.html'}"
          + (f"; {failed} could not be read (listed in the gallery)" if failed else ""))
    return 1 if failed else 0

