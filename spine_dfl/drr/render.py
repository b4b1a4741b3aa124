"""Digitally reconstructed radiographs: line integrals of attenuation through a CT, then exposure.

``line_integrals`` samples the volume where each ray crosses each voxel plane of the axis most
parallel to the central ray: the crossing points of one plane are a 2D homography of the detector
pixels, so every plane is one bilinear ``grid_sample`` of a slice (torch, batched over planes, on
the volume's device), and the sum times each ray's step between planes is the integral.
``expose`` turns integrals into a processed radiograph: I = I0 exp(-L), Poisson quantum noise,
the detector's log response and a display window with mild unsharp masking (bone bright).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from spine_dfl.drr.geometry import DrrGeometry, detector_frame, source_position

__all__ = ["MU_WATER_PER_MM", "Exposure", "expose", "hu_to_mu", "line_integrals", "path_lengths"]

MU_WATER_PER_MM = 0.02  # linear attenuation of water near 70 keV
_PLANES_PER_CHUNK = 16


def hu_to_mu(hu: torch.Tensor, mu_water_per_mm: float = MU_WATER_PER_MM) -> torch.Tensor:
    """Hounsfield units -> linear attenuation (1/mm), HU clipped at -1000 (air = 0)."""
    return (hu.float().clamp(min=-1000.0) / 1000.0 + 1.0) * mu_water_per_mm


def _pixel_centres(g: DrrGeometry) -> np.ndarray:
    """World positions (rows * cols, 3) of the pixel centres, row by row (float64)."""
    origin, e_u, e_v = detector_frame(g)
    u = (np.arange(g.cols) + 0.5) * g.pixel_mm
    v = (np.arange(g.rows) + 0.5) * g.pixel_mm
    return (origin + v[:, None, None] * e_v + u[None, :, None] * e_u).reshape(-1, 3)


def line_integrals(mu: torch.Tensor, affine: np.ndarray, g: DrrGeometry) -> torch.Tensor:
    """∫ mu ds along the ray from the source to each pixel centre: (rows, cols) float32.

    ``mu`` (I, J, K) in 1/mm on any device (zero outside the volume); ``affine`` maps voxel
    indices of ``mu`` to world mm.  In voxel coordinates a ray s + t (p - s) crosses plane a = n
    at t = (n - s_a) / (p_a - s_a), so each in-plane coordinate is linear in n per pixel.
    """
    affine = np.asarray(affine, dtype=np.float64)
    to_voxel = np.linalg.inv(affine)
    source_w, pixels_w = source_position(g), _pixel_centres(g)
    source = to_voxel[:3, :3] @ source_w + to_voxel[:3, 3]
    delta = pixels_w @ to_voxel[:3, :3].T + to_voxel[:3, 3] - source  # (P, 3) voxel-space ray vectors
    a = int(np.argmax(np.abs(delta).mean(axis=0)))  # the voxel axis the rays cross most steeply
    b, c = [x for x in range(3) if x != a]
    slope = delta[:, [b, c]] / delta[:, a:a + 1]  # in-plane voxel shift per plane
    offset = source[[b, c]] - source[a] * slope  # in-plane voxel position at plane 0
    scale = np.array([2.0 / max(mu.shape[b] - 1, 1), 2.0 / max(mu.shape[c] - 1, 1)])  # align_corners=True
    slope_t = torch.from_numpy(slope * scale).float().to(mu.device)
    offset_t = torch.from_numpy(offset * scale - 1.0).float().to(mu.device)
    # world length of one plane step along each ray
    step = np.linalg.norm(pixels_w - source_w, axis=1) / np.abs(delta[:, a])
    planes = mu.permute(a, c, b).unsqueeze(1).float()  # (N, 1, size_c, size_b): grid x = along b, y = along c
    occupied = torch.nonzero(planes.flatten(1).amax(dim=1) > 0).flatten()
    total = torch.zeros(g.rows * g.cols, dtype=torch.float32, device=mu.device)
    if len(occupied):
        first, last = int(occupied[0]), int(occupied[-1]) + 1
        for start in range(first, last, _PLANES_PER_CHUNK):
            n = torch.arange(start, min(start + _PLANES_PER_CHUNK, last), device=mu.device, dtype=torch.float32)
            grid = (offset_t + n[:, None, None] * slope_t).reshape(len(n), g.rows, g.cols, 2)
            samples = F.grid_sample(planes[start:start + len(n)], grid, mode="bilinear", padding_mode="zeros",
                                    align_corners=True)
            total += samples.sum(dim=0).flatten()
    return (total.double() * torch.from_numpy(step).to(mu.device)).reshape(g.rows, g.cols).float()


def path_lengths(mask: torch.Tensor, affine: np.ndarray, g: DrrGeometry) -> torch.Tensor:
    """Length (mm) of each pixel's ray inside ``mask`` (I, J, K) bool: the mask's silhouette."""
    return line_integrals(mask.float(), affine, g)


@dataclass(frozen=True)
class Exposure:
    """Detector and processing: unattenuated photons per pixel, electronic noise (photons), the
    display window's percentiles of the log image, and unsharp masking (sigma px, amount)."""

    photons: float = 20000.0
    electronic_noise: float = 2.0
    window_percentiles: tuple[float, float] = (1.0, 99.5)
    unsharp_sigma_px: float = 30.0
    unsharp_amount: float = 2.0


def expose(line_integral: torch.Tensor | np.ndarray, exposure: Exposure, rng: np.random.Generator) -> np.ndarray:
    """Line integrals -> processed radiograph, float32 in [0, 1], bone bright (deterministic per ``rng``)."""
    from scipy.ndimage import gaussian_filter

    L = np.asarray(line_integral.detach().cpu() if isinstance(line_integral, torch.Tensor) else line_integral,
                   dtype=np.float64)
    expected = exposure.photons * np.exp(-L)
    counts = rng.poisson(expected) + rng.normal(0.0, exposure.electronic_noise, size=L.shape)
    attenuation = -np.log(np.maximum(counts, 0.5) / exposure.photons)  # log response: high where dense
    # large-kernel unsharp masking, as detector processing does, brings bone out of the soft-tissue ramp
    sharpened = attenuation + exposure.unsharp_amount * (attenuation - gaussian_filter(attenuation, exposure.unsharp_sigma_px))
    body = L > 0.5 * float(L.max()) if L.max() > 0 else np.ones(L.shape, bool)  # the window is set on the patient
    lo, hi = np.percentile(sharpened[body], exposure.window_percentiles)
    return np.clip((sharpened - lo) / max(hi - lo, 1e-6), 0.0, 1.0).astype(np.float32)
