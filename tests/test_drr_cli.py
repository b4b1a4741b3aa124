"""``spine-dfl drr``: a good run, --help, and every bad input: one line on stderr, exit 2, OUT untouched."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from drr_ct_factory import make_ct, write_ct

from spine_dfl.cli import main


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    ct = make_ct()
    return ct, write_ct(tmp_path_factory.mktemp("cli") / "in", ct)


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["drr", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _nifti(path: Path, data: np.ndarray, affine: np.ndarray, code: int = 1, qform: bool = True) -> Path:
    """A NIfTI whose sform (and qform, where ``qform``) holds ``affine`` under ``code``."""
    image = nib.Nifti1Image(data, affine if qform else np.eye(4))
    image.set_sform(affine, code=code)
    if qform:
        image.set_qform(affine, code=code)
    else:
        image.set_qform(None, code=0)
    nib.save(image, path)
    return path


def test_help_documents_the_outputs(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["drr", "--help"])
    text = capsys.readouterr().out
    for words in ("ungraded", "projection_matrix", "'vertebra'", "Genant 0-3", "sub-<id>", "--source-side", "exits 2"):
        assert words in text


def test_a_good_run_prints_its_summary(capsys, inputs, tmp_path) -> None:
    _, paths = inputs
    code, out, err = _run(capsys, str(paths["ct"]), "--out", str(tmp_path / "out"), "--centroids", str(paths["centroids"]),
                          "--mask", str(paths["mask"]), "--view", "both", "--pixel", "0.6", "--seed", "1")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["images"] == ["images/sub-tiny01_ct_lateral.dcm", "images/sub-tiny01_ct_ap.dcm"]
    assert summary["manifest_rows"] == 3 and summary["truth"] == "mask"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["images", "manifest.csv", "projections.json"]
    code, _, err = _run(capsys, str(paths["ct"]), "--out", str(tmp_path / "out"), "--pixel", "0.6", "--overwrite")
    assert code == 0, err
    assert (tmp_path / "out" / "manifest.csv").read_text().count("\n") == 1  # replaced: no centroids, no rows
    assert not (tmp_path / "out" / "images" / "sub-tiny01_ct_ap.dcm").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no staging folder left


def _bad_inputs(ct, paths: dict[str, Path], folder: Path) -> dict[str, tuple[list[str], str, Path | None]]:
    """name -> (arguments after CT and --out, words the error must hold, the CT to use instead)."""
    folder.mkdir()
    affine, hu = ct.affine, ct.hu
    no_affine = _nifti(folder / "noaffine.nii.gz", hu, affine, code=0)
    singular = affine.copy()
    singular[:3, 2] = 0.0
    flat = _nifti(folder / "singular.nii.gz", hu, singular, qform=False)  # a quaternion cannot hold it
    centroids = json.loads(paths["centroids"].read_text())

    def ctd(name: str, entries: list) -> str:
        (folder / name).write_text(json.dumps(entries))
        return str(folder / name)

    no_direction = ctd("nodir.json", [{"label": 20, "X": 1, "Y": 2, "Z": 3}])
    no_key = ctd("nokey.json", [centroids[0], centroids[1], {k: v for k, v in centroids[2].items() if k != "Z"}])
    label_29 = ctd("label29.json", [centroids[0], {**centroids[1], "label": 29}])
    outside = ctd("outside.json", [centroids[0], {**centroids[1], "X": 500.0}])
    small = _nifti(folder / "small.nii.gz", ct.labels[:-1], affine)
    moved = affine.copy()
    moved[:3, 3] += 2.0
    shifted = _nifti(folder / "shifted.nii.gz", ct.labels, moved)
    label_40 = ct.labels.copy()
    label_40[0, 0, 0] = 40
    bad_label = _nifti(folder / "label40.nii.gz", label_40, affine)
    grades = folder / "grades.csv"
    grades.write_text("vertebra,grade\nL1,mild\nL2,broken\n")
    c, m = ["--centroids", str(paths["centroids"])], ["--mask", str(paths["mask"])]
    return {
        "no affine": ([], "qform_code and sform_code are both 0", no_affine),
        "singular affine": ([], "singular or degenerate", flat),
        "not VerSe": (["--centroids", no_direction], "entry 0", None),
        "missing key": (["--centroids", no_key], "entry 2: key 'Z' missing", None),
        "label 29": (["--centroids", label_29], "outside VerSe's labels 1-28", None),
        "outside": (["--centroids", outside], "outside the volume", None),
        "mask shape": ([*c, "--mask", str(small)], "mask shape", None),
        "mask affine": ([*c, "--mask", str(shifted)], "mask affine differs", None),
        "mask label": ([*c, "--mask", str(bad_label)], "mask label 40", None),
        "grades row": ([*c, *m, "--grades", str(grades)], "row 2 (line 3), column 'grade'", None),
        "missing CT": ([], "CT file not found", folder / "absent.nii.gz"),
        "sod beyond sid": (["--sod", "1200"], "SOD", None),
        "infinite sid": (["--sid", "inf"], "sid_mm must be finite", None),
        "nan rotation": (["--rotation", "nan"], "rotation_deg must be finite", None),
        "huge fov": (["--fov", "1e6", "1e6"], "beyond 16384 a side", None),
    }


def test_every_bad_input_gives_one_line_exit_2_and_no_output(capsys, inputs, tmp_path) -> None:
    ct, paths = inputs
    cases = _bad_inputs(ct, paths, tmp_path / "bad")
    for name, (args, words, ct_path) in cases.items():
        out = tmp_path / f"out_{name.replace(' ', '_')}"
        code, stdout, err = _run(capsys, str(ct_path or paths["ct"]), "--out", str(out), *args)
        assert code == 2, name
        assert stdout == "" and err.count("\n") == 1 and err.startswith("error: "), (name, err)
        assert words in err, (name, err)
        assert not out.exists(), name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad"]  # no staging folder left behind


def test_an_existing_out_is_left_untouched_without_overwrite(capsys, inputs, tmp_path) -> None:
    _, paths = inputs
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code, _, err = _run(capsys, str(paths["ct"]), "--out", str(out))
    assert code == 2 and "--overwrite" in err and err.count("\n") == 1
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and (out / "keep.txt").read_text() == "mine"
