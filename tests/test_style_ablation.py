"""benchmarks/style_ablation.py: every knob of a style belongs to one group, and the variants switch only theirs."""

from __future__ import annotations

import dataclasses

import pytest

from spine_dfl.synth import STYLES
from spine_dfl.synth.style import SynthStyle
from conftest import load_benchmark


@pytest.fixture(scope="module")
def ablation():
    return load_benchmark("style_ablation")


def _knobs(style: SynthStyle) -> dict:
    return {k: v for k, v in dataclasses.asdict(style).items() if k != "name"}


def test_every_knob_is_in_exactly_one_group(ablation) -> None:
    grouped = [name for names in ablation.GROUPS.values() for name in names]
    assert sorted(grouped) == sorted(_knobs(STYLES["default"])) and len(grouped) == len(set(grouped))


def test_each_variant_switches_its_own_knobs_only(ablation) -> None:
    base, target = STYLES["default"], STYLES["site_c"]
    variants = ablation.variants(base, target)
    assert _knobs(variants["all"]) == _knobs(target)
    for group, names in ablation.GROUPS.items():
        switched = {k for k, v in _knobs(variants[group]).items() if v != getattr(base, k)}
        assert switched <= set(names) and switched  # site_c differs from default in every group
    roi = set(ablation.GROUPS["roi"])
    assert {k for k, v in _knobs(variants["all_but_roi"]).items() if v != getattr(target, k)} == roi
