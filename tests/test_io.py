"""spine_dfl.io's DICOM reader against real files: pydicom's test files and pydicom-data's CR radiographs.

NIfTI/PNG/TIFF are in test_io_raster.py, input discovery in test_io_discovery.py, header-only facts
in test_io_header.py, decoder failures in test_io_decoders.py, ROI tables in test_io_rois.py.

Where a test needs a variant that no real file offers (no preamble, a cut file, a header value
changed), it starts from a real file and changes only that one thing.
"""

from __future__ import annotations

import dataclasses

import shutil
import struct
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.pixels import apply_modality_lut, apply_voi_lut, get_decoder
from pydicom.uid import JPEG2000Lossless, MPEG2MPML

from conftest import all_dicom_test_files, pydicom_data_dir, pydicom_test_dir, require_pydicom_data
from spine_dfl.io import (
    ImageReadError,
    Radiograph,
    is_dicom,
    read_dicom_header,
    read_image,
)

# pydicom warns about the deliberately broken files it ships (invalid VRs, early end of file);
# read_image leaves warnings to the caller's filters, and here they are expected noise.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:pydicom.*")

REQUIRED_META = {
    "sop_instance_uid",
    "study_instance_uid",
    "series_instance_uid",
    "modality",
    "photometric",
    "source",
    "spacing_source",
    "path",
    "rows",
    "cols",
    "window",
    "transfer_syntax",
    "bits_stored",
}

TEST_FILES = pydicom_test_dir()
CT_SMALL = TEST_FILES / "CT_small.dcm"  # CT, MONOCHROME2, 16 bits signed, rescale 1/-1024, no window
AGFA_CR = sorted((TEST_FILES / "dicomdirtests" / "77654033").glob("CR*/*"))


def _assert_valid(radiograph: Radiograph, path: Path) -> None:
    pixels = radiograph.pixels
    assert isinstance(pixels, np.ndarray)
    assert pixels.dtype == np.float32
    assert pixels.ndim == 2 and pixels.size > 0
    assert np.all(np.isfinite(pixels))
    assert REQUIRED_META <= {f.name for f in dataclasses.fields(radiograph.meta)}
    assert (radiograph.meta.rows, radiograph.meta.cols) == pixels.shape
    assert radiograph.meta.path == str(path)
    if radiograph.spacing_mm is not None:
        assert len(radiograph.spacing_mm) == 2 and min(radiograph.spacing_mm) > 0


def _read_error(path: Path) -> ImageReadError:
    with pytest.raises(ImageReadError) as caught:
        read_image(path)
    assert str(caught.value).startswith(f"{path}: ")
    return caught.value


def _stored_and_modality(path: Path) -> tuple[pydicom.Dataset, np.ndarray]:
    dataset = pydicom.dcmread(path)
    return dataset, apply_modality_lut(dataset.pixel_array, dataset).astype(np.float64)


def _write_variant(source: Path, target: Path, **changes: object) -> Path:
    """Copy of a real DICOM file with header elements set (value) or deleted (None)."""
    dataset = pydicom.dcmread(source)
    for keyword, value in changes.items():
        if value is None:
            if keyword in dataset:
                delattr(dataset, keyword)
        else:
            setattr(dataset, keyword, value)
    dataset.save_as(target)
    return target


# ------------------------------------------------------------------------------------------
# Every real test file: a valid radiograph or ImageReadError with a reason, nothing else


def _file_id(path: Path) -> str:
    for root in (pydicom_test_dir(), pydicom_data_dir()):
        if root is not None and path.is_relative_to(root):
            return path.relative_to(root).as_posix()
    return path.name


@pytest.mark.parametrize("path", all_dicom_test_files(), ids=_file_id)
def test_every_test_file_reads_or_fails_with_a_reason(path: Path) -> None:
    try:
        radiograph = read_image(path)
    except ImageReadError as error:
        assert str(error).startswith(f"{path}: ")
        assert error.reason.strip()
        assert "unexpected error" not in error.reason  # every failure seen here has a known cause
        return
    _assert_valid(radiograph, path)


EXPECTED_FAILURES = [
    ("test", "test-SR.dcm", "Comprehensive SR has no pixel data"),
    ("test", "reportsi.dcm", "Basic Text SR has no pixel data"),
    ("test", "rtplan.dcm", "RT Plan has no pixel data"),
    ("test", "rtstruct.dcm", "RT Structure Set has no pixel data"),  # also: no preamble
    ("test", "rtplan_truncated.dcm", "RT Plan has no pixel data and the file is truncated"),
    ("test", "waveform_ecg.dcm", "12-lead ECG Waveform has no pixel data"),
    ("test", "dicomdirtests/DICOMDIR", "is a DICOMDIR index, not an image"),
    ("test", "MR_truncated.dcm", "pixel data is truncated"),
    ("test", "JPEG-lossy.dcm", "is corrupt or truncated and cannot be decoded"),
    ("test", "badVR.dcm", "invalid Number of Frames value '1A'"),
    ("test", "nested_priv_SQ.dcm", "has pixel data but no Rows"),
    ("test", "zipMR.gz", "gzip-compressed"),
    ("test", "README.txt", "not a recognised image format"),
    ("test", "crayons.icc", "not a recognised image format"),
    ("data", "emri_small.dcm", "multi-frame image (10 frames)"),
    ("data", "emri_small_jpeg_2k_lossless_too_short.dcm", "truncated"),
    ("data", "SC_rgb.dcm", "colour image (RGB, 3 sample(s) per pixel)"),
    ("data", "US1_J2KR.dcm", "colour image (YBR_RCT"),
    ("data", "OBXXXX1A.dcm", "colour image (PALETTE COLOR"),
    ("data", "OT-PAL-8-face.dcm", "colour image (PALETTE COLOR"),  # no preamble either
]


@pytest.mark.parametrize(("folder", "name", "reason"), EXPECTED_FAILURES, ids=[n for _, n, _ in EXPECTED_FAILURES])
def test_known_unreadable_files_give_specific_reasons(folder: str, name: str, reason: str) -> None:
    root = pydicom_test_dir() if folder == "test" else require_pydicom_data()
    error = _read_error(root / name)
    assert reason in error.reason


def test_presentation_state_has_no_pixel_data(tmp_path: Path) -> None:
    import highdicom
    from pydicom.uid import generate_uid

    presentation_state = highdicom.pr.GrayscaleSoftcopyPresentationState(
        referenced_images=[pydicom.dcmread(CT_SMALL)],
        series_instance_uid=generate_uid(),
        series_number=99,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="spine-dfl tests",
        manufacturer_model_name="tests",
        software_versions="0",
        device_serial_number="0",
        content_label="TEST",
    )
    path = tmp_path / "gsps.dcm"
    presentation_state.save_as(path)
    assert "Grayscale Softcopy Presentation State has no pixel data" in _read_error(path).reason


# ------------------------------------------------------------------------------------------
# Real CR radiographs (pydicom-data): twins, inversion, window, spacing


@pytest.mark.parametrize("name", ["RG1", "RG3"])
def test_lossless_jpeg2000_reads_identical_to_uncompressed_twin(name: str) -> None:
    data = require_pydicom_data()
    uncompressed = read_image(data / f"{name}_UNCR.dcm")
    lossless = read_image(data / f"{name}_J2KR.dcm")
    np.testing.assert_array_equal(lossless.pixels, uncompressed.pixels)
    assert lossless.spacing_mm == uncompressed.spacing_mm
    assert lossless.meta.transfer_syntax == "1.2.840.10008.1.2.4.90"
    ignore = {"path", "transfer_syntax", "notes", "sop_instance_uid"}  # distinct objects
    assert {k: v for k, v in dataclasses.asdict(lossless.meta).items() if k not in ignore} == {
        k: v for k, v in dataclasses.asdict(uncompressed.meta).items() if k not in ignore
    }


@pytest.mark.parametrize("name", ["RG1", "RG3"])
def test_lossy_jpeg2000_is_close_to_uncompressed_original(name: str) -> None:
    data = require_pydicom_data()
    original = read_image(data / f"{name}_UNCR.dcm").pixels.astype(np.float64)
    lossy = read_image(data / f"{name}_J2KI.dcm").pixels.astype(np.float64)
    assert lossy.shape == original.shape
    assert not np.array_equal(lossy, original)
    assert np.corrcoef(lossy.ravel(), original.ravel())[0, 1] > 0.99


def test_monochrome1_comes_out_inverted() -> None:
    path = require_pydicom_data() / "RG3_UNCR.dcm"
    _, modality_values = _stored_and_modality(path)
    radiograph = read_image(path)
    assert radiograph.meta.photometric == "MONOCHROME1" and radiograph.meta.inverted is True
    correlation = np.corrcoef(radiograph.pixels.ravel(), modality_values.ravel())[0, 1]
    assert correlation < -0.95


def test_monochrome1_chest_shows_bone_bright() -> None:
    # RG1 is a PA chest: after reading, the mediastinum/spine column must be brighter than both lungs.
    pixels = read_image(require_pydicom_data() / "RG1_UNCR.dcm").pixels
    rows, cols = pixels.shape
    band = slice(int(0.3 * rows), int(0.6 * rows))
    spine = pixels[band, int(0.46 * cols) : int(0.54 * cols)].mean()
    right_lung = pixels[band, int(0.2 * cols) : int(0.3 * cols)].mean()
    left_lung = pixels[band, int(0.7 * cols) : int(0.8 * cols)].mean()
    assert spine > right_lung * 1.2 and spine > left_lung * 1.2


def test_inversion_reflects_over_the_range_bits_stored_allows(tmp_path: Path) -> None:
    # RG3: 10 bits stored, no rescale. Without its window the reading is exactly 1023 - stored,
    # whatever range the image content covers.
    source = require_pydicom_data() / "RG3_UNCR.dcm"
    path = _write_variant(source, tmp_path / "rg3", WindowCenter=None, WindowWidth=None)
    stored = pydicom.dcmread(path).pixel_array.astype(np.float64)
    radiograph = read_image(path)
    assert radiograph.meta.voi is None and radiograph.meta.window is None
    np.testing.assert_array_equal(radiograph.pixels, (1023 - stored).astype(np.float32))


def test_window_is_applied_before_inversion_and_sets_the_output_range() -> None:
    path = require_pydicom_data() / "RG3_UNCR.dcm"
    dataset, modality_values = _stored_and_modality(path)
    radiograph = read_image(path)
    assert radiograph.meta.voi == "window"
    assert radiograph.meta.window == (550.0, 1024.0)
    windowed = apply_voi_lut(modality_values, dataset, index=0)
    np.testing.assert_allclose(radiograph.pixels, (1023 - windowed).astype(np.float32), rtol=0, atol=1e-3)
    # window [38, 1062] on 10-bit data: output stays in [0, 1023]; values under the window saturate
    # to the brightest value after inversion.
    assert radiograph.pixels.min() >= 0 and radiograph.pixels.max() <= 1023
    below_window = modality_values <= 550 - 0.5 - (1024 - 1) / 2
    assert below_window.any()
    assert np.all(radiograph.pixels[below_window] == 1023)


@pytest.mark.parametrize("path", AGFA_CR, ids=lambda p: p.parent.name)
def test_agfa_cr_rescale_window_inversion_and_imager_spacing(path: Path) -> None:
    dataset, modality_values = _stored_and_modality(path)
    assert "PixelSpacing" not in dataset
    radiograph = read_image(path)
    assert radiograph.spacing_mm == (0.1, 0.1)
    assert radiograph.meta.spacing_source == "ImagerPixelSpacing"
    assert radiograph.meta.modality == "CR" and radiograph.meta.photometric == "MONOCHROME1"
    assert radiograph.meta.window == (1600.0, 2800.0)
    # rescale 0.684/200 on 12 bits: the window's output range is [200, 4095 * 0.684 + 200]
    low, high = 200.0, 4095 * 0.684 + 200.0
    expected = (low + high) - apply_voi_lut(modality_values, dataset, index=0)
    np.testing.assert_allclose(radiograph.pixels, expected.astype(np.float32), rtol=1e-6, atol=1e-3)


def test_zero_pixel_spacing_is_unknown() -> None:
    radiograph = read_image(require_pydicom_data() / "RG1_UNCR.dcm")  # PixelSpacing 0\0, no ImagerPixelSpacing
    assert radiograph.spacing_mm is None
    assert radiograph.meta.spacing_source is None


def test_pixel_spacing_wins_over_imager_spacing_and_keeps_row_col_order(tmp_path: Path) -> None:
    both = _write_variant(AGFA_CR[0], tmp_path / "both", PixelSpacing=[0.2, 0.3])
    radiograph = read_image(both)
    assert radiograph.spacing_mm == (0.2, 0.3)
    assert radiograph.meta.spacing_source == "PixelSpacing"
    zero = _write_variant(AGFA_CR[0], tmp_path / "zero", PixelSpacing=[0.0, 0.0])
    assert read_image(zero).spacing_mm == (0.1, 0.1)
    assert read_image(zero).meta.spacing_source == "ImagerPixelSpacing"
    negative = _write_variant(AGFA_CR[0], tmp_path / "negative", ImagerPixelSpacing=[-0.1, 0.1])
    assert read_image(negative).spacing_mm is None


def test_presentation_lut_shape_inverse_inverts_once(tmp_path: Path) -> None:
    # MONOCHROME2 + INVERSE: inverted over the rescaled 16-bit signed range [-32768-1024, 32767-1024].
    inverse = _write_variant(CT_SMALL, tmp_path / "ct_inverse", PresentationLUTShape="INVERSE")
    _, modality_values = _stored_and_modality(CT_SMALL)
    radiograph = read_image(inverse)
    assert radiograph.meta.inverted is True
    np.testing.assert_array_equal(radiograph.pixels, ((-33792 + 31743) - modality_values).astype(np.float32))
    # MONOCHROME1 + INVERSE (what DX requires) is the same statement twice: one inversion.
    both = _write_variant(AGFA_CR[0], tmp_path / "cr_inverse", PresentationLUTShape="INVERSE")
    np.testing.assert_array_equal(read_image(both).pixels, read_image(AGFA_CR[0]).pixels)


def test_voi_lut_sequence_and_modality_lut_sequence() -> None:
    data = require_pydicom_data()
    voi_dataset = pydicom.dcmread(data / "vlut_04.dcm")
    voi = read_image(data / "vlut_04.dcm")
    assert voi.meta.voi == "lut" and voi.meta.window is None
    np.testing.assert_array_equal(voi.pixels, apply_voi_lut(voi_dataset.pixel_array, voi_dataset).astype(np.float32))
    modality_dataset = pydicom.dcmread(data / "mlut_18.dcm")
    modality = read_image(data / "mlut_18.dcm")
    assert modality.meta.voi is None
    expected = apply_modality_lut(modality_dataset.pixel_array, modality_dataset).astype(np.float32)
    np.testing.assert_array_equal(modality.pixels, expected)


def test_identifiers_and_patient_fields_only_when_present(tmp_path: Path) -> None:
    dataset = pydicom.dcmread(AGFA_CR[0])
    radiograph = read_image(AGFA_CR[0])
    assert radiograph.meta.sop_instance_uid == dataset.SOPInstanceUID
    assert radiograph.meta.study_instance_uid == dataset.StudyInstanceUID
    assert radiograph.meta.series_instance_uid == dataset.SeriesInstanceUID
    assert radiograph.meta.patient_id == "77654033"
    assert radiograph.meta.patient_name == "Doe^Archibald"
    anonymous = _write_variant(AGFA_CR[0], tmp_path / "anonymous", PatientID=None, PatientName=None)
    meta = read_image(anonymous).meta
    assert meta.patient_id is None and meta.patient_name is None


# ------------------------------------------------------------------------------------------
# File forms: no suffix, no preamble, no meta header, cut files, garbage


def test_file_without_suffix_is_recognised(tmp_path: Path) -> None:
    copy = tmp_path / "IMG0001"
    shutil.copyfile(CT_SMALL, copy)
    assert is_dicom(copy) and is_dicom(str(copy))
    np.testing.assert_array_equal(read_image(str(copy)).pixels, read_image(CT_SMALL).pixels)


def test_files_without_preamble_or_without_meta_header_read(tmp_path: Path) -> None:
    raw = CT_SMALL.read_bytes()
    assert raw[128:132] == b"DICM" and raw[132:136] == b"\x02\x00\x00\x00"  # (0002,0000) group length
    meta_length = struct.unpack("<I", raw[140:144])[0]
    no_preamble = tmp_path / "no_preamble"
    no_preamble.write_bytes(raw[132:])
    no_meta = tmp_path / "no_meta"
    no_meta.write_bytes(raw[144 + meta_length :])
    reference = read_image(CT_SMALL).pixels
    for path in (no_preamble, no_meta):
        assert is_dicom(path)
        np.testing.assert_array_equal(read_image(path).pixels, reference)
    guessed = read_image(no_meta)
    assert guessed.meta.transfer_syntax == "1.2.840.10008.1.2.1"
    assert any("assumed Explicit VR Little Endian" in note for note in guessed.meta.notes)


def test_real_headerless_files_are_dicom() -> None:
    assert is_dicom(TEST_FILES / "rtstruct.dcm")  # implicit VR, no preamble, no meta
    assert is_dicom(TEST_FILES / "ExplVR_BigEndNoMeta.dcm")


@pytest.mark.parametrize("fraction", [0.01, 0.1, 0.3, 0.5, 0.7, 0.9, 0.99])
def test_cut_uncompressed_file_is_truncated(tmp_path: Path, fraction: float) -> None:
    raw = CT_SMALL.read_bytes()  # pixel data spans bytes ~6300..39100 of 39206
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(raw[: max(140, int(len(raw) * fraction))])
    assert "truncated" in _read_error(cut).reason


def test_cut_jpeg2000_file_is_truncated(tmp_path: Path) -> None:
    raw = (TEST_FILES / "MR_small_jp2klossless.dcm").read_bytes()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(raw[: int(len(raw) * 0.8)])
    assert "truncated" in _read_error(cut).reason


def test_garbage_files_fail_with_reasons(tmp_path: Path) -> None:
    random_bytes = tmp_path / "random.dcm"
    random_bytes.write_bytes(np.random.default_rng(0).bytes(4096))
    empty = tmp_path / "empty.dcm"
    empty.write_bytes(b"")
    text = tmp_path / "notes.txt"
    text.write_text("patient list\n" * 50)
    fake_png = tmp_path / "fake.png"
    fake_png.write_text("not really a png")
    assert "not a recognised image format" in _read_error(random_bytes).reason
    assert "empty file" in _read_error(empty).reason
    assert "not a recognised image format" in _read_error(text).reason
    assert "cannot be read as an image" in _read_error(fake_png).reason
    assert "does not exist" in _read_error(tmp_path / "missing.dcm").reason
    assert "folder" in _read_error(tmp_path).reason
    for path in (random_bytes, empty, text, fake_png, tmp_path / "missing.dcm", tmp_path):
        assert not is_dicom(path)


# ------------------------------------------------------------------------------------------
# Header problems turned into reasons


def test_undecodable_transfer_syntax_names_the_plugin_to_install() -> None:
    # Take away the installed JPEG 2000 Lossless plugins the way pydicom's decoder API allows, then
    # put them back exactly as pydicom registers them.
    decoder = get_decoder(JPEG2000Lossless)
    import_paths = {
        "pylibjpeg": ("pydicom.pixels.decoders.pylibjpeg", "_decode_frame"),
        "pillow": ("pydicom.pixels.decoders.pillow", "_decode_frame"),
    }
    removed = [label for label in import_paths if label in decoder.available_plugins]
    assert removed
    try:
        for label in removed:
            decoder.remove_plugin(label)
        error = _read_error(TEST_FILES / "MR_small_jp2klossless.dcm")
    finally:
        for label in removed:
            decoder.add_plugin(label, import_paths[label])
    assert "no decoder is installed" in error.reason
    assert "pip install pylibjpeg pylibjpeg-openjpeg" in error.reason
    assert read_image(TEST_FILES / "MR_small_jp2klossless.dcm").pixels.shape == (64, 64)


def test_transfer_syntax_without_any_decoder(tmp_path: Path) -> None:
    from pydicom.encaps import encapsulate

    dataset = pydicom.dcmread(CT_SMALL)
    dataset.file_meta.TransferSyntaxUID = MPEG2MPML
    # A compressed syntax needs encapsulated pixel data; the bytes are never decoded.
    dataset.PixelData = encapsulate([dataset.PixelData])
    dataset["PixelData"].VR = "OB"
    dataset["PixelData"].is_undefined_length = True
    path = tmp_path / "mpeg2.dcm"
    dataset.save_as(path, enforce_file_format=True)
    reason = _read_error(path).reason
    assert "MPEG2" in reason and "no decoder" in reason


def test_non_finite_and_empty_images_are_rejected(tmp_path: Path) -> None:
    huge_slope = _write_variant(CT_SMALL, tmp_path / "huge_slope", RescaleSlope="1e300")
    assert "non-finite" in _read_error(huge_slope).reason
    no_rows = _write_variant(CT_SMALL, tmp_path / "no_rows", Rows=0)
    assert "empty image" in _read_error(no_rows).reason


def test_read_dicom_header_skips_pixels_and_rejects_non_dicom() -> None:
    header = read_dicom_header(CT_SMALL)
    assert header.SOPInstanceUID == pydicom.dcmread(CT_SMALL).SOPInstanceUID
    assert "PixelData" not in header
    with pytest.raises(ImageReadError, match="README.txt: not a DICOM file"):
        read_dicom_header(TEST_FILES / "README.txt")
