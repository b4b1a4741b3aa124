"""The locator's self-contained checkpoint: weights, architecture, level names, letterbox, config.

Same container as the grader's (``engine.checkpoint``: atomic write, format check,
``torch.load(weights_only=True)``), told apart by ``kind``: "locator" here, "grader" there, so
that one given in place of the other is a one-line error instead of a shape mismatch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from spine_dfl import __version__
from spine_dfl.engine.checkpoint import CHECKPOINT_FORMAT, CheckpointError, check_kind, embed_payload, read_checkpoint
from spine_dfl.locate.network import VertebraLocator
from spine_dfl.locate.preprocess import letterbox

if TYPE_CHECKING:
    from spine_dfl.locate.run import LocatedVertebrae

KIND = "locator"


@dataclass
class LoadedLocator:
    """A ready locator (eval mode) and what ``locate_radiograph`` needs to prepare its input."""

    model: VertebraLocator
    levels: list[str]
    input_size: tuple[int, int]
    percentiles: tuple[float, float]
    threshold: float
    config: dict[str, Any]
    raw: dict[str, Any]


def locator_payload(model: torch.nn.Module, config: dict[str, Any], extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The dict stored on disk (tensors and plain data only)."""
    net = getattr(model, "module", model)
    settings = config["locator"]
    return {
        "format": CHECKPOINT_FORMAT,
        "kind": KIND,
        "spine_dfl_version": __version__,
        "torch_version": str(torch.__version__),
        "architecture": dict(net.arguments),
        "levels": list(net.levels),
        "input_size": [int(v) for v in settings["input_size"]],
        "intensity_percentiles": [float(v) for v in settings["intensity_percentiles"]],
        "threshold": float(settings["threshold"]),
        "config": config,
        "model_state": {k: v.detach().cpu() for k, v in net.state_dict().items()},
        **(extra or {}),
    }


EMBEDDED_KEY = "locator"  # a grader checkpoint's embedded locator payload (``embed_locator``)


def load_locator(path: str | Path, map_location: str | torch.device = "cpu") -> LoadedLocator:
    """Rebuild the locator from its checkpoint in eval mode; CheckpointError says why not."""
    return locator_from_payload(read_checkpoint(path, map_location), path, map_location)


def embedded_locator_payload(raw: dict[str, Any]) -> dict[str, Any] | None:
    """The locator payload a grader checkpoint carries (``embed_locator``), or None."""
    payload = raw.get(EMBEDDED_KEY) if raw.get("kind", "grader") == "grader" else None
    return payload if isinstance(payload, dict) else None


def embed_locator(grader_path: str | Path, locator_path: str | Path, out_path: str | Path) -> Path:
    """Write ``out_path``: the grader checkpoint with the locator's payload inside it, so that one file
    serves score and explain without --locator. Both are kind-checked; the write is atomic."""
    return embed_payload(grader_path, "grader", locator_path, KIND, EMBEDDED_KEY, locator_from_payload, out_path)


def locator_from_payload(raw: dict[str, Any], path: str | Path, map_location: str | torch.device = "cpu") -> LoadedLocator:
    """The locator of a checkpoint's payload (``path`` names it in errors)."""
    check_kind(raw, path, KIND)
    arch = raw["architecture"]
    model = VertebraLocator(arch["levels"], blocks=arch["blocks"], neck_channels=arch["neck_channels"],
                            head_channels=arch["head_channels"])
    try:
        model.load_state_dict(raw["model_state"])
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not match the recorded architecture: {exc}") from exc
    model.to(map_location).eval()
    return LoadedLocator(model=model, levels=list(raw["levels"]), input_size=tuple(raw["input_size"]),
                         percentiles=tuple(raw["intensity_percentiles"]), threshold=float(raw["threshold"]),
                         config=raw["config"], raw=raw)


def locate_radiograph(loaded: LoadedLocator, pixels: np.ndarray, refine: bool = True, **labelling: Any) -> LocatedVertebrae:
    """Letterbox one radiograph's pixels as the checkpoint says, then ``run.locate`` (original pixels out);
    with ``refine`` the six points are snapped to their endplate edges on ``pixels`` (``refine.refine_located``)."""
    from spine_dfl.locate.refine import refine_located
    from spine_dfl.locate.run import locate

    tensor, to_original = letterbox(pixels, loaded.input_size, loaded.percentiles)
    located = locate(loaded.model, tensor, to_original, threshold=loaded.threshold,
                     image_shape=tuple(np.shape(pixels))[-2:], **labelling)
    return refine_located(located, pixels) if refine else located
