"""Whole radiograph -> fixed-size locator input with an exact map back to original pixels.

``letterbox`` keeps the aspect ratio: the image is resized (bilinear, antialiased) to fit inside
``size_hw``, its intensities are mapped from the (low, high) percentiles to [0, 1] (clipped),
and it is padded symmetrically with 0 (where the image minimum lands). Coordinates follow
``spine_dfl.data.transforms``: continuous pixels, pixel i covers [i, i + 1), x = column; the
returned ``to_original`` is the float64 (3, 3) matrix from input-tensor (x, y, 1) to original
pixels, the form ``map_points_to_original`` takes.
"""

from __future__ import annotations


import numpy as np
import torch
import torch.nn.functional as F
from monai.transforms import ScaleIntensityRangePercentiles

from spine_dfl.locate.network import STRIDE

# Input sizes must be multiples of the trunk's total stride (32) so every pyramid level aligns.
SIZE_MULTIPLE = 32


def check_input_size(size_hw: tuple[int, int]) -> tuple[int, int]:
    h, w = (int(v) for v in size_hw)
    if h <= 0 or w <= 0 or h % SIZE_MULTIPLE or w % SIZE_MULTIPLE:
        raise ValueError(f"locator input size {size_hw} must be positive multiples of {SIZE_MULTIPLE}")
    return h, w


def letterbox(
    pixels: np.ndarray | torch.Tensor, size_hw: tuple[int, int], percentiles: tuple[float, float] = (1.0, 99.0)
) -> tuple[torch.Tensor, torch.Tensor]:
    """(1, H, W) float32 locator input and its float64 (3, 3) ``to_original`` matrix.

    ``pixels``: (rows, cols) or (1, rows, cols) array or tensor of the original radiograph.
    """
    h, w = check_input_size(size_hw)
    image = torch.as_tensor(np.asarray(pixels) if not torch.is_tensor(pixels) else pixels).float()
    if image.ndim == 3 and image.shape[0] == 1:
        image = image[0]
    if image.ndim != 2 or min(image.shape) < 1:
        raise ValueError(f"a radiograph must be (rows, cols) or (1, rows, cols), got {tuple(image.shape)}")
    rows, cols = image.shape
    scale = min(h / rows, w / cols)
    out_h, out_w = min(h, max(1, round(rows * scale))), min(w, max(1, round(cols * scale)))
    resized = F.interpolate(image[None, None], size=(out_h, out_w), mode="bilinear", align_corners=False,
                            antialias=True)[0]
    low, high = percentiles
    resized = ScaleIntensityRangePercentiles(low, high, 0.0, 1.0, clip=True)(resized)
    resized = torch.as_tensor(resized).float()
    pad_y, pad_x = (h - out_h) // 2, (w - out_w) // 2
    out = torch.zeros((1, h, w), dtype=torch.float32)
    out[:, pad_y: pad_y + out_h, pad_x: pad_x + out_w] = resized
    sx, sy = cols / out_w, rows / out_h
    to_original = torch.tensor(
        [[sx, 0.0, -pad_x * sx], [0.0, sy, -pad_y * sy], [0.0, 0.0, 1.0]], dtype=torch.float64
    )
    return out, to_original


def output_size(size_hw: tuple[int, int]) -> tuple[int, int]:
    """Size (rows, cols) of the locator's output maps for an input of ``size_hw``."""
    h, w = check_input_size(size_hw)
    return h // STRIDE, w // STRIDE
