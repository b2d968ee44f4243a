"Training, export and prediction on real photos: small images, one short epoch, the offline MobileNetV2 weights"
import csv
import importlib.util
import io
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from fastai.learner import load_learner
from PIL import Image

from trendyol_clf.core import shared_path
from trendyol_clf.train import (MissingWeightsError, class_balance, create_learner, evaluate, image_dataloaders,
                                image_files, load_predictor, sample_dataset, train_classifier)

CLASSES = ["dress", "hat", "pants", "shoes", "t-shirt"]


@pytest.fixture(scope="module")
def torch_home(tmp_path_factory):
    "A torch cache holding only the offline MobileNetV2 weights"
    home = tmp_path_factory.mktemp("torch-home")
    (home/"hub"/"checkpoints").mkdir(parents=True)
    shutil.copy(shared_path("weights", "mobilenet_v2-b0353104.pth"), home/"hub"/"checkpoints")
    return home


@pytest.fixture(scope="module")
def small(clothing_small, tmp_path_factory):
    "40 training and 20 validation photos of each of five classes"
    dest = tmp_path_factory.mktemp("small")
    sample_dataset(clothing_small, dest, per_class=40, classes=CLASSES)
    for folder in (dest/"validation").iterdir():
        for extra in sorted(folder.iterdir())[20:]: extra.unlink()
    return dest


@pytest.fixture(scope="module")
def trained(small, torch_home, tmp_path_factory):
    "A MobileNetV2 fine-tuned for one short epoch at 64 px, and where it was exported"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TORCH_HOME", str(torch_home))
        out = tmp_path_factory.mktemp("model")/"model.pkl"
        learn = train_classifier(small, arch="mobilenet_v2", size=64, epochs=1, bs=32, out=out, lr=3e-3)
    return learn, out


def test_transfer_learning_transfers(trained, small, monkeypatch, torch_home):
    learn, out = trained
    pretrained = evaluate(out, small)["accuracy"]
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    scratch = train_classifier(small, arch="mobilenet_v2", size=64, epochs=1, bs=32, pretrained=False, out=None,
                               lr=3e-3)
    from_scratch = evaluate(scratch, small)["accuracy"]
    assert pretrained > 0.55, pretrained            # chance is 0.2
    assert pretrained > from_scratch + 0.25, (pretrained, from_scratch)


def test_exported_files_predict_as_before_export(trained, small):
    learn, out = trained
    photos = image_files(small/"validation")[::7]
    before = np.stack([learn.predict(p)[2].numpy() for p in photos])
    assert {p.name for p in out.parent.iterdir()} >= {"model.pkl", "model.safetensors", "model.json"}
    for form in (out.with_suffix(".json"), out.with_suffix(".safetensors"), out):
        predictor = load_predictor(form)
        assert predictor.classes == CLASSES and predictor.size == 64
        after = predictor.probabilities(photos)
        assert (after.argmax(1) == before.argmax(1)).all()
        np.testing.assert_allclose(after, before, atol=1e-4)
    reloaded = load_learner(out)
    assert [reloaded.predict(p)[0] for p in photos[:3]] == [CLASSES[i] for i in before[:3].argmax(1)]


def test_predictor_takes_paths_pil_and_bytes(trained, small):
    learn, out = trained
    predictor = load_predictor(out.with_suffix(".json"))
    photo = image_files(small/"validation")[0]
    as_path, as_pil, as_bytes = predictor.predict([photo, Image.open(photo), photo.read_bytes()], top_k=5)
    assert as_path == as_pil == as_bytes
    assert [label for label, _ in as_path] == sorted(CLASSES, key=lambda c: -dict(as_path)[c])
    assert sum(p for _, p in as_path) == pytest.approx(1, abs=1e-4)
    grey = io.BytesIO(); Image.new("L", (90, 120), 128).save(grey, "PNG")
    assert len(predictor.predict(grey.getvalue(), top_k=2)[0]) == 2
    with pytest.raises(ValueError, match="image 1 .*not an image"):
        predictor.predict([photo, b"<html>not a photo</html>"])


def _coloured_dataset(root, products_per_class=6, photos_per_product=3):
    "Synthetic photos of two classes in the scraper's layout, with product groups in `manifest.csv`"
    rows = []
    for label, colour in (("red", (200, 30, 30)), ("blue", (30, 30, 200))):
        for product in range(products_per_class):
            group = f"{label}-g{product//2}"
            for k in range(photos_per_product):
                path = root/label/f"{label}{product}_{k}.jpg"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (80 + 10*k, 100), tuple(c + 5*product for c in colour)).save(path)
                rows.append(dict(path=f"{label}/{path.name}", product_id=f"{label}{product}", product_group_id=group,
                                 folder=label, status="ok"))
    with open(root/"manifest.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0])); writer.writeheader(); writer.writerows(rows)
    (root/"_removed"/"red").mkdir(parents=True)
    Image.new("RGB", (80, 100)).save(root/"_removed"/"red"/"junk_0.jpg")
    (root/"red"/"notes.txt").write_text("not an image")
    return {r["path"]: r["product_group_id"] for r in rows}


def test_grouped_split_keeps_product_groups_apart(tmp_path):
    groups = _coloured_dataset(tmp_path)
    for seed in range(5):
        dls = image_dataloaders(tmp_path, size=32, bs=4, valid_pct=0.3, seed=seed)
        assert dls.split_kind == "product groups"
        sides = [{groups[p.relative_to(tmp_path).as_posix()] for p in ds.items} for ds in (dls.train_ds, dls.valid_ds)]
        assert sides[0] and sides[1] and not sides[0] & sides[1]
        assert len(dls.train_ds) + len(dls.valid_ds) == len(groups)
    assert list(dls.vocab) == ["blue", "red"]
    assert class_balance(tmp_path, valid_pct=0.3)[["train", "valid"]].to_numpy().sum() == len(groups)


def test_missing_weights_is_a_clear_error(small, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path/"empty-cache"))
    with pytest.raises(MissingWeightsError, match=r"resnet50.*--weights PATH.*--no-pretrained"):
        train_classifier(small, size=32, epochs=1, out=None)
    weights = shared_path("weights", "mobilenet_v2-b0353104.pth")
    learn = create_learner(image_dataloaders(small, size=32, cache=False), "mobilenet_v2", weights=weights)
    first = learn.model[0][0][0][0].weight
    assert torch.equal(first, torch.load(weights, weights_only=True)["features.0.0.weight"])
    assert first.requires_grad is False  # the pretrained body starts frozen
    with pytest.raises(MissingWeightsError, match="does not exist"):
        train_classifier(small, arch="mobilenet_v2", size=32, epochs=1, out=None, weights=tmp_path/"nothing.pth")


def test_command_line(trained, small, tmp_path, torch_home):
    learn, out = trained
    bin_dir = os.path.dirname(sys.executable)
    run = lambda command, *args: subprocess.run([shutil.which(command, path=f"{bin_dir}:{os.environ['PATH']}"),
                                                 *args], capture_output=True, text=True,
                                                env={**os.environ, "TORCH_HOME": str(torch_home)})
    evaluated = run("trendyol-evaluate", str(out.with_suffix(".json")), str(small))
    assert evaluated.returncode == 0, evaluated.stderr
    last = evaluated.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"accuracy: 0\.\d{4}", last), last
    assert abs(float(last.split()[1]) - evaluate(out, small)["accuracy"]) < 1e-4
    folder = small/"validation"/"shoes"
    photo = image_files(small/"validation"/"hat")[0]
    (tmp_path/"broken.jpg").write_bytes(b"\xff\xd8 truncated")
    predicted = run("trendyol-predict", str(out), str(folder), str(photo), str(tmp_path/"broken.jpg"),
                    "--top-k", "2")
    lines = [line.split("\t") for line in predicted.stdout.strip().splitlines()]
    assert len(lines) == 2*(len(image_files(folder)) + 1)
    assert all(len(line) == 3 and line[1] in CLASSES and 0 <= float(line[2]) <= 1 for line in lines)
    assert predicted.returncode != 0 and "broken.jpg" in predicted.stderr


@pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None, reason="needs the onnx extra")
def test_predicting_from_model_onnx_needs_neither_torch_nor_fastai(trained, small, tmp_path):
    learn, out = trained
    assert out.with_suffix(".onnx").exists()
    photos = image_files(small/"validation")[::7]
    argv = ["trendyol-predict", str(out), *map(str, photos), "--top-k", "1"]
    script = ("import sys\nfrom trendyol_clf.predict import predict_cli\n"
              f"sys.argv = {argv!r}\n"
              "predict_cli()\n"
              "print('loaded:', *sorted(m for m in ('torch', 'fastai', 'torchvision') if m in sys.modules))")
    (tmp_path/"predict.py").write_text(script)  # run as a script, the way the console script runs
    done = subprocess.run([sys.executable, str(tmp_path/"predict.py")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    *lines, loaded = done.stdout.strip().splitlines()
    assert loaded == "loaded:"  # none of the heavy libraries
    on_torch = load_predictor(out, backend="torch").predict(photos, top_k=1)
    expected = [[str(p), best[0][0]] for p, best in zip(photos, on_torch)]
    assert [line.split("\t")[:2] for line in lines] == expected
    assert max(abs(float(line.split("\t")[2]) - best[0][1]) for line, best in zip(lines, on_torch)) < 1e-3
