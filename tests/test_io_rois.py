"""spine_dfl.io.read_rois: the one ROI-table reader, its one rule for every row, and matching."""

from __future__ import annotations

from pathlib import Path

import pytest

from spine_dfl.io import ROI_COLUMNS, RoiTableError, read_rois

HEADER = "sop_instance_uid,image,vertebra,x_min,y_min,x_max,y_max\n"


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_reads_rows_in_order_with_paths_relative_to_the_csv(tmp_path: Path) -> None:
    csv = _write(tmp_path / "rois.csv", HEADER + "1.2.3,images/a.dcm, L1 ,1,2,30,40\n,/abs/b.dcm,T12,0.5,1.5,2.5,3.5\n")
    table = read_rois(csv)
    assert [r.row for r in table.rows] == [1, 2] and [r.line for r in table.rows] == [2, 3]
    first, second = table.rows
    assert (first.sop_instance_uid, first.image, first.vertebra, first.box) == (
        "1.2.3", tmp_path / "images" / "a.dcm", "L1", (1.0, 2.0, 30.0, 40.0))
    assert second.sop_instance_uid == "" and second.image == Path("/abs/b.dcm") and second.box == (0.5, 1.5, 2.5, 3.5)
    assert ROI_COLUMNS == ("x_min", "y_min", "x_max", "y_max")


def test_uid_wins_over_path_and_path_is_the_fallback(tmp_path: Path) -> None:
    csv = _write(tmp_path / "rois.csv", HEADER + "1.2.3,a.dcm,L1,1,2,30,40\n,a.dcm,L2,5,6,70,80\n9.9,,L3,1,1,2,2\n")
    table = read_rois(csv)
    assert table.lookup("1.2.3", tmp_path / "elsewhere.dcm") == [("L1", (1.0, 2.0, 30.0, 40.0))]
    assert table.lookup("7.7.7", tmp_path / "a.dcm") == [("L1", (1.0, 2.0, 30.0, 40.0)), ("L2", (5.0, 6.0, 70.0, 80.0))]
    assert table.lookup(None, tmp_path / "sub" / ".." / "a.dcm")[0][0] == "L1"
    assert table.lookup(None, tmp_path / "b.dcm") == []


def test_match_pairs_files_with_rows_and_lists_unmatched_rows(tmp_path: Path) -> None:
    csv = _write(tmp_path / "rois.csv", HEADER + "1.2.3,,L1,1,2,30,40\n,b.dcm,L2,5,6,70,80\n4.5.6,,L3,1,1,2,2\n")
    uids = {tmp_path / "a.dcm": "1.2.3", tmp_path / "b.dcm": None}
    pairs, unmatched = read_rois(csv).match([tmp_path / "b.dcm", tmp_path / "a.dcm"], uid_of=uids.get)
    assert [(f.name, r.vertebra) for f, r in pairs] == [("b.dcm", "L2"), ("a.dcm", "L1")]
    assert [r.vertebra for r in unmatched] == ["L3"]


def test_match_reads_uids_from_dicom_headers_by_default(tmp_path: Path) -> None:
    from dicom_factory import make_gray_dicom
    import numpy as np

    dataset = make_gray_dicom(tmp_path / "x.dcm", np.zeros((4, 5), dtype=np.uint16))
    csv = _write(tmp_path / "rois.csv", HEADER + f"{dataset.SOPInstanceUID},,L1,1,2,3,4\n")
    pairs, unmatched = read_rois(csv).match([tmp_path / "x.dcm", tmp_path / "missing.dcm"])
    assert [(f.name, r.vertebra) for f, r in pairs] == [("x.dcm", "L1")] and unmatched == []


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        ("1.2.3,a.dcm,L1,,,,", "row 2 (line 3): no ROI (all of x_min, y_min, x_max, y_max are empty)"),
        ("1.2.3,a.dcm,L1,1,2,,4", "row 2 (line 3): empty ROI cell(s) x_max"),
        ("1.2.3,a.dcm,L1,1,two,3,4", "row 2 (line 3): column 'y_min': ROI value 'two' is not a number"),
        ("1.2.3,a.dcm,L1,1,2,inf,4", "row 2 (line 3): column 'x_max': ROI value 'inf' is not a finite number"),
        ("1.2.3,a.dcm,L1,5,2,5,4", "row 2 (line 3): column 'x_max': empty or inverted ROI: x_max 5 <= x_min 5"),
        ("1.2.3,a.dcm,L1,1,9,3,4", "row 2 (line 3): column 'y_max': empty or inverted ROI: y_max 4 <= y_min 9"),
        (",,L1,1,2,3,4", "row 2 (line 3): neither sop_instance_uid nor image given"),
    ],
)
def test_every_bad_row_is_an_error_naming_file_and_row(tmp_path: Path, row: str, expected: str) -> None:
    csv = _write(tmp_path / "rois.csv", HEADER + "1.2.3,a.dcm,L0,1,2,3,4\n" + row + "\n")
    with pytest.raises(RoiTableError) as caught:
        read_rois(csv)
    assert str(caught.value).startswith(f"{csv}: bad ROI rows: ")
    assert expected in str(caught.value)
    assert caught.value.problems == [caught.value.problems[0]] and expected in caught.value.problems[0]


def test_all_bad_rows_are_collected_and_the_first_five_shown(tmp_path: Path) -> None:
    csv = _write(tmp_path / "rois.csv", HEADER + "1.2.3,a.dcm,L1,,,,\n" * 7)
    with pytest.raises(RoiTableError) as caught:
        read_rois(csv)
    assert len(caught.value.problems) == 7
    assert "row 5 (line 6)" in str(caught.value) and "row 6 (line 7)" not in str(caught.value)
    assert "(7 bad rows in all)" in str(caught.value)


def test_table_level_problems_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(RoiTableError, match="ROI file not found"):
        read_rois(tmp_path / "absent.csv")
    with pytest.raises(RoiTableError, match=r"lacks column\(s\) x_max, y_max"):
        read_rois(_write(tmp_path / "a.csv", "image,x_min,y_min\na.dcm,1,2\n"))
    with pytest.raises(RoiTableError, match="needs a 'sop_instance_uid' or an 'image' column"):
        read_rois(_write(tmp_path / "b.csv", "vertebra,x_min,y_min,x_max,y_max\nL1,1,2,3,4\n"))
    with pytest.raises(RoiTableError, match="is empty"):
        read_rois(_write(tmp_path / "c.csv", ""))
    binary = tmp_path / "d.csv"
    binary.write_bytes(b"image,x_min,y_min,x_max,y_max\n\xff\xfe\x00bad,1,2,3,4\n")
    with pytest.raises(RoiTableError, match=f"{binary}: cannot read the ROI CSV"):
        read_rois(binary)


def test_blank_lines_bom_spaces_and_extra_columns_are_tolerated(tmp_path: Path) -> None:
    csv = tmp_path / "rois.csv"
    csv.write_bytes("\ufeff image , x_min,y_min,x_max,y_max,score\n\na.dcm, 1 ,2,3,4,0.9\n\n".encode())
    table = read_rois(csv)
    assert len(table) == 1 and table.rows[0].box == (1.0, 2.0, 3.0, 4.0) and table.rows[0].vertebra == ""
    assert table.rows[0].line == 3
    header_only = read_rois(_write(tmp_path / "empty.csv", HEADER))
    assert len(header_only) == 0 and header_only.lookup("1.2.3", tmp_path / "a.dcm") == []
