"""Six-point morphometry against hand-computed heights, ratios and Genant grades."""

from __future__ import annotations

import math

import numpy as np
import pytest

from spine_dfl.locate.morphometry import (
    POINT_COLUMNS,
    genant_grade,
    height_unit,
    neighbour_posterior_height,
    spine_morphometry,
    vertebral_heights,
)


def body(ha: float, hm: float, hp: float, x0: float = 0.0, y_mid: float = 0.0, depth: float = 30.0) -> np.ndarray:
    """Six points (sa, sm, sp, ia, im, ip) of an upright body, anterior on the left, heights in pixels."""
    xs = (x0, x0 + depth / 2, x0 + depth)
    sup = [(x, y_mid - h / 2) for x, h in zip(xs, (ha, hm, hp))]
    inf = [(x, y_mid + h / 2) for x, h in zip(xs, (ha, hm, hp))]
    return np.array(sup + inf, dtype=np.float64)


def test_point_columns_follow_the_point_order():
    assert POINT_COLUMNS[:4] == ("sa_x", "sa_y", "sm_x", "sm_y")
    assert POINT_COLUMNS[-2:] == ("ip_x", "ip_y")
    assert len(POINT_COLUMNS) == 12


def test_heights_in_pixels_and_in_mm_with_anisotropic_spacing():
    pts = body(14.0, 18.0, 20.0)
    h = vertebral_heights(pts)
    assert (float(h.anterior), float(h.middle), float(h.posterior)) == (14.0, 18.0, 20.0)
    assert h.unit == "pixels"
    # a slanted anterior pair: dx = 3 columns, dy = 4 rows; spacing (row 0.5, col 0.25) mm
    pts[0], pts[3] = (0.0, 0.0), (3.0, 4.0)
    h = vertebral_heights(pts, spacing_mm=(0.5, 0.25), spacing_source="ImagerPixelSpacing")
    assert float(h.anterior) == pytest.approx(math.hypot(3 * 0.25, 4 * 0.5))
    assert float(h.posterior) == pytest.approx(10.0)
    assert h.unit == "detector mm"


def test_units_name_where_the_spacing_came_from():
    assert height_unit(None, None) == "pixels"
    assert height_unit((0.1, 0.1), "PixelSpacing") == "patient mm"
    assert height_unit((0.1, 0.1), "ImagerPixelSpacing") == "detector mm"
    assert height_unit((0.1, 0.1), "detector mm") == "detector mm"
    with pytest.raises(ValueError, match="detector mm from patient mm"):
        height_unit((0.1, 0.1), None)


def test_bad_points_are_refused():
    with pytest.raises(ValueError, match=r"\(\.\.\., 6, 2\)"):
        vertebral_heights(np.zeros((4, 2)))
    bad = body(10, 10, 10)
    bad[2, 1] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        vertebral_heights(bad)
    with pytest.raises(ValueError, match="positive"):
        vertebral_heights(body(10, 10, 10), spacing_mm=(0.0, 0.1), spacing_source="PixelSpacing")


@pytest.mark.parametrize(
    "loss, grade",
    [(0.0, "normal"), (0.1999, "normal"), (0.20, "mild"), (0.2499, "mild"), (0.25, "moderate"),
     (0.40, "moderate"), (0.4001, "severe"), (0.9, "severe")],
)
def test_genant_bands(loss, grade):
    assert genant_grade(loss) == grade


def test_wedge_biconcave_and_crush_against_hand_computed_ratios():
    # levels 0..4: normal, wedge (Ha/Hp = 14/20 = 0.70), biconcave (Hm/Hp = 16.5/22 = 0.75),
    # crush (Hp 14 against neighbours (22 + 20) / 2 = 21: 0.6667), mild wedge (15.6/20 = 0.78)
    spine = np.stack([
        body(19.0, 19.5, 20.0, y_mid=0),
        body(14.0, 18.0, 20.0, y_mid=30),
        body(21.0, 16.5, 22.0, y_mid=60),
        body(13.5, 13.8, 14.0, y_mid=90),
        body(15.6, 19.0, 20.0, y_mid=120),
    ])
    m = spine_morphometry(spine, levels=[0, 1, 2, 3, 4])
    np.testing.assert_allclose(m.wedge_ratio, [0.95, 0.70, 21 / 22, 13.5 / 14, 0.78])
    np.testing.assert_allclose(m.biconcave_ratio, [0.975, 0.90, 0.75, 13.8 / 14, 0.95])
    np.testing.assert_allclose(m.crush_ratio, [20 / 20, 20 / 21, 22 / 17, 14 / 21, 20 / 14])
    np.testing.assert_allclose(m.height_loss, [0.05, 0.30, 0.25, 1 - 14 / 21, 0.22])
    assert m.grade == ("normal", "moderate", "moderate", "moderate", "mild")
    assert m.kind == ("none", "wedge", "biconcave", "crush", "wedge")


def test_neighbours_are_adjacent_levels_only():
    hp = np.array([20.0, 22.0, 24.0, 30.0])
    np.testing.assert_allclose(neighbour_posterior_height(hp, [3, 5, 6, 7]), [np.nan, 24.0, 26.0, 24.0])
    np.testing.assert_allclose(neighbour_posterior_height(hp), [22.0, 22.0, 26.0, 24.0])
    with pytest.raises(ValueError, match="twice"):
        neighbour_posterior_height(hp, [1, 1, 2, 3])


def test_a_lone_vertebra_has_no_crush_ratio_unless_an_expected_height_is_given():
    lone = body(20.0, 20.0, 12.0)[None]
    m = spine_morphometry(lone)
    assert math.isnan(float(m.crush_ratio[0]))
    assert m.grade == ("normal",)  # Ha/Hp > 1 is no wedge
    m = spine_morphometry(lone, expected_posterior=[20.0], spacing_mm=(0.2, 0.2), spacing_source="PixelSpacing")
    assert float(m.crush_ratio[0]) == pytest.approx(12.0 * 0.2 / 20.0)  # heights are in mm here
    m = spine_morphometry(lone, expected_posterior=[4.0], spacing_mm=(0.2, 0.2), spacing_source="PixelSpacing")
    assert float(m.crush_ratio[0]) == pytest.approx(0.6)
    assert (m.grade, m.kind) == (("moderate",), ("crush",))
    assert m.heights.unit == "patient mm"
