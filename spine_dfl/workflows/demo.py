"""``spine-dfl demo``: synthesise a cohort, train the CPU demo grader and the vertebra locator,
evaluate the held-out test patients on the manifest's crops and end to end on the located crops (no
ROI file), and draw their heatmaps, all under one output folder and one seed."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spine_dfl.config import load_config
from spine_dfl.workflows.train import train
from spine_dfl.explain.inputs import explain_records
from spine_dfl.gate.view_checkpoint import embed_view
from spine_dfl.gate.view_train import one_thread, train_view
from spine_dfl.phantom.cohort import generate_drr_cohort
from spine_dfl.report import write_evaluation
from spine_dfl.synth import generate_cohort
from spine_dfl.workflows.evaluate import evaluate

__all__ = ["DEMO_DRR_PATIENTS", "DemoResult", "run_demo"]


@dataclass
class DemoResult:
    """Where the demo wrote its results, the test split's metrics and how long it took."""

    checkpoint: Path
    metrics: dict[str, Any]
    metrics_json: Path
    report_html: Path
    gallery_html: Path | None
    seconds: float
    locator: Path | None = None
    view: Path | None = None  # the view classifier's checkpoint (also embedded in ``locator``)
    view_metrics: dict[str, Any] | None = None


def run_demo(out: str | Path, patients: int = 64, seed: int = 0, config: str | Path = "cpu_demo",
             overrides: Sequence[str] = (), explain: bool = True, locator_config: str | Path | None = "locator_cpu",
             locator_overrides: Sequence[str] = (), say: Callable[[str], None] = print,
             view_budget_s: float | None = 55.0) -> DemoResult:
    """synth -> train the grader -> validation report -> train the locator -> the view gate into the
    locator -> test evaluation (manifest crops, and located crops end to end) -> heatmaps; ``say``
    reports each step. ``locator_config`` None: no locator (the manifest crops only) and no view gate;
    ``view_budget_s`` None: no view gate, else about that many seconds for its training."""
    started = time.monotonic()
    out = Path(out)
    cohort = out / "cohort"
    run_config = load_config(config, [f"seed={seed}", *overrides])
    with_view = locator_config is not None and view_budget_s is not None
    steps = 4 + (locator_config is not None) + with_view
    say(f"[1/{steps}] synthesising {patients} patients into {cohort}")
    generate_cohort(cohort, patients=patients, seed=seed, overwrite=True)
    manifest = cohort / "manifest.csv"
    say(f"[2/{steps}] training {run_config.model.backbone} (config {config}) into {out / 'train'}")
    result = train(manifest, run_config, out / "train")
    write_evaluation(result.val_predictions, out / "train" / "val_report", "validation split")
    locator = None
    if locator_config is not None:
        say(f"[3/{steps}] training the vertebra locator (config {locator_config}) into {out / 'locator'}")
        locator = Path(train(manifest, load_config(locator_config, [f"seed={seed}", *locator_overrides]), out / "locator").best_checkpoint)
    view = view_metrics = None
    if with_view:
        say(f"[4/{steps}] training the lateral-view and orientation gate into {out / 'view'}, embedded in {locator}")
        view, view_metrics = _view_gate(out, manifest, locator, seed, view_budget_s)
    say(f"[{steps - 1}/{steps}] evaluating the held-out test patients into {out / 'evaluate'}"
        + (" (manifest crops, and the located crops without the ROI file)" if locator is not None else ""))
    metrics = evaluate(result.best_checkpoint, manifest, "test", out / "evaluate", title="synthetic cohort [test]",
                       locator=locator)
    gallery = None
    if explain:
        explain_dir = out / "explain"
        say(f"[{steps}/{steps}] drawing patch heatmaps for the test patients into {explain_dir}")
        explain_records(result.best_checkpoint, manifest, explain_dir, split="test")
        gallery = explain_dir / "index.html"
    return DemoResult(Path(result.best_checkpoint), metrics, out / "evaluate" / "metrics.json",
                      out / "evaluate" / "report.html", gallery, time.monotonic() - started, locator, view, view_metrics)


DEMO_DRR_PATIENTS = 4  # the view gate's second generator: lateral films beside the synth ones, AP films as negatives


def _view_gate(out: Path, manifest: Path, locator: Path, seed: int, budget_s: float) -> tuple[Path, dict[str, Any]]:
    """A small DRR-phantom cohort, the view classifier trained on it and the demo's films, embedded in
    the locator checkpoint (so the locator carries its gate)."""
    drr = out / "drr_cohort"
    with one_thread():  # small renders: two spinning threads only slow them on a shared machine
        generate_drr_cohort(drr, patients=DEMO_DRR_PATIENTS, seed=seed + 1, overwrite=True)
    result = train_view([manifest, drr / "manifest.csv"], out / "view", epochs=40, seed=seed, time_budget_s=budget_s,
                        cuts_per_film=4)
    embed_view(locator, result.checkpoint, locator)
    return result.checkpoint, result.metrics
