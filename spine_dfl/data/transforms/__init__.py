"""MONAI dictionary transforms that turn a manifest row into a ``1 x S x S`` network input, by kind:

- :mod:`.settings`: ``Preprocessing`` and ``AugmentConfig`` (plain dataclasses, no torch);
- :mod:`.geometry`: crop boxes, resize + pad, affine resampling, mapping back to the original;
- :mod:`.load`: ``LoadRadiographd``;
- :mod:`.crop`: ``RoiCrop``/``RoiCropd``, ``ResizePad``/``ResizePadd``;
- :mod:`.augment`: ``AffineResampled``, ``RandRadiographAffined``;
- :mod:`.compose`: the deterministic and random pipelines.

The settings and the acquisition augmentation's options (plain dataclasses) are imported eagerly;
everything else (torch, MONAI) on first use of its name.

Pipeline (``eval_transforms``; training appends ``augment_transforms``)::

    LoadRadiographd        path -> (1, H, W) float32, bone bright; "spacing_mm", minimal "meta"
    Orientd                a sample's "orientation" (stored -> canonical film), composed into to_original
    RoiCropd               ROI + margin box (integer pixels), out-of-image parts = image minimum
    ScaleIntensityRangePercentilesd (MONAI)   crop percentiles (low, high) -> [0, 1], clipped
    ResizePadd             keep aspect, larger side = S, pad symmetric to S x S with 0
    EnsureTyped            plain float32 torch tensor (no MetaTensor: cacheable, collatable)
    --- random part (training only) ---
    RandRadiographAffined  small rotation / isotropic scale / translation, composed into to_original
    RandAdjustContrastd    gamma (MONAI)
    RandGaussianSmoothd    blur (MONAI)
    RandGaussianNoised     noise (MONAI)

Why normalise between the crop and the resize: the percentiles must describe the anatomy,
not the symmetric padding a non-square ROI needs (that padding would otherwise pull the lower
percentile down to the padding value, and the contrast of a sample would depend on the ROI's
aspect ratio). Padding after normalisation uses 0, which is exactly where the image minimum
lands after the clipped percentile window, so "padded with the image minimum" holds for both
the out-of-image parts and the symmetric padding.

Coordinates: continuous pixel coordinates, pixel ``i`` covers ``[i, i + 1)``; ``x`` = column,
``y`` = row. ``to_original`` is a float64 (3, 3) matrix taking homogeneous tensor coordinates
``(x, y, 1)`` to original-image coordinates. Every geometric transform right-multiplies it by
the matrix that maps its output coordinates to its input coordinates, so it stays exact through
crop, resize, pad and random affine.

Random transforms follow TorchIO's style: ``randomize()`` samples parameters, then a
deterministic transform with those parameters does the work. They are MONAI ``Randomizable``,
so ``Compose.set_random_state(seed)`` seeds them and ``CacheDataset``/``PersistentDataset``
cache everything before the first of them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from spine_dfl.data.transforms.acquisition_options import AcquisitionAugment
from spine_dfl.data.transforms.settings import AugmentConfig, Preprocessing
from spine_dfl.lazy import lazy_attributes

if TYPE_CHECKING:  # the lazy names below, for editors and type checkers
    from spine_dfl.data.transforms.acquisition import RandomBatchAcquisition, RandRoiReframed, TorchioAcquisitiond
    from spine_dfl.data.transforms.augment import AffineResampled, RandRadiographAffined
    from spine_dfl.data.transforms.compose import augment_transforms, deterministic_transforms, eval_transforms
    from spine_dfl.data.transforms.crop import ResizePad, ResizePadd, RoiCrop, RoiCropd
    from spine_dfl.data.transforms.geometry import (
        affine_matrix,
        affine_resample,
        crop_with_fill,
        map_boxes_to_original,
        map_points_to_original,
        resize_pad,
        roi_crop_box,
        roi_in_input,
    )
    from spine_dfl.data.transforms.load import META_FIELDS, LoadRadiographd, minimal_meta
    from spine_dfl.data.transforms.orient import Orient, Orientd

# name -> the submodule that defines it (torch / MONAI: imported on first use)
_LAZY = {
    "affine_matrix": "geometry",
    "affine_resample": "geometry",
    "crop_with_fill": "geometry",
    "map_boxes_to_original": "geometry",
    "map_points_to_original": "geometry",
    "resize_pad": "geometry",
    "roi_crop_box": "geometry",
    "roi_in_input": "geometry",
    "META_FIELDS": "load",
    "LoadRadiographd": "load",
    "minimal_meta": "load",
    "ResizePad": "crop",
    "ResizePadd": "crop",
    "RoiCrop": "crop",
    "RoiCropd": "crop",
    "Orient": "orient",
    "Orientd": "orient",
    "AffineResampled": "augment",
    "RandRadiographAffined": "augment",
    "augment_transforms": "compose",
    "deterministic_transforms": "compose",
    "eval_transforms": "compose",
    **dict.fromkeys(("RandomBatchAcquisition", "RandRoiReframed", "TorchioAcquisitiond"), "acquisition"),
}

__all__ = [
    "AcquisitionAugment", "AffineResampled", "AugmentConfig", "LoadRadiographd", "META_FIELDS", "Orient", "Orientd",
    "Preprocessing", "RandRadiographAffined", "RandRoiReframed", "RandomBatchAcquisition", "ResizePad", "ResizePadd",
    "RoiCrop", "RoiCropd", "TorchioAcquisitiond", "affine_matrix", "affine_resample", "augment_transforms",
    "crop_with_fill", "deterministic_transforms", "eval_transforms", "map_boxes_to_original",
    "map_points_to_original", "minimal_meta", "resize_pad", "roi_crop_box", "roi_in_input",
]

__getattr__ = lazy_attributes(__name__, _LAZY)


def __dir__() -> list[str]:
    return sorted(__all__)
