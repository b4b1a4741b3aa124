"""Temperature scaling (engine.calibration): the fit recovers a known temperature, ECE by hand, the
checkpoint keeps the temperatures through a weights_only load, and old checkpoints stay uncalibrated."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from spine_dfl.data.transforms import Preprocessing
from spine_dfl.engine.calibration import (
    CALIBRATED_BRANCHES,
    Temperatures,
    calibrated_softmax,
    expected_calibration_error,
    fit_calibration,
    fit_temperature,
    nll,
    reliability_bins,
    temperatures_from_checkpoint,
)
from spine_dfl.engine.checkpoint import atomic_torch_save, checkpoint_payload, load_checkpoint
from spine_dfl.engine.predict import predictions_table
from spine_dfl.engine.shift import fit_shift
from spine_dfl.model import DFLNet


def _tempered_sample(temperature: float, n: int = 20000, classes: int = 4, seed: int = 0):
    """Logits and labels drawn from softmax(logits / temperature): the right temperature is known."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, 3.0, size=(n, classes))
    probs = calibrated_softmax(logits, temperature)
    labels = (probs.cumsum(axis=1) < rng.random((n, 1))).sum(axis=1)
    return logits, np.minimum(labels, classes - 1)


@pytest.mark.parametrize("true_temperature", [0.6, 2.5])
def test_fit_recovers_a_known_temperature_and_lowers_the_ece(true_temperature: float) -> None:
    logits, labels = _tempered_sample(true_temperature)
    fitted = fit_temperature(logits, labels)
    assert fitted == pytest.approx(true_temperature, rel=0.05)
    # the NLL's minimum: a little either side is worse
    assert nll(logits, labels, fitted) < min(nll(logits, labels, fitted * 0.9), nll(logits, labels, fitted * 1.1))
    before = expected_calibration_error(calibrated_softmax(logits), labels)
    after = expected_calibration_error(calibrated_softmax(logits, fitted), labels)
    assert after < 0.02 < before
    # dividing by a temperature never changes a prediction
    assert (calibrated_softmax(logits, fitted).argmax(1) == logits.argmax(1)).all()


def test_ece_of_a_hand_computed_case() -> None:
    # two classes; top-label confidences 0.9 (right), 0.9 (wrong), 0.6 (right), 0.6 (right)
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.4, 0.6], [0.4, 0.6]])
    labels = np.array([0, 1, 1, 1])
    # 15 bins: 0.9 -> bin 13 (accuracy 0.5, confidence 0.9), 0.6 -> bin 9 (accuracy 1, confidence 0.6)
    # ECE = 2/4 * |0.5 - 0.9| + 2/4 * |1 - 0.6| = 0.2 + 0.2
    assert expected_calibration_error(probs, labels) == pytest.approx(0.4)
    bins = reliability_bins(probs, labels)
    assert len(bins) == 15 and [b["count"] for b in bins if b["count"]] == [2, 2]
    assert bins[13]["accuracy"] == 0.5 and bins[9]["confidence"] == pytest.approx(0.6)
    assert bins[0]["confidence"] is None  # empty bins: no mean, JSON-ready
    # a confidence of exactly 1 falls in the last bin
    assert reliability_bins(np.array([[1.0, 0.0]]), np.array([0]))[-1]["count"] == 1
    assert expected_calibration_error(probs, labels, n_bins=1) == pytest.approx(abs(0.75 - 0.75))


def test_fit_calibration_record_is_plain_json_with_every_branch() -> None:
    logits, labels = _tempered_sample(2.0, n=3000)
    record = fit_calibration({b: logits * (1 + i) for i, b in enumerate(CALIBRATED_BRANCHES)}, labels)
    json.dumps(record)  # plain numbers and strings only
    for i, branch in enumerate(CALIBRATED_BRANCHES):  # logits scaled by (1 + i): temperature scales with them
        assert record["temperatures"][branch] == pytest.approx(2.0 * (1 + i), rel=0.1)
        assert record["ece_after"][branch] < record["ece_before"][branch]
        assert record["nll_after"][branch] <= record["nll_before"][branch]
    with pytest.raises(ValueError, match="not all finite"):
        fit_temperature(np.array([[np.nan, 0.0]]), np.array([0]))


def test_checkpoint_without_calibration_is_uncalibrated_and_says_so(caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="spine_dfl"):
        temperatures = temperatures_from_checkpoint({"format": "x"})
    assert temperatures == Temperatures() and not temperatures.fitted
    assert [r.getMessage() for r in caplog.records if "uncalibrated checkpoint" in r.getMessage()]


def test_calibration_and_shift_survive_a_weights_only_round_trip(tmp_path: Path) -> None:
    logits, labels = _tempered_sample(1.7, n=2000, classes=3)
    record = fit_calibration({b: logits for b in CALIBRATED_BRANCHES}, labels)
    rng = np.random.default_rng(1)
    shift = fit_shift(rng.normal(size=(60, 8)), rng.normal(size=(20, 8)), [f"img{i // 2}" for i in range(20)])
    model = DFLNet("resnet18", num_classes=3, filters_per_class=2)
    path = tmp_path / "calibrated.pt"
    atomic_torch_save(checkpoint_payload(model, {"test": True}, ["a", "b", "c"], Preprocessing(input_size=32, use_roi=True),
                                         {"calibration": record, "shift": shift}),
                      path)
    raw = torch.load(path, weights_only=True)
    assert raw["calibration"]["temperatures"]["fused"] == pytest.approx(record["temperatures"]["fused"])
    assert raw["shift"]["whiten"].dtype == torch.float32 and raw["shift"]["whiten"].shape == (8, 8)
    loaded = load_checkpoint(path)
    assert loaded.temperatures.fitted and loaded.temperatures.fused == pytest.approx(1.7, rel=0.15)
    assert loaded.shift is not None and loaded.shift.threshold == pytest.approx(shift["threshold"])
    # the predictions table is calibrated with them: same argmax, softer probabilities
    table_logits = {"index": np.arange(4), "label": np.zeros(4, int), **{b: logits[:4] for b in CALIBRATED_BRANCHES}}
    records = [{"image": f"i{i}", "vertebra": "L1", "label_name": "a", "roi": None} for i in range(4)]
    raw_table = predictions_table(records, table_logits, ["a", "b", "c"])
    calibrated = predictions_table(records, table_logits, ["a", "b", "c"], loaded.temperatures)
    assert list(raw_table["pred"]) == list(calibrated["pred"])
    assert np.allclose(calibrated[["prob_a", "prob_b", "prob_c"]].to_numpy(), calibrated_softmax(logits[:4], loaded.temperatures.fused))
    assert calibrated["g_prob_a"].to_numpy() == pytest.approx(calibrated_softmax(logits[:4], loaded.temperatures.g)[:, 0])
