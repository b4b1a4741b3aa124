"""The self-contained ``report.html``, ``write_report`` (metrics.json, per_vertebra.csv, report.html) and
``write_evaluation`` (the same with the table itself as predictions.csv).

The HTML has inline CSS (package data: ``static/report.css``, with the definitions in
``static/definitions.html``), figures as base64 PNG, no scripts and no external links, so it opens from a
USB stick in any browser. Thumbnails of the worst errors are read with ``spine_dfl.io.read_image``
(imported lazily: the rest of the report needs only the predictions table).
"""

from __future__ import annotations

import datetime as _dt
import html
import json
import logging
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from spine_dfl import __version__
from spine_dfl.atomic import atomic_output, atomic_write_text
from spine_dfl.metrics.scores import (
    SMALL_SAMPLE, PatientArrays, branch_differences, metrics_from_arrays, patient_level, per_vertebra_table,
    sorted_levels,
)
from spine_dfl.metrics.table import PredictionArrays, load_predictions, prepare
from spine_dfl.report import figures
from spine_dfl.report.morphometry import morphometry_section, morphometry_summary
from spine_dfl.report.trust import calibration_report, levels_html, levels_report, shift_report, trust_sections
from spine_dfl.io.vocabulary import LEVELS

def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def _pct(value: float | None) -> str:
    return "&mdash;" if value is None else f"{100 * value:.1f}%"


def _dec(value: float | None, digits: int = 3) -> str:
    return "&mdash;" if value is None else f"{value:.{digits}f}"


def _with_ci(block: dict[str, Any], metric: str, percent: bool = True) -> str:
    """Cell text 'value (low–high)'; the interval is omitted when no resample defined it, and replaced
    by a note for a single patient (every resample is that patient: a zero-width interval would
    look like certainty)."""
    value = block["binary"][metric] if metric in ("sensitivity", "specificity") else block[metric]
    fmt = _pct if percent else _dec
    ci = block["ci95"][metric]
    text = fmt(value)
    if value is not None and block.get("n_patients", 2) < 2:
        text += ' <span class="ci">(no CI: 1 patient)</span>'
    elif value is not None and ci["low"] is not None:
        text += f' <span class="ci">({fmt(ci["low"]).rstrip("%")}&ndash;{fmt(ci["high"])})</span>'
    return text


def _support_text(block: dict[str, Any], classes: list[str]) -> str:
    return " / ".join(str(block["support"][c]) for c in classes)


def _metric_row(label: str, block: dict[str, Any], classes: list[str], css: str = "", note: str = "") -> str:
    note_html = f'<span class="lnote">{note}</span>' if note else ""
    return (
        f'<tr class="{css}"><td class="l"><b>{label}</b>{note_html}</td><td>{block["n"]}</td><td>{block["n_patients"]}</td>'
        f'<td>{_with_ci(block, "accuracy")}</td><td>{_with_ci(block, "balanced_accuracy")}</td>'
        f'<td>{_dec(block["macro_f1"])}</td><td>{_with_ci(block, "macro_auc", percent=False)}</td>'
        f'<td>{_with_ci(block, "sensitivity")}</td><td>{_with_ci(block, "specificity")}</td>'
        f'<td>{_dec(block["binary"]["auc"])}</td><td>{_dec(block["quadratic_kappa"])}</td><td>{_dec(block["ece"])}</td>'
        f'<td>{_support_text(block, classes)}</td></tr>'
    )


def _metric_header(first: str, classes: list[str]) -> str:
    return (
        f'<tr><th class="l">{first}</th><th>n</th><th>pa&shy;tients</th><th>accuracy<br>(95% CI)</th>'
        f'<th>balanced<br>accuracy</th><th>macro<br>F1</th><th>macro<br>AUC</th><th>sensi&shy;tivity</th>'
        f'<th>speci&shy;ficity</th><th>abnormal<br>AUC</th><th>weigh&shy;ted &kappa;</th><th>ECE</th>'
        f'<th>support<br>{_esc(" / ".join(classes))}</th></tr>'
    )


def _level_note(level: str, block: dict[str, Any], classes: list[str]) -> str:
    notes = []
    if block["n"] < SMALL_SAMPLE:
        notes.append(f'<span class="flag">&#9888; small sample (n={block["n"]})</span>')
    if level not in LEVELS:
        notes.append("level not recognised as C1&ndash;S1, kept as given")
    absent = [c for c in classes if block["support"][c] == 0]
    if absent:
        notes.append("no " + ", ".join(_esc(c) for c in absent))
    return "; ".join(notes)


def _difference_sentence(branch: str, metric: str, diff: dict[str, Any]) -> str:
    """Plain-language paired comparison with the G-stream; honest about intervals that include 0."""
    name = figures.BRANCH_LABELS[branch]
    metric_name = {"accuracy": "accuracy", "balanced_accuracy": "balanced accuracy", "macro_auc": "macro AUC"}[metric]
    if diff["diff"] is None or diff["low"] is None:
        return f"<li>{name} vs G-stream, {metric_name}: not estimable on this data.</li>"
    scale, unit = (100.0, " points") if metric != "macro_auc" else (1.0, "")
    digits = 1 if metric != "macro_auc" else 3
    value = f"{scale * diff['diff']:+.{digits}f}{unit}"
    interval = f"{scale * diff['low']:+.{digits}f} to {scale * diff['high']:+.{digits}f}"
    if diff["low"] > 0:
        verdict = f"the {name} is better than the G-stream"
    elif diff["high"] < 0:
        verdict = f"the {name} is worse than the G-stream"
    else:
        verdict = "the interval includes 0: no evidence of a difference on this data"
    return f"<li>{name} minus G-stream, {metric_name}: <b>{value}</b> (95% CI {interval}); {verdict}.</li>"


def _worst_errors(arrays: PredictionArrays, max_errors: int) -> np.ndarray:
    """Row indices of the worst errors: largest grade distance |pred - label| first, then highest
    probability given to the wrong prediction, then row order."""
    wrong = np.flatnonzero(arrays.y_pred != arrays.y_true)
    if len(wrong) == 0 or max_errors <= 0:
        return wrong[:0]
    distance = np.abs(arrays.y_pred[wrong] - arrays.y_true[wrong])
    confidence = arrays.probs[wrong, arrays.y_pred[wrong]]
    order = np.lexsort((wrong, -confidence, -distance))
    return wrong[order][:max_errors]


def _resolve_image(image: str, image_root: Path | None) -> Path:
    path = Path(image)
    if not path.is_absolute() and image_root is not None:
        candidate = image_root / path
        if candidate.exists():
            return candidate
    return path


def _thumbnail_cards(arrays: PredictionArrays, rows: np.ndarray, image_root: Path | None, thumbnails: bool) -> str:
    classes = list(arrays.classes)
    from spine_dfl.io import read_image  # only the thumbnails need images

    cards = []
    for row in rows:
        image = str(arrays.image[row])
        picture = ""
        if not thumbnails:
            problem = "thumbnails switched off"
        elif not image:
            problem = "no image path in the table"
        else:
            problem = None
            try:
                radiograph = read_image(_resolve_image(image, image_root))
                picture = figures.thumbnail(radiograph.pixels, arrays.roi[row])
            except Exception as exc:  # noqa: BLE001 - one unreadable image must not cost the whole report
                problem = f"image could not be read: {exc}"
        body = (f'<img src="{picture}" alt="{_esc(image)} with ROI">' if picture
                else f'<div class="missing">{_esc(problem)}</div>')
        probability = arrays.probs[row, arrays.y_pred[row]]
        cards.append(
            f'<div class="thumb">{body}<b>{_esc(arrays.level[row])}</b> &middot; true <b>{_esc(classes[arrays.y_true[row]])}</b>'
            f' &rarr; predicted <b>{_esc(classes[arrays.y_pred[row]])}</b> (p={probability:.2f})<br>'
            f'patient {_esc(arrays.patient[row])}<br><span class="ci path">{_esc(image)}</span></div>'
        )
    return f'<div class="thumbs">{"".join(cards)}</div>'


def _static(name: str) -> str:
    """A file of the report's package data (``spine_dfl/report/static``)."""
    return resources.files("spine_dfl.report").joinpath("static", name).read_text(encoding="utf-8")


def _summary_warnings(arrays: PredictionArrays, metrics: dict[str, Any], levels: list[str],
                      patients: PatientArrays) -> list[str]:
    classes, overall, per_patient = list(metrics["classes"]), metrics["overall"], metrics["per_patient"]
    warnings = []
    small = [lv for lv in levels if metrics["per_vertebra"][lv]["n"] < SMALL_SAMPLE]
    if small:
        warnings.append(f"{len(small)} level(s) have fewer than {SMALL_SAMPLE} vertebrae; their figures are "
                        f"very uncertain: {_esc(', '.join(small))}.")
    unknown = [lv for lv in levels if lv not in LEVELS]
    if unknown:
        warnings.append("Levels not recognised as C1&ndash;S1 are kept as given and listed last: "
                        f"{_esc(', '.join(unknown))}.")
    absent = [c for c in classes if overall["support"][c] == 0]
    if absent:
        warnings.append(f"No true example of {_esc(', '.join(absent))}: those classes cannot be assessed.")
    if per_patient["n"] < 30:
        warnings.append(f"Only {per_patient['n']} patients: intervals are wide and per-patient figures fragile.")
    no_id = sum(1 for p in patients.patient if str(p).startswith(("image:", "row:")))
    if no_id:
        warnings.append(f"{no_id} patient(s) had no patient id; each image was counted as its own patient.")
    return warnings


def _summary_section(arrays: PredictionArrays, metrics: dict[str, Any], levels: list[str],
                     patients: PatientArrays) -> str:
    classes, overall, per_patient, boot = (list(metrics["classes"]), metrics["overall"], metrics["per_patient"],
                                           metrics["bootstrap"])
    class_counts = ", ".join(f"{_esc(c)}: {overall['support'][c]}" for c in classes)
    cards = [
        ("vertebrae (rows)", str(overall["n"])), ("patients", str(per_patient["n"])), ("levels", str(len(levels))),
        ("accuracy", _with_ci(overall, "accuracy")), ("balanced accuracy", _with_ci(overall, "balanced_accuracy")),
        ("sensitivity", _with_ci(overall, "sensitivity")), ("specificity", _with_ci(overall, "specificity")),
        ("macro AUC", _with_ci(overall, "macro_auc", percent=False)),
        ("weighted &kappa;", _dec(overall["quadratic_kappa"])),
    ]
    parts = ['<section id="summary"><h2>Summary</h2><div class="cards">']
    parts.extend(f'<div class="card"><div class="v">{v}</div><div class="k">{k}</div></div>' for k, v in cards)
    parts.append("</div>")
    parts.append(f"<p>Classes in grade order: <b>{_esc(' < '.join(classes))}</b>. True labels: {class_counts}. "
                 f"95% intervals: percentile bootstrap over patients, {boot['n_resamples']} resamples, "
                 f"seed {boot['seed']}.</p>")
    parts.append('<div class="wide"><table>' + _metric_header("", classes)
                 + _metric_row("all vertebrae", overall, classes)
                 + _metric_row("per patient (worst grade)", per_patient, classes) + "</table></div>")
    parts.extend(f'<div class="warn">{w}</div>' for w in _summary_warnings(arrays, metrics, levels, patients))
    parts.append("</section>")
    return "".join(parts)


def _levels_section(metrics: dict[str, Any], levels: list[str]) -> str:
    classes, per_vertebra = list(metrics["classes"]), metrics["per_vertebra"]
    blocks = [per_vertebra[lv] for lv in levels]
    rows_html = "".join(
        _metric_row(_esc(lv), per_vertebra[lv], classes, css="small" if per_vertebra[lv]["n"] < SMALL_SAMPLE else "",
                    note=_level_note(lv, per_vertebra[lv], classes))
        for lv in levels
    )
    return ('<section id="levels"><h2>Per vertebra level</h2>'
            '<p>Point estimate and 95% CI per level, top to bottom in anatomical order. Hollow red markers: '
            f'fewer than {SMALL_SAMPLE} vertebrae.</p>'
            f'<img class="fig" src="{figures.forest_figure(levels, blocks)}" alt="per-level forest plot">'
            '<div class="wide"><table>' + _metric_header("level", classes) + rows_html
            + _metric_row("all", metrics["overall"], classes, css="all") + "</table></div></section>")


def _confusion_section(arrays: PredictionArrays, classes: list[str], levels: list[str], patients: PatientArrays) -> str:
    panels = [(lv, arrays.y_true[arrays.level == lv], arrays.y_pred[arrays.level == lv]) for lv in levels]
    pair = figures.confusion_pair((arrays.y_true, arrays.y_pred), (patients.y_true, patients.y_pred), classes)
    return ('<section id="confusion"><h2>Confusion matrices</h2><p>Rows: true grade, columns: predicted. '
            'Numbers are counts; shading is the fraction of the true grade (row).</p>'
            f'<img class="fig" src="{pair}" alt="confusion matrices">'
            f'<h3>Per level</h3><p>(!) = fewer than {SMALL_SAMPLE} vertebrae. Class names abbreviated to three '
            f'letters: {_esc(", ".join(f"{c[:3]} = {c}" for c in classes))}.</p>'
            f'<img class="fig" src="{figures.confusion_grid(panels, classes)}" alt="per-level confusion matrices">'
            "</section>")


def _roc_and_calibration_sections(arrays: PredictionArrays, classes: list[str], patients: PatientArrays,
                                  fitted: str = "") -> str:
    roc = figures.roc_figure(arrays.y_true, arrays.probs, classes, (patients.y_true, patients.probs))
    reliability = figures.reliability_figure(arrays.y_true, {**arrays.branch_probs, "fused": arrays.probs})
    return ('<section id="roc"><h2>ROC curves</h2>'
            f'<img class="fig" src="{roc}" alt="ROC curves"></section>'
            '<section id="calibration"><h2>Calibration</h2><p>Points on the diagonal: the stated confidence '
            'matches how often the model is right. Below the diagonal: over-confident.</p>'
            f'<img class="fig" src="{reliability}" alt="reliability diagram">{fitted}</section>')


def _branches_section(arrays: PredictionArrays, metrics: dict[str, Any]) -> str:
    classes, boot = list(metrics["classes"]), metrics["bootstrap"]
    parts = ['<section id="branches"><h2>Branch comparison: is the P-stream helping?</h2>']
    branch_rows = "".join(_metric_row(figures.BRANCH_LABELS.get(b, b), block, classes)
                          for b, block in metrics["branches"].items())
    parts.append('<div class="wide"><table>' + _metric_header("branch", classes) + branch_rows + "</table></div>")
    if len(metrics["branches"]) > 1:
        parts.append(f'<img class="fig" src="{figures.branch_figure(metrics["branches"])}" alt="branch comparison">')
    differences = branch_differences(arrays, boot["n_resamples"], boot["seed"])
    if differences:
        sentences = "".join(_difference_sentence(b, m, d) for b, per in differences.items() for m, d in per.items())
        parts.append('<div class="note">Paired bootstrap (same patient resamples for every branch):<ul>'
                     + sentences + "</ul></div>")
    else:
        parts.append('<div class="note">The table has no G-stream columns (g_prob_&lt;class&gt;), so the branches '
                     "cannot be compared.</div>")
    parts.append("</section>")
    return "".join(parts)


def _errors_section(arrays: PredictionArrays, image_root: Path | None, thumbnails: bool, max_errors: int) -> str:
    worst = _worst_errors(arrays, max_errors)
    n_wrong = int((arrays.y_pred != arrays.y_true).sum())
    cards = _thumbnail_cards(arrays, worst, image_root, thumbnails) if len(worst) else "<p>No errors.</p>"
    return (f'<section id="errors"><h2>Worst errors</h2><p>{n_wrong} of {len(arrays.y_true)} vertebrae are '
            f"misclassified. Shown: up to {max_errors}, largest grade distance first, then most confident. "
            f"Yellow box: the ROI the model saw.</p>{cards}</section>")


_NAVIGATION = (("summary", "Summary"), ("levels", "Per level"), ("confusion", "Confusion"), ("roc", "ROC"),
               ("calibration", "Calibration"), ("branches", "Branches"), ("errors", "Worst errors"),
               ("definitions", "Definitions"))


def render_html(arrays: PredictionArrays, metrics: dict[str, Any], title: str, image_root: Path | None = None,
                thumbnails: bool = True, max_errors: int = 12, calibration: dict[str, Any] | None = None) -> str:
    """The complete report page as one HTML string (see module doc); ``calibration``: the checkpoint's
    calibration record (``report.trust``), shown with the calibration figures when given."""
    classes = list(metrics["classes"])
    levels = sorted_levels(arrays.level)
    patients = patient_level(arrays)
    shift_html, fitted_html = trust_sections(metrics.get("shift"), calibration, calibration is not None)
    sections = [
        _summary_section(arrays, metrics, levels, patients),
        _levels_section(metrics, levels),
        _confusion_section(arrays, classes, levels, patients),
        shift_html,
        levels_html(metrics.get("levels_counted")),
        _roc_and_calibration_sections(arrays, classes, patients, fitted_html),
        _branches_section(arrays, metrics),
        morphometry_section(metrics.get("morphometry")),
        _errors_section(arrays, image_root, thumbnails, max_errors),
        '<section id="definitions"><h2>How the figures are computed</h2>'
        + _static("definitions.html").replace("{small}", str(SMALL_SAMPLE)) + "</section>",
    ]
    generated = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    nav = "".join(f'<a href="#{anchor}">{label}</a>' for anchor, label in _NAVIGATION)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_esc(title)}</title><style>{_static('report.css')}</style></head><body><main>"
        f'<h1>{_esc(title)}</h1><div class="meta">Generated {generated} by spine-dfl {_esc(__version__)}. '
        "Research use only: not a medical device.</div>"
        f"<nav>{nav}</nav>" + "".join(sections) + "</main></body></html>\n"
    )


def write_report(
    predictions: pd.DataFrame | str | Path,
    out_dir: str | Path,
    classes: list[str] | None = None,
    title: str = "spine-dfl evaluation report",
    n_bootstrap: int = 1000,
    seed: int = 0,
    thumbnails: bool = True,
    max_errors: int = 12,
    image_root: str | Path | None = None,
    calibration: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``metrics.json``, ``per_vertebra.csv`` and ``report.html`` into ``out_dir``; return the metrics.

    predictions: the predictions table, or the path of ``predictions.csv`` (then relative image paths
    are also tried relative to its folder). image_root: folder that relative ``image`` paths are
    resolved against for the thumbnails. Each file is written atomically. Raises ReportError for an
    invalid table (nothing is written then). Where the table has the shift columns, metrics.json gains
    ``shift`` and the page a section on images unlike the training data; ``calibration`` (the checkpoint's
    calibration record, ``engine.calibration``) adds ``calibration`` (temperatures, validation ECE before and
    after) and the validation reliability diagram before and after (``report.trust``).
    """
    if n_bootstrap < 0:
        raise ValueError(f"n_bootstrap must be >= 0, got {n_bootstrap}")
    source = "predictions"
    if isinstance(predictions, (str, Path)):
        source = str(predictions)
        table, file_classes = load_predictions(predictions)
        classes = classes if classes is not None else file_classes
        if image_root is None:
            image_root = Path(predictions).parent
        predictions = table
    arrays = prepare(predictions, classes, source=source)
    metrics = metrics_from_arrays(arrays, n_bootstrap=n_bootstrap, seed=seed)
    morphometry = morphometry_summary(predictions, list(metrics["classes"]))
    if morphometry is not None:
        metrics["morphometry"] = morphometry
    shift = shift_report(predictions)
    if shift is not None:
        metrics["shift"] = shift
    counted = levels_report(predictions)
    if counted is not None:
        metrics["levels_counted"] = counted
    if calibration_report(calibration) is not None:
        metrics["calibration"] = calibration_report(calibration)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2, allow_nan=False) + "\n")
    atomic_write_text(out / "per_vertebra.csv", per_vertebra_table(metrics).to_csv(index=False))
    page = render_html(arrays, metrics, title, image_root=None if image_root is None else Path(image_root),
                       thumbnails=thumbnails, max_errors=max_errors, calibration=calibration)
    atomic_write_text(out / "report.html", page)
    return metrics


def write_evaluation(predictions: pd.DataFrame, out_dir: str | Path, title: str, n_bootstrap: int = 1000,
                     calibration: dict[str, Any] | None = None) -> dict[str, Any]:
    """predictions.csv, metrics.json, per_vertebra.csv and report.html of one predictions table in ``out_dir``
    (``calibration``: the checkpoint's calibration record, shown before / after; ``report.trust``)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_output(out / "predictions.csv", "w", newline="") as handle:
        predictions.to_csv(handle, index=False)
    metrics = write_report(predictions, out, title=f"spine-dfl evaluation: {title}", n_bootstrap=n_bootstrap,
                           calibration=calibration)
    logging.getLogger("spine_dfl").info("report written to %s", out / "report.html")
    return metrics


__all__ = ["render_html", "write_evaluation", "write_report"]
