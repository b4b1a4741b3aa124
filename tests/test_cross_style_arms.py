"""benchmarks/cross_style.py: the two arms differ in the acquisition augmentation whatever the config says."""

from __future__ import annotations

import json

import pytest

from spine_dfl.config import load_config
from conftest import load_benchmark


@pytest.fixture(scope="module")
def cross_style():
    return load_benchmark("cross_style")


@pytest.mark.parametrize("config", ["cpu_demo", "default"])
def test_plain_arm_trains_without_and_augmented_arm_with_the_acquisition_augmentation(cross_style, config, tmp_path):
    args = cross_style.parse_args([str(tmp_path), "--config", config, "--set", "train.epochs=1"])
    enabled = {arm: load_config(config if config != "default" else None, cross_style.arm_overrides(arm, args))
               .data.acquisition.enabled for arm in cross_style.ARMS}
    assert enabled == {"plain": False, "augmented": True, "native": False}


def _arm(in_style: float, out: dict[str, float]) -> dict:
    mean = sum(out.values()) / len(out)
    return {"in_style": {"macro_auc": in_style}, "out_of_style": {s: {"macro_auc": v} for s, v in out.items()},
            "out_of_style_summary": {"macro_auc": {"mean": mean, "worst": min(out.values())}},
            "drop": {"macro_auc": in_style - mean}}


def test_native_arm_measures_how_much_of_the_recoverable_loss_the_augmentation_recovered(cross_style):
    arms = {"plain": _arm(0.98, {"b": 0.96, "c": 0.80}), "augmented": _arm(0.98, {"b": 0.98, "c": 0.89}),
            "native": {"in_own_style": {"b": {"macro_auc": 0.97}, "c": {"macro_auc": 0.90}}}}
    checks = cross_style.acceptance(arms)
    assert checks["drop_ratio"] == pytest.approx(0.045 / 0.10)
    assert checks["drop_at_most_half"] and not checks["out_of_style_macro_auc_at_least_0_90"]
    # b: the augmented model beats its native one (0.02 of a 0.01 gap); c: 0.09 of a 0.10 gap
    assert checks["recovered_of_native_gap"] == pytest.approx({"b": 2.0, "c": 0.9})
    # matching both native models: a drop of 0.98 - 0.935 = 0.045 against the plain arm's 0.10
    assert checks["drop_ratio_if_native_reached"] == pytest.approx(0.45)
    assert "recovered_of_native_gap" not in cross_style.acceptance({k: arms[k] for k in ("plain", "augmented")})


def test_a_plain_arm_that_did_not_drop_gives_no_ratio_and_no_pass(cross_style):
    arms = {"plain": _arm(0.95, {"b": 0.96, "c": 0.95}), "augmented": _arm(0.98, {"b": 0.97, "c": 0.96})}
    checks = cross_style.acceptance(arms)
    assert checks["drop_ratio"] is None and not checks["drop_at_most_half"]


def test_style_summary_gives_the_drop_from_the_mean_out_of_style(cross_style, tmp_path):
    args = cross_style.parse_args([str(tmp_path)])
    scores = {"default": {"macro_auc": 0.99, "binary_auc": 0.995}, "site_b": {"macro_auc": 0.97, "binary_auc": 0.99},
              "site_c": {"macro_auc": 0.91, "binary_auc": None}}
    summary = cross_style._style_summary(scores, args)
    assert summary["out_of_style_summary"]["macro_auc"] == pytest.approx({"mean": 0.94, "worst": 0.91})
    assert summary["drop"]["macro_auc"] == pytest.approx(0.05)
    assert summary["drop"]["binary_auc"] == pytest.approx(0.005)  # a missing value is left out of the mean


def test_held_out_cohorts_image_other_patients_in_every_style(cross_style, tmp_path):
    import pandas as pd

    args = cross_style.parse_args([str(tmp_path), "--patients", "2", "--held-out-patients", "2", "--seed", "3"])
    sets = cross_style.evaluation_sets(args)
    assert set(sets) == {"test", "held_out"}
    (test, test_split), (held_out, held_out_split) = sets["test"], sets["held_out"]
    assert (test_split, held_out_split) == ("test", None)  # the held-out cohort is evaluated whole
    assert set(test) == set(held_out) == {"default", "site_b", "site_c"}

    def truth(manifest):
        return pd.read_csv(manifest.parent / "vertebrae.csv").drop(columns=["patient_id", "image"], errors="ignore")

    for style in held_out:
        assert json.loads((held_out[style].parent / "cohort.json").read_text())["seed"] == 3 + cross_style.HELD_OUT_SEED_OFFSET
        pd.testing.assert_frame_equal(truth(held_out[style]), truth(held_out["default"]))  # same patients, other imaging
    assert not truth(held_out["default"]).equals(truth(test["default"]))  # other patients than the training cohort
    assert set(cross_style.evaluation_sets(cross_style.parse_args(
        [str(tmp_path), "--patients", "2", "--held-out-patients", "0", "--seed", "3"]))) == {"test"}
