"""A cohort of DRR films from the 3D phantom: ``spine-dfl synth OUT --generator drr``.

Per patient: the phantom CT (``volume.build_ct``), a lateral film and the frontal (AP) film of
the same patient, cut as clinics cut them (whole thoracolumbar T4-L5, lumbar T12-sacrum,
thoracic T1-L1, thoracolumbar junction T10-L2), the source on either side (RL / LL), a share
stored turned by 90, 180 or 270 degrees, magnification and beam position varied.  Tables, as
``spine-dfl synth`` writes them: manifest.csv (the lateral films' vertebrae in the film, six
points), rois.csv, vertebrae.csv (every vertebra of every lateral film with its visibility),
films.csv (each image: view, cut, stored rotation, anchors in the film, transitional anatomy),
projections.json (each image's 3x4 matrix in its stored pixels) and cohort.json.
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spine_dfl.atomic import atomic_output, atomic_write_text
from spine_dfl.data.splits import SPLITS, deal_by_burden
from spine_dfl.drr.dicom import DrrIdentity, drr_dataset
from spine_dfl.drr.geometry import (
    DrrGeometry, map_points, patient_orientation, pixel_map, project_points, projection_matrix, reorient_array,
    reoriented_orientation,
)
from spine_dfl.drr.project import IN_FILM, body_on_film, roi_of
from spine_dfl.drr.render import Exposure, expose, hu_to_mu, line_integrals
from spine_dfl.io.errors import InputError
from spine_dfl.io.vocabulary import GENANT_GRADES, POINT_NAMES
from spine_dfl.phantom.anatomy import PHANTOM_VERSION, heights_mm
from spine_dfl.phantom.anatomy import draw_patient
from spine_dfl.phantom.volume import PhantomCT, build_ct

__all__ = ["FILM_CUTS", "generate_drr_cohort"]

GENERATOR = "spine-dfl synth --generator drr"
FILM_CUTS: dict[str, tuple[str, str]] = {
    "thoracolumbar": ("T4", "L5"), "lumbar": ("T12", "S1"), "thoracic": ("T1", "L1"), "junction": ("T10", "L2"),
}
_CUT_DEAL = ("thoracolumbar", "lumbar", "thoracolumbar", "thoracic", "thoracolumbar", "junction", "lumbar", "thoracic")
_ROTATION_DEAL = (0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 3)  # ~14 % stored turned
MANIFEST_COLUMNS = ("image", "label", "vertebra", "patient_id", "split", "x_min", "y_min", "x_max", "y_max",
                    *(f"{n}_{a}" for n in POINT_NAMES for a in ("x", "y")))
VERTEBRAE_COLUMNS = ("patient_id", "image", "sop_instance_uid", "vertebra", "verse_label", "label", "shape",
                     "height_loss", "anterior_height_mm", "middle_height_mm", "posterior_height_mm",
                     "reference_height_mm", "visible_fraction", "in_film", "centre_x", "centre_y",
                     "body_x_min", "body_y_min", "body_x_max", "body_y_max")
FILM_COLUMNS = ("patient_id", "image", "sop_instance_uid", "view", "view_position", "cut", "stored_rotation_deg",
                "patient_orientation", "rows", "cols", "pixel_mm", "sid_mm", "sod_mm", "levels_in_film",
                "anchor_sacrum", "anchor_last_rib", "anchor_t1", "last_rib_level", "rib_pairs", "transitional")


@dataclass(frozen=True)
class _Film:
    """One written image and its truth rows."""

    row: dict[str, Any]
    projection: dict[str, Any]
    vertebrae: list[dict[str, Any]]


def _world(ct: PhantomCT, label: int) -> np.ndarray:
    return ct.affine[:3, :3] @ ct.centroids[label] + ct.affine[:3, 3]


def _film_geometry(ct: PhantomCT, cut: str, view: str, side: str, rng: np.random.Generator) -> DrrGeometry:
    """The exposure of one film: field from the cut's top to its bottom level, varied beam."""
    names = {v.level: v for v in ct.patient.vertebrae}
    top_name, bottom_name = FILM_CUTS[cut]
    top = names[top_name] if top_name in names else ct.patient.vertebrae[2]
    top_z = top.centre[2] + top.height_mm * 0.8
    bottom_z = (ct.patient.sacrum_centre[2] - 45.0) if bottom_name == "S1" else names[bottom_name].centre[2] - names[bottom_name].height_mm * 0.8
    spine = [v for v in ct.patient.vertebrae if bottom_z <= v.centre[2] <= top_z]
    centre = np.mean([v.centre for v in spine], axis=0) if spine else top.centre
    iso = np.array([centre[0], centre[1] + rng.uniform(-15, 15) + (20 if view == "lateral" else 0), (top_z + bottom_z) / 2])
    sid = float(rng.choice([1000.0, 1000.0, 1150.0, 1500.0]))
    sod = sid - float(rng.uniform(130, 230))
    pixel = float(rng.uniform(0.45, 0.58))
    height_mm = (top_z - bottom_z) * sid / sod * float(rng.uniform(1.05, 1.15))
    rows = int(np.ceil(height_mm / pixel / 8) * 8)
    cols = int(np.ceil(rows * (0.56 if view == "lateral" else 0.8) / 8) * 8) if cut == "thoracolumbar" else \
        int(np.ceil(max(300.0, 230.0 * sid / sod) / pixel / 8) * 8)
    principal = (cols / 2 + float(rng.uniform(-0.04, 0.04)) * cols, rows / 2 + float(rng.uniform(-0.03, 0.03)) * rows)
    return DrrGeometry(rows=rows, cols=cols, isocentre=tuple(float(x) for x in iso), view=view, source_side=side,
                       sid_mm=sid, sod_mm=sod, pixel_mm=pixel, principal=principal,
                       rotation_deg=float(rng.normal(0.0, 3.0)))


def _truth(ct: PhantomCT, g: DrrGeometry, step: np.ndarray, rows: int, cols: int) -> list[dict[str, Any]]:
    """Every mobile vertebra of a lateral film: its visibility, box, ROI and six points, stored pixels."""
    out = []
    for v in ct.patient.vertebrae:
        if v.label not in ct.body_coverage:
            continue
        slices, coverage = ct.body_coverage[v.label]
        block = ct.affine.copy()
        block[:3, 3] = ct.affine[:3, :3] @ np.array([s.start for s in slices]) + ct.affine[:3, 3]
        body = body_on_film(coverage, block, g, v.centre, v.frame[:, 2], v.frame[:, 1],
                            reach_mm=max(v.width_mm, v.depth_mm, v.height_mm) * 0.8)
        if body is None:
            continue
        corners = map_points(step, [(body.box[0], body.box[1]), (body.box[2], body.box[3])])
        box = (float(corners[:, 0].min()), float(corners[:, 1].min()), float(corners[:, 0].max()), float(corners[:, 1].max()))
        ha, hm, hp = heights_mm(v)
        out.append({
            "vertebra": v.level, "verse_label": v.label, "label": v.grade, "shape": v.shape if v.grade != "normal" else "none",
            "height_loss": 1.0 - min(ha, hm, hp) / v.reference_height_mm, "heights": (ha, hm, hp),
            "reference_height_mm": v.reference_height_mm, "visible": body.visible, "box": box,
            "roi": roi_of(box, rows, cols), "centre": map_points(step, [body.centre])[0],
            "points": map_points(step, list(body.points.values())),
        })
    return out


def _anchors(ct: PhantomCT, g: DrrGeometry, truth: list[dict[str, Any]]) -> dict[str, str]:
    """Which counting anchors the (unstored) film shows: the sacrum's top, the last rib pair's vertebra, T1."""
    s1 = project_points(projection_matrix(g), ct.patient.sacrum_centre[None])[0]
    in_film = {t["vertebra"] for t in truth if t["visible"] >= IN_FILM}
    last_rib = ct.patient.last_rib_level
    return {"anchor_sacrum": "yes" if 0 <= s1[0] < g.cols and 0 <= s1[1] < g.rows else "no",
            "anchor_last_rib": "yes" if last_rib in in_film else "no", "anchor_t1": "yes" if "T1" in in_film else "no"}


def _write_film(out: Path, name: str, ct: PhantomCT, mu: torch.Tensor, g: DrrGeometry, k_rot: int, rng: np.random.Generator,
                identity: DrrIdentity, entropy: list[str], series: int, body_part: str) -> tuple[dict[str, Any], np.ndarray, int, int, str]:
    """Render, store (turned), write the DICOM; the film's row, pixel map and stored size."""
    image = expose(line_integrals(mu, ct.affine, g), Exposure(photons=float(rng.uniform(8e3, 3e4))), rng)
    step, rows, cols = pixel_map(g.rows, g.cols, k_rot)
    orientation = reoriented_orientation(patient_orientation(g), k_rot)
    ds = drr_dataset(reorient_array(image, k_rot), g, identity, orientation, [*entropy, name], body_part=body_part,
                     bits=int(rng.choice([12, 14, 16])), series_number=series)
    with atomic_output(out / name) as fh:
        ds.save_as(fh, enforce_file_format=True)
    row = {"image": name, "sop_instance_uid": str(ds.SOPInstanceUID), "view": g.view, "view_position": g.view_position,
           "stored_rotation_deg": 90 * k_rot, "patient_orientation": "\\".join(orientation), "rows": rows, "cols": cols,
           "pixel_mm": round(g.pixel_mm, 4), "sid_mm": round(g.sid_mm, 1), "sod_mm": round(g.sod_mm, 1)}
    return row, step, rows, cols, str(ds.StudyInstanceUID)


def _patient(out: Path, seed: int, index: int, patient_id: str, cut: str, k_rot: int, voxel_mm: float,
             base_date: date) -> list[_Film]:
    """Both films of one patient."""
    rng = np.random.default_rng([seed, 0xD22, 2, index])
    ct = build_ct(draw_patient(seed, index), voxel_mm)
    mu = hu_to_mu(torch.from_numpy(ct.hu))
    side = ("left", "right")[int(rng.integers(0, 2))]
    entropy = [GENERATOR, PHANTOM_VERSION, str(seed), patient_id]
    identity = DrrIdentity(patient_id=patient_id, study_date=base_date + timedelta(days=int(rng.integers(0, 365))),
                           sex=("F", "M")[int(rng.integers(0, 2))], age_years=int(rng.integers(50, 90)))
    part = {"lumbar": "LSPINE", "thoracic": "TSPINE"}.get(cut, "SPINE")
    films = []
    lateral = _film_geometry(ct, cut, "lateral", side, rng)
    row, step, rows, cols, study = _write_film(out, f"images/{patient_id}_lat.dcm", ct, mu, lateral, k_rot, rng, identity,
                                               entropy, 1, part)
    identity = replace(identity, study_instance_uid=study)
    truth = _truth(ct, lateral, step, rows, cols)
    films.append((row, lateral, step, truth))
    frontal = _film_geometry(ct, cut, "ap", side, rng)
    row_ap, step_ap, _, _, _ = _write_film(out, f"images/{patient_id}_ap.dcm", ct, mu, frontal, 0, rng, identity, entropy, 2, part)
    films.append((row_ap, frontal, step_ap, []))
    anchors = _anchors(ct, lateral, truth)
    common = {"patient_id": patient_id, "cut": cut, "last_rib_level": ct.patient.last_rib_level,
              "rib_pairs": ct.patient.rib_pairs, "transitional": ct.patient.transitional, **anchors}
    written = []
    for row, g, step, film_truth in films:
        levels = " ".join(t["vertebra"] for t in film_truth if t["visible"] >= IN_FILM)
        projection = {"image": row["image"], "view": g.view, "view_position": g.view_position,
                      "projection_matrix": (step @ projection_matrix(g)).round(9).tolist(), "rows": row["rows"],
                      "cols": row["cols"], "pixel_mm": g.pixel_mm, "sid_mm": g.sid_mm, "sod_mm": g.sod_mm}
        written.append(_Film({**common, **row, "levels_in_film": levels}, projection, film_truth))
    return written


def _csv(path: Path, columns: Sequence[str], rows: list[dict[str, Any]]) -> None:
    with atomic_output(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(columns), lineterminator="\n", extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def _tables(out: Path, films: list[list[_Film]], splits: list[str]) -> tuple[list[dict], list[dict], list[dict]]:
    manifest, vertebrae, film_rows = [], [], []
    for patient_films, split in zip(films, splits):
        for film in patient_films:
            film_rows.append(film.row)
            for t in film.vertebrae:
                cells = {"patient_id": film.row["patient_id"], "image": film.row["image"], "vertebra": t["vertebra"],
                         "label": t["label"]}
                ha, hm, hp = t["heights"]
                vertebrae.append({**cells, "sop_instance_uid": film.row["sop_instance_uid"], "verse_label": t["verse_label"],
                                  "shape": t["shape"], "height_loss": f"{t['height_loss']:.4f}",
                                  "anterior_height_mm": f"{ha:.3f}", "middle_height_mm": f"{hm:.3f}",
                                  "posterior_height_mm": f"{hp:.3f}", "reference_height_mm": f"{t['reference_height_mm']:.3f}",
                                  "visible_fraction": f"{t['visible']:.3f}", "in_film": "yes" if t["visible"] >= IN_FILM else "no",
                                  "centre_x": f"{t['centre'][0]:.2f}", "centre_y": f"{t['centre'][1]:.2f}",
                                  **dict(zip(("body_x_min", "body_y_min", "body_x_max", "body_y_max"),
                                             (f"{c:.2f}" for c in t["box"])))})
                if t["visible"] >= IN_FILM:
                    points = {f"{n}_{a}": f"{t['points'][k][j]:.2f}" for k, n in enumerate(POINT_NAMES) for j, a in enumerate("xy")}
                    manifest.append({**cells, "split": split, **dict(zip(("x_min", "y_min", "x_max", "y_max"), t["roi"])), **points})
    return manifest, vertebrae, film_rows


def generate_drr_cohort(out_dir: str | Path, patients: int = 40, seed: int = 0, *, voxel_mm: float = 2.0,
                        split_fractions: Sequence[float] = (0.6, 0.2, 0.2), overwrite: bool = False) -> dict[str, Any]:
    """Write a DRR cohort (see the module doc) into ``out_dir``; return cohort.json's content.

    Patient i is drawn from its own stream (the same whatever ``patients`` is); the same seed gives
    the same bytes.  An existing cohort in ``out_dir`` needs ``overwrite``.
    """
    if isinstance(patients, bool) or not isinstance(patients, (int, np.integer)) or patients < 1:
        raise InputError(f"patients must be a positive integer, got {patients!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InputError(f"seed must be a non-negative integer, got {seed!r}")
    out = Path(out_dir)
    names = ("manifest.csv", "rois.csv", "vertebrae.csv", "films.csv", "projections.json", "cohort.json")
    if any((out / n).exists() for n in names) and not overwrite:
        raise FileExistsError(f"{out}: already holds a cohort (cohort.json or manifest.csv); pass overwrite=True")
    (out / "images").mkdir(parents=True, exist_ok=True)
    for old in (out / "images").glob("P*_*.dcm"):
        old.unlink()
    cohort_rng = np.random.default_rng([seed, 0xD22, 1])
    deal = cohort_rng.permutation(patients)
    base_date = date(2022, 1, 3) + timedelta(days=int(cohort_rng.integers(0, 730)))
    width = max(4, len(str(patients - 1)))
    films = []
    for index in range(patients):
        slot = int(deal[index])
        films.append(_patient(out, seed, index, f"P{index:0{width}d}", _CUT_DEAL[slot % len(_CUT_DEAL)],
                              _ROTATION_DEAL[slot % len(_ROTATION_DEAL)], voxel_mm, base_date))
    labels = [[t["label"] for f in p for t in f.vertebrae if t["visible"] >= IN_FILM] for p in films]
    splits = deal_by_burden(labels, tuple(float(f) for f in split_fractions), cohort_rng, GENANT_GRADES)
    manifest, vertebrae, film_rows = _tables(out, films, splits)
    _csv(out / "manifest.csv", MANIFEST_COLUMNS, manifest)
    _csv(out / "rois.csv", ("sop_instance_uid", "image", "vertebra", "x_min", "y_min", "x_max", "y_max"),
         [{**m, "sop_instance_uid": next(f["sop_instance_uid"] for f in film_rows if f["image"] == m["image"])} for m in manifest])
    _csv(out / "vertebrae.csv", VERTEBRAE_COLUMNS, vertebrae)
    _csv(out / "films.csv", FILM_COLUMNS, film_rows)
    atomic_write_text(out / "projections.json", json.dumps({"images": [f.projection for p in films for f in p]}, indent=1) + "\n")
    summary = _summary(seed, patients, voxel_mm, split_fractions, manifest, film_rows, splits)
    atomic_write_text(out / "cohort.json", json.dumps(summary, indent=2) + "\n")
    return summary


def _summary(seed: int, patients: int, voxel_mm: float, fractions: Sequence[float], manifest: list[dict],
             films: list[dict], splits: list[str]) -> dict[str, Any]:
    labels = [m["label"] for m in manifest]
    laterals = [f for f in films if f["view"] == "lateral"]
    return {
        "generator": GENERATOR, "generator_version": PHANTOM_VERSION, "seed": seed, "patients": patients,
        "images": len(films), "vertebrae": len(manifest), "voxel_mm": voxel_mm, "class_names": list(GENANT_GRADES),
        "split_fractions": list(fractions), "class_counts": {c: labels.count(c) for c in GENANT_GRADES},
        "split_patients": {s: splits.count(s) for s in SPLITS},
        "split_class_counts": {s: {c: sum(m["label"] == c and m["split"] == s for m in manifest) for c in GENANT_GRADES}
                               for s in SPLITS},
        "cuts": dict(sorted(Counter(f["cut"] for f in laterals).items())),
        "view_positions": dict(sorted(Counter(f["view_position"] for f in films).items())),
        "stored_rotation_deg": dict(sorted(Counter(str(f["stored_rotation_deg"]) for f in laterals).items())),
        "transitional": dict(sorted(Counter(f["transitional"] for f in laterals).items())),
        "files": {"images": "images", "manifest": "manifest.csv", "rois": "rois.csv", "vertebrae": "vertebrae.csv",
                  "films": "films.csv", "projections": "projections.json"},
    }
