"""The phantom on disk in VerSe's BIDS layout, and ``spine-dfl phantom``'s cohort of such scans.

Per patient ``<id>``: ``rawdata/sub-<id>/sub-<id>_ct.nii.gz`` (HU, int16),
``derivatives/sub-<id>/sub-<id>_seg-vert_msk.nii.gz`` (whole vertebrae in VerSe numbers, 26 the
sacrum), ``derivatives/sub-<id>/sub-<id>_seg-subreg_ctd.json`` (VerSe centroids, P-I-R axis
codes as VerSe writes them), ``derivatives/sub-<id>/sub-<id>_grades.csv`` and
``derivatives/sub-<id>/sub-<id>_phantom.json`` (transitional anatomy, anchors, patient
parameters).  Files are written atomically; NIfTI files are gzipped with mtime 0, so the same
seed gives the same bytes.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import re
import shutil
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from spine_dfl.atomic import atomic_output, atomic_write_text
from spine_dfl.io.verse import write_centroids
from spine_dfl.phantom.anatomy import PHANTOM_VERSION, PhantomError, draw_patient
from spine_dfl.phantom.truth import GRADES_COLUMNS
from spine_dfl.phantom.volume import PhantomCT, build_ct, check_voxel_mm

__all__ = ["COHORT_FILE", "write_phantom_cohort", "write_verse_layout"]

COHORT_FILE = "phantom.json"
_ID = re.compile(r"[A-Za-z0-9]+")


def _nifti_bytes(array: np.ndarray, affine: np.ndarray, intent: str) -> bytes:
    """A .nii.gz as bytes: sform and qform set to the affine (scanner), mm units, gzip mtime 0."""
    import nibabel as nib

    img = nib.Nifti1Image(array, affine)
    img.header.set_xyzt_units("mm")
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    img.header["descrip"] = f"spine-dfl phantom {PHANTOM_VERSION} {intent}".encode()[:79]
    return gzip.compress(img.to_bytes(), compresslevel=6, mtime=0)


def _write_bytes(path: Path, data: bytes) -> None:
    with atomic_output(path) as fh:
        fh.write(data)


def _grades_csv(ct: PhantomCT) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(GRADES_COLUMNS)
    for row in ct.grades:
        writer.writerow([row.level, row.label, row.grade, row.shape, f"{row.height_loss:.4f}"])
    return buffer.getvalue()


def _patient_json(patient_id: str, ct: PhantomCT) -> dict[str, Any]:
    p = ct.patient
    params = {k: round(float(getattr(p, k)), 4) for k in ("size", "trunk_lr_mm", "trunk_ap_mm", "fat_mm", "trabecular_hu",
                                                           "cortical_hu", "kyphosis_deg", "lordosis_deg", "scoliosis_deg")}
    truth = asdict(ct.truth)
    truth["anchors"] = {k: [round(x, 3) for x in v] for k, v in truth["anchors"].items()}
    grades = [{**asdict(g), **{k: round(v, 4) for k, v in asdict(g).items() if isinstance(v, float)}} for g in ct.grades]
    return {"patient_id": patient_id, "generator": "spine-dfl phantom", "version": PHANTOM_VERSION,
            "seed": p.seed, "index": p.index, "voxel_mm": ct.voxel_mm, "shape": list(ct.hu.shape),
            "parameters": params, "truth": truth, "grades": grades}


def write_verse_layout(out: str | Path, patient_id: str, ct: PhantomCT) -> dict[str, Path]:
    """Write one phantom scan under ``out`` in VerSe's layout; returns kind -> path (ct, mask,
    centroids, grades, truth).  ``patient_id`` must be letters and digits (a BIDS label)."""
    if not _ID.fullmatch(str(patient_id)):
        raise PhantomError(f"patient_id must be letters and digits only (a BIDS subject label), got {patient_id!r}")
    out = Path(out)
    sub = f"sub-{patient_id}"
    raw, derived = out / "rawdata" / sub, out / "derivatives" / sub
    raw.mkdir(parents=True, exist_ok=True)
    derived.mkdir(parents=True, exist_ok=True)
    paths = {"ct": raw / f"{sub}_ct.nii.gz", "mask": derived / f"{sub}_seg-vert_msk.nii.gz",
             "centroids": derived / f"{sub}_seg-subreg_ctd.json", "grades": derived / f"{sub}_grades.csv",
             "truth": derived / f"{sub}_phantom.json"}
    _write_bytes(paths["ct"], _nifti_bytes(ct.hu, ct.affine, "CT HU"))
    _write_bytes(paths["mask"], _nifti_bytes(ct.labels, ct.affine, "vertebra labels (VerSe)"))
    write_centroids(paths["centroids"], ct.centroids, ct.hu.shape, ct.affine)
    atomic_write_text(paths["grades"], _grades_csv(ct))
    atomic_write_text(paths["truth"], json.dumps(_patient_json(patient_id, ct), indent=1) + "\n")
    return paths


def _clean(out: Path, overwrite: bool) -> None:
    """Refuse (or, with overwrite, remove) an earlier phantom cohort: only what this writer names."""
    ours = [out / COHORT_FILE] + [d for top in ("rawdata", "derivatives") if (out / top).is_dir()
                                  for d in sorted((out / top).iterdir()) if re.fullmatch(r"sub-phantom\d{3,}", d.name)]
    existing = [p for p in ours if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{out}: already holds a phantom cohort ({existing[0]}); pass --overwrite to replace it")
    for path in existing:
        shutil.rmtree(path) if path.is_dir() else path.unlink()


def write_phantom_cohort(out: str | Path, patients: int, seed: int = 0, *, voxel_mm: float = 2.0,
                         overwrite: bool = False) -> dict[str, Any]:
    """Write ``patients`` phantom scans (``sub-phantom0000`` ...) in VerSe's layout and
    ``phantom.json``; patient i is drawn from its own stream (the same whatever the cohort size).
    Returns the summary written to ``phantom.json``."""
    if isinstance(patients, bool) or not isinstance(patients, (int, np.integer)) or patients < 1:
        raise PhantomError(f"patients must be a positive integer, got {patients!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise PhantomError(f"seed must be a non-negative integer, got {seed!r}")
    voxel_mm = check_voxel_mm(voxel_mm)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _clean(out, overwrite)
    width = max(4, len(str(int(patients) - 1)))
    grades: Counter[str] = Counter()
    kinds: Counter[str] = Counter()
    listed = []
    for index in range(int(patients)):
        patient_id = f"phantom{index:0{width}d}"
        ct = build_ct(draw_patient(int(seed), index), float(voxel_mm))
        write_verse_layout(out, patient_id, ct)
        grades.update(g.grade for g in ct.grades)
        kinds[ct.truth.transitional] += 1
        listed.append({"patient_id": patient_id, "transitional": ct.truth.transitional, "rib_pairs": ct.truth.rib_pairs,
                       "shape": list(ct.hu.shape)})
    summary = {"generator": "spine-dfl phantom", "version": PHANTOM_VERSION, "out": str(out), "patients": int(patients),
               "seed": int(seed), "voxel_mm": float(voxel_mm), "grades": dict(sorted(grades.items())),
               "transitional": dict(sorted(kinds.items())), "scans": listed}
    atomic_write_text(out / COHORT_FILE, json.dumps(summary, indent=1) + "\n")
    return summary
