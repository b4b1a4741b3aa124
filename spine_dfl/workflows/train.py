"""``spine-dfl train``: load the config, train its task through the engine, and write the validation
split's report (the grader's); with ``--init``, fine-tune from a checkpoint (``engine.finetune``)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from spine_dfl.config import RunConfig, load_config
from spine_dfl.engine.finetune import Parent, finetune_config, read_parent
from spine_dfl.engine.loop import RunContext, TrainingTask, TrainResult, fit
from spine_dfl.engine.train import GraderTask
from spine_dfl.locate.train import LocatorTask
from spine_dfl.report import write_evaluation

__all__ = ["TASKS", "TrainRun", "run_config", "train", "train_and_report"]

# The training tasks, by the config's ``task:``; each plugs into the one engine (`engine.loop.fit`).
TASKS: dict[str, Callable[[RunContext], TrainingTask]] = {"grader": GraderTask, "locator": LocatorTask}


def train(manifest: str | Path, config: RunConfig, out_dir: str | Path, resume: bool = False,
          progress: bool = True, init: Parent | None = None) -> TrainResult:
    """Train the config's task on the manifest (best.pt, last.pt, metrics.csv in ``out_dir``), from the
    checkpoint ``init`` when given."""
    return fit(TASKS[config.task], manifest, config, out_dir, resume=resume, progress=progress, init=init)


def run_config(config: str | Path | None, overrides: list[str],
               init: str | Path | None = None) -> tuple[RunConfig, Parent | None]:
    """The run's config and, with ``init``, its parent checkpoint (read and hashed once): without
    ``init`` the config file (+ overrides), with it ``finetune_config``'s (``config`` may be None)."""
    if init is None:
        if config is None:
            raise ValueError("a config is needed when not fine-tuning")
        return load_config(config, overrides), None
    parent = read_parent(init)
    return finetune_config(parent, config, overrides), parent


@dataclass
class TrainRun:
    """A training run: the engine's result, the selection metric's name, and whether this is rank 0."""

    result: TrainResult
    select_metric: str
    is_main_process: bool


def train_and_report(manifest: str | Path, config: str | Path | None, overrides: list[str], out_dir: str | Path,
                     resume: bool = False, report: bool = True, init: str | Path | None = None) -> TrainRun:
    """Load the config (+ ``key=value`` overrides), train (from the checkpoint ``init`` when given), and
    (rank 0) write the validation split's report into ``out_dir/val_report``."""
    config_used, parent = run_config(config, overrides, init)
    result = train(manifest, config_used, out_dir, resume=resume, init=parent)
    main_process = int(os.environ.get("RANK", "0")) == 0
    if main_process and report and result.val_predictions is not None:
        calibration = (result.calibration or {}).get("calibration")
        write_evaluation(result.val_predictions, Path(out_dir) / "val_report", "validation split",
                         calibration=calibration)
    return TrainRun(result, config_used.train.select_metric, main_process)
