"""Photos per second of fastai's `learn.predict`, one photo per call, against the library's batched paths.

    python bench/predict.py [--photos 200] [--model model.pkl | --out DIR] [--repeats 3] [--threads N]
                            [--no-browser]

Without `--model` it fine-tunes MobileNetV2 at 224 px (one pass over four cached views of each photo) on
`--per-class` photos of each class of ../shared/data/clothing-small, about three minutes on two cores,
and exports it with `export_model` (into `--out` to keep it). `--model` takes a `model.pkl` with the
`model.json` + `model.safetensors` pair that `export_model` writes beside it. On `--photos` real photos
of the validation split, each path is warmed up once, then timed in `--repeats` rounds of one pass of
each path in turn (so that a change of load hits them all), and the median pass counts:

1. `learn.predict`: `load_learner(model.pkl).predict(path)` once per photo, as most notebooks do;
2. `load_predictor(model.json, bs=bs).predict(paths)`, batched, for each of `--batch-sizes`, on the
   backend the library picks (with the `onnx` extra an `OnnxPredictor` on `model.onnx`, in batches
   of 32 on a CPU), and a PyTorch `Predictor` at its own default batch size (16 on a CPU);
3. `trendyol-predict model.json FOLDER --top-k 1` as a subprocess: its wall time with start-up, and
   without it, that is minus the wall time of the same command on a folder of one photo;
4. the widget's path, `classify_images(as_predictor(model.json), items)` on the photos' raw bytes,
   and the app's, the same through the app's `cached_predictor`.

It checks that every path gives the labels of `learn.predict` and prints the largest probability
difference. Then it times the app's first prediction once the model is loaded, in fresh processes:
under Streamlit's `AppTest`, and in headless Chromium against the real server (`AppServer`, which runs
`streamlit run` as `trendyol-app` does) unless `--no-browser`.

Small-batch inference suffers most when the cores are busy with other work: run it on an idle machine
before quoting a figure, and try `--threads 1` on a shared one.
"""
import argparse
import contextlib
import io
import json
import logging
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from fastai.learner import load_learner

from trendyol_clf.app import cached_predictor, upload_limit_bytes
from trendyol_clf.core import shared_path
from trendyol_clf.train import image_files, load_predictor, sample_dataset, train_classifier
from trendyol_clf.widgets import as_predictor, classify_images

DATA = shared_path("data", "clothing-small")
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
HEADING = re.compile(r"^[\w-]+: \d+%$")  # the app's subheading above a photo's chart, such as `hat: 87%`
HEALTHY = "server answers its health check (s)"
PAGE = "page drawn with the classes, the model loaded (s)"
PREDICTIONS = ["first prediction, one photo uploaded (s)", "next prediction, another photo (s)"]
LABELS = ["first label shown", "next label shown"]


def train_model(model: Path, work: Path, per_class: int, epochs: int) -> str:
    "Fine-tune MobileNetV2 at 224 px on a sample of the shared photos, export it to `model`; a summary"
    checkpoints = work/"torch"/"hub"/"checkpoints"
    checkpoints.mkdir(parents=True)
    shutil.copy(shared_path("weights", "mobilenet_v2-b0353104.pth"), checkpoints)
    os.environ["TORCH_HOME"] = str(work/"torch")
    data = sample_dataset(DATA, work/"data", per_class=per_class)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):  # no progress bars
        warnings.simplefilter("ignore")
        learn = train_classifier(data, arch="mobilenet_v2", size=224, epochs=epochs, bs=32, out=model,
                                 keep_best=False)
    return (f"trained MobileNetV2 at 224 px on {len(learn.dls.train_ds)} photos, validation accuracy "
            f"{learn.history['accuracy'].iloc[-1]:.3f} on {len(learn.dls.valid_ds)}")


def as_matrix(predictions: list, classes: list) -> np.ndarray:
    "Probabilities in the order of `classes` from lists of `(label, probability)`; 0 where not given"
    column = {label: i for i, label in enumerate(classes)}
    rows = np.zeros((len(predictions), len(classes)))
    for row, pairs in zip(rows, predictions):
        for label, probability in pairs: row[column[label]] = probability
    return rows


def fastai_way(model: Path, photos: list):
    "A warmed-up run of `learn.predict` on each photo in turn, and what turns its answers into probabilities"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        learn = load_learner(model)
    def run():
        with learn.no_bar(): return [learn.predict(p) for p in photos]  # a bar per call would only cost more
    with learn.no_bar(): learn.predict(photos[0])
    return run, lambda answers: np.stack([probs.numpy() for _, _, probs in answers])


def batched_way(model: Path, photos: list, classes: list, bs: int, backend: str="auto"):
    "A warmed-up run of the predictor's `predict` on all photos, `bs` per network call, and its converter"
    predictor = load_predictor(model, bs=bs, backend=backend)
    predictor.predict(photos[:bs], top_k=len(classes))
    return lambda: predictor.predict(photos, top_k=len(classes)), lambda answers: as_matrix(answers, classes)


def run_cli(model: Path, folder: Path) -> dict:
    "The `(label, probability)` of each photo under `folder` by `trendyol-predict MODEL FOLDER --top-k 1`"
    command = shutil.which("trendyol-predict")
    if command is None: sys.exit("The trendyol-predict console script is not installed: pip install -e .")
    done = subprocess.run([command, str(model), str(folder), "--top-k", "1"], capture_output=True,
                          text=True)
    if done.returncode: sys.exit(f"trendyol-predict failed:\n{done.stderr[-3000:]}")
    found = {}
    for line in done.stdout.splitlines():
        path, label, probability = line.split("\t")
        found[Path(path).relative_to(folder).as_posix()] = (label, float(probability))
    return found


def cli_ways(model: Path, photos: list, classes: list, work: Path):
    "Runs of `trendyol-predict` on a folder of the photos and on a folder of one photo, and the converter"
    folder, one = work/"photos", work/"one-photo"
    for photo in photos:
        (folder/photo.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(photo, folder/photo.parent.name/photo.name)
    (one/photos[0].parent.name).mkdir(parents=True)
    shutil.copy(photos[0], one/photos[0].parent.name/photos[0].name)
    run_cli(model, one)
    def to_probs(found): return as_matrix([[found[f"{p.parent.name}/{p.name}"]] for p in photos], classes)
    return lambda: run_cli(model, folder), lambda: run_cli(model, one), to_probs


def widget_way(model: Path, items: list, classes: list):
    "A warmed-up run of the widget's `classify_images` on the raw bytes, and its converter"
    predictor = as_predictor(model)
    classify_images(predictor, items[:predictor.bs], top_k=len(classes))
    return (lambda: classify_images(predictor, items, top_k=len(classes)),
            lambda results: as_matrix([r.predictions for r in results], classes))


def quiet_streamlit():
    "Silence Streamlit's warnings about running outside `streamlit run`, as these measures do on purpose"
    for name in list(logging.root.manager.loggerDict):
        if name.startswith("streamlit"): logging.getLogger(name).setLevel(logging.ERROR)


def app_way(model: Path, items: list, classes: list):
    "A warmed-up run of what each run of the app does, `cached_predictor` then `classify_images`"
    quiet_streamlit()
    limit = upload_limit_bytes()
    def run(chosen=items): return classify_images(cached_predictor(str(model)), chosen, len(classes), limit)
    run(items[:32])
    return run, lambda results: as_matrix([r.predictions for r in results], classes)


def interleaved(runs: dict, repeats: int):
    "Seconds of each pass of each of `runs`, one pass of each in turn so a change of load hits them all"
    seconds, results = {name: [] for name in runs}, {}
    for _ in range(repeats):
        for name, run in runs.items():
            started = time.perf_counter()
            results[name] = run()
            seconds[name].append(time.perf_counter() - started)
    return seconds, results


def _app_script():
    "The app's page, as the script `AppTest` runs"
    from trendyol_clf.app import page
    page()


def app_test_timings(model: str, photos: list) -> dict:
    "Seconds of the app's first run under Streamlit's `AppTest`, the model load, then of its predictions"
    from streamlit.testing.v1 import AppTest
    from trendyol_clf.app import MODEL_VARIABLE
    quiet_streamlit()
    os.environ[MODEL_VARIABLE] = model
    page = AppTest.from_function(_app_script, default_timeout=600)
    timings, started = {}, time.perf_counter()
    page.run()
    timings[PAGE] = time.perf_counter() - started
    if page.exception or not page.caption: raise RuntimeError(f"The app did not start: {page.exception}")
    for n, photo in enumerate(photos):
        page.file_uploader[0].set_value((photo.name, photo.read_bytes(), "image/jpeg"))
        started = time.perf_counter()
        page.run()
        timings[PREDICTIONS[n]] = time.perf_counter() - started
        if page.exception or not page.subheader: raise RuntimeError(f"No label shown: {page.exception}")
        timings[LABELS[n]] = page.subheader[0].value
    return timings


def free_port() -> int:
    "A TCP port nobody listens on now"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def browser_timings(model: Path, photo: Path) -> dict:
    "Seconds of the served app in headless Chromium: start-up, the page with the model loaded, a prediction"
    from playwright.sync_api import sync_playwright
    from trendyol_clf.app import AppServer
    timings, started = {}, time.perf_counter()
    with AppServer(model, port=free_port(), timeout=300) as server, sync_playwright() as playwright, \
         tempfile.TemporaryDirectory(prefix="bench-chromium-") as profile:
        timings[HEALTHY] = time.perf_counter() - started
        context = playwright.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        try:
            page = context.new_page()
            started = time.perf_counter()
            page.goto(server.url)
            page.get_by_text("Classes:").wait_for(timeout=300_000)
            timings[PAGE] = time.perf_counter() - started
            started = time.perf_counter()
            page.locator('input[type="file"]').set_input_files(str(photo))
            heading = page.get_by_text(HEADING)
            heading.wait_for(timeout=300_000)
            timings[PREDICTIONS[0]] = time.perf_counter() - started
            timings[LABELS[0]] = heading.inner_text()
        finally: context.close()
    return timings


def speed_table(rows: list) -> pd.DataFrame:
    "Photos/s of each `(path, photos, seconds of each pass)` by the median pass; speed-up over the first row"
    def speed(photos, seconds): return photos/seconds if seconds > 0 else float("nan")
    medians = [float(np.median(seconds)) for _, _, seconds in rows]
    baseline = speed(rows[0][1], medians[0])
    return pd.DataFrame([{"path": path, "photos": photos, "seconds": round(median, 2),
                          "photos/s": round(speed(photos, median), 1),
                          "vs learn.predict": f"{speed(photos, median)/baseline:.1f}x",
                          "passes (s)": " ".join(f"{s:.2f}" for s in seconds)}
                         for (path, photos, seconds), median in zip(rows, medians)])


def agreement_table(reference: np.ndarray, others: dict, top_only: str) -> pd.DataFrame:
    "Same labels as the `reference` probabilities and largest probability difference, for each of `others`"
    labels, rows = reference.argmax(1), []
    for path, probs in others.items():
        difference = np.abs(probs - reference)
        if path == top_only: difference = difference[np.arange(len(labels)), labels]  # the only one known
        rows.append({"path vs learn.predict": path,
                     "same label": f"{int((probs.argmax(1) == labels).sum())}/{len(labels)}",
                     "max |probability difference|": f"{difference.max():.1e}"})
    return pd.DataFrame(rows)


def first_prediction_table(columns: dict) -> pd.DataFrame:
    "The app's start-up and first-prediction measures, one column per way of running it"
    table = pd.DataFrame(columns).reindex([HEALTHY, PAGE, PREDICTIONS[0], LABELS[0], PREDICTIONS[1],
                                           LABELS[1]]).dropna(how="all")
    return table.map(lambda v: "" if pd.isna(v) else f"{v:.2f}" if isinstance(v, float) else v)


def measure_paths(pickled: Path, config: Path, photos: list, work: Path, batch_sizes: list, repeats: int):
    "Print the photos/s of each path and how well it agrees with `learn.predict`; its probabilities, classes"
    n, items = len(photos), [(p.name, p.read_bytes()) for p in photos]
    library = load_predictor(config)  # what the library picks on this machine
    library_bs, backend = library.bs, library.backend
    def default(bs): return ", the default" if bs == library_bs else ""
    classes = json.loads(config.read_text())["classes"]
    learn_predict, cli, cli_one = "learn.predict", "trendyol-predict", "trendyol-predict, one photo"
    ways = {learn_predict: fastai_way(pickled, photos),
            **{bs: batched_way(config, photos, classes, bs) for bs in batch_sizes}}
    torch_bs = load_predictor(config, backend="torch").bs
    if backend != "torch": ways["torch"] = batched_way(config, photos, classes, torch_bs, backend="torch")
    cli_run, cli_one_run, cli_probs = cli_ways(config, photos, classes, work)
    ways.update({cli: (cli_run, cli_probs), cli_one: (cli_one_run, None),
                 "widget": widget_way(config, items, classes), "app": app_way(config, items, classes)})
    seconds, results = interleaved({name: run for name, (run, _) in ways.items()}, repeats)
    probs = {name: to_probs(results[name]) for name, (_, to_probs) in ways.items() if to_probs}
    cli_without = [whole - one for whole, one in zip(seconds[cli], seconds[cli_one])]
    batched = [(f"load_predictor(model.json), {backend}, bs {bs}{default(bs)}", n, seconds[bs])
               for bs in batch_sizes]
    if "torch" in seconds: batched.append((f"load_predictor(model.json), torch, bs {torch_bs}", n, seconds["torch"]))
    print(speed_table([
        ("learn.predict, one call per photo (model.pkl)", n, seconds[learn_predict]),
        *batched,
        ("trendyol-predict FOLDER --top-k 1, wall with start-up", n, seconds[cli]),
        ("trendyol-predict, wall minus a 1-photo run's wall", n - 1, cli_without),
        ("widget: classify_images(as_predictor) on bytes", n, seconds["widget"]),
        ("app: classify_images(cached_predictor) on bytes", n, seconds["app"])]).to_string(index=False))
    print(f"trendyol-predict on one photo: {np.median(seconds[cli_one]):.2f} s "
          "(start-up, model load, one prediction)")
    reference = probs.pop(learn_predict)
    names = {bs: f"load_predictor, {backend}, bs {bs}" for bs in batch_sizes}
    names["torch"] = f"load_predictor(model.json), torch, bs {torch_bs}"
    names[cli] = "trendyol-predict (top 1, 4 decimals)"
    print(agreement_table(reference, {names.get(k, k): v for k, v in probs.items()}, names[cli])
          .to_string(index=False), flush=True)
    return reference, classes


def measure_first_prediction(config: Path, photos: list, reference: np.ndarray, classes: list, browser: bool):
    "Print the app's start-up and first predictions, under `AppTest` and, when `browser`, in Chromium"
    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as fresh:
        columns = {"AppTest, fresh process": fresh.submit(app_test_timings, str(config), photos[:2]).result()}
    if not browser: pass
    elif not Path(CHROMIUM).exists(): print(f"No Chromium at {CHROMIUM}: the browser measure is skipped")
    else: columns["Chromium, served app"] = browser_timings(config, photos[0])
    best = reference.argmax(1)
    columns["learn.predict"] = {LABELS[i]: f"{classes[best[i]]}: {reference[i, best[i]]:.0%}"
                                for i in range(min(len(photos), 2))}
    print(first_prediction_table(columns).to_string(), flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=200, help="validation photos to classify")
    parser.add_argument("--model", help="a model.pkl with model.json and model.safetensors beside it; "
                        "a MobileNetV2 is trained when not given")
    parser.add_argument("--out", help="folder to keep the trained model in, for `--model` next time")
    parser.add_argument("--per-class", type=int, default=20, help="photos per class and split to train on")
    parser.add_argument("--epochs", type=int, default=1,
                        help="passes of the last blocks and the head over the cached views")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes of each path; the median counts")
    parser.add_argument("--threads", type=int, help="torch threads here and in the processes started; "
                        "torch's default when not given")
    parser.add_argument("--batch-sizes", default="32,16,8,1", help="photos per network call of "
                        "`load_predictor(...).predict` to time, comma-separated; the other paths use the "
                        "default")
    parser.add_argument("--no-browser", action="store_true", help="skip the app in headless Chromium")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # torch reads it in the processes started below
    batch_sizes = [int(bs) for bs in args.batch_sizes.split(",")]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("Terminated"))  # still remove the temporary folder
    load_before = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="bench-predict-"))
    try:
        started = time.perf_counter()
        if args.model: pickled, made = Path(args.model).with_suffix(".pkl"), "loaded"
        else:
            pickled = Path(args.out or work)/"model.pkl"
            made = train_model(pickled, work, args.per_class, args.epochs)
        config = pickled.with_suffix(".json")
        if not all(p.exists() for p in (pickled, config, pickled.with_suffix(".safetensors"))):
            sys.exit(f"{pickled} needs model.json and model.safetensors beside it, as `export_model` writes")
        print(f"{pickled}: {made} in {time.perf_counter() - started:.0f} s", flush=True)
        every = image_files(DATA/"validation")
        photos = sorted(random.Random(0).sample(every, min(args.photos, len(every))))
        print(f"{len(photos)} photos of {DATA/'validation'}; each path warmed up once, then timed in "
              f"{args.repeats} round(s) of one pass of each", flush=True)

        reference, classes = measure_paths(pickled, config, photos, work, batch_sizes, args.repeats)
        measure_first_prediction(config, photos, reference, classes, browser=not args.no_browser)
        print(f"torch threads {torch.get_num_threads()}; {os.cpu_count()} CPUs; load average "
              f"{load_before[0]:.1f} before, {os.getloadavg()[0]:.1f} after", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
