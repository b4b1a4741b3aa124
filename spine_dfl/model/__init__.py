"""DFL-CNN model: backbones, the network, its loss, the filter-bank initialisation and its k-means.

Imports nothing else of spine_dfl but ``io.errors``: the model knows no files or manifests. The
torch-free defaults (``BACKBONES``, ``DEFAULT_BRANCH_WEIGHTS``, from ``model.defaults``, which the
config reads) are imported eagerly; the other names load their module (and torch) on first use.
``spine_dfl.model.kmeans`` is the k-means module; its function is ``spine_dfl.model.kmeans.kmeans``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from spine_dfl.lazy import lazy_attributes
from spine_dfl.model.defaults import BACKBONES, DEFAULT_BRANCH_WEIGHTS

if TYPE_CHECKING:  # the lazy names below, for editors and type checkers
    from spine_dfl.model.backbones import Backbone, PretrainedWeightsMissing, build_backbone, receptive_field
    from spine_dfl.model.dfl import DFLNet, DFLOutput, branch_loss, dfl_loss
    from spine_dfl.model.filter_init import FilterInitReport, energy_map, init_filter_bank, peak_locations
    from spine_dfl.model.kmeans import KMeansResult

# name -> the submodule that defines it (torch: imported on first use)
_LAZY = {
    "Backbone": "backbones",
    "PretrainedWeightsMissing": "backbones",
    "build_backbone": "backbones",
    "receptive_field": "backbones",
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

__all__ = [
    "BACKBONES", "DEFAULT_BRANCH_WEIGHTS", "DFLNet", "DFLOutput", "Backbone", "FilterInitReport", "KMeansResult",
    "PretrainedWeightsMissing", "branch_loss", "build_backbone", "dfl_loss", "energy_map", "init_filter_bank",
    "peak_locations", "receptive_field",
]

__getattr__ = lazy_attributes(__name__, _LAZY)
