"""VerSe 2019/2020 (BIDS layout) -> DRR films through ``spine-dfl drr``, one manifest for all scans.

``rawdata/sub-*/…_ct.nii.gz`` is each CT; ``derivatives/sub-*/<stem>_seg-vert_msk.nii.gz`` its label mask
and ``<stem>_seg-subreg_ctd.json`` its centroids (P-I-R axis codes, read by ``io.verse``), where ``<stem>``
is the CT's name without ``_ct.nii.gz``. Each CT is rendered by ``drr.study.drr_study`` into
``OUT/films/<stem>/`` (its DX films, manifest and projection matrices); ``OUT/manifest.csv`` gathers their
rows (lateral films: levels, ROI and six points from the mask's bodies) with paths relative to OUT, the
grades of ``--grades`` (a table: subject, vertebra, grade), else of the scan's own
``derivatives/sub-*/<stem>_grades.csv`` (vertebra, grade; as ``spine-dfl phantom`` writes it), else
``ungraded`` (column ``grade_source`` says which), and a split by patient. A CT without centroids has no levels and
is not rendered; one without a mask is rendered with centroid boxes and no points: both are reported.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from spine_dfl.datasets.common import (
    BASE_COLUMNS, UNGRADED, DatasetFormatError, ImportResult, Unmapped, split_by_patient, staged_out, where,
    write_report, write_table,
)
from spine_dfl.io.verse import VERSE_LABELS, vertebra_label
from spine_dfl.io.vocabulary import GENANT_GRADES, grade_name

__all__ = ["VERSE_COLUMNS", "import_verse", "read_grade_table"]

CT_SUFFIX = "_ct.nii.gz"
MASK_SUFFIX = "_seg-vert_msk.nii.gz"
GRADES_SUFFIX = "_grades.csv"  # a scan's own grades (vertebra, grade), as ``spine-dfl phantom`` writes them
CENTROID_SUFFIX = "_seg-subreg_ctd.json"
VERSE_COLUMNS: tuple[str, ...] = (*BASE_COLUMNS, "subject", "scan", "grade_source")
GRADE_COLUMNS = ("subject", "vertebra", "grade")


def _subject(text: str) -> str:
    text = text.strip()
    return text if text.startswith("sub-") else f"sub-{text}"



def read_grade_table(path: Path) -> dict[tuple[str, str], str]:
    """(subject, level) -> Genant grade name from a CSV with columns subject, vertebra, grade.

    ``subject``: the BIDS subject (``sub-verse004`` or ``verse004``); ``vertebra``: a level name or a
    VerSe label number; ``grade``: Genant 0-3 or normal/mild/moderate/severe. An empty grade is skipped
    (not graded). DatasetFormatError names file, row and field of a bad row.
    """
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetFormatError(f"{path}: grades file not readable ({exc})") from None
    reader = csv.DictReader(text.splitlines())
    columns = {(c or "").strip().lower(): c for c in reader.fieldnames or []}
    for needed in GRADE_COLUMNS:
        if needed not in columns:
            raise DatasetFormatError(f"{path}: header (line 1), field {needed!r}: missing (columns: subject, vertebra, grade)")
    grades: dict[tuple[str, str], str] = {}
    for number, row in enumerate(reader, start=1):
        cell = {name: (row.get(columns[name]) or "").strip() for name in GRADE_COLUMNS}
        if not cell["subject"]:
            raise DatasetFormatError(f"{where(path, number, 'subject', number + 1)}: empty")
        label = vertebra_label(cell["vertebra"])
        if label not in VERSE_LABELS:
            raise DatasetFormatError(f"{where(path, number, 'vertebra', number + 1)}: {cell['vertebra']!r} is not a "
                                     "level name or VerSe label 1-28")
        if not cell["grade"]:
            continue
        grade = grade_name(cell["grade"])
        if grade is None:
            raise DatasetFormatError(f"{where(path, number, 'grade', number + 1)}: {cell['grade']!r} is not a Genant "
                                     f"grade (0-3 or {', '.join(GENANT_GRADES)})")
        key = (_subject(cell["subject"]), VERSE_LABELS[label])
        if key in grades:
            raise DatasetFormatError(f"{where(path, number, 'vertebra', number + 1)}: {key[1]} of {key[0]} is graded twice")
        grades[key] = grade
    return grades


def _scans(source: Path) -> list[Path]:
    raw = source / "rawdata"
    if not raw.is_dir():
        raise DatasetFormatError(f"{source}: no rawdata/ folder (VerSe's BIDS layout: rawdata/sub-*/..._ct.nii.gz)")
    scans = sorted(raw.glob(f"sub-*/**/*{CT_SUFFIX}"))
    if not scans:
        raise DatasetFormatError(f"{raw}: no sub-*/…{CT_SUFFIX} file")
    return scans


def _derivative(source: Path, ct: Path, suffix: str) -> Path | None:
    stem = ct.name[: -len(CT_SUFFIX)]
    subject = ct.relative_to(source / "rawdata").parts[0]
    found = sorted((source / "derivatives" / subject).glob(f"**/{stem}{suffix}"))
    return found[0] if found else None


def _film_rows(folder: Path, staging: Path, subject: str, stem: str, grades: dict[tuple[str, str], str],
               own: Path | None) -> list[dict[str, Any]]:
    """The rows ``drr_study`` wrote for one scan, its images relative to OUT, graded by the table first, then
    by the scan's own grades file (which drr already applied)."""
    table = pd.read_csv(folder / "manifest.csv", dtype=str, keep_default_na=False)
    rows = []
    for record in table.to_dict("records"):
        grade = grades.get((subject, record["vertebra"]))
        source = "grades table" if grade else (own.name if own is not None and record["label"] != UNGRADED else "")
        record["image"] = (folder / record["image"]).relative_to(staging).as_posix()
        record["label"] = grade or record["label"]
        rows.append({**record, "subject": subject, "scan": stem, "grade_source": source})
    return rows


def import_verse(source: str | Path, out: str | Path, *, views: Sequence[str] = ("lateral",),
                 grades: str | Path | None = None, seed: int = 0, overwrite: bool = False) -> ImportResult:
    """Render every scan of a VerSe folder and write OUT (module docstring) and OUT/import_report.json."""
    from spine_dfl.drr.study import drr_study

    source, out = Path(source), Path(out)
    scans = _scans(source)
    table = read_grade_table(Path(grades)) if grades is not None else {}
    unmapped = Unmapped()
    rows: list[dict[str, Any]] = []
    with staged_out(out, overwrite) as staging:
        rendered_subjects, rendered = set(), []
        for ct in scans:
            stem = ct.name[: -len(CT_SUFFIX)]
            subject = ct.relative_to(source / "rawdata").parts[0]
            centroids, mask = _derivative(source, ct, CENTROID_SUFFIX), _derivative(source, ct, MASK_SUFFIX)
            if centroids is None:
                unmapped.add(ct, f"no {stem}{CENTROID_SUFFIX} in derivatives/{subject}/: levels unknown, not rendered")
                continue
            if mask is None:
                unmapped.add(ct, f"no {stem}{MASK_SUFFIX}: rendered with centroid boxes, no six points")
            folder = staging / "films" / stem
            own = _derivative(source, ct, GRADES_SUFFIX)
            drr_study(ct, folder, centroids=centroids, mask=mask, grades=own, views=views, seed=seed)
            rows.extend(_film_rows(folder, staging, subject, stem, table, own))
            rendered_subjects.add(subject)
            rendered.append(stem)
        for subject, level in sorted(set(table) - {(r["subject"], r["vertebra"]) for r in rows}):
            reason = "no such subject" if subject not in rendered_subjects else "no row for this level (not in a film)"
            unmapped.add(Path(grades or ""), f"grade not used: {reason}", subject=subject, vertebra=level)
        if rows:
            for row, split in zip(rows, split_by_patient(pd.DataFrame(rows), seed)):
                row["split"] = split
        summary = {"scans": len(scans), "rendered": len(rendered),
                   "patients": len({r["patient_id"] for r in rows}), "rows": len(rows), "views": list(views),
                   "graded_rows": sum(r["label"] != UNGRADED for r in rows), "seed": seed}
        write_table(staging / "manifest.csv", VERSE_COLUMNS, rows)
        write_report(staging, "verse", source, unmapped, summary)
    return ImportResult(out, (out / "manifest.csv",), out / "import_report.json",
                        {**summary, "unmapped": unmapped.counts()})
