"""Ground truth -> locator head targets, and the locator's training loss.

Geometry in output cells (input pixels / ``STRIDE``): a vertebra with box centre ``c`` (cells)
is owned by the cell ``floor(c)``, whose continuous extent [i, i + 1) contains it; the offset
head learns ``c - floor(c)`` in [0, 1), so ``decode`` recovers ``c`` exactly. Size is the box
(width, height) in cells; landmarks are the six points minus ``c``, in cells.

The centre heatmap is the maximum of one Gaussian per vertebra, peak 1 at its cell, with the
CenterNet radius: the largest shift of a box of this size that still overlaps the true box at
IoU >= ``min_overlap``. Loss: penalty-reduced focal loss on the heatmap (Law & Deng 2018; Zhou
et al. 2019) + L1 on size, offset and landmarks at the true centres + cross entropy on the level
logits at the true centres (rows with level -1, unknown, are left out).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from spine_dfl.locate.network import STRIDE

MAX_OBJECTS = 32
DEFAULT_LOSS_WEIGHTS: dict[str, float] = {"heatmap": 1.0, "size": 0.2, "offset": 1.0, "landmarks": 0.5, "levels": 1.0}


def gaussian_radius(height: float, width: float, min_overlap: float = 0.7) -> float:
    """CenterNet's radius (cells) for a box of ``height`` x ``width`` cells (smallest of three cases)."""
    b1, c1 = height + width, width * height * (1 - min_overlap) / (1 + min_overlap)
    r1 = (b1 + math.sqrt(b1 ** 2 - 4 * c1)) / 2
    b2, c2 = 2 * (height + width), (1 - min_overlap) * width * height
    r2 = (b2 + math.sqrt(b2 ** 2 - 16 * c2)) / 2
    a3, b3, c3 = 4 * min_overlap, -2 * min_overlap * (height + width), (min_overlap - 1) * width * height
    r3 = (b3 + math.sqrt(b3 ** 2 - 4 * a3 * c3)) / 2
    return min(r1, r2, r3)


def draw_gaussian(heatmap: torch.Tensor, centre_xy: tuple[int, int], radius: int) -> None:
    """Max-merge a Gaussian (sigma = diameter / 6, peak 1) at integer cell ``centre_xy`` into (h, w)."""
    diameter = 2 * radius + 1
    sigma = diameter / 6.0
    r = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-(r[None, :] ** 2 + r[:, None] ** 2) / (2 * sigma * sigma))
    x, y = centre_xy
    h, w = heatmap.shape
    left, right = min(x, radius), min(w - x, radius + 1)
    top, bottom = min(y, radius), min(h - y, radius + 1)
    region = heatmap[y - top: y + bottom, x - left: x + right]
    patch = kernel[radius - top: radius + bottom, radius - left: radius + right]
    torch.maximum(region, patch, out=region)


def encode_targets(
    boxes: np.ndarray,
    out_hw: tuple[int, int],
    points: np.ndarray | None = None,
    levels: Sequence[int] | None = None,
    max_objects: int = MAX_OBJECTS,
) -> dict[str, torch.Tensor]:
    """Head targets of one image from (N, 4) boxes, (N, 6, 2) points and (N,) levels in INPUT pixels.

    Vertebrae whose centre falls outside the output map are left out (mask False). ``points``
    None (or a row of NaN): no landmark loss for the image (that vertebra); ``levels`` None or -1 entries: no level loss for those.
    """
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    n = len(b)
    if n > max_objects:
        raise ValueError(f"{n} vertebrae in one image; the targets hold at most {max_objects}")
    if not ((b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all()):
        raise ValueError("boxes must have x_min < x_max and y_min < y_max")
    h, w = out_hw
    pts = None if points is None else np.asarray(points, dtype=np.float64).reshape(n, 6, 2)
    lv = np.full(n, -1, dtype=np.int64) if levels is None else np.asarray(levels, dtype=np.int64).reshape(n)
    out = {
        "heatmap": torch.zeros((1, h, w), dtype=torch.float32),
        "index": torch.zeros(max_objects, dtype=torch.int64),
        "mask": torch.zeros(max_objects, dtype=torch.bool),
        "size": torch.zeros((max_objects, 2), dtype=torch.float32),
        "offset": torch.zeros((max_objects, 2), dtype=torch.float32),
        "landmarks": torch.zeros((max_objects, 12), dtype=torch.float32),
        "landmark_mask": torch.zeros(max_objects, dtype=torch.bool),
        "level": torch.full((max_objects,), -1, dtype=torch.int64),
    }
    for k in range(n):
        centre = np.array([(b[k, 0] + b[k, 2]) / 2, (b[k, 1] + b[k, 3]) / 2]) / STRIDE
        cell = np.floor(centre).astype(np.int64)
        if not (0 <= cell[0] < w and 0 <= cell[1] < h):
            continue
        size = (b[k, 2:] - b[k, :2]) / STRIDE
        radius = max(0, int(gaussian_radius(size[1], size[0])))
        draw_gaussian(out["heatmap"][0], (int(cell[0]), int(cell[1])), radius)
        out["index"][k] = int(cell[1] * w + cell[0])
        out["mask"][k] = True
        out["size"][k] = torch.as_tensor(size, dtype=torch.float32)
        out["offset"][k] = torch.as_tensor(centre - cell, dtype=torch.float32)
        if pts is not None and np.isfinite(pts[k]).all():  # NaN rows: no landmarks for this vertebra
            out["landmarks"][k] = torch.as_tensor((pts[k] / STRIDE - centre).reshape(12), dtype=torch.float32)
            out["landmark_mask"][k] = True
        out["level"][k] = int(lv[k])
    return out


def collate_targets(targets: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack per-image targets into a batch."""
    return {key: torch.stack([t[key] for t in targets]) for key in targets[0]}


def gather_at(maps: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) maps read at (B, K) flat cell indices -> (B, K, C)."""
    b, c = maps.shape[:2]
    flat = maps.reshape(b, c, -1)
    return flat.gather(2, index[:, None, :].expand(b, c, index.shape[1])).transpose(1, 2)


def focal_loss(logits: torch.Tensor, target: torch.Tensor, alpha: float = 2.0, beta: float = 4.0) -> torch.Tensor:
    """CenterNet's penalty-reduced focal loss, summed and divided by the number of peaks (>= 1)."""
    pos = target.eq(1.0).float()
    log_p, log_not_p = F.logsigmoid(logits), F.logsigmoid(-logits)
    p = torch.sigmoid(logits)
    pos_loss = (log_p * (1 - p) ** alpha * pos).sum()
    neg_loss = (log_not_p * p ** alpha * (1 - target) ** beta * (1 - pos)).sum()
    return -(pos_loss + neg_loss) / pos.sum().clamp(min=1.0)


def _masked_l1(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask[..., None].float()
    return (torch.abs(pred - target) * m).sum() / (m.sum() * pred.shape[-1]).clamp(min=1.0)


def locator_loss(
    outputs: Mapping[str, torch.Tensor],
    targets: Mapping[str, torch.Tensor],
    weights: Mapping[str, float] | None = None,
) -> dict[str, torch.Tensor]:
    """Weighted total ("loss") and its parts, from network outputs and batched targets."""
    w = dict(DEFAULT_LOSS_WEIGHTS, **(weights or {}))
    index, mask = targets["index"], targets["mask"]
    parts = {
        "heatmap": focal_loss(outputs["heatmap"], targets["heatmap"]),
        "size": _masked_l1(gather_at(outputs["size"], index), targets["size"], mask),
        "offset": _masked_l1(gather_at(outputs["offset"], index), targets["offset"], mask),
        "landmarks": _masked_l1(gather_at(outputs["landmarks"], index), targets["landmarks"],
                                mask & targets["landmark_mask"]),
    }
    level_logits = gather_at(outputs["levels"], index)
    known = mask & targets["level"].ge(0)
    if bool(known.any()):
        parts["levels"] = F.cross_entropy(level_logits[known], targets["level"][known])
    else:
        parts["levels"] = level_logits.sum() * 0.0
    parts["loss"] = sum(w[name] * value for name, value in parts.items())
    return parts
