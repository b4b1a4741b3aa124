"""Matplotlib figures for the HTML report, rendered off-screen (Agg canvas, no pyplot global state)
and embedded as base64 PNG ``data:`` URIs so the report is one self-contained file."""

from __future__ import annotations

import base64
import io
import math
from typing import TYPE_CHECKING, Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from sklearn.metrics import confusion_matrix, roc_curve

from spine_dfl.heatmap.display import display_window
from spine_dfl.metrics.scores import SMALL_SAMPLE, reliability_bins

if TYPE_CHECKING:
    from matplotlib.axes import Axes

_DPI = 96
BRANCH_LABELS = {"g": "G-stream", "p": "P-stream", "side": "side branch", "fused": "fused"}
BRANCH_COLORS = {"g": "#4477AA", "p": "#EE6677", "side": "#CCBB44", "fused": "#228833"}
CLASS_COLORS = ["#4477AA", "#EE6677", "#228833", "#CCBB44", "#66CCEE", "#AA3377", "#BBBBBB", "#000000"]


def new_figure(width_in: float, height_in: float) -> Figure:
    """A figure attached to an Agg canvas (thread-safe, independent of the pyplot backend)."""
    figure = Figure(figsize=(width_in, height_in), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def to_data_uri(figure: Figure) -> str:
    """PNG bytes of the figure as a ``data:image/png;base64,...`` URI."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=_DPI)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _draw_confusion(ax: Axes, y_true: np.ndarray, y_pred: np.ndarray, classes: list[str], title: str,
                    small: bool = False) -> None:
    """Counts in the cells; colour = fraction of the true class's row (so rare classes stay visible)."""
    n_classes = len(classes)
    counts = confusion_matrix(y_true, y_pred, labels=list(range(n_classes)))
    row_sums = counts.sum(axis=1, keepdims=True)
    fraction = np.divide(counts, row_sums, out=np.zeros(counts.shape, dtype=float), where=row_sums > 0)
    ax.imshow(fraction, cmap="Blues", vmin=0.0, vmax=1.0)
    for i in range(n_classes):
        for j in range(n_classes):
            if counts[i, j] or not small:
                ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=7 if small else 10,
                        color="white" if fraction[i, j] > 0.6 else "black")
    short = [c[:3] for c in classes] if small else classes
    ax.set_xticks(range(n_classes), short, fontsize=6 if small else 9, rotation=0 if small else 30)
    ax.set_yticks(range(n_classes), short, fontsize=6 if small else 9)
    ax.set_title(title, fontsize=8 if small else 11)
    if not small:
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")


def confusion_pair(row_level: tuple[np.ndarray, np.ndarray], patient_level: tuple[np.ndarray, np.ndarray],
                   classes: list[str]) -> str:
    """Overall (per vertebra) and per-patient (worst grade) confusion matrices side by side."""
    figure = new_figure(9.0, 4.0)
    ax_rows, ax_patients = figure.subplots(1, 2)
    _draw_confusion(ax_rows, *row_level, classes, f"All vertebrae (n = {len(row_level[0])})")
    _draw_confusion(ax_patients, *patient_level, classes, f"Per patient, worst grade (n = {len(patient_level[0])})")
    return to_data_uri(figure)


def confusion_grid(panels: list[tuple[str, np.ndarray, np.ndarray]], classes: list[str]) -> str:
    """Small multiples: one confusion matrix per level (title = level and n; '!' marks small samples)."""
    n_cols = min(6, max(1, len(panels)))
    n_rows = math.ceil(len(panels) / n_cols)
    figure = new_figure(1.75 * n_cols, 1.85 * n_rows)
    axes = np.atleast_1d(figure.subplots(n_rows, n_cols, squeeze=False)).ravel()
    for ax, (level, y_true, y_pred) in zip(axes, panels):
        flag = " (!)" if len(y_true) < SMALL_SAMPLE else ""
        _draw_confusion(ax, y_true, y_pred, classes, f"{level}  n={len(y_true)}{flag}", small=True)
    for ax in axes[len(panels):]:
        ax.set_axis_off()
    return to_data_uri(figure)


def roc_figure(y_true: np.ndarray, probs: np.ndarray, classes: list[str],
               patient: tuple[np.ndarray, np.ndarray] | None = None) -> str:
    """Left: one-vs-rest ROC per class present; right: abnormal-vs-normal ROC (vertebrae and patients)."""
    figure = new_figure(9.0, 4.2)
    ax_ovr, ax_binary = figure.subplots(1, 2)
    for c, name in enumerate(classes):
        positive = y_true == c
        if positive.all() or not positive.any():
            continue  # class absent (or alone): no curve
        fpr, tpr, _ = roc_curve(positive, probs[:, c])
        ax_ovr.plot(fpr, tpr, color=CLASS_COLORS[c % len(CLASS_COLORS)], lw=2, label=f"{name} (n={positive.sum()})")
    ax_ovr.set_title("One-vs-rest per class (vertebrae)")
    curves = [("vertebrae", y_true, 1.0 - probs[:, 0], "#222222")]
    if patient is not None:
        curves.append(("patients (worst grade)", patient[0], 1.0 - patient[1][:, 0], "#AA3377"))
    for label, truth, score, color in curves:
        abnormal = truth > 0
        if abnormal.all() or not abnormal.any():
            continue
        fpr, tpr, _ = roc_curve(abnormal, score)
        ax_binary.plot(fpr, tpr, color=color, lw=2, label=label)
    ax_binary.set_title(f"Abnormal (not {classes[0]}) vs {classes[0]}")
    for ax in (ax_ovr, ax_binary):
        ax.plot([0, 1], [0, 1], ls=":", color="grey", lw=1)
        ax.set_xlabel("1 - specificity (false positive rate)")
        ax.set_ylabel("sensitivity (true positive rate)")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.01)
        ax.set_aspect("equal")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="lower right", fontsize=8)
    return to_data_uri(figure)


def reliability_figure(y_true: np.ndarray, probs_by_branch: dict[str, np.ndarray]) -> str:
    """Left: accuracy vs confidence per bin (fused and branches); right: how many samples per bin."""
    figure = new_figure(9.0, 4.2)
    ax_curve, ax_hist = figure.subplots(1, 2)
    ax_curve.plot([0, 1], [0, 1], ls=":", color="grey", lw=1, label="perfect calibration")
    for branch, probs in probs_by_branch.items():
        bins = [b for b in reliability_bins(y_true, probs) if b["count"] > 0]
        ax_curve.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], marker="o",
                      color=BRANCH_COLORS.get(branch, "black"), lw=2.5 if branch == "fused" else 1.2,
                      label=BRANCH_LABELS.get(branch, branch))
    ax_curve.set_xlim(0, 1)
    ax_curve.set_ylim(0, 1.01)
    ax_curve.set_aspect("equal")
    ax_curve.set_xlabel("confidence (highest class probability)")
    ax_curve.set_ylabel("observed accuracy")
    ax_curve.set_title("Reliability diagram (10 bins)")
    ax_curve.legend(loc="upper left", fontsize=8)
    fused = probs_by_branch.get("fused", next(iter(probs_by_branch.values())))
    confidence = fused.max(axis=1)
    correct = fused.argmax(axis=1) == y_true
    edges = np.linspace(0, 1, 11)
    ax_hist.hist([confidence[correct], confidence[~correct]], bins=edges, stacked=True,
                 color=["#228833", "#EE6677"], label=["correct", "wrong"])
    ax_hist.set_xlabel("confidence (fused)")
    ax_hist.set_ylabel("vertebrae")
    ax_hist.set_title("Confidence of the fused prediction")
    ax_hist.legend(fontsize=8)
    return to_data_uri(figure)


def _interval(block: dict[str, Any], metric: str) -> tuple[float, float, float] | None:
    value = block["binary"][metric] if metric in ("sensitivity", "specificity") else block[metric]
    ci = block["ci95"][metric]
    if value is None:
        return None
    low = value if ci["low"] is None else ci["low"]
    high = value if ci["high"] is None else ci["high"]
    return value, low, high


def forest_figure(levels: list[str], blocks: list[dict[str, Any]]) -> str:
    """Per-level point estimates with 95% CIs for accuracy, sensitivity and specificity (rows = levels,
    top to bottom in anatomical order; hollow markers = fewer than SMALL_SAMPLE vertebrae)."""
    metrics = [("accuracy", "Accuracy"), ("sensitivity", "Sensitivity (abnormal)"),
               ("specificity", "Specificity (normal)")]
    figure = new_figure(10.0, 1.2 + 0.28 * len(levels))
    axes = figure.subplots(1, len(metrics), sharey=True)
    y = np.arange(len(levels))[::-1]
    for ax, (metric, title) in zip(axes, metrics):
        for yi, block in zip(y, blocks):
            interval = _interval(block, metric)
            if interval is None:
                ax.text(0.5, yi, "n/a", ha="center", va="center", fontsize=7, color="grey")
                continue
            value, low, high = interval
            small = block["n"] < SMALL_SAMPLE
            color = "#BB5566" if small else "#004488"
            ax.plot([low, high], [yi, yi], color=color, lw=1.5)
            ax.plot([value], [yi], "o", color=color, mfc="white" if small else color, ms=5)
        ax.set_xlim(-0.02, 1.02)
        ax.set_title(title, fontsize=10)
        ax.grid(axis="x", color="#DDDDDD")
    labels = [f"{lv} (n={b['n']})" for lv, b in zip(levels, blocks)]
    axes[0].set_yticks(y, labels, fontsize=8)
    axes[0].set_ylim(-0.7, len(levels) - 0.3)
    return to_data_uri(figure)


def branch_figure(branches: dict[str, dict[str, Any]]) -> str:
    """Grouped bars (accuracy, balanced accuracy, macro AUC, sensitivity, specificity) per branch with
    95% CI whiskers."""
    metrics = [("accuracy", "accuracy"), ("balanced_accuracy", "balanced acc."), ("macro_auc", "macro AUC"),
               ("sensitivity", "sensitivity"), ("specificity", "specificity")]
    names = list(branches)
    figure = new_figure(9.0, 3.6)
    ax = figure.subplots()
    width = 0.8 / max(len(names), 1)
    for k, branch in enumerate(names):
        xs, values, errors = [], [], [[], []]
        for m, (metric, _) in enumerate(metrics):
            interval = _interval(branches[branch], metric)
            if interval is None:
                continue
            value, low, high = interval
            xs.append(m + (k - (len(names) - 1) / 2) * width)
            values.append(value)
            errors[0].append(max(value - low, 0.0))
            errors[1].append(max(high - value, 0.0))
        ax.bar(xs, values, width * 0.95, yerr=errors, capsize=3, color=BRANCH_COLORS.get(branch, "grey"),
               label=BRANCH_LABELS.get(branch, branch))
    ax.set_xticks(range(len(metrics)), [label for _, label in metrics])
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("value (95% CI)")
    ax.grid(axis="y", color="#DDDDDD")
    ax.set_axisbelow(True)
    ax.legend(ncols=len(names), fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.0))
    return to_data_uri(figure)


def thumbnail(pixels: np.ndarray, roi: np.ndarray | None, context: float = 0.75, max_side: int = 384) -> str:
    """Crop around the ROI (ROI + ``context`` x its larger side on every side) and draw the ROI box.

    pixels: (rows, cols) float, bone bright. roi: (4,) x_min, y_min, x_max, y_max in original pixels
    (continuous coords: pixel i covers [i, i+1); max exclusive) or None / NaN for the whole image.
    Large crops are subsampled to about ``max_side`` pixels for speed; axes stay in original pixels.
    """
    rows, cols = pixels.shape
    r0, r1, c0, c1 = 0, rows, 0, cols
    box = None
    if roi is not None and np.all(np.isfinite(roi)) and roi[2] > roi[0] and roi[3] > roi[1]:
        x_min, y_min, x_max, y_max = (float(v) for v in roi)
        box = (x_min, y_min, x_max, y_max)
        margin = context * max(x_max - x_min, y_max - y_min)
        c0 = int(np.clip(math.floor(x_min - margin), 0, cols - 1))
        c1 = int(np.clip(math.ceil(x_max + margin), c0 + 1, cols))
        r0 = int(np.clip(math.floor(y_min - margin), 0, rows - 1))
        r1 = int(np.clip(math.ceil(y_max + margin), r0 + 1, rows))
    step = max(1, math.ceil(max(r1 - r0, c1 - c0) / max_side))
    crop = np.asarray(pixels[r0:r1:step, c0:c1:step], dtype=np.float64)
    low, high = display_window(crop)
    figure = new_figure(2.4, 2.4 * min(2.0, max(0.5, (r1 - r0) / max(c1 - c0, 1))))
    ax = figure.subplots()
    ax.imshow(crop, cmap="gray", vmin=low, vmax=high, extent=(c0, c1, r1, r0),
              interpolation="lanczos" if step == 1 else "antialiased")
    if box is not None:
        ax.add_patch(Rectangle((box[0], box[1]), box[2] - box[0], box[3] - box[1], fill=False,
                               edgecolor="#FFCC00", lw=1.8))
    ax.set_xlim(c0, c1)
    ax.set_ylim(r1, r0)
    ax.set_axis_off()
    return to_data_uri(figure)
