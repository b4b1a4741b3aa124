"""``index.html``: a self-contained gallery of an explain run's figures.

Inline CSS and JS (package data ``static/gallery.css`` and ``static/gallery.js``), PNGs referenced
by relative path, no network. Filterable by level, predicted class and correct / wrong (when labels
are known), sorted by confidence, with each vertebra's probabilities.
"""

from __future__ import annotations

import html
import urllib.parse
from collections.abc import Mapping, Sequence
from functools import cache
from importlib.resources import files
from pathlib import Path
from typing import Any

from spine_dfl.io.vocabulary import level_sort_key, sort_levels

__all__ = ["render_gallery"]

_PANELS_NOTE = (
    "Panels: (1) the predicted class's strongest distinct P-stream patches, numbered by response: dot = the "
    "filter's peak (refined between feature cells), box = its effective receptive field (where 90% of the "
    "response's input gradient lies), filters peaking at the same place shown once; (2) P-stream evidence (max of the predicted class's filter responses); (3) G-stream "
    "Grad-CAM. Dashed white: the vertebra ROI. Coordinates are original image pixels."
)


@cache
def _static(name: str) -> str:
    return files("spine_dfl.explain").joinpath("static", name).read_text(encoding="utf-8")


def _options(element_id: str, label: str, values: Sequence[str], all_label: str = "all") -> str:
    opts = [f'<option value="">{html.escape(all_label)}</option>'] + [
        f'<option value="{html.escape(v, quote=True)}">{html.escape(v)}</option>' for v in values
    ]
    return f'<label>{html.escape(label)} <select id="{element_id}">{"".join(opts)}</select></label>'


def _controls(ordered: Sequence[Mapping[str, Any]], class_names: Sequence[str]) -> list[str]:
    levels = sort_levels([e.get("vertebra", "") for e in ordered if e.get("vertebra")])
    controls = [_options("f-level", "Level", levels), _options("f-pred", "Predicted", list(class_names))]
    if any(e.get("label") is not None for e in ordered):
        controls.append(_options("f-correct", "Result", ["correct", "wrong", "unknown"]))
    controls.append(
        '<label>Sort <select id="f-sort"><option value="desc">confidence, high first</option>'
        '<option value="asc">confidence, low first</option><option value="level">level</option></select></label>'
    )
    controls.append('<span id="count"></span>')
    return controls


def _patch_text(box: Mapping[str, Any]) -> str:
    """'#1 filter 7 (2.31) at (412, 803) + filters 8, 9' (peak in original pixels)."""
    text = f"#{box['rank']} filter {box['filter']} ({box['score']:.3g})"
    if "peak_x" in box:
        text += f" at ({box['peak_x']:.0f}, {box['peak_y']:.0f})"
    same = box.get("same_place_filters") or []
    return text + (f" + filter{'s' if len(same) > 1 else ''} {', '.join(map(str, same))}" if same else "")


def _card(entry: Mapping[str, Any], class_names: Sequence[str], level_rank: int) -> str:
    """One sample: head line, probability table, patch list, figure."""
    vertebra = str(entry.get("vertebra", "") or "")
    label = entry.get("label")
    status = "unknown" if label is None else ("correct" if entry.get("correct") else "wrong")
    rows = []
    for name in class_names:
        p = float(entry["probs"].get(name, 0.0))
        weight = "<b>{}</b>" if name == entry["pred"] else "{}"
        rows.append(
            f"<tr><td>{weight.format(html.escape(name))}</td><td>{p:.3f}</td>"
            f'<td><span class="bar" style="width:{max(1, round(120 * p))}px"></span></td></tr>'
        )
    truth = "" if label is None else (f' &middot; truth <b>{html.escape(str(label))}</b> '
                                      f'<span class="tag {status}">{status}</span>')
    uid = entry.get("sop_instance_uid") or ""
    src = urllib.parse.quote(str(entry["png"]))
    boxes = "; ".join(_patch_text(b) for b in entry.get("boxes", []))
    pred = html.escape(str(entry["pred"]))
    return (
        f'<div class="card {status}" data-level="{html.escape(vertebra, quote=True)}" '
        f'data-levelrank="{level_rank}" '
        f'data-pred="{html.escape(str(entry["pred"]), quote=True)}" data-correct="{status}" '
        f'data-conf="{float(entry["confidence"]):.6f}">'
        f'<div class="head"><b>{html.escape(vertebra or "whole image")}</b> &middot; '
        f'{html.escape(Path(str(entry["image"])).name)} &middot; predicted <b>{pred}</b> '
        f'(p = {float(entry["confidence"]):.3f}){truth}</div>'
        f'<table class="probs">{"".join(rows)}</table>'
        f'<div class="meta">patches: {html.escape(boxes)}'
        + (f" &middot; SOP Instance UID {html.escape(str(uid))}" if uid else "")
        + "</div>"
        f'<img loading="lazy" src="{html.escape(src, quote=True)}" alt="{html.escape(vertebra)} {pred}">'
        "</div>"
    )


def render_gallery(
    entries: Sequence[Mapping[str, Any]],
    class_names: Sequence[str],
    title: str = "spine-dfl patch explanations",
    meta_lines: Sequence[str] = (),
    failures: Sequence[Mapping[str, str]] = (),
) -> str:
    """Self-contained HTML gallery of `entries` (the patches.json objects), most confident first.

    Each card shows the sample's PNG (relative link), vertebra, prediction, truth and every class's
    probability; filters by level, predicted class and correct/wrong (only when some label is known).
    `failures` ({image, vertebra, reason}) are listed above the cards. No external resources.
    """
    ordered = sorted(entries, key=lambda e: -float(e["confidence"]))
    vertebrae = sorted({str(e.get("vertebra", "") or "") for e in ordered}, key=level_sort_key)
    level_rank = {name: i for i, name in enumerate(vertebrae)}
    cards = [_card(e, class_names, level_rank.get(str(e.get("vertebra", "") or ""), 0)) for e in ordered]
    failed = ""
    if failures:
        items = "".join(f"<li>{html.escape(f['image'])} {html.escape(f.get('vertebra', ''))}: "
                        f"{html.escape(f['reason'])}</li>" for f in failures)
        failed = (f'<details class="failed"><summary>{len(failures)} sample(s) could not be explained</summary>'
                  f"<ul>{items}</ul></details>")
    meta = "".join(f"<div>{html.escape(line)}</div>" for line in meta_lines)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{html.escape(title)}</title><style>\n{_static('gallery.css')}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><div class=\"meta\">{meta}<div>{_PANELS_NOTE}</div></div>"
        f"{failed}<div class=\"controls\">{' '.join(_controls(ordered, class_names))}</div>"
        f"<div id=\"cards\">{''.join(cards)}</div>"
        f"<script>\n{_static('gallery.js')}</script></body></html>\n"
    )
