"""Digitally reconstructed radiographs: line integrals of attenuation through a CT, then exposure.

``line_integrals`` marches along the voxel axis the rays cross most steeply.  Every voxel plane
of that axis is the farthest plane scaled about the source's foot point (a perspective between
parallel planes), so each plane is resampled onto one grid on the farthest plane separably (rows,
then columns: two gathers and a lerp each, torch, on the volume's device), the planes are summed
there, and the sum is sampled bilinearly at each ray's crossing and multiplied by the ray's
length per plane.  The geometry is exact; the price is one extra bilinear resampling.
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
_CHUNK = 16  # voxel planes per contiguous slab


def hu_to_mu(hu: torch.Tensor, mu_water_per_mm: float = MU_WATER_PER_MM) -> torch.Tensor:
    """Hounsfield units -> linear attenuation (1/mm), HU clipped at -1000 (air = 0)."""
    mu = hu.to(torch.float32, copy=True)  # one copy, then in place: a 512^3 CT is 0.5 GB as float
    return mu.clamp_(min=-1000.0).add_(1000.0).mul_(mu_water_per_mm / 1000.0)


def _pixel_centres(g: DrrGeometry) -> np.ndarray:
    """World positions (rows * cols, 3) of the pixel centres, row by row (float64)."""
    origin, e_u, e_v = detector_frame(g)
    u = (np.arange(g.cols) + 0.5) * g.pixel_mm
    v = (np.arange(g.rows) + 0.5) * g.pixel_mm
    return (origin + v[:, None, None] * e_v + u[None, :, None] * e_u).reshape(-1, 3)


@dataclass(frozen=True)
class _Plan:
    """How the rays cross one volume: marching axis ``a`` (in-plane axes ``b``, ``c``), the source
    ``s`` in voxel indices, the planes ``n`` crossed (in front of the source) with their scale
    ``r`` about the source onto the reference plane, each ray's crossing ``q`` (P, 2) of that
    plane and its world step (mm) per plane, and the accumulation grid on it: origin, spacing and
    size along b and c."""

    a: int
    b: int
    c: int
    s: np.ndarray
    n: np.ndarray
    r: np.ndarray
    q: np.ndarray
    step: np.ndarray
    origin: tuple[float, float]
    spacing: tuple[float, float]
    size: tuple[int, int]


def _plan(shape: tuple[int, int, int], strides: tuple[int, int, int], affine: np.ndarray,
          g: DrrGeometry) -> _Plan | None:
    """The marching plan of a volume of ``shape`` (memory ``strides``) under ``affine`` for geometry
    ``g`` (None: no ray meets it).  Of the in-plane axes, ``c`` is the one nearer in memory."""
    to_voxel = np.linalg.inv(affine)
    source_w, pixels_w = source_position(g), _pixel_centres(g)
    s = to_voxel[:3, :3] @ source_w + to_voxel[:3, 3]
    delta = pixels_w @ to_voxel[:3, :3].T + to_voxel[:3, 3] - s  # (P, 3) voxel-space ray vectors
    a = int(np.argmax(np.abs(delta).mean(axis=0)))  # the voxel axis the rays cross most steeply
    b, c = sorted((x for x in range(3) if x != a), key=lambda x: (-strides[x], x))
    direction = np.sign(delta[:, a])
    if not (np.all(direction == direction[0]) and np.abs(delta[:, a]).min() > 1e-9 * np.abs(delta).max()):
        raise ValueError("the detector must lie wholly on one side of the source across the volume's planes")
    direction = float(direction[0])
    n = np.arange(shape[a])
    n = n[(n - s[a]) * direction > 0]  # planes in front of the source
    if len(n) == 0:
        return None
    n0 = float(n[-1] if direction > 0 else n[0])  # the plane farthest from the source
    r = (n - s[a]) / (n0 - s[a])  # in (0, 1]: plane n is plane n0 shrunk by r about the source
    q = s[[b, c]] + (n0 - s[a]) * delta[:, [b, c]] / delta[:, a:a + 1]
    lattice = q.reshape(g.rows, g.cols, 2)
    origin, spacing, size = [], [], []
    for k, axis in enumerate((b, c)):
        # the grid is no coarser than a voxel nor than the rays' spacing on the reference plane
        du = np.abs(np.diff(lattice[..., k], axis=1))[:-1] if g.rows > 1 and g.cols > 1 else np.ones(1)
        dv = np.abs(np.diff(lattice[..., k], axis=0))[:, :-1] if g.rows > 1 and g.cols > 1 else np.ones(1)
        h = float(min(1.0, max(np.min(np.maximum(du, dv)), 1e-3)))
        reach = s[axis] + (np.array([-1.0, shape[axis]]) - s[axis])[None, :] / r[:, None]  # planes' extents on n0
        lo = max(q[:, k].min(), reach.min()) - h
        hi = min(q[:, k].max(), reach.max()) + h
        if hi <= lo:
            return None
        origin.append(lo)
        spacing.append(h)
        size.append(int(np.ceil((hi - lo) / h)) + 1)
    step = np.linalg.norm(pixels_w - source_w, axis=1) / np.abs(delta[:, a])
    return _Plan(a, b, c, s, n, r, q, step, tuple(origin), tuple(spacing), tuple(size))  # type: ignore[arg-type]


def _taps(x: np.ndarray, length: int) -> tuple[slice, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Linear interpolation at increasing positions ``x`` of a line of ``length`` samples (zero
    outside): the slice of ``x`` that touches the line, lower and upper indices and weights."""
    inside = np.flatnonzero((x > -1.0) & (x < length))
    if len(inside) == 0:
        return slice(0, 0), *(np.zeros(0),) * 4  # type: ignore[return-value]
    part = slice(int(inside[0]), int(inside[-1]) + 1)
    x = x[part]
    lower = np.floor(x)
    w = x - lower
    lo_ok, hi_ok = lower >= 0, lower + 1 <= length - 1
    return (part, np.clip(lower, 0, length - 1).astype(np.int64), np.clip(lower + 1, 0, length - 1).astype(np.int64),
            np.where(lo_ok, 1.0 - w, 0.0), np.where(hi_ok, w, 0.0))


def _slab(volume: torch.Tensor, first: int) -> torch.Tensor:
    """Planes ``first`` .. ``first + _CHUNK`` of ``volume`` (a, b, c), contiguous.  Where the planes
    interleave in memory (the marching axis is the fastest, as in a NIfTI array from nibabel) the
    slab is read in memory order first and then turned, which is several times faster."""
    slab = volume[first:first + _CHUNK]
    if slab.is_contiguous():
        return slab
    if volume.stride(0) == 1:
        return slab.permute(1, 2, 0).contiguous().permute(2, 0, 1).contiguous()
    return slab.contiguous()


def _accumulate(volume: torch.Tensor, plan: _Plan, occupied: np.ndarray) -> torch.Tensor:
    """Sum over the planes of each plane resampled onto the reference plane's grid (size_b, size_c):
    separable, as plane n is the grid scaled by r about the source (rows, then columns)."""
    device = volume.device
    (ob, oc), (hb, hc), (mb, mc) = plan.origin, plan.spacing, plan.size
    grid_b, grid_c = ob + hb * np.arange(mb) - plan.s[plan.b], oc + hc * np.arange(mc) - plan.s[plan.c]
    acc = torch.zeros(mb, mc, dtype=torch.float32, device=device)

    def as_t(x: np.ndarray, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(x)).to(device=device, dtype=dtype)

    chunk, first = None, -_CHUNK
    for n, r in zip(plan.n, plan.r):
        if not occupied[n]:
            continue
        if not first <= n < first + _CHUNK:
            first = int(n)
            chunk = _slab(volume, first)
        rows_part, b_lo, b_hi, b_wlo, b_whi = _taps(plan.s[plan.b] + grid_b * r, volume.shape[1])
        cols_part, c_lo, c_hi, c_wlo, c_whi = _taps(plan.s[plan.c] + grid_c * r, volume.shape[2])
        if not len(b_lo) or not len(c_lo):
            continue
        plane = chunk[int(n) - first]
        rows = plane.index_select(0, as_t(b_lo, torch.long)) * as_t(b_wlo)[:, None]
        rows.addcmul_(plane.index_select(0, as_t(b_hi, torch.long)), as_t(b_whi)[:, None])
        both = rows.index_select(1, as_t(c_lo, torch.long)) * as_t(c_wlo)[None, :]
        both.addcmul_(rows.index_select(1, as_t(c_hi, torch.long)), as_t(c_whi)[None, :])
        acc[rows_part, cols_part] += both
    return acc


def line_integrals(mu: torch.Tensor, affine: np.ndarray, g: DrrGeometry) -> torch.Tensor:
    """∫ mu ds along the ray from the source to each pixel centre: (rows, cols) float32.

    ``mu`` (I, J, K) in 1/mm, non-negative, on any device; zero outside the volume, trilinear inside;
    ``affine`` maps voxel indices of ``mu`` to world mm (any orientation, oblique or sheared).
    The voxel planes along the axis the rays cross most steeply are each the farthest one scaled
    about the source, so each is resampled onto that plane's grid separably and summed; the sum is
    sampled at each ray's crossing and times the ray's length per plane.  Planes behind the source
    are left out; the volume is taken to lie between source and detector.
    """
    if mu.ndim != 3:
        raise ValueError(f"mu must be a 3D volume, got shape {tuple(mu.shape)}")
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.isfinite(affine).all() or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise ValueError("affine must be a finite, invertible 4x4 matrix")
    mu = mu.float()
    plan = _plan(tuple(mu.shape), tuple(mu.stride()), affine, g)
    if plan is None:
        return torch.zeros(g.rows, g.cols, dtype=torch.float32, device=mu.device)
    volume = mu.permute(plan.a, plan.b, plan.c)
    occupied = (volume.amax(dim=(1, 2)) > 0).cpu().numpy()  # planes of air (mu = 0) are skipped
    acc = _accumulate(volume, plan, occupied)
    (ob, oc), (hb, hc), (mb, mc) = plan.origin, plan.spacing, plan.size
    gx = (plan.q[:, 1] - oc) / hc * (2.0 / max(mc - 1, 1)) - 1.0  # align_corners: index 0 -> -1, last -> 1
    gy = (plan.q[:, 0] - ob) / hb * (2.0 / max(mb - 1, 1)) - 1.0
    grid = torch.from_numpy(np.stack([gx, gy], axis=1)).float().to(mu.device).reshape(1, g.rows, g.cols, 2)
    total = F.grid_sample(acc[None, None], grid, mode="bilinear", padding_mode="zeros", align_corners=True).flatten()
    return (total.double() * torch.from_numpy(plan.step).to(mu.device)).reshape(g.rows, g.cols).float()


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

    def __post_init__(self) -> None:
        lo, hi = self.window_percentiles
        if not (self.photons > 0 and self.electronic_noise >= 0 and 0 <= lo < hi <= 100 and self.unsharp_sigma_px > 0
                and self.unsharp_amount >= 0):
            raise ValueError(f"exposure needs photons > 0, noise >= 0, 0 <= low < high <= 100 percentiles, "
                             f"sigma > 0 and amount >= 0; got {self}")


def expose(line_integral: torch.Tensor | np.ndarray, exposure: Exposure, rng: np.random.Generator) -> np.ndarray:
    """Line integrals -> processed radiograph, float32 in [0, 1], bone bright (deterministic per ``rng``)."""
    from scipy.ndimage import gaussian_filter

    L = np.asarray(line_integral.detach().cpu() if isinstance(line_integral, torch.Tensor) else line_integral,
                   dtype=np.float64)
    expected = exposure.photons * np.exp(-L)
    counts = rng.poisson(expected) + rng.normal(0.0, exposure.electronic_noise, size=L.shape)
    attenuation = -np.log(np.maximum(counts, 0.5) / exposure.photons)  # log response: high where dense
    # large-kernel unsharp masking, as detector processing does, brings bone out of the soft-tissue ramp
    blurred = gaussian_filter(attenuation, exposure.unsharp_sigma_px)
    sharpened = attenuation + exposure.unsharp_amount * (attenuation - blurred)
    body = L > 0.5 * float(L.max()) if L.max() > 0 else np.ones(L.shape, bool)  # the window is set on the patient
    lo, hi = np.percentile(sharpened[body], exposure.window_percentiles)
    return np.clip((sharpened - lo) / max(hi - lo, 1e-6), 0.0, 1.0).astype(np.float32)
