"""Library entry points of ``spine-dfl explain``: a manifest's rows, or image files with a ROI table.

Both load the checkpoint, turn their input into records and call ``explain``. Bad input
(checkpoint, manifest, ROI table, no files) raises ``ExplainInputError`` or ``CheckpointError``
naming the file and what is wrong; a run in which no sample could be explained raises
``NoSampleExplained``. Samples that fail on their own are listed in the returned ``ExplainRun``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spine_dfl.explain.run import explain
from spine_dfl.io.errors import CheckpointError, InputError

if TYPE_CHECKING:
    from spine_dfl.engine.checkpoint import LoadedCheckpoint

log = logging.getLogger("spine_dfl.explain")

__all__ = ["ExplainInputError", "ExplainRun", "explain_inputs", "explain_records", "gated_records", "input_records"]


@dataclass
class ExplainRun:
    """What an explain run wrote: the patches.json objects, and the samples that failed (with why)."""

    out_dir: Path
    entries: list[dict[str, Any]]
    failures: list[dict[str, str]] = field(default_factory=list)

    @property
    def index_html(self) -> Path:
        return self.out_dir / "index.html"


class ExplainInputError(InputError):
    """The input of an explain run cannot be used (message names the file and why)."""


def _explain(loaded: LoadedCheckpoint, records: Iterable[Mapping[str, Any]], out_dir: str | Path, top_n: int, device: str,
             batch_size: int, failures: list[dict[str, str]] | None = None) -> ExplainRun:
    failures = [] if failures is None else failures
    entries = explain(loaded, records, out_dir, top_n=top_n, device=device, batch_size=batch_size, failures=failures)
    return ExplainRun(Path(out_dir), entries, failures)


def _load(checkpoint: str | Path, device: str) -> LoadedCheckpoint:
    from spine_dfl.engine.checkpoint import load_checkpoint
    from spine_dfl.engine.device import resolve_device

    return load_checkpoint(checkpoint, map_location=resolve_device(device))


def explain_records(
    checkpoint: str | Path,
    manifest: str | Path,
    out_dir: str | Path,
    split: str | None = None,
    top_n: int = 5,
    device: str = "auto",
    batch_size: int = 8,
) -> ExplainRun:
    """Explain a manifest's rows (only `split`'s when given and the manifest has splits).

    Unlabelled rows are fine (the gallery then has no correct / wrong). For a model trained on
    vertebra ROIs the manifest needs ROI columns, and a row with empty ROI cells fails on its own.
    """
    from spine_dfl.data.dataset import manifest_records

    loaded = _load(checkpoint, device)
    try:
        records = manifest_records(manifest, loaded.class_names, split, loaded.preprocessing.use_roi,
                                   require_labels=False)
    except ValueError as exc:  # ManifestError names every bad row; ValueError an empty split
        raise ExplainInputError(str(exc)) from exc
    return _explain(loaded, with_manifest_points(records, manifest), out_dir, top_n, device, batch_size)


def with_manifest_points(records: list[dict[str, Any]], manifest: str | Path) -> list[dict[str, Any]]:
    """The records with their manifest row's six points (``points`` (6, 2)) where all twelve cells are numbers."""
    import numpy as np
    import pandas as pd

    from spine_dfl.data.manifest import load_manifest
    from spine_dfl.io.vocabulary import POINT_COLUMNS

    table = load_manifest(manifest, check_files=False, check_rois=False, require_labels=False).table
    if not all(c in table.columns for c in POINT_COLUMNS):
        return records
    by_row = table.set_index("row")[list(POINT_COLUMNS)].apply(pd.to_numeric, errors="coerce")
    out = []
    for record in records:
        points = by_row.loc[record["row"]].to_numpy(np.float64) if record.get("row") in by_row.index else None
        out.append({**record, "points": points.reshape(6, 2)} if points is not None and np.isfinite(points).all()
                   else record)
    return out


def explain_inputs(
    checkpoint: str | Path,
    inputs: Sequence[str | Path],
    rois_csv: str | Path | None,
    out_dir: str | Path,
    top_n: int = 5,
    device: str = "auto",
    batch_size: int = 8,
    locator: str | Path | None = None,
    ignore_view_tags: bool = False,
) -> ExplainRun:
    """Explain image files and folders (DICOM, NIfTI, PNG/TIFF), with vertebra ROIs from `rois_csv`.

    A model trained on vertebra ROIs needs `rois_csv` (read by ``spine_dfl.io.read_rois``: one rule
    for every caller, a bad row rejects the table naming the row) or a locator (``locator``, or the
    one embedded in the checkpoint), which finds each file's vertebrae and their six points (drawn
    in the gallery); a file where it finds none is a failure "no vertebrae found". A whole-image
    model gets one sample per file and reads no ROI table. A DICOM whose header the input gate refuses
    (``gate.header``, as in score; ``ignore_view_tags``: modality and SOP class only) is a failure with
    that reason, before any ROI or locator.
    """
    from spine_dfl.locate.locating import resolve_locator

    loaded = _load(checkpoint, device)
    use_roi = bool(loaded.preprocessing.use_roi)
    source = resolve_locator(locator, loaded.raw, checkpoint) if use_roi and rois_csv is None else None
    failures: list[dict[str, str]] = []
    if source is None:
        records = gated_records(input_records(inputs, rois_csv, use_roi), failures, ignore_view_tags)
        return _explain(loaded, records, out_dir, top_n, device, batch_size, failures)
    files = gated_records(input_records(inputs, None, False), failures, ignore_view_tags)
    records = located_records(files, source.load(), failures)
    return _explain(loaded, records, out_dir, top_n, device, batch_size, failures)


def gated_records(records: Sequence[Mapping[str, Any]], failures: list[dict[str, str]],
                  ignore_view_tags: bool = False) -> list[Mapping[str, Any]]:
    """The records whose image the input gate lets through (``gate.header.file_refusal``, one header read
    per image); each refused image is one failure with the gate's reason."""
    from spine_dfl.gate.header import file_refusal

    refusals: dict[str, str | None] = {}
    kept = []
    for record in records:
        image = str(record["image"])
        if image not in refusals:
            refusals[image] = file_refusal(image, ignore_view_tags)
            if refusals[image] is not None:
                log.warning("explain: skipping %s (%s)", image, refusals[image])
                failures.append({"image": image, "vertebra": "", "reason": str(refusals[image])})
        if refusals[image] is None:
            kept.append(record)
    return kept


def located_records(files: Sequence[Mapping[str, Any]], locator: Any, failures: list[dict[str, str]]) -> list[dict[str, Any]]:
    """One record per located vertebra of each file record (``roi``, ``vertebra``, ``points`` (6, 2) and
    ``locator_confidence``); files that cannot be read or where none is found go to ``failures``."""
    from spine_dfl.io import read_dicom_header, read_image
    from spine_dfl.io.discovery import is_dicom
    from spine_dfl.locate.locating import NO_VERTEBRAE, locate_film, view_of

    view = view_of(locator)
    records = []
    for file in files:
        try:
            image = file["image"]
            words = read_dicom_header(image).get("PatientOrientation") if is_dicom(image) else None
            found = locate_film(locator, view, read_image(image), words)
        except Exception as exc:  # an unreadable file fails on its own, as in score
            failures.append({"image": str(file["image"]), "vertebra": "", "reason": f"{type(exc).__name__}: {exc}"})
            continue
        if not found.vertebrae or found.refusal:
            failures.append({"image": str(file["image"]), "vertebra": "", "reason": found.refusal or NO_VERTEBRAE})
            continue
        records += [{**file, "roi": box, "crop_roi": crop, "orientation": found.orientation.name, "vertebra": level,
                     "points": points, "locator_confidence": confidence}
                    for level, box, crop, points, confidence in zip(found.vertebrae, found.boxes, found.crop_boxes,
                                                                     found.points, found.confidence)]
    return records


def input_records(inputs: Sequence[str | Path], rois_csv: str | Path | None, use_roi: bool) -> list[dict[str, Any]]:
    """Records of the image files under `inputs`: one per ROI row of each file, or one per file.

    Raises ExplainInputError when an input is missing, no image is found, or ROIs are needed but
    missing, unusable or matching no file. ROI rows matching no file are logged.
    """
    from spine_dfl.io import RoiTableError, dicom_uid, find_inputs, read_rois

    paths = [Path(p) for p in inputs]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise ExplainInputError(f"input not found: {', '.join(missing)}")
    files = find_inputs(paths)
    if not files:
        raise ExplainInputError(f"no image files under {', '.join(str(p) for p in paths)}")
    if not use_roi:
        return [{"image": str(f), "roi": None, "vertebra": "", "label": None, "sop_instance_uid": dicom_uid(f) or ""}
                for f in files]
    if rois_csv is None:
        raise ExplainInputError("this model was trained on vertebra ROIs: pass --rois rois.csv (sop_instance_uid or "
                                "image, vertebra, x_min, y_min, x_max, y_max)")
    try:
        table = read_rois(rois_csv)
    except RoiTableError as exc:
        raise ExplainInputError(str(exc)) from exc
    pairs, unmatched = table.match(files)
    if unmatched:
        log.warning("explain: %d ROI row(s) of %s match none of the input files", len(unmatched), rois_csv)
    if not pairs:
        raise ExplainInputError(f"{rois_csv}: no ROI row matches any of the {len(files)} input file(s)")
    return [{"image": str(file), "roi": row.box, "vertebra": row.vertebra, "label": None,
             "sop_instance_uid": row.sop_instance_uid} for file, row in pairs]
