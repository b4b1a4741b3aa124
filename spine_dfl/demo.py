"""``spine-dfl demo``: synthesise a cohort, train the CPU demo, evaluate the held-out test patients
and draw their heatmaps, all under one output folder and one seed."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class DemoResult:
    """Where the demo wrote its results, the test split's metrics and how long it took."""

    checkpoint: Path
    metrics: dict[str, Any]
    metrics_json: Path
    report_html: Path
    gallery_html: Path | None
    seconds: float


def run_demo(out: str | Path, patients: int = 64, seed: int = 0, config: str | Path = "cpu_demo",
             overrides: Sequence[str] = (), explain: bool = True,
             say: Callable[[str], None] = print) -> DemoResult:
    """synth -> train -> validation report -> test evaluation -> heatmaps; ``say`` reports each step."""
    from spine_dfl.config import load_config
    from spine_dfl.engine.train import train
    from spine_dfl.explain.inputs import explain_records
    from spine_dfl.report.run import evaluate, write_evaluation
    from spine_dfl.synth import generate_cohort

    started = time.monotonic()
    out = Path(out)
    cohort = out / "cohort"
    run_config = load_config(config, [f"seed={seed}", *overrides])
    say(f"[1/4] synthesising {patients} patients into {cohort}")
    generate_cohort(cohort, patients=patients, seed=seed, overwrite=True)
    manifest = cohort / "manifest.csv"
    say(f"[2/4] training {run_config.model.backbone} (config {config}) into {out / 'train'}")
    result = train(manifest, run_config, out / "train")
    write_evaluation(result.val_predictions, out / "train" / "val_report", "validation split")
    say(f"[3/4] evaluating the held-out test patients into {out / 'evaluate'}")
    metrics = evaluate(result.best_checkpoint, manifest, "test", out / "evaluate", title="synthetic cohort [test]")
    gallery = None
    if explain:
        explain_dir = out / "explain"
        say(f"[4/4] drawing patch heatmaps for the test patients into {explain_dir}")
        explain_records(result.best_checkpoint, manifest, explain_dir, split="test")
        gallery = explain_dir / "index.html"
    return DemoResult(Path(result.best_checkpoint), metrics, out / "evaluate" / "metrics.json",
                      out / "evaluate" / "report.html", gallery, time.monotonic() - started)
