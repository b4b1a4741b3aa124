"""Six-point morphometry beside the CNN grade, from the predictions table's morphometry columns alone.

``morphometry_summary`` (into metrics.json as ``morphometry``): the agreement of the CNN's predicted
class with Genant's morphometric grade (counts, and where every class is a Genant grade, exact
agreement and quadratic-weighted kappa), and per level the median heights and ratios and the
morphometric grades' counts. ``morphometry_section`` renders both as HTML.
"""

from __future__ import annotations

import html
from typing import Any

import numpy as np
import pandas as pd

from spine_dfl.io.vocabulary import GENANT_GRADES, sort_levels
from spine_dfl.predictions import PRED_COLUMN, STATUS_OK

MORPH_GRADES: tuple[str, ...] = GENANT_GRADES
MEDIANS: tuple[str, ...] = ("ha", "hm", "hp", "wedge_ratio", "biconcave_ratio", "crush_ratio")


def _measured(table: pd.DataFrame) -> pd.DataFrame:
    rows = table[table["morph_grade"].astype(str).str.strip() != ""]
    if "status" in rows.columns:
        rows = rows[rows["status"].astype(str).str.strip() == STATUS_OK]
    return rows


def _median(values: pd.Series) -> float | None:
    finite = pd.to_numeric(values, errors="coerce").dropna()
    return float(np.median(finite)) if len(finite) else None


def _kappa(pred: list[str], morph: list[str]) -> float | None:
    from sklearn.metrics import cohen_kappa_score

    if len(set(pred) | set(morph)) < 2:
        return None
    return float(cohen_kappa_score(pred, morph, labels=list(MORPH_GRADES), weights="quadratic"))


def morphometry_summary(table: pd.DataFrame, classes: list[str]) -> dict[str, Any] | None:
    """The ``morphometry`` block of metrics.json, or None when the table has no morphometry."""
    if "morph_grade" not in table.columns:
        return None
    rows = _measured(table)
    if rows.empty:
        return None
    pred, morph = rows[PRED_COLUMN].astype(str).tolist(), rows["morph_grade"].astype(str).tolist()
    counts = {c: {g: int(sum(p == c and m == g for p, m in zip(pred, morph))) for g in MORPH_GRADES} for c in classes}
    agreement: dict[str, Any] = {"rows": "CNN predicted class", "columns": "morphometric grade", "counts": counts}
    if set(classes) <= set(MORPH_GRADES):
        agreement["exact"] = float(np.mean([p == m for p, m in zip(pred, morph)]))
        agreement["quadratic_kappa"] = _kappa(pred, morph)
    levels = {}
    for level in sort_levels(rows["vertebra"].astype(str)):
        at = rows[rows["vertebra"].astype(str) == level]
        levels[level] = {"n": int(len(at)), **{f"median_{c}": _median(at[c]) for c in MEDIANS},
                         "grades": {g: int((at["morph_grade"] == g).sum()) for g in MORPH_GRADES},
                         "unit": ", ".join(sorted(set(at["height_unit"].astype(str)) - {""}))}
    return {"n": int(len(rows)), "agreement": agreement, "per_vertebra": levels}


def _fmt(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def morphometry_section(block: dict[str, Any] | None) -> str:
    """The report's morphometry section ("" without morphometry)."""
    if not block:
        return ""
    agreement = block["agreement"]
    head = "".join(f"<th>{g}</th>" for g in MORPH_GRADES)
    body = "".join(f"<tr><th>{html.escape(c)}</th>" + "".join(f"<td>{row[g]}</td>" for g in MORPH_GRADES) + "</tr>"
                   for c, row in agreement["counts"].items())
    summary = ""
    if "exact" in agreement:
        summary = (f"<p>Exact agreement {agreement['exact']:.1%}; quadratic-weighted kappa "
                   f"{_fmt(agreement['quadratic_kappa'], 3)} ({block['n']} vertebrae with six points).</p>")
    level_rows = "".join(
        f"<tr><th>{html.escape(level)}</th><td>{v['n']}</td>"
        + "".join(f"<td>{_fmt(v['median_' + c])}</td>" for c in MEDIANS)
        + f"<td>{html.escape(v['unit'])}</td>"
        + f"<td>{' / '.join(str(v['grades'][g]) for g in MORPH_GRADES)}</td></tr>"
        for level, v in block["per_vertebra"].items())
    return ('<section id="morphometry"><h2>Morphometry</h2><p>Six-point morphometry (Genant): heights Ha, Hm, Hp; '
            'wedge Ha/Hp, biconcave Hm/Hp, crush Hp against the adjacent levels; height loss 20/25/40% for '
            'mild/moderate/severe. Rows: CNN predicted class; columns: morphometric grade.</p>'
            f'<table><tr><th></th>{head}</tr>{body}</table>{summary}'
            '<h3>Per level (medians)</h3><div class="wide"><table><tr><th>level</th><th>n</th><th>Ha</th><th>Hm</th>'
            '<th>Hp</th><th>wedge</th><th>biconcave</th><th>crush</th><th>unit</th>'
            '<th>normal / mild / moderate / severe</th></tr>' + level_rows + "</table></div></section>")
