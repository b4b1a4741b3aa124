"""``spine-dfl evaluate``: per-vertebra report of a checkpoint on one manifest split."""

from __future__ import annotations

import argparse
from pathlib import Path

from spine_dfl.cli.common import EXIT_OK, add_batch_size, add_device, add_out_options, fmt, prepare_out


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="per-vertebra evaluation report of a checkpoint on a manifest split",
                       description="Score a manifest split with a checkpoint and write predictions.csv, metrics.json, "
                                   "per_vertebra.csv and a self-contained report.html.")
    p.add_argument("checkpoint", type=Path, help="checkpoint (.pt) written by spine-dfl train")
    p.add_argument("manifest", type=Path, help="manifest CSV")
    p.add_argument("--split", default="test",
                   help="split to evaluate (default test; all rows when the manifest has no split column)")
    p.add_argument("--out", type=Path, default=Path("runs/evaluate"), help="output folder (default runs/evaluate)")
    add_out_options(p)
    p.add_argument("--locator", type=Path, default=None,
                   help="locator checkpoint: also grade the located crops (end to end, in OUT/located) and "
                        "report the locator's figures (default: the one embedded in the checkpoint, if any)")
    add_batch_size(p)
    add_device(p)
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples (patients) for the 95%% intervals")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from spine_dfl.workflows.evaluate import evaluate

    prepare_out(args.out, "evaluate", overwrite=args.overwrite)
    metrics = evaluate(args.checkpoint, args.manifest, args.split, args.out, device=args.device,
                       batch_size=args.batch_size, n_bootstrap=args.bootstrap, locator=args.locator)
    overall = metrics["overall"]
    print(f"{overall['n']} samples: accuracy {overall['accuracy']:.3f}, macro AUC "
          f"{fmt(overall['macro_auc'])}; report: {args.out / 'report.html'}")
    if "end_to_end" in metrics:
        located, coverage = metrics["end_to_end"]["overall"], metrics["end_to_end"]["coverage"]
        print(f"located crops: {coverage['matched']} of {coverage['manifest_vertebrae']} vertebrae matched, accuracy "
              f"{located['accuracy']:.3f}, macro AUC {fmt(located['macro_auc'])}; identification rate "
              f"{fmt(metrics['locator'].get('identification_rate'))}; report: {args.out / 'located' / 'report.html'}")
    return EXIT_OK
