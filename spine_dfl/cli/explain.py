"""``spine-dfl explain``: patch heatmaps and a gallery."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("explain", help="patch heatmaps: where each vertebra's grade came from",
                       description="Draw the predicted class's P-stream patches and evidence maps on the radiographs, "
                                   "with a G-stream Grad-CAM beside them, and an HTML gallery.")
    p.add_argument("checkpoint", type=Path, help="checkpoint (.pt) written by spine-dfl train")
    p.add_argument("inputs", type=Path, nargs="+",
                   help="a manifest CSV, or DICOM files / folders (then --rois, unless the model is whole-image)")
    p.add_argument("--out", type=Path, default=Path("runs/explain"),
                   help="output folder: one PNG per sample, patches.json, index.html (default runs/explain)")
    p.add_argument("--top", type=int, default=5, help="patches drawn per sample, strongest first (default 5)")
    p.add_argument("--split", default=None, help="manifest split to explain (default: every row)")
    p.add_argument("--rois", type=Path, default=None,
                   help="CSV of vertebra ROIs for DICOM inputs: sop_instance_uid or image, vertebra, "
                        "x_min, y_min, x_max, y_max (original pixels)")
    p.add_argument("--batch-size", type=int, default=8, help="images per model batch (default 8)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where the model runs")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from spine_dfl.explain import run_explain_command

    return run_explain_command(args)
