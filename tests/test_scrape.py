"End-to-end tests of `trendyol_clf.scrape` against the local fake Trendyol, faults switched on"
import hashlib
import io
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from trendyol_clf.core import shared_path
from trendyol_clf.fake import FakeTrendyol, _resized
from trendyol_clf.scrape import scrape, verify_image

FAULTS = dict(latency=0.002, error_rate=0.05, throttle_rate=0.01, retry_after=1, truncate_rate=0.03,
              html_rate=0.02, broken_rate=0.04, missing_rate=0.02, sparse_rate=0.1, seed=7)


def templates(): return shared_path("fixtures", "trendyol-search", "erkek-t-shirt-x-g2-c73")


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    "A small labelled folder: 3 classes of real clothing photos, 25 each"
    root = tmp_path_factory.mktemp("photos")
    train = shared_path("data", "clothing-small", "train")
    for name in ["hat", "shorts", "skirt"]:
        (root/name).mkdir()
        for fn in sorted((train/name).glob("*.jpg"))[:25]: (root/name/fn.name).write_bytes(fn.read_bytes())
    return root


@pytest.fixture(scope="module")
def other_shop(tmp_path_factory):
    "A catalogue unlike the shared one: scikit-image samples and variations, PNGs, grey and RGBA, an empty class"
    data = pytest.importorskip("skimage.data")
    root = tmp_path_factory.mktemp("other")
    classes = {"space": [data.astronaut(), data.rocket(), data.hubble_deep_field()],
               "cats": [data.chelsea(), data.cat()], "drinks": [data.coffee()],
               "grey": [data.camera(), data.coins()], "logos": [data.logo()]}
    for name, arrays in classes.items():
        (root/name).mkdir()
        for n, array in enumerate(arrays):
            for k, variant in enumerate([array, array[:, ::-1], array[::2, ::2], np.rot90(array)]):
                img = Image.fromarray(np.ascontiguousarray(variant))
                suffix = ".png" if img.mode in ("L", "RGBA") else ".jpg"
                img.save(root/name/f"{n}-{k}{suffix}")
    (root/"empty").mkdir()
    return root


def expected_images(fake, max_products=None):
    "(folder, product id, image index) of every photo the fake holds for the first `max_products` of each category"
    return {(p.category.folder, p.id, k) for slug, products in fake.shop.items()
            for p in products[:max_products] for k in range(1, len(p.images) + 1)}


def read_manifest(dest): return pd.read_csv(dest/"manifest.csv", keep_default_na=False)


def files_on_disk(dest):
    return sorted(p.relative_to(dest).as_posix() for p in dest.glob("*/*") if p.is_file())


def run(fake, dest, **options):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return scrape(dest, fake.catalogue.resolve(), catalogue=fake.catalogue, api_base=fake.api_base,
                      cdn_base=fake.cdn_base, show_progress=False, **options)


def test_every_photo_arrives_once_despite_faults(photos, tmp_path):
    with FakeTrendyol(photos, card_templates=templates(), **FAULTS) as fake:
        summary = run(fake, tmp_path, max_images=None)
    table, expected = read_manifest(tmp_path), expected_images(fake)
    assert set(zip(table.folder, table.product_id, table.image_index)) == expected
    assert len(table) == len(expected)
    ok, failed = table[table.status == "ok"], table[table.status == "failed"]
    assert sorted(ok.path) == files_on_disk(tmp_path)  # only whole photos on disk, none twice
    gone = fake.broken | fake.missing
    assert set(failed.url.str.split("/-").str[1]) == gone and len(failed) == len(gone)
    assert failed.error.str.contains("HTTP 404").sum() == len(fake.missing)
    assert len(gone) > 0 and len(ok) > 50
    for row in ok.itertuples():
        data = (tmp_path/row.path).read_bytes()
        assert hashlib.sha256(data).hexdigest() == row.sha256 and len(data) == int(row.bytes)
        source = fake.files[row.url.split("/-", 1)[1]]
        assert data == _resized(source, 400, None, True)  # the right photo under the right name
        assert Image.open(io.BytesIO(data)).size == (int(row.width), int(row.height)) == (400, int(row.height))
    assert summary.set_index("folder")[["ok", "failed"]].sum(axis=1).to_dict() == \
        table.groupby("folder").size().to_dict()
    sparse = table[table.name == ""]
    assert 0 < len(sparse) < len(table) and (sparse.product_group_id == "").all()
    assert (table[table.name != ""].brand != "").all()
    assert fake.statuses[503] > 0 and fake.statuses[429] > 0


def test_rerun_downloads_nothing_and_keeps_one_row_per_photo(photos, tmp_path):
    options = dict(max_products=10, max_images=2)
    with FakeTrendyol(photos, broken_rate=0.05) as fake:
        first = run(fake, tmp_path, retries=1, **options)
    before = read_manifest(tmp_path)
    with FakeTrendyol(photos, broken_rate=0.05) as fake:
        second = run(fake, tmp_path, retries=1, **options)
        photo_requests = sum(n for path, n in fake.hits.items() if path.startswith("/mnresize"))
    after = read_manifest(tmp_path)
    assert second.ok.sum() == 0 and second.skipped.sum() == first.ok.sum() > 0
    assert photo_requests == 2 * first.failed.sum()  # only the broken photos are asked for again
    assert len(after) == len(before)
    assert set(after.status) == {"skipped", "failed"}
    assert (after.set_index("path").sha256.drop("", errors="ignore") ==
            before.set_index("path").sha256.drop("", errors="ignore")).all()


def test_resume_repairs_what_is_missing(photos, tmp_path):
    options = dict(max_products=6, max_images=2)
    with FakeTrendyol(photos) as fake: run(fake, tmp_path, **options)
    table = read_manifest(tmp_path)
    lost, damaged, unrecorded = [tmp_path/p for p in table.path[:3]]
    lost.unlink()                                           # a photo deleted by hand
    damaged.write_bytes(damaged.read_bytes()[:100])         # a photo cut short on disk
    kept = table[table.path != unrecorded.relative_to(tmp_path).as_posix()]
    kept.to_csv(tmp_path/"manifest.csv", index=False)        # a row the crash lost, its file kept
    stale = lost.with_name(".stale.part"); stale.write_bytes(b"half")
    with FakeTrendyol(photos) as fake:
        summary = run(fake, tmp_path, **options)
        fetched = {path for path in fake.hits if path.startswith("/mnresize")}
    assert summary.ok.sum() == 2 and summary.skipped.sum() == len(table) - 2
    assert {tuple(p.split("/")[-3:-1]) for p in fetched} == {tuple(f.stem.split("_")) for f in (lost, damaged)}
    assert not stale.exists()
    after = read_manifest(tmp_path)
    assert len(after) == len(table) and sorted(after.path) == files_on_disk(tmp_path)
    assert after.set_index("path").loc[unrecorded.relative_to(tmp_path).as_posix(), "status"] == "skipped"
    for row in after.itertuples(): verify_image((tmp_path/row.path).read_bytes())


KILLED_RUN = """
import sys
from trendyol_clf.fake import build_shop
from trendyol_clf.scrape import scrape
catalogue = build_shop(sys.argv[1])[0]
scrape(sys.argv[2], catalogue.resolve(), catalogue=catalogue, api_base=sys.argv[3], cdn_base=sys.argv[3],
       max_images=None, workers=4, show_progress=False)
"""


def test_a_killed_run_leaves_no_partial_photo_and_loses_no_row(photos, tmp_path):
    with FakeTrendyol(photos, latency=0.05) as fake:
        child = subprocess.Popen([sys.executable, "-c", KILLED_RUN, str(photos), str(tmp_path), fake.api_base])
        manifest, start = tmp_path/"manifest.csv", time.monotonic()
        # 21 lines: the header and the 20 rows the assertion below expects before the kill
        while time.monotonic() - start < 60 and (not manifest.exists() or len(manifest.read_text().splitlines()) < 21):
            time.sleep(0.05)
        child.send_signal(signal.SIGKILL); child.wait()
        table = read_manifest(tmp_path)
        assert 20 <= len(table) < len(fake.files)
        on_disk = files_on_disk(tmp_path)
        assert set(table.path) <= set(on_disk)
        for name in on_disk:
            if not Path(name).name.startswith("."): verify_image((tmp_path/name).read_bytes())
        summary = run(fake, tmp_path, max_images=None)
    assert summary.failed.sum() == 0 and summary.skipped.sum() >= len(table)
    assert summary.ok.sum() + summary.skipped.sum() == len(fake.files)
    assert sorted(read_manifest(tmp_path).path) == files_on_disk(tmp_path)


def test_other_catalogue_full_size_png_and_empty_category(other_shop, tmp_path):
    with FakeTrendyol(other_shop, images_per_product=5, sparse_rate=0.3, seed=2) as fake:
        summary = run(fake, tmp_path, max_images=None, image_size=None)
        cdn_base = fake.cdn_base
    table = read_manifest(tmp_path).set_index("path")
    assert summary.set_index("folder").loc["empty", ["products", "ok", "failed"]].tolist() == [0, 0, 0]
    assert len(table) == len(fake.files) and set(table.status) == {"ok"}
    counts = table.groupby("product_id").size()
    assert counts.min() == 1 and counts.max() > 2
    for path, row in table.iterrows():
        source = fake.files[row.url[len(cdn_base):]]
        assert (tmp_path/path).read_bytes() == source.read_bytes()  # full size: the very file
        assert Path(path).suffix == source.suffix
    assert {"PNG", "JPEG"} == set(table.format)


def test_limits_ads_and_a_category_that_cannot_be_listed(photos, tmp_path):
    with FakeTrendyol(photos, card_templates=templates()) as fake:
        fake.catalogue.add("socks-x-c999", "socks", "socks")
        with pytest.warns(UserWarning, match="Could not list socks"):
            summary = scrape(tmp_path, "hat,socks", catalogue=fake.catalogue, max_products=4, max_images=1,
                             api_base=f"http://127.0.0.1:9,{fake.api_base}", cdn_base=fake.cdn_base,
                             retries=0, show_progress=False)
        with_ads = run(fake, tmp_path/"ads", include_ads=True, max_products=1000, max_images=1)
        without = run(fake, tmp_path/"organic", max_products=1000, max_images=1)
        with pytest.raises(ConnectionError, match="No category could be listed"), pytest.warns(UserWarning):
            scrape(tmp_path, "hat", catalogue=fake.catalogue, api_base="http://127.0.0.1:9", retries=0,
                   show_progress=False)
    by_folder = summary.set_index("folder")
    assert by_folder.loc["hat", ["products", "ok"]].tolist() == [4, 4]  # listed through the second host
    assert "HTTP 404" in by_folder.loc["socks", "error"] and by_folder.loc["socks", "products"] == 0
    assert with_ads.products.tolist() == without.products.tolist()  # ads are products of the category too
    assert set(read_manifest(tmp_path/"ads").card_type) == {"PRODUCT", "ADS"}
    assert set(read_manifest(tmp_path/"organic").card_type) == {"PRODUCT"}


def test_command_line(photos, tmp_path):
    with FakeTrendyol(photos) as fake:
        slugs = ",".join(fake.catalogue.find(name).slug for name in ["skirt", "hat"])  # new slugs join by name
        result = subprocess.run(["trendyol-scrape", str(tmp_path), "--categories", slugs,
                                 "--max-products", "3", "--max-images", "2", "--image-size", "200",
                                 "--api-base", fake.api_base, "--cdn-base", fake.cdn_base, "--workers", "4"],
                                capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "photos downloaded" in result.stdout and "skirt" in result.stdout
    table = read_manifest(tmp_path)
    assert set(table.folder) == {"hat", "skirt"} and (table.width == 200).all()
    assert table.groupby("folder").product_id.nunique().tolist() == [3, 3]


def test_command_line_names_an_unknown_category(tmp_path):
    result = subprocess.run(["trendyol-scrape", str(tmp_path), "--categories", "socks"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "Unknown category 'socks'" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path/"manifest.csv").exists()
