"""Batch scoring: every file accounted for, resume after a real SIGKILL, torchrun on CPU, exit codes,
ROI handling, privacy and DICOM results."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch

from dicom_factory import make_gray_dicom
from spine_dfl.atomic import output_file_mode
from spine_dfl.engine.checkpoint import atomic_torch_save, checkpoint_payload
from spine_dfl.data.transforms import Preprocessing, eval_transforms
from spine_dfl.io import find_inputs
from spine_dfl.model import DFLNet
from spine_dfl.score import (
    PARTIAL_DIR,
    PartWriter,
    ScoreError,
    collect_done,
    reason_category,
    score,
)
from spine_dfl.synth import generate_cohort
from tests.conftest import pydicom_data_dir, pydicom_test_dir

CLASSES = ["normal", "mild", "severe"]
REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny random-init ResNet-18 DFL models (32 px input): one whole-image, one ROI model."""
    folder = tmp_path_factory.mktemp("checkpoints")
    paths = {}
    for name, use_roi in (("whole", False), ("roi", True)):
        torch.manual_seed(0)
        model = DFLNet("resnet18", num_classes=len(CLASSES), filters_per_class=2)
        paths[name] = folder / f"{name}.pt"
        atomic_torch_save(checkpoint_payload(model, {"test": name},
                                             CLASSES, Preprocessing(input_size=32, use_roi=use_roi), {}),
                          paths[name])
    return paths


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three synthetic patients, 256-pixel-high DICOMs (14 vertebra ROIs each, rois.csv)."""
    folder = tmp_path_factory.mktemp("cohort")
    generate_cohort(folder, patients=3, seed=5, rows=256)
    return folder


def _gray_dicom(path: Path, frames: int = 1) -> None:
    pixels = np.arange(16 * 16 * frames, dtype=np.uint16).reshape(frames, 16, 16)
    make_gray_dicom(path, pixels, sop_class_uid=pydicom.uid.SecondaryCaptureImageStorage, modality="OT",
                    patient_name="BROKEN^MULTI", patient_id="MF-1")


# What each deliberately broken file must fail with (reason_category).
BROKEN_EXPECTED = {
    "empty": {"empty file"},
    "truncated": {"truncated file", "corrupt DICOM"},
    "random.bin": {"not an image file"},
    "notes.txt": {"not an image file"},
    "report_sr": {"no pixel data (not an image)"},
    "rgb_sc": {"colour image"},
    "multiframe": {"multi-frame image"},
}


@pytest.fixture(scope="module")
def broken(tmp_path_factory: pytest.TempPathFactory, cohort: Path) -> Path:
    """Files a PACS export really contains, none of which can be scored (names without suffix)."""
    folder = tmp_path_factory.mktemp("broken")
    (folder / "empty").write_bytes(b"")
    good = (cohort / "images" / "P0000.dcm").read_bytes()
    (folder / "truncated").write_bytes(good[: len(good) * 2 // 3])
    (folder / "random.bin").write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    (folder / "notes.txt").write_text("export list\nnot an image\n")
    shutil.copy(pydicom_test_dir() / "test-SR.dcm", folder / "report_sr")
    shutil.copy(pydicom_test_dir() / "SC_rgb_rle.dcm", folder / "rgb_sc")
    _gray_dicom(folder / "multiframe", frames=3)
    return folder


def _read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _cli(*argv: str) -> int:
    from spine_dfl.cli import main

    return main(["score", *argv])


# --------------------------------------------------------------------------- small units
def test_reason_categories_are_short_and_specific() -> None:
    assert reason_category("is an empty file (0 bytes)") == "empty file"
    assert reason_category("Comprehensive SR has no pixel data") == "no pixel data (not an image)"
    assert reason_category(
        "CT Image has no pixel data although it is an image object (file truncated or pixel data removed)"
    ) == "image without its pixel data (truncated or stripped)"
    assert reason_category("file is truncated: End of file reached before delimiter") == "truncated file"
    assert reason_category("has pixel data but no Rows element, so it cannot be interpreted") == "incomplete image header"
    assert reason_category("is a multi-frame image (3 frames); only single-frame radiographs are supported") == "multi-frame image"
    assert reason_category("something nobody anticipated") == "other error"


def test_bad_roi_table_is_a_usage_error_naming_the_row(tmp_path: Path, checkpoints: dict[str, Path], cohort: Path) -> None:
    """score reads ROIs through io.read_rois: a bad table stops the run (exit 2) before any file is scored."""
    bad = tmp_path / "bad.csv"
    bad.write_text("sop_instance_uid,vertebra,x_min,y_min,x_max,y_max\n1.2.3,L1,5,5,4,9\n")
    with pytest.raises(ValueError, match="line 2"):
        score(checkpoints["roi"], [cohort / "images"], tmp_path / "out", rois_csv=bad, workers=0, progress=False)
    assert _cli(str(checkpoints["roi"]), str(cohort / "images"), "--rois", str(bad), "--out", str(tmp_path / "cli"),
                "--no-progress") == 2
    assert not (tmp_path / "out" / "predictions.csv").exists()


def test_collect_done_ignores_torn_and_unjournaled_rows(tmp_path: Path) -> None:
    columns = ["file", "status", "error", "vertebra", "prob_a"]
    part = PartWriter(tmp_path / PARTIAL_DIR, "attempt-1", columns)
    odd = '/x/a "quoted",\nname'  # quotes, comma and newline in a path survive the byte index
    part.commit([["/x/a", "ok", "", "L1", "0.5"], ["/x/a", "ok", "", "L2", "0.4"], [odd, "error", "bad", "", ""]],
                [{"file": "/x/a", "rows": 2}, {"file": odd, "rows": 1}])
    part.close()
    # killed while writing the next batch: rows of b complete, its journal line torn; a torn row
    with open(part.csv_path, "a") as handle:
        handle.write("/x/b,ok,,L1,0.1\n/x/b,ok,,L2")
    with open(part.journal_path, "a") as handle:
        handle.write('{"file": "/x/b", "ro')
    done = collect_done(tmp_path, columns)
    assert list(done) == ["/x/a", odd] and done["/x/a"].rows == 2
    assert (done[odd].ok, done[odd].error) == (False, "bad")
    lines = part.csv_path.read_bytes()[done["/x/a"].start : done["/x/a"].end].decode().splitlines()
    assert lines == ["/x/a,ok,,L1,0.5", "/x/a,ok,,L2,0.4"]
    with pytest.raises(ScoreError, match="different columns"):
        collect_done(tmp_path, [*columns, "prob_b"])


# --------------------------------------------------------------------------- the mixed PACS export
def test_mixed_export_every_file_scored_or_failed_with_reason(
    tmp_path: Path, checkpoints: dict[str, Path], cohort: Path, broken: Path
) -> None:
    """Synthetic cohort + every pydicom / pydicom-data test file + broken files, whole-image model."""
    inputs = [cohort / "images", broken, pydicom_test_dir()]
    if pydicom_data_dir() is not None:
        inputs.append(pydicom_data_dir())
    out = tmp_path / "out"
    summary = score(checkpoints["whole"], inputs, out, batch_size=8, workers=2, progress=False)

    expected_files = {os.path.abspath(p) for p in find_inputs(inputs)}
    rows = _read_rows(out / "predictions.csv")
    per_file = Counter(r["image"] for r in rows)
    assert set(per_file) == expected_files and all(n == 1 for n in per_file.values())  # whole image: 1 row
    assert not any(Path(f).name == "DICOMDIR" for f in per_file)  # followed, not scored
    on_disk = json.loads((out / "summary.json").read_text())
    # The inputs counted without spine_dfl: every file on disk but the DICOMDIR indexes (followed, not scored).
    on_disk_files = {os.path.abspath(p) for folder in inputs for p in Path(folder).rglob("*")
                     if p.is_file() and not p.name.startswith("DICOMDIR")}
    assert expected_files == on_disk_files
    assert on_disk["found"] == summary.found == len(on_disk_files)
    assert on_disk["scored"] + on_disk["failed"] == len(on_disk_files)
    assert sum(on_disk["failed_by_reason"].values()) == on_disk["failed"]
    # the 3 synth films, pydicom's grayscale Secondary Captures (left to the image gate) and its lateral C-spine CR;
    # CT, MR, US, the chest PA and the ankle AP are refused by the input gate (issue 21)
    assert on_disk["scored"] == sum(r["status"] == "ok" for r in rows) and on_disk["scored"] >= 3 + 6
    assert not any(r["status"] == "ok" for r in rows if Path(r["image"]).name.startswith(("CT_small", "MR_small")))
    for row in rows:
        if row["status"] == "error":
            assert row["error"].strip() and row["pred"] == ""
        else:
            assert row["status"] == "ok" and row["pred"] in CLASSES
            assert sum(float(row[f"prob_{c}"]) for c in CLASSES) == pytest.approx(1.0, abs=1e-4)
    by_name = {Path(r["image"]).name: r for r in rows if Path(r["image"]).parent == broken}
    for name, categories in BROKEN_EXPECTED.items():
        assert by_name[name]["status"] == "error"
        assert reason_category(by_name[name]["error"]) in categories, (name, by_name[name]["error"])
        assert str(broken) not in by_name[name]["error"]  # reason only: the path is in the file column
    assert all(r["status"] == "ok" for r in rows if "/images/P" in r["image"])
    if pydicom_data_dir() is not None:
        chest = by_name_in(rows, "RG1_UNCI.dcm")  # a real CR, but a chest PA: the input gate refuses it (issue 21)
        assert (chest["status"], chest["error"]) == ("error", "body part CHEST, view PA: not a lateral spine radiograph")
    # privacy: no patient names / IDs in outputs (paths aside), UIDs kept
    text = (out / "predictions.csv").read_text() + (out / "summary.json").read_text()
    for name in ("SYNTH^", "CompressedSamples^RG1", "9RG1", "BROKEN^MULTI", "MF-1"):
        assert name not in text
    assert "patient_id" not in rows[0]
    assert by_name["multiframe"]["sop_instance_uid"]  # the header was read: UIDs even for failures
    assert not (out / PARTIAL_DIR).exists()
    for written in (out / "predictions.csv", out / "summary.json"):  # readable like open() output
        assert stat.S_IMODE(written.stat().st_mode) == output_file_mode()
    assert summary.exit_status(strict=False) == 0 and summary.exit_status(strict=True) == 3


def by_name_in(rows: list[dict[str, str]], name: str) -> dict[str, str]:
    return next(r for r in rows if Path(r["image"]).name == name)


# --------------------------------------------------------------------------- ROI models, ids, DICOM out
def test_roi_model_needs_rois_and_bad_checkpoint_exit_2(tmp_path: Path, checkpoints: dict[str, Path], cohort: Path, capsys) -> None:
    assert _cli(str(checkpoints["roi"]), str(cohort / "images"), "--out", str(tmp_path / "a"), "--no-progress") == 2
    assert "--rois" in capsys.readouterr().err
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    assert _cli(str(junk), str(cohort / "images"), "--out", str(tmp_path / "b"), "--no-progress") == 2
    assert _cli(str(checkpoints["whole"]), str(tmp_path / "no-such-folder"), "--out", str(tmp_path / "c")) == 2
    assert not (tmp_path / "a" / "predictions.csv").exists()


def test_failed_files_exit_3(tmp_path: Path, checkpoints: dict[str, Path], cohort: Path, broken: Path) -> None:
    one_good = [str(cohort / "images" / "P0001.dcm"), str(broken / "empty")]
    common = ["--workers", "0", "--no-progress"]
    assert _cli(str(checkpoints["whole"]), *one_good, "--out", str(tmp_path / "a"), *common) == 3
    assert _cli(str(checkpoints["whole"]), one_good[0], "--out", str(tmp_path / "b"), *common) == 0


def test_strict_reaches_the_summary(tmp_path: Path, checkpoints: dict[str, Path], cohort: Path, broken: Path) -> None:
    """score(strict=True) is a run that fails when a file failed: the summary says so, not only the CLI."""
    inputs = [cohort / "images" / "P0001.dcm", broken / "empty"]
    strict = score(checkpoints["whole"], inputs, tmp_path / "strict", workers=0, strict=True, progress=False)
    assert (strict.failed, strict.strict, strict.exit_status()) == (1, True, 3)
    assert json.loads((tmp_path / "strict" / "summary.json").read_text())["strict"] is True
    lenient = score(checkpoints["whole"], inputs, tmp_path / "lenient", workers=0, progress=False)
    assert (lenient.strict, lenient.exit_status()) == (False, 0)


def test_roi_model_rows_per_vertebra_keep_ids_and_dicom_out(
    tmp_path: Path, checkpoints: dict[str, Path], cohort: Path
) -> None:
    no_rois = tmp_path / "extra"
    no_rois.mkdir()
    _gray_dicom(no_rois / "unlisted")  # a readable image that rois.csv does not mention
    summary = score(
        checkpoints["roi"], [cohort / "images", no_rois], tmp_path / "out", rois_csv=cohort / "rois.csv",
        batch_size=5, workers=1, keep_ids=True, dicom_out=tmp_path / "dicom", progress=False,
    )
    assert (summary.found, summary.scored, summary.failed) == (4, 3, 1)
    assert summary.failed_by_reason == {"no ROIs for this image": 1}
    rows = _read_rows(tmp_path / "out" / "predictions.csv")
    rois = _read_rows(cohort / "rois.csv")
    for image in sorted((cohort / "images").iterdir()):
        header = pydicom.dcmread(image, stop_before_pixels=True)
        mine = [r for r in rows if r["image"] == str(image)]
        listed = [r for r in rois if r["sop_instance_uid"] == header.SOPInstanceUID]
        assert [r["vertebra"] for r in mine] == [r["vertebra"] for r in listed]  # ROI order kept
        assert [float(r["x_min"]) for r in mine] == [float(r["x_min"]) for r in listed]
        assert {r["patient_id"] for r in mine} == {str(header.PatientID)}  # --keep-ids
        assert {r["study_instance_uid"] for r in mine} == {header.StudyInstanceUID}
        sr = pydicom.dcmread(tmp_path / "dicom" / f"{header.SOPInstanceUID}_SR.dcm")
        assert sr.StudyInstanceUID == header.StudyInstanceUID and sr.SeriesInstanceUID != header.SeriesInstanceUID
        assert len(sr.ContentSequence[-1].ContentSequence) == len(listed)  # one ROI group per vertebra
        sc = pydicom.dcmread(tmp_path / "dicom" / f"{header.SOPInstanceUID}_SC.dcm")
        assert "heatmap" in sc.DerivationDescription  # evidence maps reached the writer processes
    unlisted = next(r for r in rows if r["image"].endswith("unlisted"))
    assert unlisted["status"] == "error" and "ROI" in unlisted["error"]
    assert summary.dicom_out is not None and summary.dicom_out["written"] == 3


def test_dicom_out_sc_heatmap_is_the_predicted_class_evidence(
    tmp_path: Path, cohort: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """End to end through score(): the model's forward is wrapped so that every sample is predicted
    "mild", the first sample's "mild" filters respond at one conv4 location only, and a "normal"
    filter responds elsewhere in every sample. The SC must be coloured at exactly that location of
    the first vertebra, nowhere else that a heatmap could not be, and plain grey outside every crop region."""
    from spine_dfl.dicom_out import VertebraFinding, render_roi_overlay
    from spine_dfl.heatmap.geometry import display_region
    from spine_dfl.io import read_image

    torch.manual_seed(0)
    pre = Preprocessing(input_size=64, use_roi=True)  # ResNet-18 layer3: a 4 x 4 conv4 grid
    checkpoint = tmp_path / "roi64.pt"
    atomic_torch_save(checkpoint_payload(DFLNet("resnet18", num_classes=len(CLASSES), filters_per_class=2),
                                         {"test": "heat"}, CLASSES, pre, {}),
                      checkpoint)
    hot = (1, 2)  # (row, col) in the 4 x 4 grid
    forward = DFLNet.forward
    seen = {"samples": 0, "with_maps": 0}

    def planted(self: DFLNet, x: torch.Tensor, return_maps: bool = False, roi: torch.Tensor | None = None):  # noqa: ANN202
        out = forward(self, x, return_maps=return_maps, roi=roi)
        fused = torch.full_like(out.fused, -4.0)
        fused[:, 1] = 4.0
        maps = out.response_maps
        if maps is not None:
            seen["with_maps"] += 1
            k = self.filters_per_class
            maps = torch.zeros_like(maps)
            maps[:, 0, 0, 0] = 9.0  # a "normal" filter: not the predicted class, must not be drawn
            if seen["samples"] == 0:
                maps[0, k + 1, hot[0], hot[1]] = 5.0
        seen["samples"] += x.shape[0]
        return dataclasses.replace(out, fused=fused, response_maps=maps)

    monkeypatch.setattr(DFLNet, "forward", planted)
    image = cohort / "images" / "P0000.dcm"
    summary = score(checkpoint, [image], tmp_path / "out", rois_csv=cohort / "rois.csv", batch_size=4, workers=1,
                    dicom_out=tmp_path / "dicom", progress=False)
    assert summary.dicom_out is not None and summary.dicom_out["written"] == 1
    assert seen["with_maps"] > 0

    header = pydicom.dcmread(image, stop_before_pixels=True)
    sc = pydicom.dcmread(tmp_path / "dicom" / f"{header.SOPInstanceUID}_SC.dcm").pixel_array.astype(int)
    rows_csv = _read_rows(tmp_path / "out" / "predictions.csv")
    assert {r["pred"] for r in rows_csv} == {"mild"}
    pixels = read_image(image).pixels
    rows, cols = pixels.shape
    # The same overlay without heatmaps: boxes, captions and banner are identical, so every
    # difference is heatmap (or its colour legend at the bottom).
    plain = [
        VertebraFinding(r["vertebra"], tuple(float(r[c]) for c in ("x_min", "y_min", "x_max", "y_max")), r["pred"],
                        {c: float(r[f"prob_{c}"]) for c in CLASSES})
        for r in rows_csv
    ]
    without = render_roi_overlay(pixels, plain, CLASSES).astype(int)
    changed = np.any(sc != without, axis=2)
    spread = np.ptp(sc, axis=2)

    transforms = eval_transforms(pre)
    inside = np.zeros((rows, cols), bool)
    first_affine = first_region = None
    for finding in plain:
        affine = np.asarray(transforms({"image": str(image), "roi": finding.roi})["to_original"], dtype=np.float64)
        x0, y0, x1, y1 = display_region(affine, pre, finding.roi, (rows, cols))
        inside[y0:y1, x0:x1] = True
        if first_affine is None:
            first_affine, first_region = affine, (x0, y0, x1, y1)
    legend_band = np.zeros((rows, cols), bool)
    legend_band[rows - 40 :] = True
    assert not changed[~inside & ~legend_band].any()
    assert np.all(spread[~inside & ~legend_band & (np.ptp(without, axis=2) == 0)] == 0)  # grey stays grey

    model = DFLNet("resnet18", num_classes=len(CLASSES), filters_per_class=2)
    centre = np.array([model.rf_center_offset + model.stride * hot[1], model.rf_center_offset + model.stride * hot[0], 1.0])
    hx, hy = (first_affine @ centre)[:2]
    assert first_region[0] <= hx < first_region[2] and first_region[1] <= hy < first_region[3]
    assert spread[int(hy), int(hx)] >= 30  # coloured where the first vertebra's evidence is
    # The strongest evidence patch is drawn in the first rank colour (effective-field box clipped to the
    # crop region, and the peak dot) around the hot location: it is not heatmap.
    from spine_dfl.heatmap.display import RANK_COLOURS

    patch = np.all(sc == [int(RANK_COLOURS[0][i:i + 2], 16) for i in (1, 3, 5)], axis=2) & ~legend_band
    pys, pxs = np.nonzero(patch)
    assert len(pxs) > 0 and pxs.min() <= hx <= pxs.max() + 1 and pys.min() <= hy <= pys.max() + 1
    near_patch = patch.copy()  # and its one-pixel rim
    for axis in (0, 1):
        for shift in (-1, 1):
            near_patch |= np.roll(patch, shift, axis=axis)
    heat = changed & (spread > 3) & ~legend_band & (np.ptp(without, axis=2) == 0) & ~near_patch  # not boxes / captions
    ys, xs = np.nonzero(heat)
    reach = model.stride * abs(first_affine[0, 0]) + 2.0  # bilinear support: one grid step
    assert len(xs) > 0 and np.all(np.maximum(np.abs(xs + 0.5 - hx), np.abs(ys + 0.5 - hy)) <= reach)


# --------------------------------------------------------------------------- resume and DDP
@pytest.fixture(scope="module")
def small_export(tmp_path_factory: pytest.TempPathFactory, cohort: Path, broken: Path) -> Path:
    """About a dozen files: the cohort, a few broken files and a few real test files."""
    folder = tmp_path_factory.mktemp("export")
    shutil.copytree(cohort / "images", folder / "synthetic")
    shutil.copytree(broken, folder / "broken")
    shutil.copytree(pydicom_test_dir() / "dicomdirtests" / "77654033", folder / "agfa")
    return folder


@pytest.fixture(scope="module")
def reference_rows(tmp_path_factory: pytest.TempPathFactory, checkpoints: dict[str, Path], small_export: Path) -> list[dict[str, str]]:
    """The predictions of one uninterrupted single-process run over ``small_export``."""
    out = tmp_path_factory.mktemp("reference")
    score(checkpoints["whole"], [small_export], out, batch_size=4, workers=0, progress=False)
    return _read_rows(out / "predictions.csv")


def _same_predictions(rows: list[dict[str, str]], reference: list[dict[str, str]]) -> None:
    assert [r["image"] for r in rows] == [r["image"] for r in reference]  # input order, each file once
    for row, ref in zip(rows, reference):
        assert (row["status"], row["error"], row["pred"]) == (ref["status"], ref["error"], ref["pred"])
        for c in CLASSES:
            if ref["status"] == "ok":
                assert float(row[f"prob_{c}"]) == pytest.approx(float(ref[f"prob_{c}"]), abs=1e-4)


def _env(*paths: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([*(str(p) for p in paths), str(REPO), env.get("PYTHONPATH", "")])
    return env


def _input_count(folder: Path) -> int:
    """Files on disk under ``folder``, counted independently of spine_dfl (no DICOMDIR index here)."""
    return sum(1 for p in folder.rglob("*") if p.is_file() and not p.name.startswith("DICOMDIR"))


# Runs `spine-dfl score` with PartWriter.commit wrapped: after KILL_AFTER commits (one per batch:
# the commit interval is set to 0), half a row and half a journal line are written and the process
# SIGKILLs itself, i.e. a real kill in the middle of writing.
KILL_WRAPPER = """
import os, signal, sys
import spine_dfl.score.scorer as scorer
from spine_dfl.score.journal import PartWriter
from spine_dfl.cli import main

scorer.COMMIT_INTERVAL_S = 0.0
KILL_AFTER = int(sys.argv[1])
commit = PartWriter.commit
calls = []

def commit_then_die(self, rows, entries):
    commit(self, rows, entries)
    calls.append(len(entries))
    if sum(calls) >= KILL_AFTER:
        self._rows.write("/torn/row/of/a/killed/run,ok,,1.2.3")
        self._rows.flush()
        self._journal.write('{"file": "/torn/journal')
        self._journal.flush()
        os.kill(os.getpid(), signal.SIGKILL)

PartWriter.commit = commit_then_die
sys.exit(main(["score", *sys.argv[2:]]))
"""


def test_resume_after_sigkill_scores_only_missing_files(
    tmp_path: Path, checkpoints: dict[str, Path], small_export: Path, reference_rows: list[dict[str, str]]
) -> None:
    out = tmp_path / "out"
    wrapper = tmp_path / "kill_after.py"
    wrapper.write_text(KILL_WRAPPER)
    killed = subprocess.run(
        [sys.executable, str(wrapper), "4", str(checkpoints["whole"]), str(small_export), "--out", str(out),
         "--batch-size", "2", "--workers", "0", "--no-progress"],
        env=_env(), capture_output=True, text=True, timeout=300,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert not (out / "predictions.csv").exists()
    journals = list((out / PARTIAL_DIR).glob("*.done.jsonl"))
    assert len(journals) == 1 and journals[0].read_text().endswith('{"file": "/torn/journal')
    done_before = len(journals[0].read_text().splitlines()) - 1  # the torn line does not count
    assert 4 <= done_before < _input_count(small_export)

    summary = score(checkpoints["whole"], [small_export], out, batch_size=2, workers=0, resume=True, progress=False)
    assert summary.from_earlier_runs == done_before
    assert summary.scored_this_run == summary.found - done_before
    assert summary.found == summary.scored + summary.failed == _input_count(small_export)
    rows = _read_rows(out / "predictions.csv")
    assert "/torn/row/of/a/killed/run" not in {r["image"] for r in rows}
    _same_predictions(rows, reference_rows)

    # a second --resume of a finished run scores nothing and changes nothing
    again = score(checkpoints["whole"], [small_export], out, batch_size=2, workers=0, resume=True, progress=False)
    assert (again.scored_this_run, again.from_earlier_runs) == (0, summary.found)
    assert _read_rows(out / "predictions.csv") == rows


def test_torchrun_two_cpu_processes_lose_and_duplicate_nothing(
    tmp_path: Path, checkpoints: dict[str, Path], small_export: Path, reference_rows: list[dict[str, str]]
) -> None:
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "spine_dfl", "score", str(checkpoints["whole"]), str(small_export), "--out", str(out),
         "--batch-size", "2", "--workers", "0", "--no-progress"],
        env=_env(), capture_output=True, text=True, timeout=300,
    )
    # the export holds files that fail (exit 3, "finished, some inputs failed"); torchrun reports a child's
    # non-zero status as its own 1 and names the child's code
    assert result.returncode == 1 and "exitcode  : 3" in result.stderr, result.stdout[-2000:] + result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["failed"] > 0
    assert summary["found"] == summary["scored"] + summary["failed"] == _input_count(small_export)
    _same_predictions(_read_rows(out / "predictions.csv"), reference_rows)
    assert not (out / PARTIAL_DIR).exists()


# --------------------------------------------------------------------------- decoder crashes
PANIC_FIXTURE = REPO / "tests" / "fixtures" / "rle_panic.dcm"
CRASHING_DECODER = REPO / "tests" / "crashing_decoder"  # sitecustomize: an RLE plugin that calls os.abort()


def _rle_dicom(path: Path, rows: int, cols: int) -> None:
    pixels = (np.arange(rows * cols, dtype=np.uint16).reshape(rows, cols) * 7) % 4096
    dataset = make_gray_dicom(None, pixels)
    dataset.compress(pydicom.uid.RLELossless, encoding_plugin="pydicom")
    dataset.save_as(path, enforce_file_format=True)


def _score_subprocess(checkpoint: Path, folder: Path, out: Path, *extra: str, env: dict[str, str] | None = None):
    return subprocess.run(
        [sys.executable, "-m", "spine_dfl", "score", str(checkpoint), str(folder), "--out", str(out), "--no-progress",
         *extra],
        env=env or _env(), capture_output=True, text=True, timeout=300,
    )


@pytest.mark.parametrize("workers", ["0", "2"])
def test_panicking_decoder_fails_one_file_not_the_run(
    tmp_path: Path, checkpoints: dict[str, Path], cohort: Path, workers: str
) -> None:
    """pylibjpeg-rle panics on this real file (pyo3 PanicException, a BaseException): one failed file."""
    folder = tmp_path / "export"
    shutil.copytree(cohort / "images", folder)
    # An MR slice: retagged as a CR so that the input gate (issue 21) lets it through to the decoder
    panic = pydicom.dcmread(PANIC_FIXTURE)
    panic.Modality = "CR"
    panic.SOPClassUID = panic.file_meta.MediaStorageSOPClassUID = pydicom.uid.ComputedRadiographyImageStorage
    panic.save_as(folder / "rle_panic.dcm")
    out = tmp_path / "out"
    result = _score_subprocess(checkpoints["whole"], folder, out, "--workers", workers)
    assert result.returncode == 3, result.stderr[-3000:]  # finished, a file failed
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["found"] == summary["scored"] + summary["failed"] == _input_count(folder)
    assert summary["failed"] == 1
    row = by_name_in(_read_rows(out / "predictions.csv"), "rle_panic.dcm")
    assert row["status"] == "error" and row["error"].strip()
    assert reason_category(row["error"]) == "pixel data cannot be decoded", row["error"]


def test_decoder_that_kills_its_worker_fails_that_file_only(
    tmp_path: Path, checkpoints: dict[str, Path], cohort: Path
) -> None:
    """A decoder plugin registered only by this test (through pydicom's plugin mechanism, in every
    process of the run) aborts on one file: its worker dies twice, the file fails with
    ``decoder crashed``, every other file is scored."""
    folder = tmp_path / "export"
    shutil.copytree(cohort / "images", folder)
    _rle_dicom(folder / "aborts", 77, 53)  # sitecustomize.ABORT_ROWS (not imported: it would register here)
    _rle_dicom(folder / "rle_fine", 64, 48)  # RLE still decodes for every other image
    out = tmp_path / "out"
    result = _score_subprocess(checkpoints["whole"], folder, out, "--workers", "2", "--batch-size", "2",
                               env=_env(CRASHING_DECODER))
    assert result.returncode == 3, result.stderr[-3000:]  # finished, a file failed
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["found"] == summary["scored"] + summary["failed"] == _input_count(folder) == 5
    assert (summary["failed"], summary["failed_by_reason"]) == (1, {"decoder crashed": 1})
    rows = _read_rows(out / "predictions.csv")
    assert (by_name_in(rows, "aborts")["status"], by_name_in(rows, "aborts")["error"]) == ("error", "decoder crashed")
    assert all(r["status"] == "ok" for r in rows if Path(r["image"]).name != "aborts")
    assert "decoder crashed" in result.stderr  # the log names what happened
