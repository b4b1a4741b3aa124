"""Synthetic cohort of lateral thoracolumbar spine radiographs with Genant-graded vertebrae.

``generate_cohort(out_dir, patients, seed)`` writes one DICOM radiograph per patient plus the
tables that the rest of spine-dfl reads:

``images/P0000.dcm``   lateral view, vertebral bodies T4-L5 (plus partial T3 and S1 for context),
                       anterior to the left (columns increase towards posterior, rows towards the
                       feet: PatientOrientation ``P\\F``).  Every 8th file has no ``.dcm`` suffix,
                       as PACS exports often have none.
``manifest.csv``, ``rois.csv``, ``vertebrae.csv``, ``cohort.json``: see ``tables``
(vertebrae.csv also holds each fracture's kind, its deformed part and the body outline,
manifest.csv and vertebrae.csv the six morphometry points).

Grades (Genant semi-quantitative): height loss = 1 - min(Ha, Hm, Hp) / H_ref where Ha, Hm, Hp
are the anterior, middle and posterior body heights (measured at 10 % of the depth inside the
anterior wall, mid-depth, 10 % inside the posterior wall) and H_ref the expected height of
that vertebra for that patient.  Drawn losses (HEIGHT_LOSS_RANGES): normal < 0.15 (natural
wedging and endplate concavity), mild 0.205-0.245, moderate 0.28-0.37, severe 0.43-0.62;
shapes wedge (anterior loss), biconcave (middle loss), crush (posterior-dominant loss of the
whole body).  Moderate and severe fractures also show a broken endplate cortex and a dense
impaction band; mild ones only the height loss.  Wedged bodies tilt the spine above them
(the chain of bodies and discs is stacked from the sacrum up).  Same seed -> same bytes.

Modules, in the order of the flow:

- ``anatomy``: body shapes, grades and the stacked spine (mm, no pixels);
- ``scene``: the world-to-image frame and the beam's attenuation constants;
- ``style``: a site's acquisition (detector, processing, habitus, ROI convention) as presets;
- ``drawing``: polygon fills, curves, fast blur;
- ``bones`` and ``render``: image formation in phases (soft tissue, bones, detector, processing);
- ``truth``: the ground truth of each vertebra and its exact pixel mask;
- ``landmarks``: its six morphometry points, corners, outline and deformed part in pixels;
- ``dicom``: quantisation, the CR / DX dataset, lossless encoding;
- ``cohort``, ``records``, ``tables``: the cohort, its split and its tables.
"""

from __future__ import annotations

from spine_dfl.synth.anatomy import (
    CLASS_NAMES,
    DEFAULT_GRADE_PROBABILITIES,
    HEIGHT_LOSS_RANGES,
    LABELLED_LEVELS,
    SHAPES,
    SYNTH_VERSION,
    BodyShape,
    body_heights_mm,
)
from spine_dfl.synth.cohort import generate_cohort
from spine_dfl.synth.landmarks import DEFORMED_PARTS, body_corners, body_outline, deformed_outline, six_points
from spine_dfl.synth.records import CohortSummary, PatientRecord
from spine_dfl.synth.render import RenderedPatient, render_patient
from spine_dfl.synth.style import STYLES, SynthStyle, synth_style
from spine_dfl.synth.truth import VertebraTruth, body_coverage, body_mask

__all__ = [
    "CLASS_NAMES",
    "SHAPES",
    "LABELLED_LEVELS",
    "DEFAULT_GRADE_PROBABILITIES",
    "HEIGHT_LOSS_RANGES",
    "SYNTH_VERSION",
    "BodyShape",
    "VertebraTruth",
    "PatientRecord",
    "CohortSummary",
    "RenderedPatient",
    "STYLES",
    "SynthStyle",
    "synth_style",
    "generate_cohort",
    "render_patient",
    "body_coverage",
    "body_mask",
    "body_heights_mm",
    "DEFORMED_PARTS",
    "six_points",
    "body_corners",
    "body_outline",
    "deformed_outline",
]
