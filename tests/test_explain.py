"""spine_dfl.explain: patch boxes and heatmaps land on the right original pixels; outputs are complete.

The key test plants a bright patch in a 16-bit DICOM, near the image border under a non-square
ROI (so the crop needs out-of-image fill AND symmetric padding), makes one filter of the predicted
class respond only at the conv4 location covering the patch, and checks that the box `explain`
writes lands on the patch in ORIGINAL pixels, for a stride-16 (ResNet layer3) and a stride-8
(VGG16-BN conv4_3) backbone. Where the patch sits in the network input is measured from the
transformed images themselves (patch image minus patch-free image), never through `to_original`,
so a wrong `to_original` or box mapping cannot cancel itself out.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from pydicom.uid import DigitalXRayImageStorageForPresentation

from dicom_factory import make_gray_dicom
from spine_dfl.engine.checkpoint import LoadedCheckpoint, atomic_torch_save, checkpoint_payload
from spine_dfl.data.transforms import Preprocessing, eval_transforms
from spine_dfl.cli import main
from spine_dfl.explain import ExplainInputError, explain, explain_inputs, explain_records, render_gallery
from spine_dfl.heatmap import feature_map_to_tensor_space, tensor_map_to_original
from spine_dfl.io import dicom_uid
from spine_dfl.model import DFLNet

CLASSES = ["normal", "mild", "severe"]
ROWS, COLS = 240, 200
PATCH = (174, 38, 179, 43)  # x0, y0, x1, y1 (exclusive) of the planted bright patch, original pixels
PATCH_CENTRE = ((PATCH[0] + PATCH[2]) / 2, (PATCH[1] + PATCH[3]) / 2)  # continuous (176.5, 40.5)
# Non-square ROI in the top-right corner: ROI + margin runs past the top and right edges.
ROI = (140.0, 10.0, 196.0, 110.0)


def write_dicom(path: Path, pixels: np.ndarray) -> str:
    """Minimal uncompressed MONOCHROME2 16-bit DX file; returns its SOPInstanceUID."""
    dataset = make_gray_dicom(path, pixels, sop_class_uid=DigitalXRayImageStorageForPresentation, modality="DX",
                              bits_stored=16, patient_id="TEST")
    return dataset.SOPInstanceUID


def background(rows: int = ROWS, cols: int = COLS) -> np.ndarray:
    """Smooth ramp (no noise, so the patch is the only local bright structure)."""
    yy, xx = np.mgrid[:rows, :cols]
    return (800 + 2 * xx + yy).astype(np.uint16)


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("planted")
    clean = background()
    bright = clean.copy()
    bright[PATCH[1]:PATCH[3], PATCH[0]:PATCH[2]] = 4000
    write_dicom(folder / "patch.dcm", bright)
    write_dicom(folder / "clean.dcm", clean)
    return {"patch": folder / "patch.dcm", "clean": folder / "clean.dcm"}


def force_prediction(model: DFLNet, class_index: int) -> None:
    """Make every branch's classifier prefer `class_index` whatever the features."""
    with torch.no_grad():
        for linear in (model.g_stream.classifier, model.p_classifier):
            linear.weight.zero_()
            linear.bias.zero_()
            linear.bias[class_index] = 10.0


def patch_position_in_tensor(planted: dict[str, Path], pre: Preprocessing) -> tuple[torch.Tensor, float, float]:
    """(network input of the patch image, patch centre x, y in input continuous pixels), measured
    from the difference of the transformed patch and patch-free images."""
    transforms = eval_transforms(pre)
    with_patch = transforms({"image": str(planted["patch"]), "roi": ROI})["image"]
    without = transforms({"image": str(planted["clean"]), "roi": ROI})["image"]
    difference = (with_patch - without)[0].clamp(min=0)
    weights = torch.where(difference > 0.5 * difference.max(), difference, torch.zeros_like(difference))
    size = pre.input_size
    ys, xs = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    return with_patch, float((weights * xs).sum() / weights.sum()), float((weights * ys).sum() / weights.sum())


@pytest.mark.parametrize(("backbone", "input_size"), [("resnet18", 96), ("vgg16_bn", 64)])
def test_planted_patch_box_lands_on_patch_in_original_pixels(
    planted: dict[str, Path], tmp_path: Path, backbone: str, input_size: int
) -> None:
    pre = Preprocessing(input_size=input_size, roi_margin=0.15)
    k, predicted, planted_filter = 3, 2, 1
    model = DFLNet(backbone, num_classes=len(CLASSES), filters_per_class=k).eval()
    force_prediction(model, predicted)
    image, patch_x, patch_y = patch_position_in_tensor(planted, pre)

    # conv4 location whose receptive-field centre is nearest the patch centre (model geometry).
    with torch.no_grad():
        features = model.trunk_features(image[None])[0].double()  # (C, H, W)
    channels, height, width = features.shape
    col = int(np.clip(round((patch_x - model.rf_center_offset) / model.stride), 0, width - 1))
    row = int(np.clip(round((patch_y - model.rf_center_offset) / model.stride), 0, height - 1))
    # Filter = minimum-norm solution of (features at every location) . w = one-hot(target): it
    # responds 1 at the patch's location and 0 everywhere else (C > H*W, so this is exact).
    locations = features.reshape(channels, -1).T  # (H*W, C)
    target = torch.zeros(height * width, dtype=torch.float64)
    target[row * width + col] = 1.0
    weight = torch.linalg.pinv(locations) @ target
    with torch.no_grad():
        model.p_filters.weight.zero_()
        model.p_filters.weight[predicted * k + planted_filter, :, 0, 0] = weight.float()

    loaded = LoadedCheckpoint(model, CLASSES, pre, {}, {})
    record = {"image": str(planted["patch"]), "roi": ROI, "vertebra": "L1", "label": "mild", "sop_instance_uid": ""}
    (entry,) = explain(loaded, [record], tmp_path, top_n=3, device="cpu")

    assert entry["pred"] == "severe"
    best = entry["boxes"][0]
    assert best["rank"] == 1 and best["filter"] == predicted * k + planted_filter
    assert best["score"] == pytest.approx(1.0, abs=1e-3)
    # One stride of the network input, in original pixels (the crop is resized by to_original's scale).
    to_original = eval_transforms(pre)({"image": str(planted["patch"]), "roi": ROI})["to_original"].numpy()
    stride_x = model.stride * abs(to_original[0, 0])
    stride_y = model.stride * abs(to_original[1, 1])
    assert abs(best["peak_x"] - PATCH_CENTRE[0]) <= stride_x
    assert abs(best["peak_y"] - PATCH_CENTRE[1]) <= stride_y
    assert best["x_min"] <= PATCH_CENTRE[0] <= best["x_max"]
    assert best["y_min"] <= PATCH_CENTRE[1] <= best["y_max"]
    # Receptive field scaled like the image, then clipped: width never exceeds the scaled field.
    assert best["x_max"] - best["x_min"] <= model.receptive_field * abs(to_original[0, 0]) + 1e-6
    assert 0 <= best["x_min"] < best["x_max"] <= COLS and 0 <= best["y_min"] < best["y_max"] <= ROWS

    # The P-stream evidence map, mapped back the same way as the PNG's, peaks on the patch too.
    with torch.no_grad():
        maps = model(image[None], return_maps=True).response_maps[:, predicted * k:(predicted + 1) * k]
    tensor_map = feature_map_to_tensor_space(maps.max(dim=1, keepdim=True).values, input_size,
                                             model.stride, model.rf_center_offset)[0]
    region = tuple(entry["region"])
    evidence = tensor_map_to_original(tensor_map, to_original, region)[0]
    peak_row, peak_col = np.unravel_index(np.nanargmax(evidence), evidence.shape)
    assert abs(region[0] + peak_col + 0.5 - PATCH_CENTRE[0]) <= stride_x
    assert abs(region[1] + peak_row + 0.5 - PATCH_CENTRE[1]) <= stride_y
    assert (tmp_path / entry["png"]).is_file()


def test_boxes_come_from_the_predicted_class_only(planted: dict[str, Path], tmp_path: Path) -> None:
    k, predicted = 3, 2
    model = DFLNet("resnet18", num_classes=len(CLASSES), filters_per_class=k).eval()
    force_prediction(model, predicted)
    with torch.no_grad():
        model.p_filters.weight[:k] *= 100.0  # class 0's filters respond far more strongly
    pre = Preprocessing(input_size=64)
    record = {"image": str(planted["patch"]), "roi": ROI, "vertebra": "L2", "label": None}
    (entry,) = explain(LoadedCheckpoint(model, CLASSES, pre, {}, {}), [record], tmp_path, top_n=5, device="cpu")

    with torch.no_grad():
        image = eval_transforms(pre)({"image": str(planted["patch"]), "roi": ROI})["image"]
        out = model(image[None])
    expected_scores = sorted(out.peak_score[0, predicted * k:(predicted + 1) * k].tolist(), reverse=True)
    assert entry["pred"] == "severe"
    # top_n 5 > k: every filter of the class, no other class's, each shown or merged into the
    # stronger patch at its place (duplicates suppressed).
    assert {b["class"] for b in entry["boxes"]} == {"severe"}
    shown = [b["filter"] for b in entry["boxes"]]
    merged = [f for b in entry["boxes"] for f in b["same_place_filters"]]
    assert sorted(shown + merged) == list(range(predicted * k, (predicted + 1) * k))
    assert [b["rank"] for b in entry["boxes"]] == list(range(1, len(shown) + 1))
    scores = [b["score"] for b in entry["boxes"]]
    assert scores == sorted(scores, reverse=True) and scores[0] == pytest.approx(expected_scores[0], rel=1e-4)
    assert all(any(s == pytest.approx(e, rel=1e-4) for e in expected_scores) for s in scores)
    assert max(out.peak_score[0, :k].tolist()) > max(expected_scores)  # class 0 would have won if used


def test_whole_image_model_without_roi_clips_boxes(tmp_path: Path) -> None:
    rows, cols = 150, 90  # non-square: the resize pads left and right
    image_path = tmp_path / "whole.dcm"
    uid = write_dicom(image_path, background(rows, cols))
    model = DFLNet("resnet18", num_classes=2, filters_per_class=2).eval()
    pre = Preprocessing(input_size=64, use_roi=False)
    record = {"image": str(image_path), "roi": None, "vertebra": "", "label": None}
    (entry,) = explain(LoadedCheckpoint(model, ["a", "b"], pre, {}, {}), [record], tmp_path / "out", top_n=2,
                       device="cpu")
    assert entry["region"] == [0, 0, cols, rows]
    assert entry["roi"] is None and entry["sop_instance_uid"] == uid
    assert 1 <= len(entry["boxes"]) <= 2
    for box in entry["boxes"]:
        # Boxes near the border (or larger than the image) are clipped to it.
        assert 0.0 <= box["x_min"] <= box["x_max"] <= cols
        assert 0.0 <= box["y_min"] <= box["y_max"] <= rows
    assert (tmp_path / "out" / entry["png"]).is_file()


def _entry(name: str, vertebra: str, pred: str, confidence: float, label: str | None) -> dict:
    probs = {c: (confidence if c == pred else (1 - confidence) / 2) for c in CLASSES}
    return {"image": f"/data/{name}.dcm", "vertebra": vertebra, "sop_instance_uid": "1.2.3", "label": label,
            "pred": pred, "correct": None if label is None else label == pred, "confidence": confidence,
            "probs": probs, "png": f"{name}_{vertebra}.png", "boxes": []}


def test_gallery_is_self_contained_sorted_and_filterable() -> None:
    entries = [_entry("a", "L1", "mild", 0.55, "mild"), _entry("b", "T12", "severe", 0.91, "normal"),
               _entry("c<x>", "L2", "normal", 0.70, "normal")]
    page = render_gallery(entries, CLASSES)
    assert "http:" not in page and "https:" not in page and "url(" not in page and "@import" not in page
    assert "<link" not in page and "<script src" not in page
    assert sorted(re.findall(r'(?:src|href)="([^"]*)"', page)) == ["a_L1.png", "b_T12.png", "c%3Cx%3E_L2.png"]
    order = [page.index(f'src="{n}') for n in ("b_T12", "c%3Cx%3E_L2", "a_L1")]
    assert order == sorted(order)  # most confident first
    for option in ('value="L1"', 'value="T12"', 'value="severe"', 'id="f-correct"', 'value="wrong"'):
        assert option in page
    assert 'data-correct="wrong"' in page and "c&lt;x&gt;.dcm" in page  # escaped names
    assert page.index('value="T12"') < page.index('value="L1"')  # levels in anatomical order
    unlabelled = render_gallery([_entry("a", "L1", "mild", 0.5, None)], CLASSES)
    assert 'id="f-correct"' not in unlabelled


@pytest.fixture(scope="module")
def roi_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint file of a model trained on vertebra ROIs (64 px input)."""
    torch.manual_seed(0)
    model = DFLNet("resnet18", num_classes=len(CLASSES), filters_per_class=2)
    checkpoint = tmp_path_factory.mktemp("checkpoint") / "model.pt"
    payload = checkpoint_payload(model, {}, CLASSES, Preprocessing(input_size=64), {})
    # checkpoint.py stores torch.__version__ (a TorchVersion, refused by weights_only loading) as is;
    # stored as a plain str here until that is fixed there, so this test exercises explain, not that.
    payload["torch_version"] = str(payload["torch_version"])
    atomic_torch_save(payload, checkpoint)
    return checkpoint


def write_manifest(path: Path, planted: dict[str, Path], rois: list[list[float | None]]) -> Path:
    """A manifest of len(rois) rows (L1, L2, T12 ...) on the planted images; None cells are empty."""
    n = len(rois)
    columns = list(zip(*rois))
    pd.DataFrame({
        "image": [str(planted["patch"]), str(planted["patch"]), str(planted["clean"])][:n],
        "label": ["mild", "normal", "severe"][:n],
        "vertebra": ["L1", "L2", "T12"][:n],
        "patient_id": ["p1", "p1", "p2"][:n],
        "split": ["test", "test", "train"][:n],
        "x_min": columns[0], "y_min": columns[1], "x_max": columns[2], "y_max": columns[3],
    }).to_csv(path, index=False)
    return path


def test_cli_end_to_end_manifest_and_dicom_with_rois(planted: dict[str, Path], roi_checkpoint: Path,
                                                     tmp_path: Path) -> None:
    checkpoint = roi_checkpoint
    manifest = write_manifest(tmp_path / "manifest.csv", planted,
                              [[140, 10, 196, 110], [20, 120, 90, 200], [60, 40, 130, 100]])
    out = tmp_path / "from_manifest"
    assert main(["explain", str(checkpoint), str(manifest), "--out", str(out), "--split", "test", "--top", "2",
                 "--device", "cpu"]) == 0
    entries = json.loads((out / "patches.json").read_text())
    assert [e["vertebra"] for e in entries] == ["L1", "L2"]
    for entry in entries:
        assert set(entry) >= {"image", "vertebra", "sop_instance_uid", "pred", "probs", "boxes"}
        assert sum(entry["probs"].values()) == pytest.approx(1.0, abs=1e-4)
        assert entry["label"] in CLASSES and entry["correct"] == (entry["label"] == entry["pred"])
        assert 1 <= len(entry["boxes"]) <= 2 and entry["sop_instance_uid"]  # filters at one place merge
        assert set(entry["boxes"][0]) >= {"x_min", "y_min", "x_max", "y_max", "peak_x", "peak_y", "filter", "class",
                                          "score", "rank", "same_place_filters"}
        assert len(entry["gradcam_peak"]) == 2 and entry["patch_side"] > 0
        assert (out / entry["png"]).stat().st_size > 10_000
    page = (out / "index.html").read_text()
    assert all(f'src="{e["png"]}"' in page for e in entries) and "https:" not in page
    assert not list(out.glob(".*tmp"))  # temporary files renamed into place
    if shutil.which("chromium") is not None:
        assert_gallery_renders(out / "index.html", entries, tmp_path / "chromium")

    rois = tmp_path / "rois.csv"
    uid = entries[0]["sop_instance_uid"]
    pd.DataFrame({"sop_instance_uid": [uid], "vertebra": ["L3"], "x_min": [140], "y_min": [10], "x_max": [196],
                  "y_max": [110]}).to_csv(rois, index=False)
    out_dicom = tmp_path / "from_dicom"
    assert main(["explain", str(checkpoint), str(planted["patch"].parent), "--rois", str(rois),
                 "--out", str(out_dicom), "--device", "cpu"]) == 0
    (entry,) = json.loads((out_dicom / "patches.json").read_text())
    assert entry["vertebra"] == "L3" and entry["sop_instance_uid"] == uid and entry["label"] is None
    # Without ROIs an ROI model is a usage error, not a crash.
    assert main(["explain", str(checkpoint), str(planted["patch"]), "--out", str(tmp_path / "x")]) == 2


def test_roi_model_never_explains_empty_roi_cells_as_the_whole_image(
    planted: dict[str, Path], roi_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An empty ROI cell fails its row with the reason (score's rule), never a whole-image crop."""
    manifest = write_manifest(tmp_path / "manifest.csv", planted, [[140, 10, 196, 110], [None] * 4])
    run = explain_records(roi_checkpoint, manifest, tmp_path / "manifest_out", device="cpu")
    assert [e["vertebra"] for e in run.entries] == ["L1"]
    (failure,) = run.failures
    assert failure["vertebra"] == "L2" and failure["reason"].startswith("row 2: no ROI (empty ROI cells)")
    assert "could not be explained" in run.index_html.read_text() and "row 2: no ROI" in run.index_html.read_text()
    assert main(["explain", str(roi_checkpoint), str(manifest), "--out", str(tmp_path / "cli_out"),
                 "--device", "cpu"]) == 3  # finished, some samples failed

    # The same row in a ROI table: the one ROI reader rejects the table, naming the row.
    uid = dicom_uid(planted["patch"])
    rois = tmp_path / "rois.csv"
    rois.write_text(f"sop_instance_uid,vertebra,x_min,y_min,x_max,y_max\n{uid},L1,140,10,196,110\n{uid},L2,,,,\n")
    with pytest.raises(ExplainInputError, match=r"row 2 \(line 3\): no ROI"):
        explain_inputs(roi_checkpoint, [planted["patch"]], rois, tmp_path / "rois_out", device="cpu")
    capsys.readouterr()
    assert main(["explain", str(roi_checkpoint), str(planted["patch"]), "--rois", str(rois),
                 "--out", str(tmp_path / "rois_cli"), "--device", "cpu"]) == 2
    assert "row 2 (line 3)" in capsys.readouterr().err
    assert not (tmp_path / "rois_out" / "patches.json").exists()


# Appended to a copy of the gallery, after its own script: what Chromium laid out once the page's
# script ran, and what the page's own filter control does.
_MEASURE_GALLERY = """<script>
window.addEventListener("load", () => {
  const box = e => { const r = e.getBoundingClientRect(); return {w: r.width, h: r.height}; };
  const cards = [...document.querySelectorAll(".card")];
  const out = {cards: cards.map(c => ({...box(c), pred: c.dataset.pred})),
               images: [...document.images].map(i => ({...box(i), natural: i.naturalWidth * i.naturalHeight})),
               count: document.getElementById("count").textContent};
  const select = document.getElementById("f-pred");
  select.value = cards[0].dataset.pred;
  select.dispatchEvent(new Event("change"));
  out.filtered = {count: document.getElementById("count").textContent,
                  shown: cards.filter(c => c.getBoundingClientRect().height > 0).length};
  const pre = document.createElement("pre"); pre.id = "rendered-layout";
  pre.textContent = JSON.stringify(out); document.body.appendChild(pre);
});
</script>"""


def gallery_layout(page: Path, workdir: Path) -> dict:
    """Headless Chromium's layout of a copy of `page` (next to it, so its relative PNG links resolve)."""
    workdir.mkdir(parents=True, exist_ok=True)
    copy = page.with_name("measured_" + page.name)
    copy.write_text(page.read_text(encoding="utf-8").replace("</body>", _MEASURE_GALLERY + "</body>"),
                    encoding="utf-8")
    # A tall window: the gallery's images load lazily, only near the viewport.
    command = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={workdir / 'profile'}", "--run-all-compositor-stages-before-draw",
               "--virtual-time-budget=5000", "--window-size=1280,8000", "--dump-dom", copy.resolve().as_uri()]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    copy.unlink()
    assert done.returncode == 0, done.stderr[-2000:]
    found = re.search(r'<pre id="rendered-layout">(.*?)</pre>', done.stdout, flags=re.DOTALL)
    assert found, "the measuring script did not run (a script error on the page?): " + done.stdout[-1000:]
    return json.loads(html.unescape(found.group(1)))


def assert_gallery_renders(page: Path, entries: list[dict], workdir: Path) -> None:
    """Every card and figure is laid out with a non-zero size and every PNG decoded; the page's
    script counted the cards, and its filter shows exactly the cards of the chosen class."""
    layout = gallery_layout(page, workdir)
    assert len(layout["cards"]) == len(entries) and len(layout["images"]) == len(entries)
    for part in layout["cards"] + layout["images"]:
        assert part["w"] > 0 and part["h"] > 0, part
    assert all(image["natural"] > 0 for image in layout["images"]), layout["images"]
    assert layout["count"] == f"{len(entries)} of {len(entries)} shown"
    chosen = sum(card["pred"] == layout["cards"][0]["pred"] for card in layout["cards"])
    assert layout["filtered"] == {"count": f"{chosen} of {len(entries)} shown", "shown": chosen}


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not installed (Debian: apt-get install chromium)")
def test_gallery_check_fails_for_a_figure_that_does_not_load(tmp_path: Path) -> None:
    """Positive control of assert_gallery_renders: a card whose PNG is missing must fail it."""
    entries = [_entry("missing", "L1", "mild", 0.8, None)]
    (tmp_path / "index.html").write_text(render_gallery(entries, CLASSES), encoding="utf-8")
    with pytest.raises(AssertionError):
        assert_gallery_renders(tmp_path / "index.html", entries, tmp_path / "chromium")


def test_streams_samples_instead_of_collecting_them(planted: dict[str, Path], tmp_path: Path) -> None:
    """Records are pulled lazily: when record n is pulled, every record of the batches before its own
    is already written (fewer than one batch of pulled records waits unwritten)."""
    model = DFLNet("resnet18", num_classes=2, filters_per_class=1).eval()
    pre = Preprocessing(input_size=48)
    batch_size, total = 2, 7
    out = tmp_path / "out"
    pulled_unwritten = []

    def records():
        for n in range(total):
            written = len(list(out.glob("*.png"))) if out.exists() else 0
            pulled_unwritten.append(n - written)  # records 0 .. n-1 pulled so far
            assert n - written < batch_size, (n, written)
            yield {"image": str(planted["patch"]), "roi": ROI, "vertebra": f"L{n % 5 + 1}", "label": None}

    entries = explain(LoadedCheckpoint(model, ["a", "b"], pre, {}, {}), records(), out, top_n=1, device="cpu",
                      batch_size=batch_size)
    assert len(entries) == total and len(list(out.glob("*.png"))) == total
    # The bound is reached (a batch fills before it is written), so it could fail: collecting every
    # record first would leave n - written = n >= batch_size from record batch_size on.
    assert max(pulled_unwritten) == batch_size - 1
