"Scaling out: shards on a Dask LocalCluster against the fake Trendyol, a killed worker, gloo training"
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
import warnings

import pandas as pd
import pytest

from trendyol_clf.core import shared_path

distributed = pytest.importorskip("dask.distributed")
pytest.importorskip("accelerate")

from trendyol_clf.clean import clean  # noqa: E402
from trendyol_clf.fake import FakeTrendyol  # noqa: E402
from trendyol_clf.scale import (duplicates_on_dask, manifest_rows, merge_parts, plan_shards,  # noqa: E402
                                scrape_on_dask)
from trendyol_clf.scrape import scrape  # noqa: E402
from trendyol_clf.train import load_predictor, sample_dataset  # noqa: E402


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    "Three classes of real clothing photos, 15 each"
    root = tmp_path_factory.mktemp("photos")
    for name in ["hat", "pants", "skirt"]:
        (root/name).mkdir()
        for fn in sorted(shared_path("data", "clothing-small", "train", name).glob("*.jpg"))[:15]:
            shutil.copy(fn, root/name/fn.name)
    return root


def single_run(fake, dest, max_products):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scrape(dest, fake.catalogue.resolve(), max_products=max_products, max_images=None, api_base=fake.api_base,
               cdn_base=fake.cdn_base, catalogue=fake.catalogue, show_progress=False)


def photo_files(dest):
    "Photo bytes by path, outside the `_parts` folder"
    return {p.relative_to(dest).as_posix(): p.read_bytes() for p in dest.glob("*/*")
            if p.is_file() and not p.relative_to(dest).parts[0].startswith("_")}


def assert_same_dataset(single, merged):
    pd.testing.assert_frame_equal(manifest_rows(single), manifest_rows(merged))
    assert photo_files(single) == photo_files(merged)
    assert len(photo_files(merged)) == (manifest_rows(merged).status == "ok").sum() > 20
    table = pd.read_csv(merged/"manifest.csv", dtype=str)
    assert not table.duplicated(["folder", "product_id", "image_index"]).any()


def test_shards_on_a_local_cluster_merge_into_the_single_run(photos, tmp_path):
    with FakeTrendyol(photos, latency=0.01) as fake:
        single_run(fake, tmp_path/"single", max_products=6)
        shards = plan_shards(fake.catalogue.resolve(), max_products=6, shard_size=2, catalogue=fake.catalogue)
        table = scrape_on_dask(shards, tmp_path/"merged"/"_parts", n_workers=2, max_images=None,
                               api_base=fake.api_base, cdn_base=fake.cdn_base, workers=2)
    assert list(table.shard) == [s.name for s in shards] and (table.products == 2).all()
    merge_parts(tmp_path/"merged"/"_parts", tmp_path/"merged")
    assert_same_dataset(tmp_path/"single", tmp_path/"merged")
    before = (tmp_path/"merged"/"manifest.csv").read_bytes()
    merge_parts(tmp_path/"merged"/"_parts", tmp_path/"merged")  # idempotent
    assert (tmp_path/"merged"/"manifest.csv").read_bytes() == before


@pytest.fixture(scope="module")
def cluster():
    "Two single-threaded worker processes, closed after the module"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        local = distributed.LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None, silence_logs=40)
    yield local
    local.close()


def kill_a_worker_mid_shard(address, work, killed):
    "SIGKILL the worker process of a running shard once its part holds a photo but not all of them"
    with distributed.Client(address) as client:
        pids = client.run(os.getpid)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not killed:
            for worker, keys in client.processing().items():
                for key in keys:
                    part = work/key.split("shard-", 1)[1].rsplit("-", 1)[0]
                    if len(list(part.glob("*/*.jpg"))) >= 2:
                        os.kill(pids[worker], signal.SIGKILL)
                        killed.append((part.name, len(list(part.glob("*/*.jpg")))))
                        return
            time.sleep(0.05)


def test_a_shard_whose_worker_is_killed_is_retried_and_nothing_is_lost(photos, tmp_path, cluster):
    work, killed = tmp_path/"merged"/"_parts", []
    with FakeTrendyol(photos, latency=0.15) as fake:
        single_run(fake, tmp_path/"single", max_products=8)
        shards = plan_shards(fake.catalogue.resolve(), max_products=8, shard_size=4, catalogue=fake.catalogue)
        killer = threading.Thread(target=kill_a_worker_mid_shard, args=(cluster.scheduler_address, work, killed))
        killer.start()
        table = scrape_on_dask(shards, work, scheduler=cluster.scheduler_address, max_images=None,
                               api_base=fake.api_base, cdn_base=fake.cdn_base, workers=1)
        killer.join()
    assert killed, "no worker was killed mid-shard"
    name, photos_before_kill = killed[0]
    rerun = table.set_index("shard").loc[name]
    assert rerun.skipped >= photos_before_kill - 1  # the retried shard kept what it had downloaded
    merge_parts(work, tmp_path/"merged")
    assert_same_dataset(tmp_path/"single", tmp_path/"merged")


def test_hashing_on_dask_finds_what_clean_finds(photos, tmp_path, cluster):
    data = tmp_path/"data"
    shutil.copytree(photos, data)
    first, second = sorted((data/"hat").glob("*.jpg"))[:2]
    shutil.copy(first, data/"hat"/"copy.jpg")
    shutil.copy(second, data/"skirt"/"conflict.jpg")
    (data/"pants"/"broken.jpg").write_bytes(b"not a photo")
    found = duplicates_on_dask(data, scheduler=cluster.scheduler_address)
    report = clean(data, dry_run=True)
    columns = ["path", "issue", "duplicate_of"]
    expected = report[columns].fillna("").sort_values(["issue", "path"]).reset_index(drop=True)
    got = found[columns].fillna("").sort_values(["issue", "path"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(got, expected)
    assert {"duplicate", "conflict", "not_image"} <= set(found.issue)


TRAIN_SCRIPT = """
import json, sys
from fastai.torch_core import rank_distrib
from trendyol_clf import train
from trendyol_clf.scale import train_distributed
seen = []
after_train = train.EpochHistory.after_train
def spy(self): seen.append(self.seen); after_train(self)
train.EpochHistory.after_train = spy
learn = train_distributed(sys.argv[1], arch="mobilenet_v2", size=64, epochs=1, bs=8, out=sys.argv[2],
                          lr=3e-3, head_epochs=4)
record = dict(rank=rank_distrib(), seen=seen, train_items=len(learn.dls.train_ds),
              accuracy=float(learn.recorder.values[-1][-1]))
open(f"{sys.argv[3]}/rank-{rank_distrib()}.json", "w").write(json.dumps(record))
"""


def test_two_gloo_processes_train_one_epoch_and_export_one_model(clothing_small, tmp_path):
    data = sample_dataset(clothing_small, tmp_path/"small", per_class=12, classes=["hat", "pants", "shoes"])
    home = tmp_path/"torch-home"
    (home/"hub"/"checkpoints").mkdir(parents=True)
    shutil.copy(shared_path("weights", "mobilenet_v2-b0353104.pth"), home/"hub"/"checkpoints")
    script, out = tmp_path/"train_two.py", tmp_path/"model"/"model.pkl"
    script.write_text(textwrap.dedent(TRAIN_SCRIPT))
    env = dict(os.environ, TORCH_HOME=str(home), OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               str(script), str(data), str(out), str(tmp_path)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=200)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((tmp_path/f"rank-{r}.json").read_text()) for r in (0, 1)]
    train_items = ranks[0]["train_items"]
    for record in ranks:  # each process saw about half of the epoch's photos (fastai drops a last partial batch)
        assert train_items//2 - 8 <= record["seen"][-1] <= train_items//2 + 8, record
    assert ranks[0]["accuracy"] == ranks[1]["accuracy"]  # validation metrics gathered from both processes
    onnx_written = ["model.onnx"] if importlib.util.find_spec("onnx") else []  # with the `onnx` extra
    exported = sorted(["model.json", "model.pkl", "model.safetensors", *onnx_written])
    assert sorted(p.name for p in out.parent.iterdir()) == exported
    predictor = load_predictor(out)
    assert predictor.classes == ["hat", "pants", "shoes"] and predictor.size == 64
    answers = predictor.predict(sorted((data/"validation"/"hat").glob("*.jpg"))[:2], top_k=1)
    assert len(answers) == 2 and answers[0][0][0] in predictor.classes
