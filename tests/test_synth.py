"""Synthetic cohort: DICOM correctness, determinism, manifest/ROI contract, grade geometry."""

from __future__ import annotations

import csv
import hashlib
import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.pixels import apply_modality_lut, apply_voi_lut
from pydicom.uid import (
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    JPEG2000Lossless,
    RLELossless,
)

from spine_dfl.io import read_image
from spine_dfl.synth import (
    CLASS_NAMES,
    HEIGHT_LOSS_RANGES,
    LABELLED_LEVELS,
    CohortSummary,
    VertebraTruth,
    body_mask,
    generate_cohort,
    render_patient,
)

POINT_COLUMNS = ["sa_x", "sa_y", "sm_x", "sm_y", "sp_x", "sp_y", "ia_x", "ia_y", "im_x", "im_y", "ip_x", "ip_y"]
MANIFEST_COLUMNS = ["image", "label", "vertebra", "patient_id", "split", "x_min", "y_min", "x_max", "y_max", *POINT_COLUMNS]
LESION_COLUMNS = [
    "kind", "deformed_part",
    "corner_sa_x", "corner_sa_y", "corner_sp_x", "corner_sp_y", "corner_ip_x", "corner_ip_y", "corner_ia_x", "corner_ia_y",
    *POINT_COLUMNS, "body_polygon", "deformed_polygon",
]
ROI_COLUMNS = ["sop_instance_uid", "image", "vertebra", "x_min", "y_min", "x_max", "y_max"]
SMALL = dict(rows=512)  # 512 x 288: fast, vertebrae still ~20-25 px tall


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> CohortSummary:
    return generate_cohort(tmp_path_factory.mktemp("cohort"), patients=4, seed=11, **SMALL)


@pytest.fixture(scope="module")
def fractured(tmp_path_factory: pytest.TempPathFactory) -> CohortSummary:
    """Mostly fractured vertebrae: every fracture kind, and normal ones (seed chosen for that)."""
    return generate_cohort(
        tmp_path_factory.mktemp("fractured"), patients=3, seed=29, compress=False,
        grade_probabilities={"normal": 0.2, "mild": 0.3, "moderate": 0.25, "severe": 0.25}, **SMALL,
    )


@pytest.fixture(scope="module")
def native_twin(tmp_path_factory: pytest.TempPathFactory) -> CohortSummary:
    """Same seed without compression: the same stored pixels in native transfer syntaxes."""
    return generate_cohort(tmp_path_factory.mktemp("native"), patients=4, seed=11, compress=False, **SMALL)


def _read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        return list(reader.fieldnames or []), list(reader)


def _displayed(ds: pydicom.Dataset) -> np.ndarray:
    """Modality LUT, then VOI window, then MONOCHROME1 inversion: what a viewer shows (bone bright)."""
    values = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds).astype(np.float64)
    if ds.PhotometricInterpretation == "MONOCHROME1":
        values = values.max() + values.min() - values
    return values


def _bone_minus_surroundings(image: np.ndarray, vertebrae: tuple[VertebraTruth, ...]) -> np.ndarray:
    """Mean of each body's central part minus the mean of a same-size patch anterior to it."""
    diffs = []
    for v in vertebrae:
        x0, y0, x1, y1 = v.box
        w, h = x1 - x0, y1 - y0
        core = image[y0 + h // 4 : y1 - h // 4, x0 + w // 4 : x1 - w // 4]
        ax0 = max(x0 - w, 0)
        anterior = image[y0 + h // 4 : y1 - h // 4, ax0 : max(x0 - w // 4, ax0 + 1)]
        diffs.append(core.mean() - anterior.mean())
    return np.asarray(diffs)


def _hashes(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


# ----------------------------------------------------------------------------------------------
def test_layout_and_summary_agree_with_tables(cohort: CohortSummary) -> None:
    out = cohort.out_dir
    for name in ("manifest.csv", "rois.csv", "vertebrae.csv", "cohort.json"):
        assert (out / name).is_file(), name
    assert len(list((out / "images").iterdir())) == 4
    summary = json.loads(cohort.cohort_json_path.read_text())
    assert summary == cohort.summary
    assert summary["seed"] == 11 and summary["patients"] == 4 and summary["images"] == 4
    assert summary["generator_version"]
    _, rows = _read_csv(cohort.manifest_path)
    assert summary["vertebrae"] == len(rows) == 4 * len(LABELLED_LEVELS)
    assert summary["class_counts"] == {c: sum(r["label"] == c for r in rows) for c in CLASS_NAMES}
    for split, counts in summary["split_class_counts"].items():
        assert counts == {c: sum(r["label"] == c and r["split"] == split for r in rows) for c in CLASS_NAMES}
    assert sum(summary["split_patients"].values()) == 4


def test_dicom_headers_are_realistic_and_varied(cohort: CohortSummary) -> None:
    seen = Counter()
    uids = set()
    for record in cohort.patients:
        path = cohort.out_dir / record.image
        assert path.read_bytes()[128:132] == b"DICM"
        ds = pydicom.dcmread(path)
        assert ds.SOPClassUID in (ComputedRadiographyImageStorage, DigitalXRayImageStorageForPresentation)
        assert ds.Modality == ("DX" if ds.SOPClassUID == DigitalXRayImageStorageForPresentation else "CR")
        if ds.Modality == "DX":
            assert ds.PresentationIntentType == "FOR PRESENTATION"
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID == record.sop_instance_uid
        assert ds.StudyInstanceUID == record.study_instance_uid and ds.SeriesInstanceUID == record.series_instance_uid
        uids.update([ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID])
        assert ds.PatientID == record.patient_id and str(ds.PatientName).startswith("SYNTH^")
        assert len(ds.PatientBirthDate) == 8 and len(ds.StudyDate) == 8 and ds.StudyTime
        assert ds.BodyPartExamined == "SPINE" and ds.ViewPosition == "LL"
        assert ds.Manufacturer == "spine-dfl synthetic"
        assert ds.BitsAllocated == 16 and 12 <= ds.BitsStored <= 16 and ds.HighBit == ds.BitsStored - 1
        assert ds.PixelRepresentation == 0 and ds.SamplesPerPixel == 1
        assert (ds.Rows, ds.Columns) == (record.rows, record.cols) == (512, 288)
        assert float(ds.RescaleSlope) > 0 and "RescaleIntercept" in ds
        assert len(ds.WindowCenter) == len(ds.WindowWidth) >= 1
        spacing = [float(s) for s in ds.ImagerPixelSpacing]
        assert len(spacing) == 2 and all(0.1 < s < 3.0 for s in spacing)
        if "PixelSpacing" in ds:
            assert all(float(s) > 0 for s in ds.PixelSpacing)
        seen[(ds.Modality, ds.PhotometricInterpretation)] += 1
        seen[ds.file_meta.TransferSyntaxUID] += 1
    assert len(uids) == 3 * len(cohort.patients)
    for combo in [("CR", "MONOCHROME1"), ("CR", "MONOCHROME2"), ("DX", "MONOCHROME1"), ("DX", "MONOCHROME2")]:
        assert seen[combo] == 1, seen
    assert seen[RLELossless] >= 1 and seen[JPEG2000Lossless] >= 1


def test_compressed_files_decode_to_the_native_twins_pixels(cohort: CohortSummary, native_twin: CohortSummary) -> None:
    syntaxes = set()
    for compressed, native in zip(cohort.patients, native_twin.patients):
        a = pydicom.dcmread(cohort.out_dir / compressed.image)
        b = pydicom.dcmread(native_twin.out_dir / native.image)
        syntaxes.add(a.file_meta.TransferSyntaxUID)
        assert not b.file_meta.TransferSyntaxUID.is_compressed
        assert a.PhotometricInterpretation == b.PhotometricInterpretation
        np.testing.assert_array_equal(a.pixel_array, b.pixel_array)
        assert a.pixel_array.max() <= 2**a.BitsStored - 1
    assert {RLELossless, JPEG2000Lossless} <= syntaxes


def test_bone_is_bright_after_the_display_chain(cohort: CohortSummary) -> None:
    photometrics = set()
    for record in cohort.patients:
        ds = pydicom.dcmread(cohort.out_dir / record.image)
        photometrics.add(ds.PhotometricInterpretation)
        diffs = _bone_minus_surroundings(_displayed(ds), record.vertebrae)
        assert np.mean(diffs > 0) >= 0.85, (record.patient_id, ds.PhotometricInterpretation, diffs)
        raw = _bone_minus_surroundings(ds.pixel_array.astype(np.float64), record.vertebrae)
        # MONOCHROME1 stores inverted values: bone is low in the stored numbers
        if ds.PhotometricInterpretation == "MONOCHROME1":
            assert np.median(raw) < 0
        else:
            assert np.median(raw) > 0
    assert photometrics == {"MONOCHROME1", "MONOCHROME2"}


def test_read_image_gives_bone_bright_pixels_and_spacing(cohort: CohortSummary) -> None:
    for record in cohort.patients:
        path = cohort.out_dir / record.image
        radiograph = read_image(path)
        ds = pydicom.dcmread(path)
        assert radiograph.pixels.shape == (record.rows, record.cols)
        assert radiograph.meta.sop_instance_uid == record.sop_instance_uid
        assert radiograph.meta.photometric == ds.PhotometricInterpretation
        diffs = _bone_minus_surroundings(radiograph.pixels.astype(np.float64), record.vertebrae)
        assert np.mean(diffs > 0) >= 0.85, (record.patient_id, diffs)
        expected = ds.PixelSpacing if "PixelSpacing" in ds else ds.ImagerPixelSpacing
        assert radiograph.spacing_mm == pytest.approx(tuple(float(s) for s in expected))


def test_manifest_and_rois_follow_the_contract(cohort: CohortSummary) -> None:
    columns, rows = _read_csv(cohort.manifest_path)
    assert columns == MANIFEST_COLUMNS
    roi_columns, rois = _read_csv(cohort.rois_path)
    assert roi_columns == ROI_COLUMNS
    assert len(rois) == len(rows)
    by_image = {p.image: p for p in cohort.patients}
    split_of: dict[str, set[str]] = {}
    for row, roi in zip(rows, rois):
        record = by_image[row["image"]]
        assert (cohort.out_dir / row["image"]).is_file()
        assert row["label"] in CLASS_NAMES and row["split"] in ("train", "val", "test")
        assert row["patient_id"] == record.patient_id
        split_of.setdefault(row["patient_id"], set()).add(row["split"])
        box = [int(row[k]) for k in ("x_min", "y_min", "x_max", "y_max")]
        assert 0 <= box[0] < box[2] <= record.cols and 0 <= box[1] < box[3] <= record.rows
        truth = next(v for v in record.vertebrae if v.level == row["vertebra"])
        assert tuple(box) == truth.roi and truth.label == row["label"]
        # the localiser box holds the whole body
        bx0, by0, bx1, by1 = truth.box
        assert box[0] <= bx0 and box[1] <= by0 and box[2] >= bx1 and box[3] >= by1
        assert roi["sop_instance_uid"] == record.sop_instance_uid
        assert (roi["image"], roi["vertebra"]) == (row["image"], row["vertebra"])
        assert [int(roi[k]) for k in ("x_min", "y_min", "x_max", "y_max")] == box
    assert all(len(s) == 1 for s in split_of.values())
    for record in cohort.patients:
        assert [r["vertebra"] for r in rows if r["patient_id"] == record.patient_id] == list(LABELLED_LEVELS)
    assert {next(iter(s)) for s in split_of.values()} == {"train", "val", "test"}


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path) -> None:
    kwargs = dict(patients=8, rows=256)
    first = generate_cohort(tmp_path / "a", seed=5, **kwargs)
    generate_cohort(tmp_path / "b", seed=5, **kwargs)
    other = generate_cohort(tmp_path / "c", seed=6, **kwargs)
    hashes_a, hashes_b, hashes_c = _hashes(tmp_path / "a"), _hashes(tmp_path / "b"), _hashes(tmp_path / "c")
    assert hashes_a == hashes_b
    assert len(hashes_a) == 8 + 4
    for name, digest in hashes_a.items():
        if name.startswith("images/"):
            assert hashes_c.get(name) != digest, name
    assert {p.sop_instance_uid for p in first.patients}.isdisjoint(p.sop_instance_uid for p in other.patients)
    # PACS-style files without a suffix are still DICOM files the manifest points at
    bare = [p for p in first.patients if not p.image.endswith(".dcm")]
    assert len(bare) == 1
    assert (tmp_path / "a" / bare[0].image).read_bytes()[128:132] == b"DICM"
    # patient i comes from its own random stream: a smaller cohort repeats its vertebrae
    smaller = generate_cohort(tmp_path / "d", seed=5, patients=3, rows=256)
    for p_small, p_big in zip(smaller.patients, first.patients):
        assert p_small.vertebrae == p_big.vertebrae


def test_label_distribution_and_split_at_thirty_patients(tmp_path: Path) -> None:
    summary = generate_cohort(tmp_path / "c30", patients=30, seed=2, rows=256).summary
    counts = summary["class_counts"]
    total = sum(counts.values())
    assert total == 30 * len(LABELLED_LEVELS)
    assert 0.62 <= counts["normal"] / total <= 0.88, counts
    assert counts["mild"] > counts["severe"] > 0 and counts["moderate"] > 0, counts
    assert summary["split_patients"] == {"train": 18, "val": 6, "test": 6}
    for split in ("val", "test"):
        assert all(n > 0 for n in summary["split_class_counts"][split].values()), summary["split_class_counts"]
    assert set(summary["shape_counts"]["severe"]) == {"wedge", "biconcave", "crush"}


def test_fractures_cluster_in_patients() -> None:
    rng_counts = []
    for index in range(40):
        rendered = render_patient(np.random.default_rng([7, index]), rows=256, cols=144)
        rng_counts.append(sum(v.label != "normal" for v in rendered.vertebrae))
    counts = np.asarray(rng_counts, dtype=np.float64)
    p = counts.mean() / len(LABELLED_LEVELS)
    binomial_variance = len(LABELLED_LEVELS) * p * (1 - p)
    # a per-patient propensity makes fracture counts over-dispersed relative to independent draws
    assert counts.var() > 2.0 * binomial_variance, (counts.var(), binomial_variance)


def _measured_heights(truth: VertebraTruth, mask: np.ndarray, band_mm: float = 2.0) -> list[float]:
    """Body height (mm) at x = -0.8, 0, 0.8 of the depth: mask area in a strip / strip width."""
    ys, xs = np.nonzero(mask)
    angle = math.radians(truth.angle_deg)
    u = ((xs + 0.5 - truth.centre_x) * math.cos(angle) + (ys + 0.5 - truth.centre_y) * math.sin(angle)) * truth.mm_per_px
    heights = []
    for x in (-0.8, 0.0, 0.8):
        u0 = x * truth.body.depth_mm / 2.0
        inside = np.abs(u - u0) < band_mm / 2.0
        heights.append(float(inside.sum()) * truth.mm_per_px**2 / band_mm)
    return heights


def test_grade_geometry_measured_on_the_rendered_mask() -> None:
    rows, cols = 1024, 576
    rendered = render_patient(
        np.random.default_rng(3), rows, cols, grade_probabilities={"normal": 0.3, "mild": 0.2, "moderate": 0.2, "severe": 0.3}
    )
    labels = Counter(v.label for v in rendered.vertebrae)
    assert labels["severe"] >= 1 and labels["normal"] >= 1, labels
    for truth in rendered.vertebrae:
        lo, hi = HEIGHT_LOSS_RANGES[truth.label]
        assert lo <= truth.height_loss <= hi, (truth.level, truth.label, truth.height_loss)
        mask = body_mask(truth, rows, cols)
        measured = _measured_heights(truth, mask)
        declared = [truth.anterior_height_mm, truth.middle_height_mm, truth.posterior_height_mm]
        assert measured == pytest.approx(declared, abs=0.04 * truth.reference_height_mm), truth.level
        loss = 1.0 - min(measured) / truth.reference_height_mm
        if truth.label == "severe":
            assert loss > 0.40 - 0.02, (truth.level, loss)
        elif truth.label == "normal":
            assert loss < 0.15 + 0.02, (truth.level, loss)
        if truth.shape == "wedge":
            assert measured[0] < measured[2]  # anterior lower than posterior
        elif truth.shape == "biconcave":
            assert measured[1] < min(measured[0], measured[2])
        # the mask lies inside the tight box, and the box is tight
        ys, xs = np.nonzero(mask)
        assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == truth.box


def test_bad_arguments_and_existing_output(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="patients"):
        generate_cohort(tmp_path / "x", patients=0, seed=0)
    with pytest.raises(ValueError, match="seed"):
        generate_cohort(tmp_path / "x", patients=1, seed=-1)
    with pytest.raises(ValueError, match="unknown grade"):
        generate_cohort(tmp_path / "x", patients=1, seed=0, grade_probabilities={"fractured": 1.0})
    generate_cohort(tmp_path / "y", patients=1, seed=0, rows=256)
    with pytest.raises(FileExistsError, match="overwrite"):
        generate_cohort(tmp_path / "y", patients=1, seed=0, rows=256)
    again = generate_cohort(tmp_path / "y", patients=1, seed=1, rows=256, overwrite=True)
    assert again.summary["seed"] == 1 and len(list((tmp_path / "y" / "images").iterdir())) == 1


# ----------------------------------------------------------------------------------------------
# Landmarks: six points, corners, body and deformed-part outlines (vertebrae.csv, manifest.csv)
# ----------------------------------------------------------------------------------------------
def _truth_rows(cohort: CohortSummary) -> list[tuple[dict[str, str], VertebraTruth, int, int]]:
    """Each vertebrae.csv row with its VertebraTruth and the image size."""
    _, rows = _read_csv(cohort.vertebrae_path)
    truths = {(p.patient_id, v.level): (v, p.rows, p.cols) for p in cohort.patients for v in p.vertebrae}
    return [(row, *truths[row["patient_id"], row["vertebra"]]) for row in rows]


def _points(row: dict[str, str]) -> dict[str, np.ndarray]:
    return {name: np.array([float(row[f"{name}_x"]), float(row[f"{name}_y"])]) for name in ("sa", "sm", "sp", "ia", "im", "ip")}


def _inside_polygon(polygon: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Pixels (rows, cols) whose centre lies inside the polygon (even-odd ray casting)."""
    ys, xs = np.mgrid[0:rows, 0:cols]
    px, py = xs.ravel() + 0.5, ys.ravel() + 0.5
    inside = np.zeros(px.shape, dtype=bool)
    for (x0, y0), (x1, y1) in zip(polygon, np.roll(polygon, -1, axis=0)):
        if y0 == y1:
            continue
        crosses = (y0 > py) != (y1 > py)
        x_at = x0 + (py - y0) * (x1 - x0) / (y1 - y0)
        inside ^= crosses & (px < x_at)
    return inside.reshape(rows, cols)


def test_vertebrae_and_manifest_carry_lesion_and_landmark_columns(cohort: CohortSummary) -> None:
    columns, rows = _read_csv(cohort.vertebrae_path)
    assert columns[-len(LESION_COLUMNS):] == LESION_COLUMNS
    _, manifest = _read_csv(cohort.manifest_path)
    assert len(manifest) == len(rows)
    for row, line in zip(rows, manifest):
        assert row["kind"] == row["shape"] and row["kind"] in ("wedge", "biconcave", "crush", "none")
        assert (row["kind"] == "none") == (row["label"] == "normal")
        assert (row["deformed_part"], row["deformed_polygon"] == "") == {
            "wedge": ("anterior body", False), "biconcave": ("central endplates", False),
            "crush": ("whole body", False), "none": ("", True),
        }[row["kind"]]
        assert (line["image"], line["vertebra"]) == (row["image"], row["vertebra"])
        assert [line[c] for c in POINT_COLUMNS] == [row[c] for c in POINT_COLUMNS]


def test_six_points_lie_on_the_rendered_body_edge(fractured: CohortSummary) -> None:
    kinds = Counter()
    for row, truth, rows, cols in _truth_rows(fractured):
        kinds[row["kind"]] += 1
        mask = body_mask(truth, rows, cols)
        angle = math.radians(truth.angle_deg)
        up = np.array([math.sin(angle), -math.cos(angle)])  # the body's v axis (towards the head) in the image
        for name, point in _points(row).items():
            inward = -up if name[0] == "s" else up
            for step, expected in ((2.0, True), (-2.0, False)):
                x, y = point + step * inward
                assert mask[int(math.floor(y)), int(math.floor(x))] == expected, (row["patient_id"], row["vertebra"], name, step)
        # the corners too: each is the last body pixel towards its wall and its endplate
        for corner in ("sa", "sp", "ip", "ia"):
            point = np.array([float(row[f"corner_{corner}_x"]), float(row[f"corner_{corner}_y"])])
            x0, y0 = int(math.floor(point[0])), int(math.floor(point[1]))
            window = mask[max(y0 - 2, 0) : y0 + 3, max(x0 - 2, 0) : x0 + 3]
            assert window.any() and not window.all(), (row["vertebra"], corner)
    assert set(kinds) == {"wedge", "biconcave", "crush", "none"}, kinds


def test_height_ratios_from_written_points_match_the_grade(fractured: CohortSummary, cohort: CohortSummary) -> None:
    for summary in (fractured, cohort):
        for row, truth, _, _ in _truth_rows(summary):
            p = _points(row)
            mm = float(row["mm_per_px"])
            ha, hm, hp = (float(np.linalg.norm(p["s" + k] - p["i" + k])) * mm for k in "amp")
            assert ha / hp == pytest.approx(truth.anterior_height_mm / truth.posterior_height_mm, abs=2e-3)
            assert hm / hp == pytest.approx(truth.middle_height_mm / truth.posterior_height_mm, abs=2e-3)
            loss = 1.0 - min(ha, hm, hp) / float(row["reference_height_mm"])
            assert loss == pytest.approx(truth.height_loss, abs=2e-3)
            lo, hi = HEIGHT_LOSS_RANGES[row["label"]]
            assert lo - 2e-3 <= loss <= hi + 2e-3


def test_body_and_deformed_polygons_match_the_rendered_body(fractured: CohortSummary) -> None:
    for row, truth, rows, cols in _truth_rows(fractured):
        mask = body_mask(truth, rows, cols)
        body = _inside_polygon(np.array(json.loads(row["body_polygon"])), rows, cols)
        assert (body ^ mask).sum() <= 0.02 * mask.sum() + 2, (row["vertebra"], (body ^ mask).sum(), mask.sum())
        if row["kind"] == "none":
            continue
        deformed = _inside_polygon(np.array(json.loads(row["deformed_polygon"])), rows, cols)
        assert (deformed & ~mask).sum() <= 2, row["vertebra"]  # a part of the body
        # where in the body it lies: x = 2u / depth, -1 at the anterior wall, +1 posterior
        ys, xs = np.nonzero(deformed)
        angle = math.radians(truth.angle_deg)
        u = ((xs + 0.5 - truth.centre_x) * math.cos(angle) + (ys + 0.5 - truth.centre_y) * math.sin(angle)) * truth.mm_per_px
        x = u / (truth.body.depth_mm / 2.0)
        tolerance = 1.5 * truth.mm_per_px / (truth.body.depth_mm / 2.0)  # a pixel and a half
        share = deformed.sum() / mask.sum()
        if row["kind"] == "wedge":  # the anterior half, where the wedge lost most height
            assert x.max() <= tolerance and 0.35 <= share <= 0.6, (row["vertebra"], x.max(), share)
        elif row["kind"] == "biconcave":  # the central column between the depressed endplates
            assert np.abs(x).max() <= 0.565 + tolerance and 0.4 <= share <= 0.7, (row["vertebra"], share)
            assert x.min() < -0.4 and x.max() > 0.4
        else:  # crush: the whole body
            assert (deformed ^ mask).sum() <= 0.02 * mask.sum() + 2
