"""benchmarks/cross_generator.py end to end on tiny cohorts: every arm trains through the task registry
(the grader and the locator alike) and is evaluated on both generators' test splits; and
benchmarks/site_adaptation.py on its output (``--models-from``), retraining none of its models."""

from __future__ import annotations

import contextlib
import io
import json

import pytest
from conftest import load_benchmark
from quick_training import QUICK

TINY_LOCATOR = ["locator.input_size=[128, 64]", "locator.neck_channels=16", "locator.head_channels=16",
                "train.batch_size=4", "train.time_budget_s=null", "device=cpu", "train.epochs=1"]
OVERRIDES = [*(item for o in QUICK for item in ("--set", o)), *(item for o in TINY_LOCATOR for item in ("--locator-set", o))]


@pytest.fixture(scope="module")
def xgen(tmp_path_factory):
    """cross_generator.py's output folder on 6-patient cohorts (seed 0) and the JSON it printed."""
    out = tmp_path_factory.mktemp("xgen")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert load_benchmark("cross_generator").main([str(out), "--patients", "6", "--seeds", "0", "--bootstrap", "0",
                                                       *OVERRIDES]) == 0
    return out, json.loads(printed.getvalue())


@pytest.mark.slow
def test_cross_generator_trains_both_models_on_both_generators(xgen) -> None:
    out, printed = xgen
    bench = load_benchmark("cross_generator")
    seed = printed["per_seed"]["0"]
    for trained_on in bench.GENERATORS:
        assert (out / "seed0" / f"trained_on_{trained_on}" / "locator" / "best.pt").is_file()
        for evaluated_on in bench.GENERATORS:
            figures = seed[trained_on][evaluated_on]
            assert set(figures) == {"grader", "locator"}
            assert 0.0 <= figures["locator"]["detection_recall_iou50"] <= 1.0 and figures["grader"]["vertebrae"] > 0
    assert set(printed["mean"]) == set(bench.GENERATORS)


@pytest.mark.slow
def test_site_adaptation_reuses_cross_generator_models(xgen, tmp_path, capsys) -> None:
    """``--models-from``: the cross-generator run's cohorts, its synth-trained models as the parents and its
    DRR-trained ones as the reference."""
    out, _ = xgen
    parents = {m: (out / "seed0" / "trained_on_synth" / m / "best.pt").stat().st_mtime_ns for m in ("grader", "locator")}
    site = load_benchmark("site_adaptation")
    argv = [str(tmp_path / "site"), "--patients", "6", "--budgets", "2", "--seeds", "0", "--bootstrap", "0",
            "--models-from", str(out), *OVERRIDES]
    assert site.main(argv) == 0
    seed = json.loads(capsys.readouterr().out)["per_seed"]["0"]
    assert set(seed["reference"]) == {"grader", "locator"} and "macro_auc" in seed["reference"]["grader"]
    assert not (tmp_path / "site" / "seed0" / "synth").exists() and not (tmp_path / "site" / "seed0" / "drr_all").exists()
    assert {m: (out / "seed0" / "trained_on_synth" / m / "best.pt").stat().st_mtime_ns for m in ("grader", "locator")} == parents
    assert "fine_tuned" in seed["budgets"]["2"]
    with pytest.raises(SystemExit, match="missing"):  # no seed 1 there: said before any cohort is drawn
        site.main([str(tmp_path / "site2"), "--patients", "6", "--seeds", "1", "--models-from", str(out)])
    assert not (out / "seed1").exists()
