"End to end: `trendyol-app` serves the page, headless Chromium uploads a real photo and reads the label"
import shutil
import socket
import subprocess

import pytest
from playwright.sync_api import sync_playwright

from trendyol_clf.app import wait_until_healthy
from trendyol_clf.train import load_predictor
from test_widgets import photos, tiny_model  # noqa: F401 (fixture)

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed: apt-get install chromium "
                                "(bash .ci/system-deps does it) to run the end-to-end browser test")


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def served(tiny_model, tmp_path):
    "The app started by its console script, `trendyol-app MODEL --port N`, and its address"
    command = shutil.which("trendyol-app")
    assert command, "the trendyol-app console script is not installed: pip install -e ."
    port = free_port()
    log = open(tmp_path/"app.log", "w")
    process = subprocess.Popen([command, str(tiny_model), "--port", str(port)], stdout=log, stderr=subprocess.STDOUT,
                               cwd=tmp_path)
    try:
        yield wait_until_healthy(f"http://127.0.0.1:{port}", process, timeout=120)
    finally:
        process.terminate()
        try: process.wait(15)
        except subprocess.TimeoutExpired: process.kill()
        log.close()


@pytest.fixture
def browser_page(tmp_path):
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path/"profile"), executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS,
            viewport={"width": 1100, "height": 800})
        try: yield context.new_page()
        finally: context.close()


def test_upload_a_photo_and_see_its_label(served, browser_page, tiny_model, tmp_path):
    hat = photos("hat", 1)[0]
    (label, probability), = load_predictor(tiny_model).predict([hat], top_k=1)[0]
    page = browser_page
    page.goto(served)
    page.get_by_text("Classes: hat, pants, shoes").wait_for(timeout=120_000)
    (tmp_path/"notes.txt").write_text("not a photo")
    page.locator('input[type="file"]').set_input_files([str(hat), str(tmp_path/"notes.txt")])
    page.get_by_text(f"{label}: {probability:.0%}").wait_for(timeout=120_000)
    page.get_by_text("notes.txt is not an image").wait_for(timeout=30_000)
    photo = page.locator(f'img[alt="{hat.name}"], img[title="{hat.name}"]').first
    if not photo.count(): photo = page.locator('[data-testid="stImage"] img').first
    photo.wait_for(timeout=30_000)
    loaded = photo.evaluate("img => img.complete && img.naturalWidth > 0 ? img.naturalWidth : 0")
    assert loaded > 0, "the uploaded photo is shown as a broken image: the server did not serve it"
    page.screenshot(path=str(tmp_path/"app.png"), full_page=True)
    assert (tmp_path/"app.png").stat().st_size > 10_000
