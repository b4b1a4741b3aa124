"""Acquisition augmentation inside the training loop: TorchIO per sample and the batch part, seeded like
the rest, training batches only."""

from __future__ import annotations

from pathlib import Path

import torch
import torchio as tio

import spine_dfl.engine.train as train_module
from spine_dfl.config import load_config
from spine_dfl.data.dataset import SpineDataset
from spine_dfl.data.transforms.acquisition import RandomBatchAcquisition
from spine_dfl.engine.checkpoint import read_checkpoint
from spine_dfl.engine.train import GraderTask, train
from quick_training import QUICK

AUGMENTED = [*QUICK, "data.acquisition.enabled=true", "data.acquisition.prob=1.0"]


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return read_checkpoint(run_dir / "last.pt")["model_state"]


def test_augmented_training_repeats_bit_for_bit_and_differs_from_plain(small_cohort: Path, tmp_path: Path) -> None:
    manifest = small_cohort / "manifest.csv"
    train(manifest, load_config("cpu_demo", AUGMENTED), tmp_path / "a")
    train(manifest, load_config("cpu_demo", AUGMENTED), tmp_path / "b")
    a, b = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert all(torch.equal(a[k], b[k]) for k in a)
    train(manifest, load_config("cpu_demo", [*QUICK, "data.acquisition.enabled=false"]), tmp_path / "plain")
    plain = _weights(tmp_path / "plain")
    assert not all(torch.equal(a[k], plain[k]) for k in a)  # the augmentation did reach the model


def test_augmentation_runs_on_training_batches_only(small_cohort: Path, tmp_path: Path, monkeypatch) -> None:
    events: list[tuple[str, int]] = []

    class Recording(RandomBatchAcquisition):
        def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
            out = super().__call__(images, generator)
            events.append(("augment", int(images.shape[0])))
            assert not torch.equal(out, images)  # prob 1: every batch is changed
            return out

    real_validate = GraderTask.validate

    def validate(self):
        events.append(("validate", 0))
        result = real_validate(self)
        events.append(("validated", 0))
        return result

    monkeypatch.setattr(train_module, "RandomBatchAcquisition", Recording)
    monkeypatch.setattr(GraderTask, "validate", validate)
    config = load_config("cpu_demo", AUGMENTED)
    result = train(small_cohort / "manifest.csv", config, tmp_path)
    # 2 epochs x 3 steps of training batches, none while validating (2 epochs; the best's final pass,
    # with calibration, is engine.posthoc's and runs no augmentation either)
    assert [e for e in events if e[0] == "augment"] == [("augment", 8)] * 6
    inside = False
    for kind, _ in events:
        inside = {"validate": True, "validated": False}.get(kind, inside)
        assert not (inside and kind == "augment")
    assert sum(kind == "validate" for kind, _ in events) == 2
    assert len(result.val_predictions) > 0


def test_training_steps_run_torchio_on_every_training_sample_and_never_while_validating(
    small_cohort: Path, tmp_path: Path, monkeypatch
) -> None:
    events: list[str] = []
    for cls in (tio.RandomBiasField, tio.RandomAnisotropy, tio.RandomNoise, tio.RandomGamma):
        def counted(self, *args, _real=cls.get_params, _name=cls.__name__):
            events.append(_name)
            return _real(self, *args)
        monkeypatch.setattr(cls, "get_params", counted)
    real_getitem = SpineDataset.__getitem__

    def getitem(self, index):
        if self.augment is not None:
            events.append("training sample")
        return real_getitem(self, index)

    real_validate = GraderTask.validate

    def validate(self):
        events.append("validate")
        result = real_validate(self)
        events.append("validated")
        return result

    monkeypatch.setattr(SpineDataset, "__getitem__", getitem)
    monkeypatch.setattr(GraderTask, "validate", validate)
    train(small_cohort / "manifest.csv", load_config("cpu_demo", AUGMENTED), tmp_path)
    # every training sample the loader served (2 epochs of 3 steps x 8) went through all four TorchIO
    # transforms once
    samples = events.count("training sample")
    assert samples == 2 * 3 * 8
    for name in ("RandomBiasField", "RandomAnisotropy", "RandomNoise", "RandomGamma"):
        assert events.count(name) == samples, name
    inside = False
    for event in events:
        inside = {"validate": True, "validated": False}.get(event, inside)
        assert not (inside and (event.startswith("Random") or event == "training sample"))
