"""A real browser on the real page: Debian's headless Chromium driven by Playwright's Python package.

Loads the page, uploads an image, types an expression, presses Enter and sees the overlay; then sees
the "No target" banner for an absent object. Then: a typed threshold applied with Enter; the overlay's
contrast inside vs outside the mask measured on a screenshot; the mask download (binary PNG, original
size); the random-scene button twice gives two scenes; a non-image upload leaves a lasting error
banner and no bare "Error" labels. The tiny model is untrained, so its no-target heads are
forced (tests.app_helpers.force_no_target) to make both outcomes deterministic.

Needs /usr/bin/chromium and `playwright` (scripts/setup_browser.sh installs both; `scripts/setup.sh
--dev` runs it). Never `playwright install`: no browser is downloaded, Debian's is used.
"""
import os
import shutil

import pytest

from tests.app_helpers import (BROWSER_TIMEOUT_MS, CHROMIUM, CHROMIUM_ARGS, SCENE, browser_skips, expect,
                               force_no_target, running, sync_playwright, tiny_predictor)

ARGS = CHROMIUM_ARGS

pytestmark = browser_skips()

TIMEOUT_MS = BROWSER_TIMEOUT_MS


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


def _luma(rgb):
    return rgb[..., :3].astype(float) @ [0.299, 0.587, 0.114]


def _png(data: bytes):
    import cv2
    import numpy as np

    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    return cv2.cvtColor(arr, cv2.COLOR_BGR2RGB) if arr.ndim == 3 else arr


def test_overlay_contrast_and_mask_download(browser_app, page):
    """On screen the masked part stands out (pixel statistics of a screenshot of the overlay, against
    the same statistics of the input image); the mask download is a binary PNG of the original size."""
    import cv2
    import numpy as np

    _, pred = browser_app
    force_no_target(pred.model, False)
    page.locator("#input-image input[type=file]").set_input_files(str(SCENE))
    expect(page.locator("#status")).to_contain_text("Image ready (320x320", timeout=TIMEOUT_MS)
    _ask(page, "the pink square")
    expect(page.locator("#status")).to_contain_text("Target found: 100.0%", timeout=TIMEOUT_MS)  # threshold 0.05
    # a typed threshold is applied by Enter: at 0.5 the (seeded, untrained) tiny model marks ~24 %
    number = page.locator("#threshold input[type=number]").first
    number.fill("0.5")
    number.press("Enter")
    expect(page.locator("#status")).not_to_contain_text("100.0%", timeout=TIMEOUT_MS)
    expect(page.locator("#status")).to_contain_text("Target found", timeout=TIMEOUT_MS)
    overlay = page.locator("#overlay img").first
    page.wait_for_function("el => el.complete && el.naturalWidth > 0", arg=overlay.element_handle())
    with page.expect_download() as dl:
        page.locator("#mask-download").click()
    mask = _png(open(dl.value.path(), "rb").read())
    assert mask.shape == (320, 320) and set(np.unique(mask)) <= {0, 255}  # binary, original size
    inside = mask > 0
    assert 0.005 < inside.mean() < 0.995, inside.mean()  # the test needs both parts
    shot = _png(overlay.screenshot())
    # the <img> box letterboxes the picture (object-fit scale-down/contain): crop to the drawn picture
    nw, nh, fit_mode = overlay.evaluate("el => [el.naturalWidth, el.naturalHeight, getComputedStyle(el).objectFit]")
    fit = min(shot.shape[1] / nw, shot.shape[0] / nh)
    fit = min(fit, 1.0) if fit_mode in ("scale-down", "none") else fit
    dw, dh = int(round(nw * fit)), int(round(nh * fit))
    x0, y0 = (shot.shape[1] - dw) // 2, (shot.shape[0] - dh) // 2
    shot = shot[y0:y0 + dh, x0:x0 + dw]
    m = cv2.resize(inside.astype(np.uint8), (shot.shape[1], shot.shape[0]), interpolation=cv2.INTER_NEAREST) > 0
    m = cv2.erode(m.astype(np.uint8), np.ones((7, 7), np.uint8)) > 0  # away from the outline
    out = cv2.erode((~m).astype(np.uint8), np.ones((7, 7), np.uint8)) > 0
    scene = cv2.resize(cv2.cvtColor(cv2.imread(str(SCENE)), cv2.COLOR_BGR2RGB), (shot.shape[1], shot.shape[0]))
    on_screen = _luma(shot)[m].mean() - _luma(shot)[out].mean()
    before = _luma(scene)[m].mean() - _luma(scene)[out].mean()
    assert on_screen - before > 40, (on_screen, before)  # the rest is dimmed: the mask stands out
    sat = lambda a: (a[..., :3].max(-1).astype(int) - a[..., :3].min(-1))  # noqa: E731
    assert sat(shot)[out].mean() < 0.6 * sat(scene)[out].mean() + 1  # and desaturated


def test_random_scene_twice_gives_two_scenes(page):
    import re

    page.locator("#scene-btn").click()
    expect(page.locator("#status")).to_contain_text("Random scene #", timeout=TIMEOUT_MS)
    expect(page.locator("#status")).to_contain_text("Image ready", timeout=TIMEOUT_MS)
    first = re.search(r"Random scene #(\d+)", page.locator("#status").inner_text()).group(1)
    src1 = page.locator("#input-image img").first.get_attribute("src")
    page.locator("#scene-btn").click()
    expect(page.locator("#status")).not_to_contain_text(f"Random scene #{first} ", timeout=TIMEOUT_MS)
    expect(page.locator("#status")).to_contain_text("Image ready", timeout=TIMEOUT_MS)
    second = re.search(r"Random scene #(\d+)", page.locator("#status").inner_text()).group(1)
    assert first != second
    assert page.locator("#input-image img").first.get_attribute("src") != src1
    assert page.locator("#seed input").first.input_value() == "0"  # the box stays at 0: random next time too
    expect(page.locator("#suggestions")).to_be_visible()


def test_non_image_upload_leaves_a_lasting_error_banner(page, tmp_path):
    import time

    _ask(page, "the red circle")
    expect(page.locator("#status")).to_contain_text("Target found", timeout=TIMEOUT_MS)
    bad = tmp_path / "notes.png"
    bad.write_text("this is a text file, not a picture\n" * 20)
    page.locator("#input-image input[type=file]").set_input_files(str(bad))
    expect(page.locator("#status")).to_contain_text("not an image", timeout=TIMEOUT_MS)
    time.sleep(3)  # lasting: still there, and the old result is gone
    assert page.locator(".toast-body", has_text="not an image").count() == 1  # the warning shown once
    expect(page.locator("#status")).to_contain_text("not an image")
    expect(page.locator("#status .mabp-error")).to_have_count(1)
    assert page.locator("#overlay img").count() == 0
    assert page.get_by_text("Error", exact=True).count() == 0  # no bare red "Error" labels
