"""The DRR cohort (``synth --generator drr``): tables the toolkit reads, truth that matches the films."""

from __future__ import annotations

import csv
import hashlib
import json

import numpy as np
import pytest

from spine_dfl.data.manifest import load_manifest
from spine_dfl.drr.geometry import project_points
from spine_dfl.io import read_image
from spine_dfl.phantom.anatomy import draw_patient
from spine_dfl.phantom.cohort import FILM_CUTS, generate_drr_cohort

VOXEL_MM = 3.0  # coarse phantoms keep the test fast; the geometry is the same


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    out = tmp_path_factory.mktemp("drr_cohort")
    summary = generate_drr_cohort(out, patients=8, seed=5, voxel_mm=VOXEL_MM)
    return out, summary


def _rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_manifest_is_valid_and_every_roi_and_point_lies_in_its_film(cohort):
    out, summary = cohort
    manifest = load_manifest(out / "manifest.csv")  # raises on any problem the validator finds
    assert len(manifest.table) == summary["vertebrae"] > 0
    films = {f["image"]: f for f in _rows(out / "films.csv")}
    for row in _rows(out / "manifest.csv"):
        film = films[row["image"]]
        assert film["view"] == "lateral"
        x0, y0, x1, y1 = (float(row[c]) for c in ("x_min", "y_min", "x_max", "y_max"))
        assert 0 <= x0 < x1 <= int(film["cols"]) and 0 <= y0 < y1 <= int(film["rows"])
        points = np.array([[float(row[f"{n}_{a}"]) for a in "xy"] for n in ("sa", "sm", "sp", "ia", "im", "ip")])
        assert ((points >= [x0, y0]) & (points <= [x1, y1])).all(), row["vertebra"]


def test_each_patient_has_a_lateral_and_an_ap_film_with_the_header_of_its_geometry(cohort):
    out, summary = cohort
    films = _rows(out / "films.csv")
    assert sorted(f["view"] for f in films) == ["ap"] * 8 + ["lateral"] * 8
    assert set(summary["cuts"]) <= set(FILM_CUTS) and len(summary["cuts"]) >= 3
    assert {f["view_position"] for f in films if f["view"] == "lateral"} == {"LL", "RL"}
    assert any(int(f["stored_rotation_deg"]) for f in films)  # some films are stored turned
    for film in films:
        radiograph = read_image(out / film["image"])
        assert radiograph.pixels.shape == (int(film["rows"]), int(film["cols"]))
        import pydicom

        ds = pydicom.dcmread(out / film["image"], stop_before_pixels=True)
        assert ds.ViewPosition == film["view_position"] and "\\".join(ds.PatientOrientation) == film["patient_orientation"]
        assert float(ds.ImagerPixelSpacing[0]) == pytest.approx(float(film["pixel_mm"]), abs=1e-3)
        assert float(ds.DistanceSourceToDetector) == pytest.approx(float(film["sid_mm"]), abs=0.1)


def test_projection_matrices_put_each_body_centre_where_the_truth_says_in_stored_pixels(cohort):
    out, _ = cohort
    matrices = {p["image"]: np.array(p["projection_matrix"]) for p in json.loads((out / "projections.json").read_text())["images"]}
    films = {f["image"]: f for f in _rows(out / "films.csv")}
    checked = 0
    for v in _rows(out / "vertebrae.csv"):
        patient = draw_patient(5, int(v["patient_id"][1:]))
        centre = next(x.centre for x in patient.vertebrae if x.level == v["vertebra"])
        xy = project_points(matrices[v["image"]], centre[None])[0]
        assert xy == pytest.approx([float(v["centre_x"]), float(v["centre_y"])], abs=0.02)
        checked += int(films[v["image"]]["stored_rotation_deg"]) != 0
    assert checked > 0  # a turned film was among them


def test_the_truth_records_visibility_anchors_and_transitional_anatomy(cohort):
    out, _ = cohort
    vertebrae = _rows(out / "vertebrae.csv")
    in_film = {(v["image"], v["vertebra"]) for v in vertebrae if v["in_film"] == "yes"}
    assert in_film == {(m["image"], m["vertebra"]) for m in _rows(out / "manifest.csv")}
    assert any(v["in_film"] == "no" for v in vertebrae)  # clinic cuts leave levels out
    for film in _rows(out / "films.csv"):
        assert film["anchor_sacrum"] in ("yes", "no") and film["transitional"]
        if film["view"] == "lateral" and film["cut"] == "thoracic":
            assert "T1" in film["levels_in_film"].split() or film["anchor_t1"] == "no"


def test_same_seed_same_bytes(tmp_path):
    digests = []
    for name in ("a", "b"):
        generate_drr_cohort(tmp_path / name, patients=2, seed=3, voxel_mm=VOXEL_MM)
        digests.append({p.relative_to(tmp_path / name).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
                        for p in sorted((tmp_path / name).rglob("*")) if p.is_file()})
    assert digests[0] == digests[1] and len(digests[0]) == 10  # 4 images and 6 tables


def test_cohort_speed_benchmark_prints_its_figures(tmp_path, capsys):
    from conftest import load_benchmark

    assert load_benchmark("drr_cohort_speed").main([str(tmp_path / "c"), "--patients", "1", "--voxel-mm", "4"]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert figures["patients"] == 1 and figures["images"] == 2 and figures["seconds"] > 0
