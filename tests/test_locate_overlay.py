"""The Secondary Capture overlay draws the locator's six points of a finding (``cells["points"]``)."""

from __future__ import annotations

import numpy as np

from spine_dfl.dicom_out import VertebraFinding
from spine_dfl.dicom_out.overlay import render_roi_overlay

CLASSES = ("normal", "mild", "moderate", "severe")
CYAN, GREEN = (0, 255, 255), (0, 255, 0)


def finding(cells: dict) -> VertebraFinding:
    return VertebraFinding("L1", (40.0, 50.0, 160.0, 150.0), "normal", dict(zip(CLASSES, [0.7, 0.1, 0.1, 0.1])),
                           cells=cells)


def test_overlay_draws_the_six_points_as_two_endplates():
    image = np.tile(np.linspace(0.0, 1.0, 200, dtype=np.float32), (200, 1))
    points = ((60.0, 70.0), (100.0, 66.0), (140.0, 62.0), (62.0, 130.0), (100.0, 128.0), (138.0, 126.0))
    with_points = render_roi_overlay(image, [finding({"roi_source": "locator", "points": points})], CLASSES)
    without = render_roi_overlay(image, [finding({"roi_source": "locator"})], CLASSES)
    for k, (x, y) in enumerate(points):
        colour = CYAN if k < 3 else GREEN
        assert tuple(with_points[int(y), int(x)]) == colour, (k, with_points[int(y), int(x)])
        assert without[int(y), int(x), 0] == without[int(y), int(x), 1] == without[int(y), int(x), 2]  # plain grey
    # the endplates are joined: halfway between sa and sm is cyan, between ia and im green
    assert tuple(with_points[68, 80]) == CYAN and tuple(with_points[129, 81]) == GREEN
    changed = np.any(with_points != without, axis=2)
    ys, xs = np.nonzero(changed)
    assert xs.min() >= 55 and xs.max() <= 145 and ys.min() >= 57 and ys.max() <= 135  # only around the points


def test_overlay_skips_points_that_are_missing_or_malformed():
    image = np.full((200, 200), 0.5, np.float32)
    plain = render_roi_overlay(image, [finding({})], CLASSES)
    for cells in ({"points": ()}, {"points": ((1.0, 2.0),) * 5}, {"points": ((np.nan, 2.0),) * 6}):
        np.testing.assert_array_equal(render_roi_overlay(image, [finding(cells)], CLASSES), plain)
