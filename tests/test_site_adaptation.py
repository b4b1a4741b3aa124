"""benchmarks/site_adaptation.py on a tiny cohort: one epoch per arm, its JSON and its plot."""

from __future__ import annotations

import json

import pandas as pd

from conftest import load_benchmark

TINY_GRADER = ["data.input_size=64", "model.filters_per_class=2", "model.init_max_images_per_class=8",
               "train.batch_size=8", "train.max_steps_per_epoch=2", "train.epochs=1", "train.time_budget_s=null"]
TINY_LOCATOR = ["locator.input_size=[128, 64]", "locator.neck_channels=16", "locator.head_channels=16",
                "train.batch_size=4", "train.time_budget_s=null", "train.epochs=1"]


def test_budget_draw_keeps_the_splits_apart_and_covers_the_rarest_grades():
    bench = load_benchmark("site_adaptation")
    rows = [(f"P{i}", "train" if i < 6 else "test", label) for i, labels in enumerate(
        [["normal"], ["normal", "severe"], ["normal"], ["normal", "mild"], ["normal"], ["normal"], ["severe"]])
        for label in labels]
    table = pd.DataFrame(rows, columns=["patient_id", "split", "label"])
    for seed in range(5):
        train, val = bench.draw_budget(table, 4, seed)
        assert len(train) == 3 and len(val) == 1 and not set(train) & set(val)
        assert "P6" not in train + val  # a test patient is never labelled
        assert {"P1", "P3"} <= set(train)  # the only patients with a severe and a mild vertebra
    assert bench.draw_budget(table, 7, 0) is None  # more than the 6 train and val patients


def test_small_run_prints_every_arm_and_writes_the_plot(tmp_path, capsys):
    bench = load_benchmark("site_adaptation")
    plot = tmp_path / "curve.png"
    args = ["--patients", "4", "--budgets", "2", "--seeds", "1", "--bootstrap", "0", "--plot", str(plot)]
    args += [arg for value in TINY_GRADER for arg in ("--set", value)]
    args += [arg for value in TINY_LOCATOR for arg in ("--locator-set", value)]
    assert bench.main([str(tmp_path / "work"), *args]) == 0
    result = json.loads(capsys.readouterr().out)
    seed = result["per_seed"]["1"]  # seed 1: the 4-patient synth cohort trains every grade
    assert set(seed["zero_shot"]) == {"grader", "locator"} and set(seed["reference"]) == {"grader", "locator"}
    budget = seed["budgets"]["2"]
    assert budget["patients"] == {"train": 1, "val": 1}
    tuned = budget["fine_tuned"]
    assert "macro_auc" in tuned["grader"] and "identification_rate" in tuned["locator"], tuned
    assert 0.0 <= tuned["grader"]["macro_auc"] <= 1.0 and 0.0 <= tuned["locator"]["identification_rate"] <= 1.0
    assert tuned["grader"]["epochs_run"] == 1
    assert "macro_auc" in budget["scratch"]["grader"] or "error" in budget["scratch"]["grader"]
    assert result["mean"]["grader"]["fine_tuned"]["2"]["n"] == 1
    assert plot.stat().st_size > 0
