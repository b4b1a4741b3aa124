"""Command line: ``spine-dfl <command>``. The only module that knows every part."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

log = logging.getLogger("spine_dfl")

# Exit statuses: 0 done, 1 finished but failed a requirement (--strict, validation errors), 2 bad usage/input.
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _setup_logging(verbose: bool) -> None:
    rank = os.environ.get("RANK")
    fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s" if rank is None else f"%(asctime)s [rank {rank}] %(levelname)s: %(message)s"
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format=fmt, datefmt="%H:%M:%S")


# --------------------------------------------------------------------------- synth
def _add_synth(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("synth", help="write the synthetic lateral-spine DICOM cohort (images, manifest.csv, rois.csv)",
                       description="Generate a synthetic cohort of lateral thoracolumbar radiographs as DICOM, "
                                   "with a per-vertebra manifest (Genant grades) and a label-free rois.csv.")
    p.add_argument("out", type=Path, help="output folder (created)")
    p.add_argument("--patients", type=int, default=40, help="number of patients, one radiograph each (default 40)")
    p.add_argument("--seed", type=int, default=0, help="random seed; the same seed writes the same bytes (default 0)")
    p.add_argument("--overwrite", action="store_true", help="replace a cohort already in OUT")
    p.set_defaults(func=_run_synth)


def _run_synth(args: argparse.Namespace) -> int:
    from spine_dfl.synth import generate_cohort

    try:
        cohort = generate_cohort(args.out, patients=args.patients, seed=args.seed, overwrite=args.overwrite)
    except FileExistsError as exc:
        print(f"error: {args.out} already holds a synthetic cohort; use --overwrite to replace it ({exc})",
              file=sys.stderr)
        return EXIT_USAGE
    print(json.dumps(_plain(cohort.summary), indent=2))
    return EXIT_OK


# --------------------------------------------------------------------------- validate
def _add_validate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("validate", help="check a manifest and print rows, patients, classes per split and per vertebra",
                       description="Validate a manifest CSV (files exist, ROIs inside images, splits, duplicates, "
                                   "patients in one split). Exits 1 when there are errors.")
    p.add_argument("manifest", type=Path, help="manifest CSV (see data_manifests/README.md)")
    p.add_argument("--no-files", action="store_true", help="skip the checks that open image files (faster)")
    p.set_defaults(func=_run_validate)


def _run_validate(args: argparse.Namespace) -> int:
    from spine_dfl.data.manifest import ManifestError, format_summary, load_manifest, summarize

    try:
        manifest = load_manifest(args.manifest, check_files=not args.no_files, check_rois=not args.no_files)
    except ManifestError as exc:
        print(f"{len(exc.errors)} error(s) in {args.manifest}:", file=sys.stderr)
        for line in exc.errors:
            print(f"  {line}", file=sys.stderr)
        return EXIT_FAILED
    print(format_summary(summarize(manifest)))
    return EXIT_OK


# --------------------------------------------------------------------------- train
def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a DFL-CNN on a manifest (selects on val, never test)",
                       description="Train DFL-CNN. Validation split selects the model; test is never looked at. "
                                   "Run under `torchrun --nproc_per_node N -m spine_dfl train ...` for DDP.")
    p.add_argument("manifest", type=Path, help="manifest CSV")
    p.add_argument("--config", default="cpu_demo", help="YAML config file or shipped name (cpu_demo, dfl_vgg16_448, dfl_resnet50_448)")
    p.add_argument("--out", type=Path, default=Path("runs/train"), help="output folder for checkpoints, metrics.csv and the report")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.epochs=5 (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue a killed run from OUT/last.pt")
    p.add_argument("--no-report", action="store_true", help="skip the validation report at the end")
    p.set_defaults(func=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    from spine_dfl.config import load_config
    from spine_dfl.train import train

    config = load_config(args.config, args.overrides)
    result = train(args.manifest, config, args.out, resume=args.resume)
    if int(os.environ.get("RANK", "0")) == 0:
        if not args.no_report and result.val_predictions is not None:
            _write_eval_outputs(result.val_predictions, args.out / "val_report", "validation split")
        print(f"best checkpoint: {result.best_checkpoint} (epoch {result.best_epoch}, "
              f"val {config.train.select_metric} {result.best_score:.4f})")
    return EXIT_OK


# --------------------------------------------------------------------------- evaluate
def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="per-vertebra evaluation report of a checkpoint on a manifest split",
                       description="Score a manifest split with a checkpoint and write predictions.csv, metrics.json, "
                                   "per_vertebra.csv and a self-contained report.html.")
    p.add_argument("checkpoint", type=Path, help="checkpoint (.pt) written by spine-dfl train")
    p.add_argument("manifest", type=Path, help="manifest CSV")
    p.add_argument("--split", default="test", help="split to evaluate (default test; all rows when the manifest has no split column)")
    p.add_argument("--out", type=Path, default=Path("runs/evaluate"), help="output folder")
    p.add_argument("--batch-size", type=int, default=32, help="images per batch")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where the model runs")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples (patients) for the 95%% intervals")
    p.set_defaults(func=_run_evaluate)


def evaluate_split(checkpoint: Path, manifest_path: Path, split: str, device: str = "auto", batch_size: int = 32) -> Any:
    """Predictions table of one manifest split (or all rows without a split column)."""
    from spine_dfl.checkpoint import load_checkpoint
    from spine_dfl.data.dataset import manifest_records
    from spine_dfl.predict import predict_records, resolve_device

    loaded = load_checkpoint(checkpoint, map_location=resolve_device(device))
    records = manifest_records(manifest_path, loaded.class_names, split, loaded.preprocessing.use_roi)
    return predict_records(loaded.model, records, loaded.preprocessing, loaded.class_names,
                           batch_size=batch_size, device=resolve_device(device))


def _write_eval_outputs(predictions: Any, out_dir: Path, title: str, n_bootstrap: int = 1000) -> dict[str, Any]:
    from spine_dfl.report import write_report

    out_dir.mkdir(parents=True, exist_ok=True)
    _atomic_csv(predictions, out_dir / "predictions.csv")
    metrics = write_report(predictions, out_dir, title=f"spine-dfl evaluation: {title}", n_bootstrap=n_bootstrap)
    log.info("report written to %s", out_dir / "report.html")
    return metrics


def _run_evaluate(args: argparse.Namespace) -> int:
    predictions = evaluate_split(args.checkpoint, args.manifest, args.split, args.device, args.batch_size)
    metrics = _write_eval_outputs(predictions, args.out, f"{args.manifest.name} [{args.split}]", args.bootstrap)
    overall = metrics["overall"]
    print(f"{overall['n']} samples: accuracy {overall['accuracy']:.3f}, macro AUC "
          f"{_fmt(overall['macro_auc'])}; report: {args.out / 'report.html'}")
    return EXIT_OK


# --------------------------------------------------------------------------- explain / score
def _add_explain(sub: argparse._SubParsersAction) -> None:
    from spine_dfl.explain import add_explain_arguments, run_explain_command

    p = sub.add_parser("explain", help="patch heatmaps: where each vertebra's grade came from",
                       description="Draw the predicted class's P-stream patches and evidence maps on the radiographs, "
                                   "with a G-stream Grad-CAM beside them, and an HTML gallery.")
    add_explain_arguments(p)
    p.set_defaults(func=run_explain_command)


def _add_score(sub: argparse._SubParsersAction) -> None:
    from spine_dfl.score import add_score_arguments, run_score_command

    p = sub.add_parser("score", help="batch-score folders of PACS-exported DICOM (optionally results back as DICOM)",
                       description="Score every file under the inputs; every file ends as scored or failed with a reason.")
    add_score_arguments(p)
    p.set_defaults(func=run_score_command)


# --------------------------------------------------------------------------- demo
def _add_demo(sub: argparse._SubParsersAction) -> None:
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
    p.set_defaults(func=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from spine_dfl.config import load_config
    from spine_dfl.synth import generate_cohort
    from spine_dfl.train import train

    started = time.monotonic()
    out: Path = args.out
    cohort = out / "cohort"
    config = load_config(args.config, [f"seed={args.seed}", *args.overrides])
    print(f"[1/4] synthesising {args.patients} patients into {cohort}")
    generate_cohort(cohort, patients=args.patients, seed=args.seed, overwrite=True)
    manifest = cohort / "manifest.csv"
    print(f"[2/4] training {config.model.backbone} (config {args.config}) into {out / 'train'}")
    result = train(manifest, config, out / "train")
    _write_eval_outputs(result.val_predictions, out / "train" / "val_report", "validation split")
    print(f"[3/4] evaluating the held-out test patients into {out / 'evaluate'}")
    predictions = evaluate_split(result.best_checkpoint, manifest, "test")
    metrics = _write_eval_outputs(predictions, out / "evaluate", "synthetic cohort [test]")
    explain_dir = out / "explain"
    if not args.no_explain:
        from spine_dfl.explain import explain_manifest

        print(f"[4/4] drawing patch heatmaps for the test patients into {explain_dir}")
        explain_manifest(result.best_checkpoint, manifest, explain_dir, split="test")
    overall = metrics["overall"]
    per_class = {name: block["auc_ovr"] for name, block in overall.get("per_class", {}).items()}
    print()
    print(f"done in {time.monotonic() - started:.0f} s")
    print(f"  test vertebrae: {overall['n']}, accuracy {overall['accuracy']:.3f}, "
          f"macro AUC (fused) {_fmt(overall['macro_auc'])}")
    if per_class:
        print("  one-vs-rest AUC per class: " + ", ".join(f"{k} {_fmt(v)}" for k, v in per_class.items()))
    print(f"  checkpoint:   {result.best_checkpoint}")
    print(f"  metrics:      {out / 'evaluate' / 'metrics.json'}")
    print(f"  report:       {out / 'evaluate' / 'report.html'}")
    if not args.no_explain:
        print(f"  heatmaps:     {explain_dir / 'index.html'}")
    return EXIT_OK


# --------------------------------------------------------------------------- helpers
def _fmt(value: Any) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _plain(obj: Any) -> Any:
    from dataclasses import asdict, is_dataclass

    if is_dataclass(obj):
        obj = asdict(obj)
    return json.loads(json.dumps(obj, default=str))


def _atomic_csv(table: Any, path: Path) -> None:
    from spine_dfl.atomic import atomic_output

    with atomic_output(path, "w", newline="") as handle:
        table.to_csv(handle, index=False)


def build_parser() -> argparse.ArgumentParser:
    from spine_dfl import __version__

    parser = argparse.ArgumentParser(
        prog="spine-dfl",
        description="Vertebra-level classification of spine radiographs with DFL-CNN, with patch heatmaps "
                    "and DICOM results for PACS.",
    )
    parser.add_argument("--version", action="version", version=f"spine-dfl {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    adders: list[Callable[[argparse._SubParsersAction], None]] = [
        _add_demo, _add_synth, _add_validate, _add_train, _add_evaluate, _add_explain, _add_score,
    ]
    for add in adders:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args.verbose)
    from spine_dfl.checkpoint import CheckpointError
    from spine_dfl.config import ConfigError
    from spine_dfl.data.manifest import ManifestError

    try:
        return int(args.func(args) or 0)
    except ManifestError as exc:
        print(f"error: {exc}", file=sys.stderr)
        for line in getattr(exc, "errors", [])[:50]:
            print(f"  {line}", file=sys.stderr)
        return EXIT_USAGE
    except (ConfigError, CheckpointError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
