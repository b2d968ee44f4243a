"""Training recipes side by side on ../shared/data/clothing-small (train -> validation), MobileNetV2 on this machine.

    python bench/train.py [--only library,plain,strong]

1. `library`: `trendyol-train DATA --arch mobilenet_v2 --size 224 --epochs 4`, the library's own defaults;
2. `plain`: the fastbook recipe, `Resize(128)`, `aug_transforms()`, `fine_tune(3)`;
3. `strong`: presize 256 -> 224 with `min_scale=0.75`, label smoothing, `fine_tune(3, base_lr=3e-3, freeze_epochs=1)`.

For each it prints validation accuracy (plain and with flip TTA), wall time, and training images/s against the
compute-only bound (one full training step on random tensors at the same size). Run it on an idle machine
before quoting a figure.
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from fastai.data.block import CategoryBlock, DataBlock
from fastai.data.transforms import GrandparentSplitter, get_image_files, parent_label
from fastai.losses import LabelSmoothingCrossEntropyFlat
from fastai.metrics import accuracy
from fastai.torch_core import set_seed
from fastai.vision.augment import Resize, aug_transforms
from fastai.vision.data import ImageBlock
from fastai.vision.learner import vision_learner
from torchvision.models import mobilenet_v2

from trendyol_clf.core import shared_path
from trendyol_clf.train import (EpochHistory, _inference_network, _Top, body_blocks, compute_speed, create_learner,
                                evaluate, image_dataloaders)

DATA = shared_path("data", "clothing-small")


def torch_home():
    "A temporary torch cache holding the offline MobileNetV2 weights"
    home = Path(tempfile.mkdtemp(prefix="bench-torch-home-"))
    (home/"hub"/"checkpoints").mkdir(parents=True)
    shutil.copy(shared_path("weights", "mobilenet_v2-b0353104.pth"), home/"hub"/"checkpoints")
    os.environ["TORCH_HOME"] = str(home)
    return home


def fastai_recipe(item_tfms, batch_tfms, loss_func, fine_tune):
    "Train MobileNetV2 the way a fastai user would; returns the learner and its wall time"
    started = time.perf_counter()
    set_seed(42, reproducible=True)
    block = DataBlock(blocks=(ImageBlock, CategoryBlock), get_items=get_image_files, get_y=parent_label,
                      splitter=GrandparentSplitter(train_name="train", valid_name="validation"),
                      item_tfms=item_tfms, batch_tfms=batch_tfms)
    dls = block.dataloaders(DATA, bs=64)
    learn = vision_learner(dls, mobilenet_v2, weights="IMAGENET1K_V1", metrics=accuracy, loss_func=loss_func)
    history = EpochHistory()
    learn.add_cb(history)
    fine_tune(learn)
    return learn, time.perf_counter() - started, history.table


def row(name, learn, wall, history, size):
    "The figures of one recipe"
    plain, tta = (evaluate(learn, DATA/"validation", tta=t)["accuracy"] for t in (False, True))
    bound = compute_speed(learn, bs=64, batches=3)
    unfrozen = history[~history["frozen"].astype(bool)]
    speed = unfrozen["train images/s"].mean()
    return dict(recipe=name, accuracy=round(plain, 4), accuracy_tta=round(tta, 4), minutes=round(wall/60, 1),
                **{"train images/s": round(speed, 1), f"compute-only images/s at {size}": round(bound, 1),
                   "pipeline share of bound": f"{speed/bound:.0%}"})


def library():
    out = Path(tempfile.mkdtemp(prefix="bench-model-"))/"model.pkl"
    command = ["trendyol-train", str(DATA), "--arch", "mobilenet_v2", "--size", "224", "--epochs", "4",
               "--out", str(out)]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode: sys.exit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    printed = done.stdout[done.stdout.index("cached "):]
    print(printed, flush=True)
    plain, tta = (evaluate(out.with_suffix(".json"), DATA/"validation", tta=t)["accuracy"] for t in (False, True))
    history = pd.DataFrame(json.loads(out.with_suffix(".json").read_text())["history"])
    cached = float(re.search(r"at ([\d.]+) images/s", done.stdout).group(1))
    top_speed = history["train images/s"].mean()
    learn = create_learner(image_dataloaders(DATA, size=224, bs=64, cache=False), "mobilenet_v2")
    cut = int(re.search(r"after block (\d+)", done.stdout).group(1))
    cache_bound, top_bound = stage_bounds(learn, cut)
    speed = f"{cached:.1f} caching, {top_speed:.1f} training"
    bound = f"{cache_bound:.1f} caching, {top_bound:.1f} training"
    share = f"{cached/cache_bound:.0%} caching, {top_speed/top_bound:.0%} training"
    return dict(recipe="library (trendyol-train --epochs 4)", accuracy=round(plain, 4), accuracy_tta=round(tta, 4),
                minutes=round(wall/60, 1), **{"train images/s": speed, "compute-only images/s at 224": bound,
                "pipeline share of bound": share})


def stage_bounds(learn, cut, bs=64, steps=10):
    "Compute-only images/s of the library's two stages, the median of `steps` timed steps after a warm-up each"
    blocks = body_blocks(learn.model[0])
    prefix = _inference_network(torch.nn.Sequential(*blocks[:cut]))  # as the library runs it
    x = torch.randn(bs, 3, 224, 224)
    def forward():
        for part in x.split(16): activations = prefix(part.contiguous(memory_format=torch.channels_last))
        return activations
    with torch.inference_mode(): activations = forward()
    with torch.inference_mode(): cache_bound = bs/median_seconds(forward, steps)
    top = _Top(blocks[cut:], learn.model[1]).train()
    for parameter in top.parameters(): parameter.requires_grad_(True)
    optimizer = torch.optim.AdamW(top.parameters(), lr=1e-4)
    x, y = torch.randn(bs, *activations.shape[1:]), torch.randint(0, 10, (bs,))
    def step():
        torch.nn.functional.cross_entropy(top(x), y).backward(); optimizer.step(); optimizer.zero_grad()
    step()
    return cache_bound, bs/median_seconds(step, steps)


def median_seconds(function, times):
    "Median wall time of `times` calls of `function`"
    seconds = []
    for _ in range(times):
        started = time.perf_counter(); function(); seconds.append(time.perf_counter() - started)
    return float(np.median(seconds))


def plain():
    learn, wall, history = fastai_recipe(Resize(128), aug_transforms(), None, lambda learn: learn.fine_tune(3))
    return row("plain fastbook (128 px, fine_tune(3))", learn, wall, history, 128)


def strong():
    learn, wall, history = fastai_recipe(
        Resize(256), aug_transforms(size=224, min_scale=0.75), LabelSmoothingCrossEntropyFlat(),
        lambda learn: learn.fine_tune(3, base_lr=3e-3, freeze_epochs=1))
    return row("stronger (256 -> 224, smoothing, fine_tune(3))", learn, wall, history, 224)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="library,plain,strong", help="comma-separated recipes to run, in order")
    recipes = parser.parse_args().only.split(",")
    torch_home()
    print(f"{DATA}: {len(get_image_files(DATA/'train'))} training, {len(get_image_files(DATA/'validation'))} "
          f"validation photos; {os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.1f}", flush=True)
    rows = []
    for name in recipes:
        rows.append(dict(library=library, plain=plain, strong=strong)[name]())
        print(pd.DataFrame(rows).to_string(index=False), flush=True)
