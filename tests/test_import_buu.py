"""``spine-dfl import buu``: BUU-LSPINE laterals written here in the published layout (LA/NNNN-S-AGEYv.jpg with
a header-less x1,y1,x2,y2,code CSV, L1 superior .. L5 inferior, S1 superior) become L1-L5 manifest rows."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from spine_dfl.cli import main
from spine_dfl.data.manifest import load_manifest, validate_manifest
from spine_dfl.data.splits import patient_split

ROWS, COLS = 420, 300


def lumbar_corners(anterior_right: bool, lordosis: float = 14.0, sacral_drop: float = 22.0) -> np.ndarray:
    """(11, 2, 2) endplate corners, anterior first: five bodies 40 px tall, 15 px discs, the middle ones
    ``lordosis`` px anterior of the L1-L5 chord, S1's anterior corner ``sacral_drop`` px below its posterior."""
    s = 1.0 if anterior_right else -1.0
    plates = []
    for k in range(5):
        cx = 150.0 + s * lordosis * math.sin(math.pi * k / 4)
        top = 30.0 + k * 55.0
        for y in (top, top + 40.0):
            plates.append([[cx + s * 25.0, y], [cx - s * 25.0, y]])
    y = 30.0 + 4 * 55.0 + 40.0 + 15.0
    plates.append([[150.0 + s * 25.0, y + sacral_drop], [150.0 - s * 25.0, y]])
    return np.asarray(plates)


def write_lateral(folder: Path, name: str, corners: np.ndarray, posterior_first: bool = False) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    image = folder / f"{name}.jpg"
    Image.fromarray(np.full((ROWS, COLS), 90, np.uint8)).save(image, quality=90)
    lines = []
    for k, pair in enumerate(corners):
        first, second = (pair[1], pair[0]) if posterior_first else (pair[0], pair[1])
        lines.append(f"{first[0]:g},{first[1]:g},{second[0]:g},{second[1]:g},{k % 2}")
    (folder / f"{name}.csv").write_text("\n".join(lines) + "\n")
    return image


@pytest.fixture()
def buu(tmp_path: Path) -> Path:
    source = tmp_path / "BUU"
    for i in range(1, 7):
        write_lateral(source / "LA", f"{i:04d}-{'MF'[i % 2]}-0{40 + i}Y1", lumbar_corners(anterior_right=i % 2 == 0),
                      posterior_first=i == 3)
    write_lateral(source / "AP", "0001-F-041Y0", lumbar_corners(True)[:10])
    return source


def _run(*argv: str) -> int:
    return main(["import", *argv])


def test_laterals_become_l1_to_l5_rows_the_manifest_reader_accepts(buu: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    assert _run("buu", str(buu), str(out)) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["laterals"] == 6 and summary["patients"] == 6 and summary["rows"] == 30
    manifest = load_manifest(out / "manifest.csv")
    assert manifest.has_roi and manifest.has_split and manifest.class_names == ["ungraded"]
    _, errors = validate_manifest(out / "manifest.csv")
    assert errors == []
    assert main(["validate", str(out / "manifest.csv")]) == 0
    table = pd.read_csv(out / "manifest.csv", dtype=str, keep_default_na=False)
    assert sorted(set(table["patient_id"])) == [f"{i:04d}" for i in range(1, 7)]
    assert list(table.loc[table["patient_id"] == "0002", "vertebra"]) == ["L1", "L2", "L3", "L4", "L5"]
    assert set(table["middle_points"]) == {"derived: endplate midpoints"}
    assert set(table["anchor"]) == {"S1 superior endplate"}
    # the JPEGs are referenced where they lie, not copied
    assert all(Path(p).parent == (buu / "LA").resolve() for p in table["image"]) and not list(out.glob("*.jpg"))


def test_points_roi_and_s1_follow_the_corners(buu: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert _run("buu", str(buu), str(out)) == 0
    table = pd.read_csv(out / "manifest.csv", keep_default_na=False, dtype={"patient_id": str})
    for patient, anterior_right in (("0002", True), ("0001", False)):
        rows = table[table["patient_id"] == patient].reset_index(drop=True)
        corners = lumbar_corners(anterior_right)
        for k in range(5):
            sup, inf = corners[2 * k], corners[2 * k + 1]
            row = rows.loc[k]
            assert (row["sa_x"], row["sa_y"]) == pytest.approx(tuple(sup[0]), abs=0.01)
            assert (row["sp_x"], row["sp_y"]) == pytest.approx(tuple(sup[1]), abs=0.01)
            assert (row["im_x"], row["im_y"]) == pytest.approx(tuple(inf.mean(axis=0)), abs=0.01)
            lo, hi = np.vstack([sup, inf]).min(axis=0), np.vstack([sup, inf]).max(axis=0)
            pad = 0.07 * (hi - lo)
            assert (row["x_min"], row["y_min"], row["x_max"], row["y_max"]) == pytest.approx(
                (lo[0] - pad[0], lo[1] - pad[1], hi[0] + pad[0], hi[1] + pad[1]), abs=0.01)
        assert (rows.loc[0, "s1_anterior_x"], rows.loc[0, "s1_anterior_y"]) == pytest.approx(tuple(corners[10][0]))
        assert set(rows["anterior_from"]) == {"lordosis and sacral slope"}


def test_a_file_with_the_posterior_corner_first_is_turned_and_flagged(buu: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert _run("buu", str(buu), str(out)) == 0
    table = pd.read_csv(out / "manifest.csv", keep_default_na=False, dtype={"patient_id": str})
    swapped = table[table["patient_id"] == "0003"]
    assert set(swapped["corners_swapped"]) == {"yes"} and set(table[table["patient_id"] != "0003"]["corners_swapped"]) == {"no"}
    truth = lumbar_corners(anterior_right=False)
    assert swapped.iloc[0]["sa_x"] == pytest.approx(truth[0][0][0])  # the anterior corner, not the file's first


def test_the_split_is_the_projects_patient_split(buu: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert _run("buu", str(buu), str(out), "--seed", "3") == 0
    table = pd.read_csv(out / "manifest.csv", dtype=str, keep_default_na=False)
    assert (table.groupby("patient_id")["split"].nunique() == 1).all()
    expected = patient_split(table[["image", "label", "patient_id"]], seed=3)
    assert list(table["split"]) == list(expected)
    assert set(table["split"]) == {"train", "val", "test"}


def test_what_is_not_mapped_is_reported(buu: Path, tmp_path: Path) -> None:
    Image.fromarray(np.zeros((ROWS, COLS), np.uint8)).save(buu / "LA" / "0009-M-050Y1.jpg")  # no CSV
    Image.fromarray(np.zeros((ROWS, COLS), np.uint8)).save(buu / "LA" / "scan_0010.jpg")  # no patient id
    flat = lumbar_corners(True, lordosis=0.0, sacral_drop=0.0)
    write_lateral(buu / "LA", "0011-F-060Y1", flat)
    out = tmp_path / "out"
    assert _run("buu", str(buu), str(out)) == 0
    report = json.loads((out / "import_report.json").read_text())
    reasons = {Path(item["file"]).name: item["reason"] for item in report["unmapped"]}
    assert reasons["0009-M-050Y1.jpg"] == "no endplate CSV beside it"
    assert "no patient id" in reasons["scan_0010.jpg"]
    assert reasons["0001-F-041Y0.jpg"].startswith("AP film: not imported")
    assert reasons["0011-F-060Y1.csv"].startswith("anterior corner not confirmed: file order (unchecked)")
    table = pd.read_csv(out / "manifest.csv", dtype=str, keep_default_na=False)
    assert set(table.loc[table["patient_id"] == "0011", "anterior_from"]) == {"file order (unchecked)"}
    assert report["anterior_unconfirmed"] == 1


@pytest.mark.parametrize(("content", "expected"), [
    ("x1,y1,x2,y2,code\n", r"0001-F-041Y1.csv: row 1, field 'x1': 'x1' is not a number \(BUU CSVs have no header\)"),
    ("1,2,3,4\n", r"0001-F-041Y1.csv: row 1: 4 fields, a BUU endplate row has 5"),
    (None, r"0001-F-041Y1.csv: 10 endplate rows, a lateral has 11"),
    ("bad y2", r"0001-F-041Y1.csv: row 4, field 'y2': 'abc' is not a number"),
    ("outside", r"0001-F-041Y1.csv: row 11, field 'x1': 500 lies outside the image \(420 rows x 300 columns\)"),
])
def test_a_bad_file_is_one_error_naming_file_row_and_field(buu: Path, tmp_path: Path, capsys, content, expected) -> None:
    csv_path = buu / "LA" / "0001-F-041Y1.csv"
    lines = csv_path.read_text().splitlines()
    if content is None:
        text = "\n".join(lines[:10]) + "\n"
    elif content == "bad y2":
        cells = lines[3].split(",")
        cells[3] = "abc"
        lines[3] = ",".join(cells)
        text = "\n".join(lines) + "\n"
    elif content == "outside":
        lines[10] = "500," + lines[10].split(",", 1)[1]
        text = "\n".join(lines) + "\n"
    else:
        text = content + "\n".join(lines) + "\n"
    csv_path.write_text(text)
    out = tmp_path / "out"
    assert _run("buu", str(buu), str(out)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")
    assert re.search(expected, err[0]), err[0]
    assert not out.exists() and not list(tmp_path.glob(".out.*"))  # nothing written, no staging left


def test_a_missing_layout_or_a_non_empty_out_is_refused(tmp_path: Path, buu: Path, capsys) -> None:
    assert _run("buu", str(tmp_path / "nothing"), str(tmp_path / "o")) == 2
    assert "not a folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert _run("buu", str(tmp_path / "empty"), str(tmp_path / "o")) == 2
    assert "no LA/ folder" in capsys.readouterr().err
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    assert _run("buu", str(buu), str(out)) == 2
    assert "not empty" in capsys.readouterr().err and (out / "keep.txt").exists()
    assert _run("buu", str(buu), str(out), "--overwrite") == 0
    assert not (out / "keep.txt").exists() and (out / "manifest.csv").exists()
    assert _run("buu", str(buu), str(tmp_path / "p"), "--locator", "x.pt") == 2
    assert "--locator does not apply" in capsys.readouterr().err
