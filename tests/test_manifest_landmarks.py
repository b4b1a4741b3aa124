"""`validate` checks the six-point landmark columns: complete cells, inside the image, anatomical order."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from spine_dfl.data.manifest import validate_manifest
from spine_dfl.io.vocabulary import POINT_COLUMNS


@pytest.fixture()
def manifest(small_cohort: Path) -> pd.DataFrame:
    """The synthetic cohort's manifest (exact six points), with absolute image paths."""
    table = pd.read_csv(small_cohort / "manifest.csv", dtype=str, keep_default_na=False)
    table["image"] = [str(small_cohort / image) for image in table["image"]]
    return table


def _errors(table: pd.DataFrame, tmp_path: Path) -> list[str]:
    path = tmp_path / "manifest.csv"
    table.to_csv(path, index=False)
    return validate_manifest(path)[1]


def _swap(table: pd.DataFrame, row: int, first: str, second: str) -> None:
    for axis in ("x", "y"):
        a, b = f"{first}_{axis}", f"{second}_{axis}"
        table.loc[row, [a, b]] = table.loc[row, [b, a]].to_numpy()


def test_synthetic_landmarks_are_valid(manifest, tmp_path):
    assert _errors(manifest, tmp_path) == []


def test_a_landmark_outside_the_image_names_the_row_and_column(manifest, tmp_path):
    manifest.loc[3, "ip_y"] = "5000"
    error = _errors(manifest, tmp_path)[0]  # the moved point may also break the order: bounds come first
    assert "row 4" in error and "ip_y = 5000" in error and "outside the image" in error and "1024 rows" in error


def test_levels_out_of_order_along_the_spine(manifest, tmp_path):
    t6, t7 = manifest.index[(manifest["image"] == manifest["image"][0]) & manifest["vertebra"].isin(["T6", "T7"])]
    points = manifest.loc[[t6, t7], list(POINT_COLUMNS)].to_numpy()
    manifest.loc[[t6, t7], list(POINT_COLUMNS)] = points[::-1]
    errors = _errors(manifest, tmp_path)
    assert any("levels out of order" in e and "T7 is not caudal to T6" in e for e in errors)


def test_superior_below_inferior_and_swapped_anterior_posterior(manifest, tmp_path):
    for first, second in (("sa", "ia"), ("sm", "im"), ("sp", "ip")):
        _swap(manifest, 2, first, second)
    for first, second in (("sa", "sp"), ("ia", "ip")):
        _swap(manifest, 5, first, second)
    errors = _errors(manifest, tmp_path)
    assert any("row 3" in e and "superior endplate points" in e for e in errors)
    assert any("row 6" in e and "anterior and posterior landmarks are swapped" in e for e in errors)
    assert len(errors) == 2


def test_head_down_image_is_valid(manifest, tmp_path):
    """A radiograph stored upside down: every point mirrored in y stays anatomically consistent."""
    image = manifest["image"][0]
    rows = manifest["image"] == image
    for column in [c for c in POINT_COLUMNS if c.endswith("_y")]:
        manifest.loc[rows, column] = (1024 - manifest.loc[rows, column].astype(float)).map("{:.2f}".format)
    manifest.loc[rows, "y_min"], manifest.loc[rows, "y_max"] = (
        (1024 - manifest.loc[rows, "y_max"].astype(float)).astype(int).astype(str),
        (1024 - manifest.loc[rows, "y_min"].astype(float)).astype(int).astype(str))
    assert _errors(manifest, tmp_path) == []


def test_incomplete_cells_and_columns(manifest, tmp_path):
    manifest.loc[1, "sm_x"] = ""
    manifest.loc[4, "sa_y"] = "abc"
    errors = _errors(manifest, tmp_path)
    assert len(errors) == 2 and "row 2" in errors[0] and "not a number: sm_x" in errors[0] and "sa_y" in errors[1]
    (error,) = _errors(manifest.drop(columns=["ip_x", "ip_y"]), tmp_path)
    assert "all twelve" in error and "missing ip_x, ip_y" in error
    blank = manifest.copy()
    blank.loc[:, list(POINT_COLUMNS)] = ""
    assert _errors(blank, tmp_path) == []  # the columns are optional per row


def test_cli_validate_exits_with_the_errors(manifest, tmp_path, capsys):
    from spine_dfl.cli import main

    manifest.loc[3, "ip_y"] = "-3"
    path = tmp_path / "bad.csv"
    manifest.to_csv(path, index=False)
    assert main(["validate", str(path)]) != 0
    out = capsys.readouterr()
    assert "outside the image" in out.out + out.err and "Traceback" not in out.out + out.err
