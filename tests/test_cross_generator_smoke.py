"""benchmarks/cross_generator.py end to end on tiny cohorts: every arm trains through the task registry
(the grader and the locator alike) and is evaluated on both generators' test splits."""

from __future__ import annotations

import json

import pytest
from conftest import load_benchmark
from quick_training import QUICK

TINY_LOCATOR = ["locator.input_size=[128, 64]", "locator.neck_channels=16", "locator.head_channels=16",
                "train.batch_size=4", "train.time_budget_s=null", "device=cpu", "train.epochs=1"]


@pytest.mark.slow
def test_cross_generator_trains_both_models_on_both_generators(tmp_path, capsys) -> None:
    bench = load_benchmark("cross_generator")
    argv = [str(tmp_path), "--patients", "6", "--seeds", "0", "--bootstrap", "0",
            *(item for o in QUICK for item in ("--set", o)), *(item for o in TINY_LOCATOR for item in ("--locator-set", o))]
    assert bench.main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    seed = out["per_seed"]["0"]
    for trained_on in bench.GENERATORS:
        assert (tmp_path / "seed0" / f"trained_on_{trained_on}" / "locator" / "best.pt").is_file()
        for evaluated_on in bench.GENERATORS:
            figures = seed[trained_on][evaluated_on]
            assert set(figures) == {"grader", "locator"}
            assert 0.0 <= figures["locator"]["detection_recall_iou50"] <= 1.0 and figures["grader"]["vertebrae"] > 0
    assert set(out["mean"]) == set(bench.GENERATORS)
