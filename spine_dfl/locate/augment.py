"""Training augmentation of one letterboxed locator input and its targets, kept exact.

Geometry: one affine ``A`` (input pixels -> augmented input pixels) about the input centre:
rotation, isotropic scale, translation and an optional left-right flip. The image is resampled
with ``grid_sample`` (``align_corners=False``: continuous pixels, pixel i covers [i, i + 1), the
convention of ``preprocess`` and ``decode``); the six points and the box centres go through the
same ``A``, so the targets sit exactly where the anatomy went. A rotated box has no exact
axis-aligned box; its centre moves exactly and its width and height scale by the scale factor
(for the few degrees used the rotated body still fits that box to within a pixel or two).
Intensity: gamma, contrast, brightness, Gaussian noise on the [0, 1] input, clipped to [0, 1].
Then, when switched on, the acquisition augmentation of the grader (:class:`LocatorAcquisition`):
intensity only, so the targets need no change.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from spine_dfl.data.transforms.acquisition_options import AcquisitionAugment
from spine_dfl.config.locator import LocatorAugment


def random_affine(size_hw: tuple[int, int], settings: LocatorAugment, rng: np.random.Generator) -> np.ndarray:
    """A random (3, 3) input -> augmented input affine about the centre of a ``size_hw`` input."""
    h, w = size_hw
    angle = math.radians(rng.uniform(-settings.rotate_deg, settings.rotate_deg))
    scale = rng.uniform(1.0 - settings.scale, 1.0 + settings.scale)
    shift = rng.uniform(-settings.translate, settings.translate, size=2) * np.array([w, h])
    flip = -1.0 if rng.random() < settings.flip else 1.0
    c, s = math.cos(angle) * scale, math.sin(angle) * scale
    linear = np.array([[c, -s], [s, c]]) @ np.diag([flip, 1.0])
    centre = np.array([w / 2.0, h / 2.0])
    out = np.eye(3)
    out[:2, :2] = linear
    out[:2, 2] = centre + shift - linear @ centre
    return out


def warp_image(image: torch.Tensor, affine: np.ndarray) -> torch.Tensor:
    """(1, H, W) image resampled so that input point p lands at ``affine @ p`` (zeros outside)."""
    _, h, w = image.shape
    # normalised coordinates of grid_sample (align_corners=False): u = 2 x / W - 1
    to_norm = np.array([[2.0 / w, 0.0, -1.0], [0.0, 2.0 / h, -1.0], [0.0, 0.0, 1.0]])
    theta = to_norm @ np.linalg.inv(affine) @ np.linalg.inv(to_norm)  # output -> source, normalised
    theta_t = torch.as_tensor(theta[:2], dtype=torch.float32)[None]
    grid = F.affine_grid(theta_t, [1, 1, h, w], align_corners=False)
    return F.grid_sample(image[None].float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]


def warp_targets(boxes: np.ndarray, points: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, 4) boxes and (N, 6, 2) points (NaN rows stay NaN) under ``affine`` (see module docstring)."""
    linear, shift = affine[:2, :2], affine[:2, 2]
    scale = math.sqrt(abs(np.linalg.det(linear)))
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2 @ linear.T + shift
    half = (boxes[:, 2:] - boxes[:, :2]) / 2 * scale
    warped_points = points @ linear.T + shift
    return np.concatenate([centres - half, centres + half], axis=1), warped_points


def jitter_intensity(image: torch.Tensor, settings: LocatorAugment, rng: np.random.Generator) -> torch.Tensor:
    """Gamma, contrast about the mean, brightness and Gaussian noise; the result clipped to [0, 1]."""
    gamma = math.exp(rng.uniform(math.log(settings.gamma[0]), math.log(settings.gamma[1])))
    gain = rng.uniform(1.0 - settings.contrast, 1.0 + settings.contrast)
    offset = rng.uniform(-settings.brightness, settings.brightness)
    sigma = rng.uniform(0.0, settings.noise_std)
    out = image.clamp(0.0, 1.0) ** gamma
    mean = out.mean()
    out = (out - mean) * gain + mean + offset
    if sigma > 0:
        noise = torch.from_numpy(rng.standard_normal(size=tuple(out.shape)).astype(np.float32))
        out = out + sigma * noise
    return out.clamp(0.0, 1.0)


def augment_sample(
    image: torch.Tensor, boxes: np.ndarray, points: np.ndarray, settings: LocatorAugment, rng: np.random.Generator
) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """One augmented (image, boxes, points); the input is returned unchanged when augmentation is off."""
    if not settings.enabled:
        return image, boxes, points
    affine = random_affine(tuple(image.shape[-2:]), settings, rng)
    warped_boxes, warped_points = warp_targets(boxes, points, affine)
    return jitter_intensity(warp_image(image, affine), settings, rng), warped_boxes, warped_points


class LocatorAcquisition:
    """The grader's acquisition augmentation on a batch of letterboxed locator inputs ``(B, 1, H, W)``
    in [0, 1]: TorchIO's bias field, anisotropy, noise and gamma per image
    (:class:`~spine_dfl.data.transforms.acquisition.TorchioAcquisitiond`), then window, unsharp mask
    and collimation on the whole batch (:class:`~spine_dfl.data.transforms.acquisition.RandomBatchAcquisition`).
    Every draw comes from ``rng`` (the epoch's augmentation generator), so the run's seed
    reproduces it. Intensity only: boxes and points stay valid. Off (the identity) unless
    ``options.enabled``.
    """

    def __init__(self, options: AcquisitionAugment) -> None:
        from spine_dfl.data.transforms.acquisition import RandomBatchAcquisition, TorchioAcquisitiond

        self.options = options
        self.per_image = TorchioAcquisitiond("image", options)
        self.per_batch = RandomBatchAcquisition(options)

    def __call__(self, images: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        if not self.options.enabled:
            return images
        out = []
        for image in images:
            self.per_image.set_random_state(seed=int(rng.integers(2**31 - 1)))
            out.append(self.per_image({"image": image})["image"])
        generator = torch.Generator().manual_seed(int(rng.integers(2**63 - 1)))
        return self.per_batch(torch.stack(out), generator)
