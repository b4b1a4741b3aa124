"""Acquisition augmentation: what changes when the radiographs come from another site.

Heel effect and scatter (a smooth multiplicative bias field), detector pitch and resampling,
quantum noise, the console's processing (gamma, window and level, unsharp-mask edge
enhancement) and collimation (a band at a border blanked with the fill value).  Every one of
them is intensity-only: no pixel moves, so ``to_original`` (and every box mapped through it)
stays exact.  The ROI margin and jitter are ROI-level: :class:`RandRoiJitterd` changes the ROI
*before* :class:`~spine_dfl.data.transforms.crop.RoiCropd`, which then computes ``to_original``
for the box it actually cropped; :class:`RandRoiReframed` does the same to the cached crop (zoom
and shift composed into ``to_original``), the one training uses.

Each part runs in one place only, with the options of :class:`AcquisitionAugment` (torch-free in
``acquisition_options`` so configs can hold it):

- :class:`TorchioAcquisitiond`, per sample after the cached crop (``compose.augment_transforms``):
  TorchIO's ``RandomBiasField``, ``RandomAnisotropy``, ``RandomNoise`` and ``RandomGamma``, the
  parts TorchIO has (the anisotropy's resampling in torch, :func:`resample_axis`).  It draws its
  seed from the dataset's per-sample generator like the other random transforms, so the config
  seed reproduces it.
- :class:`RandomBatchAcquisition`, in the training loop on whole batches ``(B, 1, H, W)`` on their
  device: window and level, unsharp-mask edge enhancement and collimation, which TorchIO does
  not have.  Parameters are sampled per sample from a ``torch.Generator``
  (:meth:`RandomBatchAcquisition.sample`), then the deterministic :func:`apply_processing` does
  the work, TorchIO's pattern: one seed reproduces the batch bit for bit.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.transforms import MapTransform, Randomizable

from spine_dfl.data.threads import single_thread
from spine_dfl.data.transforms.acquisition_options import AcquisitionAugment
from spine_dfl.data.transforms.augment import AffineResampled
from spine_dfl.data.transforms.crop import draw_roi_reframe, grown_roi

__all__ = [
    "AcquisitionAugment", "ProcessingParams", "RandomBatchAcquisition", "RandRoiJitterd", "RandRoiReframed",
    "TorchioAcquisition", "TorchioAcquisitiond",
    "apply_processing", "bias_field", "collimate", "gaussian_blur", "resample_axis", "unsharp_mask", "window_level",
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

    Batch-wise because these are plain tensor maps that cost ~1 ms for a whole 32 x 96 px batch,
    where TorchIO (which has none of them) would work one sample at a time.  ``sample`` draws every
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

    TorchIO's own ``RandomAnisotropy`` does the same through two SimpleITK images: 2.1 ms against
    0.2 ms per 96 px sample, parameter draw included (``benchmarks/acquisition_speed.py``), the
    difference between training below and above 0.8 of model-only speed.
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


@functools.lru_cache(maxsize=8)
def _bias_field_terms(shape: tuple[int, ...], order: int) -> tuple[tuple[np.ndarray, ...] | None, ...]:
    """The powers of TorchIO's normalised meshes for each polynomial term of ``order``, in TorchIO's
    order of the coefficients; ``None`` for a term that is zero everywhere (a ``z`` power of a
    one-slice volume, whose mesh is 0)."""
    half_shape = np.array(shape) / 2
    meshes = np.asarray(np.meshgrid(*[np.arange(-n, n) + 0.5 for n in half_shape]))
    for mesh in meshes:
        mesh_max = mesh.max()
        if mesh_max > 0:
            mesh /= mesh_max
    x_mesh, y_mesh, z_mesh = meshes
    terms = []
    for x_order in range(order + 1):
        for y_order in range(order + 1 - x_order):
            for z_order in range(order + 1 - (x_order + y_order)):
                z_power = z_mesh**z_order
                terms.append(None if not z_power.any() else (x_mesh**x_order, y_mesh**y_order, z_power))
    return tuple(terms)


def bias_field(shape: tuple[int, ...], order: int, coefficients: Sequence[float]) -> np.ndarray:
    """TorchIO's ``BiasField.generate_bias_field`` for a ``(W, H, D)`` volume, bit for bit, with its
    meshes and their powers computed once per shape: ``exp(sum_k c_k P_k)`` as float32.

    TorchIO rebuilds the meshes on every call: 0.77 ms of a 96 px sample's 1.3 ms of TorchIO with
    every part firing (0.39 ms here); at prob 1 training ran at 0.78 of model-only speed with
    TorchIO's and 0.83 with this one (``benchmarks/train_loop_speed.py``).
    """
    field = np.zeros(shape)
    for coefficient, term in zip(coefficients, _bias_field_terms(tuple(int(n) for n in shape), int(order))):
        if term is not None:  # TorchIO adds c * 0 there: +-0 leaves every sum as it is
            x_power, y_power, z_power = term
            field += np.transpose(coefficient * x_power * y_power * z_power, (1, 0, 2))
    return np.exp(field).astype(np.float32)


class TorchioAcquisition:
    """TorchIO's bias field, anisotropy, noise and gamma on one ``(C, W, H, 1)`` tensor, in the order
    of image formation: beam (bias field: heel effect, scatter), detector (pitch: one random in-plane
    axis, as TorchIO does; noise), the console's response curve (gamma).  Each part fires with
    probability ``prob``.  Draws from torch's global CPU generator, as TorchIO does.

    TorchIO's random transforms sample every parameter (``get_params``) and TorchIO's own
    operations apply them: ``get_noise`` and the gamma ``power``; the bias field's coefficients
    come from ``RandomBiasField.get_params`` and :func:`bias_field` (TorchIO's field bit for bit,
    its meshes kept) applies them; the anisotropy's axis and factor come from
    ``RandomAnisotropy.get_params`` and :func:`resample_axis` applies them.  Calling the point
    operations directly rather than through ``tio.Compose`` skips TorchIO's per-call machinery
    (subject parsing, history, a deep copy per transform, and a ``torch.manual_seed`` per noise
    draw that formats a stack trace for lazy CUDA seeding): 0.87 against 8.3 ms per 96 px sample
    at prob 1 (``benchmarks/acquisition_speed.py --prob 1``), which keeps training above 0.8 of
    model-only speed (``benchmarks/train_loop_speed.py``).
    """

    def __init__(self, options: AcquisitionAugment) -> None:
        import torchio as tio

        o = self.options = options
        self.bias = tio.RandomBiasField(coefficients=o.bias_coefficient, order=o.bias_order) if o.bias_field else None
        self.anisotropy = (tio.RandomAnisotropy(axes=(0, 1), downsampling=o.pitch_factor)
                           if o.pitch and o.pitch_factor[1] > 1.0 else None)
        self.noise = tio.RandomNoise(std=o.noise_std) if o.noise else None
        self.gamma = tio.RandomGamma(log_gamma=o.log_gamma) if o.gamma else None

    def _fires(self) -> bool:
        return float(torch.rand(1)) < self.options.prob  # TorchIO's own test of ``p``

    def __call__(self, volume: torch.Tensor) -> torch.Tensor:
        from torchio.transforms.augmentation.intensity.random_gamma import power
        from torchio.transforms.augmentation.intensity.random_noise import get_noise

        out = volume
        if self.bias is not None and self._fires():
            coefficients = self.bias.get_params(self.bias.order, self.bias.coefficients_range)
            out = out * torch.as_tensor(bias_field(tuple(out.shape[1:]), self.bias.order, coefficients))
        if self.anisotropy is not None and self._fires():
            axis, factor = self.anisotropy.get_params(self.anisotropy.axes, self.anisotropy.downsampling_range)
            out = resample_axis(out, 1 + int(axis), float(factor))  # TorchIO's axis 0 is dim 1 of (C, W, H, 1)
        if self.noise is not None and self._fires():
            mean, std, _ = self.noise.get_params(self.noise.mean_range, self.noise.std_range)
            out = out + get_noise(out, mean, std)
        if self.gamma is not None and self._fires():
            out = power(out, self.gamma.get_params(self.gamma.log_gamma_range))
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
        with torch.random.fork_rng(devices=[]), single_thread():
            # the CPU generator only (TorchIO draws there): torch.manual_seed would also queue a
            # lazy CUDA seeding with a formatted stack trace, ~0.5 ms a sample on a CPU machine
            torch.default_generator.manual_seed(self._seed)
            for key in self.key_iterator(d):
                # TorchIO's (C, W, H, D) layout: a radiograph is (C, W, H, 1)
                volume = torch.as_tensor(d[key], dtype=torch.float32).transpose(-1, -2).unsqueeze(-1)
                out = self.transform(volume)
                d[key] = out[..., 0].transpose(-1, -2).clamp(0.0, 1.0).to(torch.float32).contiguous()
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
        self._params: tuple[bool, float, float, float, bool] = (False, 0.0, 0.0, 0.0, False)

    def randomize(self, data: Any = None) -> None:
        self._params = draw_roi_reframe(self.R, self.options)

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


def _reframed_roi(roi: Any, margin: float, before: Any, after: Any, size: float) -> tuple[float, ...]:
    """``roi`` grown by ``margin`` x its larger side on every side and moved as the crop's centre
    moved from ``before`` to ``after`` (input -> original matrices of a ``size`` px input)."""
    x0, y0, x1, y1 = grown_roi(roi, margin, (0.0, 0.0))
    centre = torch.tensor([size / 2.0, size / 2.0, 1.0], dtype=torch.float64)
    moved = (torch.as_tensor(after, dtype=torch.float64) @ centre
             - torch.as_tensor(before, dtype=torch.float64) @ centre)
    dx, dy = float(moved[0]), float(moved[1])
    return (x0 + dx, y0 + dy, x1 + dx, y1 + dy)
