"""Tests of the per-vertebra evaluation report: every metric recomputed independently with
scikit-learn, patient bootstrap against a slow reference loop, ordering, validation, and the HTML
(self-contained; rendered in headless Chromium when it is installed)."""

from __future__ import annotations

import base64
import html
import io
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import (
    accuracy_score, balanced_accuracy_score, cohen_kappa_score, f1_score, recall_score, roc_auc_score,
)

from spine_dfl.metrics import ReportError, compute_metrics, load_predictions, per_vertebra_table
from spine_dfl.report import write_report
from spine_dfl.report.figures import thumbnail

# The scikit-learn reference calls warn on the degenerate subsets built on purpose (absent classes).
pytestmark = [
    pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true"),
    pytest.mark.filterwarnings("ignore:A single label was found"),
    pytest.mark.filterwarnings("ignore::sklearn.exceptions.UndefinedMetricWarning"),
]

CLASSES = ["normal", "mild", "moderate", "severe"]
K = len(CLASSES)
TOL = 1e-6
# Per level: the classes that can occur there (absent classes at some levels on purpose).
LEVEL_CLASSES = {"T11": [0, 1], "T12": [0, 1, 2, 3], "L1": [0, 1, 2, 3], "l2": [0, 2, 3], "L3": [1, 2, 3],
                 "Th-x": [0, 1, 2]}


def _probs(rng: np.random.Generator, labels: np.ndarray, signal: float) -> np.ndarray:
    """(n, K) softmax of noisy logits favouring the label; all but the last class truncated to 3
    decimals (so AUC ties occur, as in a rounded CSV) and the last class takes the rest (rows sum to 1)."""
    logits = rng.normal(size=(len(labels), K))
    logits[np.arange(len(labels)), labels] += signal
    probs = np.exp(logits)
    probs /= probs.sum(axis=1, keepdims=True)
    probs[:, :-1] = np.floor(probs[:, :-1] * 1000) / 1000
    probs[:, -1] = 1.0 - probs[:, :-1].sum(axis=1)
    return probs


def make_predictions(seed: int = 0, n_patients: int = 14) -> pd.DataFrame:
    """Synthetic predictions.csv table: patients with several levels each, an unparseable level
    ('Th-x'), a lower-case level ('l2'), a level with one sample ('S1'), two images without patient id."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients + 2):
        patient = f"P{p:03d}" if p < n_patients else ""
        image = f"/nonexistent/{patient or 'anon'}_{p}.dcm"
        for level, allowed in LEVEL_CLASSES.items():
            if rng.random() < 0.2:
                continue
            rows.append({"image": image, "vertebra": level, "patient_id": patient, "label_idx": int(rng.choice(allowed))})
        if p == 3:
            rows.append({"image": image, "vertebra": "S1", "patient_id": patient, "label_idx": 2})
    table = pd.DataFrame(rows)
    labels = table.pop("label_idx").to_numpy()
    table["label"] = [CLASSES[i] for i in labels]
    fused = _probs(rng, labels, 1.6)
    table["pred"] = [CLASSES[i] for i in fused.argmax(axis=1)]
    for c, name in enumerate(CLASSES):
        table[f"prob_{name}"] = fused[:, c]
    for branch, signal in (("g", 1.2), ("p", 0.8), ("side", 0.4)):
        probs = _probs(rng, labels, signal)
        table[f"pred_{branch}"] = [CLASSES[i] for i in probs.argmax(axis=1)]
        for c, name in enumerate(CLASSES):
            table[f"{branch}_prob_{name}"] = probs[:, c]
    table["x_min"], table["y_min"] = 10.0, 20.0
    table["x_max"], table["y_max"] = 40.0, 44.0
    return table


# ----------------------------------------------------------------- independent reference implementation
def ref_ece(y: np.ndarray, probs: np.ndarray) -> float:
    total = 0.0
    for b in range(10):
        members = [i for i in range(len(y)) if min(int(np.floor(10 * probs[i].max())), 9) == b]
        if members:
            conf = np.mean([probs[i].max() for i in members])
            acc = np.mean([int(np.argmax(probs[i])) == y[i] for i in members])
            total += len(members) / len(y) * abs(acc - conf)
    return total


def ref_block(y: np.ndarray, pred: np.ndarray, probs: np.ndarray) -> dict:
    """Every figure of one metrics block, from scikit-learn."""
    present = np.unique(y)
    macro_auc = None
    if len(present) >= 2:
        macro_auc = float(np.mean([roc_auc_score(y == c, probs[:, c]) for c in present]))
        if len(present) == K:  # then it is sklearn's own multi-class OvR macro AUC
            assert macro_auc == pytest.approx(roc_auc_score(y, probs, multi_class="ovr", average="macro",
                                                            labels=list(range(K))), abs=1e-9)
    abn_true, abn_pred = y > 0, pred > 0
    kappa = cohen_kappa_score(y, pred, labels=list(range(K)), weights="quadratic")
    return {
        "n": len(y),
        "support": {name: int((y == c).sum()) for c, name in enumerate(CLASSES)},
        "accuracy": accuracy_score(y, pred),
        "balanced_accuracy": balanced_accuracy_score(y, pred),
        "macro_f1": f1_score(y, pred, average="macro", zero_division=0),
        "macro_auc": macro_auc,
        "quadratic_kappa": None if np.isnan(kappa) else kappa,
        "sensitivity": recall_score(abn_true, abn_pred, pos_label=True) if abn_true.any() else None,
        "specificity": recall_score(abn_true, abn_pred, pos_label=False) if (~abn_true).any() else None,
        "binary_auc": roc_auc_score(abn_true, 1 - probs[:, 0]) if 0 < abn_true.sum() < len(y) else None,
        "ece": ref_ece(y, probs),
    }


def assert_block_matches(block: dict, ref: dict, where: str) -> None:
    assert block["n"] == ref["n"], where
    assert block["support"] == ref["support"], where
    got = {**{k: block[k] for k in ("accuracy", "balanced_accuracy", "macro_f1", "macro_auc", "quadratic_kappa", "ece")},
           "sensitivity": block["binary"]["sensitivity"], "specificity": block["binary"]["specificity"],
           "binary_auc": block["binary"]["auc"]}
    for key, value in got.items():
        expected = ref[key]
        if expected is None:
            assert value is None, f"{where}: {key} should be null, got {value}"
        else:
            assert value is not None and abs(value - expected) <= TOL, f"{where}: {key} {value} != {expected}"


def indices(table: pd.DataFrame, column: str) -> np.ndarray:
    return table[column].map({name: i for i, name in enumerate(CLASSES)}).to_numpy()


def patient_keys(table: pd.DataFrame) -> np.ndarray:
    return np.array([p if p else f"image:{img}" for p, img in zip(table["patient_id"], table["image"])])


def ref_patients(table: pd.DataFrame, prefix: str = "prob_") -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Worst grade per patient, and P(grade >= c) = max over vertebrae, as plain loops."""
    keys = patient_keys(table)
    y, pred = indices(table, "label"), indices(table, "pred")
    probs = table[[f"{prefix}{c}" for c in CLASSES]].to_numpy()
    names = sorted(set(keys))
    ys, preds, dists = [], [], []
    for name in names:
        rows = np.flatnonzero(keys == name)
        ys.append(y[rows].max())
        preds.append(pred[rows].max())
        tail = [1.0] + [max(probs[r, c:].sum() for r in rows) for c in range(1, K)] + [0.0]
        dists.append([tail[c] - tail[c + 1] for c in range(K)])
    return np.array(ys), np.array(preds), np.array(dists), names


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    return make_predictions()


@pytest.fixture(scope="module")
def metrics(table: pd.DataFrame) -> dict:
    return compute_metrics(table, n_bootstrap=200, seed=0)


# ----------------------------------------------------------------- metrics vs scikit-learn
def test_shape_of_metrics(metrics: dict) -> None:
    assert set(metrics) == {"classes", "overall", "per_vertebra", "per_patient", "branches", "bootstrap"}
    assert metrics["classes"] == CLASSES
    assert set(metrics["branches"]) == {"g", "p", "side", "fused"}
    assert metrics["bootstrap"]["n_resamples"] == 200 and metrics["bootstrap"]["seed"] == 0
    assert metrics["bootstrap"]["unit"] == "patient"
    for key in ("accuracy", "balanced_accuracy", "macro_auc", "sensitivity", "specificity"):
        assert set(metrics["overall"]["ci95"][key]) == {"low", "high", "n_valid"}
    json.dumps(metrics, allow_nan=False)  # strict JSON: undefined values are null, never NaN


def test_overall_and_fused_match_sklearn(table: pd.DataFrame, metrics: dict) -> None:
    probs = table[[f"prob_{c}" for c in CLASSES]].to_numpy()
    ref = ref_block(indices(table, "label"), indices(table, "pred"), probs)
    assert_block_matches(metrics["overall"], ref, "overall")
    assert_block_matches(metrics["branches"]["fused"], ref, "fused")


@pytest.mark.parametrize("branch", ["g", "p", "side"])
def test_branches_match_sklearn(table: pd.DataFrame, metrics: dict, branch: str) -> None:
    probs = table[[f"{branch}_prob_{c}" for c in CLASSES]].to_numpy()
    ref = ref_block(indices(table, "label"), indices(table, f"pred_{branch}"), probs)
    assert_block_matches(metrics["branches"][branch], ref, branch)


def test_per_vertebra_match_sklearn(table: pd.DataFrame, metrics: dict) -> None:
    level = table["vertebra"].replace({"l2": "L2"})
    assert list(metrics["per_vertebra"]) == ["T11", "T12", "L1", "L2", "L3", "S1", "Th-x"]
    probs = table[[f"prob_{c}" for c in CLASSES]].to_numpy()
    y, pred = indices(table, "label"), indices(table, "pred")
    for name, block in metrics["per_vertebra"].items():
        rows = (level == name).to_numpy()
        assert_block_matches(block, ref_block(y[rows], pred[rows], probs[rows]), name)
        assert block["n_patients"] == len(set(patient_keys(table)[rows]))
    # absent classes at a level give the documented nulls / restricted averages
    assert metrics["per_vertebra"]["L3"]["binary"]["specificity"] is None  # no normal at L3
    assert metrics["per_vertebra"]["S1"]["macro_auc"] is None  # one class present


def test_per_patient_match_sklearn(table: pd.DataFrame, metrics: dict) -> None:
    y, pred, probs, names = ref_patients(table)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-12)
    block = metrics["per_patient"]
    assert_block_matches(block, ref_block(y, pred, probs), "per patient")
    assert block["n"] == block["n_patients"] == len(names) == 16  # 14 ids + 2 images without an id


def test_single_sample_level_flagged_and_unknown_after(metrics: dict) -> None:
    s1 = metrics["per_vertebra"]["S1"]
    assert s1["n"] == 1 and s1["small_sample"] is True
    assert metrics["overall"]["small_sample"] is False
    frame = per_vertebra_table(metrics)
    assert frame["level"].tolist() == ["T11", "T12", "L1", "L2", "L3", "S1", "Th-x", "all"]
    assert frame.set_index("level").loc["S1", "small_sample"]
    assert frame.set_index("level").loc["all", "n"] == metrics["overall"]["n"]
    assert frame.set_index("level").loc["T12", "accuracy"] == metrics["per_vertebra"]["T12"]["accuracy"]


def test_anatomical_order_of_table() -> None:
    rng = np.random.default_rng(3)
    levels = ["S1", "L5", "zz", "C1", "T10", "T2", "C7", "L1", "aa"]
    n = 4 * len(levels)
    labels = rng.integers(0, K, n)
    table = pd.DataFrame({"image": [f"i{i}" for i in range(n)], "vertebra": levels * 4,
                          "patient_id": [f"p{i % 5}" for i in range(n)],
                          "label": [CLASSES[i] for i in labels], "pred": [CLASSES[i] for i in labels]})
    for c, name in enumerate(CLASSES):
        table[f"prob_{name}"] = (labels == c).astype(float)
    frame = per_vertebra_table(compute_metrics(table, n_bootstrap=0))
    assert frame["level"].tolist() == ["C1", "C7", "T2", "T10", "L1", "L5", "S1", "aa", "zz", "all"]


# ----------------------------------------------------------------- bootstrap
def slow_bootstrap(y, pred, probs, keys, n_bootstrap: int, seed: int) -> dict[str, list[float]]:
    """Reference: the documented resampling, one sklearn call per resample."""
    names = sorted(set(keys))
    draws = np.random.default_rng(seed).integers(0, len(names), size=(n_bootstrap, len(names)))
    values: dict[str, list[float]] = {k: [] for k in ("accuracy", "balanced_accuracy", "macro_auc", "sensitivity", "specificity")}
    for draw in draws:
        rows = np.concatenate([np.flatnonzero(keys == names[d]) for d in draw])
        ref = ref_block(y[rows], pred[rows], probs[rows])
        for key in values:
            if ref[key] is not None:
                values[key].append(ref[key])
    return values


def assert_ci_matches(block: dict, slow: dict[str, list[float]], where: str) -> None:
    for key, values in slow.items():
        ci = block["ci95"][key]
        assert ci["n_valid"] == len(values), f"{where} {key}"
        if values:
            low, high = np.percentile(values, [2.5, 97.5])
            assert abs(ci["low"] - low) <= TOL and abs(ci["high"] - high) <= TOL, f"{where} {key}"
        else:
            assert ci["low"] is None and ci["high"] is None


def test_bootstrap_matches_slow_reference(table: pd.DataFrame) -> None:
    m = compute_metrics(table, n_bootstrap=30, seed=7)
    probs = table[[f"prob_{c}" for c in CLASSES]].to_numpy()
    y, pred, keys = indices(table, "label"), indices(table, "pred"), patient_keys(table)
    assert_ci_matches(m["overall"], slow_bootstrap(y, pred, probs, keys, 30, 7), "overall")
    level = table["vertebra"].to_numpy()
    for name in ("T11", "S1"):  # T11: no moderate/severe; S1: one row (sensitivity only)
        rows = level == name
        assert_ci_matches(m["per_vertebra"][name], slow_bootstrap(y[rows], pred[rows], probs[rows], keys[rows], 30, 7), name)
    py, ppred, pprobs, names = ref_patients(table)
    assert_ci_matches(m["per_patient"], slow_bootstrap(py, ppred, pprobs, np.array(names), 30, 7), "patient")


def test_bootstrap_reproducible_and_seed_dependent(table: pd.DataFrame, metrics: dict) -> None:
    again = compute_metrics(table, n_bootstrap=200, seed=0)
    assert again == metrics
    other = compute_metrics(table, n_bootstrap=200, seed=1)
    assert other["overall"]["ci95"] != metrics["overall"]["ci95"]
    assert other["overall"]["accuracy"] == metrics["overall"]["accuracy"]
    for key in ("accuracy", "balanced_accuracy", "macro_auc"):
        ci, value = metrics["overall"]["ci95"][key], metrics["overall"][key]
        assert ci["n_valid"] == 200 and ci["low"] < value < ci["high"]
    ci = metrics["per_vertebra"]["S1"]["ci95"]
    assert ci["specificity"]["n_valid"] == 0 and ci["specificity"]["low"] is None


# ----------------------------------------------------------------- loading and validation
def test_load_predictions_roundtrip(tmp_path: Path, table: pd.DataFrame, metrics: dict) -> None:
    path = tmp_path / "predictions.csv"
    table.to_csv(path, index=False)
    loaded, classes = load_predictions(path)
    assert classes == CLASSES
    assert compute_metrics(loaded, classes, n_bootstrap=200, seed=0) == metrics


def test_text_columns_stay_text(tmp_path: Path) -> None:
    # class names that pandas would turn into numbers or NaN, and zero-padded patient ids
    path = tmp_path / "predictions.csv"
    path.write_text("image,vertebra,patient_id,label,pred,prob_NA,prob_1\n"
                    "a.dcm,L1,007,NA,1,0.4,0.6\nb.dcm,L2,007,1,1,0.2,0.8\nc.dcm,L1,08,1,NA,0.7,0.3\n")
    loaded, classes = load_predictions(path)
    assert classes == ["NA", "1"]
    m = compute_metrics(loaded, classes, n_bootstrap=10)
    assert m["overall"]["support"] == {"NA": 1, "1": 2}
    assert m["per_patient"]["n"] == 2


def test_rows_without_patient_are_one_patient_per_image() -> None:
    table = pd.DataFrame({"image": ["a", "a", "b"], "vertebra": ["L1", "L2", "L1"], "patient_id": ["", None, ""],
                          "label": ["x", "y", "x"], "pred": ["x", "x", "y"], "prob_x": [0.6, 0.7, 0.2],
                          "prob_y": [0.4, 0.3, 0.8]})
    m = compute_metrics(table, n_bootstrap=5)
    assert m["overall"]["n_patients"] == 2
    assert m["per_patient"]["support"] == {"x": 1, "y": 1}  # image a's worst grade is y


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda t: t.drop(columns=["label"]), "label"),
        (lambda t: t.iloc[0:0], "empty"),
        (lambda t: t.assign(label=["grave"] + list(t["label"][1:])), "grave"),
        (lambda t: t.assign(pred=[""] + list(t["pred"][1:])), "pred"),
        (lambda t: t.drop(columns=["g_prob_mild"]), "g_prob_mild"),
        (lambda t: t.assign(prob_normal=t["prob_normal"] + 0.5), "sum to 1"),
        (lambda t: t.drop(columns=[f"prob_{c}" for c in CLASSES]), "prob_"),
    ],
)
def test_invalid_tables_raise_report_error(table: pd.DataFrame, mutate, message: str) -> None:
    with pytest.raises(ReportError, match=re.escape(message)):
        compute_metrics(mutate(table.copy()), n_bootstrap=0)


def test_classes_must_agree(table: pd.DataFrame, tmp_path: Path) -> None:
    with pytest.raises(ReportError, match="disagree"):
        compute_metrics(table, classes=["normal", "mild", "severe"], n_bootstrap=0)
    reordered = compute_metrics(table, classes=list(reversed(CLASSES)), n_bootstrap=0)
    assert reordered["classes"] == list(reversed(CLASSES))
    assert reordered["overall"]["accuracy"] == pytest.approx(compute_metrics(table, n_bootstrap=0)["overall"]["accuracy"])
    with pytest.raises(ReportError, match="not found"):
        load_predictions(tmp_path / "missing.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("image,label,pred,prob_a,prob_b\nx,a,a,0.5,oops\n")
    with pytest.raises(ReportError, match="prob_b"):
        load_predictions(bad)


# ----------------------------------------------------------------- HTML report
@pytest.fixture(scope="module")
def report_dir(tmp_path_factory: pytest.TempPathFactory, table: pd.DataFrame) -> Path:
    out = tmp_path_factory.mktemp("report")
    returned = write_report(table, out, title="Test <report>", n_bootstrap=50, seed=0, max_errors=4)
    (out / "returned.json").write_text(json.dumps(returned))
    return out


def test_write_report_files(report_dir: Path, table: pd.DataFrame) -> None:
    written = json.loads((report_dir / "metrics.json").read_text())
    assert written == json.loads((report_dir / "returned.json").read_text())
    assert written == json.loads(json.dumps(compute_metrics(table, n_bootstrap=50, seed=0)))
    frame = pd.read_csv(report_dir / "per_vertebra.csv", keep_default_na=False)
    assert frame["level"].tolist() == ["T11", "T12", "L1", "L2", "L3", "S1", "Th-x", "all"]
    assert not list(report_dir.glob(".*.tmp"))  # atomic writes leave no temporary files
    umask = os.umask(0o022)
    os.umask(umask)
    for name in ("metrics.json", "per_vertebra.csv", "report.html"):
        assert (report_dir / name).stat().st_mode & 0o777 == 0o666 & ~umask, name


def test_report_html_self_contained(report_dir: Path) -> None:
    page = (report_dir / "report.html").read_text(encoding="utf-8")
    references = re.findall(r"""(?:src|href)\s*=\s*["']([^"']*)["']""", page, flags=re.IGNORECASE)
    assert references, "expected embedded figures"
    external = [r for r in references if not (r.startswith("data:image/png;base64,") or r.startswith("#"))]
    assert not external
    assert "http://" not in page and "https://" not in page
    assert "<script" not in page.lower() and "@import" not in page and "url(" not in page
    assert "<title>Test &lt;report&gt;</title>" in page  # user text is escaped
    from matplotlib.image import imread
    images = [r for r in references if r.startswith("data:image/png")]
    assert len(images) >= 6
    for uri in images:
        pixels = imread(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])), format="png")
        assert pixels.ndim == 3 and min(pixels.shape[:2]) > 10
    for level in ("T11", "T12", "L1", "L2", "L3", "S1", "Th-x"):
        assert f">{level}<" in page, level
    assert "small sample (n=1)" in page
    assert "no CI: 1 patient" in page  # a one-patient bootstrap has zero width: not shown as certainty
    # the images do not exist: every thumbnail slot says why instead of failing the report
    assert page.count('class="thumb"') == 4 and page.count('class="missing"') == 4


# Appended to a copy of the page: after layout, the box of every section and image goes into the DOM
# as JSON, which --dump-dom prints.
_MEASURE = """<script>
window.addEventListener("load", () => {
  const box = e => { const r = e.getBoundingClientRect(); return {id: e.id || e.alt || "", w: r.width, h: r.height}; };
  const images = [...document.images].map(i => ({...box(i), natural: i.naturalWidth * i.naturalHeight}));
  const out = {sections: [...document.querySelectorAll("section")].map(box), images: images};
  const pre = document.createElement("pre"); pre.id = "rendered-layout";
  pre.textContent = JSON.stringify(out); document.body.appendChild(pre);
});
</script>"""


def rendered_layout(page: Path, workdir: Path) -> dict:
    """What headless Chromium lays out for ``page``: the width and height of every ``<section>`` and
    ``<img>``, and each image's decoded pixel count (0 when it cannot be decoded). The page is measured
    by a script appended to a copy of it, so the report itself stays script-free."""
    workdir.mkdir(parents=True, exist_ok=True)
    copy = workdir / page.name
    copy.write_text(page.read_text(encoding="utf-8").replace("</body>", _MEASURE + "</body>"), encoding="utf-8")
    command = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={workdir / 'profile'}", "--run-all-compositor-stages-before-draw",
               "--virtual-time-budget=5000", "--window-size=1280,900", "--dump-dom", copy.resolve().as_uri()]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    found = re.search(r'<pre id="rendered-layout">(.*?)</pre>', done.stdout, flags=re.DOTALL)
    assert found, "the measuring script did not run: " + done.stdout[-1000:]
    return json.loads(html.unescape(found.group(1)))


def assert_every_part_rendered(layout: dict, sections: list[str], min_images: int) -> None:
    """Every expected section and every image is laid out with a non-zero size and decoded."""
    shown = {s["id"]: s for s in layout["sections"]}
    for name in sections:
        assert name in shown, (name, sorted(shown))
        assert shown[name]["w"] > 0 and shown[name]["h"] > 0, shown[name]
    assert len(layout["images"]) >= min_images
    for image in layout["images"]:
        assert image["w"] > 0 and image["h"] > 0 and image["natural"] > 0, image


REPORT_SECTIONS = ["summary", "levels", "confusion", "roc", "calibration", "branches", "errors", "definitions"]


def test_report_renders_in_headless_chromium(report_dir: Path, tmp_path: Path) -> None:
    if shutil.which("chromium") is None:
        pytest.skip("chromium is not installed (Debian: apt-get install chromium); cannot render report.html")
    # positive control: a page whose figure cannot be decoded and whose section is hidden must fail
    broken = tmp_path / "broken.html"
    broken.write_text('<html><body><section id="summary" style="display:none">x</section>'
                      '<img src="data:image/png;base64,AAAA" alt="bad"></body></html>')
    with pytest.raises(AssertionError):
        assert_every_part_rendered(rendered_layout(broken, tmp_path / "a"), ["summary"], 1)
    page = report_dir / "report.html"
    n_images = page.read_text(encoding="utf-8").count("<img ")
    layout = rendered_layout(page, tmp_path / "b")
    assert_every_part_rendered(layout, REPORT_SECTIONS, n_images)
    assert len(layout["images"]) == n_images


# ----------------------------------------------------------------- thumbnails
def test_thumbnail_crop_and_box() -> None:
    from matplotlib.image import imread
    pixels = np.random.default_rng(0).random((300, 200)).astype(np.float32)
    for roi in (np.array([10.0, 20.0, 60.0, 90.0]), np.array([150.0, 250.0, 200.0, 300.0]), None,
                np.full(4, np.nan)):
        uri = thumbnail(pixels, roi)
        image = imread(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])), format="png")
        assert image.shape[0] > 50 and image.shape[1] > 50
        # the ROI box is drawn in yellow (#FFCC00); without ROI there is no box
        yellow = ((image[..., 0] > 0.9) & (image[..., 1] > 0.7) & (image[..., 1] < 0.9) & (image[..., 2] < 0.2)).sum()
        assert (yellow > 20) == (roi is not None and np.isfinite(roi).all())


def test_worst_error_thumbnails_from_dicom(tmp_path: Path) -> None:
    from pydicom.uid import SecondaryCaptureImageStorage

    from dicom_factory import make_gray_dicom

    pixels = np.arange(96 * 64, dtype=np.uint16).reshape(96, 64) % 4096
    make_gray_dicom(tmp_path / "img.dcm", pixels, sop_class_uid=SecondaryCaptureImageStorage, modality="DX",
                    patient_id="P1")
    table = pd.DataFrame({"image": ["img.dcm", "img.dcm", "missing.dcm"], "vertebra": ["L1", "L2", "L3"],
                          "patient_id": ["P1", "P1", "P2"], "label": ["a", "b", "a"], "pred": ["b", "a", "b"],
                          "prob_a": [0.3, 0.6, 0.1], "prob_b": [0.7, 0.4, 0.9],
                          "x_min": [5.0, 5.0, 5.0], "y_min": [10.0, 40.0, 1.0], "x_max": [40.0, 40.0, 9.0],
                          "y_max": [30.0, 70.0, 9.0]})
    table.to_csv(tmp_path / "predictions.csv", index=False)
    write_report(tmp_path / "predictions.csv", tmp_path / "out", n_bootstrap=5)  # relative paths: CSV folder
    page = (tmp_path / "out" / "report.html").read_text()
    assert page.count('class="thumb"') == 3
    assert page.count('class="missing"') == 1 and "could not be read" in page


def test_per_class_scores_agree_with_sklearn() -> None:
    from sklearn.metrics import precision_score, recall_score, roc_auc_score

    from spine_dfl.metrics import compute_metrics

    rng = np.random.default_rng(5)
    classes = ["normal", "mild", "moderate", "severe"]
    n = 60
    y = rng.integers(0, 4, n)
    logits = rng.normal(size=(n, 4)) + 2.0 * np.eye(4)[y]
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    table = pd.DataFrame({"image": [f"i{i}" for i in range(n)], "vertebra": "L1", "patient_id": [f"p{i % 9}" for i in range(n)],
                          "label": np.array(classes)[y], "pred": np.array(classes)[probs.argmax(1)]})
    for j, c in enumerate(classes):
        table[f"prob_{c}"] = probs[:, j]
    per_class = compute_metrics(table, n_bootstrap=10)["overall"]["per_class"]
    pred = probs.argmax(1)
    for j, c in enumerate(classes):
        assert per_class[c]["auc_ovr"] == pytest.approx(roc_auc_score(y == j, probs[:, j]), abs=1e-9)
        assert per_class[c]["sensitivity"] == pytest.approx(recall_score(y == j, pred == j), abs=1e-9)
        assert per_class[c]["precision"] == pytest.approx(precision_score(y == j, pred == j), abs=1e-9)
        assert per_class[c]["support"] == int((y == j).sum())
