"""The eight stored orientations of a film and the header's PatientOrientation (io.orientation)."""

from __future__ import annotations

import numpy as np
import pytest

from spine_dfl.io.orientation import CANONICAL, ORIENTATIONS, Orientation, orientation_from_header, parse_orientation


@pytest.mark.parametrize("orientation", ORIENTATIONS, ids=lambda o: o.name)
def test_to_stored_maps_each_canonical_pixel_centre_to_its_stored_pixel(orientation: Orientation) -> None:
    stored = np.random.default_rng(0).random((5, 7))
    canonical = orientation.apply(stored)
    assert canonical.shape == orientation.canonical_shape(stored.shape)
    ys, xs = np.mgrid[0 : canonical.shape[0], 0 : canonical.shape[1]]
    centres = np.stack([xs + 0.5, ys + 0.5], axis=-1)
    back = np.floor(orientation.points_to_stored(centres, stored.shape)).astype(int)
    np.testing.assert_array_equal(stored[back[..., 1], back[..., 0]], canonical)
    np.testing.assert_allclose(orientation.to_canonical(stored.shape) @ orientation.to_stored(stored.shape), np.eye(3))


@pytest.mark.parametrize("orientation", ORIENTATIONS, ids=lambda o: o.name)
def test_inverse_composition_and_names(orientation: Orientation) -> None:
    stored = np.arange(12.0).reshape(3, 4)
    np.testing.assert_array_equal(orientation.inverse().apply(orientation.apply(stored)), stored)
    assert orientation.then(orientation.inverse()) == CANONICAL
    for other in ORIENTATIONS:
        np.testing.assert_array_equal(other.apply(orientation.apply(stored)), orientation.then(other).apply(stored))
    assert parse_orientation(orientation.name) == orientation
    assert ORIENTATIONS[orientation.index] == orientation


def test_boxes_land_on_the_same_stored_pixels() -> None:
    stored = np.zeros((40, 60))
    stored[5:15, 20:32] = 1.0  # a box x 20-32, y 5-15
    for orientation in ORIENTATIONS:
        canonical = orientation.apply(stored)
        rows, cols = np.nonzero(canonical)
        box = np.array([[cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]], float)
        np.testing.assert_allclose(orientation.boxes_to_stored(box, stored.shape), [[20, 5, 32, 15]])


@pytest.mark.parametrize(
    ("words", "name"),
    [(["P", "F"], "as stored"), (["A", "F"], "flip"), (["P", "H"], "flip+rot180"), (["A", "H"], "rot180"),
     (["F", "P"], "flip+rot90"), (["AF", "FP"], "flip")],
)
def test_orientation_from_header(words: list[str], name: str) -> None:
    assert orientation_from_header(words).name == name


def test_header_words_of_the_canonical_film_after_each_turn() -> None:
    # A canonical film (P\F) stored turned by o.inverse(): the header of the stored film, read back, gives o.
    for orientation in ORIENTATIONS:
        stored_to_canonical = orientation.to_canonical((2, 2))[:2, :2]  # linear part, stored -> canonical
        words = []
        for step in (np.array([1.0, 0.0]), np.array([0.0, 1.0])):  # stored +x, +y in canonical axes
            c = stored_to_canonical @ step
            if abs(c[0]) > abs(c[1]):
                words.append("P" if c[0] > 0 else "A")
            else:
                words.append("F" if c[1] > 0 else "H")
        assert orientation_from_header(words) == orientation


@pytest.mark.parametrize("words", [None, [], ["L", "F"], ["R", "H"], ["P"], ["X", "F"], "PF", ["P", "A"]])
def test_not_a_lateral_pair_gives_none(words) -> None:
    assert orientation_from_header(words) is None
