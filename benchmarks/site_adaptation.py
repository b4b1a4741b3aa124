"""Benchmark: how many labelled patients of a new site does a model need?  Fine-tuning against scratch.

The new site is the DRR phantom (``spine_dfl.phantom.cohort.generate_drr_cohort``: a 3D phantom CT
projected by the cone-beam renderer); the model comes from the other generator (``spine-dfl
synth``).  Per seed, one cohort of each generator is drawn; the grader (``--grader-config``, default
cpu_demo) and the locator (``--locator-config``, default locator_cpu) are trained on the synth cohort.
Then, for every budget of labelled DRR patients (default 4 8 16 32, drawn from the DRR cohort's
train and val patients, a quarter of them (at least one) kept for validation, the rarest grades
first so that the training part holds every grade it can), three arms are scored on the DRR test split:

- ``zero_shot``: the synth-trained checkpoints as they are;
- ``fine_tuned``: ``spine-dfl train BUDGET --init`` each synth checkpoint (the few-label defaults:
  a tenth of the learning rates, at most 10 epochs, early stop after 3; ``--set`` overrides them);
- ``scratch``: the same config trained from random init on the same patients;

plus ``reference``: trained from scratch on all the DRR cohort's train and val patients.  Figures:
the grader's macro AUC (and balanced accuracy, ECE) on the manifest's crops; the locator's
identification rate and detection recall.  A fine-tuned locator keeps its parent's levels, so every
locator arm trains and is scored on the DRR rows of the synth levels (T4-L5) only.  An arm that
cannot run (a budget with fewer grades than the test split, for scratch) reports its error.

Prints one JSON object (per seed, then mean/min/max over seeds per arm and budget); ``--plot PNG``
draws the curves.  The full run takes hours on 2 cores; a small instance:

    python benchmarks/site_adaptation.py /tmp/siteadapt --seeds 0 1 2 --plot docs/img/site_adaptation.png
    python benchmarks/site_adaptation.py /tmp/siteadapt_smoke --patients 8 --budgets 2 4 --seeds 0 \\
        --set train.epochs=1 --locator-set train.epochs=1
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the cohort and score helpers of cross_generator
from cross_generator import add_run_arguments, cohort, grader_scores, locator_scores, overrides_error  # noqa: E402

from spine_dfl.config import load_config  # noqa: E402
from spine_dfl.io.errors import SpineDflError  # noqa: E402

ARMS = ("fine_tuned", "scratch")
HEADLINE = {"grader": "macro_auc", "locator": "identification_rate"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(parser, "cohort, draw and training seeds")
    parser.add_argument("--budgets", type=int, nargs="+", default=[4, 8, 16, 32], help="labelled DRR patients")
    parser.add_argument("--plot", type=Path, default=None, metavar="PNG", help="write the curves here")
    parser.add_argument("--models-from", type=Path, default=None, metavar="XGEN_OUT",
                        help="a benchmarks/cross_generator.py OUT with these seeds: its cohorts, its synth-trained "
                             "models as the parents and its DRR-trained models as the reference (none retrained)")
    return parser.parse_args(argv)


def draw_budget(table: pd.DataFrame, budget: int, seed: int) -> tuple[list[str], list[str]] | None:
    """(train patients, val patients) of one budget among the table's train and val patients, or None when
    there are fewer.  A quarter (at least one) validate; the training part takes, rarest grade first, a
    patient with each grade it lacks, then fills up in a seeded order."""
    pool = table[table["split"].isin(["train", "val"])]
    patients = sorted(pool["patient_id"].astype(str).unique())
    if budget > len(patients) or budget < 2:
        return None
    order = [patients[i] for i in np.random.default_rng([seed, budget, 0x5A]).permutation(len(patients))]
    grades = pool.groupby(pool["patient_id"].astype(str))["label"].agg(set).to_dict()
    n_train = budget - max(1, round(budget / 4))
    chosen: list[str] = []
    for grade in pool["label"].value_counts(ascending=True).index:
        if len(chosen) < n_train and not any(grade in grades[p] for p in chosen):
            chosen += [p for p in order if grade in grades[p] and p not in chosen][:1]
    chosen += [p for p in order if p not in chosen][:n_train - len(chosen)]
    val = [p for p in order if p not in chosen][:budget - n_train]
    return chosen, val


def write_subset(manifest: Path, out: Path, patients: dict[str, str] | None, levels: list[str] | None) -> Path:
    """A manifest of ``manifest``'s rows (image paths absolute): ``patients`` -> their new split (None: the
    rows as they are), only the rows of ``levels`` when given."""
    table = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    table["image"] = [str((manifest.parent / p).resolve()) for p in table["image"]]
    if patients is not None:
        table = table[table["patient_id"].isin(list(patients))].copy()
        table["split"] = table["patient_id"].map(patients)
    if levels is not None:
        table = table[table["vertebra"].isin(levels)]
    out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out, index=False)
    return out


def _scored(fn: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """An arm's figures, or its one-line error (a budget that cannot train one arm does not end the run)."""
    try:
        return fn(*args, **kwargs)
    except SpineDflError as exc:
        return {"error": str(exc)}


def _existing(path: Path) -> Path:
    if not path.is_file():
        raise SystemExit(f"error: --models-from: {path} is missing (run benchmarks/cross_generator.py with these seeds)")
    return path


class Seed:
    """One seed's cohorts, synth-trained parents and DRR test sets; trains and scores the arms."""

    def __init__(self, seed: int, args: argparse.Namespace) -> None:
        from spine_dfl.workflows.train import train

        self.seed, self.args, self.root = seed, args, args.out / f"seed{seed}"
        reused = None if args.models_from is None else args.models_from / f"seed{seed}"
        models = ["grader"] + ([] if args.no_locator else ["locator"])
        self.reference: dict[str, Path] = {}
        if reused is not None:  # cross_generator.py's runs: trained_on_synth = the parents, trained_on_drr = the reference
            self.parents = {m: _existing(reused / "trained_on_synth" / m / "best.pt") for m in models}
            self.reference = {m: _existing(reused / "trained_on_drr" / m / "best.pt") for m in models}
        cohorts = self.root / "cohorts" if reused is None else reused / "cohorts"
        self.synth = cohort("synth", cohorts / "synth", args.patients, seed)
        self.drr = cohort("drr", cohorts / "drr", args.patients, seed)
        self.drr_table = pd.read_csv(self.drr, dtype=str, keep_default_na=False)
        if reused is None:
            self.parents = {m: train(self.synth, self.config(m), self.root / "synth" / m, progress=False).best_checkpoint
                            for m in models}
        self.levels: list[str] = []
        if not args.no_locator:
            import torch

            self.levels = list(torch.load(self.parents["locator"], weights_only=True)["levels"])
            self.locator_test = write_subset(self.drr, self.root / "locator_test.csv", None, self.levels)

    def config(self, model: str) -> Any:
        name = self.args.grader_config if model == "grader" else self.args.locator_config
        return load_config(name, [f"seed={self.seed}", *self.overrides(model)])

    def overrides(self, model: str) -> list[str]:
        return self.args.grader_set if model == "grader" else self.args.locator_set

    def score(self, model: str, checkpoint: Path, name: str) -> dict[str, Any]:
        """One checkpoint's figures on the DRR test split."""
        from spine_dfl.locate.evaluate import evaluate_checkpoint
        from spine_dfl.workflows.evaluate import evaluate

        if model == "locator":
            return locator_scores(evaluate_checkpoint(checkpoint, self.locator_test, "test"))
        return grader_scores(evaluate(checkpoint, self.drr, "test", self.root / "eval" / name,
                                      n_bootstrap=self.args.bootstrap, title=f"{name}, drr [test]"))

    def train_arm(self, model: str, arm: str, manifest: Path, out: Path) -> dict[str, Any]:
        """Train one arm (``fine_tuned`` from the synth parent, else from scratch) and score it."""
        from spine_dfl.workflows.train import run_config, train

        if arm == "fine_tuned":
            config, parent = run_config(None, [f"seed={self.seed}", *self.overrides(model)], self.parents[model])
        else:
            config, parent = self.config(model), None
        result = train(manifest, config, out, init=parent, progress=False)
        name = "_".join(out.relative_to(self.root).parts)  # budget8_fine_tuned_grader, drr_all_grader
        return {**self.score(model, result.best_checkpoint, name), "epochs_run": result.epochs_run}

    def manifests(self, name: str, patients: dict[str, str] | None) -> dict[str, Path]:
        out = {"grader": write_subset(self.drr, self.root / name / "manifest.csv", patients, None)}
        if not self.args.no_locator:
            out["locator"] = write_subset(self.drr, self.root / name / "locator.csv", patients, self.levels)
        return out

    def run(self) -> dict[str, Any]:
        models = list(self.parents)
        result: dict[str, Any] = {
            "zero_shot": {m: self.score(m, self.parents[m], f"zero_shot_{m}") for m in models}, "budgets": {}}
        if self.reference:  # trained on every DRR training patient by cross_generator.py (all its levels)
            result["reference"] = {m: _scored(self.score, m, self.reference[m], f"reference_{m}") for m in models}
        else:
            everything = self.manifests("drr_all", None)
            result["reference"] = {m: _scored(self.train_arm, m, "scratch", everything[m], self.root / "drr_all" / m)
                                   for m in models}
        for budget in self.args.budgets:
            drawn = draw_budget(self.drr_table, budget, self.seed)
            if drawn is None:
                result["budgets"][str(budget)] = {"error": f"budget {budget}: needs 2 to the "
                                                           f"{self.drr_table[self.drr_table['split'] != 'test']['patient_id'].nunique()}"
                                                           " train and val patients of the cohort"}
                continue
            train_ids, val_ids = drawn
            split = {**{p: "train" for p in train_ids}, **{p: "val" for p in val_ids}}
            paths = self.manifests(f"budget{budget}", split)
            block: dict[str, Any] = {"patients": {"train": len(train_ids), "val": len(val_ids)}}
            for arm in ARMS:
                block[arm] = {m: _scored(self.train_arm, m, arm, paths[m], self.root / f"budget{budget}" / f"{arm}_{m}")
                              for m in models}
            result["budgets"][str(budget)] = block
        return result


def _stats(values: list[float]) -> dict[str, float] | None:
    values = [v for v in values if v is not None and math.isfinite(v)]
    return {"mean": sum(values) / len(values), "min": min(values), "max": max(values), "n": len(values)} if values \
        else None


def mean_over_seeds(per_seed: dict[int, dict[str, Any]], budgets: list[int]) -> dict[str, Any]:
    """Mean, min and max of each arm's headline figures (macro AUC, identification rate) over the seeds."""
    def figure(block: dict[str, Any] | None, model: str) -> float | None:
        return ((block or {}).get(model) or {}).get(HEADLINE[model])

    out: dict[str, Any] = {}
    for model in HEADLINE:
        entry: dict[str, Any] = {
            fixed: _stats([figure(s[fixed], model) for s in per_seed.values()]) for fixed in ("zero_shot", "reference")}
        for arm in ARMS:
            entry[arm] = {str(b): _stats([figure(s["budgets"][str(b)].get(arm), model) for s in per_seed.values()])
                          for b in budgets}
        out[model] = entry
    return out


def plot(mean: dict[str, Any], budgets: list[int], path: Path) -> None:
    """The grader's macro AUC and the locator's identification rate against the labelled-patient budget."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = [m for m in HEADLINE if mean[m]["zero_shot"] is not None]
    fig, axes = plt.subplots(1, len(models), figsize=(5.5 * len(models), 4), squeeze=False)
    for ax, model in zip(axes[0], models):
        for arm, colour in zip(ARMS, ("tab:blue", "tab:orange")):
            xs = [b for b in budgets if mean[model][arm][str(b)]]
            stats = [mean[model][arm][str(b)] for b in xs]
            ax.plot(xs, [s["mean"] for s in stats], "o-", color=colour, label=arm.replace("_", "-"))
            ax.fill_between(xs, [s["min"] for s in stats], [s["max"] for s in stats], color=colour, alpha=0.2)
        for fixed, style in (("zero_shot", ":"), ("reference", "--")):
            if mean[model][fixed]:
                ax.axhline(mean[model][fixed]["mean"], color="grey", linestyle=style, label=fixed.replace("_", "-"))
        ax.set_xscale("log", base=2)
        ax.set_xlim(min(budgets) / 1.4, max(budgets) * 1.4)  # also where an arm has no figure to draw
        ax.set_xticks(budgets, [str(b) for b in budgets])
        ax.minorticks_off()
        ax.set_xlabel("labelled DRR patients")
        ax.set_ylabel({"grader": "grader macro AUC", "locator": "locator identification rate"}[model])
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    error = overrides_error(args)
    if error is not None:
        print(error, file=sys.stderr)
        return 2
    per_seed = {seed: Seed(seed, args).run() for seed in args.seeds}
    mean = mean_over_seeds(per_seed, args.budgets)
    if args.plot is not None:
        plot(mean, args.budgets, args.plot)
    print(json.dumps({"patients": args.patients, "budgets": args.budgets, "seeds": args.seeds,
                      "grader_config": str(args.grader_config), "locator_config": str(args.locator_config),
                      "grader_set": args.grader_set, "locator_set": args.locator_set, "per_seed": per_seed,
                      "mean": mean}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
