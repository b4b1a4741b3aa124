"""Where a heatmap's values lie: feature grid -> network input -> original pixels, and box clipping.

Shared by ``spine_dfl.explain`` (figures), ``spine_dfl.score`` (what each sample's network input
covered) and ``spine_dfl.dicom_out`` (the overlay's heatmaps and SR regions), so the three always
agree on where a value belongs.

Coordinates: continuous pixel coordinates, pixel ``i`` covers ``[i, i + 1)``; ``x`` = column,
``y`` = row; boxes are ``(x_min, y_min, x_max, y_max)``, max exclusive. ``to_original`` is the
float64 (3, 3) affine the transforms carry: network input continuous ``(x, y, 1)`` -> original
continuous ``(x, y, 1)``. A feature-grid location ``(row, col)`` is centred at input coordinate
``(center_offset + stride*col, center_offset + stride*row)`` (its receptive-field centre).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, overload

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

if TYPE_CHECKING:
    from spine_dfl.data.transforms.settings import Preprocessing

__all__ = [
    "STRIP_PIXELS",
    "clip_boxes",
    "display_region",
    "feature_map_to_original",
    "feature_map_to_tensor_space",
    "tensor_map_to_original",
    "view_region",
]

Region = tuple[int, int, int, int]
# Large regions are resampled in horizontal strips of about this many pixels: bounded memory for
# whole-image models on large radiographs, and the same values as in one piece.
STRIP_PIXELS = 1 << 20


@overload
def clip_boxes(boxes: Tensor, image_shape: tuple[int, int]) -> Tensor: ...
@overload
def clip_boxes(boxes: np.ndarray | Sequence[Sequence[float]], image_shape: tuple[int, int]) -> np.ndarray: ...
def clip_boxes(boxes: Tensor | np.ndarray | Sequence[Sequence[float]], image_shape: tuple[int, int]) -> Tensor | np.ndarray:
    """Clip (..., 4) boxes (x_min, y_min, x_max, y_max) to an image of ``image_shape`` = (rows, cols).

    x is clamped to [0, cols], y to [0, rows] (torchvision's ``clip_boxes_to_image``). Same type as
    ``boxes`` (numpy in, numpy out; sequences give numpy), float64.
    """
    from torchvision.ops import clip_boxes_to_image

    is_tensor = isinstance(boxes, Tensor)
    as_tensor = torch.as_tensor(boxes if is_tensor else np.asarray(boxes, dtype=np.float64), dtype=torch.float64)
    clipped = clip_boxes_to_image(as_tensor, (int(image_shape[0]), int(image_shape[1])))
    return clipped if is_tensor else clipped.numpy()


def view_region(to_original: Tensor | np.ndarray, input_size: int, image_shape: tuple[int, int]) -> Region:
    """Original-pixel region the network input covers, clipped to the image.

    to_original: (3, 3) affine. input_size: S (network input is S x S). image_shape: (rows, cols).
    Returns integer (x0, y0, x1, y1), x1/y1 exclusive, non-empty: the bounding box of the S x S input
    square in original pixels (ROI + margin + any padding), intersected with the image.
    """
    affine = np.asarray(to_original, dtype=np.float64)
    corners = np.array([[0, 0, 1], [input_size, 0, 1], [0, input_size, 1], [input_size, input_size, 1]],
                       dtype=np.float64)
    mapped = corners @ affine.T
    rows, cols = image_shape
    x0 = int(np.clip(math.floor(mapped[:, 0].min() + 1e-6), 0, cols - 1))
    y0 = int(np.clip(math.floor(mapped[:, 1].min() + 1e-6), 0, rows - 1))
    x1 = int(np.clip(math.ceil(mapped[:, 0].max() - 1e-6), x0 + 1, cols))
    y1 = int(np.clip(math.ceil(mapped[:, 1].max() - 1e-6), y0 + 1, rows))
    return x0, y0, x1, y1


def display_region(
    to_original: Tensor | np.ndarray,
    pre: Preprocessing,
    roi: Sequence[float] | None,
    image_shape: tuple[int, int],
) -> Region:
    """What the network saw, in original pixels: the ROI + margin crop box (whole image without ROI)
    intersected with the input square's footprint (`view_region`) and the image.

    pre: the checkpoint's ``Preprocessing`` (input_size, use_roi, roi_margin).
    """
    from spine_dfl.data.transforms.geometry import roi_crop_box

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


def feature_map_to_tensor_space(maps: Tensor, input_size: int, stride: float, center_offset: float) -> Tensor:
    """Resample feature-grid maps to the network input's pixel grid.

    maps: (B, C, H, W) on the feature grid (see the module docstring for its geometry).
    Returns (B, C, S, S) float32: bilinear between receptive-field centres, constant beyond the
    outermost ones. Input pixel u is sampled at its centre u + 0.5.
    """
    b, _, h, w = maps.shape
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


def tensor_map_to_original(maps: Tensor, to_original: Tensor | np.ndarray, region: Region) -> np.ndarray:
    """Warp maps defined on the network input grid to original pixels of `region`.

    maps: (C, S, S) values on input pixels (pixel u covers [u, u+1)).
    region: (x0, y0, x1, y1) original pixels, exclusive max.
    Returns (C, y1-y0, x1-x0) float32; original pixels whose centre falls outside the input square
    (never seen by the network) are NaN.
    """
    _, s_rows, s_cols = maps.shape
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


def feature_map_to_original(
    grid_map: Tensor | np.ndarray,
    input_size: int,
    stride: float,
    center_offset: float,
    to_original: Tensor | np.ndarray,
    region: Region,
    image_shape: tuple[int, int],
    strip_pixels: int = STRIP_PIXELS,
) -> tuple[Region, np.ndarray] | None:
    """One (H, W) feature-grid map on original pixels: (region clipped to the image, (h, w) float32).

    ``feature_map_to_tensor_space`` then ``tensor_map_to_original``, computed in horizontal strips of
    about ``strip_pixels`` pixels (the same values as in one piece). Pixels the network never saw are
    NaN. None when the region misses the image.
    """
    rows, cols = image_shape
    x0, y0, x1, y1 = (int(v) for v in region)
    x0, y0, x1, y1 = max(0, x0), max(0, y0), min(cols, x1), min(rows, y1)
    values = torch.as_tensor(np.ascontiguousarray(grid_map) if isinstance(grid_map, np.ndarray) else grid_map)
    if values.ndim != 2 or values.numel() == 0:
        raise ValueError(f"a feature-grid map must be a non-empty (H, W) array, got shape {tuple(values.shape)}")
    if x1 <= x0 or y1 <= y0:
        return None
    in_input = feature_map_to_tensor_space(values[None, None].cpu(), int(input_size), float(stride),
                                           float(center_offset))[0]  # (1, S, S)
    affine = np.asarray(to_original, dtype=np.float64)
    out = np.empty((y1 - y0, x1 - x0), dtype=np.float32)
    step = max(1, int(strip_pixels) // (x1 - x0))
    for top in range(y0, y1, step):
        bottom = min(y1, top + step)
        out[top - y0 : bottom - y0] = tensor_map_to_original(in_input, affine, (x0, top, x1, bottom))[0]
    return (x0, y0, x1, y1), out

