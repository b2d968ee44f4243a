"""Make the documentation screenshots in nbs/images/ from real runs: `python tools/screenshots.py`

A tiny MobileNetV2 is fine-tuned once, as in `nbs/04_widgets.ipynb` (one epoch at 64 px on 12
photos of each of three classes of the shared clothing photos). Headless Chromium then takes:

- `classifier_widget.png` and `review_widget.png`: `ClassifierWidget` after uploading two photos
  and a file that is not one, and `ReviewWidget` over the validation photos' top losses, both
  rendered from their widget state by `@jupyter-widgets/html-manager`, the package that draws
  ipywidgets outside a kernel with the same views and styles as JupyterLab;
- `app.png`: the Streamlit app served by `AppServer`, after uploading two photos and a text file.

The html-manager comes from the npm registry (`npm pack`, into a temporary folder), or from the
`dist/` folder of the unpacked package named by `HTML_MANAGER_DIST`, for offline runs.
Needs Chromium (`/usr/bin/chromium`, or the path in `CHROMIUM`) and the shared test material
(`../shared`, or `TRENDYOL_CLF_SHARED`). Writes nothing outside `nbs/images/` and temporary
folders. A shot that fails (say, a photo the page could not load) is reported and left unchanged,
the others are still taken, and the script exits with status 1.
"""
import functools
import http.server
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import warnings
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from ipywidgets.embed import __html_manager_version__, dependency_state, embed_snippet
from PIL import Image, ImageChops
from playwright.sync_api import sync_playwright

from trendyol_clf.app import AppServer
from trendyol_clf.core import shared_path
from trendyol_clf.train import load_predictor, sample_dataset, train_classifier
from trendyol_clf.widgets import ClassifierWidget, ReviewWidget

IMAGES = Path(__file__).resolve().parents[1]/"nbs"/"images"
CLASSES = ["hat", "pants", "shoes"]
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
MAX_PNG_BYTES = 300_000
WAIT_MS = 120_000
STREAMLIT_MEDIA_HINT = ("Streamlit 1.60 and 1.61 answer photos with HTTP 500 under Starlette 1.4 "
                        "or newer: use Streamlit 1.62 or newer, or Starlette older than 1.4")


def train_tiny_model(work: Path):
    "The tiny `Learner`, trained on a copy of three classes under `work`, and its `model.pkl`"
    checkpoints = work/"torch"/"hub"/"checkpoints"
    checkpoints.mkdir(parents=True)
    shutil.copy(shared_path("weights", "mobilenet_v2-b0353104.pth"), checkpoints)
    os.environ["TORCH_HOME"] = str(work/"torch")
    links = sample_dataset(shared_path("data", "clothing-small"), work/"links", per_class=12,
                           classes=CLASSES)
    data = Path(shutil.copytree(links, work/"data", symlinks=False))
    model = work/"model"/"model.pkl"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        learn = train_classifier(data, arch="mobilenet_v2", size=64, epochs=1, bs=16, out=model,
                                 keep_best=False)
    return learn, model


def validation_photos() -> list[Path]:
    "The two real photos every shot uploads: a hat and a pair of shoes, as in the notebooks"
    folder = shared_path("data", "clothing-small", "validation")
    return [sorted((folder/"hat").glob("*.jpg"))[0], sorted((folder/"shoes").glob("*.jpg"))[1]]


def upload_entry(name: str, content: bytes) -> dict:
    "One file as ipywidgets 8's `FileUpload` holds it after a browser upload"
    return dict(name=name, type="", size=len(content), content=memoryview(content),
                last_modified=datetime.now(timezone.utc))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def crop_to_content(image: Image.Image, margin: int=16) -> Image.Image:
    "`image` without the plain border around its content, keeping `margin` pixels of it"
    corner = image.getpixel((image.width - 1, image.height - 1))
    difference = ImageChops.difference(image, Image.new("RGB", image.size, corner)).convert("L")
    box = difference.point(lambda value: 255 if value > 8 else 0).getbbox()
    if box is None: return image
    left, top, right, bottom = box
    return image.crop((max(left - margin, 0), max(top - margin, 0),
                       min(right + margin, image.width), min(bottom + margin, image.height)))


def save_png(screenshot: Path, name: str) -> Path:
    "Crop `screenshot`, save it optimised as `nbs/images/name`, in 256 colours if it is too big"
    image = crop_to_content(Image.open(screenshot).convert("RGB"))
    IMAGES.mkdir(parents=True, exist_ok=True)
    path = IMAGES/name
    image.save(path, optimize=True)
    if path.stat().st_size > MAX_PNG_BYTES:
        palette = image.quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
        palette.save(path, optimize=True)
    print(f"nbs/images/{name}: {image.width}x{image.height} px, {path.stat().st_size/1000:.0f} kB",
          flush=True)
    return path


def check_images(page, what: str, hint: str=""):
    "Wait until every image of `page` has finished loading; `RuntimeError` if any of them failed"
    page.wait_for_function("[...document.images].every(image => image.complete)", timeout=WAIT_MS)
    broken = page.evaluate("[...document.images].filter(i => !i.naturalWidth).map(i => i.src)")
    if broken:
        raise RuntimeError(f"{what} shows {len(broken)} broken image(s), such as "
                           f"{broken[0][:80]}. {hint}")


def shoot_app(browser, model: Path, work: Path) -> Path:
    "Upload two photos and a text file to the app serving `model`, and photograph its answer"
    photos, notes = validation_photos(), work/"notes.txt"
    notes.write_text("not a photo\n")
    expected = load_predictor(model).predict(photos, top_k=1)
    with AppServer(model, port=free_port(), timeout=120) as server:
        page = browser.new_page()
        page.set_viewport_size({"width": 1100, "height": 2400})  # Streamlit scrolls inside the page
        page.goto(server.url)
        page.get_by_text(f"Classes: {', '.join(CLASSES)}").wait_for(timeout=WAIT_MS)
        page.locator('input[type="file"]').set_input_files([*map(str, photos), str(notes)])
        for (label, probability), in expected:
            page.get_by_text(f"{label}: {probability:.0%}").first.wait_for(timeout=WAIT_MS)
        page.get_by_text("notes.txt is not an image").wait_for(timeout=WAIT_MS)
        charts = page.locator('[data-testid="stVegaLiteChart"]')
        charts.nth(len(photos) - 1).wait_for(timeout=WAIT_MS)
        page.locator('[data-testid="stStatusWidget"]').wait_for(state="hidden", timeout=WAIT_MS)
        check_images(page, "The app", STREAMLIT_MEDIA_HINT)
        time.sleep(1)  # the charts' entry animation
        page.screenshot(path=str(work/"app-raw.png"))
        page.close()
    return save_png(work/"app-raw.png", "app.png")


def html_manager(work: Path) -> Path:
    "The `dist/` folder of `@jupyter-widgets/html-manager`, the version `ipywidgets.embed` uses"
    if os.environ.get("HTML_MANAGER_DIST"): return Path(os.environ["HTML_MANAGER_DIST"])
    package = f"@jupyter-widgets/html-manager@{__html_manager_version__}"
    subprocess.run(["npm", "pack", package, "--cache", str(work/"npm-cache"), "--pack-destination",
                    str(work), "--silent"], check=True, stdout=subprocess.DEVNULL, timeout=300)
    archive, = work.glob("jupyter-widgets-html-manager-*.tgz")
    with tarfile.open(archive) as tar: tar.extractall(work/"html-manager", filter="data")
    return work/"html-manager"/"package"/"dist"


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    "A static file handler that logs nothing"
    def log_message(self, *args): pass


@contextmanager
def served(folder: Path):
    "The address of a local web server for the files of `folder`, while the `with` block runs"
    handler = functools.partial(QuietHandler, directory=folder)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try: yield f"http://127.0.0.1:{server.server_port}"
    finally: server.shutdown()


# the host page gives the widgets JupyterLab's interface font, as a notebook's output area does
PAGE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{title}</title>
<style>body {{margin: 0; background: white; font-size: 13px;
              font-family: system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif}}
       #shot {{display: inline-block; padding: 12px 16px}}</style>
</head><body><div id="shot">{snippet}</div></body></html>
"""


def shoot_widget(browser, widget, name: str, site: Path, address: str) -> Path:
    "Render `widget` from its state with the html-manager served from `site`, and photograph it"
    snippet = embed_snippet([widget], state=dependency_state([widget]), requirejs=False, cors=False,
                            embed_url=f"{address}/dist/embed.js")
    page_name = name.replace(".png", ".html")
    (site/page_name).write_text(PAGE.format(title=type(widget).__name__, snippet=snippet))
    page = browser.new_page()
    page.set_viewport_size({"width": 1100, "height": 800})
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(f"{address}/{page_name}")
    page.locator("#shot .widget-vbox").first.wait_for(timeout=WAIT_MS)
    page.wait_for_load_state("networkidle")
    if errors: raise RuntimeError(f"The widget page {page_name} failed: {errors}")
    check_images(page, f"The widget page {page_name}")
    page.locator("#shot").screenshot(path=str(site/name))
    page.close()
    return save_png(site/name, name)


def classifier_widget(model: Path) -> ClassifierWidget:
    "The classifier widget after an upload of two real photos and a file that is not an image"
    widget = ClassifierWidget(model)
    widget.upload.value = (*[upload_entry(p.name, p.read_bytes()) for p in validation_photos()],
                           upload_entry("prices.csv", b"name,price\n"))
    return widget


def review_widget(learn) -> ReviewWidget:
    "The review of the validation photos, the largest loss marked *delete*, the next *move to*"
    with learn.no_bar(): review = ReviewWidget(learn, per_page=8)
    review.choose(0, "delete")
    review.choose(1, f"move to {review.visible.iloc[1].predicted}")
    return review


def browser_environment(work: Path) -> dict:
    "This environment with Chromium's crash reports and caches kept under `work`, not in the home"
    folders = {"HOME": "home", "XDG_CONFIG_HOME": "config", "XDG_CACHE_HOME": "cache"}
    moved = {variable: str(work/"chromium"/name) for variable, name in folders.items()}
    return {**os.environ, **moved}


def main() -> int:
    "Take every shot, report those that failed, and return the exit status"
    started, failed = time.monotonic(), []
    with tempfile.TemporaryDirectory(prefix="trendyol-screenshots-") as temporary:
        work = Path(temporary)
        learn, model = train_tiny_model(work)
        print(f"Trained the tiny model in {time.monotonic() - started:.0f} s", flush=True)
        site = work/"site"
        site.mkdir()
        shutil.copytree(html_manager(work), site/"dist")
        with sync_playwright() as playwright, served(site) as address:
            browser = playwright.chromium.launch_persistent_context(
                str(work/"chromium-profile"), executable_path=CHROMIUM, headless=True,
                args=CHROMIUM_FLAGS, env=browser_environment(work))
            shots = {"classifier_widget.png": lambda: shoot_widget(
                         browser, classifier_widget(model), "classifier_widget.png", site, address),
                     "review_widget.png": lambda: shoot_widget(
                         browser, review_widget(learn), "review_widget.png", site, address),
                     "app.png": lambda: shoot_app(browser, model, work)}
            try:
                for name, shoot in shots.items():
                    try: shoot()
                    except Exception as error:
                        failed.append(name)
                        print(f"nbs/images/{name} not made: {error}", file=sys.stderr, flush=True)
            finally: browser.close()
    print(f"{len(shots) - len(failed)} of {len(shots)} screenshots made in "
          f"{time.monotonic() - started:.0f} s", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
