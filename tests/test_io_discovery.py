"""spine_dfl.io input discovery: find_inputs and is_dicomdir on pydicom's real DICOMDIR test folders."""

from __future__ import annotations

import shutil
from pathlib import Path

import pydicom

from conftest import pydicom_test_dir
from spine_dfl.io import find_inputs, is_dicomdir

TEST_FILES = pydicom_test_dir()
CT_SMALL = TEST_FILES / "CT_small.dcm"


def _referenced_files(dicomdir: Path) -> set[Path]:
    dataset = pydicom.dcmread(dicomdir)
    return {
        dicomdir.parent.joinpath(*record.ReferencedFileID)
        for record in dataset.DirectoryRecordSequence
        if "ReferencedFileID" in record
    }


def test_find_inputs_follows_dicomdir_and_drops_it() -> None:
    dicomdir = TEST_FILES / "dicomdirtests" / "DICOMDIR"
    assert is_dicomdir(dicomdir) and not is_dicomdir(CT_SMALL) and not is_dicomdir(TEST_FILES / "README.txt")
    expected = _referenced_files(dicomdir)
    assert len(expected) == 31
    found = find_inputs([dicomdir])
    assert set(found) == expected and len(found) == len(expected)
    assert all(path.is_file() for path in found)
    assert found == sorted(found, key=lambda p: p.as_posix())


def test_find_inputs_on_a_folder_with_dicomdirs(tmp_path: Path) -> None:
    folder = TEST_FILES / "dicomdirtests"
    found = find_inputs([folder])
    assert not any(path.name.startswith("DICOMDIR") for path in found)
    assert _referenced_files(folder / "DICOMDIR") <= set(found)
    assert (folder / "README.txt") in found  # every other file is an input (fails later with a reason)
    assert len(found) == len({path.resolve() for path in found})
    assert find_inputs([folder]) == found


def test_find_inputs_resolves_upper_case_dicomdir_ids_on_lower_case_copies(tmp_path: Path) -> None:
    source = TEST_FILES / "dicomdirtests"
    shutil.copyfile(source / "DICOMDIR", tmp_path / "DICOMDIR")
    for path in source.rglob("*"):
        relative = path.relative_to(source)
        if path.is_file() and not relative.name.startswith(("DICOMDIR", "README")):
            target = tmp_path / Path(*[part.lower() for part in relative.parts])
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
    found = find_inputs([tmp_path / "DICOMDIR"])
    assert len(found) == 31 and all(path.is_file() for path in found)
    assert tmp_path / "77654033" / "cr1" / "6154" in found


def test_find_inputs_walks_sorted_skips_hidden_and_deduplicates(tmp_path: Path) -> None:
    for relative in ("b/2.dcm", "b/10.dcm", "a.png", ".hidden", ".git/config", "c/.DS_Store", "c/d/no_suffix"):
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_bytes(b"x")
    expected = [tmp_path / "a.png", tmp_path / "b/10.dcm", tmp_path / "b/2.dcm", tmp_path / "c/d/no_suffix"]
    assert find_inputs([tmp_path]) == expected
    # an explicit file first keeps its place; the folder adds the rest once
    assert find_inputs([tmp_path / "b/2.dcm", tmp_path, tmp_path / "a.png"]) == [
        tmp_path / "b/2.dcm",
        tmp_path / "a.png",
        tmp_path / "b/10.dcm",
        tmp_path / "c/d/no_suffix",
    ]
    assert find_inputs([tmp_path / "missing.dcm"]) == [tmp_path / "missing.dcm"]
