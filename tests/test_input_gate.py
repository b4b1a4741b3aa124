"""The input gate from the header (issue 21, item 1): what score, serve and explain refuse before any model.

Unit tests build headers in memory; the real-file tests read the headers of pydicom's and
pydicom-data's files (headers only: ``stop_before_pixels``, no decoder runs); the end-to-end tests
score a folder of such files with a synth lateral film beside them.
"""

from __future__ import annotations

import csv
import json
import logging
import shutil
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import (
    ComputedRadiographyImageStorage,
    CTImageStorage,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
    MRImageStorage,
    MultiFrameGrayscaleByteSecondaryCaptureImageStorage,
    SecondaryCaptureImageStorage,
)

from conftest import pydicom_data_dir, pydicom_test_dir
from spine_dfl.cli import build_parser
from spine_dfl.gate.header import NOT_LATERAL_SPINE, NOT_PROJECTION, file_refusal, header_refusal, is_gate_reason
from spine_dfl.score.errors import reason_category

CLASSES = ["normal", "mild", "severe"]


def _header(**attributes: object) -> Dataset:
    """An image header (Rows, Columns) with the given attributes by keyword."""
    ds = Dataset()
    ds.Rows, ds.Columns = 64, 32
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


# --------------------------------------------------------------------------- refusals, one per reason
@pytest.mark.parametrize("modality", ["CT", "MR", "US", "NM", "PT", "MG", "XA", "RF", "OT", "SEG", "ct"])
def test_modality_that_is_not_a_projection_radiograph_is_refused(modality: str) -> None:
    assert header_refusal(_header(Modality=modality)) == f"modality {modality.upper()}: {NOT_PROJECTION}"
    # with its own SOP class the reason is the same: one bucket per modality in summary.json
    assert header_refusal(_header(Modality=modality, SOPClassUID=CTImageStorage)) == f"modality {modality.upper()}: {NOT_PROJECTION}"


def test_sop_class_is_named_where_the_modality_is_missing_or_contradicts_it() -> None:
    assert header_refusal(_header(SOPClassUID=CTImageStorage)) == f"SOP class CT Image Storage: {NOT_PROJECTION}"
    assert header_refusal(_header(SOPClassUID="1.2.3.4.5")) == f"SOP class 1.2.3.4.5: {NOT_PROJECTION}"
    assert header_refusal(_header(Modality="CR", SOPClassUID=MRImageStorage)) == (
        f"modality CR, SOP class MR Image Storage: {NOT_PROJECTION}")


@pytest.mark.parametrize(("attributes", "reason"), [
    ({"BodyPartExamined": "CHEST", "ViewPosition": "PA"}, "body part CHEST, view PA"),
    ({"BodyPartExamined": "SKULL"}, "body part SKULL"),
    ({"BodyPartExamined": "HAND"}, "body part HAND"),
    ({"BodyPartExamined": "FOOT"}, "body part FOOT"),
    ({"BodyPartExamined": "KNEE", "ViewPosition": "LL"}, "body part KNEE"),
    ({"BodyPartExamined": "ANKLE"}, "body part ANKLE"),
    ({"BodyPartExamined": "EXTREMITY", "ViewPosition": "AP"}, "body part EXTREMITY, view AP"),
    ({"BodyPartExamined": "UPPER EXTREMITY"}, "body part UPPER EXTREMITY"),
    ({"BodyPartExamined": "PELVIS"}, "body part PELVIS"),
    ({"BodyPartExamined": "hip"}, "body part HIP"),
    ({"BodyPartExamined": "ABDOMEN"}, "body part ABDOMEN"),
    ({"BodyPartExamined": "BREAST"}, "body part BREAST"),
    ({"ViewPosition": "AP"}, "view AP"),
    ({"BodyPartExamined": "LSPINE", "ViewPosition": "PA"}, "view PA"),
    ({"PatientOrientation": ["L", "F"]}, "patient orientation L\\F (frontal)"),
    ({"PatientOrientation": ["F", "R"]}, "patient orientation F\\R (frontal)"),  # a frontal film stored turned
    ({"PatientOrientation": ["LP", "FA"], "ViewPosition": "XYZ"}, "patient orientation LP\\FA (frontal)"),
])
def test_header_of_another_body_part_or_a_frontal_view_is_refused(attributes: dict, reason: str) -> None:
    for modality, sop_class in (("CR", ComputedRadiographyImageStorage), ("DX", DigitalXRayImageStorageForPresentation)):
        assert header_refusal(_header(Modality=modality, SOPClassUID=sop_class, **attributes)) == (
            f"{reason}: {NOT_LATERAL_SPINE}")
    assert header_refusal(_header(**attributes)) == f"{reason}: {NOT_LATERAL_SPINE}"  # modality and class unknown


# --------------------------------------------------------------------------- what goes on
@pytest.mark.parametrize("attributes", [
    {},  # nothing but the image matrix
    {"Modality": "CR", "SOPClassUID": ComputedRadiographyImageStorage},
    {"Modality": "DX", "SOPClassUID": DigitalXRayImageStorageForPresentation},
    {"Modality": "DX", "SOPClassUID": DigitalXRayImageStorageForProcessing},
    {"Modality": "RG"},
    {"Modality": "DX", "BodyPartExamined": "SPINE", "ViewPosition": "LL", "PatientOrientation": ["P", "F"]},
    {"BodyPartExamined": "LSPINE"}, {"BodyPartExamined": "TSPINE"}, {"BodyPartExamined": "CSPINE"},
    {"BodyPartExamined": "SSPINE"}, {"BodyPartExamined": "THORACOLUMBAR"}, {"BodyPartExamined": "L-SPINE"},
    {"BodyPartExamined": "CHEST SPINE"},  # the spine is named: the image decides
    {"BodyPartExamined": "WHOLE BODY"}, {"BodyPartExamined": ""},  # unknown or empty: the image decides
    {"ViewPosition": "RL"}, {"ViewPosition": "LATERAL"}, {"ViewPosition": "LAT"}, {"ViewPosition": "XYZ"},
    {"ViewPosition": "LL", "PatientOrientation": ["L", "F"]},  # a lateral view outweighs a contradicting orientation
    {"PatientOrientation": ["A", "F"]}, {"PatientOrientation": ["F", "P"]}, {"PatientOrientation": ["L"]},
    {"PatientOrientation": ["", ""]},
])
def test_missing_spine_lateral_or_unknown_values_go_on(attributes: dict) -> None:
    assert header_refusal(_header(**attributes)) is None


@pytest.mark.parametrize("modality", ["OT", "SC", "NM", "CT", None])
def test_a_secondary_capture_goes_on_to_the_image_gate(modality: str | None) -> None:
    extra = {} if modality is None else {"Modality": modality}
    for sop_class in (SecondaryCaptureImageStorage, MultiFrameGrayscaleByteSecondaryCaptureImageStorage):
        assert header_refusal(_header(SOPClassUID=sop_class, BodyPartExamined="CHEST", ViewPosition="PA", **extra)) is None


def test_a_header_without_an_image_matrix_is_left_to_the_reader() -> None:
    """An SR, an RT plan: the reader's 'no pixel data' says more than 'modality SR'."""
    sr = Dataset()
    sr.Modality, sr.SOPClassUID = "SR", "1.2.840.10008.5.1.4.1.1.88.33"
    assert header_refusal(sr) is None


def test_ignore_view_tags_keeps_only_the_modality_check() -> None:
    chest = _header(Modality="CR", SOPClassUID=ComputedRadiographyImageStorage, BodyPartExamined="CHEST",
                    ViewPosition="PA", PatientOrientation=["L", "F"])
    assert header_refusal(chest) is not None
    assert header_refusal(chest, ignore_view_tags=True) is None
    assert header_refusal(_header(Modality="CT", BodyPartExamined="CHEST"), ignore_view_tags=True) == (
        f"modality CT: {NOT_PROJECTION}")


def test_refusals_are_counted_by_their_reason_text() -> None:
    for reason in (f"modality CT: {NOT_PROJECTION}", f"body part CHEST, view PA: {NOT_LATERAL_SPINE}",
                   f"SOP class Ultrasound Multi-frame Image Storage: {NOT_PROJECTION}"):
        assert is_gate_reason(reason) and reason_category(reason) == reason
    assert not is_gate_reason("no vertebrae found") and reason_category("is an empty file (0 bytes)") == "empty file"


# --------------------------------------------------------------------------- real files
def _data_file(name: str) -> Path:
    for folder in (pydicom_data_dir(), pydicom_test_dir()):
        if folder is not None and (folder / name).is_file():
            return folder / name
    pytest.skip(f"{name} is not installed (pydicom-data)")


def _read_gate_header(path: Path) -> Dataset:
    return pydicom.dcmread(path, stop_before_pixels=True, force=True)


@pytest.mark.parametrize(("name", "reason"), [
    ("RG1_UNCR.dcm", f"body part CHEST, view PA: {NOT_LATERAL_SPINE}"),
    ("RG1_J2KR.dcm", f"body part CHEST, view PA: {NOT_LATERAL_SPINE}"),
    ("RG3_UNCR.dcm", f"body part EXTREMITY, view AP: {NOT_LATERAL_SPINE}"),
])
def test_real_chest_and_ankle_radiographs_are_refused(name: str, reason: str) -> None:
    path = _data_file(name)
    assert header_refusal(_read_gate_header(path)) == reason
    assert file_refusal(path) == reason  # what score's reader path and explain see
    assert file_refusal(path, ignore_view_tags=True) is None  # a CR: only its tags said no


def _cross_sectional_images() -> list[Path]:
    """Every file of both test folders whose header is a CT, MR or US image (with Rows and Columns)."""
    found = []
    for folder in (pydicom_test_dir(), pydicom_data_dir()):
        for path in sorted(folder.rglob("*")) if folder is not None else []:
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["Modality", "Rows", "Columns"])
            except Exception:  # noqa: BLE001 - not DICOM: not one of these
                continue
            if str(ds.get("Modality", "")) in {"CT", "MR", "US"} and "Rows" in ds and "Columns" in ds:
                found.append(path)
    return found


CROSS_SECTIONAL = _cross_sectional_images()


@pytest.mark.parametrize("path", CROSS_SECTIONAL, ids=[p.name for p in CROSS_SECTIONAL])
def test_every_real_ct_mr_and_us_image_is_refused_naming_its_modality(path: Path) -> None:
    modality = str(_read_gate_header(path).Modality)
    assert header_refusal(_read_gate_header(path)) == f"modality {modality}: {NOT_PROJECTION}"
    assert header_refusal(_read_gate_header(path), ignore_view_tags=True) == f"modality {modality}: {NOT_PROJECTION}"


def test_the_real_files_include_ct_mr_and_us() -> None:
    seen = {str(_read_gate_header(p).Modality) for p in CROSS_SECTIONAL}
    assert {"CT", "MR"} <= seen and (pydicom_data_dir() is None or "US" in seen)


# --------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def roi_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-init ROI grader (32 px input), as test_score's."""
    import torch

    from spine_dfl.data.transforms import Preprocessing
    from spine_dfl.engine.checkpoint import atomic_torch_save, checkpoint_payload
    from spine_dfl.model import DFLNet

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("gate_checkpoint") / "roi.pt"
    model = DFLNet("resnet18", num_classes=len(CLASSES), filters_per_class=2)
    atomic_torch_save(checkpoint_payload(model, {"test": "gate"},
                                         CLASSES, Preprocessing(input_size=32, use_roi=True), {}),
                      path)
    return path


@pytest.fixture(scope="module")
def synth_film(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """One synthetic lateral film (BodyPartExamined SPINE, ViewPosition LL) and its rois.csv."""
    from spine_dfl.synth import generate_cohort

    folder = tmp_path_factory.mktemp("gate_cohort")
    generate_cohort(folder, patients=1, seed=5, rows=256, compress=False)
    return folder / "images" / "P0000.dcm", folder / "rois.csv"


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _as_chest(film: Path, out: Path) -> Path:
    """The film with its BodyPartExamined rewritten to CHEST (same SOP Instance UID: its ROIs still match)."""
    ds = pydicom.dcmread(film)
    ds.BodyPartExamined = "CHEST"
    out.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(out, enforce_file_format=True)
    return out


def test_score_fails_non_spine_files_by_reason_and_still_scores_the_lateral_film(
    tmp_path: Path, roi_checkpoint: Path, synth_film: tuple[Path, Path]
) -> None:
    from spine_dfl.score.run import score

    film, rois = synth_film
    folder = tmp_path / "export"
    folder.mkdir()
    real = {name: _data_file(name) for name in ("RG1_UNCR.dcm", "RG1_J2KR.dcm", "RG3_UNCR.dcm", "693_UNCR.dcm",
                                                  "US1_UNCR.dcm", "CT_small.dcm", "MR_small.dcm")}
    for name, path in real.items():
        shutil.copy(path, folder / name)
    shutil.copy(film, folder / "lateral.dcm")
    _as_chest(film, tmp_path / "tagged" / "chest.dcm")
    out = tmp_path / "out"
    summary = score(roi_checkpoint, [folder, tmp_path / "tagged"], out, rois_csv=rois, workers=1, progress=False)

    rows = _rows(out / "predictions.csv")
    by_file: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        by_file.setdefault(Path(row["image"]).name, []).append(row)
    expected = {
        "RG1_UNCR.dcm": f"body part CHEST, view PA: {NOT_LATERAL_SPINE}",
        "RG1_J2KR.dcm": f"body part CHEST, view PA: {NOT_LATERAL_SPINE}",
        "RG3_UNCR.dcm": f"body part EXTREMITY, view AP: {NOT_LATERAL_SPINE}",
        "693_UNCR.dcm": f"modality CT: {NOT_PROJECTION}", "CT_small.dcm": f"modality CT: {NOT_PROJECTION}",
        "US1_UNCR.dcm": f"modality US: {NOT_PROJECTION}", "MR_small.dcm": f"modality MR: {NOT_PROJECTION}",
        "chest.dcm": f"body part CHEST: {NOT_LATERAL_SPINE}",
    }
    for name, reason in expected.items():
        assert [(r["status"], r["error"], r["vertebra"]) for r in by_file[name]] == [("error", reason, "")], name
    lateral = by_file["lateral.dcm"]
    assert len(lateral) == 14 and all(r["status"] == "ok" and r["vertebra"] for r in lateral)
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["failed_by_reason"] == {
        f"body part CHEST, view PA: {NOT_LATERAL_SPINE}": 2, f"modality CT: {NOT_PROJECTION}": 2,
        f"body part EXTREMITY, view AP: {NOT_LATERAL_SPINE}": 1, f"modality US: {NOT_PROJECTION}": 1,
        f"modality MR: {NOT_PROJECTION}": 1, f"body part CHEST: {NOT_LATERAL_SPINE}": 1,
    }
    assert (summary.scored, summary.failed) == (1, 8)
    text = (out / "predictions.csv").read_text() + (out / "summary.json").read_text()
    assert "CompressedSamples^" not in text and "SYNTH^" not in text


def test_score_with_ignore_view_tags_scores_a_film_tagged_chest(
    tmp_path: Path, roi_checkpoint: Path, synth_film: tuple[Path, Path]
) -> None:
    from spine_dfl.score.run import score

    film, rois = synth_film
    chest = _as_chest(film, tmp_path / "in" / "chest.dcm")
    shutil.copy(_data_file("CT_small.dcm"), tmp_path / "in" / "ct.dcm")
    summary = score(roi_checkpoint, [tmp_path / "in"], tmp_path / "out", rois_csv=rois, workers=0, progress=False,
                    ignore_view_tags=True)
    rows = _rows(tmp_path / "out" / "predictions.csv")
    scored = [r for r in rows if Path(r["image"]) == chest.resolve()]
    assert len(scored) == 14 and all(r["status"] == "ok" for r in scored)
    assert summary.failed_by_reason == {f"modality CT: {NOT_PROJECTION}": 1}  # the modality check stays


def test_explain_lists_refused_files_with_their_reasons(tmp_path: Path, synth_film: tuple[Path, Path]) -> None:
    import torch

    from spine_dfl.data.transforms import Preprocessing
    from spine_dfl.engine.checkpoint import atomic_torch_save, checkpoint_payload
    from spine_dfl.explain.inputs import explain_inputs
    from spine_dfl.model import DFLNet

    torch.manual_seed(0)
    checkpoint = tmp_path / "whole.pt"
    atomic_torch_save(checkpoint_payload(DFLNet("resnet18", num_classes=3, filters_per_class=2), {"test": "gate"},
                                         CLASSES, Preprocessing(input_size=32, use_roi=False), {}),
                      checkpoint)
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(synth_film[0], folder / "lateral.dcm")
    shutil.copy(_data_file("CT_small.dcm"), folder / "ct.dcm")
    _as_chest(synth_film[0], folder / "chest.dcm")
    run = explain_inputs(checkpoint, [folder], None, tmp_path / "out", top_n=1, device="cpu")
    reasons = {Path(f["image"]).name: f["reason"] for f in run.failures}
    assert reasons == {"ct.dcm": f"modality CT: {NOT_PROJECTION}", "chest.dcm": f"body part CHEST: {NOT_LATERAL_SPINE}"}
    assert [Path(e["image"]).name for e in run.entries] == ["lateral.dcm"]
    again = explain_inputs(checkpoint, [folder], None, tmp_path / "again", top_n=1, device="cpu", ignore_view_tags=True)
    assert sorted(Path(e["image"]).name for e in again.entries) == ["chest.dcm", "lateral.dcm"]


def test_evaluate_warns_once_about_manifest_images_the_gate_would_refuse(
    tmp_path: Path, synth_film: tuple[Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    from spine_dfl.workflows.evaluate import warn_gate_refusals

    ct = shutil.copy(_data_file("CT_small.dcm"), tmp_path / "ct.dcm")
    mr = shutil.copy(_data_file("MR_small.dcm"), tmp_path / "mr.dcm")
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(f"image,label,split\n{synth_film[0]},normal,test\n{ct},normal,test\n{mr},mild,train\n")
    with caplog.at_level(logging.WARNING, logger="spine_dfl"):
        assert warn_gate_refusals(manifest, "test") == 1
        assert warn_gate_refusals(manifest, "train") == 1
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2 and "1 of 2 manifest image(s)" in warnings[0] and f"modality CT: {NOT_PROJECTION}" in warnings[0]
    assert f"modality MR: {NOT_PROJECTION}" in warnings[1]
    assert all("ct.dcm" not in w and "CompressedSamples" not in w and "1CT1" not in w for w in warnings)
    caplog.clear()
    manifest.write_text(f"image,label\n{synth_film[0]},normal\n")
    assert warn_gate_refusals(manifest, "test") == 0 and not caplog.records


# --------------------------------------------------------------------------- the command line
@pytest.mark.parametrize("argv", [
    ["score", "model.pt", "folder"],
    ["serve", "start", "model.pt", "--spool", "spool", "--send-to", "PACS@host:104"],
    ["explain", "model.pt", "folder"],
])
def test_ignore_view_tags_parses_on_score_serve_and_explain(argv: list[str]) -> None:
    parser = build_parser()
    assert parser.parse_args(argv).ignore_view_tags is False
    assert parser.parse_args([*argv, "--ignore-view-tags"]).ignore_view_tags is True
