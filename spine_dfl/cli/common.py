"""What every command shares: exit statuses, the option helpers that make commands agree
(``--device``, batch sizes, ``-v``, the output-folder rule) and small text helpers."""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

from spine_dfl.io.errors import EXIT_BUG, EXIT_INPUTS_FAILED, EXIT_OK, EXIT_USAGE, InputError

__all__ = [
    "EXIT_BUG", "EXIT_INPUTS_FAILED", "EXIT_OK", "EXIT_USAGE", "EXPLAIN_BATCH_SIZE", "INFERENCE_BATCH_SIZE",
    "add_batch_size", "add_device", "add_out_options", "common_options", "device_name", "fmt", "plain",
    "prepare_out",
]

# One default per kind of work: inference (evaluate, score, serve) and explain's gradient passes,
# which keep every activation of a batch for Grad-CAM and so use about twice the memory per image.
INFERENCE_BATCH_SIZE = 16
EXPLAIN_BATCH_SIZE = 8

_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def common_options() -> argparse.ArgumentParser:
    """The options every subcommand accepts as well as the top level (``-v`` before or after it).

    ``default=SUPPRESS`` so a subcommand without ``-v`` leaves the top level's value alone.
    """
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="debug logging, and a traceback with every error")
    return parent


def device_name(text: str) -> str:
    """``--device``'s value checked: auto (CUDA when present), cpu, cuda or cuda:N."""
    value = text.strip().lower()
    if not _DEVICE.match(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a device: use auto, cpu, cuda or cuda:N")
    return value


def add_device(p: argparse.ArgumentParser, default: str | None = "auto", what: str = "the model runs") -> None:
    """``--device auto|cpu|cuda[:N]``, validated the same way on every command that runs a model."""
    shown = "the config's device" if default is None else default
    p.add_argument("--device", type=device_name, default=default, metavar="auto|cpu|cuda[:N]",
                   help=f"where {what}: auto (GPU when present), cpu, cuda or cuda:N (default {shown})")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_batch_size(p: argparse.ArgumentParser, default: int = INFERENCE_BATCH_SIZE) -> None:
    """``--batch-size`` with the default of its kind of work (INFERENCE_BATCH_SIZE or EXPLAIN_BATCH_SIZE)."""
    p.add_argument("--batch-size", type=_positive, default=default, help=f"images per model batch (default {default})")


def add_out_options(p: argparse.ArgumentParser, resume: str | None = None) -> None:
    """``--overwrite`` and, where the command can continue a folder, ``--resume`` (its help text)."""
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    if resume is not None:
        p.add_argument("--resume", action="store_true", help=resume)


def _protected(folder: Path) -> bool:
    """The file system root, the home folder and the working folder (or one above it) are never removed."""
    here = Path.cwd().resolve()
    return folder == Path(folder.anchor) or folder == Path.home().resolve() or folder in (here, *here.parents)


def prepare_out(out: Path, command: str, *, overwrite: bool = False, resume: bool = False,
                can_resume: bool = False, replace: bool = True) -> str:
    """The one output-folder rule: a new or empty folder is used; a non-empty one needs ``--overwrite``
    (replace) or, where the command can continue, ``--resume``. Returns "new", "overwrite" or "resume".

    ``replace=False``: the command replaces the folder itself (atomically, after checking its inputs), so
    only the rule is checked here. Under torchrun only rank 0 decides and removes.
    """
    out = Path(out)
    if int(os.environ.get("RANK", "0") or 0) != 0:  # rank 0 has checked (and replaced) the folder
        return "resume" if resume else "overwrite" if overwrite else "new"
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: is a file, not an output folder")
    if overwrite and resume:
        raise InputError("--overwrite and --resume exclude each other: replace the folder or continue it")
    if resume and not can_resume:
        raise InputError(f"{command} cannot --resume")
    if not out.is_dir() or not any(out.iterdir()):
        return "resume" if resume else "new"
    if resume:
        return "resume"
    if not overwrite:
        how = "--resume to continue it" if can_resume else f"--resume (which {command} does not support)"
        raise InputError(f"{out}: output folder is not empty; pass --overwrite to replace it, or {how}")
    if replace:
        if _protected(out.resolve()):
            raise InputError(f"{out}: will not remove the root, home or working folder; choose another output folder")
        shutil.rmtree(out)
    return "overwrite"


def fmt(value: float | None) -> str:
    """A metric for the terminal: three decimals, or n/a when undefined."""
    return "n/a" if value is None else f"{value:.3f}"


def plain(obj: Any) -> Any:
    """A dataclass or dict as JSON-compatible values (paths and other objects as text)."""
    from dataclasses import asdict, is_dataclass

    if is_dataclass(obj) and not isinstance(obj, type):
        obj = asdict(obj)
    return json.loads(json.dumps(obj, default=str))
