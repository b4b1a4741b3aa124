"""What a DICOM result reports: one finding per scored sample, and the error every builder raises."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from spine_dfl.io.errors import InputError

if TYPE_CHECKING:  # torch-free at import: the writer processes start quickly
    from spine_dfl.heatmap.evidence import EvidenceMap

__all__ = ["DicomOutputError", "DicomResultFiles", "VertebraFinding"]


class DicomOutputError(InputError):
    """A result object could not be built or written for a source image (message says why)."""


@dataclass(frozen=True)
class VertebraFinding:
    """One scored sample of one source image.

    vertebra: level name such as "L1"; "" for a whole-image result.
    roi: (x_min, y_min, x_max, y_max) in source pixels (continuous, x = column), or None for
         the whole image.
    predicted: predicted class name (one of the checkpoint's class names).
    probabilities: class name -> softmax probability (0..1).
    evidence: the predicted class's evidence map (``spine_dfl.heatmap.EvidenceMap``) for the
        overlay's heatmap, or None (no heatmap).
    cells: the sample's other predictions-table cells: ``roi_source``, ``locator_confidence`` and
        the six-point morphometry (``ha``, ``hm``, ``hp``, ``height_unit``, the ratios, ``height_loss``,
        ``morph_grade``, ``morph_kind``) where known; empty otherwise.
    """

    vertebra: str
    roi: tuple[float, float, float, float] | None
    predicted: str
    probabilities: Mapping[str, float]
    evidence: EvidenceMap | None = None
    cells: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DicomResultFiles:
    sr_path: Path
    sc_path: Path
    sr_sop_instance_uid: str
    sc_sop_instance_uid: str
