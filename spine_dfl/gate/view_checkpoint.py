"""The view classifier's checkpoint (kind "view"), and the view gate a locator checkpoint carries.

Same container as the grader's and the locator's (``engine.checkpoint``: atomic write, format
check, ``torch.load(weights_only=True)``), told apart by ``kind``, so a grader or locator given as
a view checkpoint is a one-line ``CheckpointError``. ``embed_view`` writes a locator checkpoint
with the view payload under ``"view"``: the locator then carries its gate (and a grader that
embeds that locator carries it too).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from spine_dfl import __version__
from spine_dfl.engine.checkpoint import (
    CHECKPOINT_FORMAT, CheckpointError, atomic_torch_save, check_kind, embed_payload, read_checkpoint,
)
from spine_dfl.gate.view import LoadedView, ViewNet
from spine_dfl.io.orientation import ORIENTATIONS

__all__ = ["EMBEDDED_KEY", "KIND", "embed_view", "load_view", "save_view", "view_from_locator_payload",
           "view_from_payload", "view_payload"]

KIND = "view"
EMBEDDED_KEY = "view"  # a locator checkpoint's embedded view payload (``embed_view``)


def view_payload(model: torch.nn.Module, percentiles: tuple[float, float], training: dict[str, Any]) -> dict[str, Any]:
    """The dict stored on disk (tensors and plain data only)."""
    net = getattr(model, "module", model)
    return {
        "format": CHECKPOINT_FORMAT,
        "kind": KIND,
        "spine_dfl_version": __version__,
        "torch_version": str(torch.__version__),
        "architecture": dict(net.arguments),
        "thumbnail_size": int(net.arguments["size"]),
        "intensity_percentiles": [float(v) for v in percentiles],
        "classes": [f"lateral:{o.name}" for o in ORIENTATIONS] + ["not lateral"],
        "training": json.loads(json.dumps(training)),  # plain data only (weights_only loads it)
        "model_state": {k: v.detach().cpu() for k, v in net.state_dict().items()},
    }


def save_view(path: str | Path, model: torch.nn.Module, percentiles: tuple[float, float], training: dict[str, Any]) -> Path:
    """Write the view checkpoint atomically."""
    atomic_torch_save(view_payload(model, percentiles, training), path)
    return Path(path)


def view_from_payload(raw: dict[str, Any], path: str | Path, map_location: str | torch.device = "cpu") -> LoadedView:
    """The view classifier of a payload in eval mode (``path`` names it in errors)."""
    check_kind(raw, path, KIND)
    try:
        arch = raw["architecture"]
        model = ViewNet(widths=arch["widths"], size=int(arch["size"]), dropout=float(arch.get("dropout", 0.0)))
        model.load_state_dict(raw["model_state"])
        percentiles = tuple(float(v) for v in raw["intensity_percentiles"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        reason = f"missing {exc}" if isinstance(exc, KeyError) else str(exc).splitlines()[0]
        raise CheckpointError(f"{path}: not a usable view checkpoint: {reason}") from None
    model.to(map_location).eval()
    return LoadedView(model=model, size=int(raw["thumbnail_size"]), percentiles=(percentiles[0], percentiles[1]),
                      training=dict(raw.get("training") or {}), raw=raw)


def load_view(path: str | Path, map_location: str | torch.device = "cpu") -> LoadedView:
    """Rebuild the view classifier from its checkpoint; CheckpointError says in one line why not."""
    return view_from_payload(read_checkpoint(path, map_location), path, map_location)


def view_from_locator_payload(raw: dict[str, Any], map_location: str | torch.device = "cpu") -> LoadedView | None:
    """The view gate a locator checkpoint's payload carries (``embed_view``), or None when it has none.
    A grader payload that embeds a locator (``embed_locator``) is looked through to that locator."""
    if raw.get("kind", "grader") == "grader" and isinstance(raw.get("locator"), dict):
        raw = raw["locator"]
    if raw.get("kind") != "locator":
        return None
    payload = raw.get(EMBEDDED_KEY)
    if not isinstance(payload, dict):
        return None
    return view_from_payload(payload, "the locator's embedded view gate", map_location)


def embed_view(locator_path: str | Path, view_path: str | Path, out_path: str | Path) -> Path:
    """Write ``out_path``: the locator checkpoint with the view payload inside it (replacing one it
    had). Both are kind-checked and the view's weights must load; the write is atomic, so
    ``out_path`` may be ``locator_path``."""
    return embed_payload(locator_path, "locator", view_path, KIND, EMBEDDED_KEY, view_from_payload, out_path)
