"""What a phantom patient truly is: its grades table and its transitional anatomy and anchors.

The grade of a vertebra is its drawn 3D deformation measured as ``spine_dfl.synth`` measures a
body: height loss = 1 - min(Ha, Hm, Hp) / H_ref, the heights taken on the mid-sagittal line 10 %
of the depth inside the anterior and posterior walls and at mid-depth (``anatomy.heights_mm``).
"""

from __future__ import annotations

from dataclasses import dataclass

from spine_dfl.phantom.anatomy import PhantomPatient, heights_mm

__all__ = ["GRADES_COLUMNS", "GradeRow", "PhantomTruth", "grade_rows", "phantom_truth"]

GRADES_COLUMNS: tuple[str, ...] = ("vertebra", "label", "grade", "shape", "height_loss")


@dataclass(frozen=True)
class GradeRow:
    """One vertebra of the grades table (level name, VerSe label, Genant grade name, shape, heights)."""

    level: str
    label: int
    grade: str
    shape: str  # "none" for a normal vertebra (its natural wedging or concavity is not a fracture)
    height_loss: float
    anterior_height_mm: float
    middle_height_mm: float
    posterior_height_mm: float
    reference_height_mm: float


@dataclass(frozen=True)
class PhantomTruth:
    """Transitional anatomy and the anchors of level counting, world RAS mm."""

    rib_pairs: int
    transitional: str  # one of anatomy.TRANSITIONAL_KINDS
    last_rib_level: str
    last_rib_label: int
    anchors: dict[str, tuple[float, float, float]]  # s1_endplate_centre, last_rib_body_centre, c7/t1_body_centre


def grade_rows(patient: PhantomPatient) -> tuple[GradeRow, ...]:
    """The grades table of every mobile vertebra, top down."""
    rows = []
    for v in patient.vertebrae:
        ha, hm, hp = heights_mm(v)
        loss = 1.0 - min(ha, hm, hp) / v.reference_height_mm
        rows.append(GradeRow(v.level, v.label, v.grade, v.shape if v.grade != "normal" else "none", float(loss),
                             ha, hm, hp, float(v.reference_height_mm)))
    return tuple(rows)


def phantom_truth(patient: PhantomPatient) -> PhantomTruth:
    """Rib pairs, transitional kind, the last rib-bearing vertebra and the anchors' world positions."""
    by_level = {v.level: v for v in patient.vertebrae}
    last = [v for v in patient.vertebrae if v.ribs][-1]
    anchors = {
        "s1_endplate_centre": tuple(float(x) for x in patient.sacrum_centre),
        "last_rib_body_centre": tuple(float(x) for x in last.centre),
        "c7_body_centre": tuple(float(x) for x in by_level["C7"].centre),
        "t1_body_centre": tuple(float(x) for x in by_level["T1"].centre),
    }
    return PhantomTruth(patient.rib_pairs, patient.transitional, last.level, last.label, anchors)  # type: ignore[arg-type]
