"""ROI crop and resize + pad: array transforms and their dict twins (which keep ``to_original`` exact)."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Transform

from spine_dfl.data.transforms.geometry import compose_to_original, crop_with_fill, resize_pad, roi_crop_box, translation


class RoiCrop(Transform):
    """Array transform: (C, H, W) + ROI -> ROI + margin crop (C, h, w) and its output->input matrix.

    Out-of-image parts of the box are filled with the image minimum. ``roi=None`` (or
    ``use_roi=False``) keeps the whole image.
    """

    def __init__(self, margin: float = 0.15, use_roi: bool = True) -> None:
        self.margin, self.use_roi = float(margin), bool(use_roi)

    def __call__(self, image: torch.Tensor, roi: Sequence[float] | None) -> tuple[torch.Tensor, torch.Tensor]:
        image = torch.as_tensor(image)
        if image.ndim != 3:
            raise ValueError(f"expected a (C, H, W) image, got shape {tuple(image.shape)}")
        _, rows, cols = image.shape
        box = roi_crop_box(roi if self.use_roi else None, self.margin, rows, cols)
        crop = crop_with_fill(image, box, fill=float(image.min()))
        return crop, translation(box[0], box[1])


class ResizePad(Transform):
    """Array transform: (C, h, w) -> (C, S, S), aspect kept, symmetric padding with ``fill``."""

    def __init__(self, size: int, fill: float = 0.0) -> None:
        self.size, self.fill = int(size), float(fill)

    def __call__(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return resize_pad(torch.as_tensor(image), self.size, self.fill)


class RoiCropd(MapTransform):
    """Dict twin of :class:`RoiCrop`: crops ``data[key]`` around ``data[roi_key]``; updates ``data[affine_key]``."""

    def __init__(self, keys: KeysCollection = "image", roi_key: str = "roi", margin: float = 0.15,
                 use_roi: bool = True, affine_key: str = "to_original") -> None:
        super().__init__(keys)
        self.roi_key, self.affine_key = roi_key, affine_key
        self.crop = RoiCrop(margin, use_roi)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        roi = d.get(self.roi_key)
        step = None
        for key in self.key_iterator(d):
            d[key], step = self.crop(d[key], roi)
        if step is not None:
            d[self.affine_key] = compose_to_original(d, self.affine_key, step)
        return d


class ResizePadd(MapTransform):
    """Dict twin of :class:`ResizePad`; updates ``data[affine_key]``."""

    def __init__(self, keys: KeysCollection = "image", size: int = 160, fill: float = 0.0,
                 affine_key: str = "to_original") -> None:
        super().__init__(keys)
        self.affine_key = affine_key
        self.resize = ResizePad(size, fill)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        step = None
        for key in self.key_iterator(d):
            d[key], step = self.resize(d[key])
        if step is not None:
            d[self.affine_key] = compose_to_original(d, self.affine_key, step)
        return d
