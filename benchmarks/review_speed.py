"""Benchmark: how fast a 3000 x 3000 radiograph with its overlays is interactive in ``spine-dfl review``.

A synthetic film of ``--size`` x ``--size`` pixels (``synth.generate_cohort``) is scored by the real
``score`` (a random-init ROI grader and the cohort's ROI file: the overlays are the table's boxes,
levels, grades and points), served by ``review.start_review`` and opened in Debian's Chromium
(Playwright). Each repeat times, from the navigation's start, until the page says it is ready (film
decoded, overlays drawn) and until a grade key is handled (the next vertebra selected after the save):
``cold`` with the server's PNG cache emptied first (the DICOM decoded and encoded again), ``warm`` with
the PNG already made (as when the reader comes back to a film; the server encodes the next film while
the current one is read). Prints one JSON object, milliseconds.

    python benchmarks/review_speed.py --size 3000 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

import torch

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]
CLASSES = ["normal", "mild", "moderate", "severe"]


def scored_film(folder: Path, size: int, patients: int = 1, seed: int = 3) -> Path:
    """A ``size`` x ``size`` synthetic cohort scored by the real scorer; the score output folder."""
    from spine_dfl.data.transforms import Preprocessing
    from spine_dfl.engine.checkpoint import atomic_torch_save, checkpoint_payload
    from spine_dfl.model import DFLNet
    from spine_dfl.score import score
    from spine_dfl.synth import generate_cohort

    generate_cohort(folder / "cohort", patients=patients, seed=seed, rows=size, cols=size)
    torch.manual_seed(seed)
    model = DFLNet("resnet18", num_classes=len(CLASSES), filters_per_class=2)
    atomic_torch_save(checkpoint_payload(model, {"benchmark": "review"}, CLASSES,
                                         Preprocessing(input_size=32, use_roi=True), {}), folder / "grader.pt")
    score(folder / "grader.pt", [folder / "cohort" / "images"], folder / "results",
          rois_csv=folder / "cohort" / "rois.csv", workers=0, progress=False)
    return folder / "results"


def _time_open(context, url: str, first_key: str) -> tuple[float, float]:
    page = context.new_page()
    start = time.perf_counter()
    page.goto(url)
    page.wait_for_selector("body[data-state=ready]", timeout=30000)
    ready = time.perf_counter()
    page.keyboard.press("0")
    page.wait_for_selector(f"#vertebra[data-key]:not([data-key='{first_key}'])", timeout=30000)
    handled = time.perf_counter()
    page.close()
    return (ready - start) * 1000, (handled - start) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=3000, help="film rows and columns (default 3000)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--work", type=Path, default=None, help="folder for the film and the review (default: a temp dir)")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    from spine_dfl.review import start_review
    from spine_dfl.review.images import PngCache

    work = args.work or Path(tempfile.mkdtemp(prefix="review_speed_"))
    results = scored_film(work, args.size)
    session = start_review(results, work / "reviewed", port=0, reader="benchmark")
    threading.Thread(target=session.server.serve_forever, daemon=True).start()
    study = session.app.studies[0]
    times: dict[str, list[tuple[float, float]]] = {"cold": [], "warm": []}
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(tempfile.mkdtemp(), executable_path=CHROMIUM, args=ARGS,
                                                       headless=True, viewport={"width": 1600, "height": 1000})
        _time_open(context, session.url, study.vertebrae[0].key)  # the browser's own start-up, not timed
        for _ in range(args.repeats):
            session.app.pngs = PngCache()
            times["cold"].append(_time_open(context, session.url, study.vertebrae[0].key))
            times["warm"].append(_time_open(context, session.url, study.vertebrae[0].key))
        context.close()
    session.server.shutdown()
    report = {"size": [args.size, args.size], "vertebrae": len(study.vertebrae), "repeats": args.repeats,
              "cpu_count": os.cpu_count(), "chromium": CHROMIUM}
    for kind, pairs in times.items():
        report[f"{kind}_ready_ms_median"] = round(statistics.median(r for r, _ in pairs), 1)
        report[f"{kind}_key_handled_ms_median"] = round(statistics.median(k for _, k in pairs), 1)
        report[f"{kind}_key_handled_ms_max"] = round(max(k for _, k in pairs), 1)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
