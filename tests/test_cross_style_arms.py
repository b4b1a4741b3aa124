"""benchmarks/cross_style.py: the two arms differ in the acquisition augmentation whatever the config says."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from spine_dfl.config import load_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cross_style():
    spec = importlib.util.spec_from_file_location("cross_style", ROOT / "benchmarks" / "cross_style.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("config", ["cpu_demo", "default"])
def test_plain_arm_trains_without_and_augmented_arm_with_the_acquisition_augmentation(cross_style, config, tmp_path):
    args = cross_style.parse_args([str(tmp_path), "--config", config, "--set", "train.epochs=1"])
    enabled = {arm: load_config(config if config != "default" else None, cross_style.arm_overrides(arm, args))
               .data.acquisition.enabled for arm in cross_style.ARMS}
    assert enabled == {"plain": False, "augmented": True}
