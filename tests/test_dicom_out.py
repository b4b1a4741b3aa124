"""DICOM results for PACS: SR + Secondary Capture content (with the evidence heatmap where the
evidence is), IOD validation (dciodvfy), and a real C-STORE round trip (dcmtk storescu -> pynetdicom
storage SCP on localhost)."""

from __future__ import annotations

import dataclasses
import socket
import subprocess
import threading
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import torch
from pydicom.dataset import Dataset

from dicom_factory import make_gray_dicom
from spine_dfl.data.transforms import Preprocessing, eval_transforms
from spine_dfl.dicom_out import (
    PRIVATE_SCHEME,
    DicomOutConfig,
    DicomOutputError,
    DicomResultWriter,
    VertebraFinding,
    build_sr,
    render_roi_overlay,
    result_uids,
    write_results_job,
)
from spine_dfl.heatmap import (
    EvidenceMap,
    display_region,
    evidence_on_source,
    feature_map_to_tensor_space,
    tensor_map_to_original,
)
from tests.conftest import pydicom_test_dir

DCIODVFY = Path("/usr/bin/dciodvfy")
DCMTK_STORESCU = Path("/usr/bin/storescu")  # `storescu` on PATH may be pynetdicom's Python app
CLASSES = ["normal", "mild", "moderate", "severe grade (3)"]


def make_cr(path: Path, rows: int = 240, cols: int = 180, orientation: list[str] | None = None) -> Dataset:
    """A CR image, MONOCHROME2, 16 bits allocated / 12 stored, with patient and study attributes."""
    pixels = np.random.default_rng(1).integers(0, 4096, (rows, cols)).astype(np.uint16)
    return make_gray_dicom(
        path, pixels, patient_name="DOE^JANE", patient_id="PID-0042",
        PatientBirthDate="19500101", PatientSex="F",
        StudyDate="20240102", StudyTime="101500", StudyID="7", AccessionNumber="ACC7",
        ReferringPhysicianName="SMITH^JOHN", SeriesNumber=1, InstanceNumber=3, Manufacturer="ACME",
        BodyPartExamined="SPINE", ViewPosition="LL",
        PatientOrientation=orientation if orientation is not None else ["A", "F"],
        ImagerPixelSpacing=[0.2, 0.2],
    )


def findings_for(rows: int, cols: int) -> list[VertebraFinding]:
    probs_a = dict(zip(CLASSES, [0.1, 0.6, 0.2, 0.1]))
    probs_b = dict(zip(CLASSES, [0.05, 0.05, 0.2, 0.7]))
    return [
        VertebraFinding("L1", (0.1 * cols, 0.1 * rows, 0.6 * cols, 0.4 * rows), "mild", probs_a),
        # partly outside the image: clipped in the SR, box still drawn
        VertebraFinding("S1", (0.5 * cols, 0.6 * rows, 1.2 * cols, 1.1 * rows), "severe grade (3)", probs_b),
    ]


# Evidence maps as score sends them: a 4 x 4 feature grid (cell centres at 7.5 + 16 i input pixels)
# of a 64 px input made by the real eval transforms (ROI + 15 % margin, resize, symmetric padding).
EVIDENCE_PRE = Preprocessing(input_size=64)
GRID, STRIDE, OFFSET = 4, 16.0, 7.5
HOT = (1, 2)  # (row, col): the one grid cell with evidence


def hot_evidence(path: Path, roi: tuple[float, float, float, float], image_shape: tuple[int, int]) -> EvidenceMap:
    sample = eval_transforms(EVIDENCE_PRE)({"image": str(path), "roi": roi})
    to_original = np.asarray(sample["to_original"], dtype=np.float64)
    values = np.zeros((GRID, GRID), np.float32)
    values[HOT] = 3.0
    region = display_region(to_original, EVIDENCE_PRE, roi, image_shape)
    return EvidenceMap(values, to_original, region, EVIDENCE_PRE.input_size, STRIDE, OFFSET)


def hot_point(evidence: EvidenceMap) -> np.ndarray:
    """Original (x, y) of the hot cell's receptive-field centre."""
    centre = np.array([OFFSET + STRIDE * HOT[1], OFFSET + STRIDE * HOT[0], 1.0])
    return (evidence.to_original @ centre)[:2]


def with_l1_evidence(path: Path, findings: list[VertebraFinding], image_shape: tuple[int, int]) -> list[VertebraFinding]:
    """The findings with a one-hot evidence map on L1 (the first) only."""
    first = dataclasses.replace(findings[0], evidence=hot_evidence(path, findings[0].roi, image_shape))
    return [first, *findings[1:]]


def dciodvfy_errors(path: Path) -> list[str]:
    result = subprocess.run([str(DCIODVFY), str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]


@pytest.fixture()
def written(tmp_path: Path) -> tuple[Dataset, list[VertebraFinding], object]:
    source = make_cr(tmp_path / "src.dcm")
    findings = with_l1_evidence(tmp_path / "src.dcm", findings_for(source.Rows, source.Columns), (source.Rows, source.Columns))
    writer = DicomResultWriter(tmp_path / "out", CLASSES, run_key="test-run", algorithm_parameters=["ckpt.pt"])
    result = writer.write(tmp_path / "src.dcm", findings, display_image=source.pixel_array.astype(np.float32))
    return source, findings, result


def test_sr_content_references_source_and_carries_grades(written) -> None:
    source, findings, result = written
    ds = pydicom.dcmread(result.sr_path)
    assert ds.SOPClassUID == pydicom.uid.ComprehensiveSRStorage
    assert ds.StudyInstanceUID == source.StudyInstanceUID
    assert ds.SeriesInstanceUID != source.SeriesInstanceUID
    assert ds.PatientID == source.PatientID  # PACS files results by patient + study
    assert (ds.VerificationFlag, ds.CompletionFlag, ds.PreliminaryFlag) == ("UNVERIFIED", "COMPLETE", "PRELIMINARY")
    assert ds.Manufacturer == "spine-dfl" and "for review" in ds.SeriesDescription
    assert ds.CodingSchemeIdentificationSequence[0].CodingSchemeDesignator == PRIVATE_SCHEME

    sr = hd.sr.srread(result.sr_path)
    groups = sr.content.get_planar_roi_measurement_groups()
    assert [str(g.tracking_identifier) for g in groups] == ["vertebra L1", "vertebra S1"]
    l1, s1 = groups
    assert l1.finding_sites[0].value.value == "66794005"  # SCT "L1 vertebra"
    assert s1.finding_sites[0].value.scheme_designator == PRIVATE_SCHEME  # S1 has no code in pydicom's SCT table
    assert l1.get_qualitative_evaluations()[0].value.meaning == "mild"
    assert s1.get_qualitative_evaluations()[0].value.meaning == "severe grade (3)"
    assert s1.get_qualitative_evaluations()[0].value.value == "CLASS3"  # not a plain short code value
    probability = l1.get_measurements()[0]
    assert probability.name.meaning == "Probability" and probability.value == pytest.approx(0.6)
    assert len(l1.get_measurements()) == 1
    assert l1.get_measurements()[0].unit.value == "1"  # UCUM "no units"

    rows, cols = source.Rows, source.Columns
    x0, y0, x1, y1 = findings[0].roi
    np.testing.assert_allclose(l1.roi.value, [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]], rtol=1e-6)
    assert l1.roi.GraphicType == "POLYLINE"
    assert l1.roi.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert s1.roi.value[:, 0].max() == cols and s1.roi.value[:, 1].max() == rows  # clipped to the image


def test_sc_is_rgb_overlay_in_new_series(written) -> None:
    source, findings, result = written
    sc = pydicom.dcmread(result.sc_path)
    assert sc.SOPClassUID == pydicom.uid.SecondaryCaptureImageStorage
    assert sc.StudyInstanceUID == source.StudyInstanceUID and sc.SeriesInstanceUID != source.SeriesInstanceUID
    assert (sc.PhotometricInterpretation, sc.SamplesPerPixel, sc.BitsAllocated) == ("RGB", 3, 8)
    assert (sc.ConversionType, sc.BurnedInAnnotation) == ("WSD", "YES")
    assert "review" in sc.ImageComments and "heatmap" in sc.DerivationDescription
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    pixels = sc.pixel_array
    assert pixels.shape == (source.Rows, source.Columns, 3)
    # The L1 box's top edge is drawn in colour (channels differ) where the grey radiograph was grey.
    x0, y0, x1, _ = (int(v) for v in findings[0].roi)
    edge = pixels[y0, x0 + 2 : x1 - 2].astype(int)
    assert np.all(np.ptp(edge, axis=1) > 50)


def test_uids_deterministic_per_run_and_source(tmp_path: Path) -> None:
    a = make_cr(tmp_path / "a.dcm")
    b = make_cr(tmp_path / "b.dcm")
    assert result_uids("run", a) == result_uids("run", a)
    assert result_uids("run", a)["sr_instance"] != result_uids("run", b)["sr_instance"]
    assert result_uids("run", a)["sr_instance"] != result_uids("other run", a)["sr_instance"]
    b.StudyInstanceUID = a.StudyInstanceUID
    assert result_uids("run", a)["sr_series"] == result_uids("run", b)["sr_series"]  # one series per study


def test_bad_inputs_raise_with_reason(tmp_path: Path) -> None:
    source = make_cr(tmp_path / "src.dcm")
    outside = [VertebraFinding("L2", (500.0, 500.0, 600.0, 600.0), "mild", dict(zip(CLASSES, [0.25] * 4)))]
    with pytest.raises(DicomOutputError, match="does not overlap"):
        build_sr(source, outside, CLASSES, "run")
    with pytest.raises(DicomOutputError, match="no findings"):
        build_sr(source, [], CLASSES, "run")
    no_study = Dataset()
    no_study.Rows, no_study.Columns = 10, 10
    (tmp_path / "nostudy.dcm").write_bytes(b"")
    writer = DicomResultWriter(tmp_path / "out", CLASSES, "run")
    with pytest.raises(DicomOutputError, match="StudyInstanceUID"):
        writer.write(tmp_path / "nostudy.dcm", findings_for(10, 10), np.zeros((10, 10), np.float32), source_header=no_study)


def test_sc_shows_the_evidence_heatmap_where_the_evidence_is(tmp_path: Path) -> None:
    """One hot grid cell of L1's evidence: coloured there, only inside L1's crop region; grey elsewhere."""
    source = make_cr(tmp_path / "src.dcm")
    rows, cols = int(source.Rows), int(source.Columns)
    plain = findings_for(rows, cols)
    hot = with_l1_evidence(tmp_path / "src.dcm", plain, (rows, cols))
    evidence = hot[0].evidence
    image = source.pixel_array.astype(np.float32)
    result = DicomResultWriter(tmp_path / "out", CLASSES, "run").write(tmp_path / "src.dcm", hot, display_image=image)
    sc = pydicom.dcmread(result.sc_path).pixel_array.astype(int)
    without = render_roi_overlay(image, plain, CLASSES).astype(int)  # same boxes, captions, banner
    changed = np.any(sc != without, axis=2)
    spread = np.ptp(sc, axis=2)  # 0 = grey (R = G = B)

    x0, y0, x1, y1 = evidence.region
    inside = np.zeros((rows, cols), bool)
    inside[y0:y1, x0:x1] = True
    legend_band = np.zeros((rows, cols), bool)
    legend_band[rows - 40 :] = True  # colour legend line above the banner (font 10 px here)
    assert changed[inside].any() and not changed[~inside & ~legend_band].any()
    assert y0 > 0 and np.all(spread[:y0] == 0)  # above every ROI, box and caption: plain grey

    hx, hy = hot_point(evidence)
    peak = sc[int(hy), int(hx)]
    assert spread[int(hy), int(hx)] >= 30 and peak[0] > peak[2]  # inferno's warm end
    # The heatmap (grey pixels of the plain overlay that are now clearly coloured) is centred
    # on the hot cell and confined to its bilinear support (+-1 grid step = STRIDE input pixels).
    annotation = np.ptp(without, axis=2) > 0  # boxes and captions (their anti-aliased edges differ too)
    heat = changed & (spread > 3) & ~legend_band & ~annotation
    ys, xs = np.nonzero(heat)
    weights = spread[ys, xs].astype(float)
    centroid = np.array([np.average(xs + 0.5, weights=weights), np.average(ys + 0.5, weights=weights)])
    np.testing.assert_allclose(centroid, [hx, hy], atol=2.0)
    reach = STRIDE * abs(evidence.to_original[0, 0]) + 2.0
    # Beyond it the evidence is zero: the map's minimum only darkens the grey a little (inferno's black).
    assert np.all(np.maximum(np.abs(xs + 0.5 - hx), np.abs(ys + 0.5 - hy)) <= reach)


def test_evidence_on_source_is_explains_mapping_in_strips(tmp_path: Path) -> None:
    source = make_cr(tmp_path / "src.dcm")
    shape = (int(source.Rows), int(source.Columns))
    evidence = hot_evidence(tmp_path / "src.dcm", findings_for(*shape)[0].roi, shape)
    evidence = dataclasses.replace(evidence, values=np.random.default_rng(0).random((GRID, GRID), dtype=np.float32))
    in_input = feature_map_to_tensor_space(torch.from_numpy(evidence.values)[None, None], 64, STRIDE, OFFSET)[0]
    expected = tensor_map_to_original(in_input, evidence.to_original, evidence.region)[0]
    strips = 7 * (evidence.region[2] - evidence.region[0])  # 7-row strips
    region, values = evidence_on_source(evidence, shape, strip_pixels=strips)
    assert region == evidence.region
    np.testing.assert_array_equal(values, expected)
    outside = dataclasses.replace(evidence, region=(500, 500, 600, 600))
    assert evidence_on_source(outside, shape) is None


def test_overlay_keeps_grey_outside_boxes() -> None:
    image = np.tile(np.linspace(0, 1000, 120, dtype=np.float32), (100, 1))
    rgb = render_roi_overlay(image, findings_for(100, 120)[:1], CLASSES, banner=None)
    assert rgb.shape == (100, 120, 3) and rgb.dtype == np.uint8
    assert np.all(rgb[90:, :] == rgb[90:, :, :1])  # far from the box and caption: still grey


@pytest.mark.skipif(not DCIODVFY.exists(), reason="dicom3tools' /usr/bin/dciodvfy is not installed")
def test_outputs_pass_dciodvfy(tmp_path: Path, written) -> None:
    _, _, result = written
    paths = [result.sr_path, result.sc_path]
    # A real Agfa CR (MONOCHROME1, no PatientOrientation issues, body part CSPINE) as source too.
    real_cr = pydicom_test_dir() / "dicomdirtests" / "77654033" / "CR1" / "6154"
    if real_cr.exists():
        header = pydicom.dcmread(real_cr)
        writer = DicomResultWriter(tmp_path / "real", CLASSES, "test-run")
        shape = (int(header.Rows), int(header.Columns))
        findings = with_l1_evidence(real_cr, findings_for(*shape), shape)
        real = writer.write(real_cr, findings, header.pixel_array.astype(np.float32))
        paths += [real.sr_path, real.sc_path]
    # No PatientOrientation in the source: the SC's must be present but empty (type 2).
    bare = make_cr(tmp_path / "bare.dcm", orientation=[])
    writer = DicomResultWriter(tmp_path / "bare", CLASSES, "test-run")
    bare_result = writer.write(tmp_path / "bare.dcm", findings_for(bare.Rows, bare.Columns), bare.pixel_array.astype(np.float32))
    paths += [bare_result.sr_path, bare_result.sc_path]
    for path in paths:
        assert dciodvfy_errors(path) == [], path.name


# Type 2 attributes of the Patient and General Study modules that the PS3.15 Basic Application
# Level Confidentiality Profile blanks or removes (action Z / X); a de-identified export may lack them all.
BASIC_PROFILE_REMOVED = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                         "ReferringPhysicianName", "StudyID", "AccessionNumber")


def deidentified_cr(path: Path) -> Dataset:
    """A CR as the Basic Profile leaves it when it removes (not empties) the identifying attributes."""
    source = make_cr(path)
    for keyword in BASIC_PROFILE_REMOVED + ("Manufacturer",):
        delattr(source, keyword)
    source.PatientIdentityRemoved = "YES"
    source.DeidentificationMethod = "PS3.15 Basic Application Level Confidentiality Profile"
    source.save_as(path, enforce_file_format=True)
    return source


def test_sources_without_type2_patient_and_study_attributes_still_get_results(tmp_path: Path) -> None:
    source = deidentified_cr(tmp_path / "deid.dcm")
    assert not any(keyword in pydicom.dcmread(tmp_path / "deid.dcm") for keyword in BASIC_PROFILE_REMOVED)
    shape = (int(source.Rows), int(source.Columns))
    findings = with_l1_evidence(tmp_path / "deid.dcm", findings_for(*shape), shape)
    result = DicomResultWriter(tmp_path / "out", CLASSES, "run").write(tmp_path / "deid.dcm", findings)
    for path in (result.sr_path, result.sc_path):
        written = pydicom.dcmread(path)
        assert written.StudyInstanceUID == source.StudyInstanceUID
        # Present and empty: "unknown", as the standard allows for Type 2; never invented values.
        assert all(keyword in written and written[keyword].value in ("", None) for keyword in BASIC_PROFILE_REMOVED)
        if DCIODVFY.exists():
            assert dciodvfy_errors(path) == [], path.name
    assert [str(g.tracking_identifier) for g in
            hd.sr.srread(result.sr_path).content.get_planar_roi_measurement_groups()] == ["vertebra L1", "vertebra S1"]
    # The caller's header is not changed by filling in the copy.
    assert not any(keyword in source for keyword in BASIC_PROFILE_REMOVED)
    # What score --dicom-out runs for each file (it wrote nothing for such sources before).
    config = DicomOutConfig(str(tmp_path / "job"), tuple(CLASSES), "run")
    assert write_results_job(config, str(tmp_path / "deid.dcm"), findings) == "written"
    assert len(list((tmp_path / "job").glob("*.dcm"))) == 2


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.skipif(not DCMTK_STORESCU.exists(), reason="dcmtk's /usr/bin/storescu is not installed")
def test_storescu_to_pynetdicom_scp_round_trip(tmp_path: Path, written) -> None:
    from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, evt

    _, _, result = written
    received_dir = tmp_path / "received"
    received_dir.mkdir()
    lock = threading.Lock()

    def on_store(event: evt.Event) -> int:
        dataset = event.dataset
        dataset.file_meta = event.file_meta
        with lock:
            dataset.save_as(received_dir / f"{dataset.SOPInstanceUID}.dcm", enforce_file_format=True)
        return 0x0000

    ae = AE(ae_title="SPINEPACS")
    for sop_class in (pydicom.uid.ComprehensiveSRStorage, pydicom.uid.SecondaryCaptureImageStorage):
        ae.add_supported_context(sop_class, ALL_TRANSFER_SYNTAXES)
    port = _free_port()
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    try:
        sent = subprocess.run(
            [str(DCMTK_STORESCU), "-aec", "SPINEPACS", "-aet", "SPINEDFL", "127.0.0.1", str(port),
             str(result.sr_path), str(result.sc_path)],
            capture_output=True, text=True, timeout=60,
        )
    finally:
        server.shutdown()
    assert sent.returncode == 0, sent.stdout + sent.stderr
    received = {ds.SOPInstanceUID: ds for ds in map(pydicom.dcmread, received_dir.glob("*.dcm"))}
    assert set(received) == {result.sr_sop_instance_uid, result.sc_sop_instance_uid}

    sr = hd.sr.ComprehensiveSR.from_dataset(received[result.sr_sop_instance_uid])
    group = sr.content.get_planar_roi_measurement_groups()[0]
    assert group.get_qualitative_evaluations()[0].value.meaning == "mild"
    assert group.get_measurements()[0].value == pytest.approx(0.6)
    sc = received[result.sc_sop_instance_uid]
    original_sc = pydicom.dcmread(result.sc_path)
    assert sc.BurnedInAnnotation == "YES"
    np.testing.assert_array_equal(sc.pixel_array, original_sc.pixel_array)



@pytest.mark.parametrize(("anchored", "anchor", "method"), [("yes", "sacrum", "ANCHORSACRUM"), ("no", "", "UNANCHORED")])
def test_sr_says_how_the_levels_were_counted(tmp_path: Path, anchored: str, anchor: str, method: str) -> None:
    source = make_cr(tmp_path / "src.dcm")
    cells = {"roi_source": "locator", "locator_confidence": 0.9, "level_confidence": 0.8, "level_anchored": anchored,
             "level_anchor": anchor, "transitional": "lumbarised S1 (L6)" if anchored == "yes" else ""}
    names = ("L4", "L5") if anchored == "yes" else ("V1", "V2")
    findings = [VertebraFinding(name, (20.0 + 60 * i, 30.0, 70.0 + 60 * i, 80.0), "normal",
                                dict(zip(CLASSES, [0.7, 0.1, 0.1, 0.1])), cells=cells) for i, name in enumerate(names)]
    sr = build_sr(source, findings, CLASSES, "run")
    text = str(sr)
    assert "Vertebral level identification" in text and "Levels counted from an anchor visible in the image" in text
    codes = [item.ConceptCodeSequence[0].CodeValue for item in _walk(sr) if "ConceptCodeSequence" in item]
    assert method in codes
    from pydicom.sr.codedict import codes as sr_codes

    expected = hd.sr.CodedConcept(*getattr(sr_codes.SCT, "Yes" if anchored == "yes" else "No"))
    assert expected.value in codes
    if anchored == "no":
        assert "V1 vertebra" in text  # the relative name's finding site is a private code, not a level
    else:
        assert "Transitional anatomy the level count went through" in text and "lumbarised S1 (L6)" in text


def _walk(ds: Dataset):
    for item in getattr(ds, "ContentSequence", []):
        yield item
        yield from _walk(item)
