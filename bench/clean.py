"""Benchmark of `trendyol_clf.clean` against imagededup (PHash) and cleanvision on real photos with injected copies.

Builds, under a temporary folder, a dataset of real photos from `../shared/data/clothing-small`
with copies of a sample of them (byte copies, PNG re-saves, resized, re-encoded, cropped, WebP,
brightened, darkened, padded to a square with white, copied into another class) and broken files
(empty, truncated, HTML), then reports per kind the recall of the copy-original pairs, the precision
of the pairs found, the recall of broken files, images per second, and a projection of the
cleaner's time to 100k images from two measured sizes. Times are medians of `--repeats` runs, for
the cleaner and imagededup alike.
Run: `python bench/clean.py [--photos 1600] [--copies 30] [--repeats 3] [--enlarge 1]`; `--enlarge 3`
stands in for the full-size photos the scraper fetches with `--image-size 0` (about 1200x1600).
"""
import argparse
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageEnhance

from trendyol_clf import clean as cleaner
from trendyol_clf.clean import clean, list_images
from trendyol_clf.core import shared_path

KINDS = ("exact", "png", "resized", "reencoded", "cropped", "webp", "brightened", "darkened", "padded",
         "other_class")


def make_copy(source: Path, kind: str, classes: list, rng: random.Random) -> Path:
    "Write a copy of `source` of `kind` beside it (or in another class) and return its path"
    target = source.with_name(f"{source.stem}_{kind}.jpg")
    if kind == "exact":
        target = target.with_suffix(source.suffix); shutil.copy(source, target); return target
    image = Image.open(source).convert("RGB")
    w, h = image.size
    options, suffix = dict(quality=90), ".jpg"
    if kind == "png": suffix, options = ".png", {}
    elif kind == "resized":
        scale = rng.uniform(.4, .8)
        image = image.resize((int(w*scale), int(h*scale)), Image.LANCZOS)
    elif kind == "reencoded": options = dict(quality=rng.choice([35, 50, 65]))
    elif kind == "cropped":
        cut = [int(side*rng.uniform(.02, .08)) for side in (w, h, w, h)]
        image = image.crop((cut[0], cut[1], w - cut[2], h - cut[3]))
    elif kind == "webp": suffix, options = ".webp", dict(quality=rng.choice([60, 80]))
    elif kind in ("brightened", "darkened"):
        factor = rng.uniform(1.2, 1.4) if kind == "brightened" else rng.uniform(.6, .8)
        image = ImageEnhance.Brightness(image).enhance(factor)
    elif kind == "padded":  # centred on a white square (a square photo on a 3:4 canvas), as shops pad photos
        shape = 3/4 if w == h else 1
        canvas = Image.new("RGB", (max(w, round(h*shape)), max(h, round(w/shape))), "white")
        canvas.paste(image, ((canvas.width - w)//2, (canvas.height - h)//2))
        image = canvas
    elif kind == "other_class":
        target = source.parents[1]/rng.choice([c for c in classes if c != source.parent.name])/target.name
    target = target.with_suffix(suffix)
    image.save(target, **options)
    return target


def source_photos(source: Path|None) -> list[Path]:
    "The photos to build from: the shared clothing photos, or every image under `source`"
    if source is None: return sorted(shared_path("data", "clothing-small").glob("*/*/*.jpg"))
    found = sorted(p for p in Path(source).rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".webp"))
    if not found: raise SystemExit(f"No .jpg, .jpeg, .png or .webp files under {source}: pass a folder of photos")
    return found


def build(dest: Path, photos: int, copies: int, seed=0, enlarge=1.0, source: Path|None=None):
    "The benchmark dataset: `photos` real photos, `copies` copies of each kind, broken files; truth tables"
    rng = random.Random(seed)
    found = source_photos(source)
    originals = []
    for f in rng.sample(found, min(photos, len(found))):  # each in a class named after its folder
        (dest/f.parent.name).mkdir(parents=True, exist_ok=True)
        target, number = dest/f.parent.name/f.name, 1
        while target.exists(): target, number = target.with_name(f"{f.stem}~{number}{f.suffix}"), number + 1
        if enlarge == 1: shutil.copy(f, target)
        else:  # a stand-in for full-size downloads: the photo enlarged, saved as the CDN would
            with Image.open(f) as photo:
                size = (round(photo.width*enlarge), round(photo.height*enlarge))
                photo.convert("RGB").resize(size, Image.LANCZOS).save(target, quality=90)
        originals.append(target)
    classes = sorted(p.name for p in dest.iterdir())
    needed = copies*len(KINDS) + copies*3
    if len(originals) < needed or len(classes) < 2:
        raise SystemExit(f"{len(originals)} photos in {len(classes)} folders: {copies} copies of each kind need "
                         f"{needed} photos in two folders or more; pass a smaller --copies or more photos")
    sources = iter(rng.sample(originals, needed))
    truth = [dict(copy=make_copy(s, kind, classes, rng), source=s, kind=kind)
             for kind in KINDS for s in [next(sources) for _ in range(copies)]]
    broken = []
    for i in range(copies):
        source = next(sources).read_bytes()
        for kind, content in [("empty", b""), ("truncated", source[:int(len(source)*rng.uniform(.3, .9))]),
                              ("html", b"<!DOCTYPE html><html><head><title>404</title></head></html>")]:
            path = dest/rng.choice(classes)/f"broken_{kind}_{i}.jpg"
            path.write_bytes(content); broken.append(dict(path=path, kind=kind))
    rel = lambda p: p.relative_to(dest).as_posix()
    truth = pd.DataFrame([dict(copy=rel(t["copy"]), source=rel(t["source"]), kind=t["kind"]) for t in truth])
    return truth, pd.DataFrame([dict(path=rel(b["path"]), kind=b["kind"]) for b in broken])


def score_pairs(name: str, pairs: set, truth: pd.DataFrame, seconds: float, files: int) -> dict:
    "Recall per kind of the copy-source pairs, precision of all `pairs` found (frozensets of two relative paths)"
    groups = {}
    for copy, source in zip(truth["copy"], truth.source): groups[copy] = groups[source] = source
    components = _components(pairs)
    def found(t): return components.get(t.copy, t.copy) == components.get(t.source, t.source)
    row = dict(tool=name)
    for kind, part in truth.groupby("kind", sort=False):
        row[kind] = np.mean([found(t) for t in part.itertuples()])
    right = [p for p in pairs if len({groups.get(x, x) for x in p}) == 1]
    row.update(recall=np.mean([found(t) for t in truth.itertuples()]),
               precision=len(right)/len(pairs) if pairs else float("nan"), pairs=len(pairs),
               wrong_pairs=len(pairs) - len(right), images_per_s=files/seconds, seconds=seconds)
    return row


def _components(pairs) -> dict:
    "Representative of the connected group of each path in `pairs`"
    parent = {}
    def root(x):
        parent.setdefault(x, x)
        while parent[x] != x: parent[x] = parent[parent[x]]; x = parent[x]
        return x
    for a, b in (tuple(p) for p in pairs): parent[root(a)] = root(b)
    return {x: root(x) for x in list(parent)}


def timed(function, repeats: int):
    "The last result of `function()` and the median of its times over `repeats` calls"
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
    return result, float(np.median(times))


def run_ours(data: Path, truth, broken, repeats=3, exact_search_below=5_000, name="trendyol-clf"):
    report, seconds = timed(lambda: clean(data, dry_run=True, exact_search_below=exact_search_below), repeats)
    pairs = {frozenset((r.path, r.duplicate_of)) for r in report.itertuples() if r.duplicate_of}
    files = len(list_images(data))
    row = score_pairs(name, pairs, truth, seconds, files)
    flagged = dict(zip(report.path, report.issue))
    row["broken_recall"] = np.mean([b.path in flagged for b in broken.itertuples()])
    copies = set(truth["copy"])
    wrong = [p for p in pairs if not p & copies]
    return row, wrong


def stages(data: Path) -> str:
    "Where `clean`'s time goes on `data`: inspecting, the candidate search, the strict checks and pixel comparisons"
    start = time.perf_counter()
    rows = cleaner._inspect_all(data, list_images(data), 64, None)
    inspected = time.perf_counter()
    cleaner.candidate_pairs([row for row in rows if row["issue"] is None])
    searched = time.perf_counter()
    cleaner.find_duplicates(data, rows)  # searches again, then checks
    checked = time.perf_counter()
    return (f"listing and inspecting {inspected - start:.2f} s, candidate search {searched - inspected:.2f} s, "
            f"strict checks and pixel comparisons {checked - searched - (searched - inspected):.2f} s")


def run_imagededup(data: Path, truth, repeats=3, thresholds=(2, 4, 6, 8, 10, 12)):
    try: from imagededup.methods import PHash
    except ImportError: return [dict(tool="imagededup PHash", note="not installed: pip install imagededup")]
    import logging; logging.disable(logging.WARNING)
    hasher, files = PHash(verbose=False), len(list_images(data))
    encodings, encoded = timed(lambda: hasher.encode_images(image_dir=data, recursive=True), repeats)
    rows = []
    for threshold in thresholds:
        start = time.perf_counter()
        found = hasher.find_duplicates(encoding_map=encodings, max_distance_threshold=threshold)
        seconds = encoded + time.perf_counter() - start
        pairs = {frozenset((Path(a).as_posix(), Path(b).as_posix())) for a, others in found.items() for b in others}
        rows.append(score_pairs(f"imagededup PHash ≤{threshold}", pairs, truth, seconds, files))
    return rows


def run_cleanvision(data: Path, truth, broken):
    "cleanvision's exact and near duplicates; it stops at the first broken file, so it is given the sound ones"
    try: from cleanvision import Imagelab
    except ImportError: return [dict(tool="cleanvision", note="not installed: pip install cleanvision")]
    sound = [str(p) for p in list_images(data) if p.relative_to(data).as_posix() not in set(broken.path)]
    files = len(sound)
    start = time.perf_counter()
    lab = Imagelab(filepaths=sound)
    lab.find_issues({"exact_duplicates": {}, "near_duplicates": {}}, verbose=False)
    seconds = time.perf_counter() - start
    pairs = set()
    for issue in ("exact_duplicates", "near_duplicates"):
        for group in lab.info[issue]["sets"]:
            members = [Path(p).relative_to(data).as_posix() for p in group]
            pairs |= {frozenset((members[0], m)) for m in members[1:]}
    return [score_pairs("cleanvision defaults", pairs, truth, seconds, files)]


def imagededup_rate(rows) -> float:
    "The images/s of imagededup's fastest setting among `rows`, NaN when it did not run"
    rates = [r["images_per_s"] for r in rows if r["tool"].startswith("imagededup") and "images_per_s" in r]
    return max(rates) if rates else float("nan")


def main():
    cleaner.progress_bar = lambda items, **kwargs: items  # bars redrawn in a terminal would bury the tables
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=1600, help="real photos in the full-size set")
    parser.add_argument("--copies", type=int, default=30, help="injected copies of each kind")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each timing; the median is shown")
    parser.add_argument("--source", type=Path, default=None,
                        help="a folder of other photos to build from (its sub-folders become classes); "
                             "default: the shared clothing photos")
    parser.add_argument("--enlarge", type=float, default=1.0,
                        help="enlarge the photos (about 400x533) this many times, as a stand-in for full-size ones")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-clean-"))
    try:
        data = work/"DATA"
        truth, broken = build(data, args.photos, args.copies, enlarge=args.enlarge, source=args.source)
        files = len(list_images(data))
        photos = files - len(truth) - len(broken)
        print(f"{files} files: {photos} photos, {len(truth)} copies of {len(KINDS)} kinds, {len(broken)} broken; "
              f"{subprocess.run(['nproc'], capture_output=True, text=True).stdout.strip()} cores, shared machine")
        ours, wrong = run_ours(data, truth, broken, args.repeats)
        graph, _ = run_ours(data, truth, broken, args.repeats, exact_search_below=1, name="trendyol-clf, graphs")
        parts = stages(data)  # before the other tools' imports make this process heavier to fork
        rows = [ours, graph, *run_imagededup(data, truth, args.repeats), *run_cleanvision(data, truth, broken)]
        table = pd.DataFrame(rows).set_index("tool")
        with pd.option_context("display.width", 250, "display.max_columns", 30, "display.precision", 3):
            print(table.drop(columns=["seconds"], errors="ignore").to_string())
        if wrong:
            print(f"{len(wrong)} pairs between two original photos (not injected), to look at:",
                  sorted(tuple(sorted(p)) for p in wrong)[:10])
        print(f"trendyol-clf at {ours['images_per_s']/imagededup_rate(rows):.2f}x the rate of imagededup's "
              f"fastest setting; {parts}")
        small = work/"SMALL"
        build(small, photos//2, max(1, args.copies//2), seed=1, enlarge=args.enlarge, source=args.source)
        _, small_seconds = timed(lambda: clean(small, dry_run=True, exact_search_below=1), args.repeats)
        sizes, times = [len(list_images(small)), files], [small_seconds, graph["seconds"]]
        exponent = np.log(times[1]/times[0])/np.log(sizes[1]/sizes[0])
        per_image = (times[1] - times[0])/(sizes[1] - sizes[0])
        print(f"graph (HNSW) search, as used from 5,000 images: {sizes[0]} files in {times[0]:.1f} s, "
              f"{sizes[1]} in {times[1]:.1f} s; time grows as n^{exponent:.2f}")
        print(f"projection for 100,000 images: {times[1] + per_image*(100_000 - sizes[1]):.0f} s linear, "
              f"{times[1]*(100_000/sizes[1])**exponent:.0f} s by the measured exponent")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
