"""The 3D phantom's patient: habitus, bone density, curves, vertebrae with their grades, ribs.

Everything is in world mm (RAS+: +x the patient's right, +y anterior, +z superior), drawn from
one numpy Generator per patient.  A vertebral body is an elliptic cylinder in its own frame
(right, anterior, up) whose endplates a fracture deforms: wedge lowers the anterior part of the
superior endplate, biconcave depresses both endplates centrally, crush lowers the whole body
(most posteriorly).  Grades follow the 2D generator's definition (``synth.anatomy``): height
loss = 1 - min(Ha, Hm, Hp) / H_ref, the heights taken on the mid-sagittal line 10 % of the depth
inside the anterior and posterior walls and at mid-depth.  Normal bodies vary (taller than expected,
or natural wedging / endplate concavity up to the normal band's 15 %, next to mild's 20.5 %).
Transitional anatomy (TRANSITIONAL_KINDS, ~16 % of patients): 13 rib pairs (a T13, VerSe 28),
11 rib pairs, a sacralised L5 (bridged to the sacrum), a lumbarised S1 (a mobile L6, VerSe 25).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from spine_dfl.io.errors import InputError
from spine_dfl.synth.anatomy import DEFAULT_GRADE_PROBABILITIES, HEIGHT_LOSS_RANGES, SHAPES

__all__ = ["MEASURE_XI", "TRANSITIONAL_KINDS", "PhantomError", "PhantomPatient", "Vertebra", "draw_patient", "endplate_drops",
           "heights_mm"]

PHANTOM_VERSION = "1.0"
MEASURE_XI: tuple[float, float, float] = (0.8, 0.0, -0.8)  # anterior, middle, posterior (xi = +1 anterior wall)
TRANSITIONAL_KINDS = ("none", "sacralised_L5", "lumbarised_S1", "13_ribs", "11_ribs")
_TRANSITIONAL_P = (0.84, 0.05, 0.05, 0.03, 0.03)
# (height, depth, width) mm of a body at the anchor levels at size 1; interpolated between them
# (adult morphometry: L1 ~27 mm high, 30-35 mm deep, 40-45 mm wide; thoracic bodies smaller)
_DIMENSIONS = {"C6": (13.0, 15.0, 22.0), "C7": (14.0, 16.0, 25.0), "T1": (15.5, 17.0, 28.0), "T4": (17.5, 21.0, 29.0),
               "T8": (20.0, 26.0, 32.0), "T12": (24.5, 30.0, 38.0), "L1": (27.0, 32.0, 42.0), "L3": (28.5, 34.0, 46.0),
               "L5": (27.5, 35.0, 50.0), "L6": (26.5, 35.0, 50.0)}
_DISC = {"C": 5.0, "T": 5.0, "L": 10.0}


class PhantomError(InputError):
    """A bad phantom parameter (seed, index, transitional kind, voxel size, patient id); the message names it."""


@dataclass(frozen=True)
class Vertebra:
    """One mobile vertebra: VerSe label and level, its frame and size, its grade and deformation."""

    label: int
    level: str
    centre: np.ndarray  # (3,) world mm, body centre
    frame: np.ndarray  # (3, 3) columns: right, anterior, up (unit)
    height_mm: float  # undeformed body height
    reference_height_mm: float
    depth_mm: float
    width_mm: float
    grade: str
    shape: str  # wedge | biconcave | crush | none
    loss: float  # the deformation's loss parameter (height loss for fractures)
    ribs: bool = False


@dataclass(frozen=True)
class PhantomPatient:
    """A patient of the 3D phantom: habitus, density, curves, vertebrae (C6-L5/L6), sacrum frame."""

    index: int
    seed: int
    size: float
    trunk_lr_mm: float
    trunk_ap_mm: float
    fat_mm: float
    trabecular_hu: float
    cortical_hu: float
    kyphosis_deg: float
    lordosis_deg: float
    scoliosis_deg: float
    transitional: str
    rib_pairs: int
    vertebrae: tuple[Vertebra, ...]
    sacrum_centre: np.ndarray  # S1 superior endplate centre, world mm
    sacrum_frame: np.ndarray
    gas: tuple[tuple[float, float, float, float], ...] = field(default=())  # (x, y, z, radius) bowel gas pockets

    @property
    def last_rib_level(self) -> str:
        return [v.level for v in self.vertebrae if v.ribs][-1]


def endplate_drops(shape: str, loss: float, height: float, xi: np.ndarray, zeta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """How far (mm) the superior and inferior endplates move in at AP position ``xi`` (+1 anterior
    wall, -1 posterior) and LR position ``zeta``: exact at the measuring points of MEASURE_XI."""
    xi, zeta = np.asarray(xi, dtype=np.float64), np.asarray(zeta, dtype=np.float64)
    zero = np.zeros(np.broadcast(xi, zeta).shape)
    if shape == "wedge":
        return height * loss * np.clip((xi + 0.8) / 1.6, 0.0, 1.25) + zero, zero
    if shape == "biconcave":
        drop = height * loss / 2.0 * np.clip(1.0 - xi**2 - zeta**2, 0.0, 1.0)
        return drop, drop
    if shape == "crush":
        top = height * loss * (0.85 + 0.15 * np.clip((0.8 - xi) / 1.6, 0.0, 1.25))
        return top * 0.6, top * 0.4
    return zero, zero


def heights_mm(v: Vertebra) -> tuple[float, float, float]:
    """Ha, Hm, Hp of a vertebra, measured on its mid-sagittal line."""
    xi = np.array(MEASURE_XI)
    top, bottom = endplate_drops(v.shape, v.loss, v.height_mm, xi, np.zeros(3))
    ha, hm, hp = v.height_mm - top - bottom
    return float(ha), float(hm), float(hp)


def _levels(transitional: str) -> list[tuple[int, str]]:
    """(VerSe label, level) of the mobile vertebrae C6..L5 (T13 / L6 when transitional), top down."""
    levels = [(6, "C6"), (7, "C7")] + [(7 + i, f"T{i}") for i in range(1, 13)]
    if transitional == "13_ribs":
        levels.append((28, "T13"))
    levels += [(19 + i, f"L{i}") for i in range(1, 6)]
    if transitional == "lumbarised_S1":
        levels.append((25, "L6"))
    return levels


def _dimensions(level: str) -> tuple[float, float, float]:
    order = list(_DIMENSIONS)
    chain = ["C6", "C7"] + [f"T{i}" for i in range(1, 14)] + [f"L{i}" for i in range(1, 7)]
    position = {lv: i for i, lv in enumerate(chain)}
    anchors = np.array([position[lv] for lv in order], dtype=float)
    values = np.array([_DIMENSIONS[lv] for lv in order])
    p = position[level]
    return tuple(float(np.interp(p, anchors, values[:, k])) for k in range(3))  # type: ignore[return-value]


def _level_weight(level: str) -> float:
    """Relative fracture frequency of a level: peaks at the thoracolumbar junction and mid-thorax."""
    if level.startswith("C"):
        return 0.0
    if level in ("T11", "T12", "T13", "L1"):
        return 1.8
    if level in ("T6", "T7", "T8", "L2"):
        return 1.3
    return 0.8


def _grades(rng: np.random.Generator, levels: list[str]) -> list[str]:
    """Grades with a per-patient propensity (so fractures cluster in some patients) and a level
    weight; over the thoracic and lumbar levels the grades average DEFAULT_GRADE_PROBABILITIES."""
    names = list(DEFAULT_GRADE_PROBABILITIES)
    p = np.array([DEFAULT_GRADE_PROBABILITIES[g] for g in names])
    weights = np.array([_level_weight(lv) for lv in levels])
    weights = weights / weights[weights > 0].mean()
    propensity = float(rng.gamma(1.2, 1 / 1.2))
    # 1.07: what the clip at 0.9 takes off the mean
    p_frac = np.clip((1 - p[0]) * propensity * 1.07 * weights, 0.0, 0.9)
    fractured = rng.random(len(levels)) < p_frac
    kind = rng.choice(len(names) - 1, size=len(levels), p=p[1:] / p[1:].sum())
    return [names[1 + int(k)] if f else names[0] for f, k in zip(fractured, kind)]


def _deformation(rng: np.random.Generator, grade: str) -> tuple[str, float, float]:
    """(shape, loss parameter, undeformed height / reference height) of a graded vertebra."""
    lo, hi = HEIGHT_LOSS_RANGES[grade]
    target = float(rng.uniform(lo, hi))
    if grade == "normal":
        if target <= 0.0:  # taller than expected, undeformed
            return "none", 0.0, 1.0 - target
        return str(rng.choice(["wedge", "biconcave"])), target, 1.0  # natural wedging / endplate concavity
    return str(rng.choice(SHAPES, p=[0.5, 0.3, 0.2])), target, 1.0


def _rotation(axis: np.ndarray, angle: float) -> np.ndarray:
    axis = axis / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + math.sin(angle) * k + (1 - math.cos(angle)) * k @ k


def _tilts(rng: np.random.Generator, levels: list[str], kyphosis: float, lordosis: float, sacral_slope: float,
           scoliosis: float) -> tuple[np.ndarray, np.ndarray]:
    """Sagittal tilt (towards anterior) and coronal tilt of each level's up axis, radians, top down."""
    n = len(levels)
    lumbar = np.array([lv.startswith("L") for lv in levels])
    thoracic = np.array([lv.startswith("T") for lv in levels])
    weights_l = np.cumsum(lumbar.astype(float)) * lumbar  # lordosis grows towards the sacrum
    steps = np.zeros(n)
    steps[lumbar] = lordosis * weights_l[lumbar] / weights_l[lumbar].sum()
    steps[thoracic] = -kyphosis / thoracic.sum()
    # tilt of level i from the sacrum upwards: the sacral slope minus the lordosis below, plus kyphosis
    sagittal = np.empty(n)
    tilt = sacral_slope
    for i in range(n - 1, -1, -1):
        tilt -= steps[i]
        sagittal[i] = tilt
    s = np.linspace(0.0, 1.0, n)
    apex = rng.uniform(0.3, 0.7)
    coronal = scoliosis / 2.0 * np.cos(np.pi * (s - apex) / 0.6) * (np.abs(s - apex) < 0.6)
    return np.radians(sagittal), np.radians(coronal)


def draw_patient(seed: int, index: int, transitional: str | None = None) -> PhantomPatient:
    """Patient ``index`` of cohort seed ``seed`` (its own stream: the same whatever the cohort
    size).  ``transitional`` forces the kind of transitional anatomy (one of TRANSITIONAL_KINDS)."""
    for name, value in (("seed", seed), ("index", index)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise PhantomError(f"{name} must be a non-negative integer, got {value!r}")
    rng = np.random.default_rng([int(seed), 0x3D5F, int(index)])
    kind = str(rng.choice(TRANSITIONAL_KINDS, p=_TRANSITIONAL_P))
    if transitional is not None:
        if transitional not in TRANSITIONAL_KINDS:
            raise PhantomError(f"transitional must be one of {TRANSITIONAL_KINDS}, got {transitional!r}")
        kind = transitional
    size = float(rng.uniform(0.9, 1.1))
    osteoporosis = float(rng.beta(2.0, 3.0))
    kyphosis, lordosis = float(rng.uniform(20, 50)), float(rng.uniform(35, 60))
    scoliosis = float(rng.choice([0.0, rng.uniform(3, 10), rng.uniform(10, 25)], p=[0.5, 0.35, 0.15]))
    sacral_slope = float(rng.uniform(32, 48))
    levels = _levels(kind)
    names = [lv for _, lv in levels]
    sagittal, coronal = _tilts(rng, names, kyphosis, lordosis, sacral_slope, scoliosis * rng.choice([-1, 1]))
    grades = _grades(rng, names)  # C6, C7 always normal
    rib_pairs = {"13_ribs": 13, "11_ribs": 11}.get(kind, 12)
    vertebrae = []
    position = np.zeros(3)  # S1 superior endplate centre at the origin; shifted to the patient later
    below_half = 0.0
    axial = np.radians(rng.normal(0, 1.0) + scoliosis * 0.3 * np.sin(np.linspace(0, np.pi, len(levels))))
    for i in range(len(levels) - 1, -1, -1):
        label, level = levels[i]
        h, d, w = (x * size * float(rng.normal(1.0, 0.03)) for x in _dimensions(level))
        shape, loss, scale = _deformation(rng, grades[i])
        up = np.array([0.0, math.sin(sagittal[i]), math.cos(sagittal[i])])
        up = _rotation(np.array([0.0, 1.0, 0.0]), coronal[i]) @ up
        right = np.cross(np.array([0.0, 1.0, 0.0]), up)
        right /= np.linalg.norm(right)
        anterior = np.cross(up, right)
        frame = _rotation(up, axial[i]) @ np.stack([right, anterior, up], axis=1)
        disc = _DISC[level[0]] * size * float(rng.uniform(0.85, 1.15))
        height = h * scale
        position = position + up * (below_half + disc + height / 2.0)
        below_half = height / 2.0
        ribs = level.startswith("T") and int(level[1:]) <= rib_pairs
        vertebrae.append(Vertebra(label, level, position.copy(), frame, height, h, d, w, grades[i], shape, loss, ribs))
    vertebrae.reverse()
    # sagittal balance: turn the chain about the sacrum so that C7 stands above S1 (+- a few mm)
    c7 = next(v for v in vertebrae if v.level == "C7").centre
    lean = math.atan2(c7[1] - rng.normal(0, 15), c7[2])
    turn = _rotation(np.array([1.0, 0.0, 0.0]), lean)
    c, s = math.cos(math.radians(sacral_slope)), math.sin(math.radians(sacral_slope))
    sacrum_frame = turn @ np.stack([np.array([1.0, 0, 0]), np.array([0, c, -s]), np.array([0, s, c])], axis=1)
    vertebrae = [Vertebra(v.label, v.level, turn @ v.centre, turn @ v.frame, v.height_mm, v.reference_height_mm,
                          v.depth_mm, v.width_mm, v.grade, v.shape, v.loss, v.ribs) for v in vertebrae]
    trunk_lr = float(rng.uniform(290, 370)) * size
    trunk_ap = float(rng.uniform(190, 260)) * size
    gas = tuple((float(rng.uniform(-90, 90)), float(rng.uniform(40, 110)), float(rng.uniform(30, 200)),
                 float(rng.uniform(8, 22))) for _ in range(int(rng.integers(2, 7))))
    return PhantomPatient(
        index=index, seed=seed, size=size, trunk_lr_mm=trunk_lr, trunk_ap_mm=trunk_ap,
        fat_mm=float(rng.uniform(8, 35)), trabecular_hu=float(300 - 200 * osteoporosis),
        cortical_hu=float(rng.uniform(1100, 1500) - 300 * osteoporosis), kyphosis_deg=kyphosis, lordosis_deg=lordosis,
        scoliosis_deg=abs(scoliosis), transitional=kind, rib_pairs=rib_pairs, vertebrae=tuple(vertebrae),
        sacrum_centre=np.zeros(3), sacrum_frame=sacrum_frame, gas=gas,
    )
