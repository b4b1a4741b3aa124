"""drr_study on a tiny oblique, non-RAS CT: the manifest's truth agrees with the projected anatomy,
projections.json places every centroid on its body, the DX tags, identity, determinism."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from drr_ct_factory import BODY_HEIGHT, LABELS, make_ct, write_ct

from spine_dfl.drr.geometry import DrrGeometry, project_points
from spine_dfl.drr.project import SILHOUETTE_MM, body_mask_3d, project_body, silhouette, spine_axes
from spine_dfl.drr.study import UNGRADED, drr_study
from spine_dfl.io import read_image
from spine_dfl.io.vocabulary import POINT_NAMES

PIXEL = 0.6


@pytest.fixture(scope="module")
def ct():
    return make_ct()


@pytest.fixture(scope="module")
def study(tmp_path_factory, ct):
    root = tmp_path_factory.mktemp("drr")
    paths = write_ct(root / "in", ct)
    grades = root / "in" / "grades.csv"
    grades.write_text("vertebra,grade,shape\nT12,2,wedge\n20,normal,\n")
    drr_study(paths["ct"], root / "out", centroids=paths["centroids"], mask=paths["mask"], grades=grades,
              views=("lateral", "ap"), pixel_mm=PIXEL, seed=3)
    return root, paths, grades


def _rows(out: Path) -> list[dict[str, str]]:
    with (out / "manifest.csv").open(newline="") as fh:
        return list(csv.DictReader(fh))


def _images(out: Path) -> dict[str, dict]:
    return {entry["view"]: entry for entry in json.loads((out / "projections.json").read_text())["images"]}


def _geometry(entry: dict) -> DrrGeometry:
    return DrrGeometry(rows=entry["rows"], cols=entry["cols"], isocentre=tuple(entry["isocentre"]), view=entry["view"],
                       source_side=entry["source_side"], sid_mm=entry["sid_mm"], sod_mm=entry["sod_mm"],
                       pixel_mm=entry["pixel_mm"], rotation_deg=entry["rotation_deg"])


def _truth_silhouette(ct, label: int, entry: dict):
    """The factory's own body (not body_mask_3d's) on the film of ``entry``."""
    return project_body(ct.bodies == label, ct.affine, _geometry(entry))


def test_body_mask_3d_keeps_the_body_without_posterior_elements(ct) -> None:
    axes = spine_axes(ct.centroids, ct.affine)
    for label in LABELS:
        body = body_mask_3d(ct.labels, label, ct.centroids[label], ct.affine, axes[label])
        truth = ct.bodies == label
        assert (body & truth).sum() / (body | truth).sum() > 0.98
        assert (ct.labels == label).sum() > 1.2 * truth.sum()  # the mask did hold posterior elements


def test_silhouette_on_its_window_matches_a_whole_film_render(ct) -> None:
    import torch

    from spine_dfl.drr.render import path_lengths

    world = ct.affine[:3, :3] @ ct.centroids[20] + ct.affine[:3, 3]
    g = DrrGeometry(rows=150, cols=140, isocentre=tuple(world + [0.0, 6.0, -4.0]), pixel_mm=PIXEL, rotation_deg=10.0)
    body = ct.bodies == 20
    windowed = silhouette(body, ct.affine, g)
    direct = path_lengths(torch.from_numpy(body), ct.affine, g).numpy() > SILHOUETTE_MM
    assert windowed.shape == (150, 140) and direct.sum() > 1000
    assert (windowed & direct).sum() / (windowed | direct).sum() > 0.93
    centre = [np.argwhere(s).mean(axis=0) for s in (windowed, direct)]
    assert np.abs(centre[0] - centre[1]).max() < 0.3  # the window sits where the film's pixels are
    cut = DrrGeometry(rows=24, cols=140, isocentre=g.isocentre, pixel_mm=PIXEL, rotation_deg=10.0)
    assert silhouette(body, ct.affine, cut).sum() < windowed.sum()  # the film's edge clips it


def test_manifest_rows_levels_and_grades(study) -> None:
    root, _, _ = study
    rows = _rows(root / "out")
    assert [r["vertebra"] for r in rows] == ["T12", "L1", "L2"]
    assert [r["label"] for r in rows] == ["moderate", "normal", UNGRADED]
    assert {r["image"] for r in rows} == {"images/sub-tiny01_ct_lateral.dcm"}  # AP films get no rows
    assert {r["patient_id"] for r in rows} == {"tiny01"} and "split" not in rows[0]


def test_roi_and_six_points_agree_with_the_projected_body(study, ct) -> None:
    root, _, _ = study
    entry = _images(root / "out")["lateral"]
    P = np.array(entry["projection_matrix"])
    height_px = BODY_HEIGHT * entry["sid_mm"] / entry["sod_mm"] / entry["pixel_mm"]
    for row, label in zip(_rows(root / "out"), LABELS):
        x0, y0, x1, y1 = (int(row[c]) for c in ("x_min", "y_min", "x_max", "y_max"))
        # every body voxel's centre projects inside the ROI
        voxels = np.argwhere(ct.bodies == label)
        uv = project_points(P, voxels @ ct.affine[:3, :3].T + ct.affine[:3, 3])
        assert (uv[:, 0] >= x0).all() and (uv[:, 0] < x1).all() and (uv[:, 1] >= y0).all() and (uv[:, 1] < y1).all()
        projection = _truth_silhouette(ct, label, entry)
        sil = projection.silhouette
        ys, xs = np.nonzero(sil)
        assert x0 <= xs.min() + projection.x0 and xs.max() + projection.x0 < x1
        assert y0 <= ys.min() + projection.y0 and ys.max() + projection.y0 < y1
        assert (x1 - x0) < 1.25 * (xs.max() - xs.min() + 1)  # padded, not a loose box
        padded = np.pad(sil, 1)
        edge = sil & ~(padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:])
        edge_xy = np.stack(np.nonzero(edge)[::-1], axis=1) + 0.5 + [projection.x0, projection.y0]
        points = {n: np.array([float(row[f"{n}_x"]), float(row[f"{n}_y"])]) for n in POINT_NAMES}
        for name, point in points.items():
            assert np.linalg.norm(edge_xy - point, axis=1).min() <= 1.2, name
        # anatomy: anterior on the image's left (RL), superior above, heights of the body
        assert points["sa"][0] < points["sm"][0] < points["sp"][0]
        assert points["sa"][1] < points["ia"][1]
        for part in "amp":
            height = np.linalg.norm(points[f"s{part}"] - points[f"i{part}"])
            assert height_px * 0.97 < height < height_px + 3 * 1.5 * 1.2 / PIXEL  # voxelisation widens by <= a voxel a side


def test_projection_matrix_puts_each_centroid_on_its_body(study, ct) -> None:
    root, _, _ = study
    for view, entry in _images(root / "out").items():
        P = np.array(entry["projection_matrix"])
        assert P.shape == (3, 4)
        placed = {v["label"]: v for v in entry["vertebrae"]}
        for label in LABELS:
            world = ct.affine[:3, :3] @ ct.centroids[label] + ct.affine[:3, 3]
            u, v = project_points(P, world[None])[0]
            assert placed[label]["centroid_px"] == pytest.approx([u, v], abs=0.01)  # the file rounds to 0.001 voxel
            projection = _truth_silhouette(ct, label, entry)
            assert projection.silhouette[int(v) - projection.y0, int(u) - projection.x0], (view, label)
            assert placed[label]["in_film"] == 1.0


def test_dx_tags_and_reading_back(study) -> None:
    root, _, _ = study
    images = _images(root / "out")
    expected = {"lateral": ("RL", ["P", "F"]), "ap": ("AP", ["L", "F"])}
    for view, entry in images.items():
        path = root / "out" / entry["image"]
        ds = pydicom.dcmread(path)
        assert ds.SOPClassUID == pydicom.uid.DigitalXRayImageStorageForPresentation
        assert ds.Modality == "DX" and ds.PhotometricInterpretation == "MONOCHROME2"
        assert 12 <= ds.BitsStored <= 16 and ds.PresentationIntentType == "FOR PRESENTATION"
        assert [float(v) for v in ds.ImagerPixelSpacing] == [PIXEL, PIXEL]
        assert float(ds.DistanceSourceToDetector) == 1000.0 and float(ds.DistanceSourceToPatient) == 850.0
        assert float(ds.EstimatedRadiographicMagnificationFactor) == pytest.approx(1000 / 850, abs=1e-5)
        assert (ds.ViewPosition, list(ds.PatientOrientation)) == expected[view]
        assert ds.ViewCodeSequence[0].CodeValue == {"RL": "399198007", "AP": "399348003"}[ds.ViewPosition]
        assert ds.BodyPartExamined == "SPINE"  # T12-L2: thoracic and lumbar
        assert ds.PatientID == "tiny01" and str(ds.PatientName) == "DRR^tiny01" and (ds.Rows, ds.Columns) == (entry["rows"], entry["cols"])
        radiograph = read_image(path)
        assert radiograph.pixels.shape == (entry["rows"], entry["cols"])
    lateral, ap = (pydicom.dcmread(root / "out" / images[v]["image"]) for v in ("lateral", "ap"))
    assert lateral.StudyInstanceUID == ap.StudyInstanceUID and lateral.SeriesInstanceUID != ap.SeriesInstanceUID


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dicom3tools' dciodvfy is not installed")
def test_dx_files_pass_dciodvfy(study) -> None:
    root, _, _ = study
    for entry in _images(root / "out").values():
        result = subprocess.run(["dciodvfy", str(root / "out" / entry["image"])], capture_output=True, text=True, timeout=60)
        errors = [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]
        assert errors == []


def test_manifest_loads_as_a_project_manifest(study) -> None:
    from spine_dfl.data import load_manifest

    root, _, _ = study
    manifest = load_manifest(root / "out" / "manifest.csv")
    assert len(manifest.table) == 3


def test_same_seed_same_bytes_other_seed_other_noise(study, tmp_path) -> None:
    root, paths, grades = study
    kwargs = dict(centroids=paths["centroids"], mask=paths["mask"], grades=grades, views=("lateral", "ap"), pixel_mm=PIXEL)
    drr_study(paths["ct"], tmp_path / "again", seed=3, **kwargs)
    files = sorted(p.relative_to(root / "out") for p in (root / "out").rglob("*") if p.is_file())
    assert len(files) == 4
    for name in files:
        assert (tmp_path / "again" / name).read_bytes() == (root / "out" / name).read_bytes(), name
    drr_study(paths["ct"], tmp_path / "other", seed=4, views=("lateral",), pixel_mm=PIXEL, centroids=paths["centroids"])
    other = pydicom.dcmread(tmp_path / "other" / "images" / "sub-tiny01_ct_lateral.dcm")
    first = pydicom.dcmread(root / "out" / "images" / "sub-tiny01_ct_lateral.dcm")
    assert other.PixelData != first.PixelData and other.SOPInstanceUID != first.SOPInstanceUID


def test_without_a_mask_rows_have_a_centroid_box_and_no_points(study, tmp_path) -> None:
    _, paths, _ = study
    drr_study(paths["ct"], tmp_path / "out", centroids=paths["centroids"], pixel_mm=PIXEL, source_side="right")
    entry = _images(tmp_path / "out")["lateral"]
    rows = _rows(tmp_path / "out")
    assert [r["vertebra"] for r in rows] == ["T12", "L1", "L2"] and {r["label"] for r in rows} == {UNGRADED}
    assert all(r["sa_x"] == "" for r in rows)
    for row, placed in zip(rows, entry["vertebrae"]):
        u, v = placed["centroid_px"]
        assert float(row["x_min"]) < u < float(row["x_max"]) and float(row["y_min"]) < v < float(row["y_max"])
    assert pydicom.dcmread(tmp_path / "out" / entry["image"]).ViewPosition == "LL"
    assert entry["patient_orientation"] == ["A", "F"]


def test_identity_from_a_sidecar_and_a_film_cut_to_the_lumbar_spine(tmp_path, ct) -> None:
    sidecar = {"PatientID": "P-042", "PatientName": "DOE^JANE", "StudyInstanceUID": "1.2.3.4.5", "StudyDate": "20210315"}
    paths = write_ct(tmp_path / "in", ct, stem="scan7", sidecar=sidecar)
    lumbar = ct.affine[:3, :3] @ ((ct.centroids[20] + ct.centroids[21]) / 2) + ct.affine[:3, 3]
    drr_study(paths["ct"], tmp_path / "out", centroids=paths["centroids"], mask=paths["mask"], pixel_mm=PIXEL,
              isocentre=tuple(lumbar), fov_mm=(70.0, 70.0))
    ds = pydicom.dcmread(tmp_path / "out" / "images" / "scan7_lateral.dcm")
    assert (ds.PatientID, str(ds.PatientName), ds.StudyInstanceUID, ds.StudyDate) == ("P-042", "DOE^JANE", "1.2.3.4.5", "20210315")
    rows = _rows(tmp_path / "out")
    assert [r["vertebra"] for r in rows] == ["L1", "L2"]  # T12 is cut off by the film
    assert ds.BodyPartExamined == "LSPINE" and (ds.Rows, ds.Columns) == (117, 117)
