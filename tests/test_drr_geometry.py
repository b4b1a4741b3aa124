"""DRR geometry and rendering: objects in a CT with an oblique, non-RAS affine land where the
projection matrix says, with the size the magnification says; stored turns and mirrors move pixels
and matrix alike; exposure is deterministic and bone-bright."""

from __future__ import annotations

import math

import nibabel as nib
import numpy as np
import pytest
import torch

from conftest import load_benchmark
from spine_dfl.drr.geometry import (
    DrrGeometry,
    detector_frame,
    patient_orientation,
    project_points,
    projection_matrix,
    reorient_array,
    reoriented,
    source_position,
    sub_geometry,
)
from spine_dfl.drr.render import Exposure, expose, hu_to_mu, line_integrals, path_lengths

ISO = (5.0, -8.0, 12.0)
VIEWS = [("lateral", "left"), ("lateral", "right"), ("ap", "left")]


def _rotation(axis, degrees: float) -> np.ndarray:
    axis = np.asarray(axis, dtype=float) / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    a = math.radians(degrees)
    return np.eye(3) + math.sin(a) * k + (1 - math.cos(a)) * k @ k


def oblique_affine(shape, spacing, centre) -> np.ndarray:
    """Voxel axes permuted and flipped (i -> -y, j -> +z, k -> -x), anisotropic, then turned 20
    degrees about an oblique axis; the volume centred on ``centre``."""
    permute = np.array([[0.0, 0.0, -1.0], [-1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    m = _rotation([1.0, 2.0, 0.5], 20.0) @ permute @ np.diag(spacing)
    affine = np.eye(4)
    affine[:3, :3] = m
    affine[:3, 3] = np.asarray(centre) - m @ ((np.asarray(shape) - 1) / 2.0)
    return affine


def _voxel_world(shape, affine) -> np.ndarray:
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1).reshape(-1, 3)
    return ijk @ affine[:3, :3].T + affine[:3, 3]


def _centroid(image: np.ndarray) -> np.ndarray:
    """Intensity-weighted centroid in continuous pixels (pixel centres at + 0.5)."""
    ys, xs = np.mgrid[0:image.shape[0], 0:image.shape[1]] + 0.5
    return np.array([(image * xs).sum(), (image * ys).sum()]) / image.sum()


SHAPE = (64, 56, 72)
AFFINE = oblique_affine(SHAPE, (0.9, 0.7, 1.1), ISO)


def test_the_test_affine_is_oblique_and_not_ras():
    codes = nib.aff2axcodes(AFFINE)
    assert codes != ("R", "A", "S") and len(set(codes)) == 3
    cosines = np.abs(AFFINE[:3, :3] / np.linalg.norm(AFFINE[:3, :3], axis=0))
    assert cosines.max(axis=0).min() < 0.97  # no voxel axis along a world axis


def _geometries():
    for view, side in VIEWS:
        yield DrrGeometry(rows=220, cols=260, isocentre=ISO, view=view, source_side=side)
        yield DrrGeometry(rows=220, cols=260, isocentre=ISO, view=view, source_side=side, rotation_deg=15.0,
                          principal=(140.5, 95.25), sid_mm=1100.0, sod_mm=780.0, pixel_mm=0.4)


@pytest.mark.parametrize("g", list(_geometries()), ids=lambda g: f"{g.view_position}-rot{g.rotation_deg:g}")
def test_sphere_and_point_project_where_the_matrix_says(g):
    P = projection_matrix(g)
    world = _voxel_world(SHAPE, AFFINE)
    centre, radius = np.array(ISO) + [9.0, -6.0, 11.0], 5.0
    ball = np.clip(radius - np.linalg.norm(world - centre, axis=1) + 0.5, 0.0, 1.0)  # partial-volume edge
    image = line_integrals(torch.from_numpy(ball.reshape(SHAPE).astype(np.float32)) * 0.05, AFFINE, g).numpy()
    expected = project_points(P, centre)[0]
    assert 10 < expected[0] < g.cols - 10 and 10 < expected[1] < g.rows - 10
    assert np.abs(_centroid(image) - expected).max() < 0.2  # the acceptance asks 0.5 px
    assert image.max() == pytest.approx(2 * radius * 0.05, rel=0.03)  # the chord through the centre

    voxel = (30, 20, 41)
    point = np.zeros(SHAPE, np.float32)
    point[voxel] = 1.0
    blob = line_integrals(torch.from_numpy(point), AFFINE, g).numpy()
    expected = project_points(P, AFFINE[:3, :3] @ np.array(voxel) + AFFINE[:3, 3])[0]
    assert np.abs(_centroid(blob) - expected).max() < 0.2
    assert np.count_nonzero(blob) < 60  # a compact blob, not a smear


@pytest.mark.parametrize("view", ["lateral", "ap"])
def test_sphere_disk_diameter_is_2r_sid_over_sod_over_pitch(view):
    r, h = 10.0, 0.35
    n = int(2 * (r + 2) / h) + 1
    shape = (n, n + 2, n - 2)
    affine = oblique_affine(shape, (h, 1.1 * h, 0.9 * h), (0.0, 0.0, 0.0))
    mask = (np.linalg.norm(_voxel_world(shape, affine), axis=1) <= r).reshape(shape)
    g = DrrGeometry(rows=80, cols=80, isocentre=(0.0, 0.0, 0.0), view=view, pixel_mm=0.6, sid_mm=1100.0, sod_mm=800.0)
    lengths = path_lengths(torch.from_numpy(mask), affine, g).numpy()
    expected = 2 * r * g.sid_mm / g.sod_mm / g.pixel_mm  # 45.8 px
    diameter = lambda level: 2 * math.sqrt(np.count_nonzero(lengths > level) / math.pi)  # noqa: E731
    # the silhouette (rays > 1 mm inside) is the disk; rays that only graze the interpolated mask
    # (trilinear in the volume, then bilinear on the reference plane) add under two voxels a side
    assert abs(diameter(1.0) - expected) < 1.0
    footprint = 1.1 * h * g.magnification / g.pixel_mm
    assert expected < diameter(0.0) < expected + 2 * 2 * footprint
    assert lengths.max() == pytest.approx(2 * r, rel=0.02)
    assert _centroid(lengths) == pytest.approx([40.0, 40.0], abs=0.1)


def test_matrix_agrees_with_source_and_detector_frame():
    g = DrrGeometry(rows=300, cols=200, isocentre=ISO, rotation_deg=-25.0, principal=(77.0, 160.5), pixel_mm=0.3)
    P = projection_matrix(g)
    origin, e_u, e_v = detector_frame(g)
    assert np.dot(e_u, e_v) == pytest.approx(0.0, abs=1e-12)
    assert P[:, :3] @ source_position(g) + P[:, 3] == pytest.approx([0.0, 0.0, 0.0], abs=1e-6)  # w = 0 at the source
    uv = np.array([[0.0, 0.0], [12.5, 250.0], [199.0, 3.25], [77.0, 160.5]])
    on_detector = origin + g.pixel_mm * (uv[:, :1] * e_u + uv[:, 1:] * e_v)
    assert project_points(P, on_detector) == pytest.approx(uv, abs=1e-9)
    # any point on the ray from the source through a detector point projects onto it
    halfway = source_position(g) + 0.6 * (on_detector - source_position(g))
    assert project_points(P, halfway) == pytest.approx(uv, abs=1e-9)
    assert project_points(P, [ISO])[0] == pytest.approx([77.0, 160.5], abs=1e-9)  # the central ray


def test_sub_geometry_is_the_window_of_the_whole_detector():
    g = DrrGeometry(rows=220, cols=260, isocentre=ISO, rotation_deg=15.0, principal=(140.5, 95.25), pixel_mm=0.4)
    x0, y0, x1, y1 = 144, 46, 181, 77  # a 37 x 31 window over the sphere's disk, cutting through it
    sub = sub_geometry(g, x0, y0, x1, y1)
    assert (sub.rows, sub.cols) == (31, 37)
    assert np.allclose(source_position(sub), source_position(g))
    assert np.allclose(detector_frame(sub)[1:], detector_frame(g)[1:])  # the same plane and directions
    shift = np.array([[1.0, 0.0, -x0], [0.0, 1.0, -y0], [0.0, 0.0, 1.0]])
    assert projection_matrix(sub) == pytest.approx(shift @ projection_matrix(g), abs=1e-9)
    world = _voxel_world(SHAPE, AFFINE)
    ball = np.clip(5.5 - np.linalg.norm(world - (np.array(ISO) + [9.0, -6.0, 11.0]), axis=1), 0.0, 1.0)
    mu = torch.from_numpy(ball.reshape(SHAPE).astype(np.float32))
    whole = line_integrals(mu, AFFINE, g).numpy()
    window = line_integrals(mu, AFFINE, sub).numpy()
    assert whole[y0:y1, x0:x1].sum() > 0.5 * whole.sum()  # the window holds most of the disk
    assert np.abs(window - whole[y0:y1, x0:x1]).max() < 0.03 * whole.max()  # only the resampling grid differs


def test_patient_orientation_and_view_position():
    lateral_left = DrrGeometry(rows=10, cols=10, isocentre=ISO, source_side="left")
    lateral_right = DrrGeometry(rows=10, cols=10, isocentre=ISO, source_side="right")
    ap = DrrGeometry(rows=10, cols=10, isocentre=ISO, view="ap")
    assert patient_orientation(lateral_left) == ("P", "F") and lateral_left.view_position == "RL"
    assert patient_orientation(lateral_right) == ("A", "F") and lateral_right.view_position == "LL"
    assert patient_orientation(ap) == ("L", "F") and ap.view_position == "AP"
    # the picture agrees: anterior lands at smaller columns on RL, larger on LL, the patient's left at larger on AP
    cases = ((lateral_left, [0, 10, 0], False), (lateral_right, [0, 10, 0], True), (ap, [-10, 0, 0], True))
    for g, step, larger in cases:
        a, b = project_points(projection_matrix(g), [ISO, np.add(ISO, step)])
        assert (b[0] > a[0]) == larger
        down = project_points(projection_matrix(g), [np.add(ISO, [0, 0, -10])])[0]
        assert down[1] > a[1]  # feet towards larger rows


def test_reoriented_matrix_and_reoriented_pixels_agree_in_all_eight_orientations():
    g = DrrGeometry(rows=40, cols=70, isocentre=(0.0, 0.0, 0.0), rotation_deg=10.0, principal=(30.0, 22.0))
    P = projection_matrix(g)
    image = np.arange(g.rows * g.cols, dtype=np.int64).reshape(g.rows, g.cols)
    rng = np.random.default_rng(4)
    pixels = np.stack([rng.integers(0, g.cols, 200), rng.integers(0, g.rows, 200)], axis=1)
    inside = pixels + rng.uniform(0.1, 0.9, pixels.shape)  # continuous points inside those pixels
    origin, e_u, e_v = detector_frame(g)
    world = source_position(g) + 0.8 * (origin + g.pixel_mm * (inside[:, :1] * e_u + inside[:, 1:] * e_v)
                                        - source_position(g))
    values, shapes = set(), set()
    for k in range(-1, 5):
        for mirror in (False, True):
            stored = reorient_array(image, k, mirror)
            P2, rows, cols = reoriented(P, g.rows, g.cols, k, mirror)
            assert stored.shape == (rows, cols)
            xy = project_points(P2, world)
            assert np.all((xy > 0) & (xy < [cols, rows]))
            seen = stored[np.floor(xy[:, 1]).astype(int), np.floor(xy[:, 0]).astype(int)]
            assert np.array_equal(seen, image[pixels[:, 1], pixels[:, 0]])
            values.add(stored.tobytes())
            shapes.add(stored.shape)
    assert len(values) == 8 and shapes == {(40, 70), (70, 40)}


def test_empty_volume_and_volume_behind_the_source_give_zero():
    g = DrrGeometry(rows=20, cols=20, isocentre=(0.0, 0.0, 0.0))
    assert not line_integrals(torch.zeros(8, 8, 8), np.eye(4), g).any()
    behind = np.eye(4)
    behind[:3, 3] = source_position(g) - [40.0, 4.0, 4.0]  # the whole volume on the far side of the source
    assert not line_integrals(torch.ones(8, 8, 8), behind, g).any()
    with pytest.raises(ValueError, match="affine"):
        line_integrals(torch.ones(4, 4, 4), np.zeros((4, 4)), g)


def test_hu_to_mu_and_exposure():
    assert hu_to_mu(torch.tensor([-2000.0, -1000.0, 0.0, 1000.0])).tolist() == pytest.approx([0.0, 0.0, 0.02, 0.04])
    L = np.tile(np.linspace(0.5, 6.0, 64), (48, 1))
    L[20:28, 30:40] += 2.0  # a dense insert
    a = expose(torch.from_numpy(L), Exposure(), np.random.default_rng(7))
    b = expose(L, Exposure(), np.random.default_rng(7))
    c = expose(L, Exposure(), np.random.default_rng(8))
    assert a.dtype == np.float32 and a.shape == L.shape and 0.0 <= a.min() and a.max() <= 1.0
    assert a.tobytes() == b.tobytes() and a.tobytes() != c.tobytes()
    assert a[20:28, 30:40].mean() > a[10:18, 30:40].mean() + 0.1  # more attenuation is brighter (bone bright)
    with pytest.raises(ValueError, match="photons"):
        Exposure(photons=0.0)


def test_speed_benchmark_runs_and_layouts_agree():
    result = load_benchmark("drr_speed").measure(shape=(24, 20, 16), voxel_mm=4.0, detector=(30, 40), repeats=1)
    assert set(result["median_s"]) == {"lateral_C", "lateral_F", "ap_C", "ap_F"}
    means = result["mean_line_integral"]
    assert means["lateral_C"] == pytest.approx(means["lateral_F"], rel=1e-5) and means["lateral_C"] > 0.5
    assert means["ap_C"] == pytest.approx(means["ap_F"], rel=1e-5) and means["ap_C"] > 0.5
    assert result["threads"] >= 1 and result["max_median_s"] > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    g = DrrGeometry(rows=120, cols=140, isocentre=ISO, rotation_deg=7.0)
    mu = torch.rand(SHAPE, generator=torch.Generator().manual_seed(1)) * 0.02
    cpu = line_integrals(mu, AFFINE, g)
    gpu = line_integrals(mu.cuda(), AFFINE, g)
    assert gpu.is_cuda
    assert torch.allclose(gpu.cpu(), cpu, rtol=1e-4, atol=1e-4)
