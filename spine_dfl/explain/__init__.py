"""Patch heatmaps for clinicians: which patches of the radiograph drove each vertebra's grade.

DFL-CNN's P-stream filters each fire on one discriminative patch; their peaks are the model's own
explanation. ``explain`` draws them, with the predicted class's evidence map and a G-stream
Grad-CAM, one PNG per sample, plus ``patches.json`` and an HTML gallery.

- :mod:`~spine_dfl.explain.run`: :func:`explain` over records (the core);
- :mod:`~spine_dfl.explain.inputs`: :func:`explain_records` (a manifest's rows) and
  :func:`explain_inputs` (image files with a ROI table), the command's library entry points;
- :mod:`~spine_dfl.explain.samples`: records -> transformed samples (failures per record);
- :mod:`~spine_dfl.explain.gradcam`: MONAI Grad-CAM of the G-stream on a private copy;
- :mod:`~spine_dfl.explain.render`: the three-panel figure;
- :mod:`~spine_dfl.explain.gallery`: ``index.html`` (CSS and JS are package data under ``static/``).

Geometry, evidence maps and the display window live in ``spine_dfl.heatmap`` (shared with
``score`` and ``dicom_out``).
"""

from spine_dfl.explain.gallery import render_gallery
from spine_dfl.explain.gradcam import GStreamLogits, gradcam_target_layer
from spine_dfl.explain.inputs import ExplainInputError, ExplainRun, explain_inputs, explain_records, input_records
from spine_dfl.explain.render import render_sample_figure
from spine_dfl.explain.run import NoSampleExplained, explain

__all__ = [
    "ExplainInputError",
    "ExplainRun",
    "GStreamLogits",
    "NoSampleExplained",
    "explain",
    "explain_inputs",
    "explain_records",
    "gradcam_target_layer",
    "input_records",
    "render_gallery",
    "render_sample_figure",
]
