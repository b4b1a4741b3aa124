"""``spine-dfl train``: train a DFL-CNN (also under torchrun for DDP)."""

from __future__ import annotations

import argparse
from pathlib import Path

from spine_dfl.cli.common import EXIT_OK


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a DFL-CNN on a manifest (selects on val, never test)",
                       description="Train DFL-CNN. Validation split selects the model; test is never looked at. "
                                   "Run under `torchrun --nproc_per_node N -m spine_dfl train ...` for DDP.")
    p.add_argument("manifest", type=Path, help="manifest CSV")
    p.add_argument("--config", default="cpu_demo",
                   help="YAML config file or shipped name (cpu_demo, dfl_vgg16_448, dfl_resnet50_448)")
    p.add_argument("--out", type=Path, default=Path("runs/train"),
                   help="output folder for checkpoints, metrics.csv and the report")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.epochs=5 (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue a killed run from OUT/last.pt")
    p.add_argument("--no-report", action="store_true", help="skip the validation report at the end")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from spine_dfl.workflows.train import train_and_report

    run_result = train_and_report(args.manifest, args.config, args.overrides, args.out, resume=args.resume,
                                  report=not args.no_report)
    if run_result.is_main_process:
        result = run_result.result
        print(f"best checkpoint: {result.best_checkpoint} (epoch {result.best_epoch}, "
              f"val {run_result.select_metric} {result.best_score:.4f})")
    return EXIT_OK
