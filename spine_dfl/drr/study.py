"""``drr_study``: a CT (and optionally its VerSe centroids, label mask and grades) to DX films and tables.

OUT holds ``images/<stem>_<view>.dcm`` (one DX DICOM per view), ``manifest.csv`` (the project's
manifest schema: one row per vertebra C1-L6 / T13 whose body lies in a lateral film) and
``projections.json`` (per film its 3x4 projection matrix from the CT's world RAS mm to continuous
detector pixels, the geometry, and where every centroid falls).  Everything is read, checked,
rendered and written into a temporary folder beside OUT first; OUT appears only when all is done.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from spine_dfl import __version__
from spine_dfl.atomic import atomic_write_text
from spine_dfl.drr.dicom import DrrIdentity, drr_dataset
from spine_dfl.drr.geometry import VIEWS, DrrGeometry, patient_orientation, project_points, projection_matrix
from spine_dfl.drr.inputs import DrrInputError, Volume, ct_identity, ct_stem, load_centroids, load_ct, load_mask, read_grades
from spine_dfl.drr.project import (
    ANATOMICAL_ORDER, IN_FILM, SILHOUETTE_MM, BodyMaskError, BodyProjection, body_mask_3d, image_directions,
    project_body, roi, six_points, spine_axes,
)
from spine_dfl.io.verse import VERSE_LABELS
from spine_dfl.io.vocabulary import POINT_NAMES
from spine_dfl.synth.tables import MANIFEST_COLUMNS as _SYNTH_COLUMNS

if TYPE_CHECKING:
    from numpy.typing import ArrayLike

__all__ = ["IN_FILM", "UNGRADED", "DrrInputError", "DrrResult", "drr_study"]

UNGRADED = "ungraded"  # the manifest label of a vertebra without a grade
# synth's manifest columns without ``split``: a DRR study has no split of its own (an empty split is
# invalid); training splits the studies' patients itself, or the user adds the column.
MANIFEST_COLUMNS = tuple(c for c in _SYNTH_COLUMNS if c != "split")
ROW_LABELS = frozenset(set(range(1, 26)) | {28})  # vertebrae (not sacrum 26 and coccyx 27) get manifest rows
_MAX_SIDE = 4096  # the default field of view is capped at this many pixels per side
_MAX_DETECTOR = 16384  # a detector given by size or field of view has at most this many pixels per side


@dataclass(frozen=True)
class DrrResult:
    out: Path
    images: tuple[str, ...]
    manifest_path: Path
    projections_path: Path
    manifest_rows: int
    summary: dict[str, Any]


@dataclass(frozen=True)
class _Inputs:
    ct: Volume
    identity: DrrIdentity
    centroids: dict[int, np.ndarray]
    mask: Volume | None
    grades: dict[int, str]
    digest: str


def drr_study(ct_path: str | Path, out: str | Path, *, centroids: str | Path | None = None, mask: str | Path | None = None,
              grades: str | Path | None = None, views: Sequence[str] = ("lateral",), sid_mm: float = 1000.0,
              sod_mm: float = 850.0, pixel_mm: float = 0.5, rows: int | None = None, cols: int | None = None,
              fov_mm: tuple[float, float] | None = None, source_side: str = "left", rotation_deg: float = 0.0,
              isocentre: Sequence[float] | None = None, seed: int = 0, overwrite: bool = False) -> DrrResult:
    """Render DRRs of ``ct_path`` and write OUT (see the module docstring); DrrInputError on bad input.

    ``views``: "lateral" and / or "ap"; ``source_side`` places the lateral's source on the patient's
    left (ViewPosition RL, anterior on the image's left) or right (LL).  The detector is ``rows`` x
    ``cols`` pixels of ``pixel_mm``, or ``fov_mm`` (width, height at the detector), or by default
    sized to the patient's body (HU > -300) with a 5 % margin.  ``isocentre`` (world RAS mm, the
    central ray's point) defaults to the mean of the centroids, else the volume's centre.  Manifest
    labels are the grades where given, else "ungraded"; six points come from the mask's bodies.
    """
    out = Path(out)
    views = _check_options(out, views, rows, cols, fov_mm, seed, overwrite)
    _check_numbers(sid_mm=sid_mm, sod_mm=sod_mm, pixel_mm=pixel_mm, rotation_deg=rotation_deg)
    if fov_mm is not None and float(pixel_mm) > 0:
        size = [math.ceil(float(v) / float(pixel_mm)) for v in fov_mm]
        if max(size) > _MAX_DETECTOR:
            raise DrrInputError(f"fov_mm {tuple(fov_mm)} at {pixel_mm} mm pixels is {size[1]} x {size[0]} pixels, "
                                f"beyond {_MAX_DETECTOR} a side")
    inputs = _read_inputs(Path(ct_path), centroids, mask, grades)
    centre = _isocentre(inputs, isocentre)
    geometries = []
    for view in views:
        try:
            g = DrrGeometry(rows=1, cols=1, isocentre=centre, view=view, source_side=source_side, sid_mm=float(sid_mm),
                            sod_mm=float(sod_mm), pixel_mm=float(pixel_mm), rotation_deg=float(rotation_deg))
        except ValueError as exc:
            raise DrrInputError(f"geometry: {exc}") from None
        geometries.append(_sized(g, inputs.ct, rows, cols, fov_mm))
    bodies = _bodies(inputs)
    films = [_render_film(inputs, g, bodies, index, seed) for index, g in enumerate(geometries)]
    return _write(out, inputs, films, seed, overwrite)


def _check_options(out: Path, views: Sequence[str], rows: int | None, cols: int | None,
                   fov_mm: Sequence[float] | None, seed: int, overwrite: bool) -> tuple[str, ...]:
    views = tuple(dict.fromkeys(views))
    if not views or any(v not in VIEWS for v in views):
        raise DrrInputError(f"views must be among {VIEWS}, got {list(views)}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise DrrInputError(f"seed must be a non-negative integer, got {seed!r}")
    if (rows is None) != (cols is None):
        raise DrrInputError("give both rows and cols, or neither")
    if rows is not None and fov_mm is not None:
        raise DrrInputError("give rows and cols or fov_mm, not both")
    if rows is not None and (int(rows) < 16 or int(cols) < 16 or max(int(rows), int(cols)) > _MAX_DETECTOR):
        raise DrrInputError(f"detector size {rows} x {cols} pixels is outside 16-{_MAX_DETECTOR}")
    if fov_mm is not None and (len(fov_mm) != 2 or not all(math.isfinite(float(v)) and float(v) > 0 for v in fov_mm)):
        raise DrrInputError(f"fov_mm must be two positive sizes (width, height) in mm, got {fov_mm!r}")
    if out.exists() and not out.is_dir():
        raise DrrInputError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise DrrInputError(f"{out}: already exists and is not empty; pass overwrite (--overwrite) to replace it")
    return views


def _check_numbers(**values: Any) -> None:
    """Geometry numbers must be finite (the geometry itself checks their ranges)."""
    for name, value in values.items():
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise DrrInputError(f"{name} must be a number, got {value!r}") from None
        if not math.isfinite(number):
            raise DrrInputError(f"{name} must be finite, got {value!r}")


def _read_inputs(ct_path: Path, centroids: str | Path | None, mask: str | Path | None,
                 grades: str | Path | None) -> _Inputs:
    ct = load_ct(ct_path)
    identity = ct_identity(ct_path)
    if centroids is None and (mask is not None or grades is not None):
        raise DrrInputError(f"{mask or grades}: a mask or grades need the CT's centroid file (the level of each vertebra)")
    points = load_centroids(centroids, ct) if centroids is not None else {}
    labels = load_mask(mask, ct) if mask is not None else None
    graded = read_grades(grades) if grades is not None else {}
    digest = hashlib.sha256()
    for path in (ct_path, centroids, mask, grades):
        digest.update(Path(path).read_bytes() if path is not None else b"-")
    return _Inputs(ct, identity, points, labels, graded, digest.hexdigest())


def _world(affine: np.ndarray, ijk: ArrayLike) -> np.ndarray:
    return np.atleast_2d(np.asarray(ijk, dtype=np.float64)) @ affine[:3, :3].T + affine[:3, 3]


def _isocentre(inputs: _Inputs, isocentre: Sequence[float] | None) -> tuple[float, float, float]:
    if isocentre is not None:
        values = tuple(float(v) for v in isocentre)
        if len(values) != 3 or not all(math.isfinite(v) for v in values):
            raise DrrInputError(f"isocentre must be three finite world coordinates (mm), got {isocentre!r}")
        return values  # type: ignore[return-value]
    if inputs.centroids:
        points = _world(inputs.ct.affine, np.stack(list(inputs.centroids.values())))
    else:
        points = _world(inputs.ct.affine, (np.array(inputs.ct.data.shape) - 1) / 2.0)
    return tuple(float(v) for v in points.mean(axis=0))  # type: ignore[return-value]


def _sized(g: DrrGeometry, ct: Volume, rows: int | None, cols: int | None,
           fov_mm: Sequence[float] | None) -> DrrGeometry:
    """The geometry with its detector size: as given, from the field of view, or around the body."""
    if rows is not None:
        return replace(g, rows=int(rows), cols=int(cols))
    if fov_mm is not None:
        return replace(g, rows=max(16, math.ceil(float(fov_mm[1]) / g.pixel_mm)),
                       cols=max(16, math.ceil(float(fov_mm[0]) / g.pixel_mm)))
    inside = np.argwhere(ct.data[::2, ::2, ::2] > -300) * 2
    if not len(inside):
        inside = np.array([[0, 0, 0], np.array(ct.data.shape) - 1])
    lo, hi = inside.min(axis=0) - 0.5, inside.max(axis=0) + 2.5
    corners = np.array([[a, b, c] for a in (lo[0], hi[0]) for b in (lo[1], hi[1]) for c in (lo[2], hi[2])])
    probe = replace(g, principal=(0.0, 0.0))
    uv = project_points(projection_matrix(probe), _world(ct.affine, corners))
    half = np.abs(uv).max(axis=0) * 1.05
    side = [min(_MAX_SIDE, max(64, 8 * math.ceil(2 * h / 8))) for h in half]
    return replace(g, cols=side[0], rows=side[1])


def _bodies(inputs: _Inputs) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Each centroid's vertebral body (cropped bool mask, its affine); none without a mask."""
    if inputs.mask is None:
        return {}
    from scipy.ndimage import find_objects

    labels, affine = inputs.mask.data, inputs.ct.affine
    boxes = find_objects(labels, max_label=28)
    axes = spine_axes(inputs.centroids, affine)
    out: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for label, ijk in inputs.centroids.items():
        box = boxes[label - 1]
        if box is None:
            continue  # a centroid without mask voxels: no body, no truth on the film
        lo = np.array([s.start for s in box])
        crop_affine = affine.copy()
        crop_affine[:3, 3] = _world(affine, lo)[0]
        try:
            body = body_mask_3d(labels[box], label, np.asarray(ijk) - lo, crop_affine, axes[label])
        except BodyMaskError as exc:
            raise DrrInputError(f"{inputs.mask.path}: {VERSE_LABELS[label]} (label {label}): {exc}") from None
        out[label] = (body, crop_affine)
    return out


@dataclass(frozen=True)
class _Film:
    geometry: DrrGeometry
    dataset_bytes: bytes
    vertebrae: tuple[dict[str, Any], ...]
    body_part: str


def _render_film(inputs: _Inputs, g: DrrGeometry, bodies: Mapping[int, tuple[np.ndarray, np.ndarray]], index: int,
                 seed: int) -> _Film:
    """Render one view, place every vertebra on it, and build its DX file (bytes)."""
    import torch

    from spine_dfl.drr.render import Exposure, expose, hu_to_mu, line_integrals

    device = "cuda" if torch.cuda.is_available() else "cpu"
    mu = hu_to_mu(torch.from_numpy(inputs.ct.data).to(device))
    image = expose(line_integrals(mu, inputs.ct.affine, g), Exposure(), np.random.default_rng([seed, 0xD22, index]))
    vertebrae = _place_vertebrae(inputs, g, bodies)
    entropy = ["spine-dfl drr", inputs.digest, f"{g!r} seed {seed}"]
    ds = drr_dataset(image, g, inputs.identity, patient_orientation(g), entropy, body_part=_body_part(vertebrae),
                     bits=12, series_number=index + 1)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return _Film(g, buffer.getvalue(), tuple(vertebrae), str(ds.BodyPartExamined))


def _place_vertebrae(inputs: _Inputs, g: DrrGeometry, bodies: Mapping[int, tuple[np.ndarray, np.ndarray]]
                     ) -> list[dict[str, Any]]:
    """Per centroid (head to tail): its projection, share in the film, ROI and six points."""
    P = projection_matrix(g)
    axes = spine_axes(inputs.centroids, inputs.ct.affine) if inputs.centroids else {}
    placed = []
    for label in sorted(inputs.centroids, key=ANATOMICAL_ORDER.index):
        centroid = _world(inputs.ct.affine, inputs.centroids[label])[0]
        entry: dict[str, Any] = {"vertebra": VERSE_LABELS[label], "label": label,
                                 "centroid_px": [round(float(v), 3) for v in project_points(P, centroid[None])[0]]}
        if label in bodies:
            entry.update(_body_truth(project_body(*bodies[label], g), P, centroid, axes[label], g))
        else:
            entry.update(_centroid_truth(inputs, label, P, g))
        placed.append(entry)
    return placed


def _body_truth(p: BodyProjection, P: np.ndarray, centroid: np.ndarray, axis: np.ndarray, g: DrrGeometry) -> dict[str, Any]:
    share = p.in_film(g.rows, g.cols)
    box = roi(p.on_film(g.rows, g.cols), g.rows, g.cols, (p.x0, p.y0))
    points = None
    if g.view == "lateral" and share > 0:
        up, anterior = image_directions(P, centroid, axis)
        points = six_points(p.field, up, anterior, level=p.level, origin=(p.x0, p.y0))
        if points and not all(0 <= x <= g.cols and 0 <= y <= g.rows for x, y in points.values()):
            points = None  # a point off the film: the row keeps its ROI, without landmarks
    return {"in_film": round(share, 4), "roi": list(box) if box else None,
            "points": {k: [round(x, 2), round(y, 2)] for k, (x, y) in points.items()} if points else None}


def _centroid_truth(inputs: _Inputs, label: int, P: np.ndarray, g: DrrGeometry) -> dict[str, Any]:
    """Without a body mask: a square box 1.5 x the projected distance to the neighbouring centroids
    (30 mm at the isocentre for a lone centroid), centred on the projected centroid."""
    centroid = _world(inputs.ct.affine, inputs.centroids[label])[0]
    others = [_world(inputs.ct.affine, v)[0] for k, v in inputs.centroids.items() if k != label]
    spacing = min((float(np.linalg.norm(o - centroid)) for o in others), default=20.0)
    half = 0.75 * spacing * g.magnification / g.pixel_mm
    cx, cy = project_points(P, centroid[None])[0]
    x0, y0, x1, y1 = cx - half, cy - half, cx + half, cy + half
    inside = max(0.0, min(x1, g.cols) - max(x0, 0)) * max(0.0, min(y1, g.rows) - max(y0, 0))
    share = inside / ((x1 - x0) * (y1 - y0))
    box = (max(math.floor(x0), 0), max(math.floor(y0), 0), min(math.ceil(x1), g.cols), min(math.ceil(y1), g.rows))
    ok = box[2] > box[0] and box[3] > box[1]
    return {"in_film": round(share, 4), "roi": list(box) if ok else None, "points": None}


def _body_part(vertebrae: Sequence[Mapping[str, Any]]) -> str:
    labels = {v["label"] for v in vertebrae if v["in_film"] >= IN_FILM}
    if labels and labels <= set(range(8, 20)) | {28}:
        return "TSPINE"
    if labels and labels <= set(range(20, 28)):
        return "LSPINE"
    return "SPINE"


def _manifest_rows(image: str, film: _Film, inputs: _Inputs) -> list[list[Any]]:
    rows = []
    for v in film.vertebrae:
        if film.geometry.view != "lateral" or v["label"] not in ROW_LABELS or v["in_film"] < IN_FILM or not v["roi"]:
            continue
        points = v["points"]
        cells = [f"{c:.2f}" for name in POINT_NAMES for c in points[name]] if points else [""] * 12
        rows.append([image, inputs.grades.get(v["label"], UNGRADED), v["vertebra"], inputs.identity.patient_id,
                     *v["roi"], *cells])
    return rows


def _projection_entry(image: str, film: _Film) -> dict[str, Any]:
    g = film.geometry
    return {
        "image": image, "view": g.view, "view_position": g.view_position,
        "patient_orientation": list(patient_orientation(g)), "body_part": film.body_part,
        "projection_matrix": [[float(v) for v in row] for row in projection_matrix(g)],
        "rows": g.rows, "cols": g.cols, "pixel_mm": g.pixel_mm, "sid_mm": g.sid_mm, "sod_mm": g.sod_mm,
        "magnification": g.magnification, "isocentre": list(g.isocentre), "principal": list(g.principal_point),
        "source_side": g.source_side, "rotation_deg": g.rotation_deg, "vertebrae": list(film.vertebrae),
    }


def _write(out: Path, inputs: _Inputs, films: Sequence[_Film], seed: int, overwrite: bool) -> DrrResult:
    """Write everything into a temporary folder beside OUT, then put it in OUT's place."""
    stem = ct_stem(inputs.ct.path)
    names = [f"images/{stem}_{film.geometry.view}.dcm" for film in films]
    summary = {
        "generator": "spine-dfl drr", "version": __version__, "ct": inputs.ct.path.name, "seed": seed,
        "truth": "mask" if inputs.mask is not None else ("centroids" if inputs.centroids else "none"),
        "silhouette_mm": SILHOUETTE_MM, "in_film": IN_FILM,
        "images": [_projection_entry(name, film) for name, film in zip(names, films)],
    }
    rows = [row for name, film in zip(names, films) for row in _manifest_rows(name, film, inputs)]
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        (staging / "images").mkdir()
        for name, film in zip(names, films):
            with open(staging / name, "wb") as fh:
                fh.write(film.dataset_bytes)
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(MANIFEST_COLUMNS)
        writer.writerows(rows)
        atomic_write_text(staging / "manifest.csv", buffer.getvalue())
        atomic_write_text(staging / "projections.json", json.dumps(summary, indent=1) + "\n")
        _replace(staging, out, overwrite)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return DrrResult(out, tuple(names), out / "manifest.csv", out / "projections.json", len(rows),
                     {k: v for k, v in summary.items() if k != "images"} | {"images": names, "manifest_rows": len(rows)})


def _replace(staging: Path, out: Path, overwrite: bool) -> None:
    """Rename ``staging`` to ``out``; an existing OUT (allowed by the caller) is moved aside first."""
    os.chmod(staging, 0o777 & ~_umask())
    if not out.exists():
        os.replace(staging, out)
        return
    if any(out.iterdir()) and not overwrite:
        raise DrrInputError(f"{out}: appeared while rendering; pass overwrite to replace it")
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
    os.replace(out, old / "out")
    os.replace(staging, out)
    shutil.rmtree(old, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
