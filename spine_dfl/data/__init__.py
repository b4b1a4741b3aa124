"""Manifests, patient splits, transforms, datasets and samplers.

``manifest``, ``splits`` and ``summary`` (pandas only) are imported eagerly; the torch- and
MONAI-based ``transforms``, ``dataset`` and ``samplers`` load on first use of one of their names,
so ``spine-dfl validate`` does not pay for importing MONAI and torch.
"""

from __future__ import annotations


from spine_dfl.lazy import lazy_attributes

from spine_dfl.data.manifest import Manifest, ManifestError, class_order, load_manifest, validate_manifest
from spine_dfl.data.splits import patient_keys, patient_split
from spine_dfl.data.summary import format_summary, summarize

_LAZY = {
    "Preprocessing": "transforms",
    "AugmentConfig": "transforms",
    "eval_transforms": "transforms",
    "map_points_to_original": "transforms",
    "map_boxes_to_original": "transforms",
    "records_from_table": "dataset",
    "manifest_records": "dataset",
    "build_dataset": "dataset",
    "class_balanced_weights": "samplers",
    "DistributedWeightedSampler": "samplers",
}

__all__ = [
    "Manifest", "ManifestError", "class_order", "format_summary", "load_manifest", "patient_keys", "patient_split",
    "summarize", "validate_manifest", *_LAZY,
]


__getattr__ = lazy_attributes(__name__, _LAZY)
