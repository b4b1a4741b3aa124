"""Landmark refinement on constructed radiographs, and decoding that drops peaks in the letterbox padding."""

from __future__ import annotations

import numpy as np
import torch

from spine_dfl.locate.decode import Detections, decode
from spine_dfl.locate.preprocess import letterbox, output_size
from spine_dfl.locate.refine import refine_located, refine_points
from spine_dfl.locate.run import LocatedVertebrae
from spine_dfl.locate.targets import encode_targets

from tests.test_locate_detector import outputs_from_targets, spine_boxes

ANGLE = np.deg2rad(14.0)
CENTRE = np.array([64.0, 72.0])
AXIS = np.array([-np.sin(ANGLE), np.cos(ANGLE)])  # local +v (superior -> inferior) in image (x, y)
ALONG = np.array([np.cos(ANGLE), np.sin(ANGLE)])  # local +u (along the endplates)
U = np.array([-16.0, 0.0, 16.0])  # where the anterior, middle and posterior points lie along the endplates


def superior_v(u: np.ndarray) -> np.ndarray:
    return -17.0 + 0.12 * u  # a tilted superior endplate: the body is a trapezoid (a wedge)


def inferior_v(u: np.ndarray) -> np.ndarray:
    return 18.0 + 0.0 * u


def to_image(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return CENTRE + u[..., None] * ALONG + v[..., None] * AXIS


def to_local(xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    d = xy - CENTRE
    return d @ ALONG, d @ AXIS


def trapezoid_image(body: float = 900.0, background: float = 300.0, noise: float = 6.0, seed: int = 0,
                    walls: tuple[float, float] = (-22.0, 22.0)) -> np.ndarray:
    """A rotated bright trapezoid, edges area-sampled (8 x 8 per pixel) so they lie exactly where drawn,
    seen through a 1-pixel Gaussian blur with a little noise; continuous pixels (pixel i covers [i, i+1))."""
    from scipy import ndimage

    rows, cols, sub = 150, 130, 8
    ys, xs = np.mgrid[0:rows * sub, 0:cols * sub]
    xy = np.stack([(xs + 0.5) / sub, (ys + 0.5) / sub], axis=-1)
    u, v = to_local(xy)
    inside = (u >= walls[0]) & (u <= walls[1]) & (v >= superior_v(u)) & (v <= inferior_v(u))
    cover = inside.reshape(rows, sub, cols, sub).mean(axis=(1, 3))
    image = background + (body - background) * ndimage.gaussian_filter(cover, 1.0)
    return (image + np.random.default_rng(seed).normal(0.0, noise, image.shape)).astype(np.float32)


def true_points() -> np.ndarray:
    return np.concatenate([to_image(U, superior_v(U)), to_image(U, inferior_v(U))])[None]  # (1, 6, 2)


def edge_distance(points: np.ndarray) -> np.ndarray:
    """(6,) signed axial distance of each point from its true endplate line."""
    u, v = to_local(points.reshape(6, 2))
    return np.concatenate([v[:3] - superior_v(u[:3]), v[3:] - inferior_v(u[3:])])


def perturbed_points() -> np.ndarray:
    """The true points moved up to 4 px along the axis and 1.5 px along the endplates (a locator's error)."""
    axial = np.array([3.1, -2.4, 1.7, -3.6, 2.2, -1.3])
    along = np.array([1.5, -0.8, 0.4, -1.2, 0.9, -0.3])
    return true_points() + axial[None, :, None] * AXIS + along[None, :, None] * ALONG


def test_refined_points_land_on_the_endplate_edges_within_a_fraction_of_a_pixel():
    start = perturbed_points()
    assert np.abs(edge_distance(start)).min() > 1.0
    result = refine_points(trapezoid_image(), start)
    assert result.refined.all()
    np.testing.assert_array_less(np.abs(edge_distance(result.points)), 0.25)
    # along the endplates the points go to the manifest's convention: 10 % of the wall-to-wall depth (44 px)
    # inside the anterior (u = -22) and posterior (u = 22) walls, the middle ones at mid-depth
    assert result.walls.all()
    u, _ = to_local(result.points[0])
    np.testing.assert_allclose(u, [-17.6, 0.0, 17.6, -17.6, 0.0, 17.6], atol=0.25)
    np.testing.assert_allclose(result.shift[0], (result.points - start)[0] @ AXIS, atol=0.15)


def test_a_missing_wall_keeps_the_locator_position_on_that_side():
    start = perturbed_points()
    # the body runs anteriorly off the image: no anterior wall within reach of the locator's points
    result = refine_points(trapezoid_image(walls=(-200.0, 22.0)), start)
    assert result.walls.tolist() == [[False, False, True, False, False, True]]
    u_start, _ = to_local(start[0])
    u, _ = to_local(result.points[0])
    kept = (result.points - start)[0, [0, 1, 3, 4]]  # moved only axially (the axis the points imply)
    np.testing.assert_array_less(np.abs(kept @ ALONG), 0.1 * np.abs(kept @ AXIS) + 0.02)
    # the posterior points: 10 % of the depth the anterior points imply (a-p distance / 0.8) inside the found wall
    depth = (u[[2, 5]] - u[[0, 3]]) / 0.8  # each endplate's
    np.testing.assert_allclose(u[[2, 5]], 22.0 - 0.1 * depth, atol=0.25)
    assert abs(u[2] - u_start[2]) > 0.5  # it did move
    np.testing.assert_array_less(np.abs(edge_distance(result.points)), 0.25)


def test_points_already_on_the_edges_stay_there():
    result = refine_points(trapezoid_image(seed=3), true_points())
    assert result.refined.all()
    np.testing.assert_array_less(np.abs(edge_distance(result.points)), 0.25)


def test_a_flat_image_and_a_dark_body_fall_back_to_the_locator_points():
    start = perturbed_points()
    flat = refine_points(np.full((150, 130), 500.0, np.float32), start)
    assert not flat.refined.any()
    np.testing.assert_array_equal(flat.points, start)
    np.testing.assert_array_equal(flat.shift, 0.0)
    # wrong polarity (body darker than the disc): no rising step into the body, no falling one out of it
    dark = refine_points(trapezoid_image(body=300.0, background=900.0, noise=0.0), start)
    assert not dark.refined.any()
    np.testing.assert_array_equal(dark.points, start)


def test_points_whose_profile_leaves_the_image_are_kept():
    start = perturbed_points() - CENTRE + np.array([64.0, 8.0])  # the superior points' profiles cross the top edge
    result = refine_points(trapezoid_image(), start)
    assert not result.refined[0, :3].any()
    np.testing.assert_array_equal(result.points[0, :3], start[0, :3])


def test_refine_located_keeps_the_locator_points_beside_the_refined_ones():
    start = perturbed_points()
    located = LocatedVertebrae(
        detections=Detections(boxes=np.array([[40.0, 50.0, 90.0, 95.0]]), points=start, centres=CENTRE[None],
                              scores=np.array([0.9]), level_logits=np.zeros((1, 3))),
        levels=("L1",), level_confidence=np.array([1.0]), ambiguous=False, head_up=True)
    refined = refine_located(located, trapezoid_image())
    np.testing.assert_array_equal(refined.unrefined_points, start)
    assert refined.refined.shape == (1, 6) and refined.refined.all()
    np.testing.assert_array_less(np.abs(edge_distance(refined.detections.points)), 0.25)
    np.testing.assert_array_equal(refined.detections.boxes, located.detections.boxes)
    assert refined.levels == located.levels
    empty = LocatedVertebrae(located.detections.take(np.zeros(0, np.int64)), (), np.zeros(0), False, True)
    assert refine_located(empty, trapezoid_image()).refined.shape == (0, 6)


def test_decode_drops_peaks_centred_in_the_letterbox_padding_before_the_cut():
    rows, cols = 1200, 300
    size = (384, 192)  # the image fills input columns 48 .. 144; the rest is padding
    _, to_original = letterbox(np.ones((rows, cols), dtype=np.float32), size)
    boxes, points, _ = spine_boxes(5, np.random.default_rng(4), x0=75.0, top=40.0)
    ghost = np.array([[6.0, 300.0, 40.0, 326.0]])  # a peak in the left padding (input pixels)
    ghost_points = np.repeat(((ghost[:, :2] + ghost[:, 2:]) / 2)[:, None], 6, axis=1)
    t = encode_targets(np.concatenate([ghost, boxes]), output_size(size), np.concatenate([ghost_points, points]),
                       np.arange(6))
    maps = outputs_from_targets(t, 6)
    all_peaks = decode(maps, to_original, threshold=0.5)
    assert len(all_peaks) == 6 and (all_peaks.centres[:, 0] < 0).sum() == 1
    found = decode(maps, to_original, threshold=0.5, max_detections=5, image_shape=(rows, cols))
    assert len(found) == 5
    assert ((found.centres[:, 0] >= 0) & (found.centres[:, 0] <= cols)).all()
    assert sorted(found.level_logits.argmax(axis=1).tolist()) == [1, 2, 3, 4, 5]
    np.testing.assert_array_equal(np.diff(found.scores) <= 0, True)  # still sorted by score
    assert len(decode(maps, to_original, threshold=0.5, max_detections=3, image_shape=(rows, cols))) == 3


def test_decode_keeps_everything_inside_the_image():
    rows, cols = 384, 192  # no padding: the input is the image
    boxes, points, levels = spine_boxes(5, np.random.default_rng(5))
    t = encode_targets(boxes, output_size((rows, cols)), points, levels)
    maps = outputs_from_targets(t, 5)
    inside = decode(maps, torch.eye(3, dtype=torch.float64), threshold=0.5, image_shape=(rows, cols))
    assert len(inside) == len(decode(maps, torch.eye(3, dtype=torch.float64), threshold=0.5)) == 5
