"""The runs that end in a report: ``evaluate`` (checkpoint + manifest split) and training with its
validation report. The report itself needs only the predictions table; the engine is imported
inside these functions, so importing ``spine_dfl.report`` stays light.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spine_dfl.atomic import atomic_output
from spine_dfl.report.document import write_report

log = logging.getLogger("spine_dfl")


def write_evaluation(predictions: Any, out_dir: str | Path, title: str, n_bootstrap: int = 1000,
                     calibration: dict[str, Any] | None = None) -> dict[str, Any]:
    """predictions.csv, metrics.json, per_vertebra.csv and report.html of one predictions table in ``out_dir``
    (``calibration``: the checkpoint's calibration record, shown before / after; ``report.trust``)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_output(out_dir / "predictions.csv", "w", newline="") as handle:
        predictions.to_csv(handle, index=False)
    metrics = write_report(predictions, out_dir, title=f"spine-dfl evaluation: {title}", n_bootstrap=n_bootstrap,
                           calibration=calibration)
    log.info("report written to %s", out_dir / "report.html")
    return metrics


def predict_split(checkpoint: str | Path, manifest: str | Path, split: str | None, device: str = "auto",
                  batch_size: int = 32) -> Any:
    """Predictions table of one manifest split (every row when the manifest has no split column)."""
    from spine_dfl.data.dataset import manifest_records
    from spine_dfl.engine.checkpoint import load_checkpoint
    from spine_dfl.engine.device import resolve_device
    from spine_dfl.engine.predict import predict_records

    where = resolve_device(device)
    loaded = load_checkpoint(checkpoint, map_location=where)
    records = manifest_records(manifest, loaded.class_names, split, loaded.preprocessing.use_roi)
    return predict_records(loaded.model, records, loaded.preprocessing, loaded.class_names,
                           batch_size=batch_size, device=where, temperatures=loaded.temperatures,
                           shift=loaded.shift)


def evaluate(checkpoint: str | Path, manifest: str | Path, split: str, out_dir: str | Path, device: str = "auto",
             batch_size: int = 32, n_bootstrap: int = 1000, title: str | None = None,
             locator: str | Path | None = None) -> dict[str, Any]:
    """``spine-dfl evaluate``: predict ``split`` of ``manifest`` with ``checkpoint`` and write the report.

    With a locator (``locator``, or the one embedded in the checkpoint) the located crops are graded
    too (``report.located``): their own predictions.csv and report in ``out_dir/located``, and
    metrics.json gains ``end_to_end`` (their overall and per-level figures, coverage) and ``locator``
    (``locate.evaluate``'s figures). Returns metrics.json's content. Nothing is written when the
    manifest or checkpoint is bad. The manifest is trusted, but a warning says how many of the split's
    images score / serve would refuse by their header (``warn_gate_refusals``).
    """
    import json

    from spine_dfl.atomic import atomic_write_text
    from spine_dfl.report.located import evaluate_located

    by_manifest, by_locator, figures = evaluate_located(checkpoint, locator, manifest, split, device=device,
                                                        batch_size=batch_size)
    warn_gate_refusals(manifest, split)
    title = title if title is not None else f"{Path(manifest).name} [{split}]"
    calibration = checkpoint_calibration(checkpoint)
    metrics = write_evaluation(by_manifest, out_dir, title, n_bootstrap, calibration)
    if by_locator is None:
        return metrics
    located = write_evaluation(by_locator, Path(out_dir) / "located", f"{title}, located crops", n_bootstrap)
    metrics["end_to_end"] = {"overall": located["overall"], "per_vertebra": located.get("per_vertebra"),
                             "coverage": figures["coverage"], "report": "located/report.html"}
    metrics["locator"] = figures["locator"]
    atomic_write_text(Path(out_dir) / "metrics.json", json.dumps(metrics, indent=2, allow_nan=False) + "\n")
    return metrics


def warn_gate_refusals(manifest: str | Path, split: str | None) -> int:
    """Log one warning when images of ``split`` (every row without a split column) have headers the input
    gate of score / serve refuses (``gate.header``): how many, and one reason (no path, name or ID).
    Returns that count."""
    from spine_dfl.data.manifest import load_manifest
    from spine_dfl.gate.header import file_refusal

    table = load_manifest(manifest, check_files=False, check_rois=False, require_labels=False).table
    if split is not None and "split" in table.columns:
        table = table[table["split"] == split.lower()]
    images = list(dict.fromkeys(str(image) for image in table["image"]))
    refusals = [reason for reason in map(file_refusal, images) if reason is not None]
    if refusals:
        log.warning("evaluate: %d of %d manifest image(s) have headers that score and serve would refuse "
                    "(e.g. %s); evaluate trusts the manifest and grades them", len(refusals), len(images), refusals[0])
    return len(refusals)


def checkpoint_calibration(checkpoint: str | Path) -> dict[str, Any] | None:
    """The checkpoint's calibration record (``engine.calibration``), None when it has none."""
    from spine_dfl.engine.checkpoint import read_checkpoint

    record = read_checkpoint(checkpoint).get("calibration")
    return record if isinstance(record, dict) else None


@dataclass
class TrainRun:
    """A training run: the engine's result, the selection metric's name, and whether this is rank 0."""

    result: Any
    select_metric: str
    is_main_process: bool


def train_and_report(manifest: str | Path, config: str | Path, overrides: list[str], out_dir: str | Path,
                     resume: bool = False, report: bool = True) -> TrainRun:
    """``spine-dfl train``: load the config (+ ``key=value`` overrides), train, and (rank 0) write the
    validation split's report into ``out_dir/val_report``."""
    from spine_dfl.config import load_config
    from spine_dfl.engine.train import train

    run_config = load_config(config, overrides)
    result = train(manifest, run_config, out_dir, resume=resume)
    main_process = int(os.environ.get("RANK", "0")) == 0
    if main_process and report and result.val_predictions is not None:
        calibration = (result.calibration or {}).get("calibration")
        write_evaluation(result.val_predictions, Path(out_dir) / "val_report", "validation split",
                         calibration=calibration)
    return TrainRun(result, run_config.train.select_metric, main_process)
