"""THE P-stream evidence map: for each sample, the max over one class's k filter response maps.

DFL-CNN's P-stream has k 1x1 filters per class; each fires on one discriminative patch. A class's
evidence at a feature-grid location is the strongest of its k responses there. ``explain`` draws it
for the predicted class, ``score`` sends it with each finding to ``dicom_out``, which blends it into
the overlay Secondary Capture; all three compute it here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from spine_dfl.heatmap.geometry import STRIP_PIXELS, Region, feature_map_to_original

__all__ = ["EvidenceMap", "class_evidence", "evidence_on_source", "evidence_patches"]


def class_evidence(response_maps: Tensor, classes: Tensor | np.ndarray | Any, filters_per_class: int,
                   searched: Tensor | None = None) -> Tensor:
    """(B, M*k, H, W) P-stream response maps -> (B, H, W) float32 evidence of each sample's class.

    classes: (B,) class index per sample (usually the predicted class, the argmax of the
    probabilities). Channels ``c*k .. c*k + k-1`` are class c's filters (``DFLNet.class_filter_slice``).
    searched: (B, H, W) bool, where the model's max pool searches (``DFLNet.searched_locations``), or
    None for everywhere; elsewhere the evidence is the sample's lowest searched value (no evidence
    is shown where the model does not look). On the maps' device.
    """
    b, channels, h, w = response_maps.shape
    k = int(filters_per_class)
    if channels % k:
        raise ValueError(f"{channels} response maps are not a whole number of classes of {k} filters")
    index = torch.as_tensor(np.asarray(classes) if not isinstance(classes, Tensor) else classes,
                            dtype=torch.long, device=response_maps.device).reshape(-1)
    if index.numel() != b:
        raise ValueError(f"{index.numel()} class indices for {b} samples")
    per_class = response_maps.reshape(b, channels // k, k, h, w)[torch.arange(b, device=response_maps.device), index]
    evidence = per_class.amax(dim=1).float()
    if searched is not None:
        searched = searched.to(evidence.device)
        floor = evidence.masked_fill(~searched, float("inf")).amin(dim=(1, 2), keepdim=True)
        evidence = torch.where(searched, evidence, floor)
    return evidence


@dataclass(frozen=True)
class EvidenceMap:
    """One sample's evidence map with its geometry; small and picklable (sent to writer processes).

    values: (H, W) float32 on the model's conv4 feature grid (``class_evidence`` of one sample).
    to_original: (3, 3) float64 affine, network input continuous (x, y, 1) -> source continuous (x, y, 1).
    region: (x0, y0, x1, y1) integer source pixels, max exclusive: what the network saw
        (``geometry.display_region``); the heatmap is drawn only there.
    input_size: S (the network input is S x S).
    stride, center_offset: the feature grid's geometry in input pixels (location (row, col) is
        centred at (center_offset + stride*col, center_offset + stride*row)).
    patch_side: the model's effective receptive field (``model.effective_field``) for ``evidence_patches``.
    top_read: input (x, y) the map's strongest location reads (its input-gradient centre,
        ``model.effective_field.gradient_centres``), where ``explain`` draws the top patch; None: its centre.
    """

    values: np.ndarray
    to_original: np.ndarray
    region: Region
    input_size: int
    stride: float
    center_offset: float
    patch_side: float = 0.0  # drawn patch side in input pixels (effective receptive field); 0: no patches
    top_read: tuple[float, float] | None = None


def evidence_on_source(
    evidence: EvidenceMap, image_shape: tuple[int, int], strip_pixels: int = STRIP_PIXELS
) -> tuple[Region, np.ndarray] | None:
    """An evidence map on source pixels: (region clipped to the image, (h, w) float32 map), or None.

    Bilinear between receptive-field centres on the S x S input grid, then through ``to_original``
    onto source pixel centres (``geometry.feature_map_to_original``); source pixels the network never
    saw are NaN. None when the region misses the image. Raises ValueError for a malformed map.
    """
    return feature_map_to_original(
        np.asarray(evidence.values, dtype=np.float32), int(evidence.input_size), float(evidence.stride),
        float(evidence.center_offset), evidence.to_original, evidence.region, image_shape, strip_pixels,
    )


def evidence_patches(evidence: EvidenceMap, top_n: int = 3) -> list[tuple[float, float, tuple[float, float, float, float]]]:
    """The evidence map's strongest distinct places: [(peak_x, peak_y, box)], strongest first, original pixels.

    Every local maximum of the grid map (3 x 3 neighbourhood) is refined (``peaks.refine_peaks``),
    boxed with ``patch_side`` and duplicates suppressed (``peaks.suppress_duplicates``). The first is
    the top patch ``explain`` draws (the class's strongest filter peaks at the map's maximum). Boxes
    are not clipped; [] when ``patch_side`` is 0 or the map is flat.
    """
    import torch.nn.functional as F

    from spine_dfl.data.transforms.geometry import map_boxes_to_original, map_points_to_original
    from spine_dfl.heatmap.peaks import grid_to_input, refine_peaks, suppress_duplicates

    if evidence.patch_side <= 0 or top_n < 1:
        return []
    values = torch.as_tensor(np.asarray(evidence.values, dtype=np.float32))
    # Local maxima above the map's floor: a flat stretch of the minimum is no place, a flat map has none.
    local = (values == F.max_pool2d(values[None, None], 3, stride=1, padding=1)[0, 0]) & (values > values.min())
    flat = torch.nonzero(local.reshape(-1)).flatten()
    if flat.numel() == 0:
        return []
    row, col, height = refine_peaks(values.expand(len(flat), -1, -1), flat)
    x, y = grid_to_input(row, col, evidence.stride, evidence.center_offset)
    if evidence.top_read is not None:  # the strongest place is drawn where it reads, as explain draws it
        strongest = flat == int(values.reshape(-1).argmax())
        if bool(strongest.any()):
            cell = int(flat[strongest][0])
            cell_x, cell_y = grid_to_input(torch.tensor([cell // values.shape[-1]]), torch.tensor([cell % values.shape[-1]]),
                                           evidence.stride, evidence.center_offset)
            x = torch.where(strongest, x + float(evidence.top_read[0]) - float(cell_x[0]), x)
            y = torch.where(strongest, y + float(evidence.top_read[1]) - float(cell_y[0]), y)
    half = float(evidence.patch_side) / 2.0
    boxes = torch.stack((x - half, y - half, x + half, y + half), dim=1)
    kept = suppress_duplicates(boxes, height)[0][: int(top_n)]
    points = map_points_to_original(torch.stack((x, y), dim=1)[kept], evidence.to_original)
    mapped = map_boxes_to_original(boxes[kept], evidence.to_original)
    return [(float(p[0]), float(p[1]), tuple(float(v) for v in b)) for p, b in zip(points, mapped)]  # type: ignore[misc]
