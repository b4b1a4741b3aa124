"""benchmarks/cross_style.py: the two arms differ in the acquisition augmentation whatever the config says."""

from __future__ import annotations


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
