"""Which way a film is stored: the header's PatientOrientation where it is a lateral pair, the view
classifier's reading (``gate.view``) where the header is silent or clearly contradicted.

Headers are hints: often missing, sometimes wrong (a film flipped at the modality without the tag
following). The image overrules the header only when the classifier is confident
(``OVERRULE_PROBABILITY`` among the eight orientations) and sees a lateral spine at all.

:func:`head_axis_is_sure`: levels are counted only on a film whose head-foot axis is known (the header
agrees, or the classifier is confident where the head is): a head-down film read as head-up counts L5
as T12. Which way the patient faces does not change a count.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from spine_dfl.io.orientation import CANONICAL, Orientation, orientation_from_header

if TYPE_CHECKING:
    from spine_dfl.gate.view import ViewPrediction

# A synth lumbar cut was read upside down at 0.91 against its correct header (benchmarks/film_variants.py,
# seed-0 test films); whole films turned any way read at >= 0.96. Overruling the header (one of the eight)
# and counting levels on the classifier's word (where the head is: two of the eight) both need 0.95.
OVERRULE_PROBABILITY = 0.95
SURE_PROBABILITY = 0.95
LATERAL_PROBABILITY = 0.5


def choose_orientation(patient_orientation: Sequence[str] | None, view: ViewPrediction | None = None) -> Orientation:
    """The orientation that makes the film canonical (head up, anterior left).

    ``patient_orientation``: the header's (0020,0020) values or None; ``view``: a
    ``gate.view.ViewPrediction`` or None. Neither: the film is taken as stored. From the classifier
    alone: the most probable of the eight (choosing where the head is first, then the facing side,
    found one more of 13 synth lumbar cuts turned wrong: benchmarks/film_variants.py, seed 0).
    """
    header = orientation_from_header(patient_orientation)
    if view is not None and float(view.lateral_probability) >= LATERAL_PROBABILITY:
        if header is None or (view.orientation != header and float(view.orientation_probability) >= OVERRULE_PROBABILITY):
            return view.orientation
    return header if header is not None else CANONICAL


def head_axis_is_sure(patient_orientation: Sequence[str] | None, view: ViewPrediction | None, chosen: Orientation) -> bool:
    """Whether the head-foot axis of ``chosen`` is known rather than guessed, which is what counting
    levels needs (a head-down film read head up counts L5 as T12; a mirrored one counts the same):
    the header's lateral pair says ``chosen``, or the view classifier gives ``chosen`` and its mirror
    image together at least ``SURE_PROBABILITY`` of its eight-way share."""
    if view is not None and view.head_axis_share(chosen) >= SURE_PROBABILITY:
        return True
    header = orientation_from_header(patient_orientation)
    return header is not None and header == chosen
