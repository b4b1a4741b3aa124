"""Where a response map peaks, to a fraction of a cell, and the distinct patches one class shows.

- ``refine_peaks``: sub-cell peak of (N, H, W) maps: the integer maximum, moved by a parabola fitted
  through it and its two neighbours along each axis (exact for a quadratic peak; no move along an
  axis at the map's border or when the neighbours do not bend down);
- ``grid_to_input``: fractional feature-grid (row, col) -> network-input continuous (x, y);
- ``suppress_duplicates``: greedy NMS over one class's filter patches, so the top N are N places;
- ``class_patches``: one class's patches in original pixels (peak, box of the effective side).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from spine_dfl.heatmap.geometry import clip_boxes

__all__ = ["DUPLICATE_IOU", "class_patches", "grid_to_input", "map_peak_to_original", "refine_peaks",
           "suppress_duplicates"]

# Two patches of side s whose peaks lie d apart along one axis overlap with IoU (s - d) / (s + d):
# 1/3 at d = s / 2. Peaks closer than half a patch are one place.
DUPLICATE_IOU = 1.0 / 3.0


def refine_peaks(maps: Tensor, flat_index: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Sub-cell maxima of (N, H, W) maps -> (row, col, value), each (N,) float64.

    flat_index: (N,) integer maxima ``row*W + col`` to refine (e.g. the model's max-pool indices);
    default each map's argmax. The offset along an axis is ``(f[-1] - f[+1]) / (2 (f[-1] - 2 f[0] +
    f[+1]))``, clamped to [-0.5, 0.5]; value is the parabola's height there (the sum of both axes'
    gains over f[0]).
    """
    values = maps.detach().double().cpu()
    if values.ndim != 3 or values.shape[1] == 0 or values.shape[2] == 0:
        raise ValueError(f"maps must be (N, H, W) with H, W >= 1, got shape {tuple(values.shape)}")
    n, h, w = values.shape
    index = values.reshape(n, -1).argmax(dim=1) if flat_index is None else flat_index.detach().long().cpu()
    row = torch.div(index, w, rounding_mode="floor")
    col = index - row * w
    samples = torch.arange(n)
    centre = values[samples, row, col]
    d_row, gain_row = _axis_offset(values, samples, row, col, h, along_rows=True, centre=centre)
    d_col, gain_col = _axis_offset(values, samples, row, col, w, along_rows=False, centre=centre)
    return row.double() + d_row, col.double() + d_col, centre + gain_row + gain_col


def _axis_offset(values: Tensor, samples: Tensor, row: Tensor, col: Tensor, size: int, along_rows: bool,
                 centre: Tensor) -> tuple[Tensor, Tensor]:
    """(offset, height gain) of the parabola through the maximum and its two neighbours on one axis."""
    position = row if along_rows else col
    inside = (position > 0) & (position < size - 1)
    before = (position - 1).clamp(min=0)
    after = (position + 1).clamp(max=size - 1)
    if along_rows:
        f_before, f_after = values[samples, before, col], values[samples, after, col]
    else:
        f_before, f_after = values[samples, row, before], values[samples, row, after]
    curvature = f_before - 2.0 * centre + f_after
    usable = inside & (curvature < 0)
    safe = torch.where(usable, curvature, torch.full_like(curvature, -1.0))
    offset = torch.where(usable, (0.5 * (f_before - f_after) / safe).clamp(-0.5, 0.5), torch.zeros_like(curvature))
    gain = torch.where(usable, 0.25 * (f_after - f_before) * offset, torch.zeros_like(curvature))
    return offset, gain


def grid_to_input(row: Tensor, col: Tensor, stride: float, center_offset: float) -> tuple[Tensor, Tensor]:
    """Fractional feature-grid (row, col) -> network-input continuous (x, y): the receptive-field
    centre geometry of ``spine_dfl.heatmap.geometry``, extended between cells."""
    return center_offset + stride * col.double(), center_offset + stride * row.double()


def map_peak_to_original(
    grid_map: Tensor, stride: float, center_offset: float, to_original: Tensor | np.ndarray
) -> tuple[float, float]:
    """The refined maximum of one (H, W) feature-grid map as original continuous (x, y)."""
    from spine_dfl.data.transforms.geometry import map_points_to_original

    row, col, _ = refine_peaks(grid_map.reshape(1, *grid_map.shape[-2:]))
    x, y = grid_to_input(row, col, stride, center_offset)
    point = map_points_to_original(torch.stack((x, y), dim=1), to_original)[0]
    return float(point[0]), float(point[1])


def suppress_duplicates(boxes: Tensor, scores: Tensor, iou_threshold: float = DUPLICATE_IOU) -> tuple[Tensor, Tensor]:
    """Greedy NMS: (kept indices, strongest first; for every box, the kept index it merges into).

    boxes: (n, 4) float; scores: (n,). A box whose IoU with a stronger kept box exceeds
    `iou_threshold` is a duplicate of the kept box it overlaps most.
    """
    from torchvision.ops import box_iou, nms

    if boxes.numel() == 0:
        empty = torch.zeros(0, dtype=torch.long)
        return empty, empty
    boxes, scores = boxes.double().cpu(), scores.double().cpu()
    kept = nms(boxes, scores, float(iou_threshold))
    overlap = box_iou(boxes, boxes[kept])  # (n, kept)
    stronger = scores[kept][None, :] >= scores[:, None]
    owner = torch.where(stronger, overlap, torch.full_like(overlap, -1.0)).argmax(dim=1)
    owner = kept[owner]
    owner[kept] = kept
    return kept, owner


def class_patches(
    response_maps: Tensor,
    peak_index: Tensor,
    class_index: int,
    class_name: str,
    filters_per_class: int,
    geometry: tuple[float, float, float],
    to_original: Tensor | np.ndarray,
    image_shape: tuple[int, int],
    top_n: int,
    centres: Tensor | None = None,
) -> list[dict[str, Any]]:
    """One class's strongest distinct P-stream patches in original pixels.

    response_maps: (M*k, H, W) one sample's filter responses; peak_index: (M*k,) their flat maxima
    (the model's max-pool indices). geometry: (stride, center_offset, patch side), input pixels.
    centres: (k, 2) input (x, y) each class filter's peak cell reads, e.g. its input-gradient centre
    (``model.effective_field.gradient_centres``); default the cell's theoretical centre. The class's k filters
    are refined (``refine_peaks``: the sub-cell shift moves the centre by stride x the shift), boxed
    with the patch side around the refined peak, and duplicates suppressed (``suppress_duplicates``). Returns up to `top_n` dicts,
    strongest first: rank, filter, filter_in_class, class, class_index, score (the filter's maximum),
    peak_x / peak_y (refined peak, original continuous pixels, unclipped), peak_row / peak_col
    (refined feature-grid position), x_min .. y_max (the box mapped to original pixels and clipped),
    in_image, same_place_filters (other filters of the class whose peak is this place).
    """
    from spine_dfl.data.transforms.geometry import map_boxes_to_original, map_points_to_original

    stride, center_offset, side = (float(v) for v in geometry)
    k = int(filters_per_class)
    channels = torch.arange(class_index * k, (class_index + 1) * k)
    maps = response_maps.detach().cpu()[channels]
    scores = maps.reshape(k, -1).gather(1, peak_index.detach().cpu()[channels].long()[:, None])[:, 0].double()
    cells = peak_index.detach().cpu()[channels].long()
    row, col, _ = refine_peaks(maps, cells)
    x, y = grid_to_input(row, col, stride, center_offset)
    if centres is not None:  # the same sub-cell shift, from where the peak cell reads instead of its centre
        cell_x, cell_y = grid_to_input(torch.div(cells, maps.shape[-1], rounding_mode="floor").double(),
                                       (cells % maps.shape[-1]).double(), stride, center_offset)
        x = x - cell_x + centres[:, 0].double().cpu()
        y = y - cell_y + centres[:, 1].double().cpu()
    half = side / 2.0
    boxes = torch.stack((x - half, y - half, x + half, y + half), dim=1)
    kept, owner = suppress_duplicates(boxes, scores)
    kept = kept[: max(0, int(top_n))]
    points = np.asarray(map_points_to_original(torch.stack((x, y), dim=1)[kept], to_original)).reshape(-1, 2)
    mapped = np.asarray(map_boxes_to_original(boxes[kept], to_original), dtype=np.float64).reshape(-1, 4)
    clipped = clip_boxes(mapped, image_shape)
    out: list[dict[str, Any]] = []
    for rank, (local, point, box) in enumerate(zip(kept.tolist(), points, clipped), start=1):
        x_min, y_min, x_max, y_max = (float(v) for v in box)
        same = [int(channels[j]) for j in range(k) if j != local and int(owner[j]) == local]
        out.append({
            "rank": rank, "filter": int(channels[local]), "filter_in_class": int(local), "class": class_name,
            "class_index": int(class_index), "score": float(scores[local]),
            "x_min": round(x_min, 2), "y_min": round(y_min, 2), "x_max": round(x_max, 2), "y_max": round(y_max, 2),
            "peak_x": round(float(point[0]), 2), "peak_y": round(float(point[1]), 2),
            "peak_row": round(float(row[local]), 3), "peak_col": round(float(col[local]), 3),
            "in_image": bool(x_max > x_min and y_max > y_min), "same_place_filters": same,
        })
    return out
