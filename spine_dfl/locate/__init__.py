"""Vertebra locator: find, label and measure the vertebrae of a whole radiograph.

    preprocess   letterbox: radiograph -> fixed-size input + exact to_original affine
    network      VertebraLocator: ResNet-18 trunk, top-down neck to stride 4, CenterNet heads
    targets      ground truth -> head targets; focal + L1 + cross-entropy loss
    decode       output maps -> boxes, six points, level logits, scores in original pixels
    labelling    consecutive levels along the spine by dynamic programming
    morphometry  six-point heights, Genant ratios and morphometric grade
    run          train_locator_epoch, locate
    augment      exact geometric + intensity augmentation of input and targets
    samples      manifest -> letterboxed training / evaluation samples
    evaluate     detection, identification and measurement figures
    checkpoint   the self-contained locator checkpoint (``kind: locator``)
    train        ``spine-dfl train`` with ``task: locator``

Names load on first use (the ``locator:`` config section is ``spine_dfl.config.locator``).
"""


from spine_dfl.lazy import lazy_attributes

_LAZY: dict[str, str] = {
    "Detections": "decode", "decode": "decode",
    "LevelAssignment": "labelling", "assign_levels": "labelling",
    **{name: "morphometry" for name in (
        "DEFORMITY_KINDS", "MORPHOMETRIC_GRADES", "POINT_COLUMNS", "POINT_NAMES", "Heights", "Morphometry",
        "genant_grade", "height_unit", "neighbour_posterior_height", "spine_morphometry", "vertebral_heights")},
    "STRIDE": "network", "VertebraLocator": "network",
    "letterbox": "preprocess", "output_size": "preprocess",
    "LocatedVertebrae": "run", "locate": "run", "train_locator_epoch": "run",
    "collate_targets": "targets", "encode_targets": "targets", "locator_loss": "targets",
    "LoadedLocator": "checkpoint", "load_locator": "checkpoint", "locate_radiograph": "checkpoint",
    "ImageTruth": "evaluate", "ImagePrediction": "evaluate", "locator_metrics": "evaluate",
    "evaluate_locator": "evaluate", "evaluate_checkpoint": "evaluate",
    "train_locator": "train",
}

__all__ = sorted(_LAZY)


__getattr__ = lazy_attributes(__name__, _LAZY)
