"""Acquisition augmentation: what changes when the radiographs come from another site.

Heel effect and scatter (a smooth multiplicative bias field), detector pitch and resampling,
quantum noise, the console's processing (gamma, window and level, unsharp-mask edge
enhancement) and collimation (a band at a border blanked with the fill value).  Every one of
them is intensity-only: no pixel moves, so ``to_original`` (and every box mapped through it)
stays exact.  The ROI margin and jitter are ROI-level: :class:`RandRoiJitterd` changes the ROI
*before* :class:`~spine_dfl.data.transforms.crop.RoiCropd`, which then computes ``to_original``
for the box it actually cropped; :class:`RandRoiReframed` does the same to the cached crop (zoom
and shift composed into ``to_original``), the one training uses.

Two paths, the same parameters (:class:`AcquisitionAugment`, torch-free in ``acquisition_options``
so configs can hold it):

- :class:`RandomAcquisition`, for training: whole batches ``(B, 1, H, W)`` in ``[0, 1]`` after
  the cached crop, on the batch's device, in plain torch (TorchIO works one subject at a time
  through NumPy/SimpleITK: too slow per batch).  Parameters are sampled per sample from a
  ``torch.Generator`` (:meth:`RandomAcquisition.sample`), then the deterministic
  :func:`apply_acquisition` does the work, TorchIO's pattern: one seed reproduces the batch
  bit for bit.
- :class:`TorchioAcquisitiond`, per sample with TorchIO itself (``RandomBiasField``,
  ``RandomAnisotropy``, ``RandomGamma``, ``RandomNoise``) for the pipelines that augment one
  sample at a time, and as the reference the batch path is checked against.  TorchIO wants
  4-D ``(C, W, H, D)`` tensors: a radiograph is ``(C, W, H, 1)``.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.transforms import MapTransform, Randomizable

from spine_dfl.data.threads import single_thread
from spine_dfl.data.transforms.acquisition_options import AcquisitionAugment
from spine_dfl.data.transforms.augment import AffineResampled

__all__ = [
    "AcquisitionAugment", "AcquisitionParams", "RandomAcquisition", "RandRoiJitterd", "RandRoiReframed",
    "TorchioAcquisitiond",
    "apply_acquisition", "bias_field", "collimate", "gamma", "gaussian_blur", "resample_pitch", "torchio_acquisition",
    "unsharp_mask", "window_level",
]


# --------------------------------------------------------------------------------------------
# Deterministic batch operations: images (B, 1, H, W), one parameter per sample (B,)
# --------------------------------------------------------------------------------------------
def _per_sample(values: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    return values.to(device=images.device, dtype=images.dtype).view(-1, 1, 1, 1)


def bias_polynomials(height: int, width: int, order: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(K, H, W) monomials x^i y^j, 1 <= i + j <= order, of pixel centres in [-1, 1]."""
    y = (torch.arange(height, device=device, dtype=torch.float32) + 0.5) / height * 2.0 - 1.0
    x = (torch.arange(width, device=device, dtype=torch.float32) + 0.5) / width * 2.0 - 1.0
    yy, xx = torch.meshgrid(y, x, indexing="ij")
    terms = [xx**i * yy**j for i in range(order + 1) for j in range(order + 1 - i) if i + j > 0]
    return torch.stack(terms)


def bias_field(images: torch.Tensor, coefficients: torch.Tensor, order: int) -> torch.Tensor:
    """Multiply by ``exp(sum_k coefficients[b, k] * P_k)``; coefficients (B, K), zeros = identity."""
    basis = bias_polynomials(images.shape[-2], images.shape[-1], order, images.device).to(images.dtype)
    log_field = torch.einsum("bk,khw->bhw", coefficients.to(images.device, images.dtype), basis)
    return images * torch.exp(log_field).unsqueeze(1)


def resample_pitch(images: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """Average onto a grid ``factor`` times coarser and resample back bilinearly (pixel centres
    kept: ``align_corners=False``); factor 1 = identity."""
    height, width = images.shape[-2:]
    out = images.clone()
    for index, factor in enumerate(factors.tolist()):
        size = (max(1, round(height / factor)), max(1, round(width / factor)))
        if size == (height, width):
            continue
        coarse = F.interpolate(images[index : index + 1], size=size, mode="area")
        out[index : index + 1] = F.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)
    return out


def gamma(images: torch.Tensor, gammas: torch.Tensor) -> torch.Tensor:
    """``x ** gamma`` per sample (x clipped at 0 first); gamma 1 = identity."""
    return images.clamp_min(0.0) ** _per_sample(gammas, images)


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
class AcquisitionParams:
    """One batch's sampled parameters (identity where a part did not fire for a sample)."""

    bias_coefficients: torch.Tensor  # (B, K)
    pitch_factors: torch.Tensor  # (B,)
    noise: torch.Tensor  # (B, 1, H, W): the noise itself, already scaled
    gammas: torch.Tensor
    window_low: torch.Tensor
    window_high: torch.Tensor
    unsharp_sigmas: torch.Tensor
    unsharp_gains: torch.Tensor
    collimation_sides: torch.Tensor  # int64, -1 = none
    collimation_widths: torch.Tensor


def apply_acquisition(images: torch.Tensor, params: AcquisitionParams, options: AcquisitionAugment) -> torch.Tensor:
    """The deterministic batch augmentation, in the order of image formation: beam (bias field),
    detector (pitch, noise), processing (unsharp mask, gamma, window), collimation; clipped to [0, 1]."""
    if images.ndim != 4 or images.shape[1] != 1:
        raise ValueError(f"expected a (B, 1, H, W) batch, got shape {tuple(images.shape)}")
    out = images
    if options.bias_field:
        out = bias_field(out, params.bias_coefficients, options.bias_order)
    if options.pitch:
        out = resample_pitch(out, params.pitch_factors)
    if options.noise:
        out = out + params.noise.to(out.device, out.dtype)
    if options.unsharp:
        out = unsharp_mask(out, params.unsharp_sigmas, params.unsharp_gains)
    if options.gamma:
        out = gamma(out, params.gammas)
    if options.window:
        out = window_level(out, params.window_low, params.window_high)
    out = out.clamp(0.0, 1.0)
    if options.collimation:
        out = collimate(out, params.collimation_sides, params.collimation_widths, options.fill)
    return out


class RandomAcquisition:
    """Random acquisition augmentation of whole batches ``(B, 1, H, W)``, on their device.

    ``sample`` draws every parameter from the given ``torch.Generator`` in a fixed order (all
    parts are drawn even when switched off, so switching one part leaves the others' draws
    alone); ``apply_acquisition`` does the work.  Usage::

        augment = RandomAcquisition(options)
        generator = torch.Generator().manual_seed(seed)
        images = augment(images, generator)
    """

    def __init__(self, options: AcquisitionAugment) -> None:
        self.options = options

    def sample(self, batch: int, height: int, width: int, generator: torch.Generator) -> AcquisitionParams:
        o = self.options
        device = generator.device

        def uniform(bounds: tuple[float, float], *shape: int) -> torch.Tensor:
            u = torch.rand(*(shape or (batch,)), generator=generator, device=device, dtype=torch.float64)
            return bounds[0] + (bounds[1] - bounds[0]) * u

        def fires() -> torch.Tensor:
            return torch.rand(batch, generator=generator, device=device, dtype=torch.float64) < o.prob

        terms = (o.bias_order + 1) * (o.bias_order + 2) // 2 - 1
        bias = uniform((-o.bias_coefficient, o.bias_coefficient), batch, terms) * fires().unsqueeze(1)
        pitch = torch.where(fires(), uniform(o.pitch_factor), 1.0)
        noise_std = torch.where(fires(), uniform(o.noise_std), 0.0)
        noise = torch.randn(batch, 1, height, width, generator=generator, device=device) * noise_std.view(-1, 1, 1, 1).float()
        gammas = torch.where(fires(), torch.exp(uniform(o.log_gamma)), 1.0)
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
        return AcquisitionParams(bias, pitch, noise, gammas, low, high, sigmas, gains, sides, widths)

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if not self.options.enabled:
            return images
        with single_thread(images.device.type == "cpu"):
            params = self.sample(images.shape[0], images.shape[-2], images.shape[-1], generator)
            return apply_acquisition(images, params, self.options)


# --------------------------------------------------------------------------------------------
# Per-sample paths (MONAI dictionary transforms)
# --------------------------------------------------------------------------------------------
def torchio_acquisition(options: AcquisitionAugment) -> Any:
    """The TorchIO part as a ``tio.Compose`` over (C, W, H, 1) images: bias field, anisotropy
    (one random in-plane axis, as TorchIO does), gamma, noise."""
    import torchio as tio

    parts = []
    if options.bias_field:
        parts.append(tio.RandomBiasField(coefficients=options.bias_coefficient, order=options.bias_order, p=options.prob))
    if options.pitch and options.pitch_factor[1] > 1.0:
        parts.append(tio.RandomAnisotropy(axes=(0, 1), downsampling=options.pitch_factor, p=options.prob))
    if options.gamma:
        parts.append(tio.RandomGamma(log_gamma=options.log_gamma, p=options.prob))
    if options.noise:
        parts.append(tio.RandomNoise(std=options.noise_std, p=options.prob))
    return tio.Compose(parts)


class TorchioAcquisitiond(Randomizable, MapTransform):
    """Per-sample acquisition augmentation with TorchIO on ``data[keys]`` (C, H, W) in [0, 1].

    TorchIO draws from torch's global generator; this draws one seed from its own MONAI
    random state and runs TorchIO under ``torch.random.fork_rng`` seeded with it, so
    ``Compose.set_random_state`` reproduces it and the global stream is left alone.
    Intensity-only: ``to_original`` and every other key pass unchanged.
    """

    def __init__(self, keys: KeysCollection = "image", options: AcquisitionAugment = AcquisitionAugment()) -> None:
        MapTransform.__init__(self, keys)
        self.options = options
        self.transform = torchio_acquisition(options)
        self._seed = 0

    def randomize(self, data: Any = None) -> None:
        self._seed = int(self.R.randint(0, 2**31 - 1))

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        import torchio as tio

        self.randomize()
        d = dict(data)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self._seed)
            for key in self.key_iterator(d):
                image = torch.as_tensor(d[key], dtype=torch.float32)
                volume = tio.ScalarImage(tensor=image.transpose(-1, -2).unsqueeze(-1))  # (C, W, H, 1)
                out = self.transform(volume).data[..., 0].transpose(-1, -2)
                d[key] = out.clamp(0.0, 1.0).to(torch.float32).contiguous()
        return d


class RandRoiJitterd(Randomizable, MapTransform):
    """ROI margin and jitter, before the crop: ``data[roi_key]`` (x_min, y_min, x_max, y_max) grows
    by a margin per side in ``roi_margin`` and each side moves by +-``roi_shift`` (fractions of
    the ROI's larger side).  The ROI crop that follows computes ``to_original`` for the box it
    crops, so the mapping stays exact.  A missing ROI (whole image) passes unchanged.
    """

    def __init__(self, keys: KeysCollection = "image", options: AcquisitionAugment = AcquisitionAugment(),
                 roi_key: str = "roi") -> None:
        MapTransform.__init__(self, keys, allow_missing_keys=True)
        self.options, self.roi_key = options, roi_key
        self._offsets = (0.0, 0.0, 0.0, 0.0)

    def randomize(self, data: Any = None) -> None:
        o = self.options
        fires = self.R.random_sample() < o.prob
        margin = self.R.uniform(o.roi_margin[0], o.roi_margin[1])
        shifts = self.R.uniform(-o.roi_shift, o.roi_shift, size=4)
        self._offsets = (0.0, 0.0, 0.0, 0.0) if not fires else (
            -margin + shifts[0], -margin + shifts[1], margin + shifts[2], margin + shifts[3])

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        self.randomize()
        d = dict(data)
        roi = d.get(self.roi_key)
        if roi is None:
            return d
        x0, y0, x1, y1 = (float(v) for v in roi)
        side = max(x1 - x0, y1 - y0)
        new = [x0 + self._offsets[0] * side, y0 + self._offsets[1] * side,
               x1 + self._offsets[2] * side, y1 + self._offsets[3] * side]
        # never inverted: keep at least half of the ROI's own extent on each axis
        if new[2] - new[0] < 0.5 * (x1 - x0) or new[3] - new[1] < 0.5 * (y1 - y0):
            return d
        d[self.roi_key] = tuple(new)
        return d


class RandRoiReframed(Randomizable, MapTransform):
    """Another site's ROI convention *after* the cached crop: the crop is zoomed and shifted as if
    the ROI had grown by a margin per side uniform in ``roi_margin`` and its centre had moved by
    +-``roi_shift`` per axis (fractions of the ROI's larger side, as :class:`RandRoiJitterd`).

    The crop was cut with ``crop_margin`` (the preprocessing's ``roi_margin``) on every side, so
    its side is ``L (1 + 2 crop_margin)`` for an ROI of larger side ``L``; a margin ``m`` more
    makes it ``L (1 + 2 crop_margin + 2 m)``: zoom ``(1 + 2 crop_margin) / (1 + 2 crop_margin + 2 m)``.
    Zooming out shows ``fill`` where the looser crop would show more anatomy; the shape of the
    vertebra in its frame (size, offset) is what another site's localiser changes.  Done by
    :class:`~spine_dfl.data.transforms.augment.AffineResampled`, which composes the step into
    ``to_original``, so the mapping to original pixels stays exact.
    """

    def __init__(self, keys: KeysCollection = "image", options: AcquisitionAugment = AcquisitionAugment(),
                 crop_margin: float = 0.0, fill: float | None = None, affine_key: str = "to_original") -> None:
        MapTransform.__init__(self, keys)
        self.options, self.crop_margin, self.affine_key = options, float(crop_margin), affine_key
        self.fill = float(options.fill if fill is None else fill)
        self._params: tuple[bool, float, float, float] = (False, 0.0, 0.0, 0.0)

    def randomize(self, data: Any = None) -> None:
        o = self.options
        fires = bool(self.R.random_sample() < o.prob)
        margin = float(self.R.uniform(o.roi_margin[0], o.roi_margin[1]))
        shift_x, shift_y = (float(v) for v in self.R.uniform(-o.roi_shift, o.roi_shift, size=2))
        self._params = (fires, margin, shift_x, shift_y)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        self.randomize()
        fires, margin, shift_x, shift_y = self._params
        if not fires:
            return dict(data)
        side = 1.0 + 2.0 * self.crop_margin
        wider = max(side + 2.0 * margin, 0.5 * side)  # never zoom in past half the crop
        first = next(iter(self.key_iterator(dict(data))), None)
        size = float(torch.as_tensor(data[first]).shape[-1]) if first is not None else 0.0
        # a centre shift of d L is d S / (new crop side / L) output pixels
        shift = (shift_x * size / wider, shift_y * size / wider)
        return AffineResampled(self.keys, 0.0, side / wider, shift, self.fill, self.affine_key)(data)
