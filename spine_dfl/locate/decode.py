"""Locator output maps -> detections (boxes, six points, level logits, score) in original pixels.

Peaks: the sigmoid centre heatmap, kept where it equals its 3 x 3 maximum (CenterNet's max-pool
non-maximum suppression) and reaches ``threshold``, at most ``max_detections`` by score. At a
peak cell (i, j) the centre is ``(i + offset) * STRIDE`` input pixels, the inverse of
``targets.encode_targets``; boxes, points and centres then go to original pixels through the
exact ``to_original`` affine of ``preprocess.letterbox``. With ``image_shape`` a peak whose centre
lies outside the image (in the letterbox padding, where no vertebra can be) is dropped before the
``max_detections`` cut, so it neither reaches the labelling nor takes a true vertebra's place.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from spine_dfl.data.transforms import map_boxes_to_original, map_points_to_original
from spine_dfl.locate.network import STRIDE


@dataclass(frozen=True)
class Detections:
    """N detected vertebrae of one image, sorted by descending score.

    ``boxes`` (N, 4) x_min, y_min, x_max, y_max; ``points`` (N, 6, 2) sa, sm, sp, ia, im, ip;
    ``centres`` (N, 2); all float64 in the coordinates given by ``to_original`` (input-tensor
    pixels when it is None). ``scores`` (N,) heatmap peak values; ``level_logits`` (N, L).
    """

    boxes: np.ndarray
    points: np.ndarray
    centres: np.ndarray
    scores: np.ndarray
    level_logits: np.ndarray

    def __len__(self) -> int:
        return len(self.scores)

    def take(self, keep: np.ndarray) -> Detections:
        """The detections at ``keep`` (indices or boolean mask), in that order."""
        return Detections(self.boxes[keep], self.points[keep], self.centres[keep], self.scores[keep],
                          self.level_logits[keep])


def heatmap_peaks(heatmap_logits: torch.Tensor, threshold: float, max_detections: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(K,) flat cell indices and (K,) scores of the local maxima of one (1, h, w) heatmap."""
    heat = torch.sigmoid(heatmap_logits.float())
    local_max = F.max_pool2d(heat[None], kernel_size=3, stride=1, padding=1)[0]
    heat = torch.where(heat == local_max, heat, torch.zeros_like(heat)).reshape(-1)
    k = min(int(max_detections), heat.numel())
    scores, index = torch.topk(heat, k)
    keep = scores >= threshold
    return index[keep], scores[keep]


def decode(
    outputs: Mapping[str, torch.Tensor],
    to_original: torch.Tensor | np.ndarray | None = None,
    threshold: float = 0.3,
    max_detections: int = 32,
    image_shape: tuple[int, int] | None = None,
) -> Detections:
    """Detections of ONE image from its output maps (each (C, h, w), or (1, C, h, w)).

    ``image_shape``: (rows, cols) of the image ``to_original`` maps to (the input tensor without it);
    detections whose centre lies outside [0, cols] x [0, rows] are dropped.
    """
    maps = {name: (m[0] if m.ndim == 4 else m).detach().float().cpu() for name, m in outputs.items()}
    _, h, w = maps["heatmap"].shape
    index, scores = heatmap_peaks(maps["heatmap"], threshold, h * w if image_shape is not None else max_detections)

    def at(name: str) -> torch.Tensor:  # (K, C) values of a head at the peak cells
        return maps[name].reshape(maps[name].shape[0], -1)[:, index].T.double()

    cells = torch.stack([index % w, index // w], dim=1).double()
    centres = (cells + at("offset")) * STRIDE
    half = at("size") * (STRIDE / 2.0)
    boxes = torch.cat([centres - half, centres + half], dim=1)
    points = centres[:, None, :] + at("landmarks").reshape(-1, 6, 2) * STRIDE
    if to_original is not None:
        boxes = map_boxes_to_original(boxes[None], to_original)[0]
        points = map_points_to_original(points.reshape(-1, 2), to_original).reshape(-1, 6, 2)
        centres = map_points_to_original(centres, to_original)
    found = Detections(
        boxes=boxes.numpy(), points=points.numpy(), centres=centres.numpy(),
        scores=scores.double().numpy(), level_logits=at("levels").numpy(),
    )
    if image_shape is None:
        return found
    return found.take(np.flatnonzero(inside_image(found.centres, image_shape))[: int(max_detections)])


def inside_image(centres: np.ndarray, image_shape: tuple[int, int]) -> np.ndarray:
    """(N,) whether each (x, y) centre lies in the image of (rows, cols) (continuous pixels, edges included)."""
    rows, cols = (float(v) for v in image_shape[:2])
    x, y = centres[:, 0], centres[:, 1]
    return (x >= 0) & (x <= cols) & (y >= 0) & (y <= rows)
