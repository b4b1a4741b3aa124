"""The "unlike my training data" flag (engine.shift): Ledoit-Wolf against its formula, the fitted
statistics, and end to end a tiny trained grader's checkpoint, score's columns, summary, refusals, SR
and SC, and an old checkpoint without the statistics."""

from __future__ import annotations

import csv
import json
import logging
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
import torch

from spine_dfl.config import load_config
from spine_dfl.dicom_out import VertebraFinding, render_roi_overlay
from spine_dfl.dicom_out.overlay import shift_banner_height
from spine_dfl.engine.shift import ShiftModel, fit_shift, image_shift_cells, ledoit_wolf
from spine_dfl.engine.train import train
from spine_dfl.score import reason_category, score

sys.path.insert(0, str(Path(__file__).parent))
from quick_training import QUICK  # noqa: E402


def _ledoit_wolf_by_the_book(x: np.ndarray) -> tuple[np.ndarray, float]:
    """Ledoit & Wolf (2004), Lemma 3.2 / Theorem 3.1, with the per-sample sum written out."""
    n, d = x.shape
    x = x - x.mean(axis=0)
    s = sum(np.outer(row, row) for row in x) / n
    norm2 = lambda a: float(np.trace(a @ a.T)) / d  # noqa: E731 - the paper's normalised Frobenius norm
    m = float(np.trace(s)) / d
    d2 = norm2(s - m * np.eye(d))
    b2 = min(d2, sum(norm2(np.outer(row, row) - s) for row in x) / n**2)
    return (b2 / d2) * m * np.eye(d) + (1 - b2 / d2) * s, b2 / d2


def test_ledoit_wolf_equals_the_published_formula_and_scikit_learn() -> None:
    x = np.random.default_rng(3).normal(size=(7, 4)) @ np.array([[2, 0, 0, 0], [1, 1, 0, 0], [0, 0, 3, 0], [0, 0, 1, 0.5]])
    sigma, shrinkage = ledoit_wolf(x)
    expected, expected_shrinkage = _ledoit_wolf_by_the_book(x)
    assert shrinkage == pytest.approx(expected_shrinkage, rel=1e-10) and 0 < shrinkage < 1
    np.testing.assert_allclose(sigma, expected, rtol=1e-10, atol=1e-12)
    sklearn_covariance = pytest.importorskip("sklearn.covariance")  # a dependency of the report, not of this code
    reference, reference_shrinkage = sklearn_covariance.ledoit_wolf(x)
    np.testing.assert_allclose(sigma, reference, rtol=1e-10, atol=1e-12)
    assert shrinkage == pytest.approx(reference_shrinkage, rel=1e-10)


def test_ledoit_wolf_is_well_conditioned_with_fewer_samples_than_features() -> None:
    x = np.random.default_rng(4).normal(size=(10, 50))
    sigma, shrinkage = ledoit_wolf(x)
    empirical = np.cov(x, rowvar=False, bias=True)
    assert np.linalg.matrix_rank(empirical) < 50  # singular: its inverse does not exist
    eigenvalues = np.linalg.eigvalsh(sigma)
    assert 0 < shrinkage <= 1 and eigenvalues.min() > 0
    assert eigenvalues.max() / eigenvalues.min() < 100
    with pytest.raises(ValueError, match="at least 2 samples"):
        ledoit_wolf(x[:1])


def test_fitted_statistics_flag_what_lies_off_the_training_cloud() -> None:
    rng = np.random.default_rng(5)
    mixing = rng.normal(size=(12, 12))
    train_x = rng.normal(size=(400, 12)) @ mixing + 3.0
    val_x = rng.normal(size=(400, 12)) @ mixing + 3.0
    images = [f"val{i // 4}" for i in range(400)]  # 100 images of 4 vertebrae
    record = fit_shift(train_x, val_x, images)
    assert record["mean"].dtype == torch.float32 and record["whiten"].shape == (12, 12)
    model = ShiftModel.from_record(record)
    val_scores = [c["shift_score"] for c in image_shift_cells(images, model.distances(torch.from_numpy(val_x).float()).numpy(), model.threshold)]
    assert np.mean(np.array(val_scores) > model.threshold) <= 0.02  # about 1%: the 99th percentile
    off = rng.normal(size=(40, 12)) @ mixing + 3.0 + 4.0 * mixing.std()
    far = model.distances(torch.from_numpy(off).float()).numpy()
    assert (far > model.threshold).mean() > 0.95
    cells = image_shift_cells(["a", "a", "b"], np.array([1.0, 3.0, 50.0]), threshold=10.0)
    assert cells[0] == cells[1] == {"shift_score": 2.0, "in_distribution": "yes"}
    assert cells[2]["in_distribution"] == "no"


def test_banner_band_is_drawn_only_on_flagged_images() -> None:
    image = np.tile(np.linspace(0, 1, 200), (300, 1))
    roi = (60.0, 120.0, 140.0, 180.0)

    def overlay(verdict: str) -> np.ndarray:
        finding = VertebraFinding("L1", roi, "normal", {"normal": 0.9, "severe": 0.1},
                                  cells={"in_distribution": verdict, "shift_score": 3.0})
        return render_roi_overlay(image, [finding], ["normal", "severe"])

    flagged, unflagged = overlay("no"), overlay("yes")
    band = shift_banner_height(300, 200)
    assert np.abs(flagged[:band].astype(int) - unflagged[:band]).mean() > 50  # the banner replaces the band
    assert (flagged[:band, :, 0].astype(int) - flagged[:band, :, 2]).mean() > 60  # red
    np.testing.assert_array_equal(flagged[band:], unflagged[band:])  # nothing else changes


# --------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def trained(small_cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("shift_run")
    train(small_cohort / "manifest.csv", load_config("cpu_demo", QUICK), run, progress=False)
    return run


@pytest.fixture(scope="module")
def films(small_cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The cohort's films and the same films inverted (new SOP UIDs), with an ROI table for both."""
    folder = tmp_path_factory.mktemp("films")
    rois = pd.read_csv(small_cohort / "rois.csv", dtype=str)
    extra = []
    for path in sorted((small_cohort / "images").glob("*.dcm")):
        ds = pydicom.dcmread(path)
        pixels = ds.pixel_array
        uid = ds.SOPInstanceUID
        # uncompressed (the cohort's files use several transfer syntaxes)
        ds.set_pixel_data((pixels.max() - pixels).astype(pixels.dtype), ds.PhotometricInterpretation, int(ds.BitsStored))
        ds.SOPInstanceUID = pydicom.uid.generate_uid(entropy_srcs=[str(uid), "inverted"])
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        (folder / "inverted").mkdir(exist_ok=True)
        ds.save_as(folder / "inverted" / f"{path.stem}_inverted.dcm")
        extra.append(rois[rois["sop_instance_uid"] == uid].assign(sop_instance_uid=str(ds.SOPInstanceUID), image=""))
    pd.concat([rois, *extra]).to_csv(folder / "rois.csv", index=False)
    return folder / "inverted", folder / "rois.csv"


def _first_rows(out: Path) -> pd.DataFrame:
    table = pd.read_csv(out / "predictions.csv", dtype=str, keep_default_na=False)
    return table.groupby("image", sort=False).first()


def test_training_stores_calibration_and_shift_statistics(trained: Path) -> None:
    raw = torch.load(trained / "best.pt", weights_only=True)
    assert set(raw["calibration"]["temperatures"]) == {"g", "p", "side", "fused"}
    assert raw["shift"]["whiten"].dtype == torch.float32 and raw["shift"]["threshold"] > 0
    summary = json.loads((trained / "calibration.json").read_text())
    assert summary["shift"]["features"] == "g_stream_pooled+p_stream_peaks" and "whiten" not in summary["shift"]
    fused = summary["calibration"]
    assert fused["ece_after"]["fused"] <= fused["ece_before"]["fused"] + 1e-9
    assert summary["shift"]["threshold"] == pytest.approx(float(raw["shift"]["threshold"]))


def test_score_flags_inverted_films_and_refuses_them_on_request(
    trained: Path, small_cohort: Path, films: tuple[Path, Path], tmp_path: Path,
) -> None:
    inverted, rois = films
    originals = small_cohort / "images"
    summary = score(trained / "best.pt", [originals, inverted], tmp_path / "flag", rois_csv=rois, workers=0,
                    progress=False, dicom_out=tmp_path / "dicom")
    table = pd.read_csv(tmp_path / "flag" / "predictions.csv", dtype=str, keep_default_na=False)
    columns = list(table.columns)
    assert columns[columns.index("locator_confidence") + 1 : columns.index("locator_confidence") + 3] == [
        "shift_score", "in_distribution"]
    # the same verdict on every row of an image
    assert (table.groupby("image")["in_distribution"].nunique() == 1).all()
    first = _first_rows(tmp_path / "flag")
    own = first[[Path(i).parent == originals for i in first.index]]
    flipped = first[[Path(i).parent == inverted for i in first.index]]
    assert (own["in_distribution"] == "yes").mean() >= 0.75
    assert (flipped["in_distribution"] == "no").all()
    assert flipped["shift_score"].astype(float).min() > own["shift_score"].astype(float).max()
    assert summary.shift_check == "available" and summary.shifted == int((first["in_distribution"] == "no").sum())
    assert json.loads((tmp_path / "flag" / "summary.json").read_text())["shifted"] == summary.shifted

    # the SR says so, and the SC carries the banner
    one = flipped.index[0]
    stem = pydicom.dcmread(one, stop_before_pixels=True).SOPInstanceUID
    sr = pydicom.dcmread(tmp_path / "dicom" / f"{stem}_SR.dcm")
    evaluations = _sr_items(sr, "Image like the training images")
    assert [item.ConceptCodeSequence[0].CodeMeaning for item in evaluations] == ["No"]
    scores = _sr_items(sr, "Training distribution shift score")
    assert float(scores[0].MeasuredValueSequence[0].NumericValue) == pytest.approx(float(first.loc[one, "shift_score"]), rel=1e-4)
    sc = pydicom.dcmread(tmp_path / "dicom" / f"{stem}_SC.dcm").pixel_array
    band = shift_banner_height(*sc.shape[:2])
    assert (sc[:band, :, 0].astype(int) - sc[:band, :, 1]).mean() > 60  # the red banner
    yes = own.index[own["in_distribution"] == "yes"][0]
    yes_stem = pydicom.dcmread(yes, stop_before_pixels=True).SOPInstanceUID
    plain = pydicom.dcmread(tmp_path / "dicom" / f"{yes_stem}_SC.dcm").pixel_array
    assert abs((plain[:band, :, 0].astype(int) - plain[:band, :, 1]).mean()) < 5  # no banner: grey there

    from spine_dfl.cli import EXIT_INPUTS_FAILED, main

    # --refuse-shifted: the inverted films end as failed files, so the run finished with some inputs
    # failed (exit 3, docs/commands.md), each counted in summary.json with its reason.
    assert main(["score", str(trained / "best.pt"), str(originals), str(inverted), "--rois", str(rois), "--workers", "0",
                 "--no-progress", "--out", str(tmp_path / "refuse"), "--refuse-shifted"]) == EXIT_INPUTS_FAILED
    refused = json.loads((tmp_path / "refuse" / "summary.json").read_text())
    rows = _first_rows(tmp_path / "refuse")
    failed = rows[rows["status"] == "error"]
    assert set(failed.index) == set(first.index[first["in_distribution"] == "no"])
    assert all(e.startswith("unlike the training images (shift score ") and e.endswith("): not graded") for e in failed["error"])
    assert refused["failed"] == len(failed) > 0
    assert refused["scored"] == refused["found"] - len(failed)
    assert refused["failed_by_reason"] == {"unlike the training images": len(failed)}
    assert refused["shifted"] == len(failed) and refused["shift_check"] == "available"
    assert reason_category(failed["error"].iloc[0]) == "unlike the training images"
    assert (failed["pred"] == "").all() and (failed["in_distribution"] == "no").all()


def _sr_items(dataset: pydicom.Dataset, meaning: str) -> list[pydicom.Dataset]:
    found = []
    for item in dataset.get("ContentSequence", []):
        if "ConceptNameCodeSequence" in item and item.ConceptNameCodeSequence[0].CodeMeaning == meaning:
            found.append(item)
        found += _sr_items(item, meaning)
    return found


def test_old_checkpoint_scores_with_empty_shift_cells(trained: Path, small_cohort: Path, tmp_path: Path, caplog) -> None:
    raw = torch.load(trained / "best.pt", weights_only=True)
    for key in ("calibration", "shift"):
        raw.pop(key)
    old = tmp_path / "old.pt"
    torch.save(raw, old)
    with caplog.at_level(logging.WARNING):
        summary = score(old, [small_cohort / "images"], tmp_path / "out", rois_csv=small_cohort / "rois.csv",
                        workers=0, progress=False)
    messages = [r.getMessage() for r in caplog.records]
    assert sum("shift check unavailable" in m for m in messages) == 1
    assert sum("uncalibrated checkpoint" in m for m in messages) == 1
    assert summary.failed == 0 and summary.shifted == 0 and summary.shift_check.startswith("unavailable")
    with open(tmp_path / "out" / "predictions.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert rows and all(r["shift_score"] == "" and r["in_distribution"] == "" for r in rows)


def test_val_report_shows_calibration_and_evaluate_reports_the_shift(trained: Path, small_cohort: Path, tmp_path: Path) -> None:
    from spine_dfl.report import write_evaluation
    from spine_dfl.workflows.evaluate import evaluate
    from spine_dfl.engine.posthoc import CALIBRATION_JSON

    calibration = json.loads((trained / CALIBRATION_JSON).read_text())["calibration"]
    metrics = evaluate(trained / "best.pt", small_cohort / "manifest.csv", "test", tmp_path / "eval", device="cpu",
                       n_bootstrap=0)
    assert metrics["calibration"]["temperatures"] == pytest.approx(calibration["temperatures"])
    assert metrics["overall"]["ece"] is not None
    assert metrics["shift"]["images"] >= 1 and "flagged_images" in metrics["shift"]
    page = (tmp_path / "eval" / "report.html").read_text()
    assert "Images unlike the training data" in page and "reliability before and after calibration" in page
    table = pd.read_csv(tmp_path / "eval" / "predictions.csv")
    assert {"shift_score", "in_distribution"} <= set(table.columns)
    # a table without the columns and no calibration record: neither section
    bare = write_evaluation(table.drop(columns=["shift_score", "in_distribution"]), tmp_path / "bare", "bare", 0)
    assert "shift" not in bare and "calibration" not in bare
    assert "Images unlike the training data" not in (tmp_path / "bare" / "report.html").read_text()


def test_serve_status_counts_images_unlike_the_training_images(tmp_path: Path) -> None:
    from spine_dfl.serve.status import format_status, shift_counts

    def table(study: str, generation: int, verdicts: list[tuple[str, str]]) -> None:
        folder = tmp_path / "results" / study / f"generation-{generation}" / "table"
        folder.mkdir(parents=True)
        rows = "".join(f"{image},ok,{verdict}\n" for image, verdict in verdicts)
        (folder / "predictions.csv").write_text("image,status,in_distribution\n" + rows)

    table("1.2.3", 0, [("a", "no"), ("a", "no"), ("b", "no")])  # superseded by generation 1
    table("1.2.3", 1, [("a", "yes"), ("a", "yes"), ("b", "no"), ("c", "yes")])
    table("1.2.4", 0, [("d", "no"), ("e", "")])  # e: not checked (old checkpoint)
    counts = shift_counts(tmp_path)
    assert counts == {"images_checked": 4, "images_unlike_training": 2}
    summary = {"states": {"done": 2}, "instances": 6, "failed_instances": 0, "oldest_waiting": None,
               "last_errors": [], "last_instance_errors": [], "last_rejections": [], "shift": counts}
    assert "images unlike the training images: 2 of 4 checked" in format_status(summary)


def test_the_threshold_is_a_lognormal_tail_not_the_largest_of_a_few() -> None:
    from spine_dfl.engine.shift import lognormal_quantile

    rng = np.random.default_rng(0)
    many = np.exp(rng.normal(3.0, 0.2, 20000))
    assert lognormal_quantile(many, 99.0) == pytest.approx(np.exp(3.0 + 2.3263 * 0.2), rel=0.02)
    few = np.exp(rng.normal(3.0, 0.2, 13))
    assert lognormal_quantile(few, 99.0) > np.percentile(few, 99.0) * 0.98  # beyond what 13 scores show
    assert lognormal_quantile(np.array([5.0, 7.0]), 99.0) == pytest.approx(7.0)
