"""Locator training end to end (config task, checkpoint, resume), checkpoint kinds, evaluation figures."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from spine_dfl.config import ConfigError, load_config
from spine_dfl.engine.checkpoint import CheckpointError, atomic_torch_save, checkpoint_payload, load_checkpoint
from spine_dfl.locate import train as locate_train
from spine_dfl.locate.checkpoint import load_locator, locate_radiograph
from spine_dfl.locate.evaluate import ImagePrediction, ImageTruth, locator_metrics

TINY = ["locator.input_size=[128, 64]", "locator.neck_channels=16", "locator.head_channels=16",
        "train.batch_size=4", "train.time_budget_s=null", "device=cpu"]


def tiny_config(epochs: int):
    return load_config("locator_cpu", TINY + [f"train.epochs={epochs}"])


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


# ----------------------------------------------------------------------------- config
def test_task_picks_its_selection_metric_and_refuses_the_other_tasks():
    assert load_config(None, ["task=locator"]).train.select_metric == "identification_rate"
    assert load_config(None).train.select_metric == "macro_auc"
    with pytest.raises(ConfigError, match="does not apply to task 'locator'"):
        load_config(None, ["task=locator", "train.select_metric=macro_auc"])
    with pytest.raises(ConfigError, match="does not apply to task 'grader'"):
        load_config(None, ["train.select_metric=identification_rate"])
    with pytest.raises(ConfigError, match="multiples of 32"):
        load_config("locator_cpu", ["locator.input_size=[100, 64]"])


# ----------------------------------------------------------------------------- acquisition augmentation
def test_locator_acquisition_is_seeded_intensity_only_and_off_is_the_identity():
    from spine_dfl.data.transforms.acquisition_options import AcquisitionAugment
    from spine_dfl.locate.augment import LocatorAcquisition

    images = torch.rand(3, 1, 64, 32, generator=torch.Generator().manual_seed(0))
    on = LocatorAcquisition(AcquisitionAugment(enabled=True, prob=1.0, collimation=False))
    first = on(images, np.random.default_rng(5))
    assert first.shape == images.shape and float(first.min()) >= 0.0 and float(first.max()) <= 1.0
    assert torch.equal(first, on(images, np.random.default_rng(5)))
    assert not torch.equal(first, on(images, np.random.default_rng(6)))
    assert not torch.equal(first, images)
    off = LocatorAcquisition(AcquisitionAugment(enabled=False))
    assert off(images, np.random.default_rng(5)) is images


def test_training_batches_get_the_acquisition_augmentation_and_validation_never(small_cohort, tmp_path, monkeypatch):
    events: list[str] = []

    class Recording(locate_train.LocatorAcquisition):
        def __call__(self, images, rng):
            events.append("augment")
            return super().__call__(images, rng)

    real_validate = locate_train.LocatorTask.validate

    def validate(self):
        events.append("validate")
        result = real_validate(self)
        events.append("validated")
        return result

    monkeypatch.setattr(locate_train, "LocatorAcquisition", Recording)
    monkeypatch.setattr(locate_train.LocatorTask, "validate", validate)
    config = tiny_config(1)
    assert config.locator.acquisition.enabled and not config.locator.acquisition.collimation
    locate_train.train_locator(small_cohort / "manifest.csv", config, tmp_path, progress=False)
    inside = False
    for event in events:
        inside = {"validate": True, "validated": False}.get(event, inside)
        assert not (inside and event == "augment")
    assert events.count("augment") >= 1 and events.count("validate") == 1


# ----------------------------------------------------------------------------- training
@pytest.fixture(scope="module")
def trained(small_cohort, tmp_path_factory):
    """Three epochs on the small synthetic cohort, through the workflow's task registry (``task: locator``)."""
    from spine_dfl.workflows.train import train

    out = tmp_path_factory.mktemp("locator")
    result = train(small_cohort / "manifest.csv", tiny_config(3), out, progress=False)
    return out, result


def test_training_writes_self_contained_checkpoints_and_metrics(trained, small_cohort):
    out, result = trained
    assert result.epochs_run == 3 and result.best_checkpoint == out / "best.pt"
    assert [r["epoch"] for r in _rows(out / "metrics.csv")] == ["1", "2", "3"]
    raw = torch.load(out / "best.pt", weights_only=True)
    assert raw["kind"] == "locator" and raw["input_size"] == [128, 64]
    assert raw["levels"][0] == "T4" and raw["levels"][-1] == "L5"
    assert raw["config"]["task"] == "locator" and 0 <= raw["val_figures"]["identification_rate"] <= 1
    loaded = load_locator(out / "best.pt")
    assert loaded.levels == raw["levels"] and loaded.input_size == (128, 64)
    from spine_dfl.io import read_image

    image = sorted((small_cohort / "images").iterdir())[0]
    found = locate_radiograph(loaded, read_image(image).pixels)
    assert set(found.levels) <= set(loaded.levels)


def test_resume_continues_a_killed_run_exactly(trained, small_cohort, tmp_path, monkeypatch):
    out, _ = trained
    from quick_training import killed_at_epoch

    revive = killed_at_epoch(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        locate_train.train_locator(small_cohort / "manifest.csv", tiny_config(3), tmp_path, progress=False)
    assert len(_rows(tmp_path / "metrics.csv")) == 2
    revive()
    result = locate_train.train_locator(small_cohort / "manifest.csv", tiny_config(3), tmp_path, resume=True,
                                        progress=False)
    assert result.epochs_run == 3 and [r["epoch"] for r in _rows(tmp_path / "metrics.csv")] == ["1", "2", "3"]
    resumed = torch.load(tmp_path / "last.pt", weights_only=True)["model_state"]
    straight = torch.load(out / "last.pt", weights_only=True)["model_state"]
    for name, value in straight.items():
        torch.testing.assert_close(resumed[name], value, msg=name)


def test_evaluate_checkpoint_covers_every_image_of_the_split(trained, small_cohort):
    import pandas as pd

    from spine_dfl.locate.evaluate import evaluate_checkpoint

    out, _ = trained
    table = pd.read_csv(small_cohort / "manifest.csv")
    val = table[table["split"] == "val"]
    figures = evaluate_checkpoint(out / "best.pt", small_cohort / "manifest.csv", "val", device="cpu")
    assert figures["images"] == val["image"].nunique() and figures["vertebrae"] == len(val)
    assert set(figures["per_level"]) <= set(val["vertebra"]) and figures["split"] == "val"
    with pytest.raises(ValueError, match="no rows in split 'nope'"):
        evaluate_checkpoint(out / "best.pt", small_cohort / "manifest.csv", "nope", device="cpu")


# ----------------------------------------------------------------------------- kinds
def test_a_locator_checkpoint_is_not_a_grader_and_the_reverse(trained, tmp_path):
    from spine_dfl.data.transforms import Preprocessing
    from spine_dfl.model import DFLNet

    out, _ = trained
    with pytest.raises(CheckpointError, match="locator checkpoint, not a grader checkpoint.*--locator"):
        load_checkpoint(out / "best.pt")
    grader = tmp_path / "grader.pt"
    atomic_torch_save(checkpoint_payload(DFLNet("resnet18", num_classes=2, filters_per_class=1, pretrained="none"), {},
                                         ["normal", "fractured"], Preprocessing()),
                      grader)
    assert load_checkpoint(grader).class_names == ["normal", "fractured"]
    with pytest.raises(CheckpointError, match="grader checkpoint, not a locator checkpoint"):
        load_locator(grader)


# ----------------------------------------------------------------------------- evaluation
def test_figures_on_hand_checked_detections():
    none = np.full((3, 6, 2), np.nan)
    truth = ImageTruth(np.array([[10, 0, 50, 20], [10, 30, 50, 50], [10, 60, 50, 80]], float),
                       np.array([0, 1, 2]), none, spacing_mm=(0.5, 0.5))
    boxes = np.array([[10, 0, 50, 20], [13, 34, 53, 54], [10, 60, 50, 80], [100, 100, 120, 120]], float)
    pred = ImagePrediction(boxes, (boxes[:, :2] + boxes[:, 2:]) / 2, np.full((4, 6, 2), np.nan),
                           np.array([0, 1, 1, 2]))  # exact; shifted by (3, 4); off by one; far away
    m = locator_metrics([(truth, pred)], ["A", "B", "C"])
    assert m["detections"] == 4 and m["detection_recall_iou50"] == 1.0  # the shifted box has IoU 592/1008
    assert m["detection_precision_iou50"] == 0.75
    assert m["identification_rate"] == pytest.approx(2 / 3) and m["off_by_one_rate"] == pytest.approx(1 / 3)
    assert m["images_all_levels_right"] == 0.0
    assert m["wrong_level_rate"] == pytest.approx(1 / 3)  # C is found but named B; the far box names nothing
    assert m["per_level"]["A"]["wrong_level_rate"] == 0.0 and m["per_level"]["C"]["wrong_level_rate"] == 1.0
    assert m["median_centre_error_px"] == 2.5 and m["median_centre_error_mm"] == 1.25  # errors 0 and 5 px
    assert m["median_centre_error_pct_height"] == 12.5  # 5 px of a 20 px box height -> 25 %, and 0 %
    assert m["per_level"]["B"]["median_centre_error_px"] == 5.0
    assert m["per_level"]["C"]["identification_rate"] == 0.0 and m["per_level"]["C"]["off_by_one_rate"] == 1.0


def test_landmark_and_ratio_errors_against_the_six_points():
    square = np.array([[0, 0], [10, 0], [20, 0], [0, 20], [10, 20], [20, 20]], float)  # Ha = Hm = Hp = 20
    points = np.stack([square, square + [0, 30]])
    truth = ImageTruth(np.array([[0, 0, 20, 20], [0, 30, 20, 50]], float), np.array([0, 1]), points)
    located = points.copy()
    located[0, 0] = [0, 4]  # sa 4 px down: Ha 16, wedge 0.8 instead of 1
    pred = ImagePrediction(truth.boxes, np.array([[10, 10], [10, 40]], float), located, np.array([0, 1]))
    m = locator_metrics([(truth, pred)], ["L1", "L2"])
    assert m["images_all_levels_right"] == 1.0 and m["median_centre_error_mm"] is None  # no spacing
    assert m["median_landmark_error_px"] == 0.0  # one of twelve points is off
    assert m["per_level"]["L1"]["median_ratio_error"]["wedge"] == pytest.approx(0.2)
    assert m["median_ratio_error"]["wedge"] == pytest.approx(0.1)
    assert m["median_ratio_error"]["biconcave"] == 0.0 and m["median_ratio_error"]["crush"] == 0.0
