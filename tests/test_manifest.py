"""Manifest loading and validation, patient-level splits, summaries."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import skimage.io

from dicom_factory import make_gray_dicom
from spine_dfl.data.dataset import records_from_table
from spine_dfl.data.manifest import ManifestError, class_order, load_manifest, validate_manifest
from spine_dfl.data.splits import patient_keys, patient_split
from spine_dfl.data.summary import format_summary, summarize
from spine_dfl.io import GENANT_GRADES

REPO = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------- helpers
def write_dicom(path: Path, pixels: np.ndarray, bits_stored: int = 16, spacing: tuple[float, float] | None = (0.2, 0.2)) -> Path:
    """A minimal single-frame MONOCHROME2 CR file with an unsigned 16-bit pixel array."""
    make_gray_dicom(path, pixels, bits_stored=bits_stored, pixel_spacing=spacing,
                    patient_name="Doe^Jane", patient_id="PID-SECRET-123")
    return path


def write_png(path: Path, rows: int, cols: int, seed: int = 0) -> Path:
    pixels = np.random.default_rng(seed).integers(0, 255, size=(rows, cols), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    skimage.io.imsave(path, pixels, check_contrast=False)
    return path


def write_csv(path: Path, rows: list[dict[str, object]], columns: list[str] | None = None) -> Path:
    pd.DataFrame(rows, columns=columns).to_csv(path, index=False)
    return path


def messages_for(errors: list[str], row: int | None, column: str) -> list[str]:
    where = "header (line 1)" if row is None else f"row {row} (line {row + 1})"
    return [e for e in errors if where in e and re.search(rf"\b{column}\b", e)]


# --------------------------------------------------------------------------- loading
def test_valid_manifest_loads_with_resolved_paths_and_normalised_columns(tmp_path: Path) -> None:
    write_png(tmp_path / "img" / "a.png", 40, 60)
    write_dicom(tmp_path / "img" / "b", np.zeros((50, 30), np.uint16))  # no suffix: found by preamble
    manifest_path = write_csv(tmp_path / "m.csv", [
        {"Image": "img/a.png", " Label ": "Mild", "vertebra": " l1", "patient_id": "007", "split": "Train",
         "x_min": 5, "y_min": 4, "x_max": 25, "y_max": 20, "note": "x"},
        {"Image": "img/a.png", " Label ": "normal", "vertebra": "L2", "patient_id": "007", "split": "train",
         "x_min": 5, "y_min": 20, "x_max": 60, "y_max": 40, "note": ""},
        {"Image": str(tmp_path / "img" / "b"), " Label ": "SEVERE", "vertebra": "T12", "patient_id": "8",
         "split": "test", "x_min": "", "y_min": "", "x_max": "", "y_max": "", "note": ""},
    ])
    m = load_manifest(manifest_path)
    t = m.table
    assert m.has_roi and m.has_split and m.has_vertebra and m.has_patient_id
    assert m.path == manifest_path.resolve()
    assert t["row"].tolist() == [1, 2, 3]
    assert t["image"].tolist() == [str((tmp_path / "img" / "a.png").resolve())] * 2 + [str((tmp_path / "img" / "b").resolve())]
    assert t["label"].tolist() == ["mild", "normal", "severe"]  # Genant grades in any case -> lower case
    assert m.class_names == ["normal", "mild", "severe"]  # severity order, only grades present
    assert t["vertebra"].tolist() == ["L1", "L2", "T12"]
    assert t["patient_id"].tolist() == ["007", "007", "8"]  # text: leading zeros kept
    assert t["split"].tolist() == ["train", "train", "test"]
    assert t.loc[0, ["x_min", "y_min", "x_max", "y_max"]].tolist() == [5.0, 4.0, 25.0, 20.0]
    assert t.loc[2, ["x_min", "x_max"]].isna().all()  # whole-image row
    assert "note" in t.columns and m.extra_columns == ["note"]

    records = records_from_table(t, m.class_names)
    assert [r["index"] for r in records] == [0, 1, 2]
    assert records[0]["roi"] == (5.0, 4.0, 25.0, 20.0) and records[2]["roi"] is None
    assert [r["label"] for r in records] == [1, 0, 2]
    assert records[0]["label_name"] == "mild" and records[0]["row"] == 1 and records[0]["patient_id"] == "007"
    assert records[0]["split"] == "train" and records[2]["vertebra"] == "T12"
    with pytest.raises(ValueError, match="row 3"):
        records_from_table(t, ["normal", "mild"])


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom complains about the deliberately broken file
def test_every_error_kind_names_file_row_and_column(tmp_path: Path) -> None:
    write_png(tmp_path / "a.png", 40, 60)  # rows 40, cols 60
    write_png(tmp_path / "b.png", 40, 60, seed=1)
    (tmp_path / "broken.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00garbage")
    rows = [
        # 1: valid
        dict(image="a.png", label="normal", vertebra="L1", patient_id="P1", split="train", x_min=0, y_min=0, x_max=20, y_max=20),
        # 2: missing file
        dict(image="missing.png", label="normal", vertebra="L1", patient_id="P2", split="train", x_min=0, y_min=0, x_max=5, y_max=5),
        # 3: unknown split
        dict(image="a.png", label="normal", vertebra="L2", patient_id="P1", split="training", x_min=0, y_min=0, x_max=20, y_max=21),
        # 4: ROI non-numeric
        dict(image="a.png", label="normal", vertebra="L3", patient_id="P1", split="train", x_min="ten", y_min=0, x_max=20, y_max=22),
        # 5: ROI inverted (x_max <= x_min)
        dict(image="a.png", label="normal", vertebra="L4", patient_id="P1", split="train", x_min=30, y_min=0, x_max=30, y_max=23),
        # 6: ROI outside the image (y_max > 40 rows)
        dict(image="a.png", label="normal", vertebra="L5", patient_id="P1", split="train", x_min=0, y_min=30, x_max=20, y_max=41),
        # 7: empty label
        dict(image="a.png", label="", vertebra="T12", patient_id="P1", split="train", x_min=0, y_min=0, x_max=20, y_max=24),
        # 8: duplicate of row 1 (same image, vertebra, ROI)
        dict(image="a.png", label="mild", vertebra="L1", patient_id="P1", split="train", x_min=0, y_min=0, x_max=20, y_max=20),
        # 9: patient P1 in a second split
        dict(image="a.png", label="normal", vertebra="T11", patient_id="P1", split="test", x_min=0, y_min=0, x_max=20, y_max=25),
        # 10: partial ROI (x_max empty)
        dict(image="b.png", label="normal", vertebra="L1", patient_id="P3", split="val", x_min=1, y_min=1, x_max="", y_max=9),
        # 11: unreadable image
        dict(image="broken.dcm", label="normal", vertebra="L1", patient_id="P4", split="val", x_min=1, y_min=1, x_max=5, y_max=9),
        # 12: ROI negative x_min
        dict(image="b.png", label="normal", vertebra="L2", patient_id="P3", split="val", x_min=-3, y_min=1, x_max=5, y_max=9),
    ]
    path = write_csv(tmp_path / "bad.csv", rows)
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    errors = info.value.errors
    assert isinstance(info.value, ValueError)
    assert all(str(path.resolve()) in e for e in errors)
    expected = {
        (2, "image"): "file not found",
        (3, "split"): "unknown split 'training'",
        (4, "x_min"): "not a finite number",
        (5, "x_max"): "inverted ROI",
        (6, "y_max"): "outside the image",
        (7, "label"): "empty label",
        (8, "vertebra"): "duplicate row",
        (9, "split"): "one patient must stay in one split",
        (10, "x_max"): "partial ROI",
        (11, "image"): "unreadable image",
        (12, "x_min"): "outside the image",
    }
    for (row, column), words in expected.items():
        found = messages_for(errors, row, column)
        assert any(words in e for e in found), f"row {row} column {column}: {words!r} not in {found or errors}"
    # the valid row produces nothing, and every message is attributable to a row
    assert not messages_for(errors, 1, "image") and not messages_for(errors, 1, "label")
    assert "duplicate row: same image, vertebra and ROI as row 1" in " ".join(messages_for(errors, 8, "vertebra"))
    assert len(errors) >= len(expected)
    # validate_manifest reports the same errors and still summarises
    text, errors2 = validate_manifest(path)
    assert errors2 == errors and "rows: 12" in text


@pytest.mark.parametrize("columns, missing", [(["image", "vertebra"], "label"), (["label"], "image")])
def test_missing_required_column_names_header_and_column(tmp_path: Path, columns: list[str], missing: str) -> None:
    path = write_csv(tmp_path / "m.csv", [{c: "x" for c in columns}], columns)
    with pytest.raises(ManifestError) as info:
        load_manifest(path, check_files=False)
    assert messages_for(info.value.errors, None, missing)
    assert "missing required column" in info.value.errors[0]


def test_partial_roi_columns_is_a_header_error(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "m.csv", [dict(image="a.png", label="normal", x_min=1, y_min=1, x_max=4)])
    with pytest.raises(ManifestError) as info:
        load_manifest(path, check_files=False)
    assert any("all four" in e for e in messages_for(info.value.errors, None, "y_max"))


def test_image_in_two_splits_without_patient_id_and_image_with_two_patients(tmp_path: Path) -> None:
    write_png(tmp_path / "a.png", 20, 20)
    path = write_csv(tmp_path / "m.csv", [
        dict(image="a.png", label="normal", vertebra="L1", split="train"),
        dict(image="a.png", label="mild", vertebra="L2", split="val"),
    ])
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    assert any("a.png (no patient_id)" in e for e in messages_for(info.value.errors, 2, "split"))

    path = write_csv(tmp_path / "m2.csv", [
        dict(image="a.png", label="normal", vertebra="L1", patient_id="P1"),
        dict(image="a.png", label="mild", vertebra="L2", patient_id="P1"),
        dict(image="a.png", label="mild", vertebra="L3", patient_id="P2"),
    ])
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    assert messages_for(info.value.errors, 3, "patient_id")


def test_dicom_roi_bounds_come_from_the_header_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_dicom(tmp_path / "x.dcm", np.zeros((48, 64), np.uint16))  # rows 48, cols 64
    path = write_csv(tmp_path / "m.csv", [
        dict(image="x.dcm", label="normal", x_min=0, y_min=0, x_max=64, y_max=48),  # exactly the image: fine
        dict(image="x.dcm", label="mild", x_min=0, y_min=0, x_max=65, y_max=10),
    ])
    import spine_dfl.io

    def no_decoding(path: object) -> None:
        raise AssertionError("the pixel data should not be decoded to check an ROI of a DICOM file")

    monkeypatch.setattr(spine_dfl.io, "read_image", no_decoding)
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    assert len(info.value.errors) == 1
    assert "64 columns" in messages_for(info.value.errors, 2, "x_max")[0]
    m = load_manifest(path, check_rois=False)  # the header check can be skipped
    assert len(m.table) == 2


def test_optional_label_and_fixed_class_names(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "m.csv", [dict(image="a.png", label=""), dict(image="b.png", label="mild")])
    m = load_manifest(path, check_files=False, require_labels=False)
    assert m.table["label"].tolist() == ["", "mild"] and m.class_names == ["mild"]
    records = records_from_table(m.table, ["normal", "mild"])
    assert [r["label"] for r in records] == [-1, 1]
    with pytest.raises(ManifestError) as info:
        load_manifest(path, check_files=False, require_labels=False, class_names=["normal", "severe"])
    assert messages_for(info.value.errors, 2, "label")


def test_unreadable_csv_and_empty_manifest(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="not found"):
        load_manifest(tmp_path / "nope.csv")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(ManifestError, match="empty"):
        load_manifest(tmp_path / "empty.csv")
    (tmp_path / "header.csv").write_text("image,label\n")
    with pytest.raises(ManifestError, match="no data rows"):
        load_manifest(tmp_path / "header.csv")


def test_class_order() -> None:
    assert class_order(["severe", "normal", "mild", "moderate"]) == list(GENANT_GRADES)
    assert class_order(["Moderate", "normal"]) == ["normal", "moderate"]
    assert class_order(["10", "2", "0", "1"]) == ["0", "1", "2", "10"]
    assert class_order(["wedge", "crush", "", "biconcave"]) == ["biconcave", "crush", "wedge"]


def test_example_manifest_is_valid_apart_from_its_missing_images() -> None:
    m = load_manifest(REPO / "data_manifests" / "example_manifest.csv", check_files=False)
    assert m.has_roi and m.has_split and m.class_names == list(GENANT_GRADES)


def test_schema_accepts_the_example_and_rejects_bad_rows() -> None:
    import json

    import jsonschema  # in the [test] extra: this test must run, never skip

    schema = json.loads((REPO / "data_manifests" / "schema.json").read_text())
    table = pd.read_csv(REPO / "data_manifests" / "example_manifest.csv", dtype=str, keep_default_na=False)
    for row in table.to_dict("records"):
        jsonschema.validate(row, schema)
    good = table.to_dict("records")[0]
    for bad in ({**good, "split": "training"}, {**good, "x_min": "ten"}, {k: v for k, v in good.items() if k != "y_max"},
                {k: v for k, v in good.items() if k != "label"}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)


# --------------------------------------------------------------------------- split
def cohort_table(n_patients: int, seed: int = 0, vertebrae: int = 4, with_patient_id: bool = True) -> pd.DataFrame:
    """Patients with mostly normal vertebrae and a few fractures (imbalanced, like a real cohort)."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        for v in range(vertebrae):
            grade = rng.choice(GENANT_GRADES, p=[0.8, 0.1, 0.06, 0.04])
            rows.append({"image": f"/d/p{p}.dcm", "label": str(grade), "vertebra": f"L{v + 1}",
                         "patient_id": f"P{p}" if with_patient_id else ""})
    return pd.DataFrame(rows)


def assert_no_leak(table: pd.DataFrame, split: pd.Series) -> None:
    per_patient = split.groupby(patient_keys(table)).nunique()
    assert (per_patient == 1).all()


@pytest.mark.parametrize("n_patients", [12, 40, 200])
def test_patient_split_no_leak_and_every_class_everywhere(n_patients: int) -> None:
    table = cohort_table(n_patients)
    split = patient_split(table, seed=3)
    assert split.index.equals(table.index) and set(split) <= {"train", "val", "test"}
    assert_no_leak(table, split)
    keys = patient_keys(table)
    for c in set(table["label"]):
        if keys[table["label"] == c].nunique() >= 3:  # counts allow: at least one patient per split
            assert set(split[table["label"] == c]) == {"train", "val", "test"}, c
    shares = split.groupby(keys).first().value_counts(normalize=True)
    assert abs(shares["train"] - 0.6) < 0.15 and abs(shares["test"] - 0.2) < 0.15


def test_patient_split_rare_class_with_exactly_three_patients() -> None:
    table = cohort_table(30, seed=5, vertebrae=1)
    table["label"] = "normal"
    table.loc[[3, 17, 25], "label"] = "severe"
    for seed in range(10):
        split = patient_split(table, seed=seed)
        assert sorted(split[table["label"] == "severe"]) == ["test", "train", "val"]


def test_patient_split_is_seeded() -> None:
    table = cohort_table(60)
    a, b = patient_split(table, seed=1), patient_split(table, seed=1)
    c = patient_split(table, seed=2)
    assert a.equals(b)
    assert not a.equals(c)
    # the split does not depend on the row order
    shuffled = table.sample(frac=1.0, random_state=0)
    assert patient_split(shuffled, seed=1).sort_index().equals(a)


def test_patient_split_without_patient_id_uses_images() -> None:
    table = cohort_table(30, with_patient_id=False).drop(columns="patient_id")
    split = patient_split(table, seed=0)
    assert (split.groupby(table["image"]).nunique() == 1).all()
    assert split.groupby(table["image"]).first().nunique() == 3


def test_patient_split_fractions() -> None:
    table = cohort_table(50)
    split = patient_split(table, seed=0, fractions=(0.8, 0.2, 0.0))
    assert set(split) == {"train", "val"}
    with pytest.raises(ValueError):
        patient_split(table, seed=0, fractions=(0.5, 0.5))  # type: ignore[arg-type]


def test_summary(tmp_path: Path) -> None:
    table = cohort_table(15, vertebrae=3)
    table.to_csv(tmp_path / "m.csv", index=False)
    m = load_manifest(tmp_path / "m.csv", check_files=False)
    assert not m.has_split
    table.assign(split=patient_split(table, seed=0)).to_csv(tmp_path / "split.csv", index=False)
    split_m = load_manifest(tmp_path / "split.csv", check_files=False)
    assert split_m.has_split
    summary = summarize(split_m)
    assert summary["rows"] == 45 and summary["patients"] == 15 and summary["images"] == 15
    assert sum(summary["splits"][s]["patients"] for s in ("train", "val", "test")) == 15
    assert summary["splits"]["all"]["classes"] == dict(Counter(table["label"]))  | {
        c: 0 for c in m.class_names if c not in set(table["label"])}
    assert list(summary["vertebrae"]) == ["L1", "L2", "L3"]
    assert sum(summary["vertebrae"]["L2"].values()) == 15
    text = format_summary(summary)
    assert "patients" in text and "train" in text and "L3" in text
    for name in m.class_names:
        assert name in text
    no_split_text = format_summary(summarize(m))
    assert "no split column" in no_split_text
    text2, errors = validate_manifest(tmp_path / "m.csv", check_files=False)
    assert errors == [] and "rows: 45" in text2
