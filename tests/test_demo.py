"""`spine-dfl demo` end to end (tiny settings), and its evaluation outputs checked against scikit-learn."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from spine_dfl.cli import main
from spine_dfl.metrics import load_predictions
from test_report import (
    CLASSES,
    REPORT_SECTIONS,
    assert_every_part_rendered,
    assert_block_matches,
    assert_ci_matches,
    indices,
    patient_keys,
    ref_block,
    ref_patients,
    rendered_layout,
    slow_bootstrap,
)

TINY = ["data.input_size=64", "model.filters_per_class=2", "train.epochs=2", "train.batch_size=16",
        "train.max_steps_per_epoch=4", "model.init_max_images_per_class=8"]
# A locator this small finds little: the test checks the end-to-end path and its outputs, not figures.
TINY_LOCATOR = ["locator.input_size=[128, 64]", "locator.neck_channels=16", "locator.head_channels=16",
                "train.batch_size=2", "train.epochs=30", "train.lr_backbone=0.004", "locator.threshold=0.05"]


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    # the view gate's step trains for 5 s here: the test checks it runs and is embedded, not its figures
    args = ["demo", "--out", str(out), "--patients", "6", "--seed", "2", "--view-budget-s", "5"]
    for setting in TINY:
        args += ["--set", setting]
    for setting in TINY_LOCATOR:
        args += ["--locator-set", setting]
    assert main(args) == 0
    return out


def test_demo_writes_every_output(demo_dir: Path) -> None:
    for name in ("cohort/manifest.csv", "train/best.pt", "train/metrics.csv", "train/val_report/report.html",
                 "evaluate/predictions.csv", "evaluate/metrics.json", "evaluate/per_vertebra.csv",
                 "evaluate/report.html", "explain/index.html", "explain/patches.json", "locator/best.pt"):
        assert (demo_dir / name).is_file(), name
    manifest = pd.read_csv(demo_dir / "cohort" / "manifest.csv")
    test_rows = manifest[manifest["split"] == "test"]
    predictions = pd.read_csv(demo_dir / "evaluate" / "predictions.csv")
    assert len(predictions) == len(test_rows)
    assert set(predictions["patient_id"].astype(str)) == set(test_rows["patient_id"].astype(str))
    patches = json.loads((demo_dir / "explain" / "patches.json").read_text())
    assert len(patches) == len(test_rows)


def test_demo_evaluates_the_located_crops_without_the_roi_file(demo_dir: Path, capsys: pytest.CaptureFixture) -> None:
    metrics = json.loads((demo_dir / "evaluate" / "metrics.json").read_text())
    assert metrics["locator"]["split"] == "test" and metrics["locator"]["vertebrae"] > 0
    assert "end_to_end" in metrics and metrics["end_to_end"]["report"] == "located/report.html"
    located = pd.read_csv(demo_dir / "evaluate" / "located" / "predictions.csv")
    assert set(located["roi_source"]) == {"locator"}


def test_demo_metrics_recomputed_with_sklearn(demo_dir: Path) -> None:
    table, classes = load_predictions(demo_dir / "evaluate" / "predictions.csv")
    assert classes == CLASSES
    metrics = json.loads((demo_dir / "evaluate" / "metrics.json").read_text())
    y, pred = indices(table, "label"), indices(table, "pred")
    probs = table[[f"prob_{c}" for c in CLASSES]].to_numpy()
    assert_block_matches(metrics["overall"], ref_block(y, pred, probs), "overall")
    for branch in ("g", "p", "side"):
        branch_probs = table[[f"{branch}_prob_{c}" for c in CLASSES]].to_numpy()
        assert_block_matches(metrics["branches"][branch],
                             ref_block(y, indices(table, f"pred_{branch}"), branch_probs), branch)
    for level, block in metrics["per_vertebra"].items():
        rows = (table["vertebra"] == level).to_numpy()
        assert_block_matches(block, ref_block(y[rows], pred[rows], probs[rows]), level)
    py, ppred, pprobs, _ = ref_patients(table)
    assert_block_matches(metrics["per_patient"], ref_block(py, ppred, pprobs), "per patient")
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-6)
    # the 95% intervals: the documented patient bootstrap, one scikit-learn call per resample
    boot = metrics["bootstrap"]
    assert boot["unit"] == "patient"
    slow = slow_bootstrap(y, pred, probs, patient_keys(table), boot["n_resamples"], boot["seed"])
    assert_ci_matches(metrics["overall"], slow, "overall")


def test_demo_report_renders_with_every_level(demo_dir: Path, tmp_path: Path) -> None:
    if shutil.which("chromium") is None:
        pytest.skip("chromium is not installed (Debian: apt-get install chromium); cannot render report.html")
    page = demo_dir / "evaluate" / "report.html"
    assert_every_part_rendered(rendered_layout(page, tmp_path), REPORT_SECTIONS,
                               page.read_text(encoding="utf-8").count("<img "))
    dom = page.read_text(encoding="utf-8")
    manifest = pd.read_csv(demo_dir / "cohort" / "manifest.csv")
    for level in manifest.loc[manifest["split"] == "test", "vertebra"].unique():
        assert f">{level}<" in dom, level
