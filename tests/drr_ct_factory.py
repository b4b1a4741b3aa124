"""Tiny CTs for the DRR tests: box-shaped vertebrae with posterior elements and a canal.

Each vertebra is defined in its own frame (the spine axis tilted in the sagittal plane, anterior
across it), then sampled on a voxel grid whose affine is oblique and not RAS, so a test that passes
here does not rely on axis-aligned or RAS-ordered arrays.  Labels follow VerSe numbering.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

LABELS = (19, 20, 21)  # T12, L1, L2
BODY_HALF_WIDTH, BODY_DEPTH, BODY_HEIGHT, DISC = 13.0, 24.0, 16.0, 7.0
TILT_DEG = 12.0  # spine axis tilted towards anterior (sagittal plane)


@dataclass(frozen=True)
class TinyCt:
    hu: np.ndarray
    labels: np.ndarray
    bodies: np.ndarray  # label of the body part only (truth for body_mask_3d)
    affine: np.ndarray
    centroids: dict[int, np.ndarray]  # label -> stored voxel index of the body centre


def oblique_affine(spacing: float = 1.5, shape: tuple[int, int, int] = (52, 64, 60)) -> np.ndarray:
    """A-L-S-like axis order with a 9-degree obliquity, centred on the world origin."""
    permute = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])  # i -> +y (A), j -> -x (L), k -> +z
    a = math.radians(9.0)
    tilt = np.array([[math.cos(a), 0.0, math.sin(a)], [0.0, 1.0, 0.0], [-math.sin(a), 0.0, math.cos(a)]])
    linear = tilt @ permute * spacing
    affine = np.eye(4)
    affine[:3, :3] = linear
    affine[:3, 3] = -linear @ ((np.array(shape) - 1) / 2.0)
    return affine


def _frames():
    a = math.radians(TILT_DEG)
    axis = np.array([0.0, math.sin(a), math.cos(a)])
    anterior = np.array([0.0, math.cos(a), -math.sin(a)])
    pitch = BODY_HEIGHT + DISC
    centres = {label: (1 - k) * pitch * axis + np.array([0.0, 8.0, 0.0]) for k, label in enumerate(LABELS)}
    return axis, anterior, centres


def make_ct(spacing: float = 1.5, shape: tuple[int, int, int] = (52, 64, 60)) -> TinyCt:
    affine = oblique_affine(spacing, shape)
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1).reshape(-1, 3)
    world = ijk @ affine[:3, :3].T + affine[:3, 3]
    axis, anterior, centres = _frames()
    labels = np.zeros(len(world), dtype=np.uint8)
    bodies = np.zeros(len(world), dtype=np.uint8)
    for label, centre in centres.items():
        rel = world - centre
        x, y, h = rel[:, 0], rel @ anterior + BODY_DEPTH / 2.0, rel @ axis  # y = 0 at the posterior wall
        body = (np.abs(x) <= BODY_HALF_WIDTH) & (y >= 0) & (y <= BODY_DEPTH) & (np.abs(h) <= BODY_HEIGHT / 2)
        arch_h = np.abs(h) <= BODY_HEIGHT / 2 - 3.0
        pedicles = arch_h & (y < 0) & (y >= -13) & (np.abs(x) >= 7) & (np.abs(x) <= 11)
        lamina = arch_h & (y < -13) & (y >= -17) & (np.abs(x) <= 11)
        spinous = arch_h & (y < -17) & (y >= -28) & (np.abs(x) <= 3)
        labels[body | pedicles | lamina | spinous] = label
        bodies[body] = label
    soft = (world[:, 0] / 38.0) ** 2 + ((world[:, 1] - 2.0) / 46.0) ** 2 <= 1.0
    hu = np.where(soft, 40, -1000).astype(np.int16)
    hu[labels > 0] = 700
    hu[bodies > 0] = 450
    centroids = {}
    to_voxel = np.linalg.inv(affine)
    for label, centre in centres.items():
        body_centre = centre  # the body's centre: the frame origin
        centroids[label] = to_voxel[:3, :3] @ body_centre + to_voxel[:3, 3]
    return TinyCt(hu.reshape(shape), labels.reshape(shape), bodies.reshape(shape), affine, centroids)


def write_ct(folder: Path, ct: TinyCt, stem: str = "sub-tiny01_ct", sidecar: dict | None = None) -> dict[str, Path]:
    """The CT, mask and VerSe centroid file (P-I-R axis codes) in ``folder``; paths by role."""
    from spine_dfl.io.verse import write_centroids

    folder.mkdir(parents=True, exist_ok=True)
    paths = {"ct": folder / f"{stem}.nii.gz", "mask": folder / f"{stem}_seg-vert_msk.nii.gz",
             "centroids": folder / f"{stem}_seg-subreg_ctd.json"}
    image = nib.Nifti1Image(ct.hu, ct.affine)
    image.set_qform(ct.affine, code=1)
    image.set_sform(ct.affine, code=1)
    nib.save(image, paths["ct"])
    mask = nib.Nifti1Image(ct.labels, ct.affine)
    mask.set_qform(ct.affine, code=1)
    mask.set_sform(ct.affine, code=1)
    nib.save(mask, paths["mask"])
    write_centroids(paths["centroids"], ct.centroids, ct.hu.shape, ct.affine, axcodes=("P", "I", "R"))
    if sidecar is not None:
        paths["sidecar"] = folder / f"{stem}.json"
        paths["sidecar"].write_text(json.dumps(sidecar))
    return paths
