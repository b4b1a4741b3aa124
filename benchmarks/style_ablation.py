"""Benchmark: which of another site's differences costs a model its AUC?

Images the same patients (same seed, so the same anatomy and grades, ``spine_dfl.synth.style``)
in the training style with one group of a target style's knobs switched to the target's
(detector, beam, response, edges, photometric, habitus, ROI convention), plus the target style
without its ROI convention and with it alone, and evaluates every checkpoint given on each
cohort's split.  Prints one JSON object: macro AUC and per-class AUC per variant and checkpoint.

    python benchmarks/style_ablation.py OUT --seed 1 --checkpoint plain=RUNS/plain/train/best.pt \\
        --checkpoint augmented=RUNS/augmented/train/best.pt

(``RUNS`` from ``benchmarks/cross_style.py RUNS --seed 1``: the same seed draws the same patients.)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from spine_dfl.workflows.evaluate import evaluate
from spine_dfl.synth import STYLES, generate_cohort
from spine_dfl.synth.style import SynthStyle

GROUPS: dict[str, tuple[str, ...]] = {
    "detector": ("dose_scale", "blur_sigma", "noise_correlation", "pixel_binning"),
    "beam": ("scatter_per_attenuation", "heel_effect"),
    "response": ("response_exponent", "equalisation"),
    "edges": ("edge_sigma", "edge_gain"),
    "photometric": ("photometric",),
    "habitus": ("soft_tissue_scale",),
    "roi": ("roi_margin", "roi_jitter"),
}


def variants(base: SynthStyle, target: SynthStyle) -> dict[str, SynthStyle]:
    """``base`` with each group of ``target``'s knobs; ``all_but_roi``: every group except the ROI
    convention; ``all``: ``target`` itself (under the base's name prefix, for cohort.json)."""
    def knobs(groups: list[str]) -> dict[str, Any]:
        return {name: getattr(target, name) for group in groups for name in GROUPS[group]}

    out = {group: dataclasses.replace(base, name=f"{base.name}+{target.name}_{group}", **knobs([group]))
           for group in GROUPS}
    out["all_but_roi"] = dataclasses.replace(base, name=f"{base.name}+{target.name}_all_but_roi",
                                             **knobs([g for g in GROUPS if g != "roi"]))
    out["all"] = dataclasses.replace(base, name=f"{base.name}+{target.name}_all", **knobs(list(GROUPS)))
    return out


def _checkpoints(values: list[str]) -> dict[str, Path]:
    named = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or not name or not path:
            raise SystemExit(f"error: --checkpoint wants NAME=PATH, got {value!r}")
        named[name] = Path(path)
    return named


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="working folder (one cohort per variant, evaluations)")
    parser.add_argument("--checkpoint", action="append", required=True, metavar="NAME=PATH",
                        help="a checkpoint to evaluate (repeatable)")
    parser.add_argument("--seed", type=int, default=0, help="cohort seed: the one the checkpoints' cohort used")
    parser.add_argument("--patients", type=int, default=64)
    parser.add_argument("--base-style", default="default", choices=sorted(STYLES))
    parser.add_argument("--target-style", default="site_c", choices=sorted(STYLES))
    parser.add_argument("--split", default="test")
    parser.add_argument("--bootstrap", type=int, default=10, help="bootstrap resamples per evaluation (default 10)")
    args = parser.parse_args(argv)
    checkpoints = _checkpoints(args.checkpoint)
    results: dict[str, Any] = {}
    for variant, style in variants(STYLES[args.base_style], STYLES[args.target_style]).items():
        folder = args.out / variant
        if not (folder / "manifest.csv").is_file():
            generate_cohort(folder, patients=args.patients, seed=args.seed, style=style, overwrite=True)
        results[variant] = {}
        for name, checkpoint in checkpoints.items():
            metrics = evaluate(checkpoint, folder / "manifest.csv", args.split, args.out / f"eval_{variant}_{name}",
                               n_bootstrap=args.bootstrap, title=f"{name} on {style.name}")["overall"]
            results[variant][name] = {"macro_auc": metrics["macro_auc"],
                                      "per_class_auc": {k: v["auc_ovr"] for k, v in metrics["per_class"].items()}}
    print(json.dumps({"seed": args.seed, "patients": args.patients, "base_style": args.base_style,
                      "target_style": args.target_style, "split": args.split, "variants": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
