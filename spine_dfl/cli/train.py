"""``spine-dfl train``: train a DFL-CNN or the vertebra locator (also under torchrun for DDP), or fine-tune
either from a checkpoint (``--init``)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from spine_dfl.cli.common import EXIT_OK, add_device, add_out_options, prepare_out
from spine_dfl.io.errors import InputError

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
                        f"{DEFAULT_CPU_CONFIG} on CPU (clinical input size, no time budget); with --init the "
                        "checkpoint's own config (one given must train the checkpoint's task)")
    p.add_argument("--init", type=Path, default=None, metavar="CHECKPOINT",
                   help="fine-tune from this grader or locator checkpoint: its task, weights, classes and "
                        "preprocessing; unless --set names them, a tenth of its learning rates, at most 10 "
                        "epochs, early stop after 3 without improvement; calibration and shift refitted")
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
    from spine_dfl.workflows.train import run_config, train_and_report

    if args.init is not None and args.resume:
        raise InputError("--resume and --init exclude each other: --resume continues OUT/last.pt, "
                         "--init starts a new run from a checkpoint")
    config = args.config if args.init is not None else args.config or default_config(args.device)
    if args.config is None and args.init is None:
        print(f"config: {config} (the default for this device; choose another with --config)")
        log.info("training with the default config %s", config)
    overrides = [*([f"device={args.device}"] if args.device else []), *args.overrides]
    # a bad config, override or checkpoint is reported before the folder is touched
    checked, parent = run_config(config, overrides, args.init)
    if parent is not None:
        tc = checked.train
        print(f"fine-tuning the {parent.kind} {parent.path} (sha256 {parent.sha256[:12]}): lr_backbone "
              f"{tc.lr_backbone:g}, lr_heads {tc.lr_heads:g}, epochs {tc.epochs}, early stop after "
              f"{tc.early_stop_patience or 'never'}")
    prepare_out(args.out, "train", overwrite=args.overwrite, resume=args.resume, can_resume=True)
    run_result = train_and_report(args.manifest, config, overrides, args.out, resume=args.resume,
                                  report=not args.no_report, init=args.init)
    if run_result.is_main_process:
        result = run_result.result
        print(f"best checkpoint: {result.best_checkpoint} (epoch {result.best_epoch}, "
              f"val {run_result.select_metric} {result.best_score:.4f})")
    return EXIT_OK
