"""The review app in a real browser: Debian's Chromium driven by Playwright (system browser, no download).

A grade changed by key and a dragged point are in manifest.csv and still shown after a reload; two tabs
editing one vertebra lose neither edit; off loopback the token is required; the page asks nothing of
any other origin. Skipped, with the reason, only where Chromium or Playwright is absent."""

from __future__ import annotations

import csv
import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_review import CLASSES, scored_results

from spine_dfl.io import read_image
from spine_dfl.io.vocabulary import POINT_COLUMNS
from spine_dfl.review import start_review

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]
playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[test]')")
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).is_file(), reason=f"no Chromium at {CHROMIUM} (apt-get install chromium)")


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return scored_results(tmp_path_factory.mktemp("review_browser"))


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    with playwright_api.sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium_profile")), executable_path=CHROMIUM, args=ARGS, headless=True,
            viewport={"width": 1200, "height": 800})
        yield context
        context.close()


@pytest.fixture()
def session(results, tmp_path):
    started = start_review(results, tmp_path / "reviewed", port=0, reader="dr test")
    thread = threading.Thread(target=started.server.serve_forever, daemon=True)
    thread.start()
    yield started
    started.server.shutdown()
    started.server.server_close()


def _manifest(session) -> dict[str, dict[str, str]]:
    path = session.app.store.out_dir / "manifest.csv"
    with open(path, newline="", encoding="utf-8") as handle:
        return {r["review_key"]: r for r in csv.DictReader(handle) if r["image"] == session.app.studies[0].image}


def _open(browser, url: str):
    page = browser.new_page()
    page.goto(url)
    page.wait_for_selector("body[data-state=ready]", timeout=15000)
    return page


def _screen(page, session, point: list[float]) -> tuple[float, float]:
    """Where the page draws an image point: the film fitted to the canvas and centred (the page's fit)."""
    rows, cols = read_image(session.app.studies[0].image).pixels.shape
    box = page.locator("#view").bounding_box()
    s = min(box["width"] / cols, box["height"] / rows)
    return (box["x"] + (box["width"] - cols * s) / 2 + point[0] * s,
            box["y"] + (box["height"] - rows * s) / 2 + point[1] * s)


def test_grade_by_key_and_dragged_point_persist_across_a_reload(browser, session):
    page = _open(browser, session.url)
    first = session.app.studies[0].vertebrae[0]
    assert page.get_attribute("#vertebra", "data-key") == first.key
    page.keyboard.press("3")  # severe; the page then selects the next vertebra
    page.wait_for_selector(f"#vertebra[data-key]:not([data-key='{first.key}'])")
    page.wait_for_selector("#status:text('saved')")
    assert _manifest(session)[first.key]["label"] == CLASSES[3]
    second = session.app.studies[0].vertebrae[1]
    x, y = _screen(page, session, second.points[0])
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(x - 12, y - 9, steps=4)
    page.mouse.up()
    page.wait_for_selector("#status:text('saved')")
    page.wait_for_selector("#vertebra .review:has-text('edit 1')")
    saved = _manifest(session)
    assert second.key not in saved  # points moved, not yet graded: in review.csv, not in the manifest
    page.keyboard.press("1")
    page.wait_for_selector(f"#vertebra[data-key]:not([data-key='{second.key}'])")
    page.wait_for_selector("#status:text('saved')")
    row = _manifest(session)[second.key]
    moved = [float(row[c]) for c in POINT_COLUMNS]
    assert moved[0] < second.points[0][0] - 5 and moved[1] < second.points[0][1] - 3  # the dragged point moved
    assert moved[2:] == [c for p in second.points[1:] for c in p]  # the other five stayed
    assert float(row["x_min"]) == min(moved[0::2]) and row["label"] == CLASSES[1] and row["source"] == "reader"
    page.reload()
    page.wait_for_selector("body[data-state=ready]")
    items = page.locator("#list li")
    assert items.nth(0).locator("b").inner_text() == CLASSES[3] and items.nth(1).locator("b").inner_text() == CLASSES[1]
    assert "✓" in items.nth(0).inner_text() and "✓" not in items.nth(2).inner_text()
    assert "1 vertebrae" not in page.inner_text("#progress") and "2 vertebrae" in page.inner_text("#progress")
    page.close()


def test_two_tabs_do_not_lose_an_edit(browser, session):
    a, b = _open(browser, session.url), _open(browser, session.url)  # both loaded before either edits
    first = session.app.studies[0].vertebrae[0]
    a.keyboard.press("2")
    a.wait_for_selector("#status:text('saved')")
    x, y = _screen(b, session, first.points[5])  # tab b still shows the unedited vertebra
    b.mouse.move(x, y)
    b.mouse.down()
    b.mouse.move(x + 8, y + 6, steps=3)
    b.mouse.up()
    b.wait_for_selector("#status:text('saved')")
    row = _manifest(session)[first.key]
    assert row["label"] == CLASSES[2] and row["version"] == "2"
    assert float(row["ip_x"]) > first.points[5][0] + 4
    a.close()
    b.close()


def test_off_loopback_the_token_is_required(results, tmp_path, browser):
    started = start_review(results, tmp_path / "reviewed", host="0.0.0.0", port=0)
    threading.Thread(target=started.server.serve_forever, daemon=True).start()
    try:
        token = started.app.token
        assert token and f"?token={token}" in started.url
        base = f"http://127.0.0.1:{started.server.server_address[1]}"
        for path in ("/", "/api/studies", "/api/image/0.png", f"/api/studies?token=x{token}"):
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(base + path, timeout=10)
            assert refused.value.code == 403
        request = urllib.request.Request(base + "/api/edit", data=json.dumps({"study": 0, "key": "v0", "changes": {
            "label": "mild"}}).encode(), headers={"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        assert refused.value.code == 403 and not (tmp_path / "reviewed" / "review.csv").exists()
        page = _open(browser, f"{base}/?token={token}")  # the page carries the token on to every request
        page.keyboard.press("1")
        page.wait_for_selector("#status:text('saved')")
        assert (tmp_path / "reviewed" / "manifest.csv").read_text(encoding="utf-8").count("\n") == 2
        page.close()
    finally:
        started.server.shutdown()
        started.server.server_close()


def test_the_page_requests_nothing_outside_its_server(browser, session):
    page = browser.new_page()
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    page.goto(session.url)
    page.wait_for_selector("body[data-state=ready]")
    page.keyboard.press("n")  # the next study: another film
    page.wait_for_selector("#study-name:has-text('study 2 of')")
    page.wait_for_selector("body[data-state=ready]")
    origin = session.url.rstrip("/")
    assert requested and all(url.startswith(origin + "/") for url in requested), requested
    assert any("/api/image/1.png" in url for url in requested)
    page.close()



def test_explains_top_patches_are_a_toggle(browser, results, tmp_path):
    from spine_dfl.explain.inputs import explain_inputs

    film = sorted((results.parent / "cohort" / "images").iterdir())[0]
    explain_inputs(results.parent / "grader.pt", [film], results.parent / "cohort" / "rois.csv", tmp_path / "explain",
                   top_n=2, device="cpu")
    started = start_review(results, tmp_path / "reviewed", port=0, explain=tmp_path / "explain")
    threading.Thread(target=started.server.serve_forever, daemon=True).start()
    try:
        page = _open(browser, started.url)
        assert page.is_visible("#patches-toggle") and page.is_checked("#show-patches")
        page.keyboard.press("t")
        assert not page.is_checked("#show-patches")
        page.keyboard.press("n")  # the second film was not explained: no toggle
        page.wait_for_selector("#study-name:has-text('study 2 of')")
        page.wait_for_selector("body[data-state=ready]")
        assert not page.is_visible("#patches-toggle")
        page.close()
    finally:
        started.server.shutdown()
        started.server.server_close()
