"""Heatmaps shared by ``explain``, ``score`` and ``dicom_out``: geometry, evidence maps, display.

- ``geometry``: feature grid -> network input -> original pixels, view and display regions,
  box clipping;
- ``evidence``: THE P-stream evidence map (max of a class's filter responses) and its
  picklable ``EvidenceMap`` with geometry;
- ``peaks``: sub-cell peak refinement and one class's distinct patches (duplicates suppressed);
- ``display``: THE display window, grey / uint8 conversions, the heatmap colour map and blend.

``display`` needs only numpy; ``geometry`` and ``evidence`` (torch) load on first use of one of
their names, so importing the display helpers stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from spine_dfl.heatmap.display import (
    DISPLAY_PERCENTILES,
    HEATMAP_ALPHA_MAX,
    HEATMAP_ALPHA_MIN,
    HEATMAP_CMAP,
    RANK_COLOURS,
    display_window,
    grey_rgb,
    heat_overlay,
    heatmap_colormap,
    to_display_uint8,
)
from spine_dfl.lazy import lazy_attributes

if TYPE_CHECKING:  # the lazy names below, for editors and type checkers
    from spine_dfl.heatmap.evidence import EvidenceMap, class_evidence, evidence_on_source, evidence_patches
    from spine_dfl.heatmap.geometry import (
        STRIP_PIXELS,
        clip_boxes,
        display_region,
        feature_map_to_original,
        feature_map_to_tensor_space,
        tensor_map_to_original,
        view_region,
    )
    from spine_dfl.heatmap.peaks import (
        DUPLICATE_IOU,
        class_patches,
        grid_to_input,
        map_peak_to_original,
        refine_peaks,
        suppress_duplicates,
    )

# name -> the submodule that defines it (torch: imported on first use)
_LAZY = {
    "STRIP_PIXELS": "geometry",
    "clip_boxes": "geometry",
    "display_region": "geometry",
    "feature_map_to_original": "geometry",
    "feature_map_to_tensor_space": "geometry",
    "tensor_map_to_original": "geometry",
    "view_region": "geometry",
    "DUPLICATE_IOU": "peaks",
    "class_patches": "peaks",
    "grid_to_input": "peaks",
    "map_peak_to_original": "peaks",
    "refine_peaks": "peaks",
    "suppress_duplicates": "peaks",
    "EvidenceMap": "evidence",
    "class_evidence": "evidence",
    "evidence_on_source": "evidence",
    "evidence_patches": "evidence",
}

__all__ = [
    "DISPLAY_PERCENTILES", "DUPLICATE_IOU", "EvidenceMap", "HEATMAP_ALPHA_MAX", "HEATMAP_ALPHA_MIN", "HEATMAP_CMAP",
    "RANK_COLOURS", "STRIP_PIXELS", "class_evidence", "class_patches", "clip_boxes", "display_region",
    "display_window", "evidence_on_source", "evidence_patches", "feature_map_to_original",
    "feature_map_to_tensor_space", "grey_rgb", "grid_to_input", "heat_overlay", "heatmap_colormap",
    "map_peak_to_original", "refine_peaks", "suppress_duplicates", "tensor_map_to_original", "to_display_uint8",
    "view_region",
]

__getattr__ = lazy_attributes(__name__, _LAZY)
