"""Images/s fetching resized photos from the fake Trendyol (20 ms latency): our scraper, a serial download,
bare pools of 16 threads with no checks (plain `requests`, `requests` without its scan of the
environment on every request, and `urllib3`, which our scraper drives), and img2dataset when it is
installed; then our scraper with 5% of the requests failing, counting the photos lost.

    python bench/scrape.py [--images 1200] [--repeats 3] [--img2dataset-program PATH]

The fake server runs in its own process, so the clients do not share its interpreter lock."""
import json
import multiprocessing
import shutil
import subprocess
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import requests
import urllib3
from fastcore.script import call_parse

from trendyol_clf.core import Catalogue, Category, shared_path
from trendyol_clf.fake import FakeTrendyol
from trendyol_clf.scrape import Fetcher, image_url, list_products, parse_page, scrape, search_url

ACCEPT = {"Accept": "image/jpeg"}


def serve(images, faults, pipe):
    "Run a fake Trendyol until `pipe` says stop; send its bases and categories first"
    templates = shared_path("fixtures", "trendyol-search", "erkek-t-shirt-x-g2-c73")
    with FakeTrendyol(images, images_per_product=5, card_templates=templates, latency=0.02, **faults) as fake:
        pipe.send((fake.api_base, [(c.slug, c.folder, c.label) for c in fake.catalogue]))
        pipe.recv()
        pipe.send(dict(fake.statuses))


class Server:
    "A fake Trendyol in a child process"
    def __init__(self, images, **faults):
        self.pipe, child = multiprocessing.Pipe()
        self.process = multiprocessing.Process(target=serve, args=(images, faults, child), daemon=True)

    def __enter__(self):
        self.process.start()
        self.base, categories = self.pipe.recv()
        self.catalogue = Catalogue([Category(*c) for c in categories])
        return self

    def __exit__(self, *exc):
        self.pipe.send("stop"); self.statuses = self.pipe.recv(); self.process.join(10)


def product_limit(server, images):
    "Products per category so that the listing holds at least `images` photos; the photo URLs"
    fetcher = Fetcher()
    def pages(category):
        return lambda pi, offset: parse_page(fetcher.get(search_url(category.slug, pi, offset, server.base))[0])
    listings = {c: list_products(pages(c), max_products=10_000) for c in server.catalogue}
    for limit in range(1, 10_000):
        urls = [image_url(p, server.base) for cards in listings.values() for card in cards[:limit] for p in card.images]
        if len(urls) >= images: return limit, urls
    raise ValueError(f"The photos hold fewer than {images} images")


def serial(urls, out):
    "One plain `requests.get` after the other, a new connection each, as the original shell loop did"
    out.mkdir(parents=True, exist_ok=True)
    for n, url in enumerate(urls):
        response = requests.get(url, headers=ACCEPT, timeout=30)
        if response.status_code == 200: (out/f"{n}.jpg").write_bytes(response.content)


def bare_pool(urls, out, workers=16, accept=ACCEPT, trust_env=True):
    "16 threads with a keep-alive session each, writing whatever comes back"
    local = threading.local()
    out.mkdir(parents=True, exist_ok=True)
    def fetch(item):
        n, url = item
        if not hasattr(local, "session"):
            local.session = requests.Session()
            local.session.trust_env = trust_env  # False: no scan of the environment on each request
        response = local.session.get(url, headers=accept, timeout=30)
        if response.status_code == 200: (out/f"{n}.jpg").write_bytes(response.content)
    with ThreadPoolExecutor(workers) as pool: list(pool.map(fetch, enumerate(urls)))


def bare_pool_lean(urls, out):
    "The bare pool with `requests` told not to scan the environment per request, as our scraper does"
    bare_pool(urls, out, trust_env=False)


def bare_urllib3(urls, out, workers=16):
    "16 threads sharing one `urllib3` pool manager, the engine our scraper drives, writing whatever comes back"
    out.mkdir(parents=True, exist_ok=True)
    manager = urllib3.PoolManager(maxsize=workers, retries=False, timeout=urllib3.Timeout(30))
    def fetch(item):
        n, url = item
        response = manager.request("GET", url, headers=ACCEPT)
        if response.status == 200: (out/f"{n}.jpg").write_bytes(response.data)
    with ThreadPoolExecutor(workers) as pool: list(pool.map(fetch, enumerate(urls)))


def ours(server, limit, out):
    scrape(out, server.catalogue.resolve(), catalogue=server.catalogue, max_products=limit, max_images=None,
           api_base=server.base, cdn_base=server.base, workers=16, show_progress=False)


def img2dataset(program, urls, out):
    "img2dataset on the same URL list, 16 threads in one process, keeping the bytes as they come"
    out.mkdir(parents=True, exist_ok=True)
    (out/"urls.txt").write_text("\n".join(urls))
    subprocess.run([program, "--url_list", str(out/"urls.txt"), "--output_folder", str(out/"images"),
                    "--thread_count", "16", "--processes_count", "1", "--output_format", "files",
                    "--resize_mode", "no", "--disable_all_reencoding", "True", "--timeout", "30", "--retries", "0"],
                   check=True, capture_output=True)
    return len(list((out/"images").rglob("*.jpg")))


def timed(function, *args):
    start = time.perf_counter(); result = function(*args)
    return time.perf_counter() - start, result


def count(folder): return sum(1 for p in Path(folder).rglob("*") if p.suffix in (".jpg", ".png", ".webp"))


@call_parse
def main(images: int=1200,  # resized photos to fetch, at least
         repeats: int=3,    # runs of the bare pool and of our scraper; the best counts
         img2dataset_program: str="/tmp/scrape/i2d/bin/img2dataset", # img2dataset command; skipped when absent
         photos: str=None,  # labelled photo folder to serve; ../shared/data/clothing-small/train when not given
        ):
    "Print images/s of four ways to fetch the same resized photos, and the photos lost with 5% of requests failing"
    folder = Path(photos) if photos else shared_path("data", "clothing-small", "train")
    work, rows = Path(tempfile.mkdtemp(prefix="bench-scrape-")), []
    with Server(folder) as server:
        limit, urls = product_limit(server, images)
        bare_pool(urls, work/"warm"); bare_pool(urls, work/"warm", accept={"Accept": "*/*"})  # fill the resize cache
        print(f"{len(urls)} photos ({limit} products per category), fake Trendyol with 20 ms latency")
        for name, function, args, times in [
                ("serial requests.get", serial, (urls, work/"serial"), 1),
                ("bare pool, 16 threads, no checks", bare_pool, (urls, work/"pool"), repeats),
                ("bare pool, environment read once", bare_pool_lean, (urls, work/"lean"), repeats),
                ("bare pool of urllib3, no checks", bare_urllib3, (urls, work/"urllib3"), repeats),
                ("trendyol_clf.scrape, 16 threads", ours, (server, limit, work/"ours"), repeats)]:
            best = None
            for _ in range(times):  # the best of `times` fresh runs: the machine may be shared
                shutil.rmtree(args[-1], ignore_errors=True)
                seconds, _ = timed(function, *args)
                best = min(best or seconds, seconds)
            rows.append(dict(method=name, images=count(args[-1]), seconds=best))
        if Path(img2dataset_program).exists() or shutil.which(img2dataset_program):
            startup, _ = timed(img2dataset, img2dataset_program, urls[:1], work/"i2d-startup")
            seconds, got = timed(img2dataset, img2dataset_program, urls, work/"i2d")
            rows.append(dict(method="img2dataset, 16 threads", images=got, seconds=seconds))
            rows.append(dict(method="img2dataset, less its start-up", images=got, seconds=seconds - startup))
        else: print(f"img2dataset not found at {img2dataset_program}: its row is left out")
    faults = dict(error_rate=0.03, throttle_rate=0.01, truncate_rate=0.005, html_rate=0.005, retry_after=1)
    with Server(folder, **faults) as server:
        seconds, _ = timed(ours, server, limit, work/"faults")
    table = pd.read_csv(work/"faults"/"manifest.csv")
    lost = len(urls) - (table.status == "ok").sum()
    failed = sum(n for status, n in server.statuses.items() if status != 200)
    rows.append(dict(method="trendyol_clf.scrape, 5% of requests failing", images=count(work/"faults"),
                     seconds=seconds))
    report = pd.DataFrame(rows).assign(images_per_s=lambda d: (d.images / d.seconds).round(1))
    serial_rate = report.images_per_s[0]
    report["vs_serial"] = (report.images_per_s / serial_rate).round(1)
    print(report.to_string(index=False, float_format=lambda x: f"{x:.2f}"))
    print(f"5% run: {failed} of {sum(server.statuses.values())} requests failed (plus truncated/HTML bodies), "
          f"{lost} photos lost")
    print(json.dumps(dict(report=report.to_dict("records"), lost=int(lost))))
    shutil.rmtree(work)
