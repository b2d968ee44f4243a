"""When does scaling out pay on this machine? One process against a two-worker Dask `LocalCluster`.

    python bench/scale.py [--photos 1200] [--latency 0.02]

Two measurements, each side by side in one run:

1. Hashing for the cleaner: `inspect_image` over `--photos` real photos of
   `../shared/data/clothing-small`, in one process on a thread per core (what `clean` does), then
   with `inspect_on_dask` on two worker processes (start-up of the cluster included, and without it).
2. Scraping from the fake Trendyol (in its own process, `--latency` seconds per answer): one
   `scrape` with 16 threads, then the same products cut into shards run by `scrape_on_dask` on two
   workers of 8 threads each, plus `merge_parts`; images/s of each, and whether both hold the same files.

Dask and Accelerate come with the `scale` extra. Run it on an idle machine before quoting a figure.
"""
import argparse
import multiprocessing
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import pandas as pd

from trendyol_clf.clean import _inspect_all, list_images
from trendyol_clf.core import Catalogue, Category, shared_path
from trendyol_clf.fake import FakeTrendyol
from trendyol_clf.scale import _client, inspect_on_dask, manifest_rows, merge_parts, plan_shards, scrape_on_dask
from trendyol_clf.scrape import scrape


def sample_photos(dest: Path, count: int) -> Path:
    "A dataset of `count` shared photos (hard links where possible) under `dest/<class>/`"
    every = sorted(shared_path("data", "clothing-small").glob("*/*/*.jpg"))
    for source in every[::max(1, len(every)//count)][:count]:
        target = dest/source.parent.name/source.name
        target.parent.mkdir(parents=True, exist_ok=True)
        try: os.link(source, target)
        except OSError: shutil.copy(source, target)
    return dest


def hashing(data: Path) -> list[dict]:
    "Photos/s of the cleaner's per-photo work in one process and on a two-worker cluster"
    images = list_images(data)
    photos = len(images)
    started = time.perf_counter()
    _inspect_all(data, images, 64, None)
    one = time.perf_counter() - started
    started = time.perf_counter()
    client, cluster = _client(None, 2)
    startup = time.perf_counter() - started
    client.close(); cluster.close()
    started = time.perf_counter()
    inspect_on_dask(data, n_workers=2)
    dask = time.perf_counter() - started
    return [dict(task="hashing", way="one process, a thread per core", photos=photos, seconds=one),
            dict(task="hashing", way="Dask LocalCluster, 2 workers", photos=photos, seconds=dask),
            dict(task="hashing", way="Dask, less its start-up", photos=photos, seconds=dask - startup)]


def serve(images, latency, pipe):
    "Run a fake Trendyol until `pipe` says stop; send its base and categories first"
    with FakeTrendyol(images, images_per_product=5, latency=latency) as fake:
        pipe.send((fake.api_base, [(c.slug, c.folder, c.label) for c in fake.catalogue]))
        pipe.recv()


def scraping(images: Path, latency: float, work: Path, max_products: int) -> list[dict]:
    "Photos/s of one scrape and of the same products in shards on a two-worker cluster"
    pipe, child = multiprocessing.Pipe()
    server = multiprocessing.Process(target=serve, args=(images, latency, child), daemon=True)
    server.start()
    base, categories = pipe.recv()
    catalogue = Catalogue([Category(*c) for c in categories])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            started = time.perf_counter()
            scrape(work/"single", catalogue.resolve(), max_products=max_products, max_images=None, api_base=base,
                   cdn_base=base, catalogue=catalogue, workers=16, show_progress=False)
            one = time.perf_counter() - started
            shards = plan_shards(catalogue.resolve(), max_products=max_products,
                                 shard_size=max(1, max_products//2), catalogue=catalogue)
            started = time.perf_counter()
            scrape_on_dask(shards, work/"sharded"/"_parts", n_workers=2, max_images=None, api_base=base,
                           cdn_base=base, workers=8)
            merge_parts(work/"sharded"/"_parts", work/"sharded")
            dask = time.perf_counter() - started
    finally:
        pipe.send("stop"); server.join(10)
    photos = int((manifest_rows(work/"single").status == "ok").sum())
    same = manifest_rows(work/"single").equals(manifest_rows(work/"sharded"))
    return [dict(task="scraping", way="one scrape, 16 threads", photos=photos, seconds=one),
            dict(task="scraping", way=f"{len(shards)} shards on Dask, 2 workers x 8 threads, + merge",
                 photos=photos, seconds=dask, note="same rows as one scrape" if same else "ROWS DIFFER")]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=1200, help="photos to hash")
    parser.add_argument("--latency", type=float, default=0.02, help="seconds the fake server waits per answer")
    parser.add_argument("--max-products", type=int, default=60, help="products per category to scrape")
    options = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    print(f"{os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.1f}", flush=True)
    try:
        rows = hashing(sample_photos(work/"photos", options.photos))
        print(pd.DataFrame(rows).to_string(index=False), flush=True)
        rows += scraping(shared_path("data", "clothing-small", "train"), options.latency, work, options.max_products)
    finally: shutil.rmtree(work, ignore_errors=True)
    table = pd.DataFrame(rows).fillna("")
    table["photos/s"] = (table.photos/table.seconds).round(1)
    table["seconds"] = table.seconds.round(1)
    print(table.to_string(index=False))
