"""How far to trust the figures: images unlike the training data, and the calibration before and after.

``shift_report`` (into metrics.json as ``shift``) works from the predictions table alone: where it has
the ``shift_score`` and ``in_distribution`` columns (``engine.shift``), how many images were checked,
which are unlike the training images, and their scores. ``calibration_report`` (metrics.json
``calibration``) takes the checkpoint's calibration record (``engine.calibration``: fitted on the
validation split, from ``calibration.json`` or the checkpoint) and keeps its temperatures and the
validation ECE per branch before and after; ``trust_sections`` renders both as HTML, with the
validation reliability diagram before and after temperature scaling.
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from spine_dfl.predictions import IMAGE_COLUMN, LEVEL_COLUMNS, SHIFT_COLUMNS, STATUS_OK

LISTED = 50  # flagged images named in the report at most


def shift_report(table: pd.DataFrame) -> dict[str, Any] | None:
    """Images checked and flagged (``in_distribution`` no), or None when the table has no shift columns
    or none of its images was checked."""
    if not all(c in table.columns for c in SHIFT_COLUMNS) or IMAGE_COLUMN not in table.columns:
        return None
    rows = table
    if "status" in rows.columns:  # refused images are error rows that still carry their verdict
        rows = rows[(rows["status"].astype(str).str.strip() == STATUS_OK) | (rows["in_distribution"] == "no")]
    verdict = rows["in_distribution"].astype(str).str.strip()
    rows = rows[verdict.isin(("yes", "no"))]
    if rows.empty:
        return None
    images = rows.groupby(IMAGE_COLUMN, sort=False).agg(
        score=("shift_score", lambda v: float(pd.to_numeric(v, errors="coerce").mean())),
        verdict=("in_distribution", "first"))
    flagged = images[images["verdict"] == "no"].sort_values("score", ascending=False)
    return {"images": int(len(images)), "flagged": int(len(flagged)),
            "flagged_fraction": float(len(flagged) / len(images)),
            "median_score": float(np.median(images["score"])),
            "flagged_images": [{"image": str(image), "shift_score": float(row.score)}
                               for image, row in flagged.iterrows()]}


def levels_report(table: pd.DataFrame) -> dict[str, Any] | None:
    """Images whose levels were counted from a visible anchor and those named relatively (``V1``..), or
    None when the table has no ``level_anchored`` column (manifest levels, ROI files)."""
    column = LEVEL_COLUMNS[1]
    if column not in table.columns or IMAGE_COLUMN not in table.columns:
        return None
    verdict = table[column].astype(str).str.strip()
    rows = table[verdict.isin(("yes", "no"))]
    if rows.empty:
        return None
    images = rows.groupby(IMAGE_COLUMN, sort=False)[column].first()
    unanchored = images[images == "no"]
    return {"images": int(len(images)), "anchored": int((images == "yes").sum()), "unanchored": int(len(unanchored)),
            "unanchored_images": [str(i) for i in unanchored.index[:LISTED]]}


def levels_html(levels: Mapping[str, Any] | None) -> str:
    """The report's part on how the levels were counted ("" without located levels)."""
    if levels is None:
        return ""
    items = "".join(f"<li>{_esc(i)}</li>" for i in levels["unanchored_images"])
    return ('<section id="anchors"><h2>How the levels were counted</h2>'
            f'<p>{levels["anchored"]} of {levels["images"]} images had their levels counted from an anchor the film '
            f'shows (the sacrum, or C7/T1). On <b>{levels["unanchored"]}</b> no anchor was visible (a thoracic cut, a '
            "spot view): their vertebrae are named V1, V2, ... from the top of the film, not by level, and are "
            "not to be read as levels.</p>" + (f"<ul>{items}</ul>" if items else "") + "</section>")


def calibration_report(record: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The checkpoint calibration's temperatures and validation ECE / NLL before and after (no bins)."""
    if not isinstance(record, Mapping) or "temperatures" not in record:
        return None
    keys = ("method", "fitted_on", "n", "ece_bins", "temperatures", "ece_before", "ece_after", "nll_before", "nll_after")
    return {k: record[k] for k in keys if k in record}


def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def _reliability_before_after(record: Mapping[str, Any]) -> str | None:
    """Fused and branch reliability curves on the validation split, before (left) and after (right)."""
    from spine_dfl.report import figures

    before, after = record.get("reliability_before"), record.get("reliability_after")
    if not isinstance(before, Mapping) or not isinstance(after, Mapping):
        return None
    figure = figures.new_figure(9.0, 4.2)
    for ax, bins_by_branch, title in zip(figure.subplots(1, 2), (before, after), ("before", "after")):
        ax.plot([0, 1], [0, 1], ls=":", color="grey", lw=1, label="perfect calibration")
        for branch, bins in bins_by_branch.items():
            used = [b for b in bins if b["count"]]
            ece = (record.get(f"ece_{title}") or {}).get(branch)
            label = figures.BRANCH_LABELS.get(branch, branch) + ("" if ece is None else f" (ECE {ece:.3f})")
            ax.plot([b["confidence"] for b in used], [b["accuracy"] for b in used], marker="o",
                    color=figures.BRANCH_COLORS.get(branch, "black"), lw=2.5 if branch == "fused" else 1.2, label=label)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.01)
        ax.set_aspect("equal")
        ax.set_xlabel("confidence (highest class probability)")
        ax.set_ylabel("observed accuracy")
        ax.set_title(f"validation, {title} temperature scaling ({record.get('ece_bins', 15)} bins)", fontsize=10)
        ax.legend(loc="upper left", fontsize=7)
    return figures.to_data_uri(figure)


def _calibration_html(record: Mapping[str, Any] | None) -> str:
    summary = calibration_report(record)
    if summary is None:
        return ('<div class="note">The checkpoint carries no fitted temperatures (trained before calibration '
                "existed): the probabilities are the raw softmax.</div>")
    rows = "".join(
        f'<tr><td class="l">{_esc(b)}</td><td>{summary["temperatures"][b]:.3f}</td>'
        f'<td>{summary["ece_before"][b]:.3f}</td><td>{summary["ece_after"][b]:.3f}</td></tr>'
        for b in summary["temperatures"])
    figure = _reliability_before_after(record)
    return (f'<h3>Temperature scaling (fitted on {summary.get("n", "?")} validation vertebrae)</h3>'
            "<p>Every probability in this report is calibrated: each branch's logits divided by its temperature. "
            "Predictions do not change. ECE here: top-label, "
            f'{summary.get("ece_bins", 15)} equal-width bins, on the validation split.</p>'
            '<table><tr><th class="l">branch</th><th>temperature</th><th>val ECE before</th><th>val ECE after</th>'
            f"</tr>{rows}</table>"
            + (f'<img class="fig" src="{figure}" alt="reliability before and after calibration">' if figure else ""))


def _shift_html(shift: Mapping[str, Any] | None) -> str:
    if shift is None:
        return ""
    listed = shift["flagged_images"][:LISTED]
    items = "".join(f"<li>{_esc(f['image'])}: shift score {f['shift_score']:.1f}</li>" for f in listed)
    more = len(shift["flagged_images"]) - len(listed)
    return ('<section id="shift"><h2>Images unlike the training data</h2>'
            f'<p><b>{shift["flagged"]}</b> of {shift["images"]} images ({100 * shift["flagged_fraction"]:.1f}%) are '
            "unlike the grader's training images (shift score above the checkpoint's threshold, the 99th percentile "
            "of a log-normal fitted to its validation images' scores: about 1% of images like those are flagged by chance). Their grades should "
            f'not be relied on. Median shift score {shift["median_score"]:.1f}.</p>'
            + (f"<ul>{items}</ul>" if items else "") + (f"<p>and {more} more</p>" if more > 0 else "")
            + "</section>")


def trust_sections(shift: Mapping[str, Any] | None, calibration: Mapping[str, Any] | None,
                   with_calibration: bool) -> tuple[str, str]:
    """(the shift section's HTML or "", the calibration part's HTML or "") for the report page."""
    return _shift_html(shift), (_calibration_html(calibration) if with_calibration else "")
