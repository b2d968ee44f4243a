"The notebook widgets driven from Python: uploads, image addresses, and the top-losses review that moves files"
import hashlib
import http.server
import io
import os
import shutil
import socket
import threading
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path

import pytest
from PIL import Image

from trendyol_clf.core import shared_path
from trendyol_clf.train import load_predictor, sample_dataset, train_classifier
from trendyol_clf.widgets import ClassifierWidget, DatasetEditor, ReviewWidget, fetch_image, ImageInputError

CLASSES = ["hat", "pants", "shoes"]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    "A real MobileNetV2 fine-tuned for one epoch at 64 px on three classes, exported; trained once per session"
    root = tmp_path_factory.getbasetemp()/"tiny-model"
    model = root/"model"/"model.pkl"
    if not model.exists():
        checkpoints = root/"torch"/"hub"/"checkpoints"
        checkpoints.mkdir(parents=True)
        shutil.copy(shared_path("weights", "mobilenet_v2-b0353104.pth"), checkpoints)
        os.environ["TORCH_HOME"] = str(root/"torch")
        links = sample_dataset(shared_path("data", "clothing-small"), root/"links", per_class=12, classes=CLASSES)
        shutil.copytree(links, root/"data", symlinks=False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            train_classifier(root/"data", arch="mobilenet_v2", size=64, epochs=1, bs=16, out=model, keep_best=False)
    return model


def photos(label, n, split="validation"):
    return sorted(shared_path("data", "clothing-small", split, label).glob("*.jpg"))[:n]


def upload_entry(name, content):
    "One file as ipywidgets 8's `FileUpload` holds it after a browser upload"
    return dict(name=name, type="", size=len(content), content=memoryview(content),
                last_modified=datetime.now(timezone.utc))


def texts(widget):
    "Every text the widget tree shows"
    found = [str(widget.value)] if isinstance(getattr(widget, "value", None), str) else []
    for child in getattr(widget, "children", ()): found += texts(child)
    return found


def png_of_camera():
    "A photo that is not in the shared data: scikit-image's camera man, as RGB PNG bytes (or a synthetic one)"
    try:
        from skimage import data
        array = data.astronaut()
        image = Image.fromarray(array)
    except ImportError:
        image = Image.radial_gradient("L").convert("RGB").resize((300, 400))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


class Pages(http.server.BaseHTTPRequestHandler):
    "A local web server standing in for the internet"
    def do_GET(self):
        photo = photos("shoes", 1)[0].read_bytes()
        if self.path == "/photo.jpg": return self.answer(200, "image/jpeg", photo)
        if self.path == "/redirect": return self.answer(302, "text/plain", b"", {"Location": "/photo.jpg"})
        if self.path == "/page.html": return self.answer(200, "text/html; charset=utf-8", b"<html>shop</html>")
        if self.path == "/declared-huge.jpg":
            return self.answer(200, "image/jpeg", b"", {"Content-Length": str(50*2**20)}, length=False)
        if self.path == "/endless.jpg": return self.endless()
        if self.path == "/slow.jpg":
            time.sleep(3)
            return self.answer(200, "image/jpeg", photo)
        self.answer(404, "text/plain", b"not found")

    def answer(self, status, kind, body, headers=None, length=True):
        self.send_response(status)
        self.send_header("Content-Type", kind)
        if length: self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items(): self.send_header(key, value)
        self.end_headers()
        try: self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError): pass  # the client gave up, as it should for slow answers

    def endless(self):
        "An image answer without a length that never ends"
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.end_headers()
        try:
            for _ in range(10_000): self.wfile.write(b"\xff"*65536)
        except (BrokenPipeError, ConnectionResetError): pass

    def log_message(self, *args): pass


@pytest.fixture(scope="module")
def web():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Pages)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def closed_port():
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        return unused.getsockname()[1]


def test_uploads_show_predictions_for_each_photo(tiny_model):
    hat, shoes = photos("hat", 1)[0], photos("shoes", 1)[0]
    widget = ClassifierWidget(tiny_model.with_suffix(".json"), top_k=2)
    widget.upload.value = (upload_entry(hat.name, hat.read_bytes()), upload_entry(shoes.name, shoes.read_bytes()),
                           upload_entry("astronaut.png", png_of_camera()))
    expected = load_predictor(tiny_model.with_suffix(".json")).predict([hat, shoes], top_k=2)
    assert [r.name for r in widget.results] == [hat.name, shoes.name, "astronaut.png"]
    for result, wanted in zip(widget.results, expected):
        assert [label for label, _ in result.predictions] == [label for label, _ in wanted]
        assert result.predictions[0][1] == pytest.approx(wanted[0][1], abs=1e-5)
    assert len(widget.results[2].predictions) == 2 and widget.results[2].error is None
    shown = texts(widget)
    assert "Classes: hat, pants, shoes" in " ".join(shown).replace("<b>", "").replace("</b>", "")
    assert f"{expected[0][0][1]:.1%}" in shown and widget.message.value == "3 of 3 classified"
    bars = widget.output.children[0].children[1].children[1:]
    assert [bar.children[1].value for bar in bars] == pytest.approx([p for _, p in expected[0]], abs=1e-5)


def test_non_images_get_a_message_not_a_traceback(tiny_model):
    widget = ClassifierWidget(tiny_model)
    hat = photos("hat", 1)[0]
    widget.upload.value = (upload_entry("report.pdf", b"%PDF-1.4 not really"), upload_entry("empty.jpg", b""),
                           upload_entry("cut.jpg", hat.read_bytes()[:3000]), upload_entry(hat.name, hat.read_bytes()))
    messages = [card.value for card in widget.output.children[:3]]
    assert "report.pdf is not an image" in messages[0] and "upload a JPEG" in messages[0]
    assert "empty.jpg is empty" in messages[1]
    assert "cut.jpg is not an image" in messages[2]
    assert widget.message.value == "1 of 4 classified" and len(widget.results[3].predictions) == 3


def test_oversized_upload_is_refused(tiny_model):
    widget = ClassifierWidget(tiny_model, max_bytes=10_000)
    hat = photos("hat", 1)[0]
    widget.upload.value = (upload_entry(hat.name, hat.read_bytes()),)
    assert "more than the" in widget.output.children[0].value and widget.results[0].predictions == []


def test_the_three_kinds_of_model_give_the_same_predictions(tiny_model):
    from fastai.learner import load_learner
    hat = photos("hat", 1)[0]
    results = []
    for model in [tiny_model, tiny_model.with_suffix(".json"), tiny_model.with_suffix(".safetensors"),
                  load_learner(tiny_model)]:
        widget = ClassifierWidget(model)
        results.append(widget.classify([(hat.name, hat.read_bytes())])[0].predictions)
    for other in results[1:]:
        assert [l for l, _ in other] == [l for l, _ in results[0]]
        assert [p for _, p in other] == pytest.approx([p for _, p in results[0]], abs=1e-4)


def test_image_address_is_classified(tiny_model, web):
    widget = ClassifierWidget(tiny_model)
    for address in [f"{web}/photo.jpg", f"{web}/redirect"]:
        widget.address.value = address
        widget.classify_address.click()
        assert widget.results[0].error is None and widget.results[0].predictions[0][0] in CLASSES


@pytest.mark.parametrize("path, expected", [
    ("/page.html", "text/html document, not an image"),
    ("/missing.jpg", "answered HTTP 404"),
    ("/declared-huge.jpg", "is 50.0 MiB, more than the 1 MiB"),
    ("/endless.jpg", "sent more than the 1 MiB"),
    ("/slow.jpg", "did not answer within 1 s"),
])
def test_address_errors_are_messages_in_the_widget(tiny_model, web, path, expected):
    widget = ClassifierWidget(tiny_model, max_bytes=2**20, timeout=1)
    widget.address.value = web + path
    started = time.monotonic()
    widget.classify_address.click()
    assert expected in widget.output.children[0].value
    assert widget.message.value == "0 of 1 classified" and time.monotonic() - started < 10


def test_unreachable_and_malformed_addresses(tiny_model):
    widget = ClassifierWidget(tiny_model, timeout=2)
    for address, expected in [(f"http://127.0.0.1:{closed_port()}/photo.jpg", "could not be reached"),
                              ("ftp://127.0.0.1/photo.jpg", "not a web address"), ("", "not a web address"),
                              ("www.trendyol.com/photo.jpg", "must start with http")]:
        widget.address.value = address
        widget.classify_address.click()
        assert expected in widget.output.children[0].value, address


def test_fetch_stops_reading_past_the_limit(web):
    with pytest.raises(ImageInputError, match="sent more than"):
        fetch_image(f"{web}/endless.jpg", max_bytes=256*1024)


def digests(folder):
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in folder.rglob("*.jpg")}


def learner_over(data, tiny_model):
    "The tiny model as a fastai `Learner` whose DataLoaders read the photos under `data`"
    from fastai.data.transforms import Normalize
    from fastai.learner import load_learner
    from fastai.vision.data import imagenet_stats
    from trendyol_clf.train import image_dataloaders
    learn = load_learner(tiny_model)
    dls = image_dataloaders(data, size=64, bs=16, cache=False, num_workers=0)
    dls.add_tfms([Normalize.from_stats(*imagenet_stats)], "after_batch")
    assert list(dls.vocab) == list(learn.dls.vocab) == CLASSES
    learn.dls = dls
    return learn


@pytest.fixture
def data_copy(tiny_model, tmp_path):
    return Path(shutil.copytree(tiny_model.parent.parent/"data", tmp_path/"data"))


def test_review_moves_files_and_undo_restores_them(tiny_model, data_copy):
    data = data_copy
    before = digests(data)
    review = ReviewWidget(learner_over(data, tiny_model), per_page=4)
    assert review.editor.data == data.absolute()
    assert list(review.losses.loss) == sorted(review.losses.loss, reverse=True)
    assert len(review.cards.children) == 4
    first, second, third = (review.visible.iloc[i] for i in range(3))
    other = next(c for c in CLASSES if c != second.label)
    review.choose(0, "delete")
    review.choose(1, f"move to {other}")
    assert review.apply() == 2
    assert not first.path.exists() and (data/"_removed"/first.path.relative_to(data)).exists()
    assert (second.path.parent.parent/other/second.path.name).exists() and not second.path.exists()
    assert third.path.exists()
    assert "2 photo(s) moved" in review.message.value
    assert first.path not in set(review.visible.path)  # deleted photos leave the page
    assert (data/"_review_log.csv").exists() and len(DatasetEditor(data).log) == 2
    assert review.undo()["action"] == "relabel" and review.undo()["action"] == "delete"
    assert review.undo() is None and review.message.value == "Nothing to undo"
    assert digests(data) == before


def test_review_pages_and_reports_vanished_files(tiny_model, data_copy):
    review = ReviewWidget(learner_over(data_copy, tiny_model), data_copy, per_page=5)
    first_page = list(review.visible.path)
    review.buttons["Next"].click()
    assert review.page == 1 and set(review.visible.path).isdisjoint(first_page)
    review.buttons["Previous"].click()
    gone = review.visible.iloc[0].path
    gone.unlink()
    review.choose(0, "delete")
    assert review.apply() == 0 and "does not exist" in review.message.value


def test_editor_never_overwrites(tmp_path):
    for label in ["hat", "shoes"]:
        (tmp_path/label).mkdir()
        for photo in photos(label, 2, "train"): shutil.copy(photo, tmp_path/label/"same.jpg" if label == "shoes"
                                                             else tmp_path/label/photo.name)
    editor = DatasetEditor(tmp_path)
    hat = sorted((tmp_path/"hat").iterdir())[0]
    (tmp_path/"shoes"/hat.name).write_bytes(b"another photo with the same name")
    moved = editor.relabel(hat, "shoes")
    assert moved.name == f"{hat.stem}-1{hat.suffix}" and (tmp_path/"shoes"/hat.name).read_bytes().startswith(b"another")
    shutil.copy(moved, hat)
    with pytest.raises(FileExistsError, match="exists again"):
        editor.undo()
    hat.unlink()
    assert editor.undo()["action"] == "relabel" and hat.exists()
    with pytest.raises(ValueError, match="not a class folder name"):
        editor.relabel(hat, "_removed")
