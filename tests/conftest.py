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


def load_benchmark(name: str):
    """A script of ``benchmarks/`` imported as a module (they are scripts, not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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


LOCATED_GRADER_CLASSES = ["normal", "mild", "severe"]
# A small locator that finds lateral columns well enough for the image gate (gate.column) to let the
# cohort's films through: a locator that finds noise is refused, as it should be. ~1 min on 2 cores.
TINY_LOCATOR = ["locator.input_size=[192, 96]", "locator.neck_channels=32", "locator.head_channels=32",
                "train.batch_size=4", "train.time_budget_s=null", "device=cpu", "train.epochs=40",
                "locator.threshold=0.3"]


@pytest.fixture(scope="session")
def locator_cohort(tmp_path_factory) -> Path:
    """24 synthetic patients (seed 1) for the session's small locator."""
    from spine_dfl.synth import generate_cohort

    out = tmp_path_factory.mktemp("locator_cohort")
    generate_cohort(out, patients=24, seed=1)
    return out


@pytest.fixture(scope="session")
def located_grader_checkpoints(locator_cohort: Path, tmp_path_factory) -> dict[str, Path]:
    """A small locator trained 40 epochs on ``locator_cohort``, one that finds nothing (its threshold above
    any score), a random-init ROI grader, and the grader with the locator embedded (made once per session:
    the scoring-with-a-locator and the DICOM node tests share them)."""
    from spine_dfl.config import load_config
    from spine_dfl.data.transforms import Preprocessing
    from spine_dfl.engine.checkpoint import atomic_torch_save, checkpoint_payload
    from spine_dfl.locate.checkpoint import embed_locator
    from spine_dfl.model import DFLNet
    from spine_dfl.workflows.train import train  # the task registry: trains the config's task (locator)

    folder = tmp_path_factory.mktemp("locator_checkpoints")
    train(locator_cohort / "manifest.csv", load_config("locator_cpu", TINY_LOCATOR), folder / "locator", progress=False)
    paths = {"locator": folder / "locator" / "best.pt", "grader": folder / "grader.pt",
             "blind": folder / "blind.pt", "embedded": folder / "embedded.pt"}
    raw = torch.load(paths["locator"], weights_only=True)
    torch.save({**raw, "threshold": 1.5}, paths["blind"])  # a sigmoid score never reaches 1.5
    torch.manual_seed(0)
    model = DFLNet("resnet18", num_classes=len(LOCATED_GRADER_CLASSES), filters_per_class=2)
    atomic_torch_save(checkpoint_payload(model, {"test": "roi"},
                                         LOCATED_GRADER_CLASSES, Preprocessing(input_size=32, use_roi=True), {}),
                      paths["grader"])
    embed_locator(paths["grader"], paths["locator"], paths["embedded"])
    return paths
