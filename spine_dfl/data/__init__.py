"""Manifests, patient splits, transforms, datasets and samplers.

``manifest``, ``splits``, ``summary`` (pandas only) and the transform settings (plain dataclasses)
are imported eagerly; the torch- and MONAI-based transforms, ``dataset`` and ``samplers`` load on
first use of one of their names, so ``spine-dfl validate`` does not pay for importing MONAI and torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from spine_dfl.data.manifest import Manifest, ManifestError, class_order, load_manifest, validate_manifest
from spine_dfl.data.splits import patient_keys, patient_split
from spine_dfl.data.summary import format_summary, summarize
from spine_dfl.data.transforms.settings import AugmentConfig, Preprocessing
from spine_dfl.lazy import lazy_attributes

if TYPE_CHECKING:  # the lazy names below, for editors and type checkers
    from spine_dfl.data.dataset import build_dataset, manifest_records, records_from_table
    from spine_dfl.data.samplers import DistributedWeightedSampler, class_balanced_weights
    from spine_dfl.data.transforms.compose import eval_transforms
    from spine_dfl.data.transforms.geometry import map_boxes_to_original, map_points_to_original

# name -> the submodule that defines it (torch / MONAI: imported on first use)
_LAZY = {
    "eval_transforms": "transforms.compose",
    "map_points_to_original": "transforms.geometry",
    "map_boxes_to_original": "transforms.geometry",
    "records_from_table": "dataset",
    "manifest_records": "dataset",
    "build_dataset": "dataset",
    "class_balanced_weights": "samplers",
    "DistributedWeightedSampler": "samplers",
}

__all__ = [
    "AugmentConfig", "DistributedWeightedSampler", "Manifest", "ManifestError", "Preprocessing", "build_dataset",
    "class_balanced_weights", "class_order", "eval_transforms", "format_summary", "load_manifest",
    "manifest_records", "map_boxes_to_original", "map_points_to_original", "patient_keys", "patient_split",
    "records_from_table", "summarize", "validate_manifest",
]

__getattr__ = lazy_attributes(__name__, _LAZY)
