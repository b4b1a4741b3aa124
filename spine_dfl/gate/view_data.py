"""The view classifier's training set, made in memory from cohort manifests and generated negatives.

Positives: the lateral films of the given manifests (``spine-dfl synth`` and ``synth --generator drr``
cohorts, or any manifest of lateral films), each first turned canonical (head up, anterior left) by
its DICOM PatientOrientation (``io.orientation.orientation_from_header``; a film without one is
taken as canonical), then cut as clinics cut films: the whole film or a window of 3 or more
neighbouring vertebrae (lumbar, thoracic, junction views) with a random margin, width and shift.
Each cut is kept as a canonical thumbnail; the training loop shows it in a random one of the eight
orientations (the label is the one that undoes it), so a film already stored turned is not taught
the wrong way round.

Negatives: the cohorts' AP films (``films.csv`` view ``ap``) in random cuts, and the generated
images of ``gate.view_negatives`` (phantom chest / pelvis / trunk APs and CT slices, extremity DRRs,
synthetic non-spine images). The generated phantoms also give lateral DRRs cut as the DRR cohort
cuts its films (coarser, canonical): second-generator positives besides the manifests' films. pydicom's test files and pydicom-data are never read: they are test
material.

Every sample has a ``group`` (cohort folder + patient, or the generator's item): validation splits
by group, so no patient is on both sides.
"""

from __future__ import annotations

import csv
import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from spine_dfl.gate.view import DEFAULT_PERCENTILES, DEFAULT_SIZE, thumbnail
from spine_dfl.gate.view_negatives import PHANTOM_LATERAL, extremity_negatives, phantom_images, synthetic_negative
from spine_dfl.io import ImageReadError, read_dicom_header, read_image
from spine_dfl.io.orientation import CANONICAL, Orientation, orientation_from_header
from spine_dfl.io.patients import patient_key
from spine_dfl.io.errors import InputError

__all__ = ["CohortFilm", "ViewSamples", "build_view_samples", "cohort_films", "cut_film", "generated_images",
           "stored_orientation"]

log = logging.getLogger(__name__)

WORKING_SIDE = 384  # films are reduced to this long side once: every cut is read from it


@dataclass
class CohortFilm:
    """One film reduced to ``WORKING_SIDE``: canonical pixels when ``lateral``, as stored otherwise;
    ``boxes`` (N, 4) the vertebra ROIs in those pixels, top to bottom (empty for AP films)."""

    pixels: np.ndarray
    lateral: bool
    group: str
    source: str
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))


@dataclass
class ViewSamples:
    """Thumbnails (N, size, size) float32 (positives canonical), whether each is a lateral film, its
    group (the validation split's unit) and its kind ("lateral", "ap", "chest_ap", "noise", ...)."""

    thumbs: np.ndarray
    lateral: np.ndarray
    groups: list[str]
    kinds: list[str]

    def __len__(self) -> int:
        return len(self.kinds)

    def subset(self, mask: np.ndarray) -> ViewSamples:
        idx = np.flatnonzero(mask)
        return ViewSamples(self.thumbs[idx], self.lateral[idx], [self.groups[i] for i in idx], [self.kinds[i] for i in idx])


def stored_orientation(path: Path) -> Orientation | None:
    """What makes the stored film canonical, from its PatientOrientation; None without a usable one."""
    try:
        header = read_dicom_header(path, ["PatientOrientation"])
    except ImageReadError:
        return None
    value = header.get("PatientOrientation")
    return orientation_from_header(list(value)) if value is not None and not isinstance(value, str) else None


def _reduce(pixels: np.ndarray, boxes: np.ndarray, side: int) -> tuple[np.ndarray, np.ndarray]:
    rows, cols = pixels.shape
    scale = min(1.0, side / max(rows, cols))
    if scale >= 1.0:
        return pixels.astype(np.float32), boxes
    size = (max(1, round(rows * scale)), max(1, round(cols * scale)))
    small = F.interpolate(torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32))[None, None], size=size,
                          mode="bilinear", align_corners=False, antialias=True)[0, 0].numpy()
    return small, boxes * np.array([size[1] / cols, size[0] / rows, size[1] / cols, size[0] / rows])


def _canonical_boxes(boxes: np.ndarray, orientation: Orientation, stored_shape: tuple[int, int]) -> np.ndarray:
    if not len(boxes):
        return boxes
    matrix = orientation.to_canonical(stored_shape)
    corners = boxes.reshape(-1, 2, 2) @ matrix[:2, :2].T + matrix[:2, 2]
    return np.concatenate([corners.min(axis=1), corners.max(axis=1)], axis=1)


def _manifest_images(manifest: Path) -> tuple[dict[str, list[list[float]]], dict[str, str]]:
    """Per image of the manifest its ROIs, and its patient id."""
    boxes: dict[str, list[list[float]]] = defaultdict(list)
    patients: dict[str, str] = {}
    with open(manifest, newline="") as fh:
        for row in csv.DictReader(fh):
            row = {k.strip().lower(): (v or "").strip() for k, v in row.items() if k}
            image = row.get("image", "")
            if not image:
                continue
            patients.setdefault(image, patient_key(row.get("patient_id"), image, 0))
            cells = [row.get(c, "") for c in ("x_min", "y_min", "x_max", "y_max")]
            boxes[image]  # every image gets an entry, ROIs or not
            if all(cells):
                boxes[image].append([float(c) for c in cells])
    return boxes, patients


def _frontal_films(folder: Path) -> dict[str, str]:
    """AP images of a DRR cohort (films.csv) and their patients; {} for other cohorts."""
    table = folder / "films.csv"
    if not table.is_file():
        return {}
    with open(table, newline="") as fh:
        return {r["image"]: r["patient_id"] for r in csv.DictReader(fh) if r.get("view", "").lower() == "ap"}


def cohort_films(manifest: str | Path, side: int = WORKING_SIDE) -> list[CohortFilm]:
    """The lateral films of a manifest (canonical) and, for a DRR cohort, its AP films (as stored)."""
    manifest = Path(manifest)
    if not manifest.is_file():
        raise InputError(f"{manifest}: manifest not found")
    folder = manifest.parent
    boxes, patients = _manifest_images(manifest)
    films = []
    for image, rois in boxes.items():
        path = folder / image
        radiograph = read_image(path)
        orientation = stored_orientation(path)
        if orientation is None:
            log.debug("%s: no lateral PatientOrientation; taken as canonical", path)
            orientation = CANONICAL
        stored = np.asarray(rois, dtype=np.float64).reshape(-1, 4)
        canonical = _canonical_boxes(stored, orientation, radiograph.pixels.shape)
        canonical = canonical[np.argsort(canonical[:, 1])] if len(canonical) else canonical
        pixels, canonical = _reduce(orientation.apply(radiograph.pixels), canonical, side)
        films.append(CohortFilm(pixels, True, f"{folder.name}/{patients[image]}", folder.name, canonical))
    for image, patient in _frontal_films(folder).items():
        pixels, _ = _reduce(read_image(folder / image).pixels, np.zeros((0, 4)), side)
        films.append(CohortFilm(pixels, False, f"{folder.name}/{patient}", folder.name))
    if not any(f.lateral for f in films):
        raise InputError(f"{manifest}: no images listed")
    return films


def _window(pixels: np.ndarray, y0: float, y1: float, x0: float, x1: float) -> np.ndarray:
    rows, cols = pixels.shape
    y0, y1 = int(np.clip(y0, 0, rows - 8)), int(np.clip(y1, 0, rows))
    x0, x1 = int(np.clip(x0, 0, cols - 8)), int(np.clip(x1, 0, cols))
    return pixels[y0: max(y1, y0 + 8), x0: max(x1, x0 + 8)]


def cut_film(film: CohortFilm, rng: np.random.Generator) -> np.ndarray:
    """A clinic-like cut: the whole film (a small random crop), or a window over 3+ neighbouring
    vertebrae with a random margin, width and shift (lumbar, thoracic, junction spot views)."""
    rows, cols = film.pixels.shape
    boxes = film.boxes
    if len(boxes) >= 4 and rng.random() < 0.65:
        count = int(rng.integers(3, len(boxes) + 1))
        start = int(rng.integers(0, len(boxes) - count + 1))
        chosen = boxes[start: start + count]
        body = float(np.median(chosen[:, 3] - chosen[:, 1]))
        y0 = chosen[:, 1].min() - rng.uniform(0.2, 2.5) * body
        y1 = chosen[:, 3].max() + rng.uniform(0.2, 2.5) * body
        width = (y1 - y0) * rng.uniform(0.5, 1.2)
        centre = float(np.mean((chosen[:, 0] + chosen[:, 2]) / 2)) + rng.uniform(-0.2, 0.2) * width
        return _window(film.pixels, y0, y1, centre - width / 2, centre + width / 2)
    if not film.lateral and rng.random() < 0.6:  # frontal films: any window
        h, w = rows * rng.uniform(0.3, 1.0), cols * rng.uniform(0.4, 1.0)
        y0, x0 = rng.uniform(0, rows - h), rng.uniform(0, cols - w)
        return _window(film.pixels, y0, y0 + h, x0, x0 + w)
    m = rng.uniform(0, 0.08, size=4)
    return _window(film.pixels, m[0] * rows, rows * (1 - m[1]), m[2] * cols, cols * (1 - m[3]))


def generated_images(rng: np.random.Generator, *, phantoms: int, extremities: int, synthetic: int, phantom_seed: int,
                     phantom_laterals: int = 0) -> list[tuple[str, str, np.ndarray]]:
    """(kind, group, image) of the generated images (``gate.view_negatives``): negatives, and
    ``phantom_laterals`` canonical lateral films per phantom (kind ``phantom_lateral``)."""
    out = []
    for i in range(phantoms):
        out += [(kind, f"phantom/{phantom_seed}/{i}", image)
                for kind, image in phantom_images(phantom_seed, i, rng, slices=2, laterals=phantom_laterals)]
    for i in range(0, extremities, 2):
        out += [(kind, f"extremity/{i}", image) for kind, image in extremity_negatives(rng, min(2, extremities - i))]
    out += [(kind, f"synthetic/{i}", image) for i, (kind, image) in enumerate(synthetic_negative(rng) for _ in range(synthetic))]
    return out


def build_view_samples(manifests: Sequence[str | Path], seed: int = 0, *, size: int = DEFAULT_SIZE,
                       percentiles: Sequence[float] = DEFAULT_PERCENTILES, cuts_per_film: int = 6,
                       ap_cuts: int = 6, phantoms: int = 8, phantom_laterals: int = 6, extremities: int = 24,
                       synthetic: int | None = None, phantom_seed: int | None = None) -> ViewSamples:
    """The whole set: ``cuts_per_film`` canonical cuts of every lateral film, ``ap_cuts`` of every AP
    film, and the generated images of ``phantoms`` phantom patients (``phantom_laterals`` lateral
    films each among them), ``extremities`` limb DRRs and ``synthetic`` non-spine images (default: a
    half the positives)."""
    rng = np.random.default_rng([int(seed), 0x71E3])
    thumbs, lateral, groups, kinds = [], [], [], []

    def add(image: np.ndarray, is_lateral: bool, group: str, kind: str) -> None:
        thumbs.append(thumbnail(image, size, percentiles))
        lateral.append(is_lateral)
        groups.append(group)
        kinds.append(kind)

    for manifest in manifests:
        for film in cohort_films(manifest):
            for _ in range(cuts_per_film if film.lateral else ap_cuts):
                add(cut_film(film, rng), film.lateral, film.group, "lateral" if film.lateral else "ap")
    synthetic = max(32, sum(lateral) // 2) if synthetic is None else synthetic
    seed_for_phantoms = 1000 + int(seed) if phantom_seed is None else int(phantom_seed)
    for kind, group, image in generated_images(rng, phantoms=phantoms, extremities=extremities, synthetic=synthetic,
                                               phantom_seed=seed_for_phantoms, phantom_laterals=phantom_laterals):
        add(image, kind == PHANTOM_LATERAL, group, kind)
    return ViewSamples(np.stack(thumbs).astype(np.float32), np.asarray(lateral, dtype=bool), groups, kinds)
