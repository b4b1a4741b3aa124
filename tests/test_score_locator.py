"""Scoring without an ROI file: the locator finds the vertebrae, the grader grades them, the table says
where each ROI came from and gives six-point morphometry; kinds of checkpoints are never mixed up."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import LOCATED_GRADER_CLASSES as CLASSES

from spine_dfl.data.transforms import Preprocessing
from spine_dfl.engine.checkpoint import CheckpointError, atomic_torch_save, checkpoint_payload
from spine_dfl.io import LEVELS, read_image
from spine_dfl.locate.checkpoint import embed_locator, load_locator, locate_radiograph
from spine_dfl.locate.morphometry import spine_morphometry
from spine_dfl.model import DFLNet
from spine_dfl.predictions import MORPHOMETRY_COLUMNS, build_predictions, morphometry_cells, read_predictions
from spine_dfl.score import score


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def checkpoints(located_grader_checkpoints: dict[str, Path]) -> dict[str, Path]:
    """The session's tiny locator, blind locator, random-init ROI grader and embedded grader (conftest)."""
    return located_grader_checkpoints


@pytest.fixture(scope="module")
def images(small_cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three of the cohort's radiographs, as a PACS export folder without an ROI file."""
    folder = tmp_path_factory.mktemp("export")
    for path in sorted((small_cohort / "images").iterdir())[:3]:
        (folder / path.name).write_bytes(path.read_bytes())
    return folder


@pytest.mark.parametrize("workers", [0, 1])
def test_located_vertebrae_are_graded_with_source_confidence_and_morphometry(checkpoints, images, tmp_path, workers):
    summary = score(checkpoints["grader"], [images], tmp_path, locator=checkpoints["locator"], workers=workers,
                    batch_size=8, progress=False)
    assert (summary.found, summary.scored, summary.failed) == (3, 3, 0)
    table, classes = read_predictions(tmp_path / "predictions.csv")
    assert classes == CLASSES and set(table["roi_source"]) == {"locator"}
    loaded = load_locator(checkpoints["locator"])
    for image, rows in table.groupby("image", sort=False):
        radiograph = read_image(image)
        found = locate_radiograph(loaded, radiograph.pixels)
        # the locator's detections in its order, less those mostly outside the image, boxes clipped to it
        rows_h, cols_w = radiograph.pixels.shape
        keep = [k for k, box in enumerate(found.detections.boxes)
                if (min(box[2], cols_w) - max(box[0], 0)) * (min(box[3], rows_h) - max(box[1], 0))
                >= 0.5 * (box[2] - box[0]) * (box[3] - box[1])]
        assert len(rows) == len(keep) > 0
        anchored = set(rows["level_anchored"])
        assert anchored in ({"yes"}, {"no"})
        if anchored == {"no"}:  # no anchor visible: relative names top to bottom
            assert list(rows["vertebra"]) == [f"V{i + 1}" for i in range(len(keep))]
        else:  # counted from the sacrum: consecutive levels ending at L5 with the locator's skips
            assert rows["vertebra"].iloc[-1] == "L5"
            assert all(LEVELS.index(a) < LEVELS.index(b) for a, b in zip(rows["vertebra"], rows["vertebra"][1:]))
        expected = np.clip(found.detections.boxes[keep], 0, [cols_w, rows_h, cols_w, rows_h])
        np.testing.assert_allclose(rows[["x_min", "y_min", "x_max", "y_max"]], expected, rtol=1e-5)
        np.testing.assert_allclose(rows["locator_confidence"], found.detections.scores[keep] * rows["level_confidence"],
                                   rtol=1e-4)
        assert set(rows["orientation"]) == {"as stored"}  # synth films say P\F: canonical
        levels = ([LEVELS.index(v) for v in rows["vertebra"]] if anchored == {"yes"}
                  else list(range(len(keep))))
        source = radiograph.meta.spacing_source
        measured = spine_morphometry(found.detections.points[keep], levels, radiograph.spacing_mm, source)
        np.testing.assert_allclose(rows["hp"], measured.heights.posterior, rtol=1e-5)
        np.testing.assert_allclose(rows["wedge_ratio"], rows["ha"] / rows["hp"], rtol=1e-4)
        unit = {"PixelSpacing": "patient mm", "ImagerPixelSpacing": "detector mm"}[source]
        assert set(rows["height_unit"]) == {unit}
        assert list(rows["morph_grade"]) == list(measured.grade)


def test_a_radiograph_without_vertebrae_is_a_failed_file(checkpoints, images, tmp_path):
    summary = score(checkpoints["grader"], [images], tmp_path, locator=checkpoints["blind"], workers=1,
                    progress=False)
    assert (summary.scored, summary.failed) == (0, 3)
    assert summary.failed_by_reason == {"no vertebrae found": 3}
    assert {(r["status"], r["error"]) for r in _rows(tmp_path / "predictions.csv")} == {("error", "no vertebrae found")}


def test_an_embedded_locator_serves_without_the_option(checkpoints, images, tmp_path):
    from spine_dfl.cli import main

    assert main(["embed-locator", str(checkpoints["grader"]), str(checkpoints["locator"]), str(tmp_path / "one.pt")]) == 0
    assert main(["embed-locator", str(checkpoints["locator"]), str(checkpoints["grader"]), str(tmp_path / "x.pt")]) == 2
    assert torch.load(tmp_path / "one.pt", weights_only=True)["locator"]["kind"] == "locator"
    score(tmp_path / "one.pt", [images], tmp_path / "embedded", workers=0, progress=False)
    score(checkpoints["grader"], [images], tmp_path / "given", locator=checkpoints["locator"], workers=0,
          progress=False)
    embedded, given = _rows(tmp_path / "embedded" / "predictions.csv"), _rows(tmp_path / "given" / "predictions.csv")
    assert embedded == given and {r["roi_source"] for r in embedded} == {"locator"}


def test_roi_file_rows_say_file_and_carry_no_morphometry(checkpoints, images, small_cohort, tmp_path):
    score(checkpoints["grader"], [images], tmp_path, rois_csv=small_cohort / "rois.csv", workers=0, progress=False)
    rows = _rows(tmp_path / "predictions.csv")
    assert {r["roi_source"] for r in rows} == {"file"} and {r["locator_confidence"] for r in rows} == {""}
    assert not set(MORPHOMETRY_COLUMNS) & set(rows[0])


def test_checkpoint_kinds_are_never_mixed_up(checkpoints, images, tmp_path):
    with pytest.raises(CheckpointError, match="locator checkpoint, not a grader checkpoint") as err:
        score(checkpoints["locator"], [images], tmp_path, progress=False)
    assert "\n" not in str(err.value)
    with pytest.raises(CheckpointError, match="grader checkpoint, not a locator checkpoint"):
        score(checkpoints["grader"], [images], tmp_path, locator=checkpoints["grader"], progress=False)
    with pytest.raises(CheckpointError, match="locator checkpoint, not a grader"):
        embed_locator(checkpoints["locator"], checkpoints["grader"], tmp_path / "x.pt")
    assert not (tmp_path / "x.pt").exists()


def test_cli_reports_a_locator_given_as_the_grader_in_one_line(checkpoints, images, tmp_path, capsys):
    from spine_dfl.cli import main

    assert main(["score", str(checkpoints["locator"]), str(images), "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "locator checkpoint, not a grader checkpoint" in err and "Traceback" not in err and "\n" not in err


def test_morphometry_columns_from_manifest_points_match_hand_computed_values(small_cohort):
    """T4 and T5 of the first radiograph, from the manifest's six points: heights by Pythagoras, ratios by hand."""
    import pandas as pd

    manifest = pd.read_csv(small_cohort / "manifest.csv")
    first = manifest[manifest["image"] == manifest["image"].iloc[0]].iloc[:3]
    points = first[[f"{p}_{a}" for p in ("sa", "sm", "sp", "ia", "im", "ip") for a in "xy"]].to_numpy(float)
    points = points.reshape(-1, 6, 2)
    spacing = (0.5, 0.5)
    cells = morphometry_cells(spine_morphometry(points, [0, 1, 2], spacing, "PixelSpacing"), points)
    r = first.iloc[1]  # the middle one has both neighbours
    ha = math.hypot(r.sa_x - r.ia_x, r.sa_y - r.ia_y) * spacing[0]
    hm = math.hypot(r.sm_x - r.im_x, r.sm_y - r.im_y) * spacing[0]
    hp = [math.hypot(q.sp_x - q.ip_x, q.sp_y - q.ip_y) * spacing[0] for q in first.itertuples()]
    assert cells[1]["ha"] == pytest.approx(ha) and cells[1]["hm"] == pytest.approx(hm)
    assert cells[1]["hp"] == pytest.approx(hp[1]) and cells[1]["height_unit"] == "patient mm"
    assert cells[1]["wedge_ratio"] == pytest.approx(ha / hp[1])
    assert cells[1]["biconcave_ratio"] == pytest.approx(hm / hp[1])
    assert cells[1]["crush_ratio"] == pytest.approx(hp[1] / ((hp[0] + hp[2]) / 2))
    loss = max(0.0, 1 - ha / hp[1], 1 - hm / hp[1], 1 - hp[1] / ((hp[0] + hp[2]) / 2))
    assert cells[1]["height_loss"] == pytest.approx(loss)
    assert not math.isnan(cells[0]["crush_ratio"])  # T4 has T5 below it
    rows = [{"image": "a", "vertebra": v, "roi": (0, 0, 1, 1), "roi_source": "manifest", **c}
            for v, c in zip(first["vertebra"], cells)]
    table = build_predictions(rows, np.full((3, 3), 1 / 3), CLASSES, label=False, roi_source=True, morphometry=True)
    assert list(table.columns[-len(MORPHOMETRY_COLUMNS):]) == list(MORPHOMETRY_COLUMNS)
    assert table["hp"].tolist() == pytest.approx(hp) and set(table["roi_source"]) == {"manifest"}
    assert np.isnan(table["locator_confidence"]).all()
    # the six points the heights were measured between, as the manifest names them
    assert table[[f"{p}_{a}" for p in ("sa", "sm", "sp", "ia", "im", "ip") for a in "xy"]].to_numpy() == pytest.approx(
        points.reshape(3, 12))


# ----------------------------------------------------------------------------- evaluate --locator
def _oracle_locator(manifest_csv: Path, shift: float):
    """locate_rois stand-in: each image's manifest vertebrae, boxes shifted by ``shift`` pixels, exact points
    (the tiny locator above is too rough for IoU >= 0.5; the matching, grading and figures are what is tested)."""
    import pandas as pd

    from spine_dfl.io.vocabulary import LEVELS, POINT_COLUMNS
    from spine_dfl.locate.locating import LocatedRois

    table = pd.read_csv(manifest_csv)

    def locate_rois(loaded, radiograph):
        rows = table[[str((manifest_csv.parent / i).resolve()) == str(Path(radiograph.meta.path).resolve())
                      for i in table["image"]]]
        points = rows[list(POINT_COLUMNS)].to_numpy(float).reshape(-1, 6, 2)
        measured = spine_morphometry(points, [LEVELS.index(v) for v in rows["vertebra"]], radiograph.spacing_mm,
                                     radiograph.meta.spacing_source)
        boxes = [tuple(float(v) + shift for v in box) for box in rows[["x_min", "y_min", "x_max", "y_max"]].to_numpy()]
        return LocatedRois(list(rows["vertebra"]), boxes, [0.9] * len(rows), morphometry_cells(measured, points))

    return locate_rois


def test_evaluate_reports_located_crops_beside_manifest_crops(checkpoints, small_cohort, tmp_path, monkeypatch):
    import json

    from spine_dfl.cli import main
    from spine_dfl.workflows import located

    manifest_csv = small_cohort / "manifest.csv"
    monkeypatch.setattr("spine_dfl.workflows.located.locate_rois", _oracle_locator(manifest_csv, shift=3.0))
    grader = tmp_path / "grader4.pt"
    torch.manual_seed(0)
    atomic_torch_save(checkpoint_payload(DFLNet("resnet18", num_classes=4, filters_per_class=2), {"test": "roi"},
                                         ["normal", "mild", "moderate", "severe"],
                                         Preprocessing(input_size=32, use_roi=True), {}),
                      grader)
    out = tmp_path / "evaluate"
    assert main(["evaluate", str(grader), str(manifest_csv), "--out", str(out), "--locator",
                 str(checkpoints["locator"]), "--bootstrap", "10", "--device", "cpu"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    n = metrics["overall"]["n"]
    assert metrics["end_to_end"]["coverage"] == {"matched": n, "manifest_vertebrae": n, "min_iou": located.MATCH_IOU}
    assert metrics["end_to_end"]["overall"]["n"] == n and 0 <= metrics["locator"]["detection_recall_iou50"] <= 1
    by_manifest, _ = read_predictions(out / "predictions.csv")
    by_locator, _ = read_predictions(out / "located" / "predictions.csv")
    assert set(by_manifest["roi_source"]) == {"manifest"} and set(by_locator["roi_source"]) == {"locator"}
    # the same vertebrae, the boxes 3 pixels off, the same points: the same morphometry
    assert list(by_locator["vertebra"]) == list(by_manifest["vertebra"])
    np.testing.assert_allclose(by_locator["x_min"], by_manifest["x_min"] + 3.0)
    np.testing.assert_allclose(by_locator["hp"], by_manifest["hp"], rtol=1e-9)
    assert list(by_locator["morph_grade"]) == list(by_manifest["morph_grade"])
    assert (out / "located" / "report.html").is_file()
    # report: CNN grade against morphometric grade, and morphometry per level, from the table alone
    block = metrics["morphometry"]
    counts = block["agreement"]["counts"]
    assert sum(sum(row.values()) for row in counts.values()) == n == block["n"]
    for cls, row in counts.items():
        for grade, count in row.items():
            assert count == int(((by_manifest["pred"] == cls) & (by_manifest["morph_grade"] == grade)).sum())
    assert block["agreement"]["exact"] == pytest.approx(float((by_manifest["pred"] == by_manifest["morph_grade"]).mean()))
    t5 = by_manifest[by_manifest["vertebra"] == "T5"]
    assert block["per_vertebra"]["T5"]["median_hp"] == pytest.approx(float(np.median(t5["hp"])))
    page = (out / "report.html").read_text()
    assert 'id="morphometry"' in page and "quadratic-weighted kappa" in page


def test_evaluate_with_a_locator_that_matches_nothing_says_so(checkpoints, small_cohort, tmp_path, capsys):
    from spine_dfl.cli import main

    grader = tmp_path / "grader4.pt"
    atomic_torch_save(checkpoint_payload(DFLNet("resnet18", num_classes=4, filters_per_class=2), {"test": "roi"},
                                         ["normal", "mild", "moderate", "severe"],
                                         Preprocessing(input_size=32, use_roi=True), {}),
                      grader)
    assert main(["evaluate", str(grader), str(small_cohort / "manifest.csv"), "--out", str(tmp_path / "e"),
                 "--locator", str(checkpoints["blind"]), "--bootstrap", "0", "--device", "cpu"]) == 2
    assert "the locator matched none" in capsys.readouterr().err


def _content_items(dataset):
    for item in getattr(dataset, "ContentSequence", []):
        yield item
        yield from _content_items(item)


def test_sr_carries_the_located_region_and_morphometry_with_units(checkpoints, images, tmp_path):
    import pydicom

    score(checkpoints["grader"], [images], tmp_path / "out", locator=checkpoints["locator"], workers=0,
          dicom_out=tmp_path / "dicom", progress=False)
    rows = [r for r in _rows(tmp_path / "out" / "predictions.csv") if r["status"] == "ok"]
    first = rows[0]
    sr_files = [p for p in (tmp_path / "dicom").rglob("*") if p.is_file() and pydicom.dcmread(p).Modality == "SR"]
    sr = next(pydicom.dcmread(p) for p in sr_files
              if pydicom.dcmread(p).CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
              .ReferencedSOPSequence[0].ReferencedSOPInstanceUID == first["sop_instance_uid"])
    numeric = {}
    for item in _content_items(sr):
        if item.ValueType == "NUM":
            value = item.MeasuredValueSequence[0]
            numeric.setdefault(item.ConceptNameCodeSequence[0].CodeMeaning, []).append(
                (float(value.NumericValue), value.MeasurementUnitsCodeSequence[0].CodeValue))
    same_image = [r for r in rows if r["image"] == first["image"]]
    heights = numeric["Posterior vertebral body height"]
    # predictions.csv keeps 6 significant digits: compare within them, not by rounding (22.2115 vs 22.21150x)
    np.testing.assert_allclose([v for v, _ in heights], [float(r["hp"]) for r in same_image], atol=1e-3)
    assert {unit for _, unit in heights} == {"mm"}
    assert {unit for _, unit in numeric["Wedge ratio Ha/Hp"]} == {"{ratio}"}
    texts = [item.TextValue for item in _content_items(sr) if item.ValueType == "TEXT"]
    assert any(t.endswith("(located)") for t in texts)
    methods = [item.ConceptCodeSequence[0].CodeMeaning for item in _content_items(sr)
               if item.ValueType == "CODE" and item.ConceptNameCodeSequence[0].CodeMeaning == "Measurement Method"]
    assert "Region found by the vertebra locator" in methods


# ----------------------------------------------------------------------------- explain --locator
def test_explain_with_the_locator_draws_each_vertebra_and_its_six_points(checkpoints, images, tmp_path, capsys):
    import json

    from PIL import Image

    from spine_dfl.cli import EXIT_INPUTS_FAILED, EXIT_OK, main

    out = tmp_path / "explain"
    assert main(["explain", str(checkpoints["grader"]), str(images), "--out", str(out), "--locator",
                 str(checkpoints["locator"]), "--top", "2", "--device", "cpu"]) == EXIT_OK
    entries = json.loads((out / "patches.json").read_text())
    scored = {r["image"]: r for r in _rows_of_score(checkpoints, images, tmp_path)}
    assert entries and {e["roi_source"] for e in entries} == {"locator"}
    assert {e["image"] for e in entries} == set(scored)
    entry = entries[0]
    assert np.asarray(entry["points"]).shape == (6, 2)
    png = np.asarray(Image.open(out / entry["png"]).convert("RGB"))
    assert ((png == [0, 255, 255]).all(axis=-1)).sum() > 10  # the superior endplate, cyan
    capsys.readouterr()
    assert main(["explain", str(checkpoints["grader"]), str(images), "--out", str(tmp_path / "blind"), "--locator",
                 str(checkpoints["blind"]), "--device", "cpu"]) == EXIT_INPUTS_FAILED
    # Every input failed: still "finished, some inputs gave no result" (docs/commands.md, exit 3), one line.
    assert capsys.readouterr().err.strip().splitlines()[-1] == \
        "error: no sample could be explained (3 failed: no vertebrae found)"


def _rows_of_score(checkpoints, images, tmp_path):
    score(checkpoints["grader"], [images], tmp_path / "score", locator=checkpoints["locator"], workers=0,
          progress=False)
    return [r for r in _rows(tmp_path / "score" / "predictions.csv") if r["status"] == "ok"]


def test_explain_draws_the_manifest_points(checkpoints, small_cohort, tmp_path):
    import json

    import pandas as pd

    from spine_dfl.explain.inputs import explain_records

    manifest = pd.read_csv(small_cohort / "manifest.csv")
    first = manifest[manifest["image"] == manifest["image"][0]].head(2)
    first = first.assign(image=[str(small_cohort / i) for i in first["image"]])
    first.to_csv(tmp_path / "two.csv", index=False)
    explain_records(checkpoints["grader"], tmp_path / "two.csv", tmp_path / "out", top_n=1, device="cpu")
    entries = json.loads((tmp_path / "out" / "patches.json").read_text())
    expected = first[[f"{p}_{a}" for p in ("sa", "sm", "sp", "ia", "im", "ip") for a in "xy"]].to_numpy(float)
    np.testing.assert_allclose([np.ravel(e["points"]) for e in entries], expected, atol=0.006)
