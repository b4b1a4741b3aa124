"""``spine-dfl import vindr``: a VinDr-SpineXR folder written here (annotations/{train,test}.csv with its nine
columns and ``No finding`` rows, {train,test}_images/<SOP Instance UID>.dicom) becomes image-level labels and,
with a locator (trained in the session, tests/conftest.py), per-vertebra weak labels."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from dicom_factory import make_gray_dicom

from spine_dfl.cli import main
from spine_dfl.data.manifest import load_manifest, validate_manifest
from spine_dfl.datasets.vindr import covers

HEADER = "study_id,series_id,image_id,rad_id,lesion_type,xmin,ymin,xmax,ymax\n"


def _dicom(folder: Path) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    ds = make_gray_dicom(None, np.random.default_rng(0).integers(0, 1023, (64, 48)), modality="DX", bits_stored=10,
                         photometric="MONOCHROME1")
    ds.save_as(folder / f"{ds.SOPInstanceUID}.dicom", enforce_file_format=True)
    return str(ds.SOPInstanceUID)


@pytest.fixture()
def vindr(tmp_path: Path) -> tuple[Path, list[str]]:
    root = tmp_path / "vindr-spinexr"
    train = [_dicom(root / "train_images") for _ in range(6)]
    test = [_dicom(root / "test_images") for _ in range(2)]
    (root / "annotations").mkdir()
    lines = [f"s{i},r{i},{uid},rad{1 + i % 3},No finding,,,," for i, uid in enumerate(train[:3])]
    lines += [f"s3,r3,{train[3]},rad2,Vertebral collapse,10.5,12.0,30.25,40.0",
              f"s3,r3,{train[3]},rad3,Osteophytes,1,1,5,5",
              f"s4,r4,{train[4]},rad1,Osteophytes,2,3,20,21",
              f"s5,r5,{train[5]},rad2,Fracture,0,0,10,10"]
    (root / "annotations" / "train.csv").write_text(HEADER + "\n".join(lines) + "\n")
    (root / "annotations" / "test.csv").write_text(
        HEADER + f"t0,u0,{test[0]},rad4,No finding,,,,\nt1,u1,{test[1]},rad5,Vertebral collapse,3,4,20,30\n")
    return root, train + test


def test_image_level_labels_rad_ids_uids_and_splits(vindr, tmp_path: Path, capsys) -> None:
    root, uids = vindr
    out = tmp_path / "out"
    assert main(["import", "vindr", str(root), str(out)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["images"] == 8 and summary["abnormal_images"] == 3 and summary["vertebra_rows"] == 0
    table = pd.read_csv(out / "manifest.csv", dtype=str, keep_default_na=False).set_index("sop_instance_uid")
    assert list(table.index) == uids
    assert [table.loc[u, "label"] for u in uids] == ["normal"] * 3 + ["abnormal", "normal", "abnormal", "normal", "abnormal"]
    assert table.loc[uids[3], "rad_id"] == "rad2;rad3"
    assert table.loc[uids[3], "lesion_types"] == "Osteophytes;Vertebral collapse"
    assert table.loc[uids[0], "lesion_types"] == "No finding"
    assert set(table["label_source"]) == {"image-level: lesion boxes of the image"}
    assert (table["vertebra"] == "").all() and (table["x_min"] == "").all()  # whole-image rows
    assert list(table.loc[uids[6:], "split"]) == ["test", "test"] and set(table.loc[uids[:6], "split"]) == {"train", "val"}
    assert all(Path(p).name == f"{u}.dicom" for u, p in zip(uids, table["image"]))
    manifest = load_manifest(out / "manifest.csv")
    assert manifest.class_names == ["abnormal", "normal"] and manifest.table["x_min"].isna().all()  # whole images
    assert validate_manifest(out / "manifest.csv")[1] == []
    assert main(["validate", str(out / "manifest.csv")]) == 0
    assert not (out / "vertebrae.csv").exists()


def test_a_missing_image_is_reported_not_guessed(vindr, tmp_path: Path) -> None:
    root, uids = vindr
    (root / "train_images" / f"{uids[1]}.dicom").unlink()
    out = tmp_path / "out"
    assert main(["import", "vindr", str(root), str(out)]) == 0
    report = json.loads((out / "import_report.json").read_text())
    assert report["unmapped"] == [{"file": str((root / "train_images" / f"{uids[1]}.dicom").resolve()),
                                   "reason": "image file missing", "image_id": uids[1]}]
    assert uids[1] not in set(pd.read_csv(out / "manifest.csv", dtype=str)["sop_instance_uid"])


@pytest.mark.parametrize(("edit", "expected"), [
    (lambda t: t.replace("rad_id,", "radiologist,"), r"train\.csv: header \(line 1\), field 'rad_id': missing"),
    (lambda t: t.replace("No finding,,,,", "No finding,1,,,", 1), r"train\.csv: row 1 \(line 2\), field 'xmin': a 'No finding' row has empty boxes"),
    (lambda t: t.replace("10.5,12.0,30.25,40.0", "10.5,12.0,,40.0"), r"train\.csv: row 4 \(line 5\), field 'xmax': '' is not a pixel coordinate"),
    (lambda t: t.replace("Osteophytes,2,3,20,21", "Osteophytes,2,30,20,21"), r"train\.csv: row 6 \(line 7\), field 'ymax': the box is empty"),
    (lambda t: t.replace("Fracture,", "Broken bone,"), r"train\.csv: row 7 \(line 8\), field 'lesion_type': 'Broken bone' is not a VinDr"),
    (lambda t: re.sub(r"s5,r5,[0-9.]+,", "s5,r5,1.2.x3,", t), r"row 7 \(line 8\), field 'image_id': '1\.2\.x3' is not a SOP"),
    (lambda t: t.replace("Fracture,0,0,10,10", "Fracture,0,0,10,10,7"), r"train\.csv: row 7 \(line 8\): 10 fields, VinDr-SpineXR"),
])
def test_a_bad_row_is_one_error_naming_file_row_and_field(vindr, tmp_path: Path, capsys, edit, expected) -> None:
    root, _ = vindr
    path = root / "annotations" / "train.csv"
    path.write_text(edit(path.read_text()))
    out = tmp_path / "out"
    assert main(["import", "vindr", str(root), str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and re.search(expected, err[0]), err
    assert not out.exists()


def test_a_study_in_train_and_test_and_no_finding_beside_boxes_are_refused(vindr, tmp_path: Path, capsys) -> None:
    root, uids = vindr
    test_csv = root / "annotations" / "test.csv"
    test_csv.write_text(test_csv.read_text().replace("t0,", "s0,"))
    assert main(["import", "vindr", str(root), str(tmp_path / "a")]) == 2
    assert "study s0 is in both train.csv and test.csv" in capsys.readouterr().err
    test_csv.write_text(test_csv.read_text().replace("s0,", "t0,") + f"t0,u0,{uids[6]},rad4,Osteophytes,1,1,4,4\n")
    assert main(["import", "vindr", str(root), str(tmp_path / "b")]) == 2
    assert "'No finding' beside lesion boxes (row 3)" in capsys.readouterr().err


def test_a_box_covers_a_body_when_it_holds_the_body_centre() -> None:
    body = (10.0, 10.0, 30.0, 20.0)  # centre (20, 15)
    assert covers((0, 0, 21, 16), body)
    assert covers((20, 15, 40, 40), body)  # the centre on the box's corner: inside
    assert not covers((0, 0, 12, 12), body)  # a corner only
    assert not covers((10, 10, 19.9, 20), body)  # just short of the centre (and of half the body)


def test_a_locator_that_is_no_checkpoint_is_one_error(vindr, tmp_path: Path, capsys) -> None:
    root, _ = vindr
    (tmp_path / "bad.pt").write_text("not a checkpoint")
    for locator, expected in ((tmp_path / "none.pt", "checkpoint file not found"), (tmp_path / "bad.pt", "not a torch file")):
        assert main(["import", "vindr", str(root), str(tmp_path / "out"), "--locator", str(locator)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and str(locator) in err[0] and expected in err[0]
        assert not (tmp_path / "out").exists()


@pytest.mark.slow  # the session's small locator (tests/conftest.py, about a minute on 2 cores)
def test_with_a_locator_the_covered_vertebra_is_abnormal_and_the_rest_normal(located_grader_checkpoints, locator_cohort,
                                                                             tmp_path: Path) -> None:
    truth = pd.read_csv(locator_cohort / "manifest.csv", dtype={"patient_id": str})
    root = tmp_path / "vindr"
    (root / "train_images").mkdir(parents=True)
    (root / "annotations").mkdir()
    uids, lines = [], []
    for k, image in enumerate(sorted(truth["image"].unique())[:3]):
        uid = str(pydicom.dcmread(locator_cohort / image, stop_before_pixels=True).SOPInstanceUID)
        shutil.copy(locator_cohort / image, root / "train_images" / f"{uid}.dicom")
        uids.append(uid)
        rows = truth[truth["image"] == image].reset_index(drop=True)
        if k == 0:
            target = rows.iloc[len(rows) // 2]
            lines.append(f"s{k},r{k},{uid},rad1,Vertebral collapse,{target.x_min},{target.y_min},{target.x_max},{target.y_max}")
        elif k == 1:
            lines.append(f"s{k},r{k},{uid},rad2,No finding,,,,")
        else:
            lines.append(f"s{k},r{k},{uid},rad3,Fracture,0,0,4,4")  # the image's corner: no vertebra there
    (root / "annotations" / "train.csv").write_text(HEADER + "\n".join(lines) + "\n")
    out = tmp_path / "out"
    assert main(["import", "vindr", str(root), str(out), "--locator", str(located_grader_checkpoints["locator"])]) == 0
    rows = pd.read_csv(out / "vertebrae.csv", dtype=str, keep_default_na=False)
    assert set(rows["sop_instance_uid"]) == set(uids)  # the locator found a column on each
    assert set(rows["label_source"]) == {"weak: collapse/fracture box over the located vertebra"}
    first = rows[rows["sop_instance_uid"] == uids[0]]
    abnormal = first[first["label"] == "abnormal"]
    assert len(abnormal) == 1 and len(first) >= 3
    box = abnormal.iloc[0][["x_min", "y_min", "x_max", "y_max"]].astype(float).to_numpy()
    centre = (box[:2] + box[2:]) / 2
    assert target.x_min <= centre[0] <= target.x_max and target.y_min <= centre[1] <= target.y_max
    assert set(rows[rows["sop_instance_uid"] != uids[0]]["label"]) == {"normal"}
    assert (rows["rad_id"][rows["sop_instance_uid"] == uids[0]] == "rad1").all()
    report = json.loads((out / "import_report.json").read_text())
    assert [(i["reason"], i["image_id"]) for i in report["unmapped"]] == [
        ("collapse/fracture box covers no located vertebra", uids[2])]
    assert validate_manifest(out / "vertebrae.csv")[1] == [] and validate_manifest(out / "manifest.csv")[1] == []
    embedded = tmp_path / "embedded"  # a grader that carries the same locator gives the same rows
    assert main(["import", "vindr", str(root), str(embedded), "--locator", str(located_grader_checkpoints["embedded"])]) == 0
    assert (embedded / "vertebrae.csv").read_text() == (out / "vertebrae.csv").read_text()
