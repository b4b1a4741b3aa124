"""The pipelines: the cacheable deterministic part and the random augmentation (see the package docstring)."""

from __future__ import annotations

import torch
from monai.transforms import (
    Compose,
    EnsureTyped,
    RandAdjustContrastd,
    RandGaussianNoised,
    RandGaussianSmoothd,
    ScaleIntensityRangePercentilesd,
    Transform,
)

from spine_dfl.data.transforms.acquisition import RandRoiReframed, TorchioAcquisitiond
from spine_dfl.data.transforms.acquisition_options import AcquisitionAugment
from spine_dfl.data.transforms.augment import RandRadiographAffined
from spine_dfl.data.transforms.crop import RandRoiRecropd, ResizePadd, RoiCropd, percentile_window_args, window_margin
from spine_dfl.data.transforms.load import LoadRadiographd
from spine_dfl.data.transforms.orient import Orientd
from spine_dfl.data.transforms.settings import AugmentConfig, Preprocessing


def deterministic_transforms(pre: Preprocessing, keys: str = "image", lru_size: int = 2) -> list[Transform]:
    """The cacheable part: load, turn to canonical (a sample's ``orientation``, when given), ROI crop,
    percentile normalisation, resize + pad, plain tensor."""
    return [
        LoadRadiographd(keys, lru_size=lru_size),
        Orientd(keys),
        RoiCropd(keys, margin=pre.roi_margin, use_roi=pre.use_roi),
        ScaleIntensityRangePercentilesd(keys, **percentile_window_args(pre)),
        ResizePadd(keys, size=pre.input_size, fill=0.0),
        EnsureTyped(keys, data_type="tensor", dtype=torch.float32, track_meta=False),
    ]


def recrops_from_window(pre: Preprocessing, acquisition: AcquisitionAugment | None) -> bool:
    """Whether training caches windows of the radiograph and cuts each crop from them
    (``acquisition.reframe_from_radiograph`` with the ROI-level part on and ROI crops)."""
    return bool(pre.use_roi and acquisition is not None and acquisition.enabled and acquisition.roi_jitter
                and acquisition.reframe_from_radiograph)


def window_transforms(pre: Preprocessing, acquisition: AcquisitionAugment, keys: str = "image",
                      lru_size: int = 2) -> list[Transform]:
    """The cacheable part when crops are cut from windows (:func:`recrops_from_window`): load and the
    window of :func:`~spine_dfl.data.transforms.crop.window_margin` around the ROI, in original
    pixels and intensities; ``crop.RoiRecropd`` / ``crop.RandRoiRecropd`` finish the sample."""
    return [
        LoadRadiographd(keys, lru_size=lru_size),
        Orientd(keys),
        RoiCropd(keys, margin=window_margin(pre.roi_margin, acquisition), use_roi=pre.use_roi),
        EnsureTyped(keys, data_type="tensor", dtype=torch.float32, track_meta=False),
    ]


def augment_transforms(aug: AugmentConfig, keys: str = "image", acquisition: AcquisitionAugment | None = None,
                       crop_margin: float = 0.0, pre: Preprocessing | None = None) -> list[Transform]:
    """The random part (applied after :func:`deterministic_transforms`; intensities in [0, 1]).

    With ``acquisition`` enabled, the cached crop (cut with ``crop_margin``) is first reframed as
    another site's ROI convention would (:class:`RandRoiReframed`, when ``roi_jitter`` is on; with
    ``reframe_from_radiograph`` and ``pre``, :class:`~spine_dfl.data.transforms.crop.RandRoiRecropd`
    cuts it from the cached window instead, see :func:`window_transforms`) and,
    after the small pose change, imaged as another site's beam and detector would by TorchIO
    (:class:`TorchioAcquisitiond`: bias field, anisotropy, noise, gamma).  The rest of the
    acquisition augmentation (window, unsharp mask, collimation) runs on whole batches in the
    training loop (:class:`~spine_dfl.data.transforms.acquisition.RandomBatchAcquisition`).
    Every random transform here draws from the dataset's per-sample generator (``SpineDataset``).
    """
    sigma = (float(aug.blur_sigma[0]), float(aug.blur_sigma[1]))
    reframe: list[Transform] = []
    site: list[Transform] = []
    if pre is not None and recrops_from_window(pre, acquisition):
        # the samples are cached windows: every training crop is cut here (the record's ROI or another site's)
        reframe = [RandRoiRecropd(keys, acquisition, pre)]
    elif acquisition is not None and acquisition.enabled and acquisition.roi_jitter:
        reframe = [RandRoiReframed(keys, acquisition, crop_margin=crop_margin)]
    if acquisition is not None and acquisition.enabled:
        if acquisition.bias_field or acquisition.pitch or acquisition.noise or acquisition.gamma:
            # per sample on the cached crop, not the original radiograph: far fewer pixels
            site = [TorchioAcquisitiond(keys, acquisition)]
    return [
        *reframe,
        RandRadiographAffined(keys, prob=aug.prob, rotate_deg=aug.rotate_deg, scale=aug.scale,
                              translate=aug.translate, fill=0.0),
        *site,
        RandAdjustContrastd(keys, prob=aug.prob, gamma=(float(aug.gamma[0]), float(aug.gamma[1]))),
        RandGaussianSmoothd(keys, sigma_x=sigma, sigma_y=sigma, prob=aug.prob),
        RandGaussianNoised(keys, prob=aug.prob, mean=0.0, std=float(aug.noise_std)),
        EnsureTyped(keys, data_type="tensor", dtype=torch.float32, track_meta=False),
    ]


def eval_transforms(pre: Preprocessing) -> Compose:
    """Deterministic pipeline: {"image": path, "roi": ROI | None, ...} -> sample dict (see module doc)."""
    return Compose(deterministic_transforms(pre))
