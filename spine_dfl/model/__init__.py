"""DFL-CNN model: backbones, the network, its loss, the filter-bank initialisation and its k-means.

Imports nothing else of spine_dfl: the model knows no files or manifests. The names below load
their module (and torch) on first use, so ``spine_dfl.model.defaults`` stays torch-free for the config.
``spine_dfl.model.kmeans`` is the k-means module; its function is ``spine_dfl.model.kmeans.kmeans``.
"""

from __future__ import annotations


from spine_dfl.lazy import lazy_attributes

_LAZY = {
    "BACKBONES": "backbones",
    "Backbone": "backbones",
    "PretrainedWeightsMissing": "backbones",
    "build_backbone": "backbones",
    "receptive_field": "backbones",
    "DEFAULT_BRANCH_WEIGHTS": "defaults",
    "DFLNet": "dfl",
    "DFLOutput": "dfl",
    "branch_loss": "dfl",
    "dfl_loss": "dfl",
    "FilterInitReport": "filter_init",
    "energy_map": "filter_init",
    "init_filter_bank": "filter_init",
    "peak_locations": "filter_init",
    "KMeansResult": "kmeans",
}

__all__ = sorted(_LAZY)


__getattr__ = lazy_attributes(__name__, _LAZY)
