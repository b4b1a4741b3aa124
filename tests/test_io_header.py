"""Header-only facts (spine_dfl.io.read_header / image_size / dicom_uid) agree with read_image without decoding."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nibabel
import numpy as np
import pydicom
import pytest
import skimage.io

from conftest import all_dicom_test_files, pydicom_test_dir, require_pydicom_data
from spine_dfl.io import ImageReadError, dicom_uid, image_size, read_header, read_image

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:pydicom.*")

TEST_FILES = pydicom_test_dir()


def _file_id(path: Path) -> str:
    return path.name


@pytest.mark.parametrize("path", all_dicom_test_files(), ids=_file_id)
def test_header_agrees_with_the_pixels_or_rejects_what_read_image_rejects(path: Path) -> None:
    try:
        header = read_header(path)
    except ImageReadError as error:
        assert str(error).startswith(f"{path}: ") and error.reason.strip()
        with pytest.raises(ImageReadError):  # the header never rejects a file the full reader accepts
            read_image(path)
        return
    try:
        radiograph = read_image(path)
    except ImageReadError:
        return  # a header can be fine while the pixel data is not
    assert (header.rows, header.cols) == radiograph.pixels.shape
    assert header.spacing_mm == radiograph.spacing_mm
    assert header.source == radiograph.meta.source == "dicom"
    for key in ("sop_instance_uid", "study_instance_uid", "series_instance_uid"):
        assert getattr(header, key) == getattr(radiograph.meta, key)


def test_header_reading_never_decodes_pixels(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_decoding(self: pydicom.Dataset) -> None:
        raise AssertionError("pixel data decoded")

    monkeypatch.setattr(pydicom.Dataset, "pixel_array", property(no_decoding))
    ct = TEST_FILES / "CT_small.dcm"
    assert image_size(ct) == (128, 128)
    assert dicom_uid(ct) == pydicom.dcmread(ct, stop_before_pixels=True).SOPInstanceUID
    assert read_header(TEST_FILES / "MR_small_RLE.dcm").rows == 64


@pytest.mark.parametrize(
    ("folder", "name", "reason"),
    [
        ("data", "emri_small.dcm", "multi-frame image (10 frames)"),
        ("test", "SC_rgb_rle.dcm", "colour image (RGB, 3 sample(s) per pixel)"),
        ("test", "dicomdirtests/DICOMDIR", "is a DICOMDIR index"),
        ("test", "README.txt", "not a recognised image format"),
    ],
)
def test_header_rejects_with_the_readers_reasons(folder: str, name: str, reason: str) -> None:
    path = (require_pydicom_data() if folder == "data" else TEST_FILES) / name
    with pytest.raises(ImageReadError, match=reason.replace("(", r"\(").replace(")", r"\)")):
        read_header(path)
    assert reason in str(pytest.raises(ImageReadError, read_image, path).value)


def test_dicom_uid_is_none_for_anything_but_a_dicom_with_a_uid(tmp_path: Path) -> None:
    assert dicom_uid(TEST_FILES / "README.txt") is None
    assert dicom_uid(tmp_path / "missing.dcm") is None
    stripped = pydicom.dcmread(TEST_FILES / "CT_small.dcm")
    del stripped.SOPInstanceUID
    stripped.save_as(tmp_path / "no_uid.dcm")
    assert dicom_uid(tmp_path / "no_uid.dcm") is None


def test_nifti_and_raster_headers_match_read_image(tmp_path: Path) -> None:
    volume = nibabel.Nifti1Image(np.zeros((6, 4, 1), dtype=np.int16), affine=np.eye(4))
    volume.header.set_zooms((0.5, 0.8, 3.0))
    volume.header.set_xyzt_units("mm")
    nibabel.save(volume, tmp_path / "slice.nii.gz")
    gray = (np.arange(7 * 9) % 251).astype(np.uint8).reshape(7, 9)
    skimage.io.imsave(tmp_path / "gray.png", gray, check_contrast=False)
    skimage.io.imsave(tmp_path / "gray.tif", gray.astype(np.uint16), check_contrast=False)
    skimage.io.imsave(tmp_path / "rgb.jpg", np.stack([gray] * 3, axis=-1), check_contrast=False)
    for name in ("slice.nii.gz", "gray.png", "gray.tif", "rgb.jpg"):
        header, radiograph = read_header(tmp_path / name), read_image(tmp_path / name)
        assert (header.rows, header.cols) == radiograph.pixels.shape, name
        assert header.spacing_mm == radiograph.spacing_mm and header.source == radiograph.meta.source, name
    assert read_header(tmp_path / "slice.nii.gz").spacing_mm == (0.8, 0.5)
    multi = nibabel.Nifti1Image(np.zeros((6, 4, 3), dtype=np.int16), affine=np.eye(4))
    nibabel.save(multi, tmp_path / "volume.nii")
    with pytest.raises(ImageReadError, match="single slice"):
        read_header(tmp_path / "volume.nii")


def test_multipage_tiff_header_gives_the_readers_reason(tmp_path: Path) -> None:
    import tifffile

    tifffile.imwrite(tmp_path / "pages.tif", np.zeros((5, 20, 30), dtype=np.uint16), photometric="minisblack")
    with pytest.raises(ImageReadError, match="5 pages/frames"):
        read_header(tmp_path / "pages.tif")


def test_importing_io_loads_no_torch_monai_or_decoders() -> None:
    code = (
        "import sys, spine_dfl.io\n"
        "heavy = [m for m in ('torch', 'torchvision', 'monai', 'pandas', 'pydicom', 'skimage', 'nibabel')"
        " if m in sys.modules]\n"
        "print(','.join(heavy))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout.strip() == ""
