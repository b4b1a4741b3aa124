"""A film stored in any of the 8 orientations grades as the original does, and every output lands on
the file's own pixels (score with the locator; the orientation from PatientOrientation)."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from spine_dfl.io.orientation import ORIENTATIONS, Orientation
from spine_dfl.score import score


def _words(o: Orientation) -> list[str]:
    from spine_dfl.io.orientation import orientation_from_header

    return next([a, b] for a in "APHF" for b in "APHF" if orientation_from_header([a, b]) == o)


def write_turned(source: Path, o: Orientation, out: Path, tag: bool = True) -> Path:
    """``source`` (a canonical synth film) stored so that ``o`` turns it back, PatientOrientation to match."""
    ds = pydicom.dcmread(source)
    pixels = np.ascontiguousarray(o.inverse().apply(ds.pixel_array))
    new = copy.deepcopy(ds)
    new.Rows, new.Columns = pixels.shape
    new.PixelData = pixels.tobytes()
    new.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    new.SOPInstanceUID = generate_uid()
    new.file_meta.MediaStorageSOPInstanceUID = new.SOPInstanceUID
    del new.PatientOrientation
    if tag:
        new.PatientOrientation = _words(o)
    path = out / f"{o.name.replace('+', '_').replace(' ', '_')}.dcm"
    new.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture(scope="module")
def turned(small_cohort: Path, tmp_path_factory) -> dict[str, tuple[Orientation, Path]]:
    folder = tmp_path_factory.mktemp("turned")
    source = sorted((small_cohort / "images").iterdir())[0]
    return {o.name: (o, write_turned(source, o, folder)) for o in ORIENTATIONS}


def test_every_orientation_grades_as_stored_and_lands_on_its_own_pixels(located_grader_checkpoints, turned, tmp_path):
    folder = next(iter(turned.values()))[1].parent
    summary = score(located_grader_checkpoints["grader"], [folder], tmp_path, locator=located_grader_checkpoints["locator"],
                    workers=0, progress=False)
    assert summary.scored == 8, summary.failed_by_reason
    table = pd.read_csv(tmp_path / "predictions.csv")
    reference = table[table["image"] == str(turned["as stored"][1])]
    probs = [c for c in table.columns if c.startswith("prob_")]
    assert len(reference) > 3
    for name, (o, path) in turned.items():
        rows = table[table["image"] == str(path)]
        assert set(rows["orientation"]) == {name}
        assert list(rows["vertebra"]) == list(reference["vertebra"])
        # the same canonical crop: the same grades
        np.testing.assert_allclose(rows[probs].to_numpy(), reference[probs].to_numpy(), atol=2e-4)
        # boxes in this file's pixels: turned back by o they are the original's boxes
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        boxes = rows[["x_min", "y_min", "x_max", "y_max"]].to_numpy(float)
        canonical = o.inverse().boxes_to_stored(boxes, o.canonical_shape((ds.Rows, ds.Columns)))
        np.testing.assert_allclose(canonical, reference[["x_min", "y_min", "x_max", "y_max"]].to_numpy(float), atol=1e-3)
        # and they lie inside this file's image
        assert (boxes[:, 2] <= ds.Columns + 1e-6).all() and (boxes[:, 3] <= ds.Rows + 1e-6).all()
        # the six points too: turned back by o they are the original's points
        point_columns = [f"{p}_{a}" for p in ("sa", "sm", "sp", "ia", "im", "ip") for a in "xy"]
        points = rows[point_columns].to_numpy(float).reshape(-1, 6, 2)
        back = o.inverse().points_to_stored(points, o.canonical_shape((ds.Rows, ds.Columns)))
        np.testing.assert_allclose(back.reshape(-1, 12), reference[point_columns].to_numpy(float), atol=1e-3)


@pytest.mark.parametrize("name", ["flip", "rot90", "flip+rot270"])
def test_training_sees_the_canonical_film_whatever_way_it_is_stored(small_cohort: Path, turned, name: str) -> None:
    """The grader's crops and the locator's samples of a film stored turned (PatientOrientation says so)
    are those of the canonical film; the records keep the file's own pixels."""
    from spine_dfl.data.dataset import build_dataset
    from spine_dfl.data.manifest import load_manifest
    from spine_dfl.data.transforms import Preprocessing
    from spine_dfl.locate.samples import load_samples

    o, path = turned[name]
    original = turned["as stored"][1]
    table = load_manifest(small_cohort / "manifest.csv").table
    rows = table[table["image"].map(lambda p: Path(p).name) == "P0000.dcm"].head(3).copy()
    stored = pydicom.dcmread(path, stop_before_pixels=True)
    boxes = rows[["x_min", "y_min", "x_max", "y_max"]].to_numpy(float)
    turned_rows = rows.copy()
    turned_rows["image"] = str(path)
    turned_rows[["x_min", "y_min", "x_max", "y_max"]] = o.boxes_to_stored(boxes, (stored.Rows, stored.Columns))
    points = rows[[c for c in rows.columns if c[:3] in ("sa_", "sm_", "sp_", "ia_", "im_", "ip_")]]
    turned_rows[points.columns] = o.points_to_stored(points.to_numpy(float).reshape(-1, 6, 2),
                                                     (stored.Rows, stored.Columns)).reshape(len(rows), -1)
    rows["image"] = str(original)
    pre = Preprocessing(input_size=48, use_roi=True)
    a, b = build_dataset(rows, pre), build_dataset(turned_rows, pre)
    for i in range(len(rows)):
        np.testing.assert_allclose(b[i]["image"].numpy(), a[i]["image"].numpy(), atol=1e-5)
        # the record's ROI is in the turned file's pixels, mapped through to_original to the same input box
        np.testing.assert_allclose(b[i]["roi_input"].numpy(), a[i]["roi_input"].numpy(), atol=1e-3)
    levels = sorted(set(rows["vertebra"]))
    sa, sb = load_samples(rows, levels, (128, 64))[0], load_samples(turned_rows, levels, (128, 64))[0]
    np.testing.assert_allclose(sb.tensor.numpy(), sa.tensor.numpy(), atol=1e-5)
    np.testing.assert_allclose(sb.boxes, sa.boxes, atol=1e-3)
    np.testing.assert_allclose(sb.points, sa.points, atol=1e-3)
    assert sb.orientation == name and sa.orientation == "as stored"
