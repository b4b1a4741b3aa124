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

__all__ = ["EvidenceMap", "class_evidence", "evidence_on_source"]


def class_evidence(response_maps: Tensor, classes: Tensor | np.ndarray | Any, filters_per_class: int) -> Tensor:
    """(B, M*k, H, W) P-stream response maps -> (B, H, W) float32 evidence of each sample's class.

    classes: (B,) class index per sample (usually the predicted class, the argmax of the
    probabilities). Channels ``c*k .. c*k + k-1`` are class c's filters (``DFLNet.class_filter_slice``).
    On the maps' device.
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
    return per_class.amax(dim=1).float()


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
    """

    values: np.ndarray
    to_original: np.ndarray
    region: Region
    input_size: int
    stride: float
    center_offset: float


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
