"""Training end to end on a small synthetic cohort: checkpoints, reproducibility, resume, DDP, bad input."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from spine_dfl.checkpoint import load_checkpoint, read_checkpoint
from spine_dfl.cli import main
from spine_dfl.config import load_config
from spine_dfl.data.manifest import ManifestError
from spine_dfl.train import train

QUICK = [
    "data.input_size=64",
    "data.workers=0",
    "model.filters_per_class=2",
    "model.init_max_images_per_class=8",
    "train.batch_size=8",
    "train.max_steps_per_epoch=3",
    "train.epochs=2",
    "train.early_stop_patience=0",
]


def _losses(run_dir: Path) -> list[float]:
    with (run_dir / "metrics.csv").open() as handle:
        return [float(row["train_loss"]) for row in csv.DictReader(handle)]


def test_train_writes_self_contained_checkpoints(small_cohort: Path, tmp_path: Path) -> None:
    result = train(small_cohort / "manifest.csv", load_config("cpu_demo", QUICK), tmp_path)
    assert result.best_checkpoint.exists() and (tmp_path / "last.pt").exists()
    # weights_only loading, and everything scoring needs is inside
    raw = torch.load(result.best_checkpoint, weights_only=True)
    assert raw["class_names"][0] == "normal"
    assert raw["preprocessing"]["input_size"] == 64 and raw["preprocessing"]["use_roi"] is True
    assert raw["config"]["model"]["backbone"] == "resnet18"
    loaded = load_checkpoint(result.best_checkpoint)
    assert loaded.model.num_classes == len(loaded.class_names)
    metrics = pd.read_csv(tmp_path / "metrics.csv")
    assert list(metrics["epoch"]) == [1, 2]
    assert {"train_loss", "val_loss", "val_macro_auc", "images_per_s"} <= set(metrics.columns)
    # selection happened on validation rows only
    val = result.val_predictions
    manifest = pd.read_csv(small_cohort / "manifest.csv")
    val_images = set(manifest.loc[manifest["split"] == "val", "image"].map(lambda p: str((small_cohort / p).resolve())))
    assert set(val["image"]) <= val_images
    assert (tmp_path / "filter_init.json").exists()


def test_same_seed_repeats_exactly_on_cpu(small_cohort: Path, tmp_path: Path) -> None:
    config = load_config("cpu_demo", QUICK)
    train(small_cohort / "manifest.csv", config, tmp_path / "a")
    train(small_cohort / "manifest.csv", config, tmp_path / "b")
    assert _losses(tmp_path / "a") == _losses(tmp_path / "b")
    a = read_checkpoint(tmp_path / "a" / "last.pt")["model_state"]
    b = read_checkpoint(tmp_path / "b" / "last.pt")["model_state"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    other = load_config("cpu_demo", [*QUICK, "seed=7"])
    train(small_cohort / "manifest.csv", other, tmp_path / "c")
    assert _losses(tmp_path / "c") != _losses(tmp_path / "a")


def test_resume_after_interruption_matches_uninterrupted_run(small_cohort: Path, tmp_path: Path, monkeypatch) -> None:
    config = load_config("cpu_demo", QUICK)
    train(small_cohort / "manifest.csv", config, tmp_path / "full")

    import spine_dfl.train as train_module

    calls = {"n": 0}
    real = train_module._write_metrics_row

    def crash_after_first_epoch(path, row):
        real(path, row)
        calls["n"] += 1
        if calls["n"] == 1:
            raise KeyboardInterrupt("simulated kill after epoch 1")

    monkeypatch.setattr(train_module, "_write_metrics_row", crash_after_first_epoch)
    with pytest.raises(KeyboardInterrupt):
        train(small_cohort / "manifest.csv", config, tmp_path / "killed")
    monkeypatch.setattr(train_module, "_write_metrics_row", real)
    train(small_cohort / "manifest.csv", config, tmp_path / "killed", resume=True)
    assert _losses(tmp_path / "killed") == _losses(tmp_path / "full")
    a = read_checkpoint(tmp_path / "full" / "last.pt")["model_state"]
    b = read_checkpoint(tmp_path / "killed" / "last.pt")["model_state"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_bad_manifest_fails_before_training_with_row_and_reason(small_cohort: Path, tmp_path: Path) -> None:
    table = pd.read_csv(small_cohort / "manifest.csv")
    table["image"] = table["image"].map(lambda p: str((small_cohort / p).resolve()))
    table.loc[3, "image"] = str(tmp_path / "missing.dcm")
    bad = tmp_path / "bad.csv"
    table.to_csv(bad, index=False)
    with pytest.raises(ManifestError) as info:
        train(bad, load_config("cpu_demo", QUICK), tmp_path / "run")
    assert "missing.dcm" in str(info.value.errors) and "row 4" in " ".join(info.value.errors)
    assert not (tmp_path / "run" / "last.pt").exists()
    assert main(["train", str(bad), "--out", str(tmp_path / "cli"), *sum((["--set", s] for s in QUICK), [])]) == 2


def test_ddp_two_processes_gloo_cpu(small_cohort: Path, tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "spine_dfl", "train", str(small_cohort / "manifest.csv"), "--out", str(out), "--no-report",
           "--set", "device=cpu", *sum((["--set", s] for s in QUICK), [])]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert (out / "best.pt").exists()
    metrics = pd.read_csv(out / "metrics.csv")
    assert list(metrics["epoch"]) == [1, 2]  # written once (rank 0), not once per rank
    load_checkpoint(out / "best.pt")
