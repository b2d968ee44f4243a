"The Streamlit app under Streamlit's own test harness: uploads, addresses, limits, one model load"
import shutil
import subprocess

import pytest
from streamlit.testing.v1 import AppTest

import trendyol_clf.app as app
from trendyol_clf.train import load_predictor
from test_widgets import photos, png_of_camera, tiny_model, web  # noqa: F401 (fixtures)


def app_script():
    from trendyol_clf.app import page
    page()


@pytest.fixture
def page(tiny_model, monkeypatch, tmp_path):
    "The app for the tiny model, started in an empty working folder"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(app.MODEL_VARIABLE, str(tiny_model.with_suffix(".json")))
    return AppTest.from_function(app_script, default_timeout=120).run()


def test_first_page_lists_the_classes_and_invites_an_upload(page):
    assert not page.exception
    assert page.title[0].value == "Clothing classifier"
    assert page.caption[0].value == "Classes: hat, pants, shoes"
    assert "Upload photos" in page.info[0].value


def test_uploaded_photos_show_their_labels_and_charts(page, tiny_model):
    hat, pants = photos("hat", 1)[0], photos("pants", 1)[0]
    page.file_uploader[0].set_value([(hat.name, hat.read_bytes(), "image/jpeg"),
                                     (pants.name, pants.read_bytes(), "image/jpeg"),
                                     ("astronaut.png", png_of_camera(), "image/png")])
    page.run()
    expected = load_predictor(tiny_model.with_suffix(".json")).predict([hat, pants], top_k=3)
    assert not page.exception and not page.error
    headings = [s.value for s in page.subheader]
    assert headings[:2] == [f"{labels[0][0]}: {labels[0][1]:.0%}" for labels in expected]
    assert headings[2].split(":")[0] in ["hat", "pants", "shoes"]
    assert len(page.get("vega_lite_chart")) == 3 and len(page.image) == 3


def test_top_k_slider_changes_the_classes_shown(page):
    hat = photos("hat", 1)[0]
    page.file_uploader[0].set_value((hat.name, hat.read_bytes(), "image/jpeg")).run()
    assert page.caption[1].value.count("%") == 3
    page.slider[0].set_value(1).run()
    assert page.caption[1].value.count("%") == 1 and not page.exception


def test_bad_uploads_get_messages_and_nothing_is_written(page, tiny_model, tmp_path):
    model_files = {p.name: p.read_bytes() for p in tiny_model.parent.iterdir()}
    hat = photos("hat", 1)[0]
    page.file_uploader[0].set_value([("model.json", b'{"classes": []}', "application/json"),
                                     ("../model.safetensors", hat.read_bytes(), "image/jpeg"),
                                     ("notes.txt", b"", "text/plain")])
    page.run()
    errors = [e.value for e in page.error]
    assert not page.exception
    assert "model.json is not an image" in errors[0] and "notes.txt is empty" in errors[1]
    assert len(page.subheader) == 1  # the real photo, whatever its name, is still classified
    assert {p.name: p.read_bytes() for p in tiny_model.parent.iterdir()} == model_files
    assert list(tmp_path.iterdir()) == []


def test_upload_limit(tiny_model, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(app.MODEL_VARIABLE, str(tiny_model))
    monkeypatch.setenv(app.UPLOAD_LIMIT_VARIABLE, "0.01")
    at = AppTest.from_function(app_script, default_timeout=120).run()
    hat = photos("hat", 1)[0]
    at.file_uploader[0].set_value((hat.name, hat.read_bytes(), "image/jpeg")).run()
    assert "more than the" in at.error[0].value and not at.subheader


def test_image_address(page, web):
    page.text_input[0].input(f"{web}/photo.jpg").run()
    assert not page.error and page.subheader[0].value.split(":")[0] in ["hat", "pants", "shoes"]
    page.text_input[0].input(f"{web}/page.html").run()
    assert "not an image" in page.error[0].value and not page.exception


def test_the_model_loads_once_per_process(tiny_model, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    calls = []
    def counted(model): return calls.append(model) or load_predictor(model)
    monkeypatch.setattr(app.predict, "predictor_for", counted)
    app.cached_predictor.clear()
    monkeypatch.setenv(app.MODEL_VARIABLE, str(tiny_model))
    hat = photos("hat", 1)[0]
    for _ in range(2):
        at = AppTest.from_function(app_script, default_timeout=120).run()
        at.file_uploader[0].set_value((hat.name, hat.read_bytes(), "image/jpeg")).run()
        assert at.subheader and not at.exception
    assert calls == [str(tiny_model)]
    app.cached_predictor.clear()


def test_missing_model_says_what_to_do(monkeypatch, tmp_path):
    monkeypatch.setenv(app.MODEL_VARIABLE, str(tmp_path/"model.pkl"))
    at = AppTest.from_function(app_script, default_timeout=60).run()
    assert "cannot be loaded" in at.error[0].value and not at.exception
    monkeypatch.delenv(app.MODEL_VARIABLE)
    at = AppTest.from_function(app_script, default_timeout=60).run()
    assert "trendyol-app MODEL" in at.error[0].value


def test_cli_refuses_a_missing_model(tmp_path):
    command = shutil.which("trendyol-app")
    assert command, "the trendyol-app console script is not installed: pip install -e ."
    finished = subprocess.run([command, str(tmp_path/"model.pkl")], capture_output=True, text=True, timeout=120)
    assert finished.returncode != 0 and "No model at" in finished.stderr
