"""The phantom's CT: a patient of ``anatomy`` rasterised into HU with partial-volume edges.

The array is stored LPS-like (i towards the patient's left, j posterior, k superior: an affine
with negative x and y steps), as scanners store CT, so every consumer must use the affine.  Each
structure is evaluated only in its bounding box.  Outputs: HU (int16), the whole-vertebra label
mask in VerSe numbering (body and posterior elements; 26 the sacrum), the body-only labels, the
soft body coverage of each vertebra (for silhouettes finer than a voxel), body centroids.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from spine_dfl.phantom.anatomy import PhantomError, PhantomPatient, Vertebra, endplate_drops
from spine_dfl.phantom.truth import GradeRow, PhantomTruth, grade_rows, phantom_truth

__all__ = ["PhantomCT", "build_ct", "check_voxel_mm"]

_SOFT, _FAT, _LUNG, _DISC_HU = 40.0, -100.0, -850.0, 80.0


@dataclass(frozen=True)
class PhantomCT:
    """A rasterised patient.  ``hu`` int16, ``labels`` / ``body_labels`` uint8 in VerSe numbers (whole
    vertebrae with the sacrum as 26 / bodies only), all (I, J, K) with ``affine`` voxel -> RAS mm.
    ``body_coverage`` maps a label to (the index slices of its box, the body's partial-volume
    coverage there); ``centroids`` are body centroids in voxel indices; ``grades`` and ``truth``
    come from ``phantom.truth``."""

    hu: np.ndarray
    labels: np.ndarray
    body_labels: np.ndarray
    affine: np.ndarray
    voxel_mm: float
    centroids: dict[int, np.ndarray]
    body_coverage: dict[int, tuple[tuple[slice, slice, slice], np.ndarray]]
    patient: PhantomPatient
    grades: tuple[GradeRow, ...]
    truth: PhantomTruth


class _Canvas:
    """The HU volume with its world axes (separable: the affine is diagonal)."""

    def __init__(self, lo: np.ndarray, hi: np.ndarray, voxel: float):
        self.voxel = voxel
        n = np.ceil((hi - lo) / voxel).astype(int) + 1
        # i runs towards -x (left), j towards -y (posterior), k towards +z: origin at (hi_x, hi_y, lo_z)
        self.affine = np.diag([-voxel, -voxel, voxel, 1.0])
        self.affine[:3, 3] = [hi[0], hi[1], lo[2]]
        self.axes = [hi[0] - voxel * np.arange(n[0]), hi[1] - voxel * np.arange(n[1]), lo[2] + voxel * np.arange(n[2])]
        self.hu = np.full(tuple(n), -1000.0, dtype=np.float32)
        self.labels = np.zeros(tuple(n), dtype=np.uint8)
        self.body_labels = np.zeros(tuple(n), dtype=np.uint8)

    def box(self, lo: np.ndarray, hi: np.ndarray) -> tuple[tuple[slice, slice, slice], list[np.ndarray]] | None:
        """Index slices covering the world box [lo, hi], and the world coordinates there (broadcastable)."""
        slices, coords = [], []
        for axis, values in enumerate(self.axes):
            inside = np.nonzero((values >= lo[axis]) & (values <= hi[axis]))[0]
            if len(inside) == 0:
                return None
            s = slice(int(inside[0]), int(inside[-1]) + 1)
            slices.append(s)
            shape = [1, 1, 1]
            shape[axis] = s.stop - s.start
            coords.append(values[s].reshape(shape))
        return tuple(slices), coords  # type: ignore[return-value]

    def oriented_box(self, centre: np.ndarray, frame: np.ndarray, lo: np.ndarray, hi: np.ndarray):
        """``box`` of the world bounds of a box [lo, hi] given in the frame's (right, anterior, up) mm."""
        corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
        world = corners @ frame.T + centre
        return self.box(world.min(axis=0) - self.voxel, world.max(axis=0) + self.voxel)

    def paint(self, slices, coverage: np.ndarray, hu: float | np.ndarray, label: int = 0, body: int = 0) -> None:
        block = self.hu[slices]
        block += (np.asarray(hu, dtype=np.float32) - block) * coverage
        if label:
            self.labels[slices][coverage >= 0.5] = label
        if body:
            self.body_labels[slices][coverage >= 0.5] = body


def _soft(distance: np.ndarray, voxel: float) -> np.ndarray:
    """Partial-volume coverage from a signed distance inside (mm, positive inside)."""
    return np.clip(distance / voxel + 0.5, 0.0, 1.0).astype(np.float32)


def _local(coords: list[np.ndarray], centre: np.ndarray, frame: np.ndarray) -> list[np.ndarray]:
    """World coordinates -> the frame's (right, anterior, up) coordinates, mm."""
    d = [coords[k] - centre[k] for k in range(3)]
    return [d[0] * frame[0, a] + d[1] * frame[1, a] + d[2] * frame[2, a] for a in range(3)]


def _body(canvas: _Canvas, v: Vertebra, patient: PhantomPatient, label: int) -> np.ndarray | None:
    """Paint one vertebral body (cortical shell, trabecular core); return its coverage in its box."""
    reach = max(v.width_mm, v.depth_mm, v.height_mm) * 0.75 + 2 * canvas.voxel
    found = canvas.box(v.centre - reach, v.centre + reach)
    if found is None:
        return None
    slices, coords = found
    r, a, u = _local(coords, v.centre, v.frame)
    xi, zeta = a / (v.depth_mm / 2), r / (v.width_mm / 2)
    radial = (1.0 - np.sqrt(xi**2 + zeta**2)) * min(v.depth_mm, v.width_mm) / 2
    drop_top, drop_bottom = endplate_drops(v.shape, v.loss, v.height_mm, np.clip(xi, -1, 1), np.clip(zeta, -1, 1))
    top = v.height_mm / 2 - drop_top - u
    bottom = u + v.height_mm / 2 - drop_bottom
    inside = np.minimum(np.minimum(radial, top), bottom)
    outer = _soft(inside, canvas.voxel)
    inner = _soft(inside - 2.0, canvas.voxel)  # a 2 mm cortical shell (endplates and walls)
    canvas.paint(slices, outer, patient.cortical_hu, label, label)
    impaction = 120.0 if v.grade in ("moderate", "severe") else 0.0  # dense band under a fractured endplate
    density = patient.trabecular_hu + impaction * _soft(4.0 - np.minimum(top, bottom), canvas.voxel)
    canvas.paint(slices, inner, density)
    return slices, outer


def _arch(canvas: _Canvas, v: Vertebra, patient: PhantomPatient) -> None:
    """Pedicles and laminae around the canal, the spinous and the transverse processes."""
    canal_r = 7.5 * patient.size
    canal_y = -(v.depth_mm / 2 + canal_r + 1.0)
    spine_len = (30.0 if v.level.startswith("L") else 38.0) * patient.size
    tilt = 0.9 if v.level.startswith("T") else 0.35  # thoracic spinous processes point downwards
    half_w = v.width_mm / 2 + 22.0 * patient.size + 1
    drop = tilt * spine_len + 6
    found = canvas.oriented_box(v.centre, v.frame, np.array([-half_w, canal_y - canal_r - spine_len - 1, -drop]),
                                np.array([half_w, -v.depth_mm / 2 + 3.0, max(v.height_mm * 0.45, 6.0) + 1]))
    if found is None:
        return
    slices, (r, a, u) = found[0], _local(found[1], v.centre, v.frame)
    ring = np.sqrt(r**2 + (a - canal_y) ** 2)
    arch_h = v.height_mm * 0.45
    shell = np.minimum(np.minimum(ring - canal_r, canal_r + 5.0 - ring), arch_h - np.abs(u))
    shell = np.where(a < -v.depth_mm / 2 + 2.0, shell, -10.0)
    along = -(a - canal_y)  # posterior distance from the canal centre
    spinous = np.minimum(np.minimum(along - canal_r, canal_r + spine_len - along),
                         np.minimum(4.0 - np.abs(r), 5.0 - np.abs(u + tilt * np.clip(along - canal_r, 0, None))))
    transverse = np.minimum(np.minimum(np.abs(r) - 5.0, v.width_mm / 2 + 22.0 * patient.size - np.abs(r)),
                            np.minimum(5.0 - np.abs(a - canal_y), 4.5 - np.abs(u)))
    coverage = _soft(np.maximum(np.maximum(shell, spinous), transverse), canvas.voxel)
    canvas.paint(slices, coverage, patient.cortical_hu * 0.5, v.label)


def _disc(canvas: _Canvas, upper: Vertebra, lower: Vertebra, hu: float) -> None:
    centre = (upper.centre + lower.centre) / 2
    frame = (upper.frame + lower.frame) / 2
    gap = float(np.linalg.norm(upper.centre - lower.centre)) - upper.height_mm / 2 - lower.height_mm / 2 + 6.0
    depth, width = (upper.depth_mm + lower.depth_mm) / 2, (upper.width_mm + lower.width_mm) / 2
    found = canvas.box(centre - max(depth, width), centre + max(depth, width))
    if found is None:
        return
    r, a, u = _local(found[1], centre, frame)
    radial = (1.0 - np.sqrt((a / (depth / 2)) ** 2 + (r / (width / 2)) ** 2)) * min(depth, width) / 2
    canvas.paint(found[0], _soft(np.minimum(radial, gap / 2 - np.abs(u)), canvas.voxel), hu)


def _sacrum(canvas: _Canvas, patient: PhantomPatient, below: Vertebra, fused: bool) -> None:
    """Five (four under an L6) fused segments down from S1's superior endplate, the column concave
    anteriorly (the lower segments come forward and turn with the curve), with the alae."""
    frame = patient.sacrum_frame
    right, anterior, up = frame[:, 0], frame[:, 1], frame[:, 2]
    depth, width = below.depth_mm * 1.05, below.width_mm * 1.05
    top = 0.0
    for s in range(4 if patient.transitional == "lumbarised_S1" else 5):  # S1 became the mobile L6
        scale = 1.0 - 0.17 * s
        height = 22.0 * patient.size * (1.0 - 0.12 * s)
        tilt = 3.0 * s / 20.0  # slope of the 1.5 s^2 mm forward curve
        seg_up = (up - anterior * tilt) / math.hypot(1.0, tilt)
        seg_frame = np.stack([right, np.cross(seg_up, right), seg_up], axis=1)
        centre = patient.sacrum_centre - up * (top + height / 2) + anterior * (1.5 * s * s)
        top += height * 0.97  # fused: the segments overlap a little
        v = Vertebra(26, "S1", centre, seg_frame, height, height, depth * scale, width * scale, "normal", "none", 0.0)
        result = _body(canvas, v, patient, 26 if s == 0 else 0)
        if s > 0 and result is not None:
            canvas.labels[result[0]][result[1] >= 0.5] = 26
    for side in (-1.0, 1.0):  # alae: towards the iliac joints
        centre = patient.sacrum_centre - frame[:, 2] * 25 + frame[:, 0] * side * (width / 2 + 18) - frame[:, 1] * 10
        found = canvas.box(centre - 35, centre + 35)
        if found is not None:
            r, a, u = _local(found[1], centre, frame)
            inside = 1.0 - np.sqrt((r / 28) ** 2 + (a / 22) ** 2 + (u / 24) ** 2)
            canvas.paint(found[0], _soft(inside * 22, canvas.voxel), patient.cortical_hu * 0.55, 26)
    if fused:  # a sacralised L5: bone bridges the L5-S1 space
        lower_top = Vertebra(26, "S1", patient.sacrum_centre, frame, 1, 1, depth, width, "normal", "none", 0.0)
        _disc(canvas, below, lower_top, patient.cortical_hu * 0.5)


def _iliac(canvas: _Canvas, patient: PhantomPatient) -> None:
    """Iliac wings: curved plates lateral of the sacrum, crests near L4-L5."""
    for side in (-1.0, 1.0):
        centre = patient.sacrum_centre + np.array([side * 95.0 * patient.size, -15.0, 10.0])
        found = canvas.box(centre - 90, centre + 90)
        if found is None:
            continue
        x, y, z = (found[1][k] - centre[k] for k in range(3))
        radius = np.sqrt((x / 75) ** 2 + (y / 60) ** 2 + (z / 85) ** 2)
        plate = np.minimum(np.minimum((radius - 0.9) * 70, (1.0 - radius) * 70), side * x + 25)
        canvas.paint(found[0], _soft(np.minimum(plate, 60 - z), canvas.voxel), patient.cortical_hu * 0.5)


_RIB_WIDTH = (0.5, 0.65, 0.77, 0.86, 0.92, 0.96, 0.99, 1.0, 1.0, 1.0, 0.98, 0.95, 0.92)  # thorax narrows upwards


def _rib_path(patient: PhantomPatient, v: Vertebra, n: int, span: float, side: float) -> np.ndarray:
    """Points (N, 3) of one rib: from the costovertebral joint beside the body back and out to the
    rib angle, then round the inside of the thoracic wall towards the sternum, descending."""
    f = _RIB_WIDTH[min(n, len(_RIB_WIDTH) - 1)]
    lr = (patient.trunk_lr_mm / 2 - patient.fat_mm - 15) * f
    front = float(_trunk_centre_y(patient, np.array([v.centre[2]]))[0]) + patient.trunk_ap_mm / 2 - patient.fat_mm - 15
    right, anterior = v.frame[:, 0], v.frame[:, 1]
    joint = v.centre + side * right * (v.width_mm / 2 + 1.0) - anterior * (v.depth_mm * 0.35)
    angle_x = min(55.0 * patient.size * f, 0.8 * lr)
    angle = np.array([v.centre[0] + side * angle_x, joint[1] - 22.0 * patient.size, joint[2] - 4.0])
    theta_a = -math.acos(angle_x / lr)  # the ellipse point at the rib angle (posterior half)
    ap = max((front - angle[1]) / (1.0 - math.sin(theta_a)), 20.0)
    yc = front - ap
    t = np.linspace(0.0, 1.0, 12)[:, None]
    head = joint + (angle - joint) * t
    theta = theta_a + np.linspace(0.0, span, max(int(220 * span), 4)) * (math.pi / 2 - 0.35 - theta_a)
    drop = 55.0 * patient.size * ((theta - theta_a) / (math.pi / 2 - theta_a)) ** 1.2
    body = np.stack([v.centre[0] + side * lr * np.cos(theta), yc + ap * np.sin(theta), angle[2] - drop], axis=1)
    return np.concatenate([head, body], axis=0)


def _ribs(canvas: _Canvas, patient: PhantomPatient) -> None:
    """Rib pairs of the rib-bearing vertebrae, curving round the thorax; the last pair short (floating),
    the one above shorter than the rest."""
    bearing = [v for v in patient.vertebrae if v.ribs]
    for n, v in enumerate(bearing):
        span = 1.0 if n < len(bearing) - 2 else (0.55 if n == len(bearing) - 2 else 0.3)
        for side in (-1.0, 1.0):
            _tube(canvas, _rib_path(patient, v, n, span, side), 4.0 * patient.size, 0.5 * patient.cortical_hu)


def _tube(canvas: _Canvas, points: np.ndarray, radius: float, hu: float) -> None:
    """A tube along densely sampled points: each voxel near a point takes its distance to the nearest
    point (all points at once), then the tube is painted with partial-volume edges."""
    lo, hi = points.min(axis=0) - radius - 2, points.max(axis=0) + radius + 2
    found = canvas.box(lo, hi)
    if found is None:
        return
    slices, coords = found
    shape = tuple(s.stop - s.start for s in slices)
    axes = [c.reshape(-1) for c in coords]
    index = np.stack([np.searchsorted(-axes[0], -points[:, 0]), np.searchsorted(-axes[1], -points[:, 1]),
                      np.searchsorted(axes[2], points[:, 2])], axis=1)
    reach = int(math.ceil((radius + 2) / canvas.voxel))
    steps = np.arange(-reach, reach + 1)
    offsets = np.stack(np.meshgrid(steps, steps, steps, indexing="ij"), axis=-1).reshape(-1, 3)
    cells = (index[:, None, :] + offsets[None, :, :]).reshape(-1, 3)
    owner = np.repeat(np.arange(len(points)), len(offsets))
    valid = ((cells >= 0) & (cells < np.array(shape))).all(axis=1)
    cells, owner = cells[valid], owner[valid]
    world = np.stack([axes[a][cells[:, a]] for a in range(3)], axis=1)
    dist = np.sqrt(((world - points[owner]) ** 2).sum(axis=1)).astype(np.float32)
    best = np.full(int(np.prod(shape)), np.inf, dtype=np.float32)
    np.minimum.at(best, np.ravel_multi_index(cells.T, shape), dist)
    canvas.paint(slices, _soft(radius - best.reshape(shape), canvas.voxel), hu)


def _trunk_centre_y(patient: PhantomPatient, z: np.ndarray) -> np.ndarray:
    """The trunk's AP centre at height z: its back lies ~75-95 mm behind the vertebral bodies."""
    order = np.argsort([v.centre[2] for v in patient.vertebrae])
    zs = np.array([patient.vertebrae[i].centre[2] for i in order])
    ys = np.array([patient.vertebrae[i].centre[1] for i in order])
    back = 85.0 * patient.size + patient.fat_mm * 0.5
    return np.interp(z, zs, ys) - back + patient.trunk_ap_mm / 2


def _soft_tissue(canvas: _Canvas, patient: PhantomPatient) -> None:
    """Trunk (fat layer, muscle/organs), lungs in the thorax, bowel gas in the abdomen."""
    x, y, z = np.meshgrid(*canvas.axes, indexing="ij", sparse=True)
    centre_y = _trunk_centre_y(patient, z)
    # squared elliptic radius, float32; the fat layer is the outer fat_mm of the ellipse's minor half-axis
    s = ((x / (patient.trunk_lr_mm / 2)).astype(np.float32) ** 2
         + ((y - centre_y) / (patient.trunk_ap_mm / 2)).astype(np.float32) ** 2)
    inner = max(1.0 - patient.fat_mm / (min(patient.trunk_lr_mm, patient.trunk_ap_mm) / 2), 0.0) ** 2
    canvas.hu.fill(-1000.0)
    canvas.hu[s < 1.0] = _FAT
    canvas.hu[s < inner] = _SOFT
    t1 = next(v for v in patient.vertebrae if v.level == "T1").centre
    diaphragm = next(v for v in patient.vertebrae if v.level == "T11").centre[2]  # the domes; lower behind
    mid_z = (t1[2] + diaphragm) / 2
    lung_y = float(_trunk_centre_y(patient, np.array([mid_z]))[0])
    for side in (-1.0, 1.0):
        c = np.array([side * patient.trunk_lr_mm * 0.2, lung_y, mid_z])
        half = np.array([patient.trunk_lr_mm * 0.17, patient.trunk_ap_mm * 0.33, (t1[2] - diaphragm) / 2 + 15])
        found = canvas.box(c - half, c + half)
        if found is not None:
            q = 1.0 - np.sqrt(sum(((found[1][k] - c[k]) / half[k]) ** 2 for k in range(3)))
            canvas.paint(found[0], _soft(q * half.min(), canvas.voxel), _LUNG)
    for gx, gy, gz, gr in patient.gas:
        c = np.array([gx, float(_trunk_centre_y(patient, np.array([gz]))[0]) + gy * 0.5, gz])
        found = canvas.box(c - gr, c + gr)
        if found is not None:
            q = gr - np.sqrt(sum((found[1][k] - c[k]) ** 2 for k in range(3)))
            canvas.paint(found[0], _soft(q, canvas.voxel), -950.0)


def _centroid(painted: tuple[tuple[slice, slice, slice], np.ndarray]) -> np.ndarray:
    """Coverage-weighted centroid (voxel indices) of a painted body: the deformed body's own centre."""
    slices, coverage = painted
    total = float(coverage.sum())
    sums = [float((coverage.sum(axis=tuple(a for a in range(3) if a != axis)) * np.arange(s.start, s.stop)).sum())
            for axis, s in enumerate(slices)]
    return np.array(sums) / total


def check_voxel_mm(voxel_mm: object) -> float:
    """The voxel size as a float, 0.3-5 mm (finer does not fit in memory, coarser loses the bodies)."""
    try:
        value = float(voxel_mm)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        value = float("nan")
    if isinstance(voxel_mm, bool) or not 0.3 <= value <= 5.0:
        raise PhantomError(f"voxel_mm must be between 0.3 and 5 mm, got {voxel_mm!r}")
    return value


def build_ct(patient: PhantomPatient, voxel_mm: float = 2.0) -> PhantomCT:
    """Rasterise ``patient`` at ``voxel_mm`` (isotropic), C6 to ~170 mm below the S1 endplate (the
    whole sacrum), each structure evaluated only in its box."""
    voxel_mm = check_voxel_mm(voxel_mm)
    top = max(v.centre[2] for v in patient.vertebrae) + 20
    ys = [v.centre[1] for v in patient.vertebrae]
    lo = np.array([-patient.trunk_lr_mm / 2 - 10, min(ys) - 100.0 * patient.size - patient.fat_mm, -170.0])
    hi = np.array([patient.trunk_lr_mm / 2 + 10, max(ys) - 75.0 * patient.size + patient.trunk_ap_mm + 10, top])
    canvas = _Canvas(lo, hi, float(voxel_mm))
    _soft_tissue(canvas, patient)
    mobile = list(patient.vertebrae)
    for upper, lower in zip(mobile, mobile[1:]):
        _disc(canvas, upper, lower, _DISC_HU)
    lowest = mobile[-1]
    s1_disc = Vertebra(26, "S1", patient.sacrum_centre, patient.sacrum_frame, 1, 1, lowest.depth_mm, lowest.width_mm,
                       "normal", "none", 0.0)
    _disc(canvas, lowest, s1_disc, _DISC_HU)
    _iliac(canvas, patient)
    _sacrum(canvas, patient, lowest, fused=patient.transitional == "sacralised_L5")
    _ribs(canvas, patient)
    coverage = {}
    for v in mobile:
        _arch(canvas, v, patient)
        painted = _body(canvas, v, patient, v.label)
        if painted is not None:
            coverage[v.label] = painted
    inverse = np.linalg.inv(canvas.affine)
    centroids = {v.label: _centroid(coverage[v.label]) if v.label in coverage else inverse[:3, :3] @ v.centre + inverse[:3, 3]
                 for v in mobile}
    centroids[26] = inverse[:3, :3] @ (patient.sacrum_centre - patient.sacrum_frame[:, 2] * 11 * patient.size) + inverse[:3, 3]
    hu = np.clip(np.rint(canvas.hu), -1024, 3071).astype(np.int16)
    return PhantomCT(hu, canvas.labels, canvas.body_labels, canvas.affine, float(voxel_mm), centroids, coverage, patient,
                     grade_rows(patient), phantom_truth(patient))
