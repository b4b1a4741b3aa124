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
        _explain_split(result.best_checkpoint, manifest, explain_dir, "test")
        gallery = explain_dir / "index.html"
    return DemoResult(Path(result.best_checkpoint), metrics, out / "evaluate" / "metrics.json",
                      out / "evaluate" / "report.html", gallery, time.monotonic() - started)


def _explain_split(checkpoint: Path, manifest: Path, out_dir: Path, split: str) -> None:
    """Heatmaps of one manifest split (unlabelled rows allowed: the gallery then has no correct/wrong)."""
    from spine_dfl.data.dataset import manifest_records
    from spine_dfl.engine.checkpoint import load_checkpoint
    from spine_dfl.engine.device import resolve_device
    from spine_dfl.explain import explain

    loaded = load_checkpoint(checkpoint, map_location=resolve_device("auto"))
    records = manifest_records(manifest, loaded.class_names, split, loaded.preprocessing.use_roi, require_labels=False)
    explain(loaded, records, out_dir)
