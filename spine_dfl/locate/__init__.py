"""Vertebra locator: find, label and measure the vertebrae of a whole radiograph.

    preprocess   letterbox: radiograph -> fixed-size input + exact to_original affine
    network      VertebraLocator: ResNet-18 trunk, top-down neck to stride 4, CenterNet heads
    targets      ground truth -> head targets; focal + L1 + cross-entropy loss
    decode       output maps -> boxes, six points, level logits, scores in original pixels
    labelling    consecutive levels along the spine by dynamic programming
    morphometry  six-point heights, Genant ratios and morphometric grade
    run          locate: one locator input -> its vertebrae, found, labelled and ordered
    augment      exact geometric + intensity augmentation of input and targets
    samples      manifest -> letterboxed training / evaluation samples
    evaluate     detection, identification and measurement figures
    checkpoint   the self-contained locator checkpoint (``kind: locator``)
    train        ``spine-dfl train`` with ``task: locator``

``labelling`` and ``morphometry`` (numpy) are imported eagerly; the other names load their module
(and torch) on first use. The ``locator:`` config section is ``spine_dfl.config.locator``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from spine_dfl.lazy import lazy_attributes
from spine_dfl.locate.labelling import LevelAssignment, assign_levels
from spine_dfl.locate.morphometry import (
    DEFORMITY_KINDS,
    MORPHOMETRIC_GRADES,
    POINT_COLUMNS,
    POINT_NAMES,
    Heights,
    Morphometry,
    genant_grade,
    height_unit,
    neighbour_posterior_height,
    spine_morphometry,
    vertebral_heights,
)

if TYPE_CHECKING:  # the lazy names below, for editors and type checkers
    from spine_dfl.locate.checkpoint import LoadedLocator, load_locator, locate_radiograph
    from spine_dfl.locate.decode import Detections, decode
    from spine_dfl.locate.evaluate import (
        ImagePrediction,
        ImageTruth,
        evaluate_checkpoint,
        evaluate_locator,
        locator_metrics,
    )
    from spine_dfl.locate.network import STRIDE, VertebraLocator
    from spine_dfl.locate.preprocess import letterbox, output_size
    from spine_dfl.locate.run import LocatedVertebrae, locate
    from spine_dfl.locate.targets import collate_targets, encode_targets, locator_loss
    from spine_dfl.locate.train import train_locator

# name -> the submodule that defines it (torch: imported on first use)
_LAZY: dict[str, str] = {
    "Detections": "decode", "decode": "decode",
    "STRIDE": "network", "VertebraLocator": "network",
    "letterbox": "preprocess", "output_size": "preprocess",
    "LocatedVertebrae": "run", "locate": "run",
    "collate_targets": "targets", "encode_targets": "targets", "locator_loss": "targets",
    "LoadedLocator": "checkpoint", "load_locator": "checkpoint", "locate_radiograph": "checkpoint",
    "ImageTruth": "evaluate", "ImagePrediction": "evaluate", "locator_metrics": "evaluate",
    "evaluate_locator": "evaluate", "evaluate_checkpoint": "evaluate",
    "train_locator": "train",
}

__all__ = [
    "DEFORMITY_KINDS", "Detections", "Heights", "ImagePrediction", "ImageTruth", "LevelAssignment", "LoadedLocator",
    "LocatedVertebrae", "MORPHOMETRIC_GRADES", "Morphometry", "POINT_COLUMNS", "POINT_NAMES", "STRIDE",
    "VertebraLocator", "assign_levels", "collate_targets", "decode", "encode_targets", "evaluate_checkpoint",
    "evaluate_locator", "genant_grade", "height_unit", "letterbox", "load_locator", "locate", "locate_radiograph",
    "locator_loss", "locator_metrics", "neighbour_posterior_height", "output_size", "spine_morphometry",
    "train_locator", "vertebral_heights",
]

__getattr__ = lazy_attributes(__name__, _LAZY)
