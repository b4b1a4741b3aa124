"""Benchmark: do the models survive another generator?  Train on one phantom, evaluate on both.

Two independent generators draw lateral thoracolumbar films with Genant grades per vertebra:
``synth`` (``spine-dfl synth``, 2D drawing) and ``drr`` (``spine-dfl synth --generator drr``:
a 3D phantom CT projected by the cone-beam DRR renderer, films cut as clinics cut them).  Per
seed, one cohort of each is drawn; the grader (``--grader-config``, default cpu_demo) and the
locator (``--locator-config``, default locator_cpu) are trained on each generator and evaluated
on the test split of both, with the training seed = the cohort seed.

Prints one JSON object: per seed, training generator and evaluation generator, the locator's
detection recall (IoU >= 0.5), identification rate and wrong-level rate (of the located
vertebrae, the share named with a wrong level; a level the locator never saw counts as wrong),
and the grader's macro AUC, balanced accuracy, specificity (normal vs fracture) and ECE on the
manifest's crops; then the means over seeds.  The locator figures cover every manifest row of a
test film, so a synth-trained locator (T4-L5) is also scored on the DRR films' other levels.

    python benchmarks/cross_generator.py /tmp/xgen --seeds 0 1 2
    python benchmarks/cross_generator.py /tmp/xgen_smoke --patients 6 --seeds 0 --set train.epochs=1 \\
        --locator-set train.epochs=1
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from spine_dfl.config import ConfigError, load_config

GENERATORS = ("synth", "drr")
GRADER_KEYS = ("macro_auc", "balanced_accuracy", "specificity", "ece")
LOCATOR_KEYS = ("detection_recall_iou50", "identification_rate", "wrong_level_rate")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(parser, "cohort and training seeds")
    return parser.parse_args(argv)


def add_run_arguments(parser: argparse.ArgumentParser, seeds_help: str) -> None:
    """The options this benchmark and site_adaptation.py share: the working folder, cohort size, seeds, the
    two configs and their overrides, --no-locator and --bootstrap."""
    parser.add_argument("out", type=Path, help="working folder (cohorts, runs, evaluations)")
    parser.add_argument("--patients", type=int, default=64, help="patients per cohort (default 64, as the demo)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help=seeds_help)
    parser.add_argument("--grader-config", default="cpu_demo", help="grader config name or YAML (default cpu_demo)")
    parser.add_argument("--locator-config", default="locator_cpu", help="locator config (default locator_cpu)")
    parser.add_argument("--set", dest="grader_set", action="append", default=[], metavar="KEY=VALUE",
                        help="grader config override (repeatable)")
    parser.add_argument("--locator-set", action="append", default=[], metavar="KEY=VALUE",
                        help="locator config override (repeatable)")
    parser.add_argument("--no-locator", action="store_true", help="grader only")
    parser.add_argument("--bootstrap", type=int, default=200, help="bootstrap resamples of each report")


def overrides_error(args: argparse.Namespace) -> str | None:
    """The error line of a bad config or override, checked before minutes of synthesis; None when both load."""
    try:
        load_config(args.grader_config, args.grader_set)
        load_config(args.locator_config, args.locator_set)
    except ConfigError as exc:
        return f"error: {exc}"
    return None


def cohort_writer(generator: str) -> Callable[..., Any]:
    """The cohort function of a generator: ``f(out_dir, patients=, seed=, overwrite=)``."""
    if generator == "synth":
        from spine_dfl.synth import generate_cohort

        return generate_cohort
    from spine_dfl.phantom.cohort import generate_drr_cohort

    return generate_drr_cohort


def cohort(generator: str, folder: Path, patients: int, seed: int) -> Path:
    """The manifest of ``generator``'s cohort in ``folder``; one already there with that seed and size is reused."""
    summary = folder / "cohort.json"
    if summary.exists():
        existing = json.loads(summary.read_text())
        if (existing.get("seed"), existing.get("patients")) == (seed, patients):
            return folder / "manifest.csv"
    cohort_writer(generator)(folder, patients=patients, seed=seed, overwrite=True)
    return folder / "manifest.csv"


def grader_scores(metrics: dict[str, Any]) -> dict[str, Any]:
    """The figures of one grader evaluation (metrics.json of ``spine-dfl evaluate``)."""
    overall = metrics["overall"]
    return {"macro_auc": overall["macro_auc"], "balanced_accuracy": overall["balanced_accuracy"],
            "specificity": overall["binary"]["specificity"], "ece": overall["ece"],
            "vertebrae": int(sum(block["support"] for block in overall["per_class"].values()))}


def locator_scores(figures: dict[str, Any]) -> dict[str, Any]:
    return {**{key: figures[key] for key in LOCATOR_KEYS}, "vertebrae": figures["vertebrae"], "images": figures["images"]}


def run_seed(seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """Cohorts of both generators, models trained on each, every model evaluated on both test splits."""
    from spine_dfl.locate.evaluate import evaluate_checkpoint
    from spine_dfl.workflows.evaluate import evaluate
    from spine_dfl.workflows.train import train  # the task registry: the grader and the locator alike

    root = args.out / f"seed{seed}"
    manifests = {g: cohort(g, root / "cohorts" / g, args.patients, seed) for g in GENERATORS}
    result: dict[str, Any] = {}
    for trained_on in GENERATORS:
        runs = root / f"trained_on_{trained_on}"
        started = time.monotonic()
        grader = train(manifests[trained_on], load_config(args.grader_config, [f"seed={seed}", *args.grader_set]),
                       runs / "grader")
        locator = None if args.no_locator else train(
            manifests[trained_on], load_config(args.locator_config, [f"seed={seed}", *args.locator_set]), runs / "locator")
        block: dict[str, Any] = {"train_seconds": round(time.monotonic() - started, 1)}
        for evaluated_on in GENERATORS:
            metrics = evaluate(grader.best_checkpoint, manifests[evaluated_on], "test",
                               runs / f"eval_{evaluated_on}", n_bootstrap=args.bootstrap,
                               title=f"grader trained on {trained_on}, {evaluated_on} [test]")
            scores: dict[str, Any] = {"grader": grader_scores(metrics)}
            if locator is not None:
                scores["locator"] = locator_scores(evaluate_checkpoint(locator.best_checkpoint, manifests[evaluated_on], "test"))
            block[evaluated_on] = scores
        result[trained_on] = block
    return result


def mean_over_seeds(per_seed: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Mean, min and max of every figure over the seeds, per training and evaluation generator."""
    out: dict[str, Any] = {}
    for trained_on in GENERATORS:
        for evaluated_on in GENERATORS:
            for model, keys in (("grader", GRADER_KEYS), ("locator", LOCATOR_KEYS)):
                for key in keys:
                    values = [s[trained_on][evaluated_on][model][key] for s in per_seed.values()
                              if model in s[trained_on][evaluated_on] and s[trained_on][evaluated_on][model][key] is not None]
                    if values:
                        out.setdefault(trained_on, {}).setdefault(evaluated_on, {}).setdefault(model, {})[key] = {
                            "mean": sum(values) / len(values), "min": min(values), "max": max(values)}
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    error = overrides_error(args)
    if error is not None:
        print(error, file=sys.stderr)
        return 2
    per_seed = {seed: run_seed(seed, args) for seed in args.seeds}
    print(json.dumps({"patients": args.patients, "seeds": args.seeds, "grader_config": str(args.grader_config),
                      "locator_config": str(args.locator_config), "grader_set": args.grader_set,
                      "locator_set": args.locator_set, "per_seed": per_seed, "mean": mean_over_seeds(per_seed)},
                     indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
