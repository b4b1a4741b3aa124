"""VerSe centroid files: axis codes undone as nibabel's reorientation does, labels 1-28 with T13
and L6, NaN entries skipped, and every malformed file refused with the entry and key named."""

from __future__ import annotations

import json
import math

import nibabel as nib
import numpy as np
import pytest
from nibabel.orientations import apply_orientation, axcodes2ornt, io_orientation, ornt_transform

from spine_dfl.io.verse import (
    VERSE_LABELS,
    VerseFormatError,
    level_label,
    read_centroids,
    voxel_to_world,
    write_centroids,
)

SHAPE = (30, 40, 50)


def _affine(axcodes, spacing=(0.8, 1.2, 2.0), turn_deg=12.0) -> np.ndarray:
    """An affine whose stored axes point along ``axcodes`` (turned a little, so it is oblique)."""
    ornt = axcodes2ornt(axcodes)
    m = np.zeros((3, 3))
    for axis, (world, flip) in enumerate(ornt):
        m[int(world), axis] = flip * spacing[axis]
    a = math.radians(turn_deg)
    turn = np.array([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0], [0.0, 0.0, 1.0]])
    affine = np.eye(4)
    affine[:3, :3] = turn @ m
    affine[:3, 3] = [-10.0, 25.0, 300.0]
    return affine


def _marked_positions(affine, axcodes, voxels) -> list[tuple[int, int, int]]:
    """Where nibabel's reorientation (to ``axcodes``) moves each marked voxel of the stored array."""
    array = np.zeros(SHAPE, np.int16)
    for n, ijk in enumerate(voxels, start=1):
        array[ijk] = n
    moved = apply_orientation(array, ornt_transform(io_orientation(affine), axcodes2ornt(axcodes)))
    return [tuple(int(x) for x in np.argwhere(moved == n)[0]) for n in range(1, len(voxels) + 1)]


def _write(path, entries) -> str:
    path.write_text(json.dumps(entries), encoding="utf-8")
    return str(path)


def test_pir_file_for_an_als_image_gives_the_images_own_voxels(tmp_path):
    affine = _affine(("A", "L", "S"))
    assert nib.aff2axcodes(affine) == ("A", "L", "S")
    voxels = {20: (3, 7, 11), 28: (25, 1, 40), 25: (0, 39, 49), 26: (14, 20, 0)}
    coords = _marked_positions(affine, ("P", "I", "R"), list(voxels.values()))
    # by hand: P undoes A (axis 0 flipped), I undoes S (axis 2 flipped), R undoes L (axis 1 flipped)
    assert coords[0] == (SHAPE[0] - 1 - 3, SHAPE[2] - 1 - 11, SHAPE[1] - 1 - 7)
    entries = [{"direction": ["P", "I", "R"]}] + [
        {"label": label, "X": x, "Y": y, "Z": z} for label, (x, y, z) in zip(voxels, coords)]
    got = read_centroids(_write(tmp_path / "ctd.json", entries), SHAPE, affine)
    assert sorted(got) == sorted(voxels)
    for label, ijk in voxels.items():
        assert got[label] == pytest.approx(ijk, abs=1e-9)


@pytest.mark.parametrize("image_codes", [("R", "A", "S"), ("L", "P", "S"), ("P", "I", "R"), ("S", "R", "A")])
@pytest.mark.parametrize("file_codes", [("P", "I", "R"), ("R", "A", "S"), ("I", "L", "A")])
def test_write_then_read_round_trips(tmp_path, image_codes, file_codes):
    affine = _affine(image_codes)
    centroids = {1: np.array([0.0, 0.0, 0.0]), 19: np.array([12.25, 30.5, 7.75]), 28: np.array([29.0, 39.0, 49.0])}
    path = tmp_path / "ctd.json"
    write_centroids(path, centroids, SHAPE, affine, axcodes=file_codes)
    entries = json.loads(path.read_text())
    assert entries[0] == {"direction": list(file_codes)}
    got = read_centroids(path, SHAPE, affine)
    assert sorted(got) == [1, 19, 28]
    for label, ijk in centroids.items():
        assert got[label] == pytest.approx(ijk, abs=1e-3)
    # the written coordinates are where nibabel's reorientation puts the (whole) voxels
    marked = _marked_positions(affine, file_codes, [(0, 0, 0), (29, 39, 49)])
    written = {e["label"]: (e["X"], e["Y"], e["Z"]) for e in entries[1:]}
    assert written[1] == pytest.approx(marked[0]) and written[28] == pytest.approx(marked[1])


def test_labels_name_t13_and_l6():
    assert VERSE_LABELS[28] == "T13" and VERSE_LABELS[25] == "L6"
    assert [VERSE_LABELS[i] for i in (1, 7, 8, 19, 20, 24, 26, 27)] == ["C1", "C7", "T1", "T12", "L1", "L5", "S1", "Co"]
    assert sorted(VERSE_LABELS) == list(range(1, 29))
    assert level_label("t13") == 28 and level_label("L6") == 25 and level_label("L7") is None


def test_nan_entries_are_skipped(tmp_path):
    affine = _affine(("R", "A", "S"))
    path = tmp_path / "ctd.json"
    path.write_text('[{"direction": ["R", "A", "S"]}, {"label": 20, "X": NaN, "Y": NaN, "Z": NaN},'
                    ' {"label": 21, "X": 1.5, "Y": 2, "Z": 3}]', encoding="utf-8")
    assert list(read_centroids(path, SHAPE, affine)) == [21]


def test_voxel_to_world_uses_the_affine():
    affine = _affine(("L", "P", "S"))
    ijk = np.array([[0.0, 0.0, 0.0], [3.0, 4.0, 5.0]])
    assert voxel_to_world(affine, ijk) == pytest.approx((affine @ np.c_[ijk, np.ones(2)].T).T[:, :3])


GOOD = {"label": 20, "X": 1.0, "Y": 2.0, "Z": 3.0}


@pytest.mark.parametrize("entries, words", [
    ({"direction": ["R", "A", "S"]}, ["JSON list", "entry 0"]),
    ([], ["JSON list"]),
    ([GOOD], ["entry 0", "'direction'"]),
    ([{"direction": ["R", "A"]}, GOOD], ["entry 0", "'direction'", "axis codes"]),
    ([{"direction": ["R", "L", "S"]}, GOOD], ["entry 0", "'direction'"]),
    ([{"direction": ["R", "A", "X"]}, GOOD], ["entry 0", "'direction'"]),
    ([{"direction": ["R", "A", "S"]}, GOOD, {"label": 21, "X": 1, "Z": 2}], ["entry 2", "'Y'", "missing"]),
    ([{"direction": ["R", "A", "S"]}, {"X": 1, "Y": 2, "Z": 3}], ["entry 1", "'label'", "missing"]),
    ([{"direction": ["R", "A", "S"]}, {"label": 20, "X": "1", "Y": 2, "Z": 3}], ["entry 1", "'X'", "not a number"]),
    ([{"direction": ["R", "A", "S"]}, {"label": "L1", "X": 1, "Y": 2, "Z": 3}], ["entry 1", "'label'", "not a number"]),
    ([{"direction": ["R", "A", "S"]}, ["not", "an", "object"]], ["entry 1"]),
    ([{"direction": ["R", "A", "S"]}, {"label": 29, "X": 1, "Y": 2, "Z": 3}], ["entry 1", "'label'", "1-28"]),
    ([{"direction": ["R", "A", "S"]}, {"label": 0, "X": 1, "Y": 2, "Z": 3}], ["entry 1", "'label'", "1-28"]),
    ([{"direction": ["R", "A", "S"]}, {"label": 20.5, "X": 1, "Y": 2, "Z": 3}], ["entry 1", "'label'"]),
    ([{"direction": ["R", "A", "S"]}, GOOD, {"label": 22, "X": 1, "Y": 40, "Z": 3}],
     ["entry 2", "label 22", "outside"]),
    ([{"direction": ["R", "A", "S"]}, {"label": 22, "X": -1, "Y": 2, "Z": 3}], ["entry 1", "outside"]),
    ([{"direction": ["R", "A", "S"]}, GOOD, GOOD], ["entry 2", "'label'", "twice"]),
])
def test_bad_files_name_the_entry_and_key(tmp_path, entries, words):
    path = _write(tmp_path / "bad_ctd.json", entries)
    with pytest.raises(VerseFormatError) as caught:
        read_centroids(path, SHAPE, _affine(("R", "A", "S"), turn_deg=0.0))
    message = str(caught.value)
    assert "bad_ctd.json" in message and "\n" not in message
    for word in words:
        assert word in message
    assert isinstance(caught.value, ValueError)


def test_unreadable_json_and_bad_write_labels(tmp_path):
    path = tmp_path / "ctd.json"
    path.write_text("[{", encoding="utf-8")
    with pytest.raises(VerseFormatError, match="not a readable JSON"):
        read_centroids(path, SHAPE, np.eye(4))
    with pytest.raises(VerseFormatError, match="1-28"):
        write_centroids(tmp_path / "out.json", {29: [1.0, 2.0, 3.0]}, SHAPE, np.eye(4))
    assert not (tmp_path / "out.json").exists()
