"""Images made in memory for the view classifier: mostly negatives (not lateral spine films).

- ``phantom_images``: from a 3D phantom CT (``phantom.build_ct``): a chest-like frontal DRR (the AP
  beam on the thorax), a pelvis AP, APs of random trunk windows, and axial and coronal CT slices in
  soft-tissue, bone and lung windows; and, if asked, lateral DRRs of random trunk windows turned
  canonical (positives of a second generator, kind ``phantom_lateral``);
- ``extremity_negatives``: DRRs of a limb CT built here: a soft-tissue cylinder with a fat rim, one
  or two cortical bone tubes with marrow, a joint (two bone ends with epiphyses and a gap, bent), or
  a fan of small bones (hand, foot);
- ``synthetic_negative``: noise, smooth random fields, random shapes, gradients, blank-ish images
  with text-like blocks, and mixtures.

Every function returns float32 images (rows, cols), bone (or whatever is dense) bright; the
letterbox and the percentile window come later (``gate.view.thumbnail``).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.ndimage import gaussian_filter, zoom

from spine_dfl.drr.geometry import DrrGeometry, patient_orientation
from spine_dfl.drr.render import Exposure, expose, hu_to_mu, line_integrals
from spine_dfl.phantom.anatomy import draw_patient
from spine_dfl.io.orientation import orientation_from_header
from spine_dfl.phantom.cohort import FILM_CUTS
from spine_dfl.phantom.volume import PhantomCT, build_ct

__all__ = ["PHANTOM_LATERAL", "SYNTHETIC_KINDS", "extremity_negatives", "phantom_images", "synthetic_negative"]

PHANTOM_LATERAL = "phantom_lateral"  # the kind of phantom_images' lateral films (positives)

_WINDOWS = {"soft": (40.0, 400.0), "bone": (400.0, 1800.0), "lung": (-600.0, 1500.0)}  # (centre, width) HU


def _drr(mu: torch.Tensor, affine: np.ndarray, rng: np.random.Generator, *, iso: np.ndarray, height_mm: float,
         width_mm: float, view: str, pixel_mm: float) -> np.ndarray:
    """One processed DRR of ``mu`` whose detector covers (width, height) mm at the isocentre."""
    sid = float(rng.choice([1000.0, 1150.0, 1500.0]))
    sod = sid - float(rng.uniform(130, 230))
    rows = max(32, int(height_mm * sid / sod / pixel_mm))
    cols = max(32, int(width_mm * sid / sod / pixel_mm))
    g = DrrGeometry(rows=rows, cols=cols, isocentre=tuple(float(v) for v in iso), view=view,
                    source_side=("left", "right")[int(rng.integers(0, 2))], sid_mm=sid, sod_mm=sod, pixel_mm=pixel_mm,
                    rotation_deg=float(rng.normal(0.0, 8.0)))
    exposure = Exposure(photons=float(rng.uniform(5e3, 3e4)), unsharp_sigma_px=max(2.0, 15.0 / pixel_mm),
                        unsharp_amount=float(rng.uniform(0.5, 2.5)))
    return expose(line_integrals(mu, affine, g), exposure, rng)


def _slice_image(hu: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    centre, width = _WINDOWS[str(rng.choice(list(_WINDOWS)))]
    return np.clip((hu.astype(np.float32) - (centre - width / 2)) / width, 0.0, 1.0)


def _ct_slices(ct: PhantomCT, rng: np.random.Generator, count: int) -> list[np.ndarray]:
    """Axial (head-to-foot position random) and coronal (near the spine) slices, shown as a viewer
    would: rows anterior to posterior or head to foot (the orientation is drawn later anyway)."""
    hu = ct.hu
    out = []
    for i in range(count):
        if i % 2 == 0:
            k = int(rng.integers(int(hu.shape[2] * 0.1), int(hu.shape[2] * 0.95)))
            image = hu[:, :, k].T  # rows: j (posterior), cols: i
        else:
            j = int(rng.integers(int(hu.shape[1] * 0.25), int(hu.shape[1] * 0.75)))
            image = hu[:, j, ::-1].T  # rows: head to foot
        image = zoom(image.astype(np.float32), ct.voxel_mm / 1.5, order=1)  # about 1.5 mm pixels
        out.append(_slice_image(image, rng))
    return out


def _cut_film(mu: torch.Tensor, ct: PhantomCT, rng: np.random.Generator, view: str = "lateral") -> np.ndarray:
    """A DRR cut as the DRR cohort cuts its films (``phantom.cohort.FILM_CUTS``: thoracolumbar, lumbar,
    thoracic, junction), coarser; a lateral one turned canonical (head up, anterior left)."""
    p = ct.patient
    by_level = {v.level: v for v in p.vertebrae}
    cut = str(rng.choice(list(FILM_CUTS)))
    top_name, bottom_name = FILM_CUTS[cut]
    top = by_level.get(top_name, p.vertebrae[2])
    top_z = float(top.centre[2] + top.height_mm * rng.uniform(0.5, 1.5))
    bottom = by_level.get(bottom_name)
    bottom_z = float(p.sacrum_centre[2] - rng.uniform(30, 60)) if bottom is None else \
        float(bottom.centre[2] - bottom.height_mm * rng.uniform(0.5, 1.5))
    spine = [v.centre for v in p.vertebrae if bottom_z <= v.centre[2] <= top_z] or [top.centre]
    centre = np.mean(spine, axis=0)
    sid = float(rng.choice([1000.0, 1000.0, 1150.0, 1500.0]))
    sod = sid - float(rng.uniform(130, 230))
    pixel = float(rng.uniform(1.0, 1.8))
    height = (top_z - bottom_z) * float(rng.uniform(1.0, 1.15))
    tall = (0.5, 0.62) if view == "lateral" else (0.7, 0.9)
    width = height * float(rng.uniform(*tall)) if cut == "thoracolumbar" else float(rng.uniform(210, 330))
    g = DrrGeometry(rows=max(32, int(height * sid / sod / pixel)), cols=max(32, int(width * sid / sod / pixel)),
                    isocentre=(float(centre[0]), float(centre[1] + (20 if view == "lateral" else 0) + rng.uniform(-20, 20)),
                               (top_z + bottom_z) / 2), view=view, source_side=("left", "right")[int(rng.integers(0, 2))], sid_mm=sid, sod_mm=sod,
                    pixel_mm=pixel, rotation_deg=float(rng.normal(0.0, 3.0)))
    exposure = Exposure(photons=float(rng.uniform(8e3, 3e4)), unsharp_sigma_px=15.0 / pixel)
    image = expose(line_integrals(mu, ct.affine, g), exposure, rng)
    orientation = orientation_from_header(patient_orientation(g)) if view == "lateral" else None
    return orientation.apply(image) if orientation is not None else image


def phantom_images(seed: int, index: int, rng: np.random.Generator, voxel_mm: float = 4.0, slices: int = 4,
                   laterals: int = 0) -> list[tuple[str, np.ndarray]]:
    """(kind, image) pairs of one phantom patient: negatives (chest AP, pelvis AP, a random trunk AP, two
    APs cut as the DRR cohort cuts its films, ``slices`` CT slices) and ``laterals`` lateral films cut
    alike and turned canonical (kind ``phantom_lateral``: positives)."""
    ct = build_ct(draw_patient(seed, index), voxel_mm)
    mu = hu_to_mu(torch.from_numpy(ct.hu))
    p = ct.patient
    by_level = {v.level: v for v in p.vertebrae}
    spine_x, spine_y = float(np.mean([v.centre[0] for v in p.vertebrae])), float(np.mean([v.centre[1] for v in p.vertebrae]))
    trunk_y = spine_y + p.trunk_ap_mm * 0.35
    thorax = [by_level[n].centre[2] for n in ("T2", "T11") if n in by_level]
    chest_z = float(np.mean(thorax)) if thorax else float(p.vertebrae[len(p.vertebrae) // 3].centre[2])
    pelvis_z = float(p.sacrum_centre[2]) - 50.0
    low_z, high_z = float(p.sacrum_centre[2]) - 60.0, float(max(v.centre[2] for v in p.vertebrae))
    out = []
    for kind, z, height in (("chest_ap", chest_z, float(rng.uniform(280, 380))),
                            ("pelvis_ap", pelvis_z, float(rng.uniform(180, 260))),
                            ("trunk_ap", float(rng.uniform(low_z + 100, high_z - 100)), float(rng.uniform(150, 300)))):
        width = p.trunk_lr_mm * float(rng.uniform(0.5, 1.15))
        image = _drr(mu, ct.affine, rng, iso=np.array([spine_x, trunk_y, z]), height_mm=height, width_mm=width,
                     view="ap", pixel_mm=float(rng.uniform(1.2, 2.2)))
        out.append((kind, image))
    out += [("spine_ap", _cut_film(mu, ct, rng, "ap")) for _ in range(2)]
    out += [("ct_slice", image) for image in _ct_slices(ct, rng, slices)]
    out += [(PHANTOM_LATERAL, _cut_film(mu, ct, rng)) for _ in range(laterals)]
    return out


def _capsule_distance(points: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance of (N, 3) float32 points to the segment a-b."""
    a, ab = a.astype(np.float32), (b - a).astype(np.float32)
    t = np.clip(((points - a) @ ab) / max(float(ab @ ab), 1e-9), 0.0, 1.0)
    off = points - a - t[:, None] * ab
    return np.sqrt(np.einsum("ij,ij->i", off, off))


def _bone(hu: np.ndarray, d: np.ndarray, radius: float, cortex: float, rng: np.random.Generator) -> None:
    """Paint a bone tube (cortex + marrow) where the distance ``d`` to its axis is below ``radius``."""
    hu[(d < radius) & (d >= radius - cortex)] = float(rng.uniform(900, 1800))
    hu[d < radius - cortex] = float(rng.uniform(20, 300))


def _limb_segments(rng: np.random.Generator, length: float) -> list[tuple[np.ndarray, np.ndarray, float]]:
    """Bone segments (start, end, radius) of a limb: a joint (two bones meeting, bent) with one or two
    tubes below it, or a fan of small bones."""
    mode = str(rng.choice(["joint", "shaft", "hand"], p=[0.5, 0.25, 0.25]))
    if mode == "hand":
        base = np.array([0.0, 0.0, -length * 0.1])
        segs = []
        for ray in range(int(rng.integers(3, 6))):
            angle = math.radians(-30 + 15 * ray + rng.normal(0, 4))
            direction = np.array([math.sin(angle), 0.0, math.cos(angle)])
            start = base + direction * rng.uniform(5, 20)
            for bone in range(3):
                bone_len = float(rng.uniform(20, 45)) * (0.8 ** bone)
                end = start + direction * bone_len
                segs.append((start, end, float(rng.uniform(3.0, 6.0)) * (0.85 ** bone)))
                start = end + direction * 3.0
        return segs
    radius = float(rng.uniform(8, 16))
    joint = np.array([0.0, 0.0, float(rng.uniform(-0.2, 0.2)) * length])
    bend = math.radians(float(rng.uniform(0, 45)) if mode == "joint" else 0.0)
    lower_dir = np.array([0.0, math.sin(bend), -math.cos(bend)])
    gap = float(rng.uniform(3, 8)) if mode == "joint" else 0.0
    segs = [(joint + np.array([0, 0, gap / 2 + radius]), np.array([0.0, 0.0, length]), radius)]
    lower_start = joint + lower_dir * (gap / 2 + radius)
    if rng.random() < 0.5:  # two bones below the joint (forearm, leg)
        offset = np.array([radius * 0.9, 0.0, 0.0])
        segs += [(lower_start - offset, lower_start - offset + lower_dir * length, radius * 0.7),
                 (lower_start + offset, lower_start + offset + lower_dir * length, radius * 0.45)]
    else:
        segs.append((lower_start, lower_start + lower_dir * length, radius * float(rng.uniform(0.8, 1.0))))
    return segs


def extremity_ct(rng: np.random.Generator, voxel_mm: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """(HU (I, J, K) float32, affine): a limb along the superior axis, centred at the world origin."""
    length = float(rng.uniform(150, 260))
    segs = _limb_segments(rng, length)
    max_r = max(r for _, _, r in segs)
    soft_r = max_r * float(rng.uniform(2.2, 4.0)) + 10
    n_xy, n_z = int(2 * (soft_r + 30) / voxel_mm), int(2 * length / voxel_mm)
    axes = [((np.arange(n) - (n - 1) / 2) * voxel_mm).astype(np.float32) for n in (n_xy, n_xy, n_z)]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    hu = np.full(len(grid), -1000.0, dtype=np.float32)
    distances = [_capsule_distance(grid, a, b) for a, b, _ in segs]
    axis_d = np.min(distances, axis=0)
    hu[axis_d < soft_r] = -100.0  # fat under the skin
    hu[axis_d < soft_r - float(rng.uniform(3, 10))] = float(rng.uniform(30, 60))
    near = np.flatnonzero(axis_d < max_r * 1.4 + 2)  # bone is painted only near the bone axes
    points, bone_hu = grid[near], hu[near]
    for (a, b, r), d in zip(segs, distances):
        _bone(bone_hu, d[near], r, min(r * 0.45, float(rng.uniform(1.5, 5.0))), rng)
        for end in (a, b):  # epiphyses: rounded, trabecular ends
            off = points - end.astype(np.float32)
            bulb = np.sqrt(np.einsum("ij,ij->i", off, off))
            bone_hu[(bulb < r * 1.3) & (bulb >= r * 1.3 - 1.5)] = 1000.0
            bone_hu[bulb < r * 1.3 - 1.5] = float(rng.uniform(200, 450))
    hu[near] = bone_hu
    affine = np.diag([voxel_mm, voxel_mm, voxel_mm, 1.0])
    affine[:3, 3] = [axes[0][0], axes[1][0], axes[2][0]]
    return hu.reshape(n_xy, n_xy, n_z), affine


def extremity_negatives(rng: np.random.Generator, count: int) -> list[tuple[str, np.ndarray]]:
    """``count`` DRRs of limb CTs (two views of each)."""
    out = []
    while len(out) < count:
        hu, affine = extremity_ct(rng)
        mu = hu_to_mu(torch.from_numpy(hu))
        extent = np.array(hu.shape) * affine[0, 0]
        for view in ("ap", "lateral")[: count - len(out)]:
            out.append(("extremity", _drr(mu, affine, rng, iso=np.zeros(3), height_mm=float(extent[2] * rng.uniform(0.5, 1.0)),
                                          width_mm=float(extent[0] * rng.uniform(0.8, 1.3)), view=view,
                                          pixel_mm=float(rng.uniform(0.8, 1.6)))))
    return out


SYNTHETIC_KINDS = ("noise", "smooth", "shapes", "gradient", "text", "mixture")


def _shapes(image: np.ndarray, rng: np.random.Generator, count: int) -> None:
    rows, cols = image.shape
    yy, xx = np.mgrid[0:rows, 0:cols]
    for _ in range(count):
        value = float(rng.uniform(0, 1))
        cy, cx = rng.uniform(0, rows), rng.uniform(0, cols)
        kind = int(rng.integers(0, 4))
        if kind == 0:  # ellipse (filled or a ring: a skull-like rim)
            ry, rx = rng.uniform(5, rows / 2), rng.uniform(5, cols / 2)
            r = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2
            image[(r < 1) & ((r > 0.75) if rng.random() < 0.4 else True)] = value
        elif kind == 1:  # rectangle
            h, w = rng.uniform(3, rows / 2), rng.uniform(3, cols / 2)
            image[int(max(cy - h, 0)): int(cy + h), int(max(cx - w, 0)): int(cx + w)] = value
        else:  # thick line
            angle = rng.uniform(0, math.pi)
            dist = np.abs((xx - cx) * math.sin(angle) - (yy - cy) * math.cos(angle))
            image[dist < rng.uniform(1, 8)] = value


def _text(rows: int, cols: int, rng: np.random.Generator) -> np.ndarray:
    image = np.full((rows, cols), float(rng.uniform(0, 0.3)), dtype=np.float32)
    glyph = int(rng.integers(3, 9))
    for _ in range(int(rng.integers(2, 12))):  # lines of glyph-like blocks
        y, x = int(rng.integers(0, max(1, rows - glyph))), int(rng.integers(0, max(1, cols // 2)))
        for _ in range(int(rng.integers(3, 30))):
            if x + glyph >= cols:
                break
            if rng.random() < 0.85:
                block = rng.random((glyph, max(1, glyph - 1))) < 0.55
                image[y: y + glyph, x: x + block.shape[1]][block] = float(rng.uniform(0.7, 1.0))
            x += glyph + 1
    return image


def synthetic_negative(rng: np.random.Generator, kind: str | None = None) -> tuple[str, np.ndarray]:
    """(kind, image): one of ``SYNTHETIC_KINDS`` (random when None), of a random size and aspect."""
    kind = kind or str(rng.choice(SYNTHETIC_KINDS))
    rows, cols = (int(v) for v in rng.integers(96, 480, size=2))
    if kind == "noise":
        image = rng.normal(0, 1, (rows, cols)) if rng.random() < 0.5 else rng.random((rows, cols))
    elif kind == "smooth":
        image = gaussian_filter(rng.normal(0, 1, (rows, cols)), float(rng.uniform(2, 40)))
    elif kind == "shapes":
        image = np.full((rows, cols), float(rng.uniform(0, 0.5)))
        _shapes(image, rng, int(rng.integers(1, 12)))
    elif kind == "gradient":
        yy, xx = np.mgrid[0:rows, 0:cols] / max(rows, cols)
        angle = rng.uniform(0, 2 * math.pi)
        image = (xx * math.cos(angle) + yy * math.sin(angle)) if rng.random() < 0.6 else \
            -np.hypot(xx - rng.uniform(0, 1), yy - rng.uniform(0, 1))
    elif kind == "text":
        image = _text(rows, cols, rng)
    else:
        image = gaussian_filter(rng.normal(0, 1, (rows, cols)), float(rng.uniform(3, 25)))
        image = (image - image.min()) / max(float(np.ptp(image)), 1e-6)
        _shapes(image, rng, int(rng.integers(1, 6)))
        image = gaussian_filter(image, float(rng.uniform(0, 2))) + rng.normal(0, rng.uniform(0, 0.1), (rows, cols))
    return kind, np.asarray(image, dtype=np.float32)
