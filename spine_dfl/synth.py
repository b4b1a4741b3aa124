"""Synthetic cohort of lateral thoracolumbar spine radiographs with Genant-graded vertebrae.

``generate_cohort(out_dir, patients, seed)`` writes one DICOM radiograph per patient plus the
tables that the rest of spine-dfl reads:

``images/P0000.dcm``   lateral view, vertebral bodies T4-L5 (plus partial T3 and S1 for context),
                       anterior to the left (columns increase towards posterior, rows towards the
                       feet: PatientOrientation ``P\\F``).  Every 8th file has no ``.dcm`` suffix,
                       as PACS exports often have none.
``manifest.csv``       one row per labelled vertebra: image, label, vertebra, patient_id, split,
                       x_min, y_min, x_max, y_max (ROI in original pixels, x = column, y = row,
                       max exclusive): the vertebral body box padded ~7 % per side and jittered
                       +-4.5 % like a localiser, always holding the whole body.
``rois.csv``           the same ROIs keyed by sop_instance_uid, without labels (scoring input).
``vertebrae.csv``      ground truth per vertebra (shape, height loss, heights in mm, body
                       centre/angle in pixels, tight body box); not needed for training.
``cohort.json``        summary: counts per class, split and shape, seed, generator version.

Image formation (vectorised NumPy, ~0.2 s of CPU per 1024 x 576 image): attenuation line
integrals of soft tissue, lungs, heart, bowel gas, ribs, vertebral bodies (trabecular core
with striated texture, cortical walls, endplates seen edge-on), posterior elements (pedicles,
articular pillars, spinous processes), osteophytes and aortic calcification in older
patients; primary transmission ``exp(-A)``, detector blur, scatter (low-pass of the primary
times the traversed attenuation), Poisson quantum noise, log conversion, multi-scale
equalisation and edge enhancement as "For Presentation" processing, then linear quantisation
to 12-16 stored bits.  MONOCHROME1 files store ``max - value``; RescaleSlope/Intercept and a
VOI window are chosen so that after modality LUT, VOI window and MONOCHROME1 inversion bone
is bright.  Pixel spacing is consistent with the anatomy (about 0.4-0.55 mm in the patient
plane, ImagerPixelSpacing larger by the geometric magnification).

Grades (Genant semi-quantitative): height loss = 1 - min(Ha, Hm, Hp) / H_ref where Ha, Hm, Hp
are the anterior, middle and posterior body heights (measured at 10 % of the depth inside the
anterior wall, mid-depth, 10 % inside the posterior wall) and H_ref the expected height of
that vertebra for that patient.  Drawn losses (HEIGHT_LOSS_RANGES): normal < 0.15 (natural
wedging and endplate concavity), mild 0.205-0.245, moderate 0.28-0.37, severe 0.43-0.62;
shapes wedge (anterior loss), biconcave (middle loss), crush (posterior-dominant loss of the
whole body).  Moderate and severe fractures also show a broken endplate cortex and a dense
impaction band; mild ones only the height loss.  Wedged bodies tilt the spine above them
(the chain of bodies and discs is stacked from the sacrum up).  Same seed -> same bytes.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    UID,
    ComputedRadiographyImageStorage,
    DeflatedExplicitVRLittleEndian,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
    generate_uid,
)
from PIL import Image, ImageDraw
from scipy import ndimage

from spine_dfl.vertebrae import LEVELS

__all__ = [
    "CLASS_NAMES",
    "SHAPES",
    "LABELLED_LEVELS",
    "DEFAULT_GRADE_PROBABILITIES",
    "HEIGHT_LOSS_RANGES",
    "SYNTH_VERSION",
    "BodyShape",
    "VertebraTruth",
    "PatientRecord",
    "CohortSummary",
    "RenderedPatient",
    "generate_cohort",
    "render_patient",
    "body_coverage",
    "body_mask",
    "body_heights_mm",
]

SYNTH_VERSION = "1.0"
"""Version of the generator's image model; part of every UID and of cohort.json."""

CLASS_NAMES: tuple[str, ...] = ("normal", "mild", "moderate", "severe")
SHAPES: tuple[str, ...] = ("wedge", "biconcave", "crush")
LABELLED_LEVELS: tuple[str, ...] = LEVELS[LEVELS.index("T4") : LEVELS.index("L5") + 1]
_CHAIN_LEVELS: tuple[str, ...] = ("T3", *LABELLED_LEVELS, "S1")

DEFAULT_GRADE_PROBABILITIES: dict[str, float] = {"normal": 0.75, "mild": 0.12, "moderate": 0.08, "severe": 0.05}
HEIGHT_LOSS_RANGES: dict[str, tuple[float, float]] = {
    "normal": (-0.10, 0.15),
    "mild": (0.205, 0.245),
    "moderate": (0.28, 0.37),
    "severe": (0.43, 0.62),
}
"""Height loss (fraction of the reference height) drawn for each grade.

Inside Genant's bands (mild 20-25 %, moderate 25-40 %, severe > 40 %) with small margins at
the band edges, so that labels are unambiguous; the moderate band is drawn from its middle
because a middle ordinal class is otherwise confused with both neighbours, and the brief for
this cohort is that mild (next to the natural variation of normal bodies) is the hard class.
"""

# Shape mix per fracture grade: mild fractures are mostly wedges (as in real cohorts); crush
# fractures flatten the whole body and are mostly moderate or severe.
_SHAPE_PROBABILITIES: dict[str, tuple[float, float, float]] = {
    "mild": (0.70, 0.25, 0.05),
    "moderate": (0.55, 0.30, 0.15),
    "severe": (0.45, 0.25, 0.30),
}

# Per-level adult dimensions in mm at patient scale 1: (posterior body height, endplate depth,
# disc height below).  Rough means from morphometry studies; S1 is the sacral base.
_LEVEL_DIMENSIONS_MM: dict[str, tuple[float, float, float]] = {
    "T3": (16.5, 24.0, 3.5), "T4": (17.0, 25.0, 3.8), "T5": (17.5, 26.0, 4.0), "T6": (18.0, 27.0, 4.2),
    "T7": (18.5, 28.0, 4.5), "T8": (19.0, 29.0, 4.8), "T9": (19.5, 30.0, 5.0), "T10": (20.5, 31.0, 5.5),
    "T11": (21.5, 32.0, 6.0), "T12": (23.0, 33.5, 7.0), "L1": (24.5, 35.0, 8.0), "L2": (25.5, 36.0, 9.0),
    "L3": (26.5, 37.0, 10.0), "L4": (27.0, 38.0, 11.0), "L5": (26.5, 38.0, 11.0), "S1": (24.0, 42.0, 0.0),
}
# Mean natural wedging (posterior minus anterior height over reference height): thoracic bodies
# are slightly wedged anteriorly, L5 the other way.
_NATURAL_WEDGE: dict[str, float] = {
    "T3": 0.07, "T4": 0.07, "T5": 0.07, "T6": 0.07, "T7": 0.07, "T8": 0.07, "T9": 0.065, "T10": 0.06,
    "T11": 0.05, "T12": 0.04, "L1": 0.03, "L2": 0.02, "L3": 0.0, "L4": -0.03, "L5": -0.08, "S1": 0.0,
}
# Relative fracture frequency per level: peaks mid-thoracic and at the thoracolumbar junction.
_FRACTURE_LEVEL_WEIGHT: dict[str, float] = {
    "T4": 0.5, "T5": 0.7, "T6": 0.9, "T7": 1.3, "T8": 1.3, "T9": 1.0, "T10": 0.9, "T11": 1.2,
    "T12": 1.7, "L1": 1.7, "L2": 1.1, "L3": 0.9, "L4": 0.7, "L5": 0.5,
}
# Where the anterior, middle and posterior heights are measured, as x = 2u / depth.
_MEASURE_X: tuple[float, float, float] = (-0.8, 0.0, 0.8)

# Attenuation of bone in excess of water, per mm of path, at the reference beam (80-90 kV
# effective); trabecular bone scales with bone volume fraction.
_MU_CORTICAL_PER_MM = 0.022
_MU_BONE_PER_MM = 0.06
_MU_SOFT_PER_MM = 0.0105


# --------------------------------------------------------------------------------------------
# Public data records
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BodyShape:
    """Shape of one vertebral body in its own frame (mm).

    Frame: u along the anteroposterior axis (u = -depth/2 anterior wall, +depth/2 posterior
    wall), v towards the head (v = 0 mid-body).  With x = 2u / depth in [-1, 1] the total height
    is ``H(x) = H_ref * (1 + natural_wedge * x / 2 - concavity * (1 - x**2)) - fracture_depth *
    H_ref * P(x)`` where P is the shape's loss profile; the loss is shared between the upper
    (``upper_share``) and lower endplate.  Small endplate waves and rounded corners are added.
    """

    depth_mm: float
    reference_height_mm: float
    lateral_width_mm: float
    natural_wedge: float
    concavity: float
    shape: str  # "none" for a normal vertebra, else one of SHAPES
    fracture_depth: float  # k: amplitude of the loss profile, fraction of H_ref
    crush_anterior_share: float  # crush only: anterior loss / posterior loss
    upper_share: float
    anterior_waist_mm: float
    posterior_waist_mm: float
    corner_radius_mm: float
    wave_amplitude_mm: tuple[float, float]  # upper, lower endplate
    wave_frequency: tuple[float, float]
    wave_phase: tuple[float, float]


@dataclass(frozen=True)
class VertebraTruth:
    """Ground truth of one vertebra in one image.

    Pixel geometry uses continuous coordinates (pixel (row r, col c) covers [c, c+1) x [r, r+1)).
    ``angle_deg`` is the image-space direction of the body's u axis (towards posterior), x right
    and y down; the v axis (towards the head) is (sin a, -cos a).  ``box`` is the tight body box
    and ``roi`` the padded, jittered localiser box; both (x_min, y_min, x_max, y_max) in pixels,
    max exclusive.  Heights in mm are measured at ``_MEASURE_X``.
    """

    level: str
    label: str
    shape: str
    height_loss: float
    anterior_height_mm: float
    middle_height_mm: float
    posterior_height_mm: float
    body: BodyShape
    centre_x: float
    centre_y: float
    angle_deg: float
    mm_per_px: float
    box: tuple[int, int, int, int]
    roi: tuple[int, int, int, int]

    @property
    def reference_height_mm(self) -> float:
        return self.body.reference_height_mm


@dataclass(frozen=True)
class PatientRecord:
    """One generated radiograph: identifiers, acquisition choices and its vertebrae (T4-L5)."""

    patient_id: str
    image: str  # path relative to the cohort folder, forward slashes
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    modality: str
    photometric: str
    transfer_syntax: str
    bits_stored: int
    rows: int
    cols: int
    mm_per_px: float
    split: str
    vertebrae: tuple[VertebraTruth, ...]


@dataclass(frozen=True)
class CohortSummary:
    """What ``generate_cohort`` wrote; ``summary`` is the content of cohort.json."""

    out_dir: Path
    seed: int
    manifest_path: Path
    rois_path: Path
    vertebrae_path: Path
    cohort_json_path: Path
    patients: tuple[PatientRecord, ...]
    summary: dict[str, Any] = field(repr=False)

    @property
    def image_paths(self) -> list[Path]:
        return [self.out_dir / p.image for p in self.patients]

    @property
    def class_counts(self) -> dict[str, int]:
        return dict(self.summary["class_counts"])

    @property
    def split_class_counts(self) -> dict[str, dict[str, int]]:
        return {k: dict(v) for k, v in self.summary["split_class_counts"].items()}


# --------------------------------------------------------------------------------------------
# Body shape geometry (shared by rendering and by tests that measure the mask)
# --------------------------------------------------------------------------------------------
def _loss_profile(shape: str, x: np.ndarray, crush_anterior_share: float) -> np.ndarray:
    """P(x): relative height loss across the body (1 at the most depressed measurement point)."""
    if shape == "wedge":
        return np.clip((0.8 - x) / 1.6, 0.0, 1.12)
    if shape == "biconcave":
        return np.cos(np.clip(x, -1.0, 1.0) * (math.pi / 2.0)) ** 1.5
    if shape == "crush":
        a = crush_anterior_share
        return np.clip(a + (1.0 - a) * (x + 0.8) / 1.6, a - 0.02, 1.03)
    return np.zeros_like(x)


def _endplate_heights(body: BodyShape, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Upper and lower endplate distances from the mid-line (mm) at x = 2u / depth in [-1, 1]."""
    x = np.clip(x, -1.0, 1.0)
    h_ref = body.reference_height_mm
    natural = h_ref * (1.0 + body.natural_wedge * x / 2.0 - body.concavity * (1.0 - x * x))
    loss = body.fracture_depth * h_ref * _loss_profile(body.shape, x, body.crush_anterior_share)
    corner = body.corner_radius_mm * (np.clip((np.abs(x) - 0.86) / 0.14, 0.0, 1.0) ** 2)
    wave_top = body.wave_amplitude_mm[0] * np.sin(math.pi * (body.wave_frequency[0] * x + body.wave_phase[0]))
    wave_bot = body.wave_amplitude_mm[1] * np.sin(math.pi * (body.wave_frequency[1] * x + body.wave_phase[1]))
    top = natural / 2.0 - body.upper_share * loss - corner + wave_top
    bottom = natural / 2.0 - (1.0 - body.upper_share) * loss - corner + wave_bot
    return top, bottom


def body_heights_mm(body: BodyShape) -> tuple[float, float, float]:
    """(anterior, middle, posterior) body heights in mm at x = -0.8, 0, 0.8."""
    top, bottom = _endplate_heights(body, np.asarray(_MEASURE_X, dtype=np.float64))
    total = top + bottom
    return float(total[0]), float(total[1]), float(total[2])


def _local_coordinates(truth: VertebraTruth, xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Image continuous coordinates (px) -> body frame (u, v) in mm."""
    angle = math.radians(truth.angle_deg)
    dx = (xs - truth.centre_x) * truth.mm_per_px
    dy = (ys - truth.centre_y) * truth.mm_per_px
    u = dx * math.cos(angle) + dy * math.sin(angle)
    v = dx * math.sin(angle) - dy * math.cos(angle)
    return u, v


def _body_fields(
    body: BodyShape, u: np.ndarray, v: np.ndarray, mm_per_px: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Coverage (0..1 anti-aliased), wall-relative x, distances to upper/lower endplate (mm), x."""
    half_depth = body.depth_mm / 2.0
    half_height = body.reference_height_mm / 2.0
    x = u / half_depth
    top, bottom = _endplate_heights(body, x)
    waist = np.clip(1.0 - (v / half_height) ** 2, 0.0, 1.0)
    u_anterior = -half_depth + body.anterior_waist_mm * waist
    u_posterior = half_depth - body.posterior_waist_mm * waist
    d_top = top - v
    d_bottom = v + bottom
    d_min = np.minimum(np.minimum(d_top, d_bottom), np.minimum(u - u_anterior, u_posterior - u))
    coverage = np.clip(d_min / mm_per_px + 0.5, 0.0, 1.0)
    x_wall = (u - (u_anterior + u_posterior) / 2.0) / np.maximum((u_posterior - u_anterior) / 2.0, 1e-3)
    return coverage, x_wall, d_top, d_bottom, x


def body_coverage(truth: VertebraTruth, rows: int, cols: int) -> np.ndarray:
    """Anti-aliased body coverage in [0, 1], float32 (rows, cols): the body as rendered."""
    out = np.zeros((rows, cols), dtype=np.float32)
    x0, y0, x1, y1 = truth.box
    x0, y0, x1, y1 = max(x0 - 1, 0), max(y0 - 1, 0), min(x1 + 1, cols), min(y1 + 1, rows)
    if x1 <= x0 or y1 <= y0:
        return out
    ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float64)
    u, v = _local_coordinates(truth, xs + 0.5, ys + 0.5)
    coverage = _body_fields(truth.body, u, v, truth.mm_per_px)[0]
    out[y0:y1, x0:x1] = coverage
    return out


def body_mask(truth: VertebraTruth, rows: int, cols: int) -> np.ndarray:
    """Boolean mask (rows, cols) of the pixels whose centre lies inside the vertebral body."""
    return body_coverage(truth, rows, cols) >= 0.5


# --------------------------------------------------------------------------------------------
# Patient sampling
# --------------------------------------------------------------------------------------------
@dataclass
class _PatientAnatomy:
    sex: str
    age_years: int
    scale: float  # skeleton size factor
    habitus: float  # soft tissue size factor (1 = average)
    propensity: float
    bone_volume_fraction: float
    kyphosis_deg: float
    lordosis_deg: float
    sacral_slope_deg: float
    grades: dict[str, str]
    bodies: dict[str, BodyShape]
    discs: dict[str, float]  # disc height below each level (mm), before wedging
    osteophytes: dict[str, float]  # anterior spur length (mm) per level


def _normalise_probabilities(grade_probabilities: Mapping[str, float] | None) -> dict[str, float]:
    probs = dict(DEFAULT_GRADE_PROBABILITIES if grade_probabilities is None else grade_probabilities)
    unknown = set(probs) - set(CLASS_NAMES)
    if unknown:
        raise ValueError(f"grade_probabilities: unknown grade(s) {sorted(unknown)}; known: {list(CLASS_NAMES)}")
    values = [float(probs.get(name, 0.0)) for name in CLASS_NAMES]
    if any(not math.isfinite(p) or p < 0 for p in values) or sum(values) <= 0:
        raise ValueError(f"grade_probabilities must be non-negative with a positive sum, got {probs}")
    total = sum(values)
    return {name: p / total for name, p in zip(CLASS_NAMES, values)}


def _sample_grades(rng: np.random.Generator, probs: dict[str, float]) -> tuple[float, dict[str, str]]:
    """Per-patient fracture propensity (so fractures cluster) and one grade per labelled level."""
    fractured = 1.0 - probs["normal"]
    grades = {level: "normal" for level in LABELLED_LEVELS}
    if fractured <= 0:
        return 0.0, grades
    weights = np.array([_FRACTURE_LEVEL_WEIGHT[lv] for lv in LABELLED_LEVELS])
    weights = weights / weights.mean()
    # Beta with mean slightly above the target compensates for the clipping at 0.95 below.
    mean = min(fractured * 1.03, 0.95)
    concentration = 3.0
    propensity = float(rng.beta(mean * concentration, (1.0 - mean) * concentration))
    p_fracture = np.minimum(propensity * weights, 0.95)
    is_fractured = rng.random(len(LABELLED_LEVELS)) < p_fracture
    fracture_grades = np.array([probs[g] for g in CLASS_NAMES[1:]])
    fracture_grades = fracture_grades / fracture_grades.sum()
    choices = rng.choice(len(fracture_grades), size=len(LABELLED_LEVELS), p=fracture_grades)
    for i, level in enumerate(LABELLED_LEVELS):
        if is_fractured[i]:
            grades[level] = CLASS_NAMES[1 + int(choices[i])]
    return propensity, grades


def _solve_fracture_depth(body: BodyShape, target_loss: float) -> float:
    """k such that 1 - min(Ha, Hm, Hp) / H_ref equals target_loss (heights linear in k)."""
    h_ref = body.reference_height_mm
    xs = np.asarray(_MEASURE_X, dtype=np.float64)
    intact = body.__class__(**{**asdict(body), "fracture_depth": 0.0})
    top, bottom = _endplate_heights(intact, xs)
    heights = top + bottom
    profile = _loss_profile(body.shape, xs, body.crush_anterior_share)
    target_height = (1.0 - target_loss) * h_ref
    candidates = [(heights[i] - target_height) / (h_ref * profile[i]) for i in range(len(xs)) if profile[i] > 1e-6]
    return float(max(min(candidates), 0.0))


def _sample_body(
    rng: np.random.Generator, level: str, grade: str, scale: float, osteoporotic: float
) -> BodyShape:
    height, depth, _ = _LEVEL_DIMENSIONS_MM[level]
    lumbar = 1.0 if level.startswith("L") or level == "S1" else (0.5 if level in ("T11", "T12") else 0.0)
    size_noise = float(rng.normal(1.0, 0.03))
    h_ref = height * scale * size_noise
    d = depth * scale * float(rng.normal(1.0, 0.035))
    width = d * (1.1 + 0.3 * lumbar) * float(rng.normal(1.0, 0.04))
    wave_amp = rng.uniform(0.05, 0.25, size=2) * scale * (1.0 + 0.8 * osteoporotic)
    base = dict(
        depth_mm=float(d),
        reference_height_mm=float(h_ref),
        lateral_width_mm=float(width),
        natural_wedge=float(np.clip(rng.normal(_NATURAL_WEDGE[level], 0.035), -0.16, 0.16)),
        concavity=float(rng.uniform(0.0, 0.05)),
        shape="none",
        fracture_depth=0.0,
        crush_anterior_share=0.0,
        upper_share=0.5,
        anterior_waist_mm=float(rng.uniform(0.3, 1.3) * scale),
        posterior_waist_mm=float(rng.uniform(0.0, 0.8) * scale),
        corner_radius_mm=float(rng.uniform(0.6, 1.6) * scale),
        wave_amplitude_mm=(float(wave_amp[0]), float(wave_amp[1])),
        wave_frequency=(float(rng.uniform(1.0, 2.5)), float(rng.uniform(1.0, 2.5))),
        wave_phase=(float(rng.uniform(0, 2)), float(rng.uniform(0, 2))),
    )
    if level == "S1":
        base.update(natural_wedge=0.0, concavity=0.01)
    if grade == "normal":
        body = BodyShape(**base)
        # Natural variation must stay clearly below the mild range.
        loss = 1.0 - min(body_heights_mm(body)) / h_ref
        if loss > HEIGHT_LOSS_RANGES["normal"][1]:
            base["natural_wedge"] = float(np.sign(base["natural_wedge"]) * 0.08)
            base["concavity"] = 0.02
            body = BodyShape(**base)
        return body
    shape = SHAPES[int(rng.choice(len(SHAPES), p=_SHAPE_PROBABILITIES[grade]))]
    lo, hi = HEIGHT_LOSS_RANGES[grade]
    target = float(rng.uniform(lo, hi))
    base.update(
        shape=shape,
        crush_anterior_share=float(rng.uniform(0.45, 0.8)) if shape == "crush" else 0.0,
        upper_share=float(rng.uniform(0.55, 0.95)) if shape != "biconcave" else float(rng.uniform(0.4, 0.6)),
    )
    body = BodyShape(**base)
    return BodyShape(**{**asdict(body), "fracture_depth": _solve_fracture_depth(body, target)})


def _sample_anatomy(rng: np.random.Generator, probs: dict[str, float]) -> _PatientAnatomy:
    propensity, grades = _sample_grades(rng, probs)
    risk = min(propensity / max(1.0 - probs["normal"], 1e-6), 2.0) / 2.0  # ~0..1
    sex = "F" if rng.random() < 0.7 else "M"
    age = int(np.clip(rng.normal(62 + 18 * risk, 8), 45, 95))
    scale = float(np.clip(rng.normal(1.05 if sex == "M" else 0.97, 0.05), 0.86, 1.16))
    habitus = float(np.clip(rng.lognormal(0.0, 0.15), 0.75, 1.5))
    bvf = float(np.clip(rng.normal(0.17 - 0.07 * risk, 0.018), 0.06, 0.22))
    n_fractured = sum(g != "normal" for g in grades.values())
    kyphosis = float(rng.uniform(22, 45) + 2.0 * n_fractured)
    lordosis = float(rng.uniform(35, 60))
    sacral_slope = float(lordosis * rng.uniform(0.7, 0.9))
    bodies: dict[str, BodyShape] = {}
    discs: dict[str, float] = {}
    osteophytes: dict[str, float] = {}
    degeneration = float(np.clip((age - 50) / 40, 0, 1))
    for level in _CHAIN_LEVELS:
        grade = grades.get(level, "normal")
        bodies[level] = _sample_body(rng, level, grade, scale, risk)
        disc = _LEVEL_DIMENSIONS_MM[level][2] * scale
        discs[level] = float(disc * rng.uniform(1.0 - 0.35 * degeneration, 1.08))
        spur = rng.random() < 0.15 + 0.4 * degeneration
        osteophytes[level] = float(rng.uniform(1.0, 4.0) * scale) if spur else 0.0
    return _PatientAnatomy(
        sex=sex, age_years=age, scale=scale, habitus=habitus, propensity=propensity,
        bone_volume_fraction=bvf, kyphosis_deg=kyphosis, lordosis_deg=lordosis,
        sacral_slope_deg=sacral_slope, grades=grades, bodies=bodies, discs=discs, osteophytes=osteophytes,
    )


# --------------------------------------------------------------------------------------------
# Spine geometry: stack bodies and wedged discs from the sacrum upwards (world mm, Y up,
# X towards posterior), then fit into the image.
# --------------------------------------------------------------------------------------------
def _rot(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s], [s, c]])


def _chord(body: BodyShape, upper: bool) -> tuple[np.ndarray, np.ndarray]:
    """Local (u, v) of the anterior and posterior corners of an endplate chord (at x = -+0.9)."""
    xs = np.array([-0.9, 0.9])
    top, bottom = _endplate_heights(body, xs)
    us = xs * body.depth_mm / 2.0
    vs = top if upper else -bottom
    return np.array([us[0], vs[0]]), np.array([us[1], vs[1]])


def _body_wedge_angle(body: BodyShape) -> float:
    a_l, p_l = _chord(body, upper=False)
    a_u, p_u = _chord(body, upper=True)
    ang_l = math.atan2(p_l[1] - a_l[1], p_l[0] - a_l[0])
    ang_u = math.atan2(p_u[1] - a_u[1], p_u[0] - a_u[0])
    return ang_u - ang_l  # > 0: posterior taller (kyphotic)


def _stack_spine(anat: _PatientAnatomy, rng: np.random.Generator) -> dict[str, tuple[np.ndarray, float]]:
    """World frame (origin mm, angle rad) of every body in _CHAIN_LEVELS."""
    levels = list(_CHAIN_LEVELS)
    # Disc wedge angles (positive = kyphotic) so that the chain reaches the target curvature.
    thoracic_discs = [lv for lv in levels[:-1] if lv.startswith("T") and lv != "T12"]  # disc below T3..T11
    lumbar_discs = ["T12", "L1", "L2", "L3", "L4", "L5"]  # disc below T12 .. L5 (L5/S1)
    body_kyphosis = sum(math.degrees(_body_wedge_angle(anat.bodies[lv])) for lv in levels if lv.startswith("T") and lv != "T3")
    body_lumbar = sum(math.degrees(_body_wedge_angle(anat.bodies[lv])) for lv in ("L1", "L2", "L3", "L4", "L5"))
    disc_angle: dict[str, float] = {}
    per_thoracic = (anat.kyphosis_deg - body_kyphosis) / len(thoracic_discs)
    for lv in thoracic_discs:
        disc_angle[lv] = float(np.clip(per_thoracic + rng.normal(0, 1.0), -3.0, 8.0))
    lumbar_weights = np.array([0.02, 0.1, 0.15, 0.2, 0.23, 0.3])
    lumbar_total = anat.lordosis_deg + body_lumbar
    for lv, w in zip(lumbar_discs, lumbar_weights):
        disc_angle[lv] = float(-lumbar_total * w + rng.normal(0, 1.0))

    frames: dict[str, tuple[np.ndarray, float]] = {}
    s1 = anat.bodies["S1"]
    a_u, p_u = _chord(s1, upper=True)
    local_angle = math.atan2(p_u[1] - a_u[1], p_u[0] - a_u[0])
    psi = math.radians(anat.sacral_slope_deg) - local_angle
    origin = -(_rot(psi) @ ((a_u + p_u) / 2.0))
    frames["S1"] = (origin, psi)
    for below, level in zip(levels[::-1][:-1], levels[::-1][1:]):
        origin_b, psi_b = frames[below]
        a_w, p_w = (_rot(psi_b) @ c + origin_b for c in _chord(anat.bodies[below], upper=True))
        chord = p_w - a_w
        length = float(np.hypot(*chord))
        t = chord / length
        n = np.array([-t[1], t[0]])
        disc_mean = anat.discs[level]
        body = anat.bodies[level]
        spread = body.depth_mm * 0.9 * math.tan(math.radians(disc_angle.get(level, 0.0)))
        d_ant = max(disc_mean - spread / 2.0, 0.8)
        d_post = max(disc_mean + spread / 2.0, 0.8)
        mid = (a_w + p_w) / 2.0 + (d_ant + d_post) / 2.0 * n
        theta = math.atan2(t[1], t[0]) + math.atan2(d_post - d_ant, length)
        a_l, p_l = _chord(body, upper=False)
        alpha = math.atan2(p_l[1] - a_l[1], p_l[0] - a_l[0])
        psi = theta - alpha
        origin = mid - _rot(psi) @ ((a_l + p_l) / 2.0)
        frames[level] = (origin, psi)
    return frames


# --------------------------------------------------------------------------------------------
# Rendering helpers
# --------------------------------------------------------------------------------------------
@dataclass
class _ImageFrame:
    """Mapping world mm (Y up) -> image continuous px (y down) by rotation rho, scale, shift."""

    rho: float
    mm_per_px: float
    world_anchor: np.ndarray
    image_anchor: np.ndarray

    def to_image(self, pts: np.ndarray) -> np.ndarray:
        rotated = (pts - self.world_anchor) @ _rot(self.rho).T
        return np.stack(
            [self.image_anchor[0] + rotated[..., 0] / self.mm_per_px, self.image_anchor[1] - rotated[..., 1] / self.mm_per_px],
            axis=-1,
        )


def _add_polygon(image: np.ndarray, pts_xy: np.ndarray, value: float) -> None:
    """Add ``value`` to the pixels whose centre lies inside the polygon (x, y continuous px).

    Pillow's scanline fill on the polygon's bounding box: skimage.draw.polygon tests every
    vertex for every box pixel and is ~100x slower on the long rib outlines.
    """
    pts = np.asarray(pts_xy, dtype=np.float64) - 0.5  # pixel centres at integer coordinates
    rows, cols = image.shape
    x0, y0 = max(int(math.floor(pts[:, 0].min())), 0), max(int(math.floor(pts[:, 1].min())), 0)
    x1, y1 = min(int(math.ceil(pts[:, 0].max())) + 1, cols), min(int(math.ceil(pts[:, 1].max())) + 1, rows)
    if x1 <= x0 or y1 <= y0:
        return
    canvas = Image.new("L", (x1 - x0, y1 - y0), 0)
    ImageDraw.Draw(canvas).polygon((pts - (x0, y0)).ravel().tolist(), fill=1)
    image[y0:y1, x0:x1] += np.asarray(canvas, dtype=np.float32) * np.float32(value)


def _add_hollow_polygon(image: np.ndarray, pts_xy: np.ndarray, value: float, wall_fraction: float = 0.55) -> None:
    """Bone with a denser cortex: the outline at full value, an inner shrunken copy lowered."""
    _add_polygon(image, pts_xy, value)
    centroid = pts_xy.mean(axis=0)
    _add_polygon(image, centroid + (pts_xy - centroid) * wall_fraction, -0.45 * value)


def _bezier(points: np.ndarray, n: int) -> np.ndarray:
    t = np.linspace(0.0, 1.0, n)[:, None]
    p0, p1, p2, p3 = points
    return (1 - t) ** 3 * p0 + 3 * (1 - t) ** 2 * t * p1 + 3 * (1 - t) * t**2 * p2 + t**3 * p3


def _polyline_normals(centre: np.ndarray) -> np.ndarray:
    """Unit normals (N, 2) of a polyline (N, 2), for outlining a band of given half width."""
    tangent = np.gradient(centre, axis=0)
    tangent /= np.maximum(np.linalg.norm(tangent, axis=1, keepdims=True), 1e-9)
    return np.stack([-tangent[:, 1], tangent[:, 0]], axis=1)


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def _lowpass(image: np.ndarray, sigma_px: float) -> np.ndarray:
    """Large-kernel Gaussian via block-mean downsampling, blur and bilinear upsampling (fast)."""
    factor = int(max(1, min(16, sigma_px // 3)))
    rows, cols = image.shape
    pr, pc = (-rows) % factor, (-cols) % factor
    padded = np.pad(image, ((0, pr), (0, pc)), mode="edge")
    small = padded.reshape(padded.shape[0] // factor, factor, padded.shape[1] // factor, factor).mean(axis=(1, 3))
    small = ndimage.gaussian_filter(small, sigma_px / factor, mode="nearest")
    zoomed = ndimage.zoom(small, factor, order=1, mode="nearest", grid_mode=True)
    return zoomed[:rows, :cols].astype(np.float32)


# --------------------------------------------------------------------------------------------
# One patient
# --------------------------------------------------------------------------------------------
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
    anatomy: _PatientAnatomy


def _check_image_size(rows: int, cols: int) -> None:
    if rows < 256 or cols < 128:
        raise ValueError(f"image size {rows} x {cols} is too small for a spine (need at least 256 x 128)")
    if cols < 0.4 * rows:
        raise ValueError(f"image size {rows} x {cols}: cols must be at least 0.4 x rows to hold a curved spine")


def render_patient(rng: np.random.Generator, rows: int = 1024, cols: int = 576,
                   grade_probabilities: Mapping[str, float] | None = None) -> RenderedPatient:
    """Sample one patient and render the processed lateral radiograph.

    Args:
        rng: source of all randomness for this patient.
        rows, cols: image size in pixels (the spine T4-L5 spans 78-88 % of the rows).
        grade_probabilities: marginal probability of each grade (default DEFAULT_GRADE_PROBABILITIES).
    Returns:
        RenderedPatient with ``image`` float32 (rows, cols), log-attenuation after processing
        (higher = more attenuation, bone bright), and one VertebraTruth per level T4..L5.
    """
    _check_image_size(rows, cols)
    probs = _normalise_probabilities(grade_probabilities)
    anat = _sample_anatomy(rng, probs)
    frames = _stack_spine(anat, rng)

    # ---- fit the chain into the image ---------------------------------------------------
    def corners(level: str) -> np.ndarray:
        body = anat.bodies[level]
        xs = np.array([-1.0, 1.0])
        top, bottom = _endplate_heights(body, xs)
        local = np.array([[xs[0] * body.depth_mm / 2, top[0]], [xs[1] * body.depth_mm / 2, top[1]],
                          [xs[1] * body.depth_mm / 2, -bottom[1]], [xs[0] * body.depth_mm / 2, -bottom[0]]])
        origin, psi = frames[level]
        return local @ _rot(psi).T + origin

    c_top = frames["T4"][0]
    c_bottom = frames["L5"][0]
    axis = c_top - c_bottom
    tilt = math.radians(float(rng.normal(0.0, 3.0)))
    rho = math.pi / 2 - math.atan2(axis[1], axis[0]) + tilt
    fill = float(rng.uniform(0.78, 0.88))
    probe = _ImageFrame(rho, 1.0, np.zeros(2), np.zeros(2))
    all_corners = {lv: probe.to_image(corners(lv)) for lv in _CHAIN_LEVELS}
    y_extent = all_corners["L5"][:, 1].max() - all_corners["T4"][:, 1].min()
    mm_per_px = float(y_extent / (fill * rows))
    centres_world = np.array([frames[lv][0] for lv in LABELLED_LEVELS])
    y_mid_world = (all_corners["L5"][:, 1].max() + all_corners["T4"][:, 1].min()) / 2.0  # in probe px = mm
    x_mid_world = probe.to_image(centres_world)[:, 0].mean()
    anchor_world = np.linalg.solve(np.array([[1.0, 0.0], [0.0, -1.0]]) @ _rot(rho), np.array([x_mid_world, y_mid_world]))
    image_anchor = np.array([cols * rng.uniform(0.38, 0.47), rows * (0.5 + rng.uniform(-0.02, 0.02))])
    frame = _ImageFrame(rho, mm_per_px, anchor_world, image_anchor)
    px = 1.0 / mm_per_px  # pixels per mm

    def to_img(level: str, local_pts: np.ndarray) -> np.ndarray:
        origin, psi = frames[level]
        return frame.to_image(np.asarray(local_pts, dtype=np.float64) @ _rot(psi).T + origin)

    # ---- background: soft tissue, lungs, heart, bowel gas (coarse grid) ---------------
    kvp = float(rng.uniform(75.0, 100.0))
    bone_contrast = (85.0 / kvp) ** 1.3
    mu_soft = _MU_SOFT_PER_MM * (85.0 / kvp) ** 0.35
    coarse = 4
    crow, ccol = -(-rows // coarse), -(-cols // coarse)
    gy, gx = np.mgrid[0:crow, 0:ccol].astype(np.float64)
    gx = (gx + 0.5) * coarse
    gy = (gy + 0.5) * coarse
    body_centres = {lv: frame.to_image(frames[lv][0][None])[0] for lv in _CHAIN_LEVELS}
    ys_c = np.array([body_centres[lv][1] for lv in _CHAIN_LEVELS])
    xs_c = np.array([body_centres[lv][0] for lv in _CHAIN_LEVELS])
    spine_x = np.interp(gy, ys_c, xs_c)  # column of the body centre line per row (coarse grid)
    diaphragm_row = float(np.interp(0.4, [0, 1], [body_centres["T10"][1], body_centres["T12"][1]]))
    t12_row = body_centres["T12"][1]
    # diaphragm: highest anteriorly, sloping down to the posterior costophrenic sulcus
    dx_mm = np.clip((gx - spine_x) / px, -200.0, 120.0)
    dome = diaphragm_row + px * (float(rng.uniform(0.2, 0.4)) * dx_mm + 0.0015 * dx_mm**2) - 10 * px
    dome = np.minimum(dome, t12_row + 25 * px)
    abdomen = _smoothstep((gy - (dome - 30 * px)) / (60 * px))  # 0 = chest, 1 = abdomen
    lateral_width = (310.0 + 30.0 * abdomen) * anat.habitus * anat.scale  # mm left-right
    behind_spine = (78.0 + 22.0 * abdomen * anat.habitus + 18.0 * (anat.habitus - 1.0)) * anat.scale  # spine centre -> back skin (mm)
    ap_depth = (230.0 + 60.0 * abdomen * anat.habitus) * anat.habitus * anat.scale
    back_x = spine_x + behind_spine * px
    centre_x = back_x - ap_depth / 2.0 * px
    rel = (gx - centre_x) / (ap_depth / 2.0 * px)
    tissue_path = lateral_width * np.sqrt(np.clip(1.0 - rel**2, 0.0, 1.0)) ** 0.6
    # lungs: air replacing tissue above the diaphragm, anterior to the posterior ribs
    lung_vertical = _smoothstep((dome - gy) / (25 * px))
    lung_posterior = _smoothstep((back_x - 30 * px - gx) / (35 * px))
    lung_path = 0.5 * lateral_width * lung_vertical * lung_posterior
    heart_cx = spine_x - (70 + 35 * rng.random()) * px
    heart_cy = diaphragm_row - 55 * px
    heart = np.exp(-(((gx - heart_cx) / (60 * px)) ** 2 + ((gy - heart_cy) / (55 * px)) ** 2) ** 1.5)
    # the spinal column is flanked by paraspinal muscle and mediastinum: less lung in its path
    column = np.exp(-(((gx - spine_x) / (28 * px)) ** 2))
    lung_path = lung_path * (1.0 - 0.55 * heart) * (1.0 - 0.45 * column)
    gas = np.zeros_like(gx)
    for _ in range(int(rng.integers(3, 12))):
        gcx = rng.uniform(-160, 30) * px + spine_x.mean()
        gcy = rng.uniform(diaphragm_row + 20 * px, rows)
        rx, ry = rng.uniform(8, 30, size=2) * px
        gas += rng.uniform(15, 45) * np.exp(-(((gx - gcx) / rx) ** 2 + ((gy - gcy) / ry) ** 2) ** 2)
    gas *= abdomen
    coarse_path = np.clip(tissue_path - np.clip(lung_path, 0, None) - gas, 0.0, None)
    attenuation = ndimage.zoom(mu_soft * coarse_path, coarse, order=1, mode="nearest", grid_mode=True)[:rows, :cols]
    attenuation = np.ascontiguousarray(attenuation, dtype=np.float32)
    inside_coarse = tissue_path > 1.0
    body_region = ndimage.zoom(inside_coarse.astype(np.float32), coarse, order=1, mode="nearest", grid_mode=True)[:rows, :cols] > 0.5

    # ---- vertebral bodies ---------------------------------------------------------------
    mu_trabecular = _MU_BONE_PER_MM * anat.bone_volume_fraction * bone_contrast
    mu_cortical = _MU_CORTICAL_PER_MM * bone_contrast
    endplate_mm = float(rng.uniform(0.7, 1.1)) * (1.0 - 0.3 * min(anat.propensity * 2, 1.0))
    cortex_rel = float(rng.uniform(0.05, 0.08))
    striation = 0.10 + 0.25 * min(anat.propensity * 2, 1.0)
    bone_mask = np.zeros((rows, cols), dtype=bool)
    truths: list[VertebraTruth] = []
    for level in _CHAIN_LEVELS:
        body = anat.bodies[level]
        origin, psi = frames[level]
        centre_img = frame.to_image(origin[None])[0]
        # image angle of the u axis: world angle psi + rho, y flipped
        angle = -(psi + rho)
        truth_stub = VertebraTruth(
            level=level, label=anat.grades.get(level, "normal"), shape=body.shape, height_loss=0.0,
            anterior_height_mm=0.0, middle_height_mm=0.0, posterior_height_mm=0.0, body=body,
            centre_x=float(centre_img[0]), centre_y=float(centre_img[1]), angle_deg=math.degrees(angle),
            mm_per_px=mm_per_px, box=(0, 0, 0, 0), roi=(0, 0, 0, 0),
        )
        reach = (math.hypot(body.depth_mm, body.reference_height_mm * 1.1) / 2.0 + 2.0) * px
        x0 = int(max(math.floor(centre_img[0] - reach), 0))
        x1 = int(min(math.ceil(centre_img[0] + reach) + 1, cols))
        y0 = int(max(math.floor(centre_img[1] - reach), 0))
        y1 = int(min(math.ceil(centre_img[1] + reach) + 1, rows))
        if x1 <= x0 or y1 <= y0:
            continue
        ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float64)
        u, v = _local_coordinates(truth_stub, xs + 0.5, ys + 0.5)
        coverage, x_wall, d_top, d_bottom, _ = _body_fields(body, u, v, mm_per_px)
        xw = np.clip(x_wall, -1.0, 1.0)
        chord = body.lateral_width_mm * np.sqrt(1.0 - xw**2)
        inner = body.lateral_width_mm * np.sqrt(np.clip((1.0 - cortex_rel) ** 2 - xw**2, 0.0, None))
        texture = ndimage.gaussian_filter(rng.normal(size=u.shape), sigma=(1.6, 0.7))
        texture *= striation / max(float(texture.std()), 1e-6)
        plate_top = np.clip((endplate_mm - d_top) / mm_per_px + 0.5, 0.0, 1.0)
        plate_bottom = np.clip((endplate_mm - d_bottom) / mm_per_px + 0.5, 0.0, 1.0)
        grade = anat.grades.get(level, "normal")
        if grade in ("moderate", "severe"):
            # Moderate and severe fractures break the depressed endplate's cortex and impact
            # the trabeculae beneath it (a dense band); mild ones show the height loss alone,
            # which is what keeps them next to normal bodies.
            broken = np.clip((_loss_profile(body.shape, np.clip(u / (body.depth_mm / 2.0), -1, 1), body.crush_anterior_share) - 0.4) / 0.6, 0.0, 1.0)
            breakage = float(rng.uniform(0.4, 0.8)) * broken
            upper = body.upper_share >= 0.5 or body.shape == "biconcave"
            lower = body.upper_share < 0.5 or body.shape == "biconcave"
            if upper:
                plate_top = plate_top * (1.0 - breakage)
            if lower:
                plate_bottom = plate_bottom * (1.0 - breakage)
            band_mm = 2.5 * body.reference_height_mm / 20.0
            strength = float(rng.uniform(0.5, 1.0)) * (0.8 + 2.0 * body.fracture_depth)
            band = np.zeros_like(u)
            if upper:
                band = band + np.exp(-((d_top / band_mm) ** 2))
            if lower:
                band = band + np.exp(-((d_bottom / band_mm) ** 2))
        else:
            strength, band = 0.0, 0.0
        plate = np.maximum(plate_top, plate_bottom)
        value = mu_trabecular * inner * (1.0 + texture) + mu_cortical * (chord - inner)
        value = value + plate * (mu_cortical - mu_trabecular) * inner
        value = value + strength * mu_trabecular * inner * band
        attenuation[y0:y1, x0:x1] += (coverage * value).astype(np.float32)
        if level in LABELLED_LEVELS:
            inside = coverage >= 0.5
            bone_mask[y0:y1, x0:x1] |= inside
            rr, cc = np.nonzero(inside)
            if rr.size == 0:
                raise RuntimeError(f"vertebra {level} fell outside the {rows}x{cols} image")
            box = (int(x0 + cc.min()), int(y0 + rr.min()), int(x0 + cc.max() + 1), int(y0 + rr.max() + 1))
            bw, bh = box[2] - box[0], box[3] - box[1]
            pad = np.array([0.07 * bw, 0.07 * bh, 0.07 * bw, 0.07 * bh])
            jitter = rng.uniform(-0.045, 0.045, size=4) * np.array([bw, bh, bw, bh])
            roi = (
                int(max(math.floor(box[0] - pad[0] + jitter[0]), 0)),
                int(max(math.floor(box[1] - pad[1] + jitter[1]), 0)),
                int(min(math.ceil(box[2] + pad[2] + jitter[2]), cols)),
                int(min(math.ceil(box[3] + pad[3] + jitter[3]), rows)),
            )
            ha, hm, hp = body_heights_mm(body)
            truths.append(VertebraTruth(
                level=level, label=anat.grades[level], shape=body.shape,
                height_loss=float(1.0 - min(ha, hm, hp) / body.reference_height_mm),
                anterior_height_mm=ha, middle_height_mm=hm, posterior_height_mm=hp, body=body,
                centre_x=truth_stub.centre_x, centre_y=truth_stub.centre_y, angle_deg=truth_stub.angle_deg,
                mm_per_px=mm_per_px, box=box, roi=roi,
            ))
        # osteophytes: small spurs at the anterior corners
        spur = anat.osteophytes[level]
        if spur > 0:
            for sign in (1.0, -1.0):
                top, bottom = _endplate_heights(body, np.array([-1.0]))
                v_corner = float(top[0]) if sign > 0 else -float(bottom[0])
                u_corner = -body.depth_mm / 2.0
                tri = np.array([[u_corner + 0.5, v_corner], [u_corner - spur, v_corner + sign * spur * 0.35],
                                [u_corner + 0.5, v_corner - sign * 3.0]])
                _add_polygon(attenuation, to_img(level, tri), 0.5 * mu_cortical * body.lateral_width_mm * 0.5)

    # ---- posterior elements -------------------------------------------------------------
    for idx, level in enumerate(_CHAIN_LEVELS):
        if level == "S1":
            continue
        body = anat.bodies[level]
        h, d = body.reference_height_mm, body.depth_mm
        lumbar = level.startswith("L")
        wall = d / 2.0
        ped_len = (0.33 if lumbar else 0.30) * d
        pillar = 11.0 * anat.scale
        disc_above = anat.discs.get(_CHAIN_LEVELS[idx - 1], 5.0) if idx > 0 else 5.0
        disc_below = anat.discs[level]
        pedicle = np.array([[wall - 1.5, 0.02 * h], [wall - 1.5, 0.42 * h], [wall + ped_len, 0.36 * h], [wall + ped_len, 0.0]])
        _add_hollow_polygon(attenuation, to_img(level, pedicle), 0.35 * mu_cortical * body.lateral_width_mm * 0.45)
        base = wall + ped_len - 2.0
        articular = np.array([
            [base, 0.45 * h + 0.55 * disc_above + 2.0], [base + pillar * 0.8, 0.5 * h + 0.6 * disc_above + 4.0],
            [base + pillar, 0.1 * h], [base + pillar * 0.9, -0.5 * h - 0.5 * disc_below - 3.0],
            [base + 1.5, -0.5 * h - 0.4 * disc_below - 1.0], [base, 0.0],
        ])
        _add_hollow_polygon(attenuation, to_img(level, articular), 0.5 * mu_cortical * 14.0 * anat.scale)
        if lumbar:
            droop, length, width_base, width_tip = math.radians(rng.uniform(3, 12)), 30.0, 0.62 * h, 0.55 * h
        elif level in ("T10", "T11", "T12"):
            droop, length, width_base, width_tip = math.radians(rng.uniform(20, 35)), 34.0, 0.55 * h, 0.35 * h
        else:
            droop, length, width_base, width_tip = math.radians(rng.uniform(40, 58)), 40.0, 0.5 * h, 0.28 * h
        length *= anat.scale
        start = np.array([base + pillar * 0.6, -0.05 * h])
        direction = np.array([math.cos(droop), -math.sin(droop)])
        normal = np.array([-direction[1], direction[0]])
        tip = start + direction * length
        spinous = np.array([start + normal * width_base / 2, tip + normal * width_tip / 2,
                            tip + direction * 2.0, tip - normal * width_tip / 2, start - normal * width_base / 2])
        _add_hollow_polygon(attenuation, to_img(level, spinous), 0.45 * mu_cortical * 9.0 * anat.scale, 0.5)

    # ---- sacrum below S1 body (continues posteriorly-inferiorly) -------------------------
    s1 = anat.bodies["S1"]
    sac = np.array([[-s1.depth_mm / 2, -s1.reference_height_mm / 2], [s1.depth_mm / 2, -s1.reference_height_mm / 2],
                    [s1.depth_mm / 2 + 10, -120.0], [-s1.depth_mm / 2 + 15, -120.0]])
    _add_hollow_polygon(attenuation, to_img("S1", sac), 0.6 * mu_cortical * s1.lateral_width_mm * 0.4, 0.7)

    # ---- ribs (both sides, slightly offset by magnification) ---------------------------
    for level in ("T3", "T4", "T5", "T6", "T7", "T8", "T9", "T10", "T11", "T12"):
        body = anat.bodies[level]
        d, h = body.depth_mm, body.reference_height_mm
        rib_no = int(level[1:])
        reach = 1.0 if rib_no <= 10 else (0.55 if rib_no == 11 else 0.35)
        for side in (0, 1):
            offset = np.array([rng.uniform(2, 7), rng.uniform(-7, -1)]) * side
            ctrl = np.array([
                [d / 2 + 3.0, 0.35 * h],
                [d / 2 + 40.0, 0.15 * h + 5.0],
                [d / 2 + 20.0 - 50.0 * reach, -45.0 * reach],
                [-d / 2 - 150.0 * reach, -95.0 * reach - 8.0],
            ]) * anat.scale + offset
            centre = to_img(level, _bezier(ctrl, 48))
            half = np.full(len(centre), (7.0 + 0.3 * rib_no) * anat.scale * px / 2.0)
            half[:6] *= np.linspace(0.6, 1.0, 6)
            # the rib runs obliquely out of the beam anteriorly: fade it in segments
            rib_value = mu_cortical * 3.2 * anat.scale * float(rng.uniform(0.7, 1.2))
            normal = _polyline_normals(centre)
            for start, fade in ((0, 1.0), (12, 0.8), (24, 0.55), (36, 0.3)):
                seg = slice(start, min(start + 13, len(centre)))
                c, n, w = centre[seg], normal[seg], half[seg, None]
                _add_polygon(attenuation, np.concatenate([c + n * w, (c - n * w)[::-1]]), fade * rib_value)
                _add_polygon(attenuation, np.concatenate([c + n * w * 0.6, (c - n * w * 0.6)[::-1]]), -0.35 * fade * rib_value)

    # ---- aortic calcification, marker, collimation ------------------------------------
    if rng.random() < 0.1 + 0.5 * float(np.clip((anat.age_years - 55) / 35, 0, 1)):
        for level in rng.choice(["L1", "L2", "L3", "L4"], size=int(rng.integers(1, 4)), replace=False):
            body = anat.bodies[str(level)]
            u0 = -body.depth_mm / 2 - rng.uniform(4, 14)
            v0 = rng.uniform(-0.5, 0.5) * body.reference_height_mm
            seg = np.array([[u0, v0], [u0 - 1.2, v0], [u0 - 1.5, v0 - rng.uniform(3, 9)], [u0 - 0.3, v0 - rng.uniform(3, 9)]])
            _add_polygon(attenuation, to_img(str(level), seg), rng.uniform(0.15, 0.4) * bone_contrast)
    if rng.random() < 0.6:
        mx = int(rng.uniform(0.04, 0.12) * cols)
        my = int(rng.uniform(0.02, 0.06) * rows)
        size = max(int(10 * px), 6)
        stroke = max(size // 4, 2)
        attenuation[my : my + size, mx : mx + stroke] += 2.5
        attenuation[my + size - stroke : my + size, mx : mx + int(size * 0.7)] += 2.5
    if rng.random() < 0.4:
        left = int(rng.uniform(0.0, 0.05) * cols)
        right = cols - int(rng.uniform(0.0, 0.05) * cols)
        attenuation[:, :left] += 4.0
        attenuation[:, right:] += 4.0
        body_region[:, :left] = False
        body_region[:, right:] = False

    # ---- detector: primary, blur, scatter, quantum noise, log -------------------------
    photons = float(np.exp(rng.uniform(np.log(1.5e4), np.log(6e4))))
    primary = np.exp(-attenuation, dtype=np.float32)
    primary = ndimage.gaussian_filter(primary, sigma=float(rng.uniform(0.5, 0.9)), mode="nearest")
    # Scatter originates in the patient: a low-pass of the primary times the traversed thickness
    # (no scatter source in air), giving scatter-to-primary ratios of ~0.3-1.2 behind the
    # abdomen with an anti-scatter grid.
    scatter_per_attenuation = float(rng.uniform(0.08, 0.25))
    scatter = scatter_per_attenuation * _lowpass(primary * np.minimum(attenuation, 6.0), 35.0 * px)
    signal = (primary + scatter) * photons
    counts = rng.poisson(signal).astype(np.float32)
    # each detector pixel sees a few correlated quanta: mild noise correlation
    counts = ndimage.gaussian_filter(counts, sigma=0.45, mode="nearest")
    log_signal = -np.log(np.maximum(counts, 0.5) / photons).astype(np.float32)

    # ---- "For Presentation" processing: latitude compression + edge enhancement ----------
    reference = float(np.median(log_signal[body_region])) if body_region.any() else float(np.median(log_signal))
    # multi-scale equalisation as CR/DX consoles do: large-scale density (lung vs abdomen)
    # is compressed strongly, structures of vertebral size much less
    background = _lowpass(log_signal, 45.0 * px)
    processed = log_signal - float(rng.uniform(0.6, 0.85)) * (background - reference)
    detail = processed - ndimage.gaussian_filter(processed, sigma=float(rng.uniform(1.5, 3.0)), mode="nearest")
    processed = processed + float(rng.uniform(0.0, 0.6)) * detail
    mas = float(photons / 1500.0 * (85.0 / kvp) ** 2)
    return RenderedPatient(
        image=processed.astype(np.float32), body_region=body_region, bone_mask=bone_mask,
        vertebrae=tuple(truths), mm_per_px=mm_per_px, kvp=kvp, mas=mas, anatomy=anat,
    )


# --------------------------------------------------------------------------------------------
# DICOM encoding
# --------------------------------------------------------------------------------------------
_SYNTAX_NAMES: dict[str, str] = {
    ExplicitVRLittleEndian: "explicit_vr_little_endian",
    ImplicitVRLittleEndian: "implicit_vr_little_endian",
    DeflatedExplicitVRLittleEndian: "deflated_explicit_vr_little_endian",
    RLELossless: "rle_lossless",
    JPEG2000Lossless: "jpeg2000_lossless",
}
# Dealt to patients in a shuffled order, so even a 4-patient cohort has both compressed kinds.
_SYNTAX_CYCLE: tuple[str, ...] = (
    ExplicitVRLittleEndian, JPEG2000Lossless, RLELossless, ExplicitVRLittleEndian,
    ImplicitVRLittleEndian, JPEG2000Lossless, RLELossless, DeflatedExplicitVRLittleEndian,
)
_NATIVE_SYNTAX_CYCLE: tuple[str, ...] = (ExplicitVRLittleEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian)


@dataclass(frozen=True)
class _Acquisition:
    modality: str
    photometric: str
    transfer_syntax: str
    bare_name: bool


@dataclass(frozen=True)
class _StoredImage:
    pixels: np.ndarray  # uint16 (rows, cols), as stored
    bits_stored: int
    slope: float
    intercept: float
    windows: tuple[tuple[float, float], ...]  # (centre, width) in rescaled units, first = default
    window_names: tuple[str, ...]


def _quantise(rendered: RenderedPatient, photometric: str, modality: str, rng: np.random.Generator) -> _StoredImage:
    """Display-domain float -> stored integers, rescale and VOI window (bone bright after chain).

    DX for-presentation images must have slope 1 and intercept 0 (PS3.3 DX Image module); CR
    files get a vendor-like mix of rescales.
    """
    bits = int(rng.choice([12, 12, 14, 15, 16]))
    top = 2**bits - 1
    image = rendered.image
    region = rendered.body_region if rendered.body_region.any() else np.ones(image.shape, dtype=bool)
    lo = float(np.percentile(image, 0.2))
    hi = float(max(np.percentile(image, 99.95), np.percentile(image[rendered.bone_mask], 99.9) if rendered.bone_mask.any() else lo + 1))
    s_lo, s_hi = rng.uniform(0.01, 0.08) * top, rng.uniform(0.80, 0.97) * top
    gain = (s_hi - s_lo) / max(hi - lo, 1e-6)
    mono2 = np.clip(np.rint(s_lo + (image - lo) * gain), 0, top).astype(np.uint16)
    # window: from soft tissue to the densest bone, with a little room on both sides
    tissue_lo = float(np.percentile(mono2[region], 1.0))
    bone_hi = float(np.percentile(mono2[rendered.bone_mask], 99.9)) if rendered.bone_mask.any() else float(mono2.max())
    margin = 0.06 * (bone_hi - tissue_lo)
    w_lo, w_hi = tissue_lo - margin, min(bone_hi + margin, top)
    bone_lo = float(np.percentile(mono2[rendered.bone_mask], 2.0)) if rendered.bone_mask.any() else tissue_lo
    b_lo, b_hi = bone_lo - 3 * margin, bone_hi + margin
    slope, intercept = [(1.0, 0.0), (1.0, 0.0), (0.5, 0.0), (1.0, -1024.0), (0.25, 100.0)][int(rng.integers(0, 5))]
    if modality == "DX":
        slope, intercept = 1.0, 0.0
    if photometric == "MONOCHROME1":
        stored = (top - mono2).astype(np.uint16)
        to_rescaled = lambda s: slope * (top - s) + intercept  # noqa: E731 - stored MONO2 value -> rescaled MONO1
    else:
        stored = mono2
        to_rescaled = lambda s: slope * s + intercept  # noqa: E731
    windows = []
    for a, b in ((w_lo, w_hi), (b_lo, b_hi)):
        centre = (to_rescaled(a) + to_rescaled(b)) / 2.0
        width = abs(to_rescaled(b) - to_rescaled(a))
        windows.append((round(float(centre), 1), round(float(max(width, 2.0)), 1)))
    return _StoredImage(stored, bits, slope, intercept, tuple(windows), ("SPINE", "BONE"))


def _ds_number(value: float) -> str:
    text = f"{value:.6g}"
    return text if len(text) <= 16 else f"{value:.8e}"


def _build_dataset(
    *, patient_index: int, patient_id: str, seed: int, acquisition: _Acquisition, stored: _StoredImage,
    rendered: RenderedPatient, rng: np.random.Generator, study_date: date, uids: dict[str, UID],
) -> Dataset:
    anat = rendered.anatomy
    rows, cols = stored.pixels.shape
    is_dx = acquisition.modality == "DX"
    sop_class = DigitalXRayImageStorageForPresentation if is_dx else ComputedRadiographyImageStorage
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = uids["sop"]
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = pydicom.uid.PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = f"SPINEDFL_{SYNTH_VERSION}".replace(".", "_")[:16]
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY"] if not is_dx else ["ORIGINAL", "PRIMARY", ""]
    study_time = f"{int(rng.integers(7, 19)):02d}{int(rng.integers(0, 60)):02d}{int(rng.integers(0, 60)):02d}"
    content_time = f"{study_time[:2]}{min(int(study_time[2:4]) + 3, 59):02d}{study_time[4:]}"
    ds.InstanceCreationDate = study_date.strftime("%Y%m%d")
    ds.InstanceCreationTime = content_time
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = uids["sop"]
    ds.StudyDate = study_date.strftime("%Y%m%d")
    ds.SeriesDate = ds.StudyDate
    ds.AcquisitionDate = ds.StudyDate
    ds.ContentDate = ds.StudyDate
    ds.StudyTime = study_time
    ds.SeriesTime = study_time
    ds.AcquisitionTime = content_time
    ds.ContentTime = content_time
    if is_dx:
        ds.AcquisitionDateTime = ds.StudyDate + content_time
    ds.AccessionNumber = f"SYN{seed % 100000:05d}{patient_index:05d}"
    ds.Modality = acquisition.modality
    if is_dx:
        ds.PresentationIntentType = "FOR PRESENTATION"
    ds.Manufacturer = "spine-dfl synthetic"
    ds.InstitutionName = "Synthetic General Hospital"
    ds.ReferringPhysicianName = ""
    ds.StationName = f"SYNXR{1 + patient_index % 3}"
    ds.StudyDescription = "XR SPINE THORACOLUMBAR LATERAL"
    ds.SeriesDescription = "LAT"
    ds.ManufacturerModelName = "SynthDX 2" if is_dx else "SynthCR 1"
    ds.ImageComments = "Synthetic image generated by spine-dfl; not from a real patient."
    ds.PatientName = f"SYNTH^{patient_index:04d}"
    ds.PatientID = patient_id
    birth = study_date - timedelta(days=int(anat.age_years * 365.25 + rng.integers(0, 365)))
    ds.PatientBirthDate = birth.strftime("%Y%m%d")
    ds.PatientSex = anat.sex
    ds.PatientAge = f"{anat.age_years:03d}Y"
    ds.PatientSize = _ds_number(round((1.72 if anat.sex == "M" else 1.60) * anat.scale, 2))
    ds.PatientWeight = _ds_number(round(72.0 * anat.habitus**2 * anat.scale**2, 1))
    ds.BodyPartExamined = "SPINE"
    ds.KVP = _ds_number(round(rendered.kvp, 1))
    sid = float(rng.choice([1000.0, 1150.0, 1500.0, 1800.0]))
    object_distance = 180.0 + 60.0 * (anat.habitus - 1.0)
    magnification = sid / (sid - object_distance)
    ds.DistanceSourceToDetector = _ds_number(sid)
    exposure_ms = int(round(rng.uniform(80, 400)))
    ds.ExposureTime = exposure_ms
    ds.XRayTubeCurrent = int(round(rendered.mas / (exposure_ms / 1000.0)))
    ds.Exposure = int(round(rendered.mas))
    ds.ImagerPixelSpacing = [_ds_number(round(rendered.mm_per_px * magnification, 4))] * 2
    if is_dx:
        ds.DetectorType = "SCINTILLATOR" if rng.random() < 0.7 else "DIRECT"
        ds.DistanceSourceToPatient = _ds_number(sid - object_distance)
        ds.EstimatedRadiographicMagnificationFactor = _ds_number(round(magnification, 4))
        ds.ExposureIndex = _ds_number(round(float(rng.uniform(250, 500)), 1))
        ds.PositionerType = "NONE"
        if rng.random() < 0.5:
            ds.PixelSpacing = [_ds_number(round(rendered.mm_per_px, 4))] * 2
            ds.PixelSpacingCalibrationType = "GEOMETRY"
            ds.PixelSpacingCalibrationDescription = "Magnification-corrected at the spine"
    else:
        ds.PlateType = "ST-VI"
        ds.Sensitivity = _ds_number(round(float(rng.uniform(150, 450))))
        if rng.random() < 0.4:
            # many CR readers copy the detector spacing into PixelSpacing (uncalibrated)
            ds.PixelSpacing = list(ds.ImagerPixelSpacing)
    ds.ViewPosition = "LL"
    ds.StudyInstanceUID = uids["study"]
    ds.SeriesInstanceUID = uids["series"]
    ds.StudyID = f"{patient_index + 1}"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.PatientOrientation = ["P", "F"]
    ds.ImageLaterality = "U"
    region = Dataset()
    region.CodeValue = "421060004"
    region.CodingSchemeDesignator = "SCT"
    region.CodeMeaning = "Spine"
    ds.AnatomicRegionSequence = DicomSequence([region])
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = acquisition.photometric
    ds.Rows = rows
    ds.Columns = cols
    ds.BitsAllocated = 16
    ds.BitsStored = stored.bits_stored
    ds.HighBit = stored.bits_stored - 1
    ds.PixelRepresentation = 0
    if is_dx:
        ds.PixelIntensityRelationship = "LOG"
        # +1: lower values = less beam intensity (MONOCHROME1 stores exposure-like values)
        ds.PixelIntensityRelationshipSign = 1 if acquisition.photometric == "MONOCHROME1" else -1
    ds.RescaleIntercept = _ds_number(stored.intercept)
    ds.RescaleSlope = _ds_number(stored.slope)
    ds.RescaleType = "US"
    ds.WindowCenter = [_ds_number(c) for c, _ in stored.windows]
    ds.WindowWidth = [_ds_number(w) for _, w in stored.windows]
    ds.WindowCenterWidthExplanation = list(stored.window_names)
    ds.VOILUTFunction = "LINEAR"
    if is_dx:
        # DX requires it; INVERSE restates MONOCHROME1 (one inversion, not two: PS3.3 C.8.11.6.1.2)
        ds.PresentationLUTShape = "INVERSE" if acquisition.photometric == "MONOCHROME1" else "IDENTITY"
        ds.AcquisitionContextSequence = DicomSequence([])
    ds.PixelData = stored.pixels.astype("<u2").tobytes()
    ds["PixelData"].VR = "OW"
    return ds


def _encode(ds: Dataset, stored: _StoredImage, syntax: str) -> None:
    """Set the transfer syntax; compress lossless in place for RLE / JPEG 2000."""
    if syntax in (RLELossless, JPEG2000Lossless):
        from pydicom.pixels.encoders import JPEG2000LosslessEncoder, RLELosslessEncoder

        encoder = RLELosslessEncoder if syntax == RLELossless else JPEG2000LosslessEncoder
        plugin = "pylibjpeg" if "pylibjpeg" in encoder.available_plugins else ""
        if not encoder.is_available:
            raise RuntimeError(f"cannot encode {syntax.name}: {encoder.missing_dependencies}")
        # openjpeg logs every tile at INFO; keep a CLI's INFO log readable
        codec_logger = logging.getLogger("openjpeg")
        level = codec_logger.level
        codec_logger.setLevel(max(level, logging.WARNING))
        try:
            # generate_instance_uid=False: pydicom would otherwise draw a random SOPInstanceUID.
            ds.compress(syntax, stored.pixels, encoding_plugin=plugin, generate_instance_uid=False)
        finally:
            codec_logger.setLevel(level)
    else:
        ds.file_meta.TransferSyntaxUID = syntax


# --------------------------------------------------------------------------------------------
# Cohort
# --------------------------------------------------------------------------------------------
def _deal_splits(
    grades_per_patient: list[list[str]], fractions: tuple[float, float, float], rng: np.random.Generator
) -> list[str]:
    """Patient-level stratified split: sort by fracture burden, deal by largest remaining deficit.

    Then, where a class is missing from val or test but some train patient has it, swap that
    patient with one of the split's patients as long as no split loses a class it had.
    """
    names = ("train", "val", "test")
    n = len(grades_per_patient)
    if n == 0:
        return []
    rank = {g: i for i, g in enumerate(CLASS_NAMES)}
    order = list(rng.permutation(n))

    def burden(i: int) -> tuple[int, int, int, int]:
        g = grades_per_patient[i]
        counts = Counter(g)
        return (max(rank[x] for x in g), counts["severe"], counts["moderate"], counts["mild"])

    order.sort(key=burden, reverse=True)
    weights = np.asarray(fractions, dtype=np.float64) / float(sum(fractions))
    # from 3 patients on, every split with a positive fraction gets at least one patient
    minimum = 1 if n >= 3 else 0
    quota = np.array([0, *(max(minimum, int(round(w * n))) if w > 0 else 0 for w in weights[1:])])
    quota[0] = n - quota[1:].sum()
    while quota[0] < (1 if weights[0] > 0 else 0) or quota[0] < 0:
        quota[int(np.argmax(quota[1:])) + 1] -= 1
        quota[0] += 1
    assigned = np.zeros(3)
    split = [""] * n
    for position, patient in enumerate(order):
        deficit = quota * (position + 1) / n - assigned
        deficit[assigned >= quota] = -np.inf
        choice = int(np.argmax(deficit))
        split[patient] = names[choice]
        assigned[choice] += 1

    def classes(which: str, exclude: int = -1, include: int = -1) -> set[str]:
        out: set[str] = set()
        for i in range(n):
            if (split[i] == which and i != exclude) or i == include:
                out.update(grades_per_patient[i])
        return out

    present = {g for gs in grades_per_patient for g in gs}
    for target in ("val", "test"):
        for cls in CLASS_NAMES:
            if cls not in present or cls in classes(target) or not any(s == target for s in split):
                continue
            done = False
            for donor in (i for i in range(n) if split[i] == "train" and cls in grades_per_patient[i]):
                for taker in (i for i in range(n) if split[i] == target):
                    before_t, before_tr = classes(target), classes("train")
                    after_t = classes(target, exclude=taker, include=donor)
                    after_tr = classes("train", exclude=donor, include=taker)
                    if before_t - after_t or before_tr - after_tr:
                        continue
                    split[donor], split[taker] = target, "train"
                    done = True
                    break
                if done:
                    break
    return split


def _clean_output(out: Path, overwrite: bool) -> None:
    ours = [out / n for n in ("manifest.csv", "rois.csv", "vertebrae.csv", "cohort.json")]
    images = out / "images"
    ours_images = [p for p in images.iterdir() if re.fullmatch(r"P\d{4,}(\.dcm)?", p.name)] if images.is_dir() else []
    existing = [p for p in ours + ours_images if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{out}: already holds a synthetic cohort ({existing[0].name}); pass overwrite=True to replace it")
    for p in existing:
        p.unlink()


def generate_cohort(
    out_dir: str | Path,
    patients: int = 40,
    seed: int = 0,
    *,
    rows: int = 1024,
    cols: int | None = None,
    grade_probabilities: Mapping[str, float] | None = None,
    split_fractions: Sequence[float] = (0.6, 0.2, 0.2),
    compress: bool = True,
    bare_names: bool = True,
    overwrite: bool = False,
) -> CohortSummary:
    """Write a synthetic cohort of lateral thoracolumbar radiographs (one per patient) as DICOM.

    Args:
        out_dir: folder to write (created); files: images/P0000.dcm ..., manifest.csv, rois.csv,
            vertebrae.csv, cohort.json.
        patients: number of patients (= images), >= 1.  14 labelled vertebrae (T4-L5) each.
        seed: non-negative integer; the same seed and settings give byte-identical files.
            Patient i is drawn from its own stream, so it is the same whatever ``patients`` is;
            the dealing of splits, modalities and transfer syntaxes depends on the cohort.
        rows: image height in pixels (default 1024, about 0.45-0.55 mm per pixel at the spine).
        cols: image width; default ``rows * 9 / 16`` rounded to a multiple of 8 (576 for 1024).
        grade_probabilities: marginal probability per grade, default
            normal 0.75, mild 0.12, moderate 0.08, severe 0.05 (realised counts vary because
            each patient has its own fracture propensity, so fractures cluster in patients).
        split_fractions: patient fractions of train/val/test (default 0.6/0.2/0.2).
        compress: when True (default) about half the files use RLE or JPEG 2000 lossless;
            otherwise only native syntaxes (explicit/implicit VR little endian, deflated).
        bare_names: when True (default) every 8th patient (in a seeded order) is written
            without the .dcm suffix, as PACS exports often are.
        overwrite: replace an earlier cohort in out_dir (only files this generator names);
            otherwise finding one raises FileExistsError.

    Returns:
        CohortSummary with the written paths, one PatientRecord per patient (with per-vertebra
        ground truth) and the cohort.json content.
    """
    if isinstance(patients, bool) or not isinstance(patients, (int, np.integer)) or patients < 1:
        raise ValueError(f"patients must be a positive integer, got {patients!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    rows = int(rows)
    cols = int(cols) if cols is not None else max(64, int(round(rows * 9 / 16 / 8)) * 8)
    _check_image_size(rows, cols)
    fractions = tuple(float(f) for f in split_fractions)
    if len(fractions) != 3 or any(f < 0 for f in fractions) or sum(fractions) <= 0:
        raise ValueError(f"split_fractions must be three non-negative numbers, got {split_fractions!r}")
    probs = _normalise_probabilities(grade_probabilities)
    patients, seed = int(patients), int(seed)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _clean_output(out, overwrite)
    (out / "images").mkdir(exist_ok=True)

    width = max(4, len(str(patients - 1)))
    cohort_rng = np.random.default_rng([seed, 0x5EED, 1])
    deal = cohort_rng.permutation(patients)
    syntax_cycle = _SYNTAX_CYCLE if compress else _NATIVE_SYNTAX_CYCLE
    acquisitions: list[_Acquisition] = [None] * patients  # type: ignore[list-item]
    for position, patient in enumerate(deal):
        acquisitions[int(patient)] = _Acquisition(
            modality=("DX", "CR")[(position // 2) % 2],
            photometric=("MONOCHROME2", "MONOCHROME1")[position % 2],
            transfer_syntax=syntax_cycle[position % len(syntax_cycle)],
            bare_name=bare_names and position % 8 == 7,
        )
    base_date = date(2022, 1, 3) + timedelta(days=int(cohort_rng.integers(0, 730)))

    records: list[dict[str, Any]] = []
    for index in range(patients):
        rng = np.random.default_rng([seed, 0x5EED, 2, index])
        rendered = render_patient(rng, rows, cols, probs)
        acquisition = acquisitions[index]
        stored = _quantise(rendered, acquisition.photometric, acquisition.modality, rng)
        patient_id = f"P{index:0{width}d}"
        entropy = ["spine-dfl synth", SYNTH_VERSION, str(seed), str(rows), str(cols), patient_id]
        uids = {
            "study": generate_uid(entropy_srcs=[*entropy, "study"]),
            "series": generate_uid(entropy_srcs=[*entropy, "series"]),
            "sop": generate_uid(entropy_srcs=[*entropy, "sop"]),
        }
        study_date = base_date + timedelta(days=int(rng.integers(0, 365)))
        ds = _build_dataset(
            patient_index=index, patient_id=patient_id, seed=seed, acquisition=acquisition, stored=stored,
            rendered=rendered, rng=rng, study_date=study_date, uids=uids,
        )
        _encode(ds, stored, acquisition.transfer_syntax)
        name = f"images/{patient_id}" + ("" if acquisition.bare_name else ".dcm")
        ds.save_as(out / name, enforce_file_format=True)
        records.append(dict(
            patient_id=patient_id, image=name, uids=uids, acquisition=acquisition, bits=stored.bits_stored,
            mm_per_px=rendered.mm_per_px, vertebrae=rendered.vertebrae,
        ))

    splits = _deal_splits([[v.label for v in r["vertebrae"]] for r in records], fractions, cohort_rng)
    patient_records = tuple(
        PatientRecord(
            patient_id=r["patient_id"], image=r["image"], sop_instance_uid=str(r["uids"]["sop"]),
            study_instance_uid=str(r["uids"]["study"]), series_instance_uid=str(r["uids"]["series"]),
            modality=r["acquisition"].modality, photometric=r["acquisition"].photometric,
            transfer_syntax=str(r["acquisition"].transfer_syntax), bits_stored=r["bits"], rows=rows, cols=cols,
            mm_per_px=r["mm_per_px"], split=split, vertebrae=r["vertebrae"],
        )
        for r, split in zip(records, splits)
    )
    return _write_tables(out, seed, rows, cols, probs, fractions, compress, patient_records)


def _write_tables(
    out: Path, seed: int, rows: int, cols: int, probs: dict[str, float], fractions: tuple[float, ...],
    compress: bool, records: tuple[PatientRecord, ...],
) -> CohortSummary:
    manifest_path, rois_path = out / "manifest.csv", out / "rois.csv"
    vertebrae_path, json_path = out / "vertebrae.csv", out / "cohort.json"
    with manifest_path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["image", "label", "vertebra", "patient_id", "split", "x_min", "y_min", "x_max", "y_max"])
        for p in records:
            for v in p.vertebrae:
                writer.writerow([p.image, v.label, v.level, p.patient_id, p.split, *v.roi])
    with rois_path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["sop_instance_uid", "image", "vertebra", "x_min", "y_min", "x_max", "y_max"])
        for p in records:
            for v in p.vertebrae:
                writer.writerow([p.sop_instance_uid, p.image, v.level, *v.roi])
    with vertebrae_path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow([
            "patient_id", "image", "sop_instance_uid", "vertebra", "label", "shape", "height_loss",
            "anterior_height_mm", "middle_height_mm", "posterior_height_mm", "reference_height_mm", "depth_mm",
            "centre_x", "centre_y", "angle_deg", "mm_per_px", "body_x_min", "body_y_min", "body_x_max", "body_y_max",
        ])
        for p in records:
            for v in p.vertebrae:
                writer.writerow([
                    p.patient_id, p.image, p.sop_instance_uid, v.level, v.label, v.shape, f"{v.height_loss:.4f}",
                    f"{v.anterior_height_mm:.3f}", f"{v.middle_height_mm:.3f}", f"{v.posterior_height_mm:.3f}",
                    f"{v.reference_height_mm:.3f}", f"{v.body.depth_mm:.3f}", f"{v.centre_x:.3f}", f"{v.centre_y:.3f}",
                    f"{v.angle_deg:.3f}", f"{v.mm_per_px:.5f}", *v.box,
                ])
    labels = [v.label for p in records for v in p.vertebrae]
    split_names = ("train", "val", "test")
    summary: dict[str, Any] = {
        "generator": "spine-dfl synth",
        "generator_version": SYNTH_VERSION,
        "seed": seed,
        "patients": len(records),
        "images": len(records),
        "vertebrae": len(labels),
        "rows": rows,
        "cols": cols,
        "levels": list(LABELLED_LEVELS),
        "class_names": list(CLASS_NAMES),
        "grade_probabilities": {k: round(v, 6) for k, v in probs.items()},
        "split_fractions": list(fractions),
        "compress": compress,
        "class_counts": {c: labels.count(c) for c in CLASS_NAMES},
        "split_patients": {s: sum(p.split == s for p in records) for s in split_names},
        "split_class_counts": {
            s: {c: sum(v.label == c for p in records if p.split == s for v in p.vertebrae) for c in CLASS_NAMES}
            for s in split_names
        },
        "shape_counts": {
            g: {sh: sum(v.label == g and v.shape == sh for p in records for v in p.vertebrae) for sh in SHAPES}
            for g in CLASS_NAMES[1:]
        },
        "transfer_syntaxes": dict(sorted(Counter(_SYNTAX_NAMES[p.transfer_syntax] for p in records).items())),
        "photometric": dict(sorted(Counter(p.photometric for p in records).items())),
        "modality": dict(sorted(Counter(p.modality for p in records).items())),
        "files": {"images": "images", "manifest": manifest_path.name, "rois": rois_path.name,
                  "vertebrae": vertebrae_path.name},
    }
    json_path.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return CohortSummary(
        out_dir=out, seed=seed, manifest_path=manifest_path, rois_path=rois_path, vertebrae_path=vertebrae_path,
        cohort_json_path=json_path, patients=records, summary=summary,
    )
