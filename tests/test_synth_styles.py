"""Synth acquisition styles: the same patients and truth in every style, images that differ like
sites do, and the default style unchanged."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from scipy import ndimage

from spine_dfl.cli import main
from spine_dfl.synth import STYLES, SynthStyle, generate_cohort, render_patient, synth_style

TINY = dict(rows=256, cols=144, compress=False)
# Digest of a default cohort (tables + stored pixels) written by the generator before styles
# existed (commit 3576ddf): the default style must keep writing exactly this.
DEFAULT_DIGEST = "526bca7429f6aa7b88f48f933bb4190552819bd43f5ce9bb166679be60d4b4e7"


def _digest(folder: Path, image_paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for name in ("manifest.csv", "rois.csv", "vertebrae.csv", "cohort.json"):
        digest.update((folder / name).read_bytes())
    for path in image_paths:
        digest.update(np.ascontiguousarray(pydicom.dcmread(path).pixel_array).tobytes())
    return digest.hexdigest()


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def cohorts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    return {name: generate_cohort(tmp_path_factory.mktemp(name), patients=3, seed=5, style=name, **TINY)
            for name in STYLES}


def test_default_style_writes_what_the_generator_wrote_before_styles(cohorts) -> None:
    cohort = cohorts["default"]
    assert _digest(cohort.out_dir, cohort.image_paths) == DEFAULT_DIGEST
    assert "style" not in json.loads(cohort.cohort_json_path.read_text())


def test_every_style_has_the_same_patients_levels_grades_and_bodies(cohorts) -> None:
    reference = cohorts["default"]
    truth = reference.vertebrae_path.read_bytes()
    labels = [(r["image"], r["patient_id"], r["vertebra"], r["label"], r["split"]) for r in _rows(reference.manifest_path)]
    for name, cohort in cohorts.items():
        assert cohort.vertebrae_path.read_bytes() == truth, name  # grades, heights, outlines, landmarks
        rows = _rows(cohort.manifest_path)
        assert [(r["image"], r["patient_id"], r["vertebra"], r["label"], r["split"]) for r in rows] == labels, name
        header = [pydicom.dcmread(p, stop_before_pixels=True) for p in cohort.image_paths]
        assert [(h.PatientSex, h.PatientAge) for h in header] == [
            (h.PatientSex, h.PatientAge) for h in (pydicom.dcmread(p, stop_before_pixels=True) for p in reference.image_paths)
        ]


def test_styles_are_recorded_and_photometric_follows_the_style(cohorts) -> None:
    for name in ("site_b", "site_c"):
        summary = json.loads(cohorts[name].cohort_json_path.read_text())
        assert summary["style"] == STYLES[name].as_dict()
        assert summary["photometric"] == {STYLES[name].photometric: 3}
    assert set(json.loads(cohorts["default"].cohort_json_path.read_text())["photometric"]) == {"MONOCHROME1", "MONOCHROME2"}


def test_roi_convention_follows_the_style_and_always_holds_the_body(cohorts) -> None:
    mean_pad = {}
    for name, cohort in cohorts.items():
        bodies = {(r["patient_id"], r["vertebra"]): r for r in _rows(cohort.vertebrae_path)}
        pads = []
        for roi in _rows(cohort.manifest_path):
            body = bodies[roi["patient_id"], roi["vertebra"]]
            bx0, by0, bx1, by1 = (int(body[k]) for k in ("body_x_min", "body_y_min", "body_x_max", "body_y_max"))
            x0, y0, x1, y1 = (int(roi[k]) for k in ("x_min", "y_min", "x_max", "y_max"))
            assert x0 <= bx0 and y0 <= by0 and x1 >= bx1 and y1 >= by1, (name, roi["vertebra"])
            pads.append(((x1 - x0) - (bx1 - bx0)) / (bx1 - bx0))
        mean_pad[name] = float(np.mean(pads))
    assert mean_pad["site_b"] < mean_pad["default"] < mean_pad["site_c"]


def _edge_and_noise(style: str) -> tuple[float, float]:
    """(edge contrast, noise) of one rendered patient: the mean gradient magnitude at the vertebral
    body's border, and the std of the finest-scale residual in flat soft tissue."""
    rendered = render_patient(np.random.default_rng(7), 512, 288, style=synth_style(style),
                              style_rng=np.random.default_rng(8))
    image = rendered.image.astype(np.float64)
    image = (image - image[rendered.body_region].mean()) / image[rendered.body_region].std()
    border = rendered.bone_mask ^ ndimage.binary_erosion(rendered.bone_mask, iterations=2)
    edge = float(np.hypot(*np.gradient(image))[border].mean())
    flat = ndimage.binary_erosion(rendered.body_region & ~ndimage.binary_dilation(rendered.bone_mask, iterations=25),
                                  iterations=10)
    residual = image - ndimage.uniform_filter(image, 3)
    return edge, float(residual[flat].std())


def test_styles_differ_measurably_in_edges_and_noise() -> None:
    default, site_b, site_c = (_edge_and_noise(name) for name in ("default", "site_b", "site_c"))
    assert site_b[0] > 1.2 * default[0]  # sharper detector, strong edge enhancement
    assert site_c[0] < 0.8 * default[0]  # blur, coarse pitch, soft processing
    assert abs(site_b[1] - default[1]) > 0.2 * default[1] and abs(site_c[1] - default[1]) > 0.2 * default[1]


def test_style_knobs_are_validated() -> None:
    with pytest.raises(ValueError, match="roi_jitter"):
        SynthStyle(name="x", roi_margin=0.02, roi_jitter=0.05)
    with pytest.raises(ValueError, match="blur_sigma"):
        SynthStyle(name="x", blur_sigma=(1.0, 0.5))
    with pytest.raises(ValueError, match="unknown synth style 'nope'.*site_b"):
        synth_style("nope")


def test_cli_rejects_an_unknown_style_without_a_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["synth", str(tmp_path / "out"), "--patients", "1", "--style", "nope"]) == 2
    err = capsys.readouterr().err
    assert "unknown synth style 'nope'" in err and "Traceback" not in err
