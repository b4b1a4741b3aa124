"""``spine-dfl train``: load the config, train its task through the engine, and write the validation
split's report (the grader's)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from spine_dfl.config import RunConfig, load_config
from spine_dfl.engine.loop import RunContext, TrainingTask, TrainResult, fit
from spine_dfl.engine.train import GraderTask
from spine_dfl.locate.train import LocatorTask
from spine_dfl.report import write_evaluation

__all__ = ["TASKS", "TrainRun", "train", "train_and_report"]

# The training tasks, by the config's ``task:``; each plugs into the one engine (`engine.loop.fit`).
TASKS: dict[str, Callable[[RunContext], TrainingTask]] = {"grader": GraderTask, "locator": LocatorTask}


def train(manifest: str | Path, config: RunConfig, out_dir: str | Path, resume: bool = False,
          progress: bool = True) -> TrainResult:
    """Train the config's task on the manifest (best.pt, last.pt, metrics.csv in ``out_dir``)."""
    return fit(TASKS[config.task], manifest, config, out_dir, resume=resume, progress=progress)


@dataclass
class TrainRun:
    """A training run: the engine's result, the selection metric's name, and whether this is rank 0."""

    result: TrainResult
    select_metric: str
    is_main_process: bool


def train_and_report(manifest: str | Path, config: str | Path, overrides: list[str], out_dir: str | Path,
                     resume: bool = False, report: bool = True) -> TrainRun:
    """Load the config (+ ``key=value`` overrides), train, and (rank 0) write the validation split's
    report into ``out_dir/val_report``."""
    run_config = load_config(config, overrides)
    result = train(manifest, run_config, out_dir, resume=resume)
    main_process = int(os.environ.get("RANK", "0")) == 0
    if main_process and report and result.val_predictions is not None:
        calibration = (result.calibration or {}).get("calibration")
        write_evaluation(result.val_predictions, Path(out_dir) / "val_report", "validation split",
                         calibration=calibration)
    return TrainRun(result, run_config.train.select_metric, main_process)
