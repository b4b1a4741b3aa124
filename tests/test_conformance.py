"""docs/conformance.md against the code, beyond what tests/test_docs.py checks (the accepted SOP classes and
storage transfer syntaxes): Verification's transfer syntaxes are those the statement marks for it, and the
produced objects' table (SOP class, transfer syntax, series number and description) is what
``dicom_out`` writes."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pydicom
from pynetdicom.sop_class import Verification

from dicom_factory import make_gray_dicom
from spine_dfl.dicom_out import DicomResultWriter, VertebraFinding
from spine_dfl.serve.scp import build_ae

CONFORMANCE = Path(__file__).resolve().parents[1] / "docs" / "conformance.md"
_UID = re.compile(r"`([0-9]+(?:\.[0-9]+)+)`")


def _table(heading: str) -> list[dict[str, str]]:
    """The rows of the one Markdown table under the level-2 heading ``heading``, as column -> cell."""
    text = CONFORMANCE.read_text(encoding="utf-8")
    match = re.search(rf"^## {re.escape(heading)}\s*$(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match, f"conformance.md: no section '## {heading}'"
    lines = [line.strip().strip("|") for line in match.group(1).splitlines() if line.startswith("|")]
    assert len(lines) > 2, f"conformance.md: no table under '## {heading}'"
    header = [cell.strip() for cell in lines[0].split("|")]
    rows = [dict(zip(header, (cell.strip() for cell in line.split("|")), strict=True)) for line in lines[2:]]
    assert rows, f"conformance.md: an empty table under '## {heading}'"
    return rows


def _uid(cell: str) -> str:
    found = _UID.findall(cell)
    assert len(found) == 1, f"{cell!r} holds {len(found)} UIDs, not one"
    return found[0]


def test_verification_accepts_the_syntaxes_marked_for_it() -> None:
    rows = _table("Accepted transfer syntaxes")
    assert {row["Verification"] for row in rows} == {"yes", "no"}
    marked = {_uid(row["Transfer Syntax UID"]) for row in rows if row["Verification"] == "yes"}
    echo = [c for c in build_ae("SPINEDFL", None).supported_contexts if c.abstract_syntax == Verification]
    assert len(echo) == 1
    assert {str(syntax) for syntax in echo[0].transfer_syntax} == marked


def test_the_produced_objects_are_what_dicom_out_writes(tmp_path: Path) -> None:
    documented = {(_uid(row["SOP Class UID"]), _uid(row["transfer syntax"]), int(row["series number"]),
                   row["series description"].strip("`")) for row in _table("Produced objects")}
    pixels = np.random.default_rng(0).integers(0, 4096, (120, 90)).astype(np.uint16)
    source = make_gray_dicom(tmp_path / "source.dcm", pixels, patient_id="P1", BodyPartExamined="SPINE",
                             ImagerPixelSpacing=[0.2, 0.2])
    finding = VertebraFinding("L1", (10.0, 10.0, 60.0, 50.0), "normal", {"normal": 0.8, "mild": 0.2})
    writer = DicomResultWriter(tmp_path / "out", ["normal", "mild"], run_key="conformance")
    files = writer.write(tmp_path / "source.dcm", [finding], display_image=pixels.astype(np.float32))
    written = set()
    for path in (files.sr_path, files.sc_path):
        ds = pydicom.dcmread(path)
        assert ds.StudyInstanceUID == source.StudyInstanceUID  # in the source study, new series
        assert ds.SeriesInstanceUID != source.SeriesInstanceUID
        written.add((str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID), int(ds.SeriesNumber),
                     str(ds.SeriesDescription)))
    assert written == documented
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(p.name for p in (files.sr_path, files.sc_path))
