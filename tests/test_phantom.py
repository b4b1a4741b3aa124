"""The 3D phantom: determinism, VerSe numbering, geometry of bodies and fractures, ribs, HU, the layout."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from scipy import ndimage

from spine_dfl.cli import main
from spine_dfl.io.verse import read_centroids
from spine_dfl.phantom import PhantomError, build_ct, draw_patient, write_verse_layout
from spine_dfl.phantom.anatomy import MEASURE_XI
from spine_dfl.synth.anatomy import HEIGHT_LOSS_RANGES

nib = pytest.importorskip("nibabel")


def _world(ct, ijk):
    return ct.affine[:3, :3] @ np.asarray(ijk) + ct.affine[:3, 3]


def _local_voxels(ct, label):
    """Local (right, anterior, up) mm of the voxel centres of one body in body_labels."""
    v = next(v for v in ct.patient.vertebrae if v.label == label)
    ijk = np.argwhere(ct.body_labels == label).astype(float)
    xyz = ijk @ ct.affine[:3, :3].T + ct.affine[:3, 3]
    return v, (xyz - v.centre) @ v.frame


def _height_at(local, a_mm, voxel):
    """Body height (mm) along the up axis on the mid-sagittal line at anterior coordinate a_mm."""
    near = (np.abs(local[:, 0]) < voxel) & (np.abs(local[:, 1] - a_mm) < voxel * 0.75)
    u = local[near, 2]
    return float(u.max() - u.min() + voxel)


def test_same_seed_same_bytes_and_patient_independent_of_cohort(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for out in (a, b):
        write_verse_layout(out, "x1", build_ct(draw_patient(7, 2), 4.0))
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert len(files) == 5
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    other = build_ct(draw_patient(7, 3), 4.0)
    assert other.hu.shape != build_ct(draw_patient(7, 2), 4.0).hu.shape or not np.array_equal(
        other.hu, build_ct(draw_patient(7, 2), 4.0).hu)


def test_verse_numbering_centroids_inside_bodies_and_affine():
    ct = build_ct(draw_patient(0, 1, transitional="lumbarised_S1"), 2.5)
    levels = [v.level for v in ct.patient.vertebrae]
    assert levels[0] == "C6" and "T12" in levels and levels[-1] == "L6"
    expected = {v.label for v in ct.patient.vertebrae} | {26}
    assert set(np.unique(ct.labels)) - {0} == expected
    assert set(np.unique(ct.body_labels)) - {0} == expected  # 26: the body of S1, the sacral base
    assert 25 in expected and 28 not in expected
    assert ((ct.body_labels > 0) <= (ct.labels == ct.body_labels) | (ct.body_labels == 0)).all()
    assert ct.hu.dtype == np.int16 and ct.labels.dtype == np.uint8 and ct.body_labels.dtype == np.uint8
    # LPS-like storage: i runs to the patient's left, j posterior
    assert ct.affine[0, 0] < 0 and ct.affine[1, 1] < 0 and ct.affine[2, 2] > 0
    for v in ct.patient.vertebrae:
        ijk = ct.centroids[v.label]
        assert ct.body_labels[tuple(np.rint(ijk).astype(int))] == v.label, v.level
        if v.shape == "none":
            assert np.linalg.norm(_world(ct, ijk) - v.centre) < 0.5 * ct.voxel_mm
    assert ct.labels[tuple(np.rint(ct.centroids[26]).astype(int))] == 26
    # bodies grow downwards, L1 of adult size
    l1 = next(v for v in ct.patient.vertebrae if v.level == "L1")
    t4 = next(v for v in ct.patient.vertebrae if v.level == "T4")
    assert 21 < l1.reference_height_mm < 33 and 25 < l1.depth_mm < 40 and 34 < l1.width_mm < 52
    assert t4.reference_height_mm < l1.reference_height_mm and t4.width_mm < l1.width_mm
    anchors = ct.truth.anchors
    assert anchors["s1_endplate_centre"][2] < anchors["t1_body_centre"][2] < anchors["c7_body_centre"][2]


def test_wedge_fracture_anterior_height_measured_from_body_labels():
    index = next(i for i in range(200) for v in draw_patient(5, i).vertebrae
                 if v.shape == "wedge" and v.grade == "severe" and v.level[0] in "TL" and v.reference_height_mm > 22)
    ct = build_ct(draw_patient(5, index), 1.25)
    row = next(r for r in ct.grades if r.shape == "wedge" and r.grade == "severe" and r.reference_height_mm > 22)
    assert HEIGHT_LOSS_RANGES["severe"][0] <= row.height_loss <= HEIGHT_LOSS_RANGES["severe"][1]
    v, local = _local_voxels(ct, row.label)
    half = v.depth_mm / 2
    ha, hm, hp = (_height_at(local, xi * half, ct.voxel_mm) for xi in MEASURE_XI)
    tol = 1.5 * ct.voxel_mm
    assert abs(ha - row.anterior_height_mm) < tol and abs(hp - row.posterior_height_mm) < tol
    assert abs(hm - row.middle_height_mm) < tol
    measured_loss = 1.0 - min(ha, hm, hp) / row.reference_height_mm
    assert abs(measured_loss - row.height_loss) < tol / row.reference_height_mm
    assert hp - ha > row.height_loss * row.reference_height_mm - tol  # the anterior wall is the one lowered


def test_grades_follow_the_synth_definition():
    rows = [r for i in range(12) for r in build_ct(draw_patient(1, i), 5.0).grades]
    for r in rows:
        assert r.height_loss == pytest.approx(1 - min(r.anterior_height_mm, r.middle_height_mm, r.posterior_height_mm)
                                              / r.reference_height_mm)
        lo, hi = HEIGHT_LOSS_RANGES[r.grade]
        assert lo - 1e-9 <= r.height_loss <= hi + 1e-9, r
        assert (r.shape == "none") == (r.grade == "normal")
    assert {r.grade for r in rows} >= {"normal", "mild"}


def _rib_components(ct):
    """Connected unlabelled bone beside the spine above L1: one per rib."""
    ijk = np.indices(ct.hu.shape[:1]).reshape(-1)
    x = ct.affine[0, 0] * ijk + ct.affine[0, 3]
    z = ct.affine[2, 2] * np.arange(ct.hu.shape[2]) + ct.affine[2, 3]
    l1_z = _world(ct, ct.centroids[20])[2]
    spine_x = np.median([_world(ct, c)[0] for c in ct.centroids.values()])
    bone = (ct.hu > 250) & ~ndimage.binary_dilation(ct.labels > 0, iterations=1)
    bone &= (np.abs(x - spine_x) > 40)[:, None, None] & (z > l1_z)[None, None, :]
    components, n = ndimage.label(bone)
    sizes = np.bincount(components.ravel())[1:]
    return int((sizes >= 4).sum())


@pytest.mark.parametrize("kind,pairs,last", [("13_ribs", 13, 28), ("11_ribs", 11, 18), ("none", 12, 19)])
def test_rib_count_matches_truth(kind, pairs, last):
    ct = build_ct(draw_patient(3, 0, transitional=kind), 2.0)
    assert ct.truth.transitional == kind and ct.truth.rib_pairs == pairs and ct.truth.last_rib_label == last
    assert (28 in np.unique(ct.labels)) == (kind == "13_ribs")
    assert _rib_components(ct) == 2 * pairs


def test_hu_ranges():
    ct = build_ct(draw_patient(0, 4), 2.0)
    p = ct.patient
    assert ct.hu.min() >= -1024 and ct.hu[0, 0, 0] == -1000 and ct.hu.max() <= 3071
    assert 100 <= p.trabecular_hu <= 300
    for v in p.vertebrae:
        if v.shape == "none":
            centre = ct.hu[tuple(np.rint(ct.centroids[v.label]).astype(int))]
            assert abs(centre - p.trabecular_hu) < 40, v.level
    bodies = ct.hu[ct.body_labels > 0]
    assert np.percentile(bodies, 99) > 700  # the cortical shell
    t6 = _world(ct, ct.centroids[13])
    lung = np.rint(np.linalg.solve(ct.affine, [t6[0] + 0.2 * p.trunk_lr_mm, t6[1] + 40, t6[2], 1])[:3]).astype(int)
    assert -900 < ct.hu[tuple(lung)] < -800
    values, counts = np.unique(ct.hu, return_counts=True)
    top = set(values[np.argsort(counts)[-4:]].tolist())
    assert {-1000, 40, -100} <= top  # air, soft tissue and the fat layer fill most of the volume


def test_layout_reread_with_nibabel_and_verse_centroids(tmp_path):
    ct = build_ct(draw_patient(2, 0, transitional="13_ribs"), 4.0)
    paths = write_verse_layout(tmp_path, "phantom0000", ct)
    assert paths["ct"] == tmp_path / "rawdata/sub-phantom0000/sub-phantom0000_ct.nii.gz"
    img, mask = nib.load(paths["ct"]), nib.load(paths["mask"])
    assert np.array_equal(np.asarray(img.dataobj), ct.hu) and img.get_data_dtype() == np.int16
    assert np.array_equal(np.asarray(mask.dataobj), ct.labels) and np.allclose(mask.affine, ct.affine)
    assert nib.aff2axcodes(img.affine) == ("L", "P", "S")
    centroids = read_centroids(paths["centroids"], ct.hu.shape, img.affine)
    assert set(centroids) == set(ct.centroids) and 28 in centroids
    for label, ijk in ct.centroids.items():
        assert np.allclose(centroids[label], ijk, atol=2e-3)
    with open(paths["grades"], newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["vertebra", "label", "grade", "shape", "height_loss"]
    assert [(r["vertebra"], int(r["label"]), r["grade"]) for r in rows] == [(g.level, g.label, g.grade) for g in ct.grades]
    assert "T13" in [r["vertebra"] for r in rows]
    truth = json.loads(paths["truth"].read_text())
    assert truth["truth"]["rib_pairs"] == 13 and truth["truth"]["last_rib_label"] == 28
    t13 = next(v for v in ct.patient.vertebrae if v.label == 28)
    assert np.allclose(truth["truth"]["anchors"]["last_rib_body_centre"], t13.centre, atol=1e-3)
    assert np.linalg.norm(_world(ct, ct.centroids[28]) - t13.centre) < ct.voxel_mm  # the anchor is the body's centre


def test_cli_writes_refuses_and_overwrites(tmp_path, capsys):
    out = tmp_path / "ph"
    assert main(["phantom", str(out), "--patients", "2", "--seed", "4", "--voxel-mm", "5"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["patients"] == 2 and sum(summary["grades"].values()) == 2 * 19  # C6-L5
    assert (out / "derivatives/sub-phantom0001/sub-phantom0001_seg-subreg_ctd.json").is_file()
    assert main(["phantom", str(out), "--patients", "1", "--seed", "4", "--voxel-mm", "5"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    first = {p.relative_to(out): p.read_bytes() for p in out.rglob("sub-phantom0000*") if p.is_file()}
    assert main(["phantom", str(out), "--patients", "1", "--seed", "4", "--voxel-mm", "5", "--overwrite"]) == 0
    assert not (out / "rawdata/sub-phantom0001").exists()
    assert first == {p.relative_to(out): p.read_bytes() for p in out.rglob("sub-phantom0000*") if p.is_file()}
    capsys.readouterr()
    for bad in (["--patients", "0"], ["--voxel-mm", "0.1"], ["--seed", "-1"]):
        assert main(["phantom", str(out), *bad, "--overwrite"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and bad[0].strip("-").replace("-", "_").split("_")[0] in err, err
    assert (out / "rawdata/sub-phantom0000").is_dir()  # a bad call touches nothing
    with pytest.raises(PhantomError, match="transitional"):
        draw_patient(0, 0, transitional="14_ribs")


def test_grade_and_transitional_rates():
    from collections import Counter

    from spine_dfl.phantom.truth import grade_rows
    from spine_dfl.synth.anatomy import DEFAULT_GRADE_PROBABILITIES

    patients = [draw_patient(11, i) for i in range(600)]
    rows = [r for p in patients for r in grade_rows(p) if not r.level.startswith("C")]
    rates = Counter(r.grade for r in rows)
    for grade, p in DEFAULT_GRADE_PROBABILITIES.items():
        assert abs(rates[grade] / len(rows) - p) < 0.25 * p + 0.01, (grade, rates)
    normal = [r.height_loss for r in rows if r.grade == "normal"]
    assert max(normal) > 0.13 and min(normal) < -0.05  # natural variation reaches towards mild
    kinds = Counter(p.transitional for p in patients)
    assert 0.78 < kinds["none"] / 600 < 0.9
    assert all(kinds[k] > 0 for k in ("sacralised_L5", "lumbarised_S1", "13_ribs", "11_ribs"))
