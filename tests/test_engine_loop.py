"""The one training engine: stop rules, run folder, resume and the GradScaler path, on a toy task and
on both real tasks (the grader, the locator)."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from spine_dfl.config import ConfigError, load_config
from spine_dfl.engine import loop
from spine_dfl.engine.checkpoint import CHECKPOINT_FORMAT, read_checkpoint
from spine_dfl.engine.distributed import Distributed
from spine_dfl.engine.loop import RunContext, StepLoss, TrainingTask, Validation, fit
from quick_training import QUICK, killed_at_epoch


class LineTask(TrainingTask):
    """y = 3x fitted by one linear weight; ``scores`` gives each epoch's selection score."""

    def __init__(self, context: RunContext, scores: list[float] | None = None) -> None:
        self.context = context
        self.model = torch.nn.Linear(1, 1, bias=False).to(context.device)
        torch.nn.init.zeros_(self.model.weight)
        self.train_count = 4 * context.config.train.batch_size
        self.scores = scores
        self.validated = 0
        self.finished = None

    def parameter_groups(self) -> list[dict[str, Any]]:
        return [{"params": list(self.model.parameters()), "lr": self.context.config.train.lr_backbone,
                 "weight_decay": 0.0}]

    def batches(self, epoch: int):
        x = torch.linspace(-1, 1, self.context.config.train.batch_size)[:, None]
        for _ in range(10):  # more than an epoch's steps: the engine stops drawing
            yield x, 3 * x

    def step_loss(self, net: torch.nn.Module, batch: Any) -> StepLoss:
        x, y = batch
        error = net(x) - y
        return StepLoss((error**2).mean(), {"abs": error.abs().mean()}, len(x))

    def validate(self) -> Validation:
        self.validated += 1
        loss = float((self.model.weight.detach() - 3).abs().sum())
        score = -loss if self.scores is None else self.scores[self.validated - 1]
        return Validation(loss, score, {"val_weight": float(self.model.weight.detach())})

    def payload(self, progress: dict[str, Any], validation: Validation) -> dict[str, Any]:
        return {"format": CHECKPOINT_FORMAT, "kind": "line", "model_state": self.model.state_dict(), **progress}

    def finish(self, result) -> None:
        self.finished = result.epochs_run


def _config(*overrides: str):
    return load_config(None, ["device=cpu", "train.batch_size=4", "train.lr_backbone=0.1", "train.warmup_epochs=0",
                              "train.early_stop_patience=0", "train.grad_clip=0", *overrides])


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def _fit(tmp_path: Path, config, scores=None, resume=False) -> tuple[Any, LineTask]:
    made: list[LineTask] = []

    def build(context: RunContext) -> LineTask:
        made.append(LineTask(context, scores))
        return made[-1]

    result = fit(build, tmp_path / "manifest.csv", config, tmp_path / "run", resume=resume, progress=False)
    return result, made[0]


def test_patience_budget_and_epochs_end_a_run_with_one_set_of_rules(tmp_path: Path) -> None:
    result, task = _fit(tmp_path / "a", _config("train.epochs=6", "train.early_stop_patience=2"),
                        scores=[1.0, 0.5, 0.5, 2.0, 2.0, 2.0])
    assert result.epochs_run == 3 and result.best_epoch == 1 and task.finished == 3  # 2 epochs without gain
    assert read_checkpoint(result.best_checkpoint)["epoch"] == 0
    result, _ = _fit(tmp_path / "b", _config("train.epochs=6", "train.time_budget_s=1e-9"))
    assert result.epochs_run == 1  # the budget is checked after each epoch
    result, _ = _fit(tmp_path / "c", _config("train.epochs=3"))
    assert result.epochs_run == 3 and [r["epoch"] for r in _rows(tmp_path / "c" / "run" / "metrics.csv")] == [
        "1", "2", "3"]


def test_a_fresh_run_into_an_old_folder_starts_a_fresh_metrics_file(tmp_path: Path) -> None:
    _fit(tmp_path, _config("train.epochs=3"))
    _fit(tmp_path, _config("train.epochs=1"))
    rows = _rows(tmp_path / "run" / "metrics.csv")
    assert [r["epoch"] for r in rows] == ["1"]
    assert {"train_loss", "train_loss_abs", "lr_backbone", "val_loss", "val_weight", "seconds"} <= set(rows[0])


def test_steps_per_epoch_and_the_schedule_are_the_engines(tmp_path: Path) -> None:
    result, _ = _fit(tmp_path, _config("train.epochs=2", "train.max_steps_per_epoch=3"))
    last = read_checkpoint(tmp_path / "run" / "last.pt")
    assert last["scheduler_state"]["last_epoch"] == 6  # 2 epochs x 3 steps, then stopped drawing
    assert set(last) >= {"optimizer_state", "scheduler_state", "scaler_state", "history", "stale_epochs"}
    assert loop.warmup_cosine(0, 0, 10) == 1.0 and loop.warmup_cosine(10, 0, 10) == 0.0
    assert loop.warmup_cosine(10, 0, 10, floor=0.01) == pytest.approx(0.01)
    assert loop.warmup_cosine(0, 4, 10) == pytest.approx(0.25)


def test_resume_carries_on_where_last_pt_stopped(tmp_path: Path, monkeypatch) -> None:
    straight, _ = _fit(tmp_path / "straight", _config("train.epochs=4"))
    revive = killed_at_epoch(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        _fit(tmp_path / "killed", _config("train.epochs=4"))
    revive()
    resumed, task = _fit(tmp_path / "killed", _config("train.epochs=4"), resume=True)
    assert task.validated == 2 and resumed.epochs_run == 4
    def losses(folder: str) -> list[tuple[str, str, str]]:
        return [(r["epoch"], r["train_loss"], r["val_loss"]) for r in _rows(tmp_path / folder / "run" / "metrics.csv")]

    assert losses("killed") == losses("straight") and len(losses("killed")) == 4
    a = read_checkpoint(tmp_path / "straight" / "run" / "last.pt")["model_state"]
    b = read_checkpoint(tmp_path / "killed" / "run" / "last.pt")["model_state"]
    assert torch.equal(a["weight"], b["weight"])


def test_a_nan_validation_loss_stops_the_run_naming_the_epoch(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(LineTask, "validate", lambda self: Validation(math.nan))
    with pytest.raises(loop.TrainingDiverged, match="epoch 1: validation loss is nan.*no checkpoint"):
        _fit(tmp_path, _config("train.epochs=3"))
    assert not (tmp_path / "run" / "last.pt").exists()


def _one_epoch(scaler: torch.amp.GradScaler, poison_first: bool, tmp_path: Path) -> tuple[LineTask, Any]:
    config = _config("train.epochs=1", "train.max_steps_per_epoch=2", "train.grad_clip=1.0")
    context = RunContext(tmp_path / "manifest.csv", config, tmp_path, Distributed(), torch.device("cpu"))
    task = LineTask(context)
    if poison_first:  # an overflowed fp16 gradient: the scaler must skip that step
        real = task.step_loss
        calls = {"n": 0}

        def step_loss(net, batch):
            calls["n"] += 1
            out = real(net, batch)
            return StepLoss(out.loss * (math.inf if calls["n"] == 1 else 1.0), out.parts, out.count)

        task.step_loss = step_loss
    opt = loop.build_optimisation(task, context)
    opt.scaler = scaler
    loop.train_epoch(task, task.model, opt, context, 0)
    return task, opt


def test_every_step_goes_through_the_grad_scaler(tmp_path: Path) -> None:
    """The scaler's code path on any machine (CPU: a CPU GradScaler forced on): the step is the unscaled
    one (gradients unscaled before clipping), and an overflowed step is skipped with the scale halved."""
    plain, _ = _one_epoch(torch.amp.GradScaler("cpu", enabled=False), False, tmp_path / "plain")
    scaled, opt = _one_epoch(torch.amp.GradScaler("cpu", init_scale=2.0**10), False, tmp_path / "scaled")
    torch.testing.assert_close(scaled.model.weight, plain.model.weight)
    assert opt.scaler.get_scale() == 2.0**10
    skipped, opt = _one_epoch(torch.amp.GradScaler("cpu", init_scale=2.0**10), True, tmp_path / "skipped")
    assert opt.scaler.get_scale() == 2.0**9  # halved by the overflow
    once, _ = _one_epoch(torch.amp.GradScaler("cpu", enabled=False), False, tmp_path / "once")
    assert not torch.equal(skipped.model.weight, once.model.weight)  # one of two steps was skipped


def test_both_tasks_build_their_optimisation_through_the_engine(small_cohort: Path, tmp_path: Path) -> None:
    from spine_dfl.engine.train import GraderTask
    from spine_dfl.locate.train import LocatorTask
    from spine_dfl.config import SELECT_METRICS
    from spine_dfl.workflows.train import TASKS

    assert set(TASKS) == set(SELECT_METRICS) and TASKS == {"grader": GraderTask, "locator": LocatorTask}
    manifest = small_cohort / "manifest.csv"
    grader_config = load_config("cpu_demo", [*QUICK, "device=cpu", "train.amp=true"])
    locator_config = load_config("locator_cpu", ["locator.input_size=[128, 64]", "device=cpu", "train.amp=true",
                                                 "train.lr_heads=0.005"])
    for task_class, config in ((GraderTask, grader_config), (LocatorTask, locator_config)):
        context = RunContext(manifest, config, tmp_path / task_class.__name__, Distributed(), torch.device("cpu"))
        opt = loop.build_optimisation(task_class(context), context)
        assert isinstance(opt.scaler, torch.amp.GradScaler) and not opt.scaler.is_enabled()  # AMP is CUDA's
        rates = {group["name"]: group["initial_lr"] for group in opt.optimizer.param_groups}  # before warm-up
        assert rates.get("heads", rates.get("heads_no_decay")) == config.train.lr_heads
    with pytest.raises(ConfigError, match="class_weighted_loss applies to the grader only"):
        load_config("locator_cpu", ["train.class_weighted_loss=true"])
    assert load_config("locator_cpu").train.lr_heads == load_config("locator_cpu").train.lr_backbone
    assert load_config("locator_cpu").train.final_lr_fraction == 0.01


@pytest.mark.cuda
def test_an_fp16_step_on_cuda_scales_for_both_tasks(small_cohort: Path, tmp_path: Path) -> None:
    from spine_dfl.workflows.train import train

    manifest = small_cohort / "manifest.csv"
    configs = {
        "grader": load_config("cpu_demo", [*QUICK, "device=cuda", "train.amp=true", "train.epochs=1"]),
        "locator": load_config("locator_cpu", ["locator.input_size=[128, 64]", "device=cuda", "train.amp=true",
                                               "train.epochs=1", "train.time_budget_s=null"]),
    }
    for name, config in configs.items():
        result = train(manifest, config, tmp_path / name, progress=False)
        scaler_state = read_checkpoint(tmp_path / name / "last.pt")["scaler_state"]
        assert scaler_state and scaler_state["scale"] > 0, name
        assert math.isfinite(result.history[0]["train_loss"]), name
