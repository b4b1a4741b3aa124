"""The inputs of ``spine-dfl drr``, read and checked before anything is written.

Every problem is a ``DrrInputError`` (a ValueError) with one line naming the file and what is wrong:
a CT without a usable affine, a centroid file that is not VerSe's format (``io.verse`` names entry
and key), a mask whose shape, affine or labels do not fit the CT, a grades CSV row that cannot be
read (file, row, column).  ``ct_identity`` takes patient and study identity from the CT's file name
(a BIDS ``sub-<id>``) and an optional sidecar JSON next to it.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path

import numpy as np

from spine_dfl.drr.dicom import DrrIdentity
from spine_dfl.io.errors import InputError
from spine_dfl.io.verse import VERSE_LABELS, VerseFormatError, read_centroids, vertebra_label
from spine_dfl.io.vocabulary import GENANT_GRADES, grade_name

__all__ = ["DrrInputError", "Volume", "ct_identity", "ct_stem", "load_centroids", "load_ct", "load_mask", "read_grades"]

_SIDECAR_KEYS = ("PatientID", "PatientName", "StudyInstanceUID", "StudyDate")
_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+$")


class DrrInputError(InputError):
    """An input of ``drr_study`` that cannot be used; the message names the file and the problem."""


@dataclass(frozen=True)
class Volume:
    """A 3D array and the affine from its voxel indices to world RAS mm."""

    path: Path
    data: np.ndarray
    affine: np.ndarray


def ct_stem(path: Path) -> str:
    """The file name without .nii.gz / .nii / its suffix."""
    name = path.name
    for suffix in (".nii.gz", ".nii"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _load(path: Path, what: str) -> tuple[object, np.ndarray]:
    """nibabel image and its usable affine; DrrInputError when unreadable or without an affine."""
    import nibabel as nib

    if not path.is_file():
        raise DrrInputError(f"{path}: {what} file not found")
    try:
        image = nib.load(str(path))
    except Exception as exc:  # nibabel raises many kinds for a file it cannot read
        raise DrrInputError(f"{path}: not a {what} volume nibabel can read ({exc})") from None
    header = image.header
    if hasattr(header, "get_qform") and hasattr(header, "get_sform"):
        if int(header["qform_code"]) == 0 and int(header["sform_code"]) == 0:
            raise DrrInputError(f"{path}: {what} has no usable affine (qform_code and sform_code are both 0)")
    affine = np.asarray(image.affine, dtype=np.float64)
    linear = affine[:3, :3]
    spacing = np.linalg.norm(linear, axis=0) if np.isfinite(affine).all() else np.zeros(3)
    if not np.isfinite(affine).all() or spacing.min() <= 1e-6 or abs(np.linalg.det(linear)) <= 1e-6 * spacing.prod():
        raise DrrInputError(f"{path}: {what} affine is singular or degenerate ({np.round(linear, 4).tolist()})")
    if len(image.shape) not in (3, 4) or (len(image.shape) == 4 and image.shape[3] != 1):
        raise DrrInputError(f"{path}: {what} must be a 3D volume, got shape {tuple(image.shape)}")
    return image, affine


def load_ct(path: str | Path) -> Volume:
    """The CT in HU (float32) and its affine."""
    path = Path(path)
    image, affine = _load(path, "CT")
    data = np.asarray(image.dataobj, dtype=np.float32).reshape(image.shape[:3])
    if not np.isfinite(data).all():
        raise DrrInputError(f"{path}: CT holds non-finite values")
    return Volume(path, data, affine)


def load_mask(path: str | Path, ct: Volume) -> Volume:
    """A VerSe-numbered label mask on the CT's grid (uint8); shape, affine and labels checked."""
    path = Path(path)
    image, affine = _load(path, "mask")
    if tuple(image.shape[:3]) != ct.data.shape:
        raise DrrInputError(f"{path}: mask shape {tuple(image.shape[:3])} differs from the CT's {ct.data.shape} ({ct.path.name})")
    if not np.allclose(affine, ct.affine, atol=1e-3, rtol=0):
        raise DrrInputError(f"{path}: mask affine differs from the CT's ({ct.path.name}): "
                            f"{np.round(affine, 3).tolist()} vs {np.round(ct.affine, 3).tolist()}")
    data = np.asarray(image.dataobj).reshape(image.shape[:3])
    values = np.unique(data)
    bad = [v for v in values.tolist() if v != 0 and (v != int(v) or not 1 <= int(v) <= 28)]
    if bad:
        raise DrrInputError(f"{path}: mask label {bad[0]:g} is outside VerSe's labels 1-28")
    return Volume(path, data.astype(np.uint8), affine)


def load_centroids(path: str | Path, ct: Volume) -> dict[int, np.ndarray]:
    """VerSe centroids (label -> stored voxel index of the CT); at least one."""
    try:
        centroids = read_centroids(Path(path), ct.data.shape, ct.affine)
    except VerseFormatError as exc:
        raise DrrInputError(str(exc)) from None
    if not centroids:
        raise DrrInputError(f"{path}: the centroid file holds no centroid")
    return centroids



def read_grades(path: str | Path) -> dict[int, str]:
    """Grades CSV -> VerSe label -> Genant grade name.

    Columns: ``vertebra`` (a level name such as L1 or T13, or a VerSe label number 1-28) and
    ``grade`` (Genant 0-3 or normal / mild / moderate / severe); others (e.g. ``shape``) are ignored.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DrrInputError(f"{path}: grades file not readable ({exc})") from None
    reader = csv.DictReader(text.splitlines())
    columns = {(c or "").strip().lower(): c for c in reader.fieldnames or []}
    for needed in ("vertebra", "grade"):
        if needed not in columns:
            raise DrrInputError(f"{path}: grades file has no column {needed!r} (header: {reader.fieldnames})")
    grades: dict[int, str] = {}
    for row_number, row in enumerate(reader, start=1):
        where = f"{path}: row {row_number} (line {row_number + 1})"
        vertebra = (row.get(columns["vertebra"]) or "").strip()
        label = vertebra_label(vertebra)
        if label is None or label not in VERSE_LABELS:
            raise DrrInputError(f"{where}, column 'vertebra': {vertebra!r} is not a level name or VerSe label 1-28")
        grade = grade_name(row.get(columns["grade"]) or "")
        if grade is None:
            raise DrrInputError(f"{where}, column 'grade': {row.get(columns['grade'])!r} is not a Genant grade "
                                f"(0-3 or {', '.join(GENANT_GRADES)})")
        if label in grades:
            raise DrrInputError(f"{where}, column 'vertebra': {VERSE_LABELS[label]} is graded twice")
        grades[label] = grade
    return grades


def _sidecar(ct_path: Path) -> Mapping[str, str]:
    """The sidecar JSON next to the CT (same stem, .json), its identity keys checked; {} if absent."""
    path = ct_path.with_name(ct_stem(ct_path) + ".json")
    if not path.is_file():
        return {}
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DrrInputError(f"{path}: sidecar JSON not readable ({exc})") from None
    if not isinstance(content, Mapping):
        raise DrrInputError(f"{path}: sidecar JSON must be an object")
    found = {}
    for key in _SIDECAR_KEYS:
        if key in content:
            value = content[key]
            if not isinstance(value, str) or len(value) > 64:
                raise DrrInputError(f"{path}: key {key!r} must be a text of at most 64 characters, got {value!r}")
            found[key] = value.strip()
    if "StudyInstanceUID" in found and not _UID.match(found["StudyInstanceUID"]):
        raise DrrInputError(f"{path}: key 'StudyInstanceUID': {found['StudyInstanceUID']!r} is not a DICOM UID")
    if found.get("StudyDate"):
        try:
            datetime.strptime(found["StudyDate"], "%Y%m%d")
        except ValueError:
            raise DrrInputError(f"{path}: key 'StudyDate': {found['StudyDate']!r} is not a date YYYYMMDD") from None
    return found


def ct_identity(ct_path: str | Path) -> DrrIdentity:
    """Patient and study identity of the CT: PatientID from the sidecar, else the BIDS ``sub-<id>``
    of the file name (the id without ``sub-``), else the file's stem; PatientName,
    StudyInstanceUID and StudyDate from the sidecar when it has them."""
    ct_path = Path(ct_path)
    sidecar = _sidecar(ct_path)
    bids = re.search(r"(?:^|_)sub-([A-Za-z0-9]+)", ct_stem(ct_path))
    patient_id = sidecar.get("PatientID") or (bids.group(1) if bids else ct_stem(ct_path))[:64]
    day = sidecar.get("StudyDate") or ""
    return DrrIdentity(patient_id=patient_id, patient_name=sidecar.get("PatientName", ""),
                       study_instance_uid=sidecar.get("StudyInstanceUID") or None,
                       study_date=date(int(day[:4]), int(day[4:6]), int(day[6:])) if day else None, source=ct_path.name)
