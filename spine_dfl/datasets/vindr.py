"""VinDr-SpineXR: ``annotations/{train,test}.csv`` lesion boxes -> image-level labels, and with a locator
per-vertebra weak labels.

Columns ``study_id, series_id, image_id, rad_id, lesion_type, xmin, ymin, xmax, ymax`` (absolute float
pixels of the DICOM grid); an image without findings has one ``No finding`` row with empty boxes.
Images are ``{train,test}_images/<image_id>.dicom``; ``image_id`` is the SOP Instance UID.

- ``manifest.csv``: one whole-image row per image, label ``abnormal`` when a ``Vertebral collapse`` or
  ``Fracture`` box is on it, else ``normal`` (other lesions are listed in ``lesion_types``, not a label).
- ``vertebrae.csv`` (with a locator): one row per located vertebra; ``abnormal`` when a collapse/fracture
  box covers its body (the centre of the located body's box inside the lesion box), else ``normal``;
  ``label_source`` says the label is weak. A box that covers no located vertebra is reported.
Patients: VinDr gives no patient id; ``study_id`` stands in. Splits: ``test.csv`` is ``test``; the
training studies are split 80/20 into ``train`` / ``val`` by the project's patient splitter.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from spine_dfl.datasets.common import (
    BASE_COLUMNS, DatasetFormatError, ImportResult, Unmapped, finite_number, split_by_patient, staged_out, where,
    write_report, write_table,
)

__all__ = ["FRACTURE_TYPES", "LESION_TYPES", "VINDR_COLUMNS", "import_vindr", "read_annotations"]

COLUMNS = ("study_id", "series_id", "image_id", "rad_id", "lesion_type", "xmin", "ymin", "xmax", "ymax")
NO_FINDING = "No finding"
FRACTURE_TYPES = ("Vertebral collapse", "Fracture")
LESION_TYPES = (*FRACTURE_TYPES, "Osteophytes", "Disc space narrowing", "Spondylolysthesis", "Foraminal stenosis",
                "Surgical implant", "Other lesions", NO_FINDING)
_CANONICAL = {name.lower(): name for name in LESION_TYPES}
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
IMAGE_LEVEL = "image-level: lesion boxes of the image"
WEAK = "weak: collapse/fracture box over the located vertebra"
VINDR_COLUMNS: tuple[str, ...] = (*BASE_COLUMNS, "sop_instance_uid", "study_id", "series_id", "rad_id",
                                  "lesion_types", "label_source")
VERTEBRA_COLUMNS: tuple[str, ...] = (*VINDR_COLUMNS, "locator_confidence", "level_anchored")


@dataclass
class ImageLesions:
    """One image's annotation rows: ids, radiologists, and boxes (x_min, y_min, x_max, y_max) by type."""

    image_id: str
    study_id: str
    series_id: str
    part: str
    rad_ids: set[str] = field(default_factory=set)
    boxes: list[tuple[str, tuple[float, float, float, float], int]] = field(default_factory=list)
    no_finding: bool = False

    @property
    def fracture_boxes(self) -> list[tuple[tuple[float, float, float, float], int]]:
        return [(box, row) for kind, box, row in self.boxes if kind in FRACTURE_TYPES]


def _box(path: Path, number: int, row: dict[str, str], kind: str) -> tuple[float, float, float, float] | None:
    cells = [(row.get(c) or "").strip() for c in ("xmin", "ymin", "xmax", "ymax")]
    line = number + 1
    if kind == NO_FINDING:
        filled = [c for c, v in zip(("xmin", "ymin", "xmax", "ymax"), cells) if v]
        if filled:
            raise DatasetFormatError(f"{where(path, number, filled[0], line)}: a 'No finding' row has empty boxes")
        return None
    values = []
    for name, cell in zip(("xmin", "ymin", "xmax", "ymax"), cells):
        value = finite_number(cell)
        if value is None or value < 0:
            raise DatasetFormatError(f"{where(path, number, name, line)}: {cell!r} is not a pixel coordinate "
                                     f"(a {kind!r} row needs its box)")
        values.append(value)
    if values[2] <= values[0] or values[3] <= values[1]:
        field_name = "xmax" if values[2] <= values[0] else "ymax"
        raise DatasetFormatError(f"{where(path, number, field_name, line)}: the box is empty "
                                 f"(xmin {values[0]:g} xmax {values[2]:g}, ymin {values[1]:g} ymax {values[3]:g})")
    return values[0], values[1], values[2], values[3]


def read_annotations(path: Path, part: str) -> dict[str, ImageLesions]:
    """image_id -> its lesions; DatasetFormatError names file, row (and line) and field of a bad row."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetFormatError(f"{path}: not a readable CSV file ({exc})") from None
    reader = csv.DictReader(text.splitlines())
    header = [(c or "").strip() for c in reader.fieldnames or []]
    missing = [c for c in COLUMNS if c not in header]
    if missing:
        raise DatasetFormatError(f"{path}: header (line 1), field {missing[0]!r}: missing (VinDr-SpineXR's columns "
                                 f"are {', '.join(COLUMNS)})")
    images: dict[str, ImageLesions] = {}
    for number, raw in enumerate(reader, start=1):
        if None in raw:
            raise DatasetFormatError(f"{where(path, number, line=number + 1)}: {len(header) + len(raw[None])} fields, "
                                     f"VinDr-SpineXR's rows have {len(header)}")
        row = {(k or "").strip(): (v or "") for k, v in raw.items()}
        ids = {c: row[c].strip() for c in ("study_id", "series_id", "image_id", "rad_id")}
        for name, value in ids.items():
            if not value:
                raise DatasetFormatError(f"{where(path, number, name, number + 1)}: empty")
        if not _UID.match(ids["image_id"]) or len(ids["image_id"]) > 64:
            raise DatasetFormatError(f"{where(path, number, 'image_id', number + 1)}: {ids['image_id']!r} is not a "
                                     "SOP Instance UID")
        kind = _CANONICAL.get(row["lesion_type"].strip().lower())
        if kind is None:
            raise DatasetFormatError(f"{where(path, number, 'lesion_type', number + 1)}: {row['lesion_type'].strip()!r} "
                                     f"is not a VinDr-SpineXR lesion type ({', '.join(LESION_TYPES)})")
        box = _box(path, number, row, kind)
        image = images.setdefault(ids["image_id"], ImageLesions(ids["image_id"], ids["study_id"], ids["series_id"], part))
        if (image.study_id, image.series_id) != (ids["study_id"], ids["series_id"]):
            raise DatasetFormatError(f"{where(path, number, 'study_id', number + 1)}: image {ids['image_id']} is in "
                                     f"study {image.study_id} / series {image.series_id} on an earlier row")
        image.rad_ids.add(ids["rad_id"])
        if box is None:
            image.no_finding = True
        else:
            image.boxes.append((kind, box, number))
    for image in images.values():
        if image.no_finding and image.boxes:
            raise DatasetFormatError(f"{path}: image {image.image_id}: field 'lesion_type': 'No finding' beside "
                                     f"lesion boxes (row {image.boxes[0][2]})")
    return images


def _image_row(image: ImageLesions, path: Path) -> dict[str, Any]:
    kinds = sorted({kind for kind, _, _ in image.boxes})
    return {
        "image": str(path), "label": "abnormal" if image.fracture_boxes else "normal", "patient_id": image.study_id,
        "sop_instance_uid": image.image_id, "study_id": image.study_id, "series_id": image.series_id,
        "rad_id": ";".join(sorted(image.rad_ids)), "lesion_types": ";".join(kinds) or NO_FINDING,
        "label_source": IMAGE_LEVEL,
    }


def covers(lesion: tuple[float, float, float, float], body: tuple[float, float, float, float]) -> bool:
    """Whether a lesion box covers a vertebral body's box: the body's centre lies inside it (edges included).

    (A box covering half a body's box always holds its centre, so no area rule is needed beside it.)"""
    cx, cy = (body[0] + body[2]) / 2, (body[1] + body[3]) / 2
    return lesion[0] <= cx <= lesion[2] and lesion[1] <= cy <= lesion[3]


def _splits(rows: list[dict[str, Any]], parts: list[str], seed: int) -> None:
    train = [i for i, part in enumerate(parts) if part == "train"]
    if train:
        chosen = split_by_patient(pd.DataFrame([rows[i] for i in train]), seed, (0.8, 0.2, 0.0))
        for i, split in zip(train, chosen):
            rows[i]["split"] = split
    for i, part in enumerate(parts):
        if part == "test":
            rows[i]["split"] = "test"


def _read_parts(source: Path) -> dict[str, dict[str, ImageLesions]]:
    parts = {}
    for part in ("train", "test"):
        path = source / "annotations" / f"{part}.csv"
        if path.is_file():
            parts[part] = read_annotations(path, part)
    if not parts:
        raise DatasetFormatError(f"{source}: no annotations/train.csv or annotations/test.csv (VinDr-SpineXR's layout)")
    studies: dict[str, str] = {}
    for part, images in parts.items():
        for image in images.values():
            if studies.setdefault(image.study_id, part) != part:
                raise DatasetFormatError(f"{source / 'annotations'}: study {image.study_id} is in both train.csv and "
                                         "test.csv: a patient in two splits")
    return parts


def import_vindr(source: str | Path, out: str | Path, *, locator: str | Path | None = None, seed: int = 0,
                 overwrite: bool = False) -> ImportResult:
    """Write OUT/manifest.csv (image-level), with ``locator`` OUT/vertebrae.csv, and OUT/import_report.json."""
    source, out = Path(source), Path(out)
    parts = _read_parts(source)
    unmapped = Unmapped()
    rows, kept, part_of = [], [], []
    for part, images in parts.items():
        for image in images.values():
            path = (source / f"{part}_images" / f"{image.image_id}.dicom").resolve()
            if not path.is_file():
                unmapped.add(path, "image file missing", image_id=image.image_id)
                continue
            rows.append(_image_row(image, path))
            kept.append(image)
            part_of.append(part)
    _splits(rows, part_of, seed)
    vertebra_rows: list[dict[str, Any]] = []
    if locator is not None:
        from spine_dfl.datasets.vindr_located import located_rows

        vertebra_rows = located_rows(locator, kept, rows, unmapped)
    summary = {"images": len(rows), "abnormal_images": sum(r["label"] == "abnormal" for r in rows),
               "studies": len({r["patient_id"] for r in rows}), "seed": seed,
               "vertebra_rows": len(vertebra_rows),
               "abnormal_vertebrae": sum(r["label"] == "abnormal" for r in vertebra_rows)}
    with staged_out(out, overwrite) as staging:
        write_table(staging / "manifest.csv", VINDR_COLUMNS, rows)
        if locator is not None:
            write_table(staging / "vertebrae.csv", VERTEBRA_COLUMNS, vertebra_rows)
        write_report(staging, "vindr", source, unmapped, summary)
    manifests = (out / "manifest.csv", *((out / "vertebrae.csv",) if locator is not None else ()))
    return ImportResult(out, manifests, out / "import_report.json", {**summary, "unmapped": unmapped.counts()})
