"""spine_dfl.io's NIfTI and PNG/TIFF/JPEG readers, on files written here with nibabel, scikit-image and tifffile."""

from __future__ import annotations

import shutil
from pathlib import Path

import imageio.v3
import nibabel
import numpy as np
import pytest
import skimage.io

from spine_dfl.io import ImageReadError, read_image


def _read_error(path: Path) -> ImageReadError:
    with pytest.raises(ImageReadError) as caught:
        read_image(path)
    assert str(caught.value).startswith(f"{path}: ")
    return caught.value


def _nifti(path: Path, data: np.ndarray, zooms: tuple[float, ...]) -> Path:
    image = nibabel.Nifti1Image(data, affine=np.eye(4))
    image.header.set_zooms(zooms)
    image.header.set_xyzt_units("mm")
    nibabel.save(image, path)
    return path


def test_nifti_2d_transposed_with_spacing_in_row_col_order(tmp_path: Path) -> None:
    data = np.arange(6 * 4, dtype=np.int16).reshape(6, 4)  # (i, j) = (6 columns, 4 rows)
    radiograph = read_image(_nifti(tmp_path / "plane.nii", data, (0.5, 0.8)))
    assert radiograph.pixels.shape == (4, 6)
    np.testing.assert_array_equal(radiograph.pixels, data.T.astype(np.float32))
    assert radiograph.pixels[3, 5] == data[5, 3]
    assert radiograph.spacing_mm == (0.8, 0.5)
    assert radiograph.meta.source == "nifti" and radiograph.meta.spacing_source == "nifti"


def test_nifti_single_slice_volume_and_units(tmp_path: Path) -> None:
    data = np.random.default_rng(1).normal(size=(6, 4, 1)).astype(np.float32)
    radiograph = read_image(_nifti(tmp_path / "slice.nii.gz", data, (0.5, 0.8, 3.0)))
    np.testing.assert_array_equal(radiograph.pixels, data[:, :, 0].T)
    assert radiograph.spacing_mm == (0.8, 0.5)
    in_microns = nibabel.Nifti1Image(data, affine=np.eye(4))
    in_microns.header.set_zooms((500.0, 800.0, 1.0))
    in_microns.header.set_xyzt_units("micron")
    nibabel.save(in_microns, tmp_path / "microns.nii")
    assert read_image(tmp_path / "microns.nii").spacing_mm == pytest.approx((0.8, 0.5))


def test_nifti_multi_slice_volume_is_rejected(tmp_path: Path) -> None:
    path = _nifti(tmp_path / "volume.nii.gz", np.zeros((6, 4, 3), dtype=np.int16), (1.0, 1.0, 1.0))
    assert "single slice" in _read_error(path).reason


def test_png_tiff_jpeg_gray_keep_values(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    gray8 = rng.integers(0, 256, size=(20, 30), dtype=np.uint8)
    gray16 = rng.integers(0, 65536, size=(20, 30), dtype=np.uint16)
    skimage.io.imsave(tmp_path / "gray8.png", gray8, check_contrast=False)
    skimage.io.imsave(tmp_path / "gray16.png", gray16, check_contrast=False)
    skimage.io.imsave(tmp_path / "gray16.tif", gray16, check_contrast=False)
    for name, expected in (("gray8.png", gray8), ("gray16.png", gray16), ("gray16.tif", gray16)):
        radiograph = read_image(tmp_path / name)
        assert radiograph.meta.source == "image" and radiograph.spacing_mm is None
        np.testing.assert_array_equal(radiograph.pixels, expected.astype(np.float32))
    smooth = np.tile(np.linspace(0, 255, 64), (48, 1)).astype(np.uint8)
    imageio.v3.imwrite(tmp_path / "smooth.jpg", smooth, quality=95)
    assert np.abs(read_image(tmp_path / "smooth.jpg").pixels - smooth).max() <= 8
    no_suffix = tmp_path / "exported_image"
    shutil.copyfile(tmp_path / "gray16.png", no_suffix)
    np.testing.assert_array_equal(read_image(no_suffix).pixels, gray16.astype(np.float32))


def test_rgb_and_rgba_fold_to_gray(tmp_path: Path) -> None:
    from skimage.color import rgb2gray

    rgb = np.random.default_rng(3).integers(0, 256, size=(20, 30, 3), dtype=np.uint8)
    skimage.io.imsave(tmp_path / "rgb.png", rgb, check_contrast=False)
    expected = rgb2gray(rgb.astype(np.float64)).astype(np.float32)  # stays on the 0..255 scale
    np.testing.assert_allclose(read_image(tmp_path / "rgb.png").pixels, expected, atol=1e-3)
    rgba = np.concatenate([rgb, np.full((20, 30, 1), 7, dtype=np.uint8)], axis=-1)
    skimage.io.imsave(tmp_path / "rgba.png", rgba, check_contrast=False)
    np.testing.assert_allclose(read_image(tmp_path / "rgba.png").pixels, expected, atol=1e-3)


def test_multipage_tiff_is_rejected(tmp_path: Path) -> None:
    import tifffile

    tifffile.imwrite(tmp_path / "pages.tif", np.zeros((5, 20, 30), dtype=np.uint16), photometric="minisblack")
    assert "5 pages/frames" in _read_error(tmp_path / "pages.tif").reason
