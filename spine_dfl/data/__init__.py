"""Manifests, transforms and datasets.

``spine_dfl.data.manifest`` (pandas only) is imported eagerly; the MONAI-based
``transforms`` and ``dataset`` modules load on first use of one of their names, so
``spine-dfl validate`` does not pay for importing MONAI and torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from spine_dfl.data.manifest import (
    Manifest,
    ManifestError,
    class_order,
    format_summary,
    load_manifest,
    patient_split,
    summarize,
    validate_manifest,
)

_LAZY = {
    "Preprocessing": "transforms",
    "AugmentConfig": "transforms",
    "eval_transforms": "transforms",
    "train_transforms": "transforms",
    "map_points_to_original": "transforms",
    "map_boxes_to_original": "transforms",
    "clip_boxes": "transforms",
    "records_from_table": "dataset",
    "build_dataset": "dataset",
    "class_balanced_weights": "dataset",
    "DistributedWeightedSampler": "dataset",
}

__all__ = [
    "Manifest", "ManifestError", "class_order", "format_summary", "load_manifest", "patient_split",
    "summarize", "validate_manifest", *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module = importlib.import_module(f"spine_dfl.data.{_LAZY[name]}")
        return getattr(module, name)
    raise AttributeError(f"module 'spine_dfl.data' has no attribute {name!r}")
