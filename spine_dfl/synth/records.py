"""What the cohort generator returns: one record per radiograph, and the cohort summary."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spine_dfl.synth.truth import VertebraTruth


@dataclass(frozen=True)
class PatientRecord:
    """One generated radiograph: identifiers, acquisition choices and its vertebrae (T4-L5)."""

    patient_id: str
    image: str  # path relative to the cohort folder, forward slashes
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    modality: str
    photometric: str
    transfer_syntax: str
    bits_stored: int
    rows: int
    cols: int
    mm_per_px: float
    split: str
    vertebrae: tuple[VertebraTruth, ...]


@dataclass(frozen=True)
class CohortSummary:
    """What ``generate_cohort`` wrote; ``summary`` is the content of cohort.json."""

    out_dir: Path
    seed: int
    manifest_path: Path
    rois_path: Path
    vertebrae_path: Path
    cohort_json_path: Path
    patients: tuple[PatientRecord, ...]
    summary: dict[str, Any] = field(repr=False)

    @property
    def image_paths(self) -> list[Path]:
        return [self.out_dir / p.image for p in self.patients]

    @property
    def class_counts(self) -> dict[str, int]:
        return dict(self.summary["class_counts"])

    @property
    def split_class_counts(self) -> dict[str, dict[str, int]]:
        return {k: dict(v) for k, v in self.summary["split_class_counts"].items()}
