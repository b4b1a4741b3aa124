"""Counts of a validated manifest and their plain-text tables (what ``spine-dfl validate`` prints)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import pandas as pd

from spine_dfl.data.splits import SPLITS, patient_keys
from spine_dfl.io import level_sort_key

if TYPE_CHECKING:
    from spine_dfl.data.manifest import Manifest


def summarize(manifest: Manifest) -> dict[str, Any]:
    """Counts for ``spine-dfl validate``: rows, images, patients; classes per split; vertebra x class.

    Returns ``{"manifest", "rows", "images", "patients", "class_names", "has_roi", "has_split",
    "splits": {name: {"rows", "images", "patients", "classes": {class: rows}}},
    "vertebrae": {level: {class: rows}}}``; ``splits`` holds ``all`` and, with a split
    column, train/val/test.
    """
    table = manifest.table
    keys = patient_keys(table)
    names = list(manifest.class_names)
    if (table["label"] == "").any():
        names.append("")

    def block(mask: pd.Series) -> dict[str, Any]:
        sub = table[mask]
        counts = sub["label"].value_counts()
        return {
            "rows": int(len(sub)),
            "images": int(sub["image"].nunique()),
            "patients": int(keys[mask].nunique()),
            "classes": {c: int(counts.get(c, 0)) for c in names},
        }

    splits = {"all": block(pd.Series(True, index=table.index))}
    if manifest.has_split:
        for s in SPLITS:
            splits[s] = block(table["split"] == s)
    vertebrae: dict[str, dict[str, int]] = {}
    if manifest.has_vertebra:
        for level in sorted(set(table["vertebra"]), key=level_sort_key):
            counts = table.loc[table["vertebra"] == level, "label"].value_counts()
            vertebrae[level or "(none)"] = {c: int(counts.get(c, 0)) for c in names}
    return {
        "manifest": str(manifest.path),
        "rows": int(len(table)),
        "images": int(table["image"].nunique()),
        "patients": int(keys.nunique()),
        "class_names": list(manifest.class_names),
        "has_roi": bool(manifest.has_roi),
        "has_split": bool(manifest.has_split),
        "splits": splits,
        "vertebrae": vertebrae,
    }


def _table_text(header: Sequence[str], body: Sequence[Sequence[Any]]) -> list[str]:
    cells = [list(map(str, header))] + [[str(v) for v in r] for r in body]
    widths = [max(len(r[j]) for r in cells) for j in range(len(header))]
    lines = []
    for i, r in enumerate(cells):
        lines.append("  ".join(v.ljust(widths[j]) if j == 0 else v.rjust(widths[j]) for j, v in enumerate(r)))
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return lines


def format_summary(summary: dict[str, Any]) -> str:
    """Plain-text tables of :func:`summarize`'s dict (fixed-width, for a terminal)."""
    names = [c for c in summary["class_names"]]
    label_cols = names + ([""] if any("" in b["classes"] for b in summary["splits"].values()) else [])
    shown = [c if c else "(no label)" for c in label_cols]
    lines = [
        f"manifest: {summary['manifest']}",
        f"rows: {summary['rows']}   images: {summary['images']}   patients: {summary['patients']}   "
        f"ROI: {'yes' if summary['has_roi'] else 'no (whole images)'}",
        f"classes: {', '.join(names) if names else '(none)'}",
        "",
    ]
    if not summary["has_split"]:
        lines.append("no split column: training makes a patient-level stratified split by seed")
    body = [[name, b["rows"], b["images"], b["patients"], *(b["classes"].get(c, 0) for c in label_cols)]
            for name, b in summary["splits"].items()]
    lines += _table_text(["split", "rows", "images", "patients", *shown], body)
    if summary["vertebrae"]:
        lines.append("")
        body = [[level, sum(counts.values()), *(counts.get(c, 0) for c in label_cols)]
                for level, counts in summary["vertebrae"].items()]
        lines += _table_text(["vertebra", "rows", *shown], body)
    return "\n".join(lines)
