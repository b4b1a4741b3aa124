"""``spine-dfl train``: train a DFL-CNN or the vertebra locator (also under torchrun for DDP)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from spine_dfl.cli.common import EXIT_OK, add_device, add_out_options, prepare_out

log = logging.getLogger(__name__)

# ``train`` without --config: a clinical default chosen for the device (the demo keeps cpu_demo).
DEFAULT_CPU_CONFIG, DEFAULT_GPU_CONFIG = "train_cpu", "dfl_resnet50_448"


def _shipped() -> str:
    """The shipped configs' names, read from the package data (not spine_dfl.config: --help stays light)."""
    from importlib import resources

    folder = resources.files("spine_dfl").joinpath("configs")
    names = sorted(e.name.removesuffix(".yaml") for e in folder.iterdir() if e.name.endswith(".yaml"))
    return ", ".join(names) or "none found"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a DFL-CNN (or the locator) on a manifest (selects on val, never test)",
                       description="Train DFL-CNN. Validation split selects the model; test is never looked at. "
                                   "Run under `torchrun --nproc_per_node N -m spine_dfl train ...` for DDP.")
    p.add_argument("manifest", type=Path, help="manifest CSV")
    p.add_argument("--config", default=None,
                   help=f"YAML config file or shipped name ({_shipped()}); default {DEFAULT_GPU_CONFIG} on CUDA, "
                        f"{DEFAULT_CPU_CONFIG} on CPU (clinical input size, no time budget)")
    p.add_argument("--out", type=Path, default=Path("runs/train"),
                   help="output folder for checkpoints, metrics.csv and the report (default runs/train)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.epochs=5 (repeatable)")
    add_device(p, default=None, what="training runs")
    add_out_options(p, resume="continue a killed run from OUT/last.pt")
    p.add_argument("--no-report", action="store_true", help="skip the validation report at the end")
    p.set_defaults(func=run)


def default_config(device: str | None) -> str:
    """The shipped config ``train`` uses without --config: the GPU one when training will run on CUDA."""
    if device is None or device == "auto":
        import torch

        on_cuda = torch.cuda.is_available()
    else:
        on_cuda = device.startswith("cuda")
    return DEFAULT_GPU_CONFIG if on_cuda else DEFAULT_CPU_CONFIG


def run(args: argparse.Namespace) -> int:
    from spine_dfl.config import load_config

    config = args.config or default_config(args.device)
    if args.config is None:
        print(f"config: {config} (the default for this device; choose another with --config)")
        log.info("training with the default config %s", config)
    overrides = [*([f"device={args.device}"] if args.device else []), *args.overrides]
    load_config(config, overrides)  # a bad config or override is reported before the folder is touched
    prepare_out(args.out, "train", overwrite=args.overwrite, resume=args.resume, can_resume=True)
    from spine_dfl.workflows.train import train_and_report

    run_result = train_and_report(args.manifest, config, overrides, args.out, resume=args.resume,
                                  report=not args.no_report)
    if run_result.is_main_process:
        result = run_result.result
        print(f"best checkpoint: {result.best_checkpoint} (epoch {result.best_epoch}, "
              f"val {run_result.select_metric} {result.best_score:.4f})")
    return EXIT_OK
