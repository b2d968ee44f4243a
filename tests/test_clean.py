"The cleaner on real photos with injected copies and broken files: what it finds, what it moves, what it restores"
import json
import random
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageEnhance

from trendyol_clf.clean import clean, list_images, restore

KINDS = ("exact", "png", "resized", "reencoded", "cropped", "webp", "brightened", "darkened", "other_class")


def _copy(image: Image.Image, kind: str, rng: random.Random) -> tuple[Image.Image, str, dict]:
    "A transformed copy of `image`: the picture, its suffix and save options"
    w, h = image.size
    if kind == "resized": return image.resize((w*2//3, h*2//3), Image.LANCZOS), ".jpg", dict(quality=90)
    if kind == "reencoded": return image, ".jpg", dict(quality=45)
    if kind == "cropped":
        left, top, right, bottom = (int(side*rng.uniform(.02, .08)) for side in (w, h, w, h))
        return image.crop((left, top, w - right, h - bottom)), ".jpg", dict(quality=92)
    if kind == "webp": return image, ".webp", dict(quality=80)
    if kind in ("brightened", "darkened"):
        return ImageEnhance.Brightness(image).enhance(1.3 if kind == "brightened" else .7), ".jpg", dict(quality=92)
    if kind == "other_class": return image, ".jpg", dict(quality=88)
    return image, ".png", {}


def _build(dest: Path, originals: list[Path], copies_per_kind=3, seed=0) -> dict:
    "Copy `originals` to `dest/<class>/`, inject copies of each kind and broken files; the expected issue per file"
    rng = random.Random(seed)
    placed = []
    for f in originals:
        (dest/f.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(f, dest/f.parent.name/f.name)
        placed.append(dest/f.parent.name/f.name)
    classes = sorted({p.parent.name for p in placed})
    expected, sources = {}, iter(rng.sample(placed, copies_per_kind*len(KINDS) + 2))
    for kind in KINDS:
        for _ in range(copies_per_kind):
            source = next(sources)
            target = source.with_name(f"{source.stem}_{kind}.jpg")
            if kind == "exact": shutil.copy(source, target)
            else:
                picture, suffix, options = _copy(Image.open(source).convert("RGB"), kind, rng)
                if kind == "other_class":
                    target = dest/rng.choice([c for c in classes if c != source.parent.name])/target.name
                picture.save(target.with_suffix(suffix), **options)
                target = target.with_suffix(suffix)
            expected[target.relative_to(dest).as_posix()] = (kind, source.relative_to(dest).as_posix())
    broken_source = next(sources).read_bytes()
    for name, content in [("empty.jpg", b""), ("page.jpg", b"<!DOCTYPE html><html><body>Not found</body></html>"),
                          ("truncated.jpg", broken_source[:len(broken_source)*2//3])]:
        (dest/classes[0]/name).write_bytes(content)
    (dest/classes[0]/"notes.txt").write_text("not an image, not part of the dataset")
    (dest/"_old").mkdir(); shutil.copy(placed[0], dest/"_old"/"ignored.jpg")
    return expected


@pytest.fixture(scope="module")
def dataset(clothing_small, tmp_path_factory):
    "160 real photos of the ten classes with 27 injected copies and 3 broken files"
    originals = [f for folder in sorted((clothing_small/"train").iterdir())
                 for f in sorted(folder.glob("*.jpg"))[:16]]
    dest = tmp_path_factory.mktemp("clean")/"DATA"
    expected = _build(dest, originals)
    listed = [p.relative_to(dest).as_posix() for p in list_images(dest)
              if p.name not in ("empty.jpg", "page.jpg", "truncated.jpg")]
    pd.DataFrame(dict(path=listed)).assign(
        product_id=lambda t: range(len(t)), product_group_id=7).to_csv(dest/"manifest.csv", index=False)
    return dest, expected


def _snapshot(data: Path) -> dict:
    return {p.relative_to(data).as_posix(): p.read_bytes() for p in sorted(data.rglob("*")) if p.is_file()}


def _check_report(report: pd.DataFrame, expected: dict):
    "Every injected copy and broken file is flagged right, and nothing else is"
    flagged = dict(zip(report.path, report.issue))
    assert flagged.pop("dress/empty.jpg") == "empty"
    assert flagged.pop("dress/page.jpg") == "not_image"
    assert flagged.pop("dress/truncated.jpg") == "corrupt"
    kinds = {"exact": "duplicate", "png": "duplicate", "other_class": "conflict"}
    pairs = {frozenset((r.path, r.duplicate_of)) for r in report.itertuples() if r.duplicate_of}
    for copy, (kind, source) in expected.items():
        assert frozenset((copy, source)) in pairs, f"{kind} copy {copy} of {source} not found"
        issue = flagged.pop(copy if copy in flagged else source)
        assert issue == kinds.get(kind, "near_duplicate"), (kind, issue)
    assert not flagged, f"clean photos flagged: {flagged}"


def test_finds_every_injected_problem_and_nothing_else(dataset):
    data, expected = dataset
    before = _snapshot(data)
    report = clean(data, dry_run=True)
    _check_report(report, expected)
    assert set(report.action) == {"would move"}
    assert _snapshot(data) == before, "a dry run changed files"
    assert report.product_id.notna().sum() == len(report) - 3  # broken files were never in the manifest
    assert (report.product_group_id.dropna() == "7").all()


def test_graph_search_finds_the_same_as_exact_search(dataset):
    data, expected = dataset
    _check_report(clean(data, dry_run=True, exact_search_below=1), expected)


def test_move_and_restore_round_trip_byte_for_byte(dataset, tmp_path):
    data = tmp_path/"DATA"
    shutil.copytree(dataset[0], data)
    before = _snapshot(data)
    report = clean(data)
    for row in report.itertuples():
        assert not (data/row.path).exists()
        assert (data/"_removed"/row.issue/row.path).read_bytes() == before[row.path]
    log = [json.loads(line) for line in (data/"_removed"/"log.jsonl").read_text().splitlines()]
    assert [e["path"] for e in log] == list(report.path)
    assert clean(data, dry_run=True).empty
    restored = restore(data)
    assert set(restored.action) == {"restored"} and len(restored) == len(report)
    after = _snapshot(data)
    assert (data/"_removed"/"log.jsonl").exists()
    assert {k: v for k, v in after.items() if not k.startswith("_removed/")} == \
           {k: v for k, v in before.items() if not k.startswith("_removed/")}
    assert restore(data).empty


def test_never_overwrites_when_moving_or_restoring(tmp_path, clothing_small):
    data = tmp_path/"DATA"
    photo = sorted((clothing_small/"train"/"hat").glob("*.jpg"))[0]
    (data/"hat").mkdir(parents=True)
    for name in ("a.jpg", "b.jpg"): shutil.copy(photo, data/"hat"/name)
    clean(data)
    shutil.copy(photo, data/"hat"/"b.jpg")  # the same copy arrives again and is removed again
    clean(data)
    assert sorted(p.name for p in (data/"_removed"/"duplicate"/"hat").iterdir()) == ["b.jpg", "b~1.jpg"]
    (data/"hat"/"b.jpg").write_bytes(b"a new file took the old place")
    with pytest.warns(UserWarning, match="exists again"): done = restore(data)
    assert (data/"hat"/"b.jpg").read_bytes() == b"a new file took the old place"
    assert set(done.action) == {"left in _removed: its old place is taken"}
    (data/"hat"/"b.jpg").unlink()
    with pytest.warns(UserWarning, match="exists again"): done = restore(data)
    assert list(done.action) == ["restored", "left in _removed: its old place is taken"]
    assert (data/"hat"/"b.jpg").read_bytes() == photo.read_bytes()


def _six_photos(tmp_path: Path, clothing_small: Path, label: str) -> tuple[Path, list[Path]]:
    "A dataset folder holding six shared photos of class `label`, and those photos' shared paths"
    data = tmp_path/"DATA"
    (data/label).mkdir(parents=True)
    photos = sorted((clothing_small/"train"/label).glob("*.jpg"))[:6]
    for photo in photos: shutil.copy(photo, data/label/photo.name)
    return data, photos


def test_pixel_identical_files_in_other_formats_or_with_other_metadata_are_duplicates(tmp_path, clothing_small):
    "Same pixels, different bytes: a JPEG with a comment added, PNG and TIFF saves; a lossy WebP is only near"
    data, photos = _six_photos(tmp_path, clothing_small, "shirt")
    original = photos[0].read_bytes()
    comment = b"saved again by a CDN"
    marker = b"\xff\xfe" + (len(comment) + 2).to_bytes(2, "big") + comment  # a JPEG comment after the start marker
    (data/"shirt"/"commented.jpg").write_bytes(original[:2] + marker + original[2:])
    pixels = Image.open(photos[1]).convert("RGB")
    pixels.save(data/"shirt"/"lossless.png"); pixels.save(data/"shirt"/"lossless.tif")
    pixels.save(data/"shirt"/"lossy.webp", quality=70)
    report = clean(data, dry_run=True).set_index("path")
    assert Image.open(data/"shirt"/"commented.jpg").tobytes() == Image.open(photos[0]).tobytes()
    kept_bigger = report.loc[f"shirt/{photos[0].name}"]  # the larger file of the two is kept
    assert kept_bigger[["issue", "duplicate_of"]].tolist() == ["duplicate", "shirt/commented.jpg"]
    for name in ("lossless.png", "lossless.tif"):
        found = report.loc[f"shirt/{name}", ["issue", "duplicate_of"]].tolist()
        assert found == ["duplicate", f"shirt/{photos[1].name}"], (name, found)
    assert report.loc["shirt/lossy.webp", "issue"] == "near_duplicate"
    assert len(report) == 4, report


def test_the_photo_is_kept_over_its_cmyk_and_gray_copies(tmp_path, clothing_small):
    "A CMYK save is a bigger file with as many pixels, a grayscale save a smaller one: the RGB photo stays"
    data, photos = _six_photos(tmp_path, clothing_small, "pants")
    picture = Image.open(photos[0]).convert("RGB")
    picture.convert("CMYK").save(data/"pants"/"printer.jpg", quality=95)
    picture.convert("L").save(data/"pants"/"gray.jpg", quality=95)
    assert (data/"pants"/"printer.jpg").stat().st_size > photos[0].stat().st_size
    report = clean(data, dry_run=True).set_index("path")
    assert sorted(report.index) == ["pants/gray.jpg", "pants/printer.jpg"], report
    assert set(report["duplicate_of"]) == {f"pants/{photos[0].name}"}, report


def test_flat_pictures_are_not_copies_and_deep_ones_are_seen(tmp_path, clothing_small):
    "Placeholders of one colour match nothing; a 16-bit PNG of a photo is a copy of it, not a white picture"
    data, photos = _six_photos(tmp_path, clothing_small, "dress")
    for name, colour in [("white.png", "white"), ("paper.jpg", (250, 250, 248)), ("grey.png", (128, 128, 128))]:
        Image.new("RGB", (300, 400), colour).save(data/"dress"/name)
    gray = np.asarray(Image.open(photos[0]).convert("L"), dtype=np.uint16)*257  # 16 bits a pixel, as scanners write
    Image.fromarray(gray).save(data/"dress"/"deep.png")
    report = clean(data, dry_run=True).set_index("path")
    found = report.loc["dress/deep.png", ["issue", "duplicate_of"]].tolist()
    assert found == ["near_duplicate", f"dress/{photos[0].name}"]
    assert not {"dress/white.png", "dress/paper.jpg", "dress/grey.png"} & set(report.index), report
    assert len(report) == 1, report


def test_other_photos_and_their_copies(tmp_path):
    "Photos that are not garments on white: scikit-image's samples and their edited copies"
    import skimage.data
    data = tmp_path/"DATA"
    names = ["astronaut", "camera", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry",
             "retina", "page", "moon", "text", "brick", "grass", "gravel", "coins", "cell", "clock", "colorwheel"]
    rng, expected = random.Random(1), {}
    for i, name in enumerate(names):
        folder = data/("a" if i % 2 else "b"); folder.mkdir(parents=True, exist_ok=True)
        picture = Image.fromarray(np.asarray(getattr(skimage.data, name)()).astype(np.uint8)).convert("RGB")
        picture.save(folder/f"{name}.jpg", quality=95)
        if i < 14:
            kind = KINDS[2:][i % 7]
            copy, suffix, options = _copy(picture, kind, rng)
            if kind == "other_class": folder = data/("b" if i % 2 else "a")
            copy.save(folder/f"{name}_{kind}{suffix}", **options)
            expected[f"{folder.name}/{name}_{kind}{suffix}"] = (kind, f"{'a' if i % 2 else 'b'}/{name}.jpg")
    report = clean(data, dry_run=True)
    pairs = {frozenset((r.path, r.duplicate_of)) for r in report.itertuples()}
    assert all(frozenset(pair) in pairs for pair in [(c, s) for c, (k, s) in expected.items()]), report
    assert len(report) == len(expected), report


def test_crops_of_fine_textures_are_found(tmp_path):
    "Close-ups of a fine texture (bricks, grass, gravel: what a fabric close-up looks like), cut a few percent"
    import skimage.data
    data, expected = tmp_path/"DATA", {}
    (data/"close-up").mkdir(parents=True)
    for name in ("brick", "grass", "gravel"):
        picture = Image.fromarray(getattr(skimage.data, name)()).convert("RGB")
        picture = picture.resize((1024, 1024), Image.LANCZOS)  # a close-up at the size of a shop photo
        picture.save(data/"close-up"/f"{name}.jpg", quality=90)
        for number, cut in enumerate([(.05, .03, .04, .06), (.07, .02, .02, .05)]):
            left, top, right, bottom = (round(1024*side) for side in cut)
            cut_name = f"close-up/{name}_cut{number}.jpg"
            picture.crop((left, top, 1024 - right, 1024 - bottom)).save(data/cut_name, quality=85)
            expected[cut_name] = f"close-up/{name}.jpg"
    report = clean(data, dry_run=True).set_index("path")
    assert set(report.index) == set(expected), report
    assert (report["issue"] == "near_duplicate").all(), report
    assert report["duplicate_of"].to_dict() == expected, report


def _on_canvas(photo: Path, shape: float) -> Image.Image:
    "The photo at `photo` centred on a white canvas `shape` times as wide as high, as shops pad photos"
    picture = Image.open(photo).convert("RGB")
    width, height = max(picture.width, round(picture.height*shape)), max(picture.height, round(picture.width/shape))
    canvas = Image.new("RGB", (width, height), "white")
    canvas.paste(picture, ((width - picture.width)//2, (height - picture.height)//2))
    return canvas


def test_copies_padded_to_another_shape_are_found(tmp_path, clothing_small):
    "A portrait and a landscape photo padded to a square with white, a square photo padded to 3:4"
    data, photos = _six_photos(tmp_path, clothing_small, "skirt")  # six 3:4 photos: the usual shape
    portrait = photos[0]
    others = sorted((clothing_small/"train").glob("*/*.jpg"))
    landscape = next(p for p in others if Image.open(p).width/Image.open(p).height > 1.25)
    square = next(p for p in others if Image.open(p).width == Image.open(p).height)
    for photo in (landscape, square): shutil.copy(photo, data/"skirt"/photo.name)
    expected = set()
    for photo, shape, name in [(portrait, 1, "portrait_square.jpg"), (landscape, 1, "landscape_square.jpg"),
                               (square, 3/4, "square_tall.jpg")]:
        _on_canvas(photo, shape).save(data/"skirt"/name, quality=90)
        expected.add(frozenset((f"skirt/{name}", f"skirt/{photo.name}")))
    report = clean(data, dry_run=True)
    assert {frozenset((row.path, row.duplicate_of)) for row in report.itertuples()} == expected, report
    assert (report["issue"] == "near_duplicate").all(), report
    # of a photo of the usual shape and its padded copy, the photo is kept
    assert report.set_index("path").loc["skirt/portrait_square.jpg", "duplicate_of"] == f"skirt/{portrait.name}"


def _border_colour(photo: Path) -> float:
    "How strongly coloured the border of the photo at `photo` is: mean saturation times value"
    hsv = np.asarray(Image.open(photo).convert("RGB").resize((64, 64)).convert("HSV"), dtype=np.float32)
    border = np.concatenate([hsv[:4], hsv[-4:], hsv[:, :4].transpose(1, 0, 2), hsv[:, -4:].transpose(1, 0, 2)])
    return float((border[..., 1]*border[..., 2]).mean())


def test_padded_copies_of_photos_on_coloured_backgrounds_are_found(tmp_path, clothing_small):
    "The white around a photo on a red or blue blanket changes its equalised tones; the photo alone is compared"
    data = tmp_path/"DATA"
    (data/"hat").mkdir(parents=True)
    photos = sorted((clothing_small/"train"/"hat").glob("*.jpg"), key=_border_colour, reverse=True)[:4]
    for photo in photos:
        shutil.copy(photo, data/"hat"/photo.name)
        _on_canvas(photo, 1).save(data/"hat"/f"{photo.stem}_square.jpg", quality=90)
    report = clean(data, dry_run=True)
    expected = {frozenset((f"hat/{p.name}", f"hat/{p.stem}_square.jpg")) for p in photos}
    assert {frozenset((row.path, row.duplicate_of)) for row in report.itertuples()} == expected, report


def test_command_line_reports_moves_and_restores(dataset, tmp_path):
    data = tmp_path/"DATA"
    shutil.copytree(dataset[0], data)
    before = _snapshot(data)
    dry = subprocess.run(["trendyol-clean", str(data), "--dry-run"], capture_output=True, text=True, check=True)
    assert "near_duplicate" in dry.stdout and "to move" in dry.stdout
    report = pd.read_csv(data/"clean_report.csv")
    assert len(report) == 30 and set(report.action) == {"would move"}
    subprocess.run(["trendyol-clean", str(data), "--report", str(tmp_path/"r.csv")], check=True, capture_output=True)
    assert len(pd.read_csv(tmp_path/"r.csv")) == 30
    back = subprocess.run(["trendyol-clean", str(data), "--restore"], capture_output=True, text=True, check=True)
    assert "restored 30 of 30" in back.stdout
    after = _snapshot(data)
    assert all(after[k] == v for k, v in before.items() if k != "clean_report.csv")


def test_bad_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="one sub-folder of images per class"): clean(tmp_path/"missing")
