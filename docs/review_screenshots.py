"""Screenshots of a study under review in ``spine-dfl review``, for docs/radiologist.md.

Rerun from the repository root (needs Debian's Chromium and Playwright, ``pip install -e '.[test]'``):

    python docs/review_screenshots.py

A synthetic film (``synth.generate_cohort``) is scored by the real ``score`` with a random-init grader
(``benchmarks/review_speed.py``'s ``scored_film``: the grades shown are arbitrary, the app is not) and
explained (``spine-dfl explain``: its top patches, ``--explain``), three vertebrae are reviewed by key in
Chromium, and two PNGs are written: ``docs/img/review-study.png`` (the whole film with its overlays and
the side panel) and ``docs/img/review-zoom.png`` (zoomed in on a vertebra's six points and top patches).
"""

from __future__ import annotations

import sys
import tempfile
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from review_speed import ARGS, CHROMIUM, scored_film  # noqa: E402


def main() -> None:
    from playwright.sync_api import sync_playwright

    from spine_dfl.review import start_review

    work = Path(tempfile.mkdtemp(prefix="review_shots_"))
    from spine_dfl.explain.inputs import explain_inputs

    results = scored_film(work, 1024)
    explain_inputs(work / "grader.pt", [work / "cohort" / "images"], work / "cohort" / "rois.csv", work / "explain",
                   top_n=3, device="cpu")
    session = start_review(results, work / "reviewed", port=0, reader="dr example", explain=work / "explain")
    threading.Thread(target=session.server.serve_forever, daemon=True).start()
    out = ROOT / "docs" / "img"
    out.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(tempfile.mkdtemp(), executable_path=CHROMIUM, args=ARGS,
                                                       headless=True, viewport={"width": 1400, "height": 900})
        page = context.new_page()
        page.goto(session.url)
        page.wait_for_selector("body[data-state=ready]")
        for key in ("0", "2", "x"):  # normal, moderate, not assessable; each moves on to the next vertebra
            before = page.get_attribute("#vertebra", "data-key")
            page.keyboard.press(key)
            page.wait_for_selector(f"#vertebra[data-key]:not([data-key='{before}'])")
        page.screenshot(path=str(out / "review-study.png"))
        box = page.locator("#view").bounding_box()
        vertebra = session.app.studies[0].vertebrae[3]
        rows = cols = 1024
        s = min(box["width"] / cols, box["height"] / rows)
        x = box["x"] + (box["width"] - cols * s) / 2 + (vertebra.box[0] + vertebra.box[2]) / 2 * s
        y = box["y"] + (box["height"] - rows * s) / 2 + (vertebra.box[1] + vertebra.box[3]) / 2 * s
        page.mouse.move(x, y)
        for _ in range(4):  # about 4x
            page.mouse.wheel(0, -240)
        page.wait_for_timeout(300)
        page.screenshot(path=str(out / "review-zoom.png"))
        context.close()
    session.server.shutdown()
    print(f"wrote {out / 'review-study.png'} and {out / 'review-zoom.png'}")


if __name__ == "__main__":
    main()
