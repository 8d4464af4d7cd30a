"""A real browser on the real page: Debian's headless Chromium driven by Playwright's Python package.

Loads the page, uploads an image, types an expression, presses Enter and sees the overlay; then sees
the "No target" banner for an absent object. The tiny model is untrained, so its no-target heads are
forced (tests.app_helpers.force_no_target) to make both outcomes deterministic.

Needs /usr/bin/chromium and `playwright` (scripts/setup_browser.sh installs both; `scripts/setup.sh
--dev` runs it). Never `playwright install`: no browser is downloaded, Debian's is used.
"""
import os
import shutil

import pytest

from tests.app_helpers import SCENE, force_no_target, running, tiny_predictor

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]

try:
    from playwright.sync_api import expect, sync_playwright
except ImportError:  # pragma: no cover - depends on the machine
    sync_playwright = None

pytestmark = [
    pytest.mark.skipif(not (os.path.exists(CHROMIUM) or shutil.which("chromium")),
                       reason=f"{CHROMIUM} is missing: run scripts/setup_browser.sh (apt-get install chromium)"),
    pytest.mark.skipif(sync_playwright is None,
                       reason="the playwright package is missing: run scripts/setup_browser.sh (pip install playwright)"),
]

TIMEOUT_MS = 90_000  # generous: CI shares 2 cores with whatever else runs


@pytest.fixture(scope="module")
def browser_app():
    from app.ui import create_app

    pred = tiny_predictor()
    pred.cfg.inference.threshold = 0.05  # the slider's default: an untrained mask shows up at a low threshold
    force_no_target(pred.model, False)
    demo = create_app(pred, notice="test model")
    with running(demo) as url:
        yield url, pred


@pytest.fixture(scope="module")
def page(browser_app):
    url, _ = browser_app
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM if os.path.exists(CHROMIUM) else shutil.which("chromium"),
                                    args=ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(url, wait_until="domcontentloaded")
        yield page
        browser.close()


def _ask(page, text: str) -> None:
    box = page.locator("#expression textarea, #expression input").first
    box.fill(text)
    box.press("Enter")


def test_upload_type_enter_shows_the_overlay_then_no_target(browser_app, page):
    _, pred = browser_app
    page.wait_for_selector("#expression textarea, #expression input")
    expect(page.locator("#mabp-notice")).to_contain_text("test model")
    page.locator("#input-image input[type=file]").set_input_files(str(SCENE))
    expect(page.locator("#status")).to_contain_text("Image ready (320x320", timeout=TIMEOUT_MS)

    _ask(page, "the red circle")
    expect(page.locator("#status")).to_contain_text("Target found", timeout=TIMEOUT_MS)
    overlay = page.locator("#overlay img").first
    expect(overlay).to_be_visible(timeout=TIMEOUT_MS)
    page.wait_for_function("el => el.complete && el.naturalWidth > 0", arg=overlay.element_handle())
    assert overlay.evaluate("el => [el.naturalWidth, el.naturalHeight]") == [320, 320]  # original resolution
    expect(page.locator("#latency")).to_contain_text("model time")

    force_no_target(pred.model, True)  # same process: the server's model now says "nothing" to everything
    _ask(page, "the purple elephant")
    expect(page.locator("#status")).to_contain_text("No target", timeout=TIMEOUT_MS)
    expect(page.locator("#status")).to_contain_text("p(no target) = 1.00")


def test_empty_expression_shows_an_error_banner_not_a_crash(page):
    _ask(page, "   ")
    expect(page.locator("#status")).to_contain_text("The expression is empty", timeout=TIMEOUT_MS)
    _ask(page, "a green cow")  # the server is still alive (a new text: outputs are cached per text)
    expect(page.locator("#status")).to_contain_text("No target", timeout=TIMEOUT_MS)
