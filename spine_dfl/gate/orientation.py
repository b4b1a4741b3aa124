"""Which way a film is stored: the header's PatientOrientation where it is a lateral pair, the view
classifier's reading (``gate.view``) where the header is silent or clearly contradicted.

Headers are hints: often missing, sometimes wrong (a film flipped at the modality without the tag
following). The image overrules the header only when the classifier is confident
(``OVERRULE_PROBABILITY`` among the eight orientations) and sees a lateral spine at all.

:func:`orientation_is_sure`: levels are counted only on a film whose orientation is known (the header
agrees, or the classifier is confident): a head-down film read as head-up counts L5 as T12.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from spine_dfl.io.orientation import CANONICAL, Orientation, orientation_from_header

if TYPE_CHECKING:
    from spine_dfl.gate.view import ViewPrediction

# A synth lumbar cut was read upside down at 0.91 against its correct header (benchmarks/film_variants.py,
# seed-0 test films); whole films turned any way read at >= 0.96. Overruling the header and counting
# levels on the classifier's word both need 0.95.
OVERRULE_PROBABILITY = 0.95
SURE_PROBABILITY = 0.95
LATERAL_PROBABILITY = 0.5


def choose_orientation(patient_orientation: Sequence[str] | None, view: ViewPrediction | None = None) -> Orientation:
    """The orientation that makes the film canonical (head up, anterior left).

    ``patient_orientation``: the header's (0020,0020) values or None; ``view``: a
    ``gate.view.ViewPrediction`` or None. Neither: the film is taken as stored.
    """
    header = orientation_from_header(patient_orientation)
    if view is not None and float(view.lateral_probability) >= LATERAL_PROBABILITY:
        if header is None or (view.orientation != header and float(view.orientation_probability) >= OVERRULE_PROBABILITY):
            return view.orientation
    return header if header is not None else CANONICAL


def orientation_is_sure(patient_orientation: Sequence[str] | None, view: ViewPrediction | None, chosen: Orientation) -> bool:
    """Whether ``chosen`` is known rather than guessed: the header's lateral pair says it (and the view
    classifier does not confidently say otherwise), or the classifier gives it at least
    ``SURE_PROBABILITY`` of its eight-way share."""
    header = orientation_from_header(patient_orientation)
    if view is not None and view.orientation == chosen and float(view.orientation_probability) >= SURE_PROBABILITY:
        return True
    return header is not None and header == chosen
