"""Bring your own data: dataset files, sizes inferred from the data, and a non-square RGB dataset
through ingest → Transform → Trainer → Evaluator → Pusher → serving at its own size, with the
run's HTML report rendered in headless Chromium."""

import dataclasses
import io
import json
import re
import shutil
import subprocess

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageDraw, ImageFilter

from unet_tfx.cli import _config, build_parser, main
from unet_tfx.config import BUNDLED_DATA
from unet_tfx.dataset_spec import (
    DEFAULT_DATASET,
    DatasetError,
    DatasetSpec,
    from_examples,
    infer_dataset,
    load_dataset,
    write_dataset,
)
from unet_tfx.ingest import ingest
from unet_tfx.ingest.errors import IngestError
from unet_tfx.pipeline.cross_validation import fold_ids
from unet_tfx.pipeline.report import FALSE_CELL, FALSE_MEMBRANE, error_map
from unet_tfx.regions import class_regions
from unet_tfx.serving.local_model import latest_version
from unet_tfx.trainer.metrics import RandScore

HEIGHT, WIDTH = 200, 300  # non-square, and neither side a multiple of 16


def write_ellipses(folder, count: int, size=(HEIGHT, WIDTH), rgb: bool = True, seed: int = 0,
                   levels=(255,)):
    """Blurred, noisy coloured ellipses on a dark background; masks 0 outside, inside each
    ellipse one of `levels` in turn (the brighter the level, the brighter the ellipse)."""
    rng = np.random.default_rng(seed)
    (folder / "image").mkdir(parents=True)
    (folder / "mask").mkdir()
    height, width = size
    for i in range(count):
        mask = Image.new("L", (width, height), 0)
        draw = ImageDraw.Draw(mask)
        for k in range(4):
            x, y = rng.integers(0, width), rng.integers(0, height)
            rx, ry = rng.integers(12, 40, size=2)
            draw.ellipse([x - rx, y - ry, x + rx, y + ry], fill=levels[k % len(levels)])
        labels = np.asarray(mask)
        colour = rng.integers(120, 255, size=3 if rgb else 1)
        pixels = 30 + (labels[..., None] / 255) * (colour - 30) + rng.normal(
            0, 20, labels.shape + colour.shape)
        image = Image.fromarray(pixels.clip(0, 255).astype(np.uint8).squeeze())
        image.filter(ImageFilter.GaussianBlur(1.5)).save(folder / "image" / f"{i}.png")
        mask.save(folder / "mask" / f"{i}.png")
    return folder / "image", folder / "mask"


def render_in_chromium(page, screenshot) -> Image.Image:
    """A headless Chromium screenshot of the local HTML file `page` (Debian's chromium)."""
    subprocess.run(
        [shutil.which("chromium") or "/usr/bin/chromium", "--headless", "--no-sandbox",
         "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync",
         f"--user-data-dir={screenshot.parent / 'chromium-profile'}", "--window-size=1100,1800",
         f"--screenshot={screenshot}", f"file://{page}"],
        check=True, capture_output=True, timeout=120)
    return Image.open(screenshot)


def test_error_maps_paint_false_membrane_red_and_false_cell_blue():
    image = np.full((2, 2), 200, np.uint8)
    truth = np.array([[255, 255], [0, 0]], np.uint8)
    predicted = np.array([[255, 0], [255, 0]], np.uint8)
    errors = error_map(image, truth, predicted)
    assert tuple(errors[0, 1]) == FALSE_MEMBRANE and tuple(errors[1, 0]) == FALSE_CELL
    assert tuple(errors[0, 0]) == tuple(errors[1, 1]) == (100, 100, 100)


def test_the_bundled_dataset_file_describes_the_bundled_data():
    spec = load_dataset(DEFAULT_DATASET)
    assert (spec.name, spec.image_height, spec.image_width, spec.channels, spec.eval_count) == (
        "membrane", 512, 512, 1, 6)
    assert spec.sources() == {"images": str(BUNDLED_DATA / "image"),
                              "masks": str(BUNDLED_DATA / "label")}


@pytest.mark.parametrize("text, expected", [
    ("name: x\nimage_height: 10\n", "missing field(s) image_width"),
    ("name: x\nimage_height: 10\nimage_width: 10\ncolour: red\n", "unknown field(s) colour"),
    ("name: x\nimage_height: ten\nimage_width: 10\n", "image_height is 'ten': expected a whole"),
    ("name: x\nimage_height: 0\nimage_width: 10\n", "image_height is 0: expected a positive"),
    ("name: x\nimage_height: 10\nimage_width: 10\nchannels: 2\n", "channels is 2: expected 1"),
    ("name: x\nimage_height: 10\nimage_width: 10\nprofile: huge\n", "profile is 'huge'"),
    ("name: a b\nimage_height: 10\nimage_width: 10\n", "name is 'a b'"),
    ("- just\n- a list\n", "expected a mapping"),
    ("name: [unclosed\n", "not valid YAML"),
])
def test_a_bad_dataset_file_is_named_with_the_field_and_what_was_expected(tmp_path, text,
                                                                           expected):
    path = tmp_path / "dataset.yaml"
    path.write_text(text)
    with pytest.raises(DatasetError, match=str(path)) as error:
        load_dataset(path)
    assert expected in str(error.value)


def test_a_missing_dataset_file_fails_the_cli_with_its_name(tmp_path, capsys):
    assert main(["run", "--dataset", str(tmp_path / "nope.yaml")]) == 2
    assert "nope.yaml: no such dataset file" in capsys.readouterr().err


def test_a_dataset_file_round_trips_with_paths_relative_to_it(tmp_path):
    spec = DatasetSpec(name="cells", image_height=HEIGHT, image_width=WIDTH, channels=3,
                       images="image", masks="mask", eval_count=2, profile="test")
    write_dataset(spec, tmp_path / "dataset.yaml")
    assert not list(tmp_path.glob("*.partial"))
    loaded = load_dataset(tmp_path / "dataset.yaml")
    assert loaded == dataclasses.replace(spec, images=str(tmp_path / "image"),
                                         masks=str(tmp_path / "mask"))


def test_sizes_and_channels_are_inferred_from_the_images(tmp_path):
    images, masks = write_ellipses(tmp_path / "cells", 3)
    spec = infer_dataset(str(images), str(masks), eval_count=1)
    assert (spec.name, spec.image_height, spec.image_width, spec.channels) == (
        "cells", HEIGHT, WIDTH, 3)


def test_images_of_different_sizes_are_refused_with_the_sizes_found(tmp_path):
    images, masks = write_ellipses(tmp_path / "mixed", 2)
    Image.new("RGB", (64, 32)).save(images / "odd.png")
    Image.new("L", (64, 32)).save(masks / "odd.png")
    with pytest.raises(DatasetError) as error:
        infer_dataset(str(images), str(masks), eval_count=0)
    assert "32x64, 3 channel(s): 1 file(s)" in str(error.value)
    assert f"{HEIGHT}x{WIDTH}, 3 channel(s): 2 file(s)" in str(error.value)


def test_ingest_takes_a_dataset_file_and_run_reads_sizes_from_the_examples(tmp_path):
    write_ellipses(tmp_path / "cells", 4)
    spec = DatasetSpec(name="cells", image_height=HEIGHT, image_width=WIDTH, channels=3,
                       images="image", masks="mask", eval_count=1)
    write_dataset(spec, tmp_path / "cells" / "dataset.yaml")
    examples = tmp_path / "examples"
    assert main(["ingest", "--dataset", str(tmp_path / "cells" / "dataset.yaml"),
                 "--output", str(examples)]) == 0
    manifest = json.loads((examples / "ingest.json").read_text())
    assert manifest["splits"]["eval"]["count"] == 1 and manifest["channels"] == 3
    assert from_examples(str(examples)) == {"image_height": HEIGHT, "image_width": WIDTH,
                                            "channels": 3, "mask_values": ()}
    # The case: `run --examples-dir` of non-square data validates against its own size.
    config = _config(build_parser().parse_args(["run", "--examples-dir", str(examples)]))
    assert (config.image_height, config.image_width, config.channels) == (HEIGHT, WIDTH, 3)


@pytest.mark.e2e
def test_a_non_square_rgb_folder_runs_end_to_end_and_serves_at_its_own_size(tmp_path, capsys):
    images, masks = write_ellipses(tmp_path / "cells", 8)
    root = tmp_path / "tfx"
    code = main(["run", "--images", str(images), "--masks", str(masks), "--eval-count", "2",
                 "--profile", "test", "--examples-dir", str(tmp_path / "examples"),
                 "--pipeline-root", str(root), "--serving-dir", str(tmp_path / "serving"),
                 # The test profile's brief training is never sure of a cell at the default.
                 "--cell-seed-threshold", "0.5"])
    out = capsys.readouterr().out
    assert code == 0, out
    written = load_dataset(root / "dataset.yaml")
    assert (written.name, written.image_height, written.image_width, written.channels,
            written.eval_count) == ("cells", HEIGHT, WIDTH, 3, 2)
    assert f"--dataset {root / 'dataset.yaml'}" in out
    assert (root / "eval_predictions.png").stat().st_size > 0
    page = (root / "report.html").read_text()
    assert "rand_score" in page and "variation_of_information" in page
    per_image = re.findall(r"membrane Dice [0-9.]+, Rand ([0-9.]+), watershed Rand ([0-9.]+)",
                           page)
    assert len(per_image) == 2 and page.count('alt="watershed cells"') == 2  # one per image
    assert all(float(grown) > 0 for _, grown in per_image)  # cells grew from the seeds
    # The Evaluator's Rand scores (TFMA, serving_examples) are the means of the report's per
    # image (serving_default on the PNGs, scored by the same metric classes).
    for name, column in (("rand_score", 0), ("watershed_rand_score", 1)):
        evaluator = float(re.search(rf"^{name}: ([0-9.]+)", out, re.M).group(1))
        assert evaluator == pytest.approx(np.mean([float(r[column]) for r in per_image]),
                                          abs=0.01)
    screenshot = render_in_chromium(root / "report.html", tmp_path / "report.png")
    assert screenshot.size == (1100, 1800)
    assert np.asarray(screenshot.convert("L")).std() > 20  # a page of tables and pictures

    model = tf.saved_model.load(latest_version(str(tmp_path / "serving" / "unet_cells")))
    png = (images / "0.png").read_bytes()
    answer = model.signatures["serving_default"](images=tf.constant([png]))
    assert answer["probabilities"].shape == (1, HEIGHT, WIDTH, 1)
    mask = Image.open(io.BytesIO(answer["mask_png_bytes"].numpy()[0]))
    assert (mask.height, mask.width) == (HEIGHT, WIDTH)


def test_a_fixed_eval_list_is_the_eval_split(tmp_path):
    write_ellipses(tmp_path / "cells", 5, size=(32, 48), rgb=False)
    (tmp_path / "cells" / "dataset.yaml").write_text(
        "name: cells\nimages: image\nmasks: mask\nimage_height: 32\nimage_width: 48\n"
        "eval_ids: [1, 3]\n")
    spec = load_dataset(tmp_path / "cells" / "dataset.yaml")
    assert spec.eval_ids == ("1", "3")
    examples = tmp_path / "examples"
    assert main(["ingest", "--dataset", str(tmp_path / "cells" / "dataset.yaml"),
                 "--output", str(examples)]) == 0
    splits = json.loads((examples / "ingest.json").read_text())["splits"]
    assert splits["eval"]["ids"] == ["1", "3"] and splits["train"]["ids"] == ["0", "2", "4"]
    with pytest.raises(IngestError, match="eval ids not among the 5 examples: 7"):
        ingest(str(tmp_path / "other"), **dataclasses.replace(spec, eval_ids=("1", "7"))
               .ingest_args())
    assert not (tmp_path / "other").exists()


def test_folds_are_seeded_disjoint_and_cover_every_example():
    ids = [str(i) for i in range(30)]
    folds = fold_ids(ids, 5, seed=42)
    assert [len(f) for f in folds] == [6] * 5
    assert sorted((i for f in folds for i in f), key=int) == ids
    assert folds == fold_ids(ids, 5, seed=42) and folds != fold_ids(ids, 5, seed=7)
    with pytest.raises(ValueError, match="folds 31: expected 2 to 30"):
        fold_ids(ids, 31, seed=42)


@pytest.mark.e2e
def test_cross_validation_runs_the_pipeline_per_fold_and_reports_mean_and_std(tmp_path, capsys):
    images, masks = write_ellipses(tmp_path / "cells", 6, size=(64, 96), rgb=False)
    output = tmp_path / "cv"
    assert main(["cv", "--folds", "2", "--images", str(images), "--masks", str(masks),
                 "--profile", "test", "--mask-threshold", "0.4", "--cell-seed-threshold", "0.5",
                 "--output", str(output)]) == 0
    out = capsys.readouterr().out
    record = json.loads((output / "cv.json").read_text())
    evals = [fold["eval_ids"] for fold in record["per_fold"]]
    assert sorted(evals[0] + evals[1], key=int) == [str(i) for i in range(6)]
    for k, fold in enumerate(record["per_fold"], start=1):
        # Each fold's Evaluator judged exactly its eval ids.
        manifest = json.loads((output / f"fold-{k}" / "examples" / "ingest.json").read_text())
        assert manifest["splits"]["eval"]["ids"] == fold["eval_ids"]
        assert 0.0 <= fold["metrics"]["rand_score"] <= 1.0
        # The sweep scores the fold's model with the Evaluator's metrics: at the threshold the
        # run served and evaluated with (--mask-threshold), it finds the Evaluator's values.
        for name in ("membrane_dice", "mean_dice", "rand_score"):
            assert fold["thresholds"]["0.4"][name] == pytest.approx(fold["metrics"][name],
                                                                    abs=0.01)
        assert fold["thresholds"]["0.3"] != fold["thresholds"]["0.7"]
        # The same for the watershed cells at the seed threshold the run evaluated with.
        assert fold["seeds"]["0.5"]["watershed_rand_score"] == pytest.approx(
            fold["metrics"]["watershed_rand_score"], abs=0.01)
        assert fold["seeds"]["0.5"] != fold["seeds"]["0.99"]
    dice = [fold["metrics"]["membrane_dice"] for fold in record["per_fold"]]
    assert record["summary"]["membrane_dice"]["mean"] == pytest.approx(np.mean(dice))
    assert record["summary"]["membrane_dice"]["std"] == pytest.approx(np.std(dice, ddof=1))
    assert "2-fold cross-validation, mean ± std:" in out
    assert f"membrane_dice              {np.mean(dice):.4f} ± " in out
    assert set(record["threshold_summary"]) == {"0.3", "0.4", "0.5", "0.6", "0.7"}
    assert "the same models with the mask at other p(cell) thresholds" in out
    assert set(record["seed_summary"]) == {"0.5", "0.9", "0.95", "0.97", "0.99"}
    assert "their watershed cells at other seed thresholds" in out
    # Another plan in the same folder would report the old folds' caches as its own: refused.
    assert main(["cv", "--folds", "3", "--images", str(images), "--masks", str(masks),
                 "--profile", "test", "--output", str(output)]) == 2
    assert re.search(r"fold-1/examples: fold 1 of an earlier cv with other eval ids .*expected "
                     r"a new --output", capsys.readouterr().err)
    # Flags a fold sets itself are refused, not silently replaced.
    assert main(["cv", "--pipeline-root", str(tmp_path / "tfx"), "--output", str(output)]) == 2
    assert "--pipeline-root: each fold keeps its own" in capsys.readouterr().err


def test_a_mask_level_outside_the_classes_is_refused_naming_the_file(tmp_path):
    images, masks = write_ellipses(tmp_path / "three", 3, size=(32, 48), rgb=False,
                                   levels=(128, 255))
    with pytest.raises(IngestError, match=r"mask\.?/?.*: mask has level\(s\) 255 outside the "
                       r"dataset's classes: expected only 0, 128, 200"):
        ingest(str(tmp_path / "out"), images=str(images), masks=str(masks),
               mask_values=(0, 128, 200))
    assert not (tmp_path / "out").exists()
    (tmp_path / "bad.yaml").write_text("name: x\nimage_height: 8\nimage_width: 8\n"
                                       "mask_values: [0, 255]\n")
    with pytest.raises(DatasetError, match="mask_values is \\[0, 255\\]: expected 3 or more"):
        load_dataset(tmp_path / "bad.yaml")


@pytest.mark.e2e
def test_three_class_masks_train_evaluate_and_serve_class_indices(tmp_path, capsys):
    folder = tmp_path / "three"
    write_ellipses(folder, 6, size=(64, 96), rgb=False, levels=(128, 255))
    (folder / "dataset.yaml").write_text(
        "name: three\nimages: image\nmasks: mask\nimage_height: 64\nimage_width: 96\n"
        "eval_count: 2\nmask_values: [0, 128, 255]\nprofile: test\n")
    root = tmp_path / "tfx"
    code = main(["run", "--dataset", str(folder / "dataset.yaml"),
                 "--examples-dir", str(tmp_path / "examples"), "--pipeline-root", str(root),
                 "--serving-dir", str(tmp_path / "serving")])
    out = capsys.readouterr().out
    assert code == 0, out
    reported = set(re.findall(r"^(\w+): [0-9.]+$", out, re.M))
    assert {"mean_class_dice", "pixel_accuracy", "class_0_dice", "class_1_dice",
            "class_2_dice", "class_0_iou", "class_1_iou", "class_2_iou", "rand_score",
            "variation_of_information"} <= reported, out
    model = tf.saved_model.load(latest_version(str(tmp_path / "serving" / "unet_three")))
    # The Evaluator's Rand score on the regions of classes 1 and 2 (ellipses of two grey levels
    # on class 0) is the mean over the eval images of the metric's score on the served masks.
    manifest = json.loads((tmp_path / "examples" / "ingest.json").read_text())
    per_image = []  # the two eval images: 0.49 and 0.63 when written
    for i in manifest["splits"]["eval"]["ids"]:
        levels = np.asarray(Image.open(folder / "mask" / f"{i}.png"))
        truth = np.searchsorted([0, 128, 255], levels)  # class indices
        served = model.signatures["serving_default"](
            images=tf.constant([(folder / "image" / f"{i}.png").read_bytes()]))
        prediction = np.asarray(Image.open(io.BytesIO(served["mask_png_bytes"].numpy()[0])))
        per_image.append(RandScore.score(class_regions(truth), class_regions(prediction)))
    rand = float(re.search(r"^rand_score: ([0-9.]+)", out, re.M).group(1))
    assert rand == pytest.approx(np.mean(per_image), abs=0.01)
    png = (folder / "image" / "0.png").read_bytes()
    answer = model.signatures["serving_default"](images=tf.constant([png]))
    probabilities = answer["probabilities"].numpy()
    assert probabilities.shape == (1, 64, 96, 3)
    np.testing.assert_allclose(probabilities.sum(axis=-1), 1.0, atol=1e-4)
    mask = np.asarray(Image.open(io.BytesIO(answer["mask_png_bytes"].numpy()[0])))
    np.testing.assert_array_equal(mask, probabilities[0].argmax(axis=-1))  # class indices
    assert "mean class Dice" in (root / "report.html").read_text()
