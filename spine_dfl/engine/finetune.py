"""Fine-tuning from a trained checkpoint: ``spine-dfl train MANIFEST --init CHECKPOINT``.

The parent checkpoint (a grader's or a locator's) gives the task, the architecture, the class names
(the locator's: its levels), the preprocessing and the starting weights; the run's config is the
parent's own (or ``--config``, which must name the same task), with the architecture and
preprocessing always the parent's and, unless ``--set`` names them, the few-label defaults below.
Every checkpoint of the run records the parent's SHA-256 (``parent``), so a fine-tuned model can be
traced to the file it started from. What the engine fits after the last epoch (the grader's
calibration and shift statistics, ``engine.posthoc``) is fitted again on the new data.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spine_dfl.config import RunConfig, apply_override, load_config, parse_override, validate_tree
from spine_dfl.engine.checkpoint import read_checkpoint
from spine_dfl.io.errors import CheckpointError, ConfigError

__all__ = ["FINETUNE_LR_FACTOR", "FINETUNE_MAX_EPOCHS", "FINETUNE_PATIENCE", "Parent", "finetune_config",
           "finetune_settings", "read_parent"]

# Few labels: a tenth of the parent's learning rates, at most 10 epochs, stop after 3 without improvement
# on the new validation split. Each is overridden by naming its key in --set.
FINETUNE_LR_FACTOR = 0.1
FINETUNE_MAX_EPOCHS = 10
FINETUNE_PATIENCE = 3

# What must stay the parent's: the weights only fit this architecture, and the model only knows inputs
# prepared this way (config sections and keys; the locator's levels come from the checkpoint itself).
_KEPT = {
    "grader": (("model", ("backbone", "filters_per_class", "pstream_layer", "streams", "pstream_region",
                          "fuse_weights")),
               ("data", ("input_size", "roi_margin", "intensity_percentiles", "use_roi"))),
    "locator": (("locator", ("input_size", "blocks", "neck_channels", "head_channels",
                             "intensity_percentiles")),),
}


@dataclass(frozen=True)
class Parent:
    """The checkpoint a run starts from: its file, SHA-256, kind and content."""

    path: Path
    sha256: str
    kind: str
    raw: dict[str, Any]

    def record(self) -> dict[str, str]:
        """What every checkpoint of the fine-tuned run stores under ``parent``."""
        return {"sha256": self.sha256, "name": self.path.name, "path": str(self.path), "kind": self.kind}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_parent(path: str | Path) -> Parent:
    """The parent checkpoint; CheckpointError in one line when it is missing, not ours, or of a kind
    that cannot be fine-tuned (the view gate's)."""
    path = Path(path)
    raw = read_checkpoint(path, "cpu")
    kind = str(raw.get("kind", "grader"))
    if kind not in _KEPT:
        raise CheckpointError(f"{path}: a {kind} checkpoint cannot be fine-tuned by train (grader or locator only)")
    if not isinstance(raw.get("config"), dict) or raw["config"].get("task", "grader") != kind:
        raise CheckpointError(f"{path}: its stored config is not a {kind} training config; cannot fine-tune from it")
    return Parent(path=path, sha256=_sha256(path), kind=kind, raw=raw)


def finetune_settings(base: RunConfig, named: set[str]) -> list[str]:
    """The few-label defaults over ``base`` as ``key=value`` overrides, leaving out the keys in ``named``."""
    tc = base.train
    defaults = {
        "train.lr_backbone": tc.lr_backbone * FINETUNE_LR_FACTOR,
        "train.lr_heads": tc.lr_heads * FINETUNE_LR_FACTOR,
        "train.epochs": min(tc.epochs, FINETUNE_MAX_EPOCHS),
        "train.early_stop_patience": FINETUNE_PATIENCE,
    }
    return [f"{key}={value}" for key, value in defaults.items() if key not in named]


def finetune_config(parent: Parent, config: str | Path | None, overrides: list[str]) -> RunConfig:
    """The fine-tuning run's config: ``config`` (default: the parent's stored config), the parent's
    architecture and preprocessing over it, the few-label defaults, then ``overrides``.

    ConfigError when ``config`` names another task than the checkpoint's, or an override changes what
    must stay the parent's.
    """
    stored = parent.raw["config"]
    if config is None:
        tree, source = {k: (dict(v) if isinstance(v, dict) else v) for k, v in stored.items()}, str(parent.path)
    else:
        chosen = load_config(config)
        if chosen.task != parent.kind:
            raise ConfigError(f"--config {config} trains the {chosen.task}, but {parent.path} is a {parent.kind} "
                              f"checkpoint: fine-tuning keeps the checkpoint's task")
        tree, source = chosen.model_dump(mode="json"), str(config)
    for section, keys in _KEPT[parent.kind]:
        for key in keys:
            if key in stored.get(section, {}):
                apply_override(tree, [section, key], stored[section][key])
    if parent.kind == "grader":
        apply_override(tree, ["model", "pretrained"], "none")  # the parent's weights replace any starting weights
    parsed = [parse_override(text) for text in overrides]
    kept = {f"{section}.{key}" for section, keys in _KEPT[parent.kind] for key in keys}
    for keys, value in parsed:
        if ".".join(keys) in kept and value != stored.get(keys[0], {}).get(keys[-1]):
            raise ConfigError(f"--set {'.'.join(keys)}={value}: fine-tuning keeps the checkpoint's value "
                              f"({stored.get(keys[0], {}).get(keys[-1])!r}, {parent.path}); it cannot be changed")
    named = {".".join(keys) for keys, _ in parsed}
    for keys, value in [parse_override(text) for text in finetune_settings(validate_tree(tree, source), named)] + parsed:
        apply_override(tree, keys, value)
    return validate_tree(tree, source)
