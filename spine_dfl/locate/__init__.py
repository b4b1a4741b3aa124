"""Vertebra locator: find, label and measure the vertebrae of a whole radiograph.

    preprocess   letterbox: radiograph -> fixed-size input + exact to_original affine
    network      VertebraLocator: ResNet-18 trunk, top-down neck to stride 4, CenterNet heads
    targets      ground truth -> head targets; focal + L1 + cross-entropy loss
    decode       output maps -> boxes, six points, level logits, scores in original pixels
    labelling    consecutive levels along the spine by dynamic programming
    morphometry  six-point heights, Genant ratios and morphometric grade
    run          train_locator_epoch, locate
"""

from spine_dfl.locate.decode import Detections, decode
from spine_dfl.locate.labelling import LevelAssignment, assign_levels, spine_order
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
from spine_dfl.locate.network import STRIDE, VertebraLocator
from spine_dfl.locate.preprocess import letterbox, output_size
from spine_dfl.locate.run import LocatedVertebrae, locate, train_locator_epoch
from spine_dfl.locate.targets import collate_targets, encode_targets, locator_loss

__all__ = [
    "DEFORMITY_KINDS", "MORPHOMETRIC_GRADES", "POINT_COLUMNS", "POINT_NAMES", "STRIDE",
    "Detections", "Heights", "LevelAssignment", "LocatedVertebrae", "Morphometry", "VertebraLocator",
    "assign_levels", "collate_targets", "decode", "encode_targets", "genant_grade", "height_unit",
    "letterbox", "locate", "locator_loss", "neighbour_posterior_height", "output_size", "spine_morphometry",
    "spine_order", "train_locator_epoch", "vertebral_heights",
]
