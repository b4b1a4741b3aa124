"""Checkpoints that carry everything scoring needs: weights, config, class names, preprocessing, and
(from the end of training) ``calibration`` (temperatures, ``engine.calibration``) and ``shift`` (the
training distribution's feature statistics, ``engine.shift``).

Written atomically (temporary file, then ``os.replace``) and read with
``torch.load(weights_only=True)``, so a checkpoint can never execute code and a crash
never leaves a half-written file under the final name.
"""

from __future__ import annotations

import pickle
import zipfile
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from collections.abc import Callable
from typing import Any

import torch

from spine_dfl import __version__
from spine_dfl.atomic import atomic_output
from spine_dfl.data.transforms import Preprocessing
from spine_dfl.engine.calibration import Temperatures, temperatures_from_checkpoint
from spine_dfl.engine.shift import ShiftModel
from spine_dfl.io.errors import CheckpointError
from spine_dfl.model import DFLNet
from spine_dfl.model.effective_field import remember_patch_side

CHECKPOINT_FORMAT = "spine-dfl-checkpoint/1"


@dataclass
class LoadedCheckpoint:
    """A ready-to-use model (eval mode) with what it needs to preprocess and name its outputs."""

    model: DFLNet
    class_names: list[str]
    preprocessing: Preprocessing
    config: dict[str, Any]
    raw: dict[str, Any]
    # Fitted at the end of training (``engine.calibration``, ``engine.shift``); older checkpoints: all
    # temperatures 1 (warned once on loading) and no shift statistics (None).
    temperatures: Temperatures = Temperatures()
    shift: ShiftModel | None = None


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to a temporary file in the same folder, fsync, then rename over ``path``."""
    with atomic_output(path) as handle:
        torch.save(obj, handle)


def _bare_model(model: torch.nn.Module) -> DFLNet:
    """The DFLNet inside a DDP / compiled wrapper."""
    inner = getattr(model, "module", model)
    return getattr(inner, "_orig_mod", inner)


def checkpoint_payload(
    model: torch.nn.Module,
    config: dict[str, Any],
    class_names: list[str],
    preprocessing: Preprocessing,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The dict stored on disk: only tensors, numbers, strings, lists and dicts (weights_only-safe)."""
    net = _bare_model(model)
    return {
        "format": CHECKPOINT_FORMAT,
        "kind": "grader",  # spine_dfl.locate.checkpoint writes "locator"
        "spine_dfl_version": __version__,
        "torch_version": str(torch.__version__),
        "architecture": {
            "backbone": net.backbone_name,
            "num_classes": net.num_classes,
            "filters_per_class": net.filters_per_class,
            "fuse_weights": list(net.fuse_weights),
            "pstream_layer": net.pstream_layer,
            "streams": net.streams,
            "pstream_region": net.pstream_region,
        },
        "class_names": list(class_names),
        "preprocessing": asdict(preprocessing),
        "config": config,
        "model_state": {k: v.detach().cpu() for k, v in net.state_dict().items()},
        **(extra or {}),
    }


def _load_failure(exc: Exception) -> str:
    """Why torch.load refused a zip file, in a few words.

    torch's own message for a refused object advises ``weights_only=False``, that is running the
    file's code: never advice for the user of a medical tool, so it is not passed on.
    """
    if isinstance(exc, pickle.UnpicklingError) and "Weights only load failed" in str(exc):
        return "it holds Python objects other than tensors and plain data"
    return f"damaged torch file ({type(exc).__name__})"


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The raw checkpoint dict, checked for format; raises CheckpointError saying in one line why not."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    not_ours = f"{path}: not a spine-dfl checkpoint"
    if not zipfile.is_zipfile(path):  # torch.save has written zip archives since torch 1.6
        raise CheckpointError(f"{not_ours}: not a torch file")
    try:
        raw = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises RuntimeError, KeyError, EOFError, UnpicklingError ...
        raise CheckpointError(f"{not_ours}: {_load_failure(exc)}") from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{not_ours}: it holds a {type(raw).__name__}, not a dict")
    if "format" not in raw:
        raise CheckpointError(f"{not_ours}: no 'format' key")
    if raw["format"] != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{not_ours}: format {raw['format']!r} is not supported (this version reads {CHECKPOINT_FORMAT!r})"
        )
    return raw


def check_kind(raw: dict[str, Any], path: str | Path, expected: str) -> None:
    """CheckpointError in one line when ``raw`` is not a checkpoint of ``expected`` kind
    ("grader", "locator", "view"): one given in place of another is a usage error, not a shape mismatch."""
    kind = raw.get("kind", "grader")  # checkpoints from before kinds existed are graders
    if kind != expected:
        hint = {"locator": "give it as --locator", "grader": "give it as the grader checkpoint"}.get(kind, "")
        raise CheckpointError(f"{path}: this is a {kind} checkpoint, not a {expected} checkpoint"
                              + (f" ({hint})" if hint else ""))


def embed_payload(host_path: str | Path, host_kind: str, inner_path: str | Path, inner_kind: str, key: str,
                  load_inner: Callable[[dict[str, Any], str | Path], Any], out_path: str | Path) -> Path:
    """Write ``out_path``: the ``host_kind`` checkpoint at ``host_path`` with the ``inner_kind`` checkpoint
    at ``inner_path`` inside it under ``key`` (replacing one it had). Both are kind-checked and the inner
    weights must load (``load_inner(raw, path)``) before they are embedded; the write is atomic, so
    ``out_path`` may be ``host_path``."""
    host = read_checkpoint(host_path, "cpu")
    check_kind(host, host_path, host_kind)
    inner = read_checkpoint(inner_path, "cpu")
    check_kind(inner, inner_path, inner_kind)
    load_inner(inner, inner_path)
    atomic_torch_save({**host, key: inner}, out_path)
    return Path(out_path)


def preprocessing_from_dict(values: dict[str, Any]) -> Preprocessing:
    known = {f.name for f in fields(Preprocessing)}
    kwargs = {k: (tuple(v) if isinstance(v, list) else v) for k, v in values.items() if k in known}
    return Preprocessing(**kwargs)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> LoadedCheckpoint:
    """Rebuild the model (random-init architecture, then the stored weights) in eval mode."""
    raw = read_checkpoint(path, map_location)
    check_kind(raw, path, "grader")
    arch = raw["architecture"]
    model = DFLNet(
        backbone=arch["backbone"],
        num_classes=int(arch["num_classes"]),
        filters_per_class=int(arch["filters_per_class"]),
        fuse_weights=tuple(float(w) for w in arch["fuse_weights"]),
        pretrained="none",  # the stored weights replace whatever the architecture starts with
        pstream_layer=arch.get("pstream_layer"),  # checkpoints from before the choice: the default
        streams=arch.get("streams", "dfl"),
        pstream_region=arch.get("pstream_region", "crop"),  # checkpoints from before the choice
    )
    try:
        model.load_state_dict(raw["model_state"])
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not match the recorded architecture: {exc}") from exc
    model.to(map_location).eval()
    erf = raw.get("effective_receptive_field") or {}  # what earlier checkpoints measured when saved
    if erf.get("side"):
        remember_patch_side(model, int(erf["input_size"]), float(erf["side"]))
    return LoadedCheckpoint(
        model=model,
        class_names=list(raw["class_names"]),
        preprocessing=preprocessing_from_dict(raw["preprocessing"]),
        config=raw["config"],
        raw=raw,
        temperatures=temperatures_from_checkpoint(raw),
        shift=ShiftModel.from_record(raw.get("shift")),
    )
