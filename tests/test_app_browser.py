"""The page in a real browser (Debian's chromium driven by Playwright): upload a clip, caption it, train a few
steps, generate, download the LoRA, and check that every file the page hands out is real.

Needs ``/usr/bin/chromium`` (``apt-get install chromium``) and ``pip install playwright``; Playwright's own browser
download is not used. Without them the test skips locally and FAILS in CI (``CI=true``), so a broken CI image
cannot pass silently. Screenshots go to ``$MOTION_MATCHER_ARTIFACTS`` (default: a pytest temp folder); with
``MOTION_MATCHER_DOCS_SCREENSHOTS=1`` the ones README shows are also written to ``docs/screenshots/`` (how they are
refreshed: by this test, so they show the page as it is).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from pathlib import Path

import pytest
from _app_server import AppServer, make_clip

pytestmark = pytest.mark.browser

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
DOCS_SCREENSHOTS = Path(__file__).resolve().parent.parent / "docs" / "screenshots"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _need(ok: bool, why: str) -> None:
    if ok:
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{why} (CI must install it: apt-get install -y chromium; pip install playwright)")
    pytest.skip(why)


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
    _need(sync_playwright is not None, "the playwright package is not installed")
    _need(Path(CHROMIUM).is_file(), f"{CHROMIUM} is not installed")
    profile = tempfile.mkdtemp(prefix="mm-chromium-")  # a fresh user data dir: no cache, no stored state
    with sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(profile, executable_path=CHROMIUM, args=CHROMIUM_ARGS,
                                                    headless=True, accept_downloads=True,
                                                    viewport={"width": 1280, "height": 1000})
        yield ctx
        ctx.close()
    shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    path = Path(os.environ.get("MOTION_MATCHER_ARTIFACTS") or tmp_path_factory.mktemp("screenshots"))
    path.mkdir(parents=True, exist_ok=True)
    print(f"screenshots in {path}")
    return path


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    srv = AppServer(tiny_model_dir, tmp_path_factory.mktemp("store")).start()
    yield srv
    srv.stop()


def shoot(page, artifacts: Path, name: str, selector: str | None = None) -> None:
    """A screenshot of the page (or one element) into the artifacts; also into docs/screenshots/ when
    MOTION_MATCHER_DOCS_SCREENSHOTS=1 (README links those)."""
    docs = os.environ.get("MOTION_MATCHER_DOCS_SCREENSHOTS") == "1" and name.startswith("app-")
    for folder in [artifacts] + ([DOCS_SCREENSHOTS] if docs else []):
        folder.mkdir(parents=True, exist_ok=True)
        # JPEG for the whole page: a PNG of it is 1.6 MB; the sections stay PNG (text stays sharp).
        kw = {"type": "jpeg", "quality": 80} if name.endswith(".jpg") else {}
        if selector:
            page.locator(selector).screenshot(path=str(folder / name), **kw)
        else:
            page.screenshot(path=str(folder / name), full_page=True, **kw)


def wait_text(page, selector: str, pattern: str, timeout: float = 120.0) -> str:
    """Wait until the element's text matches; fail early and clearly when the page reports a failure."""
    end = time.monotonic() + timeout
    text = ""
    while time.monotonic() < end:
        text = page.locator(selector).inner_text()
        if re.search(pattern, text):
            return text
        if "FAILED" in text:
            raise AssertionError(f"the page reports a failure:\n{text}")
        time.sleep(0.3)
    raise AssertionError(f"{selector} never matched {pattern!r}; last text:\n{text}")


def test_train_generate_download_in_the_browser(browser, server, tiny_model_dir, tmp_path, artifacts):
    from motion_core.config import VideoConfig
    from motion_core.lora_io import load_lora
    from motion_core.models import load_model
    from motion_core.video import probe_video, read_video

    clip = make_clip(tmp_path / "square.mp4")
    page = browser.new_page()
    page.goto(server.url)
    page.locator("#mm-start").wait_for()
    assert page.locator("#mm-start").inner_text().strip() == "Learn motion"  # the name README uses
    assert page.locator("#mm-cancel").is_disabled() and page.locator("#mm-resume").is_disabled()  # nothing to do

    # 1. Reference: upload, caption; the page shows the clip as the model will see it.
    page.locator("#mm-video input[type=file]").set_input_files(str(clip))
    wait_text(page, "#mm-preview-info", r"8 frames at 8 fps", timeout=60)
    page.locator("#mm-caption textarea").fill("a red square moving right")
    # 2. Learn: a few steps set in the advanced section.
    page.get_by_text("Advanced settings").click()
    for sel, value in (("#mm-steps", "3"), ("#mm-rank", "4")):
        box = page.locator(f"{sel} input[type=number]")
        box.fill(value)
        box.press("Tab")
    page.locator("#mm-start").click()
    wait_text(page, "#mm-status", r"step|running|queued|done", timeout=30)
    shoot(page, artifacts, "1-training.png")
    status = wait_text(page, "#mm-status", r"Training run: done")
    assert "Finished 3 steps" in status and re.search(r"[\d.]+ s per step, measured", status)
    job_id = re.search(r"job=([\w-]+)", page.url).group(1)  # the address bar links to the run
    page.locator("#mm-ca img").wait_for(timeout=30_000)
    wait_text(page, "#mm-estimate", r"last measured speed", timeout=30)  # the measured time, not a promise
    assert page.locator("#mm-cancel").is_disabled() and page.locator("#mm-resume").is_disabled()
    shoot(page, artifacts, "2-trained.png")

    # 3. Generate two denoising steps, beside the base model.
    page.locator("#mm-prompt textarea").fill("a blue circle")
    box = page.locator("#mm-sample-steps input[type=number]")
    box.fill("2")
    box.press("Tab")
    page.locator("#mm-generate").click()
    wait_text(page, "#mm-gen-status", r"Generation: done")
    video = page.locator("#mm-result video")
    video.wait_for(timeout=30_000)
    src = video.get_attribute("src")
    got = page.request.get(src if src.startswith("http") else server.url.rstrip("/") + src)
    assert got.ok
    mp4 = tmp_path / "result.mp4"
    mp4.write_bytes(got.body())
    info = probe_video(mp4)
    assert info.codec == "h264" and info.width > info.height  # the LoRA result and the base side by side
    assert read_video(mp4, VideoConfig(num_frames=8, fps=8, height=64, width=128)).shape == (8, 3, 64, 128)
    # The motion report beside it: both videos' motion scores and the plain sentence.
    report = wait_text(page, "#mm-report", r"base model", timeout=30)
    assert re.search(r"motion LoRA\s+[\d.e+-]+ \(\d+ tracks\)", report), report  # table cells: tab-separated
    assert re.search(r"base model\s+[\d.e+-]+ \(\d+ tracks\)", report), report
    assert re.search(r"follows the reference's motion (\d+\.\dx more|about as|less) closely|match the reference's "
                     r"exactly", report), report
    page.locator("#mm-report-img img").wait_for(timeout=30_000)
    # The seed box shows the seed the (random) generation used.
    used = re.search(r"Seed\(s\) (\d+)", page.locator("#mm-gen-status").inner_text()).group(1)
    assert page.locator("#mm-sample-seed input").input_value() == used
    shoot(page, artifacts, "3-generated.png")
    shoot(page, artifacts, "app-end-of-run.jpg")
    shoot(page, artifacts, "app-motion-report.png", ".mm-section >> nth=2")
    shoot(page, artifacts, "app-training.png", ".mm-section >> nth=1")

    # 4. Download the LoRA from the page; it loads into the model.
    link = page.locator('#mm-downloads a[download="lora.safetensors"]')
    with page.expect_download() as dl:
        link.click()
    lora = tmp_path / "lora.safetensors"
    dl.value.save_as(lora)
    meta = load_lora(lora, load_model(str(tiny_model_dir)))
    assert meta["steps"] == 3 and meta["caption"] == "a red square moving right"

    # Reopening the page (a new tab on the run's link) shows the finished run again.
    again = browser.new_page()
    again.goto(f"{server.url}?job={job_id}")
    wait_text(again, "#mm-status", r"Training run: done", timeout=30)
    # ... with its reference clip, caption and settings in sections 1 and 2.
    again.locator("#mm-video video").wait_for(timeout=30_000)
    assert again.locator("#mm-caption textarea").input_value() == "a red square moving right"
    again.get_by_text("Advanced settings").click()
    assert again.locator("#mm-steps input[type=number]").input_value() == "3"
    wait_text(again, "#mm-report", r"base model", timeout=30)
    again.close()
    page.close()
