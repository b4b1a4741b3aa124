"""``spine-dfl view-train``: the lateral-spine-view score and orientation classifier."""

from __future__ import annotations

import argparse
from pathlib import Path

from spine_dfl.cli.common import EXIT_OK, add_out_options, fmt, prepare_out
from spine_dfl.io.errors import InputError

_DESCRIPTION = """\
Trains the view classifier (spine_dfl.gate.view) from scratch on the CPU: a small CNN on a 128 x 128
letterboxed thumbnail with nine classes, a lateral spine film stored in each of the 8 orientations
(4 turns x mirror) and "not a lateral spine film".

Positives: the lateral films of each --manifest (spine-dfl synth, synth --generator drr, or any manifest
of lateral films), turned canonical by their PatientOrientation, cut as clinics cut them and shown in
random orientations. Negatives: a DRR cohort's AP films, phantom chest / pelvis / trunk APs and CT
slices, extremity DRRs and synthetic non-spine images, all generated in memory.

OUT gets view.pt (checkpoint kind "view"; embed it in a locator with spine-dfl embed-locator --view) and
metrics.json (validation on held-out patients: lateral-vs-not accuracy and AUC, refusal per kind,
orientation accuracy per orientation)."""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("view-train", help="train the lateral-spine-view and orientation classifier",
                       description=_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path, help="output folder (view.pt, metrics.json)")
    p.add_argument("--manifest", type=Path, action="append", required=True,
                   help="a cohort manifest whose films are lateral (repeatable; a DRR cohort adds its AP films as negatives)")
    p.add_argument("--epochs", type=int, default=20, help="epochs (default 20)")
    p.add_argument("--seed", type=int, default=0, help="seed of the samples, the split and the training (default 0)")
    p.add_argument("--time-budget-s", type=float, default=None, metavar="S",
                   help="stop after about S seconds, samples included (the schedule is fitted to it)")
    p.add_argument("--cuts-per-film", type=int, default=6, help="cuts of each lateral film (default 6)")
    add_out_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from spine_dfl.gate.view_train import train_view

    if args.epochs < 1 or args.cuts_per_film < 1:
        raise InputError("--epochs and --cuts-per-film must be at least 1")
    if args.time_budget_s is not None and args.time_budget_s <= 0:
        raise InputError("--time-budget-s must be positive")
    prepare_out(args.out, "view-train", overwrite=args.overwrite)
    result = train_view(args.manifest, args.out, epochs=args.epochs, seed=args.seed, time_budget_s=args.time_budget_s,
                        say=print, cuts_per_film=args.cuts_per_film)
    val = result.metrics.get("validation") or {}
    print(f"view classifier in {result.seconds:.0f} s: validation lateral accuracy {fmt(val.get('lateral_accuracy'))}, "
          f"AUC {fmt(val.get('lateral_auc'))}, orientation accuracy {fmt(val.get('orientation_accuracy'))}")
    print(f"  checkpoint: {result.checkpoint}")
    print(f"  metrics:    {result.metrics_json}")
    return EXIT_OK
