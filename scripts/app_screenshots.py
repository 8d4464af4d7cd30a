"""Screenshots of the demo for docs/app.md: the main screen and every tab, 1440 px and 400 px wide.

    .venv/bin/python scripts/app_screenshots.py                 # shipped checkpoint -> docs/app-screens/
    .venv/bin/python scripts/app_screenshots.py --preset tiny    # quick run on an untrained tiny model

Builds the app in this process on the shipped checkpoint, serves it on a free loopback port, and drives
Debian's headless Chromium with Playwright's Python package (as tests/test_app_browser.py does; never
`playwright install`): uploads assets/examples/scene.png, asks EXPRESSION, then opens each tab. Each
PNG is reduced to a 128-colour palette so it stays small (no text is resampled).
"""
from __future__ import annotations

import argparse
import io
import os
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
SCENE = ROOT / "assets" / "examples" / "scene.png"
EXPRESSION = "the red circle"
TABS = [("Regions", "regions", "#regions-img img"), ("Attention", "attention", "#attention-img img"),
        ("Prototypes", "prototypes", "#clusters-img img"), ("Language", "language", "#word-heat img")]
TIMEOUT_MS = 120_000


def save_small(png: bytes, path: Path, colors: int = 128) -> int:
    """Write a screenshot as a palette PNG (about 3x smaller than RGB); returns its size in bytes."""
    from PIL import Image

    img = Image.open(io.BytesIO(png)).convert("RGB").quantize(colors=colors, method=Image.Quantize.MEDIANCUT)
    img.save(path, optimize=True)
    return path.stat().st_size


def wait_image(page, selector: str) -> None:
    loc = page.locator(selector).first
    loc.wait_for(state="visible", timeout=TIMEOUT_MS)
    page.wait_for_function("el => el.complete && el.naturalWidth > 0", arg=loc.element_handle(), timeout=TIMEOUT_MS)


def open_tab(page, label: str) -> None:
    """Select a tab; on a narrow page Gradio moves the last tabs into an overflow menu (the "..." button)."""
    tab = page.get_by_role("tab", name=label)
    if tab.count() and tab.first.is_visible():
        tab.first.click()
        return
    page.locator(".overflow-menu button").first.click()
    page.locator(".overflow-dropdown button", has_text=label).first.click()


def shoot(url: str, out: Path, widths=(1440, 400)) -> list:
    from playwright.sync_api import expect, sync_playwright

    written = []
    exe = CHROMIUM if os.path.exists(CHROMIUM) else shutil.which("chromium")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=ARGS, headless=True)
        for width in widths:
            page = browser.new_page(viewport={"width": width, "height": 900})
            page.set_default_timeout(TIMEOUT_MS)
            page.goto(url, wait_until="domcontentloaded")
            page.locator("#input-image input[type=file]").set_input_files(str(SCENE))
            expect(page.locator("#status")).to_contain_text("Image ready", timeout=TIMEOUT_MS)
            box = page.locator("#expression textarea, #expression input").first
            box.fill(EXPRESSION)
            box.press("Enter")
            expect(page.locator("#status")).to_contain_text("Target found", timeout=TIMEOUT_MS)
            wait_image(page, "#overlay img")
            page.wait_for_timeout(500)
            path = out / f"main-{width}.png"
            written.append((path, save_small(page.screenshot(full_page=True), path)))
            for label, name, selector in TABS:
                open_tab(page, label)
                wait_image(page, selector)
                page.wait_for_timeout(700)
                path = out / f"{name}-{width}.png"
                written.append((path, save_small(page.locator("#outputs").screenshot(), path)))
            page.close()
        browser.close()
    return written


def main() -> int:  # noqa: D103
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(ROOT / "docs" / "app-screens"))
    ap.add_argument("--checkpoint", default=None, help="default: the shipped checkpoint")
    ap.add_argument("--preset", default=None, help="an untrained preset instead (e.g. tiny)")
    ap.add_argument("--widths", type=int, nargs="+", default=[1440, 400])
    args = ap.parse_args()

    from app.service import ModelThread, load_model
    from app.ui import create_app, launch_options

    runner = ModelThread(max(1, min(2, os.cpu_count() or 1)))
    loaded = runner.run(load_model, args.checkpoint, preset=args.preset)
    demo = create_app(loaded.predictor, notice=loaded.notice, source=loaded.source, runner=runner, card=loaded.card)
    opts = launch_options("127.0.0.1", 0)
    opts.pop("server_port")
    opts.update(prevent_thread_lock=True, quiet=True)
    _app, url, _ = demo.launch(**opts)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        for path, size in shoot(url, out, tuple(args.widths)):
            print(f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}: {size / 1024:.0f} KB")
    finally:
        demo.close()
        runner.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
