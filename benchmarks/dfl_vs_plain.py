"""Is DFL worth it? DFL-CNN against the plain backbone classifier, same backbone, input, epochs and data.

    python benchmarks/dfl_vs_plain.py --out /tmp/dfl_vs_plain [--config cpu_demo] [--seeds 0 1 2]
        [--patients 64] [--cohort-seed 7] [--set model.pstream_layer=layer2 ...]

Writes one ``spine-dfl synth`` cohort (``--cohort-seed``), then for every seed trains two models
from the same config: ``dfl`` (model.streams=dfl) and ``plain`` (model.streams=g_only: the G-stream
alone, i.e. the backbone with a linear classifier), each with the ``--set`` overrides, and evaluates
both on the cohort's test patients. Prints one JSON object: per setting, each seed's macro AUC,
balanced accuracy and mild-class recall, with their mean, min, max and spread (max - min); and
whether DFL's mean macro AUC is at least the plain one and its mean balanced accuracy beats the plain
mean by more than the larger seed spread (the issue's acceptance). Long: 2 x seeds trainings.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

SETTINGS = {"dfl": "model.streams=dfl", "plain": "model.streams=g_only"}
METRICS = ("macro_auc", "balanced_accuracy", "mild_recall")


def run_one(manifest: Path, config: str, seed: int, overrides: list[str], out: Path) -> dict[str, float]:
    from spine_dfl.config import load_config
    from spine_dfl.engine.train import train
    from spine_dfl.report.run import evaluate

    result = train(manifest, load_config(config, [f"seed={seed}", *overrides]), out / "train")
    overall = evaluate(result.best_checkpoint, manifest, "test", out / "evaluate", title=out.name)["overall"]
    mild = overall["per_class"].get("mild", {}).get("sensitivity")
    return {"macro_auc": overall["macro_auc"], "balanced_accuracy": overall["balanced_accuracy"], "mild_recall": mild}


def summary(values: list[float | None]) -> dict[str, Any]:
    known = [v for v in values if v is not None]
    if not known:
        return {"mean": None, "min": None, "max": None, "spread": None}
    return {"mean": round(statistics.fmean(known), 4), "min": round(min(known), 4), "max": round(max(known), 4),
            "spread": round(max(known) - min(known), 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--config", default="cpu_demo")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--patients", type=int, default=64)
    parser.add_argument("--cohort-seed", type=int, default=7)
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="config override, both settings")
    args = parser.parse_args()
    if len(args.seeds) < 3:
        parser.error("at least 3 seeds: the comparison needs each setting's seed spread")

    from spine_dfl.synth import generate_cohort

    cohort = args.out / "cohort"
    if not (cohort / "manifest.csv").is_file():
        generate_cohort(cohort, patients=args.patients, seed=args.cohort_seed)
    runs: dict[str, dict[str, dict[str, float]]] = {name: {} for name in SETTINGS}
    for seed in args.seeds:
        for name, setting in SETTINGS.items():
            runs[name][str(seed)] = run_one(cohort / "manifest.csv", args.config, seed, [*args.overrides, setting],
                                            args.out / name / f"seed{seed}")
    table = {name: {m: summary([r[m] for r in per_seed.values()]) for m in METRICS} for name, per_seed in runs.items()}
    dfl, plain = table["dfl"], table["plain"]
    spread = max(dfl["balanced_accuracy"]["spread"] or 0.0, plain["balanced_accuracy"]["spread"] or 0.0)
    print(json.dumps({
        "config": args.config, "overrides": args.overrides, "seeds": args.seeds, "patients": args.patients,
        "cohort_seed": args.cohort_seed, "runs": runs, "summary": table,
        "dfl_auc_at_least_plain": dfl["macro_auc"]["mean"] >= plain["macro_auc"]["mean"],
        "dfl_balanced_accuracy_margin": round(dfl["balanced_accuracy"]["mean"] - plain["balanced_accuracy"]["mean"], 4),
        "larger_seed_spread": spread,
        "dfl_wins_balanced_accuracy": dfl["balanced_accuracy"]["mean"] - plain["balanced_accuracy"]["mean"] > spread,
    }, indent=1))


if __name__ == "__main__":
    main()
