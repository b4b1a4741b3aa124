"""Is DFL worth it? DFL-CNN against the plain backbone classifier, same backbone, input, epochs and data.

    python benchmarks/dfl_vs_plain.py --out /tmp/dfl_vs_plain [--config cpu_demo] [--seeds 0 1 2]
        [--patients 64] [--cohort-seed 7] [--held-out-patients 64] [--set model.pstream_layer=layer2 ...]

Writes one ``spine-dfl synth`` cohort (``--cohort-seed``), then for every seed trains two models
from the same config: ``dfl`` (model.streams=dfl) and ``plain`` (model.streams=g_only: the G-stream
alone, i.e. the backbone with a linear classifier), each with the ``--set`` overrides, and evaluates
both on the cohort's test patients and on every vertebra of a second, held-out cohort of the same
generator (``--held-out-patients``, seed ``--cohort-seed + 1``; 0 = none). Why the second cohort:
the 64-patient cohort's test split has 13 patients, about 12 moderate and 8 severe vertebrae, so
one vertebra moves balanced accuracy by 0.02-0.03 and the seed spread there is mostly test-sample
noise; the held-out cohort has five times as many test vertebrae and the same training.

Prints one JSON object: per evaluation set and setting, each seed's macro AUC, balanced accuracy
and mild-class recall, with their mean, min, max and spread (max - min); and, per evaluation set,
whether DFL's mean macro AUC is at least the plain one and its mean balanced accuracy beats the
plain mean by more than the larger seed spread (the issue's acceptance). Long: 2 x seeds trainings.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

SETTINGS = {"dfl": "model.streams=dfl", "plain": "model.streams=g_only"}
METRICS = ("macro_auc", "balanced_accuracy", "mild_recall")


def figures(overall: dict[str, Any]) -> dict[str, float]:
    mild = overall["per_class"].get("mild", {}).get("sensitivity")
    return {"macro_auc": overall["macro_auc"], "balanced_accuracy": overall["balanced_accuracy"], "mild_recall": mild}


def run_one(manifest: Path, held_out: Path | None, config: str, seed: int, overrides: list[str],
            out: Path) -> dict[str, dict[str, float]]:
    """Train one model; its figures on the test split and, when given, on every row of ``held_out``
    (``evaluate`` with no split takes them all)."""
    from spine_dfl.config import load_config
    from spine_dfl.engine.train import train
    from spine_dfl.workflows.evaluate import evaluate

    result = train(manifest, load_config(config, [f"seed={seed}", *overrides]), out / "train")
    by_set = {"test_split": figures(evaluate(result.best_checkpoint, manifest, "test", out / "evaluate",
                                             title=out.name)["overall"])}
    if held_out is not None:
        by_set["held_out"] = figures(evaluate(result.best_checkpoint, held_out, None, out / "evaluate_held_out",
                                              title=f"{out.name}, held-out cohort")["overall"])
    return by_set


def summary(values: list[float | None]) -> dict[str, Any]:
    known = [v for v in values if v is not None]
    if not known:
        return {"mean": None, "min": None, "max": None, "spread": None}
    return {"mean": round(statistics.fmean(known), 4), "min": round(min(known), 4), "max": round(max(known), 4),
            "spread": round(max(known) - min(known), 4)}


def verdict(runs: dict[str, dict[str, dict[str, float]]]) -> dict[str, Any]:
    """Per-setting summaries of one evaluation set's ``runs[setting][seed]`` and the acceptance."""
    table = {name: {m: summary([r[m] for r in per_seed.values()]) for m in METRICS} for name, per_seed in runs.items()}
    dfl, plain = table["dfl"], table["plain"]
    spread = max(dfl["balanced_accuracy"]["spread"] or 0.0, plain["balanced_accuracy"]["spread"] or 0.0)
    margin = dfl["balanced_accuracy"]["mean"] - plain["balanced_accuracy"]["mean"]
    return {"runs": runs, "summary": table,
            "dfl_auc_at_least_plain": dfl["macro_auc"]["mean"] >= plain["macro_auc"]["mean"],
            "dfl_balanced_accuracy_margin": round(margin, 4), "larger_seed_spread": spread,
            "dfl_wins_balanced_accuracy": margin > spread}


def held_out_cohort(folder: Path, patients: int, seed: int) -> Path:
    """A second cohort of the same generator; evaluated with no split, so every row counts."""
    from spine_dfl.synth import generate_cohort

    if not (folder / "manifest.csv").is_file():
        generate_cohort(folder, patients=patients, seed=seed)
    return folder / "manifest.csv"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--config", default="cpu_demo")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--patients", type=int, default=64)
    parser.add_argument("--cohort-seed", type=int, default=7)
    parser.add_argument("--held-out-patients", type=int, default=64,
                        help="patients of the held-out cohort (seed --cohort-seed + 1) evaluated whole; 0 = none")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="config override, both settings")
    args = parser.parse_args()
    if len(args.seeds) < 3:
        parser.error("at least 3 seeds: the comparison needs each setting's seed spread")

    from spine_dfl.synth import generate_cohort

    cohort = args.out / "cohort"
    if not (cohort / "manifest.csv").is_file():
        generate_cohort(cohort, patients=args.patients, seed=args.cohort_seed)
    held_out = (held_out_cohort(args.out / "held_out_cohort", args.held_out_patients, args.cohort_seed + 1)
                if args.held_out_patients > 0 else None)
    runs: dict[str, dict[str, dict[str, dict[str, float]]]] = {}
    for seed in args.seeds:
        for name, setting in SETTINGS.items():
            by_set = run_one(cohort / "manifest.csv", held_out, args.config, seed, [*args.overrides, setting],
                             args.out / name / f"seed{seed}")
            for evaluation_set, values in by_set.items():
                runs.setdefault(evaluation_set, {}).setdefault(name, {})[str(seed)] = values
    print(json.dumps({
        "config": args.config, "overrides": args.overrides, "seeds": args.seeds, "patients": args.patients,
        "cohort_seed": args.cohort_seed, "held_out_patients": args.held_out_patients,
        "held_out_seed": args.cohort_seed + 1 if held_out is not None else None,
        **{evaluation_set: verdict(per_setting) for evaluation_set, per_setting in runs.items()},
    }, indent=1))


if __name__ == "__main__":
    main()
