"""Cone-beam projection geometry: a point source, a flat detector, and the 3x4 matrix between them.

World = RAS+ mm (the NIfTI affine's frame: +x the patient's right, +y anterior, +z superior).
Detector pixels are continuous (x = column, y = row), the top-left corner of the top-left pixel at
(0, 0), so pixel (row r, col c) has its centre at (c + 0.5, r + 0.5).  The image is the detector
seen from the source: columns run along ``d x up`` and rows towards the feet, where ``d`` is the
central ray (source -> detector).  A lateral with the source on the patient's left (right side to
the detector, ViewPosition RL) therefore has anterior on the image's left (PatientOrientation
``P\\F``), one with the source on the right (LL) ``A\\F``, and an AP (source anterior) ``L\\F``.

``projection_matrix`` is the one record every overlay, ROI and six-point position is checked
against; ``reoriented`` applies a stored rotation / mirror to it exactly as ``reorient_array``
applies it to the pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

__all__ = [
    "VIEWS", "DrrGeometry", "detector_frame", "map_points", "pixel_map", "patient_orientation", "project_points", "projection_matrix",
    "reorient_array", "reoriented", "reoriented_orientation", "source_position", "sub_geometry",
]

VIEWS = ("lateral", "ap")
_OPPOSITE = {"L": "R", "R": "L", "A": "P", "P": "A", "H": "F", "F": "H"}


@dataclass(frozen=True)
class DrrGeometry:
    """One exposure: view, source side, distances (mm), detector size and pitch, the isocentre.

    ``rotation_deg`` turns source and detector about the patient's superior axis through the
    isocentre (positive: counter-clockwise seen from the head), which is what an axially rotated
    patient looks like.  ``principal`` is the detector pixel the central ray hits (default: the
    detector's centre); moving it moves the beam over the film.
    """

    rows: int
    cols: int
    isocentre: tuple[float, float, float]
    view: str = "lateral"
    source_side: str = "left"
    sid_mm: float = 1000.0
    sod_mm: float = 850.0
    pixel_mm: float = 0.5
    principal: tuple[float, float] | None = None
    rotation_deg: float = 0.0

    def __post_init__(self) -> None:
        if self.view not in VIEWS:
            raise ValueError(f"view must be one of {VIEWS}, got {self.view!r}")
        if self.source_side not in ("left", "right"):
            raise ValueError(f"source_side must be 'left' or 'right', got {self.source_side!r}")
        if not (0 < self.sod_mm < self.sid_mm):
            raise ValueError(f"need 0 < SOD < SID, got SOD {self.sod_mm} and SID {self.sid_mm} mm")
        if self.pixel_mm <= 0 or self.rows < 1 or self.cols < 1:
            raise ValueError(f"detector needs positive pitch and size, got {self.pixel_mm} mm, {self.rows} x {self.cols}")

    @property
    def view_position(self) -> str:
        """DICOM ViewPosition: RL (right side to the detector), LL or AP."""
        if self.view == "ap":
            return "AP"
        return "RL" if self.source_side == "left" else "LL"

    @property
    def magnification(self) -> float:
        return self.sid_mm / self.sod_mm

    @property
    def principal_point(self) -> tuple[float, float]:
        return self.principal if self.principal is not None else (self.cols / 2.0, self.rows / 2.0)


def _axes(g: DrrGeometry) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit central ray d, column direction e_u and row direction e_v (world)."""
    if g.view == "ap":
        d = np.array([0.0, -1.0, 0.0])
    else:
        d = np.array([1.0, 0.0, 0.0]) if g.source_side == "left" else np.array([-1.0, 0.0, 0.0])
    a = math.radians(g.rotation_deg)
    turn = np.array([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0], [0.0, 0.0, 1.0]])
    d = turn @ d
    up = np.array([0.0, 0.0, 1.0])
    e_u = np.cross(d, up)
    return d, e_u / np.linalg.norm(e_u), -up


def source_position(g: DrrGeometry) -> np.ndarray:
    d, _, _ = _axes(g)
    return np.asarray(g.isocentre, dtype=np.float64) - g.sod_mm * d


def detector_frame(g: DrrGeometry) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """World position of the detector point (0, 0) (the top-left pixel's corner), and the unit
    column and row directions."""
    d, e_u, e_v = _axes(g)
    pu, pv = g.principal_point
    centre = source_position(g) + g.sid_mm * d
    return centre - (pu * e_u + pv * e_v) * g.pixel_mm, e_u, e_v


def projection_matrix(g: DrrGeometry) -> np.ndarray:
    """3x4 P: world (x, y, z, 1) -> (u w, v w, w), (u, v) continuous detector pixels; w = depth
    along the central ray from the source, in mm."""
    d, e_u, e_v = _axes(g)
    pu, pv = g.principal_point
    f = g.sid_mm / g.pixel_mm
    rows = np.stack([f * e_u + pu * d, f * e_v + pv * d, d])
    return np.concatenate([rows, -(rows @ source_position(g))[:, None]], axis=1)


def project_points(P: np.ndarray, xyz: np.ndarray) -> np.ndarray:
    """World points (N, 3) -> continuous detector pixels (N, 2)."""
    xyz = np.atleast_2d(np.asarray(xyz, dtype=np.float64))
    h = xyz @ np.asarray(P)[:, :3].T + np.asarray(P)[:, 3]
    return h[:, :2] / h[:, 2:3]


def _letters(direction: np.ndarray) -> str:
    """DICOM patient direction letters of a world vector, strongest first (components >= 0.25)."""
    names = (("R", "L"), ("A", "P"), ("H", "F"))
    order = np.argsort(-np.abs(direction))
    return "".join(names[i][0 if direction[i] > 0 else 1] for i in order if abs(direction[i]) >= 0.25)


def patient_orientation(g: DrrGeometry) -> tuple[str, str]:
    """PatientOrientation (0020,0020): the patient directions of increasing column and row."""
    _, e_u, e_v = _axes(g)
    return _letters(e_u), _letters(e_v)


def sub_geometry(g: DrrGeometry, x0: int, y0: int, x1: int, y1: int) -> DrrGeometry:
    """The same source and detector plane, restricted to the pixel window [x0, x1) x [y0, y1)."""
    pu, pv = g.principal_point
    return replace(g, rows=int(y1 - y0), cols=int(x1 - x0), principal=(pu - x0, pv - y0))


def pixel_map(rows: int, cols: int, k_rot90: int = 0, mirror: bool = False) -> tuple[np.ndarray, int, int]:
    """The 3x3 map of continuous homogeneous pixels for a film stored mirrored (left-right) and
    then turned by ``k_rot90`` counter-clockwise quarter turns (``reorient_array``), with the
    stored rows and cols."""
    out = np.eye(3)
    if mirror:
        out = np.array([[-1.0, 0.0, cols], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]) @ out
    for _ in range(k_rot90 % 4):
        # np.rot90: new[i, j] = old[j, cols - 1 - i]  ->  (x', y') = (y, cols - x)
        out = np.array([[0.0, 1.0, 0.0], [-1.0, 0.0, cols], [0.0, 0.0, 1.0]]) @ out
        rows, cols = cols, rows
    return out, rows, cols


def reoriented(P: np.ndarray, rows: int, cols: int, k_rot90: int = 0, mirror: bool = False) -> tuple[np.ndarray, int, int]:
    """P, rows and cols of the film stored as ``reorient_array`` stores its pixels."""
    step, rows, cols = pixel_map(rows, cols, k_rot90, mirror)
    return step @ np.asarray(P, dtype=np.float64), rows, cols


def map_points(step: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """Continuous pixels (N, 2) through a 3x3 ``pixel_map``."""
    xy = np.atleast_2d(np.asarray(xy, dtype=np.float64))
    h = xy @ step[:2, :2].T + step[:2, 2]
    return h


def reorient_array(image: np.ndarray, k_rot90: int = 0, mirror: bool = False) -> np.ndarray:
    """The pixels of ``reoriented``: mirrored left-right, then ``np.rot90(k_rot90)``."""
    out = image[:, ::-1] if mirror else image
    return np.ascontiguousarray(np.rot90(out, k_rot90 % 4))


def reoriented_orientation(orientation: tuple[str, str], k_rot90: int = 0, mirror: bool = False) -> tuple[str, str]:
    """PatientOrientation after ``reorient_array``: a mirror negates the column direction, each
    quarter turn makes (column, row) = (row, -column)."""
    flip = lambda s: "".join(_OPPOSITE[c] for c in s)  # noqa: E731
    col, row = orientation
    if mirror:
        col = flip(col)
    for _ in range(k_rot90 % 4):
        col, row = row, flip(col)
    return col, row
