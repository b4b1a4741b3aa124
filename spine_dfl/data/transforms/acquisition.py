"""Acquisition augmentation: what changes when the radiographs come from another site.

Every part is intensity-only (no pixel moves, so ``to_original`` stays exact), except the
ROI-level part, which composes its zoom and shift into ``to_original``.  Options:
:class:`AcquisitionAugment` (torch-free, in ``acquisition_options``, so configs can hold it).

- :class:`TorchioAcquisitiond`, per sample after the cached crop: TorchIO's bias field, noise and
  gamma, and the detector pitch; seeded from the dataset's per-sample generator.
- :class:`RandomBatchAcquisition`, on whole training batches on their device: window and level,
  unsharp mask and collimation, which TorchIO does not have.
- :class:`RandRoiReframed`, another site's ROI convention on the cached crop (the crop cut afresh
  from the radiograph is :class:`~spine_dfl.data.transforms.crop.RandRoiRecropd`).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.transforms import MapTransform, Randomizable

from spine_dfl.data.threads import single_thread
from spine_dfl.data.transforms.acquisition_options import AcquisitionAugment
from spine_dfl.data.transforms.augment import AffineResampled
from spine_dfl.data.transforms.crop import RoiReframeDraw, grown_roi

__all__ = [
    "AcquisitionAugment", "ProcessingParams", "RandomBatchAcquisition", "RandRoiReframed",
    "TorchioAcquisition", "TorchioAcquisitiond",
    "apply_processing", "collimate", "gaussian_blur", "resample_axis", "unsharp_mask", "window_level",
]


# --------------------------------------------------------------------------------------------
# Deterministic batch operations: images (B, 1, H, W), one parameter per sample (B,)
# --------------------------------------------------------------------------------------------
def _per_sample(values: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    return values.to(device=images.device, dtype=images.dtype).view(-1, 1, 1, 1)


def window_level(images: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """Map [low, high] to [0, 1] per sample and clip; (0, 1) = identity on [0, 1] data."""
    low, high = _per_sample(low, images), _per_sample(high, images)
    return ((images - low) / (high - low)).clamp(0.0, 1.0)


def gaussian_blur(images: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur with one sigma (px) per sample, reflect padding, one grouped conv."""
    batch, channels, height, width = images.shape
    radius = max(1, math.ceil(3.0 * float(sigmas.max())))
    radius = min(radius, height - 1, width - 1)
    offsets = torch.arange(-radius, radius + 1, device=images.device, dtype=images.dtype)
    sig = sigmas.to(images.device, images.dtype).clamp_min(1e-3).view(-1, 1)
    kernels = torch.exp(-0.5 * (offsets.view(1, -1) / sig) ** 2)
    kernels = (kernels / kernels.sum(dim=1, keepdim=True)).repeat_interleave(channels, dim=0)
    flat = images.reshape(1, batch * channels, height, width)
    flat = F.pad(flat, (radius, radius, radius, radius), mode="reflect")
    flat = F.conv2d(flat, kernels.view(-1, 1, 1, 2 * radius + 1), groups=batch * channels)
    flat = F.conv2d(flat, kernels.view(-1, 1, 2 * radius + 1, 1), groups=batch * channels)
    return flat.view(batch, channels, height, width)


def unsharp_mask(images: torch.Tensor, sigmas: torch.Tensor, gains: torch.Tensor) -> torch.Tensor:
    """``x + gain * (x - blur(x))`` per sample, as consoles enhance edges; gain 0 = identity."""
    return images + _per_sample(gains, images) * (images - gaussian_blur(images, sigmas))


def collimate(images: torch.Tensor, sides: torch.Tensor, widths: torch.Tensor, fill: float) -> torch.Tensor:
    """Blank a band at one border per sample with ``fill``: side 0 left, 1 right, 2 top, 3 bottom,
    -1 none; width a fraction of that side's length (rounded up to whole pixels)."""
    height, width = images.shape[-2:]
    sides = sides.to(images.device).view(-1, 1, 1, 1)
    widths = widths.to(images.device, torch.float64).view(-1, 1, 1, 1)
    cols = torch.arange(width, device=images.device).view(1, 1, 1, -1)
    rows = torch.arange(height, device=images.device).view(1, 1, -1, 1)
    band_x, band_y = torch.ceil(widths * width), torch.ceil(widths * height)
    mask = ((sides == 0) & (cols < band_x)) | ((sides == 1) & (cols >= width - band_x))
    mask = mask | ((sides == 2) & (rows < band_y)) | ((sides == 3) & (rows >= height - band_y))
    return images.masked_fill(mask, float(fill))


@dataclass(frozen=True)
class ProcessingParams:
    """One batch's sampled parameters of the batch parts (identity where a part did not fire)."""

    window_low: torch.Tensor  # (B,)
    window_high: torch.Tensor
    unsharp_sigmas: torch.Tensor
    unsharp_gains: torch.Tensor
    collimation_sides: torch.Tensor  # int64, -1 = none
    collimation_widths: torch.Tensor


def apply_processing(images: torch.Tensor, params: ProcessingParams, options: AcquisitionAugment) -> torch.Tensor:
    """The deterministic batch part, in the console's order: unsharp mask, window (clipped to
    [0, 1]), then collimation, which blanks what the collimator kept from the detector."""
    if images.ndim != 4 or images.shape[1] != 1:
        raise ValueError(f"expected a (B, 1, H, W) batch, got shape {tuple(images.shape)}")
    out = images
    if options.unsharp:
        out = unsharp_mask(out, params.unsharp_sigmas, params.unsharp_gains)
    if options.window:
        out = window_level(out, params.window_low, params.window_high)
    out = out.clamp(0.0, 1.0)
    if options.collimation:
        out = collimate(out, params.collimation_sides, params.collimation_widths, options.fill)
    return out


class RandomBatchAcquisition:
    """The batch part of the acquisition augmentation (window and level, unsharp mask, collimation)
    on whole batches ``(B, 1, H, W)`` in [0, 1], on their device.

    Batch-wise because these are plain tensor maps, cheap on a whole batch, that TorchIO does not
    have.  ``sample`` draws every
    parameter from the given ``torch.Generator`` in a fixed order (all parts are drawn even when
    switched off, so switching one part leaves the others' draws alone); ``apply_processing`` does
    the work.  Usage::

        augment = RandomBatchAcquisition(options)
        generator = torch.Generator().manual_seed(seed)
        images = augment(images, generator)
    """

    def __init__(self, options: AcquisitionAugment) -> None:
        self.options = options

    def sample(self, batch: int, generator: torch.Generator) -> ProcessingParams:
        o = self.options
        device = generator.device

        def uniform(bounds: tuple[float, float]) -> torch.Tensor:
            u = torch.rand(batch, generator=generator, device=device, dtype=torch.float64)
            return bounds[0] + (bounds[1] - bounds[0]) * u

        def fires() -> torch.Tensor:
            return torch.rand(batch, generator=generator, device=device, dtype=torch.float64) < o.prob

        window_on = fires()
        level = uniform((0.5 - o.window_level_shift, 0.5 + o.window_level_shift))
        half = uniform(o.window_width) / 2.0
        low, high = torch.where(window_on, level - half, 0.0), torch.where(window_on, level + half, 1.0)
        unsharp_on = fires()
        sigmas = uniform(o.unsharp_sigma)
        gains = torch.where(unsharp_on, uniform(o.unsharp_gain), 0.0)
        collimation_on = fires()
        sides = torch.randint(0, 4, (batch,), generator=generator, device=device)
        sides = torch.where(collimation_on, sides, -1)
        widths = uniform(o.collimation_width)
        return ProcessingParams(low, high, sigmas, gains, sides, widths)

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        o = self.options
        if not (o.enabled and (o.window or o.unsharp or o.collimation)):
            return images
        with single_thread(images.device.type == "cpu"):
            return apply_processing(images, self.sample(images.shape[0], generator), o)


# --------------------------------------------------------------------------------------------
# Per-sample parts with TorchIO (MONAI dictionary transform)
# --------------------------------------------------------------------------------------------
def resample_axis(volume: torch.Tensor, axis: int, factor: float) -> torch.Tensor:
    """TorchIO's anisotropy operation in torch: sample ``volume`` along ``axis`` (nearest) onto a
    grid ``factor`` times coarser, ``floor(n / factor)`` points centred on the image as TorchIO's
    ``Resample`` places them, then back onto the original grid by linear interpolation (the edges
    hold the outermost coarse sample).  Pixel centres stay where they are: a linear ramp comes back
    within half a pixel's step, with no shift on average.  ``factor`` 1 = identity.

    Ours because TorchIO's ``RandomAnisotropy`` goes through two SimpleITK images, ~35x slower on
    every training sample; tests compare the two on random volumes.
    """
    size = volume.shape[axis]
    coarse_size = max(1, math.floor(size / factor))
    if coarse_size >= size:
        return volume
    centre = (size - 1) / 2.0
    coarse_at = centre + (torch.arange(coarse_size, dtype=torch.float64) - (coarse_size - 1) / 2.0) * factor
    picks = torch.floor(coarse_at + 0.5).clamp(0, size - 1).long()  # ties up, as SimpleITK's nearest
    samples = volume.index_select(axis, picks.to(volume.device))
    if coarse_size == 1:
        return samples.expand_as(volume).clone()
    # each original pixel's position on the coarse grid, held at the outermost samples
    position = ((torch.arange(size, dtype=torch.float64) - centre) / factor + (coarse_size - 1) / 2.0)
    position = position.clamp(0.0, coarse_size - 1)
    below = position.floor().long().clamp(max=coarse_size - 2)
    shape = [1] * volume.ndim
    shape[axis] = size
    weight = (position - below).to(volume.device, volume.dtype).view(shape)
    lower = samples.index_select(axis, below.to(volume.device))
    upper = samples.index_select(axis, (below + 1).to(volume.device))
    return lower + weight * (upper - lower)


class TorchioAcquisition:
    """TorchIO's random bias field, noise and gamma, and the detector pitch, on one ``(C, W, H, 1)``
    tensor in the order of image formation (beam, detector, console); each part fires with
    probability ``prob``, drawing from torch's global CPU generator as TorchIO does.

    The pitch draws its axis and factor from TorchIO's ``RandomAnisotropy`` and applies them with
    :func:`resample_axis`: TorchIO resamples through SimpleITK, ~35x slower per 96 px sample.
    """

    def __init__(self, options: AcquisitionAugment) -> None:
        import torchio as tio

        o = self.options = options
        common = {"p": o.prob, "copy": False}  # the input tensor is never changed in place
        self.bias = (tio.RandomBiasField(coefficients=o.bias_coefficient, order=o.bias_order, **common)
                     if o.bias_field else None)
        self.anisotropy = (tio.RandomAnisotropy(axes=(0, 1), downsampling=o.pitch_factor)
                           if o.pitch and o.pitch_factor[1] > 1.0 else None)
        self.noise = tio.RandomNoise(std=o.noise_std, **common) if o.noise else None
        self.gamma = tio.RandomGamma(log_gamma=o.log_gamma, **common) if o.gamma else None

    def __call__(self, volume: torch.Tensor) -> torch.Tensor:
        out = volume if self.bias is None else self.bias(volume)
        if self.anisotropy is not None and float(torch.rand(1)) <= self.options.prob:  # TorchIO's test of ``p``
            axis, factor = self.anisotropy.get_params(self.anisotropy.axes, self.anisotropy.downsampling_range)
            out = resample_axis(out, 1 + int(axis), float(factor))  # TorchIO's axis 0 is dim 1 of (C, W, H, 1)
        for transform in (self.noise, self.gamma):
            if transform is not None:
                out = transform(out)
        return out


class TorchioAcquisitiond(Randomizable, MapTransform):
    """Per-sample acquisition augmentation with TorchIO (:class:`TorchioAcquisition`) on ``data[keys]``
    (C, H, W) in [0, 1]; run by the training dataset after the cached crop.

    TorchIO draws from torch's global generator; this draws one seed from its own MONAI
    random state (in training: the dataset's generator, reseeded per (seed, epoch, index)) and
    runs TorchIO under ``torch.random.fork_rng`` seeded with it, so the seed reproduces it and the
    global stream is left alone.  Intensity-only: ``to_original`` and every other key pass
    unchanged.  The output is clipped to [0, 1], float32.
    """

    def __init__(self, keys: KeysCollection = "image", options: AcquisitionAugment = AcquisitionAugment()) -> None:
        MapTransform.__init__(self, keys)
        self.options = options
        self.transform = TorchioAcquisition(options)
        self._seed = 0

    def randomize(self, data: Any = None) -> None:
        self._seed = int(self.R.randint(0, 2**31 - 1))

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        self.randomize()
        d = dict(data)
        # TorchIO's noise seeds every device through torch.manual_seed: fork CUDA's state too once
        # CUDA runs (never initialising it here: this runs in data-loader workers)
        devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
        with torch.random.fork_rng(devices=devices), single_thread():
            torch.default_generator.manual_seed(self._seed)
            for key in self.key_iterator(d):
                # TorchIO's (C, W, H, D) layout: a radiograph is (C, W, H, 1)
                volume = torch.as_tensor(d[key], dtype=torch.float32).transpose(-1, -2).unsqueeze(-1)
                out = self.transform(volume)
                d[key] = out[..., 0].transpose(-1, -2).clamp(0.0, 1.0).to(torch.float32).contiguous()
        return d


class RandRoiReframed(RoiReframeDraw, MapTransform):
    """Another site's ROI convention *after* the cached crop: the crop is zoomed and shifted as if
    the ROI had grown by a margin per side uniform in ``roi_margin`` and its centre had moved by
    +-``roi_shift`` per axis (fractions of the ROI's larger side).

    The crop was cut with ``crop_margin`` (the preprocessing's ``roi_margin``) on every side, so
    its side is ``L (1 + 2 crop_margin)`` for an ROI of larger side ``L``; a margin ``m`` more
    makes it ``L (1 + 2 crop_margin + 2 m)``: zoom ``(1 + 2 crop_margin) / (1 + 2 crop_margin + 2 m)``.
    Zooming out shows ``fill`` where the looser crop would show more anatomy; the shape of the
    vertebra in its frame (size, offset) is what another site's localiser changes.  Done by
    :class:`~spine_dfl.data.transforms.augment.AffineResampled`, which composes the step into
    ``to_original``, so the mapping to original pixels stays exact.

    With ``roi_follows_reframe`` (in a fraction ``roi_follows_prob`` of the reframed samples),
    ``data[roi_key]`` (x_min, y_min, x_max, y_max, original pixels)
    becomes that other site's ROI too: grown by the margin on every side and moved with the crop's
    centre, so a model whose P-stream searches only the ROI (``pstream_region: roi``) learns from
    the box another site would hand it, neighbouring endplates included, not from the true box
    inside a zoomed-out crop.  A missing ROI stays missing.
    """

    def __init__(self, keys: KeysCollection = "image", options: AcquisitionAugment = AcquisitionAugment(),
                 crop_margin: float = 0.0, fill: float | None = None, affine_key: str = "to_original",
                 roi_key: str = "roi") -> None:
        MapTransform.__init__(self, keys)
        self.options, self.crop_margin, self.affine_key = options, float(crop_margin), affine_key
        self.roi_key = roi_key
        self.fill = float(options.fill if fill is None else fill)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        self.randomize()
        fires, margin, shift_x, shift_y, follows = self._params
        if not fires:
            return dict(data)
        side = 1.0 + 2.0 * self.crop_margin
        wider = max(side + 2.0 * margin, 0.5 * side)  # never zoom in past half the crop
        first = next(iter(self.key_iterator(dict(data))), None)
        size = float(torch.as_tensor(data[first]).shape[-1]) if first is not None else 0.0
        # a centre shift of d L is d S / (new crop side / L) output pixels
        shift = (shift_x * size / wider, shift_y * size / wider)
        out = AffineResampled(self.keys, 0.0, side / wider, shift, self.fill, self.affine_key)(data)
        if follows and first is not None:
            roi, before = out.get(self.roi_key), data.get(self.affine_key)
            if roi is not None and before is not None:
                out[self.roi_key] = _reframed_roi(roi, (wider - side) / 2.0, before, out[self.affine_key], size)
        return out


def _reframed_roi(roi: Sequence[float], margin: float, before: torch.Tensor, after: torch.Tensor, size: float) -> tuple[float, ...]:
    """``roi`` grown by ``margin`` x its larger side on every side and moved as the crop's centre
    moved from ``before`` to ``after`` (input -> original matrices of a ``size`` px input)."""
    x0, y0, x1, y1 = grown_roi(roi, margin, (0.0, 0.0))
    centre = torch.tensor([size / 2.0, size / 2.0, 1.0], dtype=torch.float64)
    moved = (torch.as_tensor(after, dtype=torch.float64) @ centre
             - torch.as_tensor(before, dtype=torch.float64) @ centre)
    dx, dy = float(moved[0]), float(moved[1])
    return (x0 + dx, y0 + dy, x1 + dx, y1 + dy)
