"""Shared fixtures: real DICOM test material from pydicom and pydicom-data, found by globbing.

``pydicom.data.get_testdata_files()`` is never used: offline it tries to download and hangs.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


def pydicom_test_dir() -> Path:
    import pydicom

    return Path(pydicom.__file__).parent / "data" / "test_files"


def pydicom_data_dir() -> Path | None:
    """Folder of the ``pydicom-data`` package's files, or None when it is not installed."""
    try:
        import data_store  # the pydicom-data package
    except ImportError:
        return None
    folder = Path(data_store.__file__).parent / "data"
    return folder if folder.is_dir() else None


def all_dicom_test_files() -> list[Path]:
    """Every file under both test folders (DICOM or not), sorted for stable test ids."""
    roots = [pydicom_test_dir()]
    extra = pydicom_data_dir()
    if extra is not None:
        roots.append(extra)
    return sorted(p for root in roots for p in root.rglob("*") if p.is_file())


def require_pydicom_data() -> Path:
    folder = pydicom_data_dir()
    if folder is None:
        pytest.skip("pydicom-data is not installed (pip install -e '.[test]')")
    return folder


@pytest.fixture(autouse=True)
def _deterministic_torch():
    torch.manual_seed(0)
    yield


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_cuda = pytest.mark.skip(reason="no CUDA device on this machine")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip_cuda)


@pytest.fixture(scope="session")
def small_cohort(tmp_path_factory) -> Path:
    """A small synthetic cohort (real DICOM files + manifest.csv + rois.csv), made once per test session."""
    from spine_dfl.synth import generate_cohort

    out = tmp_path_factory.mktemp("cohort")
    generate_cohort(out, patients=8, seed=1)
    return out
