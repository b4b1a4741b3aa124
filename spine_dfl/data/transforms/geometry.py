"""Pixel geometry of the samples: crop boxes, resize + pad, affine resampling, and mapping points and
boxes from tensor coordinates back to the original image.

Coordinates: continuous pixel coordinates, pixel ``i`` covers ``[i, i + 1)``; ``x`` = column,
``y`` = row. ``to_original`` is a float64 (3, 3) matrix taking homogeneous tensor coordinates
``(x, y, 1)`` to original-image coordinates; every geometric transform right-multiplies it by the
matrix that maps its output coordinates to its input coordinates.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np
import torch
import torch.nn.functional as F

# numpy in, numpy out; tensor in, tensor out
ArrayOrTensor = TypeVar("ArrayOrTensor", np.ndarray, torch.Tensor)


def translation(dx: float, dy: float) -> torch.Tensor:
    m = torch.eye(3, dtype=torch.float64)
    m[0, 2], m[1, 2] = dx, dy
    return m


def compose_to_original(data: Mapping[Hashable, Any], key: str, step: torch.Tensor) -> torch.Tensor:
    """``to_original`` after a transform whose output->input matrix is ``step``."""
    current = data.get(key)
    current = torch.eye(3, dtype=torch.float64) if current is None else torch.as_tensor(current, dtype=torch.float64)
    return current @ step


def roi_crop_box(
    roi: Sequence[float] | None, margin: float, rows: int, cols: int
) -> tuple[int, int, int, int]:
    """Integer crop box (x0, y0, x1, y1), max exclusive, of ROI + margin; the whole image for None.

    The margin is ``margin * max(ROI width, ROI height)`` on every side; the box is rounded
    outwards to whole pixels and may extend beyond the image.
    """
    if roi is None:
        return 0, 0, int(cols), int(rows)
    x0, y0, x1, y1 = (float(v) for v in roi)
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
        raise ValueError(f"ROI {tuple(roi)} has non-finite values")
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"ROI {tuple(roi)} is empty or inverted (need x_min < x_max and y_min < y_max)")
    pad = float(margin) * max(x1 - x0, y1 - y0)
    bx0, by0 = math.floor(x0 - pad), math.floor(y0 - pad)
    bx1, by1 = math.ceil(x1 + pad), math.ceil(y1 + pad)
    return bx0, by0, max(bx1, bx0 + 1), max(by1, by0 + 1)


def crop_with_fill(image: torch.Tensor, box: tuple[int, int, int, int], fill: float) -> torch.Tensor:
    """(C, y1-y0, x1-x0) copy of ``image`` (C, H, W) inside ``box``; outside the image = ``fill``."""
    x0, y0, x1, y1 = box
    _, rows, cols = image.shape
    if (x0, y0, x1, y1) == (0, 0, cols, rows):
        return image.clone()
    out = torch.full((image.shape[0], y1 - y0, x1 - x0), float(fill), dtype=image.dtype)
    ix0, iy0, ix1, iy1 = max(x0, 0), max(y0, 0), min(x1, cols), min(y1, rows)
    if ix1 > ix0 and iy1 > iy0:
        out[:, iy0 - y0: iy1 - y0, ix0 - x0: ix1 - x0] = image[:, iy0:iy1, ix0:ix1]
    return out


def resize_pad(image: torch.Tensor, size: int, fill: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Resize (C, h, w) keeping aspect so the larger side is ``size``; pad symmetric to size x size.

    Bilinear with antialiasing (a whole radiograph may shrink 20x). Returns the (C, S, S) image
    and the float64 (3, 3) matrix from output to input continuous coordinates. The exact scale
    per axis is (input / output) pixels after rounding the resized side to whole pixels.
    """
    _, h, w = image.shape
    scale = size / max(h, w)
    out_h, out_w = max(1, round(h * scale)), max(1, round(w * scale))
    x = image.float()
    if (out_h, out_w) != (h, w):
        x = F.interpolate(x[None], size=(out_h, out_w), mode="bilinear", align_corners=False, antialias=True)[0]
    pad_y, pad_x = (size - out_h) // 2, (size - out_w) // 2
    out = torch.full((image.shape[0], size, size), float(fill), dtype=torch.float32)
    out[:, pad_y: pad_y + out_h, pad_x: pad_x + out_w] = x
    sx, sy = w / out_w, h / out_h
    step = torch.tensor([[sx, 0.0, -pad_x * sx], [0.0, sy, -pad_y * sy], [0.0, 0.0, 1.0]], dtype=torch.float64)
    return out, step


def affine_resample(image: torch.Tensor, out_to_in: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
    """Resample (C, H, W) so output continuous (x, y) takes the input's value at ``out_to_in @ (x, y, 1)``.

    Bilinear; samples outside the input are ``fill``. Output has the input's size.
    """
    c, h, w = image.shape
    # continuous pixel coords -> grid_sample's normalised coords (align_corners=False)
    norm = torch.tensor([[2.0 / w, 0.0, -1.0], [0.0, 2.0 / h, -1.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    theta = (norm @ out_to_in.to(torch.float64) @ torch.linalg.inv(norm))[:2].to(torch.float32)
    grid = F.affine_grid(theta[None], [1, c, h, w], align_corners=False)
    x = image.float()[None] - fill  # zero padding of (x - fill) == padding x with fill
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]
    return out + fill


def map_points_to_original(points: ArrayOrTensor, to_original: torch.Tensor | np.ndarray) -> ArrayOrTensor:
    """Map (..., N, 2) tensor-coordinate points (x, y) to original-image coordinates.

    ``to_original``: (3, 3) or batched (..., 3, 3). Returns the same type as ``points``
    (numpy in, numpy out), float64.
    """
    is_numpy = isinstance(points, np.ndarray)
    pts = torch.as_tensor(np.asarray(points) if is_numpy else points, dtype=torch.float64)
    mat = torch.as_tensor(to_original, dtype=torch.float64)
    homog = torch.cat([pts, torch.ones_like(pts[..., :1])], dim=-1)
    mapped = (homog @ mat.transpose(-1, -2))[..., :2]
    return mapped.numpy() if is_numpy else mapped


def map_boxes_to_original(boxes: ArrayOrTensor, to_original: torch.Tensor | np.ndarray) -> ArrayOrTensor:
    """Map (..., N, 4) boxes (x_min, y_min, x_max, y_max) in tensor coordinates to the original image.

    The four corners are mapped and their bounding box returned (exact for the crop/resize/pad
    geometry, which has no rotation; the enclosing box after a rotated augmentation).
    Same type as ``boxes``, float64.
    """
    is_numpy = isinstance(boxes, np.ndarray)
    b = torch.as_tensor(np.asarray(boxes) if is_numpy else boxes, dtype=torch.float64)
    corners = torch.stack(
        [b[..., [0, 1]], b[..., [2, 1]], b[..., [0, 3]], b[..., [2, 3]]], dim=-2
    )  # (..., N, 4 corners, 2)
    shape = corners.shape
    mapped = map_points_to_original(corners.reshape(*shape[:-3], -1, 2), to_original).reshape(shape)
    out = torch.cat([mapped.amin(dim=-2), mapped.amax(dim=-2)], dim=-1)
    return out.numpy() if is_numpy else out


def roi_in_input(roi: Sequence[float] | np.ndarray | torch.Tensor | None, to_original: torch.Tensor | np.ndarray,
                 size: int) -> torch.Tensor:
    """The ROI (x_min, y_min, x_max, y_max) in original pixels -> its box in the (size x size) network
    input: the inverse of ``to_original`` applied to its corners, their bounding box, clipped to the
    input. ``roi=None`` (a whole-image sample) gives the whole input. (4,) float32."""
    if roi is None:
        return torch.tensor([0.0, 0.0, float(size), float(size)])
    to_input = torch.linalg.inv(torch.as_tensor(to_original, dtype=torch.float64))
    box = map_boxes_to_original(torch.as_tensor(roi, dtype=torch.float64).reshape(1, 4), to_input)[0]
    return box.clamp(0.0, float(size)).to(torch.float32)


def affine_matrix(size_xy: tuple[int, int], angle_deg: float, zoom: float, shift_xy: tuple[float, float]) -> torch.Tensor:
    """Output->input (3, 3) matrix of a rotation by ``angle_deg`` and zoom about the image centre, then a shift.

    Forward (input -> output): ``out = c + shift + zoom * R(angle) (in - c)`` with c the centre;
    the returned matrix is its inverse, the form resampling and ``to_original`` need.
    """
    w, h = size_xy
    cx, cy = w / 2.0, h / 2.0
    a = math.radians(angle_deg)
    cos, sin = math.cos(a), math.sin(a)
    forward = translation(cx + shift_xy[0], cy + shift_xy[1]) @ torch.tensor(
        [[zoom * cos, -zoom * sin, 0.0], [zoom * sin, zoom * cos, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64
    ) @ translation(-cx, -cy)
    return torch.linalg.inv(forward)
