"""Render one patient: the processed lateral radiograph and the truth of every vertebra.

Image formation (vectorised NumPy, ~0.2 s of CPU per 1024 x 576 image), in phases that each
draw from the patient's random stream in this fixed order (part of same-seed-same-bytes):

1. ``anatomy.sample_anatomy`` and ``anatomy.stack_spine``: the patient and the curved chain;
2. ``scene.fit_frame``: the chain placed in the image (tilt, fill, anchor), then the kV;
3. ``_soft_tissue``: attenuation of soft tissue, lungs, heart and bowel gas (coarse grid);
4. ``bones``: vertebral bodies (trabecular core with striated texture, cortical walls,
   endplates seen edge-on, fractures, osteophytes), posterior elements, sacrum, ribs, aortic
   calcification;
5. ``_marker`` and ``_collimation``;
6. ``_detector``: primary transmission ``exp(-A)``, detector blur, heel effect, scatter
   (low-pass of the primary times the traversed attenuation), Poisson quantum noise (on the
   detector's pitch), log (or power-law) response;
7. ``_for_presentation``: multi-scale equalisation and edge enhancement, as consoles do.

A ``SynthStyle`` (see ``style``) sets the ranges of the detector and processing draws, the
soft-tissue thickness and the ROI convention; effects that only some styles have draw from a
separate ``style_rng``, so the anatomy and truth are the same in every style.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from spine_dfl.synth.anatomy import CHAIN_LEVELS, PatientAnatomy, normalise_probabilities, sample_anatomy, stack_spine
from spine_dfl.synth.bones import aortic_calcification, posterior_elements, ribs, sacrum, vertebral_bodies
from spine_dfl.synth.drawing import lowpass, smoothstep
from spine_dfl.synth.scene import MU_SOFT_PER_MM, Scene, fit_frame
from spine_dfl.synth.style import DEFAULT_STYLE, SynthStyle
from spine_dfl.synth.truth import VertebraTruth


@dataclass
class RenderedPatient:
    """Display-domain image (float32 rows x cols, higher = more attenuation) and ground truth.

    ``anatomy`` holds the sampled patient (sex, age, size, bone density, curvature, per-level
    body shapes); it is internal and may change between generator versions.
    """

    image: np.ndarray
    body_region: np.ndarray  # bool (rows, cols): inside the patient (not air / collimator)
    bone_mask: np.ndarray  # bool (rows, cols): labelled vertebral bodies
    vertebrae: tuple[VertebraTruth, ...]
    mm_per_px: float
    kvp: float
    mas: float
    anatomy: PatientAnatomy


def check_image_size(rows: int, cols: int) -> None:
    if rows < 256 or cols < 128:
        raise ValueError(f"image size {rows} x {cols} is too small for a spine (need at least 256 x 128)")
    if cols < 0.4 * rows:
        raise ValueError(f"image size {rows} x {cols}: cols must be at least 0.4 x rows to hold a curved spine")


def render_patient(rng: np.random.Generator, rows: int = 1024, cols: int = 576,
                   grade_probabilities: Mapping[str, float] | None = None, *, style: SynthStyle = DEFAULT_STYLE,
                   style_rng: np.random.Generator | None = None) -> RenderedPatient:
    """Sample one patient and render the processed lateral radiograph.

    Args:
        rng: source of all randomness for this patient.
        rows, cols: image size in pixels (the spine T4-L5 spans 78-88 % of the rows).
        grade_probabilities: marginal probability of each grade (default DEFAULT_GRADE_PROBABILITIES).
        style: the site's acquisition (default: the generator's own).
        style_rng: source of the style-only randomness (heel direction); default spawned from ``rng``
            without advancing it.
    Returns:
        RenderedPatient with ``image`` float32 (rows, cols), log-attenuation after processing
        (higher = more attenuation, bone bright), and one VertebraTruth per level T4..L5.
    """
    check_image_size(rows, cols)
    probs = normalise_probabilities(grade_probabilities)
    anat = sample_anatomy(rng, probs)
    frames = stack_spine(anat, rng)
    frame = fit_frame(anat, frames, rows, cols, rng)
    scene = Scene(rows=rows, cols=cols, anat=anat, frames=frames, frame=frame, kvp=float(rng.uniform(75.0, 100.0)),
                  style=style)
    style_rng = style_rng if style_rng is not None else rng.spawn(1)[0]

    attenuation, body_region = _soft_tissue(scene, rng)
    if style.soft_tissue_scale != 1.0:
        attenuation *= np.float32(style.soft_tissue_scale)
    bone_mask, truths = vertebral_bodies(scene, attenuation, rng)
    posterior_elements(scene, attenuation, rng)
    sacrum(scene, attenuation)
    ribs(scene, attenuation, rng)
    aortic_calcification(scene, attenuation, rng)
    _marker(scene, attenuation, rng)
    _collimation(attenuation, body_region, rng)

    log_signal, photons = _detector(attenuation, scene.px, style, rng, style_rng)
    processed = _for_presentation(log_signal, body_region, scene.px, style, rng)
    mas = float(photons / 1500.0 * (85.0 / scene.kvp) ** 2)
    return RenderedPatient(
        image=processed.astype(np.float32), body_region=body_region, bone_mask=bone_mask,
        vertebrae=tuple(truths), mm_per_px=scene.mm_per_px, kvp=scene.kvp, mas=mas, anatomy=anat,
    )


# --------------------------------------------------------------------------------------------
# Soft tissue
# --------------------------------------------------------------------------------------------
def _soft_tissue(scene: Scene, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Soft-tissue attenuation (float32) and the inside-the-patient region, both full size.

    Computed on a grid 4x coarser (the anatomy varies slowly) and upsampled bilinearly.
    """
    rows, cols = scene.rows, scene.cols
    mu_soft = MU_SOFT_PER_MM * (85.0 / scene.kvp) ** 0.35
    coarse = 4
    crow, ccol = -(-rows // coarse), -(-cols // coarse)
    gy, gx = np.mgrid[0:crow, 0:ccol].astype(np.float64)
    gx = (gx + 0.5) * coarse
    gy = (gy + 0.5) * coarse
    tissue_path, coarse_path = _soft_tissue_paths(scene, gx, gy, rng)
    attenuation = ndimage.zoom(mu_soft * coarse_path, coarse, order=1, mode="nearest", grid_mode=True)[:rows, :cols]
    attenuation = np.ascontiguousarray(attenuation, dtype=np.float32)
    inside_coarse = tissue_path > 1.0
    body_region = ndimage.zoom(inside_coarse.astype(np.float32), coarse, order=1, mode="nearest", grid_mode=True)[:rows, :cols] > 0.5
    return attenuation, body_region


def _soft_tissue_paths(scene: Scene, gx: np.ndarray, gy: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Left-right path length (mm) through the trunk, and through soft tissue only (less lung
    and bowel gas), at the coarse grid points (gx, gy) in image px."""
    anat, px = scene.anat, scene.px
    body_centres = {lv: scene.frame.to_image(scene.frames[lv][0][None])[0] for lv in CHAIN_LEVELS}
    ys_c = np.array([body_centres[lv][1] for lv in CHAIN_LEVELS])
    xs_c = np.array([body_centres[lv][0] for lv in CHAIN_LEVELS])
    spine_x = np.interp(gy, ys_c, xs_c)  # column of the body centre line per row (coarse grid)
    diaphragm_row = float(np.interp(0.4, [0, 1], [body_centres["T10"][1], body_centres["T12"][1]]))
    t12_row = body_centres["T12"][1]
    # diaphragm: highest anteriorly, sloping down to the posterior costophrenic sulcus
    dx_mm = np.clip((gx - spine_x) / px, -200.0, 120.0)
    dome = diaphragm_row + px * (float(rng.uniform(0.2, 0.4)) * dx_mm + 0.0015 * dx_mm**2) - 10 * px
    dome = np.minimum(dome, t12_row + 25 * px)
    abdomen = smoothstep((gy - (dome - 30 * px)) / (60 * px))  # 0 = chest, 1 = abdomen
    lateral_width = (310.0 + 30.0 * abdomen) * anat.habitus * anat.scale  # mm left-right
    behind_spine = (78.0 + 22.0 * abdomen * anat.habitus + 18.0 * (anat.habitus - 1.0)) * anat.scale  # spine centre -> back skin (mm)
    ap_depth = (230.0 + 60.0 * abdomen * anat.habitus) * anat.habitus * anat.scale
    back_x = spine_x + behind_spine * px
    centre_x = back_x - ap_depth / 2.0 * px
    rel = (gx - centre_x) / (ap_depth / 2.0 * px)
    tissue_path = lateral_width * np.sqrt(np.clip(1.0 - rel**2, 0.0, 1.0)) ** 0.6
    # lungs: air replacing tissue above the diaphragm, anterior to the posterior ribs
    lung_vertical = smoothstep((dome - gy) / (25 * px))
    lung_posterior = smoothstep((back_x - 30 * px - gx) / (35 * px))
    lung_path = 0.5 * lateral_width * lung_vertical * lung_posterior
    heart_cx = spine_x - (70 + 35 * rng.random()) * px
    heart_cy = diaphragm_row - 55 * px
    heart = np.exp(-(((gx - heart_cx) / (60 * px)) ** 2 + ((gy - heart_cy) / (55 * px)) ** 2) ** 1.5)
    # the spinal column is flanked by paraspinal muscle and mediastinum: less lung in its path
    column = np.exp(-(((gx - spine_x) / (28 * px)) ** 2))
    lung_path = lung_path * (1.0 - 0.55 * heart) * (1.0 - 0.45 * column)
    gas = _bowel_gas(gx, gy, spine_x, diaphragm_row, scene.rows, px, rng) * abdomen
    coarse_path = np.clip(tissue_path - np.clip(lung_path, 0, None) - gas, 0.0, None)
    return tissue_path, coarse_path


def _bowel_gas(gx: np.ndarray, gy: np.ndarray, spine_x: np.ndarray, diaphragm_row: float, rows: int, px: float,
               rng: np.random.Generator) -> np.ndarray:
    """Path length (mm) of 3-11 gas pockets below the diaphragm, anterior to the spine."""
    gas = np.zeros_like(gx)
    for _ in range(int(rng.integers(3, 12))):
        gcx = rng.uniform(-160, 30) * px + spine_x.mean()
        gcy = rng.uniform(diaphragm_row + 20 * px, rows)
        rx, ry = rng.uniform(8, 30, size=2) * px
        gas += rng.uniform(15, 45) * np.exp(-(((gx - gcx) / rx) ** 2 + ((gy - gcy) / ry) ** 2) ** 2)
    return gas


# --------------------------------------------------------------------------------------------
# Marker, collimation, detector, processing
# --------------------------------------------------------------------------------------------
def _marker(scene: Scene, attenuation: np.ndarray, rng: np.random.Generator) -> None:
    """A lead "L" side marker near the top-left corner, in 60 % of the images."""
    rows, cols = scene.rows, scene.cols
    if rng.random() < 0.6:
        mx = int(rng.uniform(0.04, 0.12) * cols)
        my = int(rng.uniform(0.02, 0.06) * rows)
        size = max(int(10 * scene.px), 6)
        stroke = max(size // 4, 2)
        attenuation[my : my + size, mx : mx + stroke] += 2.5
        attenuation[my + size - stroke : my + size, mx : mx + int(size * 0.7)] += 2.5


def _collimation(attenuation: np.ndarray, body_region: np.ndarray, rng: np.random.Generator) -> None:
    """Collimator blades at the left and right edges, in 40 % of the images."""
    cols = attenuation.shape[1]
    if rng.random() < 0.4:
        left = int(rng.uniform(0.0, 0.05) * cols)
        right = cols - int(rng.uniform(0.0, 0.05) * cols)
        attenuation[:, :left] += 4.0
        attenuation[:, right:] += 4.0
        body_region[:, :left] = False
        body_region[:, right:] = False


def _detector(attenuation: np.ndarray, px: float, style: SynthStyle, rng: np.random.Generator,
              style_rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """Primary, blur, heel, scatter, quantum noise, response: returns (-log(counts / photons), photons)
    (or the style's power-law response instead of -log)."""
    photons = float(np.exp(rng.uniform(np.log(1.5e4), np.log(6e4)))) * style.dose_scale
    primary = np.exp(-attenuation, dtype=np.float32)
    primary = ndimage.gaussian_filter(primary, sigma=float(rng.uniform(*style.blur_sigma)), mode="nearest")
    if style.heel_effect > 0:
        primary *= _heel_field(primary.shape[0], style.heel_effect, style_rng)
    # Scatter originates in the patient: a low-pass of the primary times the traversed thickness
    # (no scatter source in air), giving scatter-to-primary ratios of ~0.3-1.2 behind the
    # abdomen with an anti-scatter grid.
    scatter_per_attenuation = float(rng.uniform(*style.scatter_per_attenuation))
    scatter = scatter_per_attenuation * lowpass(primary * np.minimum(attenuation, 6.0), 35.0 * px)
    signal = (primary + scatter) * photons
    counts = _quantum_noise(signal, style.pixel_binning, rng)
    # each detector pixel sees a few correlated quanta: mild noise correlation
    counts = ndimage.gaussian_filter(counts, sigma=style.noise_correlation, mode="nearest")
    transmission = np.maximum(counts, 0.5) / photons
    if style.response_exponent == 0.0:
        return -np.log(transmission).astype(np.float32), photons
    exponent = style.response_exponent
    return ((1.0 - transmission**exponent) / exponent).astype(np.float32), photons


def _heel_field(rows: int, strength: float, style_rng: np.random.Generator) -> np.ndarray:
    """Beam intensity along the anode-cathode (long) axis, (rows, 1): 1 at the cathode end,
    falling steepest towards the anode end; the tube's direction and the exact fall per image."""
    position = (np.arange(rows, dtype=np.float32) + 0.5) / rows
    if style_rng.random() < 0.5:
        position = position[::-1]
    fall = min(strength * float(style_rng.uniform(0.8, 1.2)), 0.95)
    return (1.0 - fall * position**1.5).astype(np.float32)[:, None]


def _quantum_noise(signal: np.ndarray, binning: int, rng: np.random.Generator) -> np.ndarray:
    """Poisson counts per pixel; with ``binning`` k > 1 counted on k x k detector elements and
    resampled (bilinear) back to the image grid, as a coarser detector pitch would be."""
    if binning == 1:
        return rng.poisson(signal).astype(np.float32)
    rows, cols = signal.shape
    padded = np.pad(signal, ((0, (-rows) % binning), (0, (-cols) % binning)), mode="edge")
    elements = padded.reshape(padded.shape[0] // binning, binning, padded.shape[1] // binning, binning).sum(axis=(1, 3))
    counts = rng.poisson(elements).astype(np.float32) / np.float32(binning * binning)
    resampled = ndimage.zoom(counts, binning, order=1, mode="nearest", grid_mode=True)
    return np.ascontiguousarray(resampled[:rows, :cols], dtype=np.float32)


def _for_presentation(log_signal: np.ndarray, body_region: np.ndarray, px: float, style: SynthStyle,
                      rng: np.random.Generator) -> np.ndarray:
    """The console's "For Presentation" processing: latitude compression and edge enhancement."""
    reference = float(np.median(log_signal[body_region])) if body_region.any() else float(np.median(log_signal))
    # multi-scale equalisation as CR/DX consoles do: large-scale density (lung vs abdomen)
    # is compressed strongly, structures of vertebral size much less
    background = lowpass(log_signal, 45.0 * px)
    processed = log_signal - float(rng.uniform(*style.equalisation)) * (background - reference)
    detail = processed - ndimage.gaussian_filter(processed, sigma=float(rng.uniform(*style.edge_sigma)), mode="nearest")
    return processed + float(rng.uniform(*style.edge_gain)) * detail
