"""Anatomy of a synthetic patient: vertebral body shapes, Genant grades, and the stacked spine.

Everything here is geometry in millimetres and random sampling; nothing is drawn.  The body
shape model (``BodyShape``, ``endplate_heights``, ``body_heights_mm``) is shared by rendering,
by the ground-truth records and by tests that measure the rendered mask.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import numpy as np

from spine_dfl.io.vocabulary import GENANT_GRADES, LEVELS

SYNTH_VERSION = "1.0"
"""Version of the generator's image model; part of every UID and of cohort.json."""

CLASS_NAMES: tuple[str, ...] = GENANT_GRADES  # the classes of the manifest, in order of severity
SHAPES: tuple[str, ...] = ("wedge", "biconcave", "crush")
LABELLED_LEVELS: tuple[str, ...] = LEVELS[LEVELS.index("T4") : LEVELS.index("L5") + 1]
CHAIN_LEVELS: tuple[str, ...] = ("T3", *LABELLED_LEVELS, "S1")

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
MEASURE_X: tuple[float, float, float] = (-0.8, 0.0, 0.8)


# --------------------------------------------------------------------------------------------
# Body shape (shared by rendering, the ground truth and tests that measure the mask)
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


def loss_profile(shape: str, x: np.ndarray, crush_anterior_share: float) -> np.ndarray:
    """P(x): relative height loss across the body (1 at the most depressed measurement point)."""
    if shape == "wedge":
        return np.clip((0.8 - x) / 1.6, 0.0, 1.12)
    if shape == "biconcave":
        return np.cos(np.clip(x, -1.0, 1.0) * (math.pi / 2.0)) ** 1.5
    if shape == "crush":
        a = crush_anterior_share
        return np.clip(a + (1.0 - a) * (x + 0.8) / 1.6, a - 0.02, 1.03)
    return np.zeros_like(x)


def endplate_heights(body: BodyShape, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Upper and lower endplate distances from the mid-line (mm) at x = 2u / depth in [-1, 1]."""
    x = np.clip(x, -1.0, 1.0)
    h_ref = body.reference_height_mm
    natural = h_ref * (1.0 + body.natural_wedge * x / 2.0 - body.concavity * (1.0 - x * x))
    loss = body.fracture_depth * h_ref * loss_profile(body.shape, x, body.crush_anterior_share)
    corner = body.corner_radius_mm * (np.clip((np.abs(x) - 0.86) / 0.14, 0.0, 1.0) ** 2)
    wave_top = body.wave_amplitude_mm[0] * np.sin(math.pi * (body.wave_frequency[0] * x + body.wave_phase[0]))
    wave_bot = body.wave_amplitude_mm[1] * np.sin(math.pi * (body.wave_frequency[1] * x + body.wave_phase[1]))
    top = natural / 2.0 - body.upper_share * loss - corner + wave_top
    bottom = natural / 2.0 - (1.0 - body.upper_share) * loss - corner + wave_bot
    return top, bottom


def wall_positions(body: BodyShape, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """u (mm) of the anterior and posterior walls at heights v (mm): drawn in by the waist,
    most at mid-height."""
    half_depth = body.depth_mm / 2.0
    half_height = body.reference_height_mm / 2.0
    waist = np.clip(1.0 - (v / half_height) ** 2, 0.0, 1.0)
    return -half_depth + body.anterior_waist_mm * waist, half_depth - body.posterior_waist_mm * waist


def body_heights_mm(body: BodyShape) -> tuple[float, float, float]:
    """(anterior, middle, posterior) body heights in mm at x = -0.8, 0, 0.8."""
    top, bottom = endplate_heights(body, np.asarray(MEASURE_X, dtype=np.float64))
    total = top + bottom
    return float(total[0]), float(total[1]), float(total[2])




# --------------------------------------------------------------------------------------------
# Patient sampling
# --------------------------------------------------------------------------------------------
@dataclass
class PatientAnatomy:
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


def normalise_probabilities(grade_probabilities: Mapping[str, float] | None) -> dict[str, float]:
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
    xs = np.asarray(MEASURE_X, dtype=np.float64)
    intact = body.__class__(**{**asdict(body), "fracture_depth": 0.0})
    top, bottom = endplate_heights(intact, xs)
    heights = top + bottom
    profile = loss_profile(body.shape, xs, body.crush_anterior_share)
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


def sample_anatomy(rng: np.random.Generator, probs: dict[str, float]) -> PatientAnatomy:
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
    for level in CHAIN_LEVELS:
        grade = grades.get(level, "normal")
        bodies[level] = _sample_body(rng, level, grade, scale, risk)
        disc = _LEVEL_DIMENSIONS_MM[level][2] * scale
        discs[level] = float(disc * rng.uniform(1.0 - 0.35 * degeneration, 1.08))
        spur = rng.random() < 0.15 + 0.4 * degeneration
        osteophytes[level] = float(rng.uniform(1.0, 4.0) * scale) if spur else 0.0
    return PatientAnatomy(
        sex=sex, age_years=age, scale=scale, habitus=habitus, propensity=propensity,
        bone_volume_fraction=bvf, kyphosis_deg=kyphosis, lordosis_deg=lordosis,
        sacral_slope_deg=sacral_slope, grades=grades, bodies=bodies, discs=discs, osteophytes=osteophytes,
    )


# --------------------------------------------------------------------------------------------
# Spine geometry: stack bodies and wedged discs from the sacrum upwards (world mm, Y up,
# X towards posterior); render.py fits the chain into the image.
# --------------------------------------------------------------------------------------------
def rotation(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s], [s, c]])


def _chord(body: BodyShape, upper: bool) -> tuple[np.ndarray, np.ndarray]:
    """Local (u, v) of the anterior and posterior corners of an endplate chord (at x = -+0.9)."""
    xs = np.array([-0.9, 0.9])
    top, bottom = endplate_heights(body, xs)
    us = xs * body.depth_mm / 2.0
    vs = top if upper else -bottom
    return np.array([us[0], vs[0]]), np.array([us[1], vs[1]])


def _body_wedge_angle(body: BodyShape) -> float:
    a_l, p_l = _chord(body, upper=False)
    a_u, p_u = _chord(body, upper=True)
    ang_l = math.atan2(p_l[1] - a_l[1], p_l[0] - a_l[0])
    ang_u = math.atan2(p_u[1] - a_u[1], p_u[0] - a_u[0])
    return ang_u - ang_l  # > 0: posterior taller (kyphotic)


def stack_spine(anat: PatientAnatomy, rng: np.random.Generator) -> dict[str, tuple[np.ndarray, float]]:
    """World frame (origin mm, angle rad) of every body in CHAIN_LEVELS."""
    levels = list(CHAIN_LEVELS)
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
    origin = -(rotation(psi) @ ((a_u + p_u) / 2.0))
    frames["S1"] = (origin, psi)
    for below, level in zip(levels[::-1][:-1], levels[::-1][1:]):
        origin_b, psi_b = frames[below]
        a_w, p_w = (rotation(psi_b) @ c + origin_b for c in _chord(anat.bodies[below], upper=True))
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
        origin = mid - rotation(psi) @ ((a_l + p_l) / 2.0)
        frames[level] = (origin, psi)
    return frames
