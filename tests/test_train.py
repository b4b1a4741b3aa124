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

from spine_dfl.engine.checkpoint import load_checkpoint, read_checkpoint
from spine_dfl.cli import main
from spine_dfl.config import load_config
from spine_dfl.data.manifest import ManifestError
from spine_dfl.engine.train import train
from quick_training import QUICK


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

    import spine_dfl.engine.loop as loop

    real = loop.write_metrics

    def crash_after_first_epoch(path, history):
        real(path, history)
        if len(history) == 1:
            raise KeyboardInterrupt("simulated kill after epoch 1")

    monkeypatch.setattr(loop, "write_metrics", crash_after_first_epoch)
    with pytest.raises(KeyboardInterrupt):
        train(small_cohort / "manifest.csv", config, tmp_path / "killed")
    monkeypatch.setattr(loop, "write_metrics", real)
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
    assert main(["train", str(bad), "--config", "cpu_demo", "--out", str(tmp_path / "cli"),
                 *sum((["--set", s] for s in QUICK), [])]) == 2


def test_ddp_two_processes_gloo_cpu(small_cohort: Path, tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "spine_dfl", "train", str(small_cohort / "manifest.csv"), "--out", str(out), "--no-report",
           "--config", "cpu_demo", "--device", "cpu", *sum((["--set", s] for s in QUICK), [])]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert (out / "best.pt").exists()
    metrics = pd.read_csv(out / "metrics.csv")
    assert list(metrics["epoch"]) == [1, 2]  # written once (rank 0), not once per rank
    load_checkpoint(out / "best.pt")


# ----------------------------------------------------------------------------- review bugs


def test_collective_device_is_the_backends_device() -> None:
    from spine_dfl.engine.distributed import collective_device

    assert collective_device("nccl", torch.device("cuda", 1)) == torch.device("cuda", 1)
    assert collective_device("NCCL", torch.device("cuda", 0)) == torch.device("cuda", 0)
    assert collective_device("gloo", torch.device("cuda", 1)) == torch.device("cpu")
    assert collective_device("gloo", torch.device("cpu")) == torch.device("cpu")
    with pytest.raises(ValueError, match="CUDA"):
        collective_device("nccl", torch.device("cpu"))


@pytest.fixture
def single_process_group(tmp_path: Path):
    """A real gloo process group of one process (the test process)."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_train_collectives_go_through_the_helper_on_its_device(
    small_cohort: Path, tmp_path: Path, monkeypatch, single_process_group
) -> None:
    """Every tensor training hands to a collective is on the device the backend needs (NCCL takes CUDA
    tensors only): the helper's."""
    import torch.distributed as dist

    import spine_dfl.engine.distributed as distributed
    import spine_dfl.engine.loop as loop

    # One real process, presented to train as rank 0 of two so that it runs its collectives.
    helper = distributed.Distributed(rank=0, world_size=2, backend="gloo", device=torch.device("cpu"))
    monkeypatch.setattr(loop, "init_distributed", lambda *args, **kwargs: helper)
    seen: list[tuple[str, torch.device]] = []

    def recording(name: str, real):
        def collective(tensor, *args, **kwargs):
            seen.append((name, tensor.device))
            return real(tensor, *args, **kwargs)
        return collective

    monkeypatch.setattr(dist, "broadcast", recording("broadcast", dist.broadcast))
    monkeypatch.setattr(dist, "all_reduce", recording("all_reduce", dist.all_reduce))
    config = load_config("cpu_demo", [*QUICK, "device=cpu"])
    train(small_cohort / "manifest.csv", config, tmp_path / "run")
    epoch_flags = [entry for entry in seen if entry[0] == "broadcast"]
    assert len(epoch_flags) >= 2  # one stop decision per epoch
    assert all(device == helper.device for _, device in seen), seen


def test_distributed_helper_collectives_run_on_its_device(monkeypatch, single_process_group) -> None:
    import torch.distributed as dist

    from spine_dfl.engine.distributed import Distributed

    devices = []
    real = dist.all_reduce

    def all_reduce(tensor, *args, **kwargs):
        devices.append(tensor.device)
        return real(tensor, *args, **kwargs)

    monkeypatch.setattr(dist, "all_reduce", all_reduce)
    helper = Distributed(world_size=2, backend="gloo", device=torch.device("cpu"))  # runs its collectives
    assert helper.all_reduce_sum([1.5, 2]) == [1.5, 2.0]
    assert helper.all_reduce_max([3]) == [3.0]
    assert helper.broadcast_code(1) == 1
    assert helper.broadcast_object({"found": 3}) == {"found": 3}
    helper.barrier()
    assert devices == [helper.device, helper.device]
    alone = Distributed()  # one process: nothing is sent
    assert alone.all_reduce_sum([2]) == [2.0] and alone.broadcast_code(2) == 2 and not alone.enabled


@pytest.mark.cuda
def test_flag_broadcast_works_on_nccl(tmp_path: Path) -> None:
    """On a real NCCL group the helper's flag is a CUDA tensor (a CPU one raises)."""
    import torch.distributed as dist

    from spine_dfl.engine.distributed import Distributed, collective_device

    dist.init_process_group("nccl", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        device = torch.device("cuda", 0)
        # world_size=2 so the helper does not skip the collective of this one-process group
        helper = Distributed(world_size=2, backend="nccl", device=collective_device("nccl", device))
        assert helper.broadcast_code(2) == 2
        with pytest.raises(Exception):
            dist.broadcast(torch.zeros(1), src=0)  # a CPU tensor: NCCL refuses it
    finally:
        dist.destroy_process_group()


def _nan_validation_from_epoch(monkeypatch, bad_epoch: int) -> None:
    from spine_dfl.engine.loop import Validation
    from spine_dfl.engine.train import GraderTask

    real = GraderTask.validate
    calls = {"n": 0}

    def validate(self):
        calls["n"] += 1
        return Validation(float("nan")) if calls["n"] >= bad_epoch else real(self)

    monkeypatch.setattr(GraderTask, "validate", validate)


def test_nan_validation_loss_stops_naming_the_epoch_and_keeps_the_good_checkpoint(
    small_cohort: Path, tmp_path: Path, monkeypatch
) -> None:
    from spine_dfl.engine.train import TrainingDiverged

    _nan_validation_from_epoch(monkeypatch, bad_epoch=2)
    config = load_config("cpu_demo", [*QUICK, "train.epochs=3", "train.select_metric=loss"])
    with pytest.raises(TrainingDiverged, match="epoch 2") as info:
        train(small_cohort / "manifest.csv", config, tmp_path)
    assert "\n" not in str(info.value)
    best = read_checkpoint(tmp_path / "best.pt")
    last = read_checkpoint(tmp_path / "last.pt")
    assert best["epoch"] == 0 and last["epoch"] == 0  # epoch 1's weights, not the diverged ones
    assert list(pd.read_csv(tmp_path / "metrics.csv")["epoch"]) == [1]


def test_nan_validation_loss_in_the_first_epoch_says_so(small_cohort: Path, tmp_path: Path, monkeypatch) -> None:
    from spine_dfl.engine.train import TrainingDiverged

    _nan_validation_from_epoch(monkeypatch, bad_epoch=1)
    config = load_config("cpu_demo", [*QUICK, "train.select_metric=loss"])
    with pytest.raises(TrainingDiverged, match="epoch 1.*no checkpoint"):
        train(small_cohort / "manifest.csv", config, tmp_path)
    assert not (tmp_path / "best.pt").exists() and not (tmp_path / "last.pt").exists()


def test_selection_macro_auc_is_the_reports_on_a_table_missing_a_class() -> None:
    """One definition of macro AUC: selection must agree with the report, also when the validation
    rows lack a class (the probabilities are not renormalised over the present classes)."""
    import numpy as np

    from spine_dfl.engine.train import selection_score
    from spine_dfl.metrics import compute_metrics

    classes = ["normal", "mild", "severe"]
    rng = np.random.default_rng(3)
    n = 40
    probs = rng.dirichlet([1.0, 1.0, 1.0], size=n)
    labels = np.array(["normal", "mild"] * (n // 2))  # no "severe" row
    table = pd.DataFrame({"image": [f"i{k}" for k in range(n)], "label": labels,
                          "pred": np.array(classes)[probs.argmax(axis=1)],
                          **{f"prob_{c}": probs[:, j] for j, c in enumerate(classes)}})
    report = compute_metrics(table, classes, n_bootstrap=0)["overall"]
    for metric in ("macro_auc", "accuracy", "balanced_accuracy", "macro_f1"):
        assert selection_score(metric, table, classes, loss=1.0) == pytest.approx(report[metric], abs=1e-12), metric


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ("text", "not a torch file"),
        ({"weights": torch.zeros(2)}, "no 'format' key"),
        ({"format": "spine-dfl-checkpoint/99"}, "format 'spine-dfl-checkpoint/99' is not supported"),
        ([1, 2, 3], "holds a list, not a dict"),
    ],
)
def test_a_file_that_is_not_a_checkpoint_is_named_in_one_line(tmp_path: Path, content, reason: str) -> None:
    from spine_dfl.engine.checkpoint import CheckpointError

    path = tmp_path / "model.pt"
    if content == "text":
        path.write_text("patient,grade\nA,1\n")
    else:
        torch.save(content, path)
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(path)
    message = str(info.value)
    assert message.startswith(f"{path}: not a spine-dfl checkpoint")
    assert reason in message
    assert "\n" not in message and "weights_only" not in message


def test_a_torch_file_with_python_objects_is_refused_without_torch_advice(tmp_path: Path) -> None:
    """torch's own message here advises weights_only=False, which runs the file's code: never say that."""
    from argparse import Namespace

    from spine_dfl.engine.checkpoint import CheckpointError

    path = tmp_path / "pickled.pt"
    torch.save({"format": "spine-dfl-checkpoint/1", "extra": Namespace(a=1)}, path)
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(path)
    message = str(info.value)
    assert "not a spine-dfl checkpoint" in message and "Python objects" in message
    assert "\n" not in message and "weights_only" not in message
