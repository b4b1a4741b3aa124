"""``spine-dfl demo``: synth -> train -> evaluate -> explain on the embedded synthetic cohort."""

from __future__ import annotations

import argparse
from pathlib import Path

from spine_dfl.cli.common import EXIT_OK, add_device, add_out_options, fmt, prepare_out


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="synthesise a cohort, train the CPU demo, evaluate and explain the test patients",
                       description="End to end on the embedded synthetic cohort: synth -> train (cpu_demo) -> "
                                   "evaluate on held-out test patients -> heatmaps.")
    p.add_argument("--out", type=Path, default=Path("runs/demo"), help="output folder (default runs/demo)")
    p.add_argument("--patients", type=int, default=64, help="synthetic patients, one radiograph each (default 64)")
    p.add_argument("--seed", type=int, default=0, help="one seed for the cohort, split, init and training")
    p.add_argument("--config", default="cpu_demo", help="training config (default cpu_demo)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value (repeatable)")
    p.add_argument("--no-explain", action="store_true", help="skip the heatmaps")
    p.add_argument("--locator-set", dest="locator_overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a value of the locator's config, locator_cpu (repeatable)")
    p.add_argument("--no-locator", action="store_true",
                   help="skip the vertebra locator (and the end-to-end figures without the ROI file)")
    p.add_argument("--view-budget-s", type=float, default=55.0, metavar="S",
                   help="seconds for training the view gate embedded in the locator (default 55)")
    p.add_argument("--no-view", action="store_true", help="skip the view gate (lateral view and orientation classifier)")
    add_device(p, default=None, what="the grader and the locator train and run")
    add_out_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from spine_dfl.workflows.demo import run_demo

    prepare_out(args.out, "demo", overwrite=args.overwrite)
    device = [f"device={args.device}"] if args.device else []
    result = run_demo(args.out, patients=args.patients, seed=args.seed, config=args.config,
                      overrides=[*device, *args.overrides], explain=not args.no_explain,
                      locator_config=None if args.no_locator else "locator_cpu",
                      locator_overrides=[*device, *args.locator_overrides], view_budget_s=None if args.no_view else args.view_budget_s)
    overall = result.metrics["overall"]
    per_class = {name: block["auc_ovr"] for name, block in overall.get("per_class", {}).items()}
    print()
    print(f"done in {result.seconds:.0f} s")
    print(f"  test vertebrae: {overall['n']}, accuracy {overall['accuracy']:.3f}, "
          f"macro AUC (fused) {fmt(overall['macro_auc'])}")
    if per_class:
        print("  one-vs-rest AUC per class: " + ", ".join(f"{k} {fmt(v)}" for k, v in per_class.items()))
    _print_located(result.metrics)
    print(f"  checkpoint:   {result.checkpoint}")
    if result.locator is not None:
        print(f"  locator:      {result.locator}")
    if result.view is not None:
        val = (result.view_metrics or {}).get("validation") or {}
        print(f"  view gate:    {result.view} (in the locator; validation lateral accuracy "
              f"{fmt(val.get('lateral_accuracy'))}, orientation accuracy {fmt(val.get('orientation_accuracy'))})")
    print(f"  metrics:      {result.metrics_json}")
    print(f"  report:       {result.report_html}")
    if result.gallery_html is not None:
        print(f"  heatmaps:     {result.gallery_html}")
    return EXIT_OK


def _print_located(metrics: dict) -> None:
    """The end-to-end figures (located crops, no ROI file) and the locator's, when the demo has them."""
    located, figures = metrics.get("end_to_end"), metrics.get("locator") or {}
    if not located:
        return
    overall = located["overall"]
    print(f"  located crops, no ROI file: {overall['n']} vertebrae, accuracy {overall['accuracy']:.3f}, "
          f"macro AUC (fused) {fmt(overall['macro_auc'])}")
    shown = {key: figures.get(key) for key in ("detection_recall_iou50", "identification_rate", "median_centre_error_mm")}
    if any(value is not None for value in shown.values()):
        print("  locator: " + ", ".join(f"{key} {fmt(value)}" for key, value in shown.items()))
