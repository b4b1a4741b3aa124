"""The synthetic cohort: one DICOM radiograph per patient, and the tables the toolkit reads.

``generate_cohort`` draws each patient from its own random stream (so patient i is the same
whatever the cohort size), deals modalities, photometrics and transfer syntaxes over the
cohort, splits patients with ``spine_dfl.data.splits.deal_by_burden``, and writes
manifest.csv, rois.csv, vertebrae.csv and cohort.json (see ``tables``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import date, timedelta
from pathlib import Path

import numpy as np
from pydicom.uid import UID, generate_uid

from spine_dfl.atomic import atomic_output
from spine_dfl.data.splits import deal_by_burden
from spine_dfl.io.errors import InputError
from spine_dfl.synth.anatomy import CLASS_NAMES, SYNTH_VERSION, normalise_probabilities
from spine_dfl.synth.dicom import NATIVE_SYNTAX_CYCLE, SYNTAX_CYCLE, Acquisition, build_dataset, encode, quantise
from spine_dfl.synth.records import CohortSummary, PatientRecord
from spine_dfl.synth.render import check_image_size, render_patient
from spine_dfl.synth.style import SynthStyle, synth_style
from spine_dfl.synth.tables import TABLE_NAMES, write_tables


def generate_cohort(
    out_dir: str | Path,
    patients: int = 40,
    seed: int = 0,
    *,
    rows: int = 1024,
    cols: int | None = None,
    grade_probabilities: Mapping[str, float] | None = None,
    split_fractions: Sequence[float] = (0.6, 0.2, 0.2),
    compress: bool = True,
    bare_names: bool = True,
    overwrite: bool = False,
    style: str | SynthStyle = "default",
) -> CohortSummary:
    """Write a synthetic cohort of lateral thoracolumbar radiographs (one per patient) as DICOM.

    Args:
        out_dir: folder to write (created); files: images/P0000.dcm ..., manifest.csv, rois.csv,
            vertebrae.csv, cohort.json.
        patients: number of patients (= images), >= 1.  14 labelled vertebrae (T4-L5) each.
        seed: non-negative integer; the same seed and settings give byte-identical files.
            Patient i is drawn from its own stream, so it is the same whatever ``patients`` is;
            the dealing of splits, modalities and transfer syntaxes depends on the cohort.
        rows: image height in pixels (default 1024, about 0.45-0.55 mm per pixel at the spine).
        cols: image width; default ``rows * 9 / 16`` rounded to a multiple of 8 (576 for 1024).
        grade_probabilities: marginal probability per grade, default
            normal 0.75, mild 0.12, moderate 0.08, severe 0.05 (realised counts vary because
            each patient has its own fracture propensity, so fractures cluster in patients).
        split_fractions: patient fractions of train/val/test (default 0.6/0.2/0.2).
        compress: when True (default) about half the files use RLE or JPEG 2000 lossless;
            otherwise only native syntaxes (explicit/implicit VR little endian, deflated).
        bare_names: when True (default) every 8th patient (in a seeded order) is written
            without the .dcm suffix, as PACS exports often are.
        overwrite: replace an earlier cohort in out_dir (only files this generator names);
            otherwise finding one raises FileExistsError.
        style: the site's acquisition, a preset name of ``synth.style.STYLES`` or a SynthStyle.
            The same seed gives the same patients, levels, grades and body outlines in every
            style; the images, their processing and the ROIs differ.  Recorded in cohort.json
            (absent there for the default style, whose output is unchanged).

    Returns:
        CohortSummary with the written paths, one PatientRecord per patient (with per-vertebra
        ground truth) and the cohort.json content.
    """
    if isinstance(patients, bool) or not isinstance(patients, (int, np.integer)) or patients < 1:
        raise InputError(f"patients must be a positive integer, got {patients!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InputError(f"seed must be a non-negative integer, got {seed!r}")
    rows = int(rows)
    cols = int(cols) if cols is not None else max(64, int(round(rows * 9 / 16 / 8)) * 8)
    check_image_size(rows, cols)
    fractions = tuple(float(f) for f in split_fractions)
    if len(fractions) != 3 or any(f < 0 for f in fractions) or sum(fractions) <= 0:
        raise InputError(f"split_fractions must be three non-negative numbers, got {split_fractions!r}")
    probs = normalise_probabilities(grade_probabilities)
    patients, seed = int(patients), int(seed)
    style = synth_style(style)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _clean_output(out, overwrite)
    (out / "images").mkdir(exist_ok=True)

    cohort_rng = np.random.default_rng([seed, 0x5EED, 1])
    acquisitions = _deal_acquisitions(patients, cohort_rng, compress=compress, bare_names=bare_names)
    if style.photometric is not None:
        acquisitions = [replace(a, photometric=style.photometric) for a in acquisitions]
    base_date = date(2022, 1, 3) + timedelta(days=int(cohort_rng.integers(0, 730)))
    width = max(4, len(str(patients - 1)))
    written = [
        _write_patient(out, index, f"P{index:0{width}d}", seed, rows, cols, probs, acquisitions[index], base_date, style)
        for index in range(patients)
    ]
    splits = deal_by_burden([[v.label for v in r.vertebrae] for r in written], fractions, cohort_rng, CLASS_NAMES)
    patient_records = tuple(replace(r, split=split) for r, split in zip(written, splits))
    return write_tables(out, seed, rows, cols, probs, fractions, compress, patient_records, style)


def _clean_output(out: Path, overwrite: bool) -> None:
    ours = [out / n for n in TABLE_NAMES]
    images = out / "images"
    ours_images = [p for p in images.iterdir() if re.fullmatch(r"P\d{4,}(\.dcm)?", p.name)] if images.is_dir() else []
    existing = [p for p in ours + ours_images if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{out}: already holds a synthetic cohort ({existing[0].name}); pass overwrite=True to replace it")
    for p in existing:
        p.unlink()


def _deal_acquisitions(patients: int, cohort_rng: np.random.Generator, *, compress: bool, bare_names: bool) -> list[Acquisition]:
    """Modality, photometric, transfer syntax and bare name, dealt in a shuffled patient order
    so that even a small cohort holds every kind."""
    deal = cohort_rng.permutation(patients)
    syntax_cycle = SYNTAX_CYCLE if compress else NATIVE_SYNTAX_CYCLE
    acquisitions: list[Acquisition] = [None] * patients  # type: ignore[list-item]
    for position, patient in enumerate(deal):
        acquisitions[int(patient)] = Acquisition(
            modality=("DX", "CR")[(position // 2) % 2],
            photometric=("MONOCHROME2", "MONOCHROME1")[position % 2],
            transfer_syntax=syntax_cycle[position % len(syntax_cycle)],
            bare_name=bare_names and position % 8 == 7,
        )
    return acquisitions


def _write_patient(out: Path, index: int, patient_id: str, seed: int, rows: int, cols: int, probs: dict[str, float],
                   acquisition: Acquisition, base_date: date, style: SynthStyle) -> PatientRecord:
    """Render, quantise, build and save patient ``index``; its record (split still empty)."""
    rng = np.random.default_rng([seed, 0x5EED, 2, index])
    style_rng = np.random.default_rng([seed, 0x5EED, 3, index])  # style-only effects; leaves ``rng`` alone
    rendered = render_patient(rng, rows, cols, probs, style=style, style_rng=style_rng)
    stored = quantise(rendered, acquisition.photometric, acquisition.modality, rng)
    entropy = ["spine-dfl synth", SYNTH_VERSION, str(seed), str(rows), str(cols), patient_id]
    uids: dict[str, UID] = {
        "study": generate_uid(entropy_srcs=[*entropy, "study"]),
        "series": generate_uid(entropy_srcs=[*entropy, "series"]),
        "sop": generate_uid(entropy_srcs=[*entropy, "sop"]),
    }
    study_date = base_date + timedelta(days=int(rng.integers(0, 365)))
    ds = build_dataset(
        patient_index=index, patient_id=patient_id, seed=seed, acquisition=acquisition, stored=stored,
        rendered=rendered, rng=rng, study_date=study_date, uids=uids,
    )
    encode(ds, stored, acquisition.transfer_syntax)
    name = f"images/{patient_id}" + ("" if acquisition.bare_name else ".dcm")
    with atomic_output(out / name) as fh:
        ds.save_as(fh, enforce_file_format=True)
    return PatientRecord(
        patient_id=patient_id, image=name, sop_instance_uid=str(uids["sop"]),
        study_instance_uid=str(uids["study"]), series_instance_uid=str(uids["series"]),
        modality=acquisition.modality, photometric=acquisition.photometric,
        transfer_syntax=str(acquisition.transfer_syntax), bits_stored=stored.bits_stored, rows=rows, cols=cols,
        mm_per_px=rendered.mm_per_px, split="", vertebrae=rendered.vertebrae,
    )
