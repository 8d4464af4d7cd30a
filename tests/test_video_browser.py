"""The Video tab in a real browser (Debian's headless Chromium via Playwright, as tests/test_app_browser.py):
upload a generated clip, type an expression, run; the overlay video loads and the browser decodes its
first frame (the H.264 / yuv420p / faststart MP4 plays), and the summary and the masks download appear."""
import os
import shutil
from pathlib import Path

import pytest

from tests.app_helpers import (BROWSER_TIMEOUT_MS, CHROMIUM, CHROMIUM_ARGS, browser_skips, expect,
                               running, sync_playwright, tiny_predictor)

ARGS = CHROMIUM_ARGS
CLIP = Path(__file__).resolve().parents[1] / "assets" / "examples" / "video" / "synth_val_00003.mp4"
TIMEOUT_MS = BROWSER_TIMEOUT_MS

pytestmark = browser_skips()


def test_video_tab_plays_the_overlay_in_a_browser():
    from app.ui import create_app

    demo = create_app(tiny_predictor())
    with running(demo) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM if os.path.exists(CHROMIUM) else shutil.which("chromium"),
                                    args=ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1200})
            page.set_default_timeout(TIMEOUT_MS)
            page.goto(url, wait_until="domcontentloaded")
            page.get_by_role("tab", name="Video").click()
            expect(page.get_by_text("Clips up to 20 s and 300 frames")).to_be_visible()
            page.locator("#video-input input[type=file]").set_input_files(str(CLIP))
            box = page.locator("#video-expression textarea, #video-expression input").first
            box.fill("both rings")
            page.locator("#video-stride input[type=number]").fill("4")
            page.locator("#video-run").click()
            expect(page.locator("#video-summary")).to_contain_text("12 frames", timeout=TIMEOUT_MS)
            video = page.locator("#video-overlay video").first
            expect(video).to_be_attached(timeout=TIMEOUT_MS)
            # readyState >= 2: the browser decoded the first frame of our MP4.
            page.wait_for_function("el => el.readyState >= 2 && el.videoWidth > 0", arg=video.element_handle(),
                                   timeout=TIMEOUT_MS)
            assert video.evaluate("el => [el.videoWidth, el.videoHeight]") == [320, 320]
            link = page.locator("#video-masks a").first
            assert link.get_attribute("href").endswith("/masks.zip")
        finally:
            browser.close()
