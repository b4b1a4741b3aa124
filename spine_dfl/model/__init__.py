"""DFL-CNN model: backbones, the network, its loss and the filter-bank initialisation.

Imports nothing else of spine_dfl: the model knows no files or manifests.
"""

from .backbones import BACKBONES, Backbone, PretrainedWeightsMissing, build_backbone, receptive_field
from .dfl import DFLNet, DFLOutput, branch_loss, dfl_loss
from .filter_init import FilterInitReport, KMeansResult, energy_map, init_filter_bank, kmeans, peak_locations

__all__ = [
    "BACKBONES",
    "Backbone",
    "DFLNet",
    "DFLOutput",
    "FilterInitReport",
    "KMeansResult",
    "PretrainedWeightsMissing",
    "branch_loss",
    "build_backbone",
    "dfl_loss",
    "energy_map",
    "init_filter_bank",
    "kmeans",
    "peak_locations",
    "receptive_field",
]
