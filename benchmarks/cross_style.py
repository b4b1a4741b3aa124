"""Benchmark: does the grader survive a change of site?  Train on one synth style, evaluate on others.

The same seed draws the same patients, levels and grades in every style (``spine_dfl.synth.style``),
so each style's test split holds exactly the training style's test patients, imaged another way:
the drop in AUC is the acquisition alone.  Two arms are trained on the training style, with the
same config and ``--set`` overrides: ``plain`` (plus ``--plain-set``, by default
``data.acquisition.enabled=false``, whatever the config says) and ``augmented`` (plus
``--augment-set``, by default ``data.acquisition.enabled=true``).

Prints one JSON object: per arm the in-style and out-of-style macro AUC, binary (normal vs
fracture) AUC and per-class one-vs-rest AUC, the mean and worst out-of-style values and the drop
(in-style minus mean out-of-style); then ``augmented drop / plain drop`` and the issue's
acceptance checks (drop at most half, out-of-style macro AUC >= 0.90).

Every model is evaluated twice: on each style's test split (13 patients of 64, ~180 vertebrae,
where one vertebra moves a class's AUC by ~0.01) and, with ``--held-out-patients N`` (default
64), on every vertebra of a held-out cohort of N patients drawn with seed ``--seed + 1000`` in each
style (again the same patients in every style).  Each arm's ``held_out`` block and
``acceptance_held_out`` are the same figures on that cohort, five times the vertebrae of the test
split for no extra training.

The optional third arm, ``native`` (``--arms plain,augmented,native``), trains one model per
evaluation style on that style's own cohort (the plain arm's settings) and evaluates it in its
own style: what a model trained at that site reaches, an estimate of how much of the drop the
images leave recoverable at all.  With it the checks add, per style, the part of the plain arm's
loss the augmentation recovered, ``(augmented - plain) / (native - plain)``, and the drop ratio
the augmented arm would have if it matched every native model out of style.

    python benchmarks/cross_style.py /tmp/cross_style --patients 64 --config cpu_demo
    python benchmarks/cross_style.py /tmp/cs_smoke --patients 8 --held-out-patients 4 --set train.epochs=1 --arms plain
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from spine_dfl.config import ConfigError, load_config
from spine_dfl.engine.train import train
from spine_dfl.workflows.evaluate import evaluate
from spine_dfl.synth import STYLES, generate_cohort

ARMS = ("plain", "augmented", "native")
HELD_OUT_SEED_OFFSET = 1000  # far from the next seeds' training cohorts


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="working folder (cohorts, runs, evaluations)")
    parser.add_argument("--patients", type=int, default=64, help="patients per cohort (default 64, as the demo)")
    parser.add_argument("--seed", type=int, default=0, help="cohort and training seed (default 0)")
    parser.add_argument("--config", default="cpu_demo", help="training config name or YAML path (default cpu_demo)")
    parser.add_argument("--train-style", default="default", choices=sorted(STYLES))
    parser.add_argument("--eval-styles", nargs="+", default=["site_b", "site_c"], choices=sorted(STYLES))
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override for both arms (repeatable)")
    parser.add_argument("--augment-set", action="append", default=None, metavar="KEY=VALUE",
                        help="extra overrides of the augmented arm (default: data.acquisition.enabled=true)")
    parser.add_argument("--plain-set", action="append", default=None, metavar="KEY=VALUE",
                        help="extra overrides of the plain arm (default: data.acquisition.enabled=false)")
    parser.add_argument("--arms", default="plain,augmented",
                        help=f"comma-separated arms to run, of {', '.join(ARMS)} (default plain,augmented)")
    parser.add_argument("--split", default="test", help="manifest split evaluated in every style (default test)")
    parser.add_argument("--held-out-patients", type=int, default=64,
                        help=f"patients of the held-out cohort (seed --seed + {HELD_OUT_SEED_OFFSET}) evaluated whole, "
                             "per style; 0 = none (default 64)")
    parser.add_argument("--bootstrap", type=int, default=200, help="bootstrap resamples per evaluation (default 200)")
    args = parser.parse_args(argv)
    args.arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    if not args.arms or any(a not in ARMS for a in args.arms):
        parser.error(f"--arms must name some of {', '.join(ARMS)}")
    if args.augment_set is None:
        args.augment_set = ["data.acquisition.enabled=true"]
    if args.plain_set is None:
        args.plain_set = ["data.acquisition.enabled=false"]
    return args


def arm_overrides(arm: str, args: argparse.Namespace) -> list[str]:
    """The overrides of one arm: the seed, ``--set``, then the arm's own."""
    return [f"seed={args.seed}", *args.overrides, *(args.augment_set if arm == "augmented" else args.plain_set)]


def _cohorts(args: argparse.Namespace, folder: Path, seed: int, patients: int) -> dict[str, Path]:
    """One cohort per style under ``folder``, same seed and size; one already there with that
    style, seed and size is reused."""
    manifests = {}
    for style in dict.fromkeys([args.train_style, *args.eval_styles]):
        cohort = folder / style
        summary = cohort / "cohort.json"
        if summary.exists():
            existing = json.loads(summary.read_text())
            if (existing.get("seed"), existing.get("patients"), existing.get("style", {}).get("name", "default")) == (
                    seed, patients, style):
                manifests[style] = cohort / "manifest.csv"
                continue
        generate_cohort(cohort, patients=patients, seed=seed, style=style, overwrite=True)
        manifests[style] = cohort / "manifest.csv"
    return manifests


def evaluation_sets(args: argparse.Namespace) -> dict[str, tuple[dict[str, Path], str | None]]:
    """Per evaluation set, its manifest per style and the split evaluated (None = every row):
    ``test`` (the training cohorts' ``--split``) and, unless ``--held-out-patients 0``, ``held_out``."""
    sets = {"test": (_cohorts(args, args.out / "cohorts", args.seed, args.patients), args.split)}
    if args.held_out_patients > 0:
        held_out = _cohorts(args, args.out / "held_out_cohorts", args.seed + HELD_OUT_SEED_OFFSET,
                            args.held_out_patients)
        sets["held_out"] = (held_out, None)
    return sets


def _scores(metrics: dict[str, Any]) -> dict[str, Any]:
    overall = metrics["overall"]
    return {
        "macro_auc": overall["macro_auc"],
        "binary_auc": overall["binary"]["auc"],
        "per_class_auc": {name: block["auc_ovr"] for name, block in overall["per_class"].items()},
        "vertebrae": int(sum(block["support"] for block in overall["per_class"].values())),
    }


def _mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def _difference(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def _style_summary(scores: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """One evaluation set's figures of one arm: in style, out of style, their mean and worst, the drop."""
    in_style = scores[args.train_style]
    out_of_style = {s: scores[s] for s in args.eval_styles if s != args.train_style}
    summary = {key: {"mean": _mean([v[key] for v in out_of_style.values()]),
                     "worst": min((v[key] for v in out_of_style.values() if v[key] is not None), default=None)}
               for key in ("macro_auc", "binary_auc")}
    return {"in_style": in_style, "out_of_style": out_of_style, "out_of_style_summary": summary,
            "drop": {key: _difference(in_style[key], summary[key]["mean"]) for key in ("macro_auc", "binary_auc")}}


def _evaluate(checkpoint: Path, manifest: Path, split: str | None, out: Path, title: str,
              args: argparse.Namespace) -> dict[str, Any]:
    return _scores(evaluate(checkpoint, manifest, split, out, n_bootstrap=args.bootstrap, title=title))


def run_arm(arm: str, args: argparse.Namespace, sets: dict[str, tuple[dict[str, Path], str | None]]) -> dict[str, Any]:
    """Train one arm on the training style; evaluate its best checkpoint on every style of every
    evaluation set.  The test set's figures stay at the top level (as before held-out cohorts);
    the held-out cohort's are under ``held_out``."""
    overrides = arm_overrides(arm, args)
    config = load_config(args.config, overrides)
    started = time.monotonic()
    result = train(sets["test"][0][args.train_style], config, args.out / arm / "train")
    trained = time.monotonic() - started
    by_set = {}
    for name, (manifests, split) in sets.items():
        suffix = "" if name == "test" else f"_{name}"
        scores = {style: _evaluate(result.best_checkpoint, manifests[style], split, args.out / arm / f"eval_{style}{suffix}",
                                   f"{arm}: trained on {args.train_style}, {style} [{split or name}]", args)
                  for style in dict.fromkeys([args.train_style, *args.eval_styles])}
        by_set[name] = _style_summary(scores, args)
    held_out = {"held_out": by_set["held_out"]} if "held_out" in by_set else {}
    return {"overrides": overrides, "train_seconds": round(trained, 1), "epochs_run": result.epochs_run,
            **by_set["test"], **held_out}


def run_native(args: argparse.Namespace, sets: dict[str, tuple[dict[str, Path], str | None]]) -> dict[str, Any]:
    """One model per evaluation style, trained on that style's cohort with the plain arm's settings
    and evaluated in its own style (test split, and held-out cohort when there is one): what a
    model trained at that site reaches."""
    overrides = arm_overrides("native", args)
    config = load_config(args.config, overrides)
    by_set: dict[str, dict[str, Any]] = {name: {} for name in sets}
    for style in dict.fromkeys(s for s in args.eval_styles if s != args.train_style):
        result = train(sets["test"][0][style], config, args.out / "native" / style / "train")
        for name, (manifests, split) in sets.items():
            suffix = "" if name == "test" else f"_{name}"
            by_set[name][style] = _evaluate(result.best_checkpoint, manifests[style], split,
                                            args.out / "native" / style / f"eval{suffix}",
                                            f"native: trained on {style}, {style} [{split or name}]", args)
    held_out = {"held_out": {"in_own_style": by_set["held_out"]}} if "held_out" in by_set else {}
    return {"overrides": overrides, "in_own_style": by_set["test"], **held_out}


def _recovered(arms: dict[str, Any]) -> dict[str, Any]:
    """Against the native models: the part of the plain arm's out-of-style loss the augmentation
    recovered, per style, and the drop ratio had the augmented arm matched every native model."""
    plain, augmented = arms["plain"], arms["augmented"]
    native = arms["native"]["in_own_style"]
    recovered = {}
    for style, scores in native.items():
        gap = scores["macro_auc"] - plain["out_of_style"][style]["macro_auc"]
        gain = augmented["out_of_style"][style]["macro_auc"] - plain["out_of_style"][style]["macro_auc"]
        recovered[style] = gain / gap if gap > 0 else None
    best_drop = augmented["in_style"]["macro_auc"] - _mean([s["macro_auc"] for s in native.values()])
    plain_drop = plain["drop"]["macro_auc"]
    return {"recovered_of_native_gap": recovered,
            "drop_ratio_if_native_reached": best_drop / plain_drop if plain_drop is not None and plain_drop > 0 else None}


def acceptance(arms: dict[str, Any]) -> dict[str, Any]:
    """The issue's checks: augmented drop <= half the plain drop; worst out-of-style macro AUC >= 0.90."""
    if not {"plain", "augmented"} <= set(arms):
        return {}
    plain, augmented = arms["plain"]["drop"]["macro_auc"], arms["augmented"]["drop"]["macro_auc"]
    worst = arms["augmented"]["out_of_style_summary"]["macro_auc"]["worst"]
    # a ratio of drops means something only when the plain arm did drop
    ratio = augmented / plain if plain is not None and plain > 0 and augmented is not None else None
    checks = {
        "drop_ratio": ratio,
        "drop_at_most_half": ratio is not None and ratio <= 0.5,
        "out_of_style_macro_auc_at_least_0_90": worst is not None and worst >= 0.90,
    }
    return {**checks, **_recovered(arms)} if "native" in arms else checks


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for arm in args.arms:  # fail on a bad override before minutes of synthesis
        try:
            load_config(args.config, arm_overrides(arm, args))
        except ConfigError as exc:
            print(f"error: the {arm} arm's config: {exc}", file=sys.stderr)
            return 2
    sets = evaluation_sets(args)
    arms = {arm: run_native(args, sets) if arm == "native" else run_arm(arm, args, sets) for arm in args.arms}
    held_out = {}
    if "held_out" in sets:
        held_out = {"held_out_patients": args.held_out_patients, "held_out_seed": args.seed + HELD_OUT_SEED_OFFSET,
                    "acceptance_held_out": acceptance({arm: block["held_out"] for arm, block in arms.items()})}
    print(json.dumps({
        "train_style": args.train_style, "eval_styles": args.eval_styles, "patients": args.patients, "seed": args.seed,
        "config": str(args.config), "split": args.split, "arms": arms, "acceptance": acceptance(arms), **held_out,
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
