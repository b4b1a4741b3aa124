"""``spine-dfl import verse``: a VerSe BIDS folder written here (rawdata/sub-*/…_ct.nii.gz,
derivatives/sub-*/…_seg-vert_msk.nii.gz and …_seg-subreg_ctd.json in P-I-R order) becomes DRR films
through ``spine-dfl drr`` and one manifest with levels, six points, grades and a patient split."""

from __future__ import annotations

import json
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from drr_ct_factory import LABELS, make_ct

from spine_dfl.cli import main
from spine_dfl.data.manifest import load_manifest, validate_manifest
from spine_dfl.io import read_image
from spine_dfl.io.verse import write_centroids

LEVELS = ["T12", "L1", "L2"]  # the factory's labels 19, 20, 21


@pytest.fixture(scope="module")
def ct():
    return make_ct()


def _nifti(path: Path, data: np.ndarray, affine: np.ndarray) -> None:
    image = nib.Nifti1Image(data, affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    nib.save(image, path)


def write_subject(root: Path, subject: str, ct, mask: bool = True, centroids: bool = True) -> dict[str, Path]:
    raw, derived = root / "rawdata" / subject, root / "derivatives" / subject
    raw.mkdir(parents=True)
    derived.mkdir(parents=True)
    paths = {"ct": raw / f"{subject}_ct.nii.gz", "mask": derived / f"{subject}_seg-vert_msk.nii.gz",
             "centroids": derived / f"{subject}_seg-subreg_ctd.json"}
    _nifti(paths["ct"], ct.hu, ct.affine)
    if mask:
        _nifti(paths["mask"], ct.labels, ct.affine)
    if centroids:
        write_centroids(paths["centroids"], ct.centroids, ct.hu.shape, ct.affine, axcodes=("P", "I", "R"))
    return paths


@pytest.fixture(scope="module")
def verse(tmp_path_factory, ct) -> Path:
    root = tmp_path_factory.mktemp("verse") / "dataset-verse19"
    write_subject(root, "sub-tiny01", ct)
    write_subject(root, "sub-tiny02", ct)
    write_subject(root, "sub-tiny03", ct, centroids=False)
    (root / "derivatives/sub-tiny02/sub-tiny02_grades.csv").write_text("vertebra,grade\nT12,3\nL1,1\n")  # phantom's form
    (root / "grades.csv").write_text("subject,vertebra,grade\nsub-tiny01,L1,2\ntiny02,20,0\ntiny02,T12,\n"
                                     "sub-tiny09,L1,1\n")
    return root


@pytest.fixture(scope="module")
def imported(verse: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("imported") / "out"
    assert main(["import", "verse", str(verse), str(out), "--grades", str(verse / "grades.csv")]) == 0
    return out


def test_the_centroid_files_are_in_verse_pir_order(verse: Path, ct) -> None:
    """What the importer reads is VerSe's own file: axis codes first, then label/X/Y/Z in P-I-R voxels."""
    entries = json.loads((verse / "derivatives/sub-tiny01/sub-tiny01_seg-subreg_ctd.json").read_text())
    assert entries[0] == {"direction": ["P", "I", "R"]}
    assert [e["label"] for e in entries[1:]] == list(LABELS)
    reoriented = nib.as_closest_canonical(nib.Nifti1Image(ct.hu, ct.affine))  # RAS; P-I-R flips A and S
    shape = reoriented.shape
    centre = ct.centroids[20]
    world = ct.affine[:3, :3] @ centre + ct.affine[:3, 3]
    ras = np.linalg.solve(reoriented.affine[:3, :3], world - reoriented.affine[:3, 3])
    pir = (shape[1] - 1 - ras[1], shape[2] - 1 - ras[2], ras[0])
    entry = next(e for e in entries[1:] if e["label"] == 20)
    assert (entry["X"], entry["Y"], entry["Z"]) == pytest.approx(pir, abs=0.01)


def test_lateral_films_with_levels_points_grades_and_a_patient_split(imported: Path, verse: Path) -> None:
    table = pd.read_csv(imported / "manifest.csv", dtype=str, keep_default_na=False)
    assert sorted(set(table["patient_id"])) == ["tiny01", "tiny02"]
    for patient in ("tiny01", "tiny02"):
        rows = table[table["patient_id"] == patient]
        assert list(rows["vertebra"]) == LEVELS
        assert (rows[["sa_x", "sm_y", "ip_x"]] != "").all().all()  # six points from the mask's bodies
    graded = table.set_index(["patient_id", "vertebra"])["label"]
    assert graded[("tiny01", "L1")] == "moderate" and graded[("tiny02", "L1")] == "normal"
    assert graded[("tiny01", "T12")] == "ungraded" and graded[("tiny02", "T12")] == "severe"  # the scan's own file
    source = table.set_index(["patient_id", "vertebra"])["grade_source"]
    assert source[("tiny02", "L1")] == "grades table" and source[("tiny02", "T12")] == "sub-tiny02_grades.csv"
    assert source[("tiny01", "T12")] == ""
    assert (table.groupby("patient_id")["split"].nunique() == 1).all() and set(table["split"]) <= {"train", "val", "test"}
    image = imported / table.loc[0, "image"]
    assert table.loc[0, "image"].startswith("films/sub-tiny01/images/") and image.is_file()
    assert read_image(image).pixels.ndim == 2
    assert (imported / "films/sub-tiny01/projections.json").is_file()


def test_the_manifest_is_accepted_by_the_reader_and_validate(imported: Path) -> None:
    manifest = load_manifest(imported / "manifest.csv")
    assert manifest.has_roi and manifest.has_split and set(manifest.class_names) == {"moderate", "normal", "severe", "ungraded"}
    assert validate_manifest(imported / "manifest.csv")[1] == []
    assert main(["validate", str(imported / "manifest.csv")]) == 0


def test_what_is_not_mapped_is_reported(imported: Path) -> None:
    report = json.loads((imported / "import_report.json").read_text())
    reasons = [(Path(i["file"]).name, i["reason"]) for i in report["unmapped"]]
    missing = "no sub-tiny03_seg-subreg_ctd.json in derivatives/sub-tiny03/: levels unknown, not rendered"
    assert ("sub-tiny03_ct.nii.gz", missing) in reasons
    assert any(i.get("subject") == "sub-tiny09" and "no such subject" in i["reason"] for i in report["unmapped"])
    assert report["scans"] == 3 and report["rendered"] == 2 and report["graded_rows"] == 3


def test_ap_films_with_the_flag_and_a_scan_without_mask(tmp_path: Path, ct) -> None:
    root = tmp_path / "v"
    write_subject(root, "sub-one", ct, mask=False)
    out = tmp_path / "out"
    assert main(["import", "verse", str(root), str(out), "--ap"]) == 0
    assert sorted(p.name for p in (out / "films/sub-one/images").iterdir()) == ["sub-one_ct_ap.dcm", "sub-one_ct_lateral.dcm"]
    table = pd.read_csv(out / "manifest.csv", dtype=str, keep_default_na=False)
    assert list(table["vertebra"]) == LEVELS and (table["sa_x"] == "").all()  # centroid boxes, no points
    assert all(p.endswith("_lateral.dcm") for p in table["image"])  # AP films get no rows, as in drr
    report = json.loads((out / "import_report.json").read_text())
    assert report["unmapped"][0]["reason"] == "no sub-one_seg-vert_msk.nii.gz: rendered with centroid boxes, no six points"
    assert validate_manifest(out / "manifest.csv")[1] == []


def test_a_nan_centroid_is_skipped_as_verse_marks_it(tmp_path: Path, ct) -> None:
    root = tmp_path / "v"
    paths = write_subject(root, "sub-nan", ct)
    entries = json.loads(paths["centroids"].read_text())
    entries.append({"label": 22, "X": float("nan"), "Y": 1.0, "Z": 2.0})
    paths["centroids"].write_text(json.dumps(entries))
    assert main(["import", "verse", str(root), str(tmp_path / "out")]) == 0
    assert list(pd.read_csv(tmp_path / "out/manifest.csv")["vertebra"]) == LEVELS


@pytest.mark.parametrize(("what", "expected"), [
    ("label", r"sub-bad_seg-subreg_ctd\.json: entry 2, key 'label': 30 is outside VerSe's labels 1-28"),
    ("direction", r"sub-bad_seg-subreg_ctd\.json: entry 0, key 'direction': \['P', 'I'\] is not three axis codes"),
    ("grade", r"grades\.csv: row 1 \(line 2\), field 'grade': 'bad' is not a Genant grade"),
    ("vertebra", r"grades\.csv: row 1 \(line 2\), field 'vertebra': 'X9' is not a level name"),
])
def test_a_bad_file_is_one_error_naming_file_entry_and_key(tmp_path: Path, ct, capsys, what: str, expected: str) -> None:
    root = tmp_path / "v"
    paths = write_subject(root, "sub-bad", ct)
    entries = json.loads(paths["centroids"].read_text())
    argv = ["import", "verse", str(root), str(tmp_path / "out")]
    if what == "label":
        entries[2]["label"] = 30
    elif what == "direction":
        entries[0]["direction"] = ["P", "I"]
    else:
        cells = {"grade": "sub-bad,L1,bad", "vertebra": "sub-bad,X9,1"}[what]
        (root / "grades.csv").write_text(f"subject,vertebra,grade\n{cells}\n")
        argv += ["--grades", str(root / "grades.csv")]
    paths["centroids"].write_text(json.dumps(entries))
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.search(expected, err[0]), err
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.*"))
