"The whole chain offline: fake Trendyol with faults, scrape, clean, train, evaluate, predict; and resuming"
import csv
import importlib.util
import shutil
import subprocess

import pytest

from trendyol_clf.pipeline import StageRecords, run_demo
from trendyol_clf.train import MissingWeightsError, sample_dataset

classes = ["pants", "shoes", "t-shirt"]


@pytest.fixture(scope="module")
def torch_home(tmp_path_factory, monkeypatch_module):
    "A private torch cache holding the offline MobileNetV2 ImageNet weights"
    from trendyol_clf.core import shared_path
    home = tmp_path_factory.mktemp("torch")
    (home/"hub"/"checkpoints").mkdir(parents=True)
    shutil.copy(shared_path("weights", "mobilenet_v2-b0353104.pth"), home/"hub"/"checkpoints")
    monkeypatch_module.setenv("TORCH_HOME", str(home))
    return home


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch: yield patch


@pytest.fixture(scope="module")
def photos(tmp_path_factory, clothing_small):
    "30 real photos of each of three classes, as a labelled folder the fake shop serves"
    return sample_dataset(clothing_small/"train", tmp_path_factory.mktemp("shop"), per_class=30, classes=classes)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory, photos, torch_home):
    out = tmp_path_factory.mktemp("run")/"demo"
    return run_demo(out, images=photos, size=64, epochs=1, bs=16, show_progress=False), out


def test_every_photo_arrives_despite_faults_and_the_model_learns(demo_run, photos):
    result, out = demo_run
    assert dict(result.photos) == {c: 30 for c in classes}
    rows = list(csv.DictReader(open(out/"data"/"manifest.csv")))
    assert len(rows) == 90 and {r["status"] for r in rows} == {"ok"}
    onnx_written = ["model.onnx"] if importlib.util.find_spec("onnx") else []  # with the `onnx` extra
    exported = sorted(["model.json", "model.pkl", "model.safetensors", *onnx_written])
    assert sorted(p.name for p in (out/"models").iterdir()) == exported
    assert result.accuracy > 0.6, result.accuracy
    assert "serve it: trendyol-app" in result.summary()


def test_predict_command_reads_the_exported_model(demo_run, photos):
    result, out = demo_run
    shoe = sorted((photos/"shoes").iterdir())[0]
    printed = subprocess.run(["trendyol-predict", str(result.model.with_suffix(".json")), str(shoe), "--top-k", "1"],
                             capture_output=True, text=True, check=True).stdout.strip().split("\t")
    assert printed[0] == str(shoe) and printed[1] in classes and 0 < float(printed[2]) <= 1


def test_rerun_resumes_instead_of_redoing(demo_run, photos):
    result, out = demo_run
    model_time = result.model.stat().st_mtime_ns
    again = run_demo(out, images=photos, size=64, epochs=1, bs=16, show_progress=False)
    assert again.skipped == ["scrape", "clean", "train", "evaluate"]
    assert again.accuracy == result.accuracy and result.model.stat().st_mtime_ns == model_time


def test_a_run_that_failed_in_training_resumes_after_scraping(tmp_path, photos, torch_home):
    out = tmp_path/"crashed"
    with pytest.raises(MissingWeightsError, match="does not exist"):
        run_demo(out, images=photos, size=64, epochs=1, weights=tmp_path/"absent.pth", show_progress=False)
    records = StageRecords(out).records
    assert list(records) == ["scrape", "clean"]
    manifest = (out/"data"/"manifest.csv").read_text()
    result = run_demo(out, images=photos, size=64, epochs=1, bs=16, show_progress=False)
    assert result.skipped == ["scrape", "clean"]
    assert (out/"data"/"manifest.csv").read_text() == manifest


def test_demo_command_explains_missing_weights(tmp_path):
    done = subprocess.run(["trendyol-demo", "--out", str(tmp_path/"demo"), "--weights", str(tmp_path/"none.pth")],
                          capture_output=True, text=True)
    assert done.returncode != 0
    assert "error: Weights file" in done.stderr and "Traceback" not in done.stderr
