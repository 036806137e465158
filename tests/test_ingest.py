"""Ingestion: files → GZIP TFRecord shards of PNG tf.Examples; checked input; all-or-nothing."""

import argparse
import csv
import json
import logging
import os
import re
import shutil

import numpy as np
import pytest
import tifffile
from PIL import Image

from unet_tfx.config import BUNDLED_DATA
from unet_tfx.ingest import IngestError, IngestSummary, ingest, read_examples
from unet_tfx.ingest.command import register
from unet_tfx.ingest.sources import Ref, natural_key, split_eval

GZIP_MAGIC = b"\x1f\x8b"


def _save(path, pixels):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def _pairs(root, count, shape=(6, 8)):
    """`count` random PNG pairs, masks in {0, 1}: (images folder, masks folder, pixels by id)."""
    rng = np.random.default_rng(count)
    pixels = {}
    for i in range(count):
        image = rng.integers(0, 256, shape, dtype=np.uint8)
        mask = rng.integers(0, 2, shape, dtype=np.uint8)
        _save(root / "images" / f"{i}.png", image)
        _save(root / "masks" / f"{i}.png", mask)
        pixels[str(i)] = image, mask
    return root / "images", root / "masks", pixels


def _stack(path, pages):
    """A grayscale TIFF, one page per leading index (tifffile would read [n, h, 4] as RGBA)."""
    tifffile.imwrite(path, pages, photometric="minisblack")


def _by_id(examples):
    return {e["id"]: e for e in examples}


def _assert_nothing_left(out):
    assert not out.exists()
    assert not list(out.parent.glob(f"{out.name}.*")), "a temporary sibling was left behind"


def test_real_membrane_pairs_round_trip_pixel_exact(tmp_path, caplog):
    for folder in ("image", "label"):
        (tmp_path / folder).mkdir()
        for stem in ("0", "1", "10"):
            shutil.copy(BUNDLED_DATA / folder / f"{stem}.png", tmp_path / folder)
    out = tmp_path / "out"

    with caplog.at_level(logging.INFO, logger="unet_tfx.ingest"):
        summary = ingest(out, images=tmp_path / "image", masks=tmp_path / "label")

    examples = read_examples(out)
    assert sorted(e["id"] for e in examples) == ["0", "1", "10"]
    for example in examples:
        image = np.asarray(Image.open(tmp_path / "image" / f"{example['id']}.png"))
        label = np.asarray(Image.open(tmp_path / "label" / f"{example['id']}.png"))
        np.testing.assert_array_equal(example["image"], image)
        np.testing.assert_array_equal(example["mask"], np.where(label > 0, 255, 0))
        assert example["image"].dtype == example["mask"].dtype == np.uint8
        assert (example["height"], example["width"]) == (512, 512)
    assert isinstance(summary, IngestSummary)
    assert (summary.count, summary.splits, summary.output) == (3, {"all": 3}, str(out))
    assert summary.bytes == sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    assert [p.name for p in out.glob("*.tfrecord.gz")] == ["data-00000-of-00001.tfrecord.gz"]
    manifest = json.loads((out / "ingest.json").read_text())
    assert manifest["splits"] == {"all": {"dir": ".", "count": 3, "ids": ["0", "1", "10"]}}
    assert (manifest["image_height"], manifest["image_width"], manifest["labeled"]) == (
        512, 512, True)
    assert manifest["sources"]["images"] == str((tmp_path / "image").resolve())
    messages = [r.getMessage() for r in caplog.records if r.name == "unet_tfx.ingest"]
    assert any("3/3 (100%)" in m and "img/s" in m and "ETA" in m for m in messages)
    assert "ingested 3 examples" in messages[-1] and " MB in " in messages[-1]


def test_masks_become_0_255_in_gzip_shards(tmp_path):
    images, masks, pixels = _pairs(tmp_path, 10)
    out = tmp_path / "out"

    ingest(out, images=images, masks=masks, num_shards=3)

    shards = sorted(out.glob("*.tfrecord.gz"))
    assert [p.name for p in shards] == [f"data-0000{i}-of-00003.tfrecord.gz" for i in range(3)]
    assert all(p.read_bytes()[:2] == GZIP_MAGIC for p in shards)
    examples = _by_id(read_examples(out))
    assert sorted(examples, key=natural_key) == [str(i) for i in range(10)]
    for example_id, (image, mask) in pixels.items():
        np.testing.assert_array_equal(examples[example_id]["image"], image)
        np.testing.assert_array_equal(examples[example_id]["mask"], mask * 255)
        assert (examples[example_id]["height"], examples[example_id]["width"]) == (6, 8)


def test_natural_sort_and_even_eval_pick():
    assert sorted(["10", "9", "a10", "a2", "1"], key=natural_key) == ["1", "9", "10", "a2", "a10"]
    refs = [Ref(str(i), f"{i}.png") for i in range(10)]
    assert [r.id for r in split_eval(refs, 3)["eval"]] == ["2", "5", "9"]
    assert split_eval(refs, 0) == {"all": refs}
    with pytest.raises(IngestError, match="eval_count 10: expected 0 to 9"):
        split_eval(refs, 10)


def test_eval_split_is_deterministic_every_fifth_of_30(tmp_path):
    images, masks, _ = _pairs(tmp_path, 30, shape=(2, 3))
    runs = []
    for name in ("a", "b"):
        summary = ingest(tmp_path / name, images=images, masks=masks, eval_count=6)
        assert summary.splits == {"train": 24, "eval": 6}
        runs.append({split: sorted((e["id"] for e in read_examples(tmp_path / name / split)),
                                   key=natural_key) for split in ("train", "eval")})
    assert runs[0] == runs[1]
    assert runs[0]["eval"] == ["4", "9", "14", "19", "24", "29"]
    assert len(runs[0]["train"]) == 24 and not set(runs[0]["train"]) & set(runs[0]["eval"])
    assert not list((tmp_path / "a").glob("*.tfrecord.gz"))
    manifest = json.loads((tmp_path / "a" / "ingest.json").read_text())
    assert manifest["splits"]["eval"] == {"dir": "eval", "count": 6, "ids": runs[0]["eval"]}


def test_unlabeled_images_of_mixed_sizes_have_no_mask(tmp_path):
    images, _, pixels = _pairs(tmp_path, 3)
    other_size = _save(images / "3.png", np.zeros((4, 4), np.uint8))
    out = tmp_path / "out"

    ingest(out, images=images)

    examples = _by_id(read_examples(out))
    assert sorted(examples) == ["0", "1", "2", "3"]
    assert all("mask" not in e for e in examples.values())
    np.testing.assert_array_equal(examples["2"]["image"], pixels["2"][0])
    np.testing.assert_array_equal(examples["3"]["image"], np.asarray(Image.open(other_size)))
    manifest = json.loads((out / "ingest.json").read_text())
    assert (manifest["labeled"], manifest["image_height"], manifest["image_width"]) == (
        False, None, None)


def test_rgb_images_with_channels_3(tmp_path):
    images, masks, _ = _pairs(tmp_path, 2)
    rgb = np.random.default_rng(3).integers(0, 256, (6, 8, 3), dtype=np.uint8)
    _save(images / "1.png", rgb)
    _save(images / "0.png", rgb[::-1])
    out = tmp_path / "out"

    ingest(out, images=images, masks=masks, channels=3)

    np.testing.assert_array_equal(_by_id(read_examples(out))["1"]["image"], rgb)


@pytest.mark.parametrize("labeled", [True, False])
def test_tiff_stacks_pair_page_by_page(tmp_path, labeled):
    rng = np.random.default_rng(1)
    volume = rng.integers(0, 256, (3, 5, 7), dtype=np.uint8)
    labels = rng.integers(0, 2, (3, 5, 7), dtype=np.uint8) * 255
    _stack(tmp_path / "train-volume.tif", volume)
    _stack(tmp_path / "train-labels.tif", labels)
    out = tmp_path / "out"

    ingest(out, image_stack=tmp_path / "train-volume.tif",
           mask_stack=tmp_path / "train-labels.tif" if labeled else None)

    examples = _by_id(read_examples(out))
    assert sorted(examples) == ["train-volume-000", "train-volume-001", "train-volume-002"]
    for page in range(3):
        example = examples[f"train-volume-{page:03d}"]
        np.testing.assert_array_equal(example["image"], volume[page])
        assert (example["height"], example["width"]) == (5, 7)
        if labeled:
            np.testing.assert_array_equal(example["mask"], labels[page])
        else:
            assert "mask" not in example


def test_tiff_files_in_folders_pair_with_png_masks(tmp_path):
    images, masks, pixels = _pairs(tmp_path, 2)
    (images / "1.png").unlink()
    _stack(images / "1.tif", pixels["1"][0])
    out = tmp_path / "out"

    ingest(out, images=images, masks=masks)

    np.testing.assert_array_equal(_by_id(read_examples(out))["1"]["image"], pixels["1"][0])


def _write_bad(tmp_path, case):
    """Input with one bad file; returns (ingest kwargs, the message the error must match)."""
    images, masks, pixels = _pairs(tmp_path, 3)
    image, mask = pixels["1"]
    kwargs = {"images": images, "masks": masks}
    if case == "corrupt":
        data = (images / "1.png").read_bytes()
        (images / "1.png").write_bytes(data[: len(data) // 2])
        return kwargs, r"images/1\.png: cannot read it .*expected a valid PNG or TIFF"
    if case == "size mismatch":
        _save(masks / "1.png", mask[:, :5])
        return kwargs, r"masks/1\.png: mask is 6x5 but its image is 6x8 .*expected the same size"
    if case == "mask levels":
        _save(masks / "1.png", (np.arange(48) % 4).astype(np.uint8).reshape(6, 8) * 60)
        return kwargs, r"masks/1\.png: mask has 4 levels \(0, 60, 120, 180\): expected at most two"
    if case == "mask levels without 0":
        _save(masks / "1.png", np.where(mask > 0, 255, 128).astype(np.uint8))
        return kwargs, r"masks/1\.png: mask levels 128 and 255: expected 0 for background"
    if case == "a JPEG among the images":
        Image.fromarray(image).save(images / "9.jpg")
        return kwargs, r"images: 9\.jpg: unsupported image format: expected PNG or TIFF"
    if case == "channels":
        _save(images / "1.png", np.stack([image] * 3, axis=-1))
        return kwargs, r"images/1\.png: image has 3 channel\(s\) \(RGB\): expected 1"
    if case == "16-bit":
        tifffile.imwrite(images / "1.tif", image.astype(np.uint16) * 257)
        (images / "1.png").unlink()
        return kwargs, r"images/1\.tif: pixel format I;16.*expected an 8-bit image"
    if case == "signed 8-bit TIFF":
        tifffile.imwrite(images / "1.tif", (image.astype(np.int16) - 128).astype(np.int8))
        (images / "1.png").unlink()
        return kwargs, r"images/1\.tif: pixel format L \(stored as .*, signed samples\)"
    if case == "palette image":
        Image.fromarray(image).convert("P").save(images / "1.png")
        return kwargs, r"images/1\.png: pixel format P \(a palette image; convert it to grayscale"
    if case == "image and mask both bad":
        tifffile.imwrite(images / "1.tif", image.astype(np.uint16) * 257)
        (images / "1.png").unlink()
        _save(masks / "1.png", (np.arange(48) % 3).astype(np.uint8).reshape(6, 8) * 60)
        return kwargs, (r"images/1\.tif: pixel format I;16.*; and .*masks/1\.png: mask has 3 "
                        r"levels")
    if case == "too many pixels":
        return {**kwargs, "max_pixels": 47}, r"images/0\.png: 6x8 .* 48 pixels: expected at most 47"
    if case == "multi-page file":
        _stack(images / "1.tif", np.stack([image] * 2))
        (images / "1.png").unlink()
        return kwargs, r"images/1\.tif: file has 2 pages: expected a single image"
    if case == "image without mask":
        (masks / "1.png").unlink()
        return kwargs, r"images without a mask in .*masks: 1 \(expected one mask per image"
    if case == "mask without image":
        (images / "0.png").unlink()
        (images / "2.png").unlink()
        return kwargs, r"masks without an image in .*images: 0, 2 \(expected one mask per image"
    if case == "empty folder":
        empty = tmp_path / "empty"
        empty.mkdir()
        return {"images": empty}, r"empty: no images: expected \*\.png, \*\.tif or \*\.tiff"
    if case == "empty stack":
        (tmp_path / "stack.tif").write_bytes(b"")
        return {"image_stack": tmp_path / "stack.tif"}, r"stack\.tif: the stack is empty"
    if case == "stack page counts":
        _stack(tmp_path / "v.tif", np.zeros((3, 4, 4), np.uint8))
        _stack(tmp_path / "l.tif", np.zeros((2, 4, 4), np.uint8))
        return ({"image_stack": tmp_path / "v.tif", "mask_stack": tmp_path / "l.tif"},
                r"l\.tif has 2 pages but .*v\.tif has 3: expected one mask page per image page")
    raise AssertionError(case)


@pytest.mark.parametrize("case", [
    "corrupt", "size mismatch", "mask levels", "mask levels without 0",
    "a JPEG among the images", "signed 8-bit TIFF", "palette image", "channels", "16-bit",
    "image and mask both bad", "too many pixels",
    "multi-page file", "image without mask", "mask without image", "empty folder",
    "empty stack", "stack page counts",
])
def test_bad_input_names_the_file_and_leaves_nothing(tmp_path, case):
    kwargs, message = _write_bad(tmp_path, case)
    out = tmp_path / "out"

    with pytest.raises(IngestError, match=message) as error:
        ingest(out, **kwargs)

    assert "while running" not in str(error.value)
    _assert_nothing_left(out)


def test_errors_from_worker_processes_keep_their_message(tmp_path):
    images, masks, bad = _many_bad(tmp_path)  # Beam's dead letters cross the process boundary
    out = tmp_path / "out"

    with pytest.raises(IngestError, match=r"^5 bad example\(s\) of 10: ") as error:
        ingest(out, images=images, masks=masks,
               beam_args=["--direct_running_mode=multi_processing", "--direct_num_workers=1"])

    assert [file for file, _ in error.value.problems] == [str(f) for f, _ in bad.values()]
    for (_, reason), (_, expected) in zip(error.value.problems, bad.values(), strict=True):
        assert re.fullmatch(expected, reason), reason
    _assert_nothing_left(out)


def test_existing_output_is_kept_unless_overwrite(tmp_path):
    images, masks, _ = _pairs(tmp_path, 4)
    out = tmp_path / "out"
    ingest(out, images=images, masks=masks)
    before = sorted(p.relative_to(out) for p in out.rglob("*"))

    with pytest.raises(IngestError, match=r"out: already exists: .*overwrite"):
        ingest(out, images=images, masks=masks)
    _save(masks / "3.png", np.full((6, 8), 7, np.uint8)[:, :4])  # a bad mask
    with pytest.raises(IngestError, match="mask is 6x4"):
        ingest(out, images=images, masks=masks, overwrite=True)
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before

    _save(masks / "3.png", np.full((6, 8), 7, np.uint8))
    summary = ingest(out, images=images, masks=masks, eval_count=1, overwrite=True)

    assert summary.splits == {"train": 3, "eval": 1}
    assert not list(out.glob("*.tfrecord.gz"))
    assert [e["id"] for e in read_examples(out / "eval")] == ["3"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images", "masks", "out"]


def test_a_grey_palette_mask_is_read_by_its_levels_not_its_indices(tmp_path):
    """Editors often save a black-and-white mask as a palette with white at index 0: read by
    index it would be inverted."""
    images, masks, pixels = _pairs(tmp_path, 3)
    mask = pixels["1"][1] * 255
    inverted = Image.fromarray(mask).convert("P", palette=Image.ADAPTIVE, colors=2)
    inverted.save(masks / "1.png")
    assert Image.open(masks / "1.png").getpalette()[:3] == [255, 255, 255]
    out = tmp_path / "out"
    ingest(out, images=images, masks=masks)
    np.testing.assert_array_equal(_by_id(read_examples(out))["1"]["mask"],
                                  np.where(mask > 0, 255, 0))


def test_overwrite_refuses_an_output_that_holds_the_inputs_and_honours_the_umask(tmp_path):
    project = tmp_path / "project"
    images, masks, _ = _pairs(project / "raw", 3)
    with pytest.raises(IngestError, match=r"raw/images: an input inside the output .*project"):
        ingest(project, images=images, masks=masks, overwrite=True)
    assert images.is_dir() and masks.is_dir()
    previous = os.umask(0o022)
    try:
        ingest(tmp_path / "out", images=images, masks=masks)
    finally:
        os.umask(previous)
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o755


def test_a_remote_output_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    """Path("gs://b/x") is the local folder gs:/b/x: refused, not written there."""
    images, masks, _ = _pairs(tmp_path, 3)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(IngestError, match=r"gs://bucket/examples: ingestion writes a local "
                       r"folder .*gsutil cp -r"):
        ingest("gs://bucket/examples", images=images, masks=masks)
    assert not (tmp_path / "gs:").exists()


def _cli(argv):
    parser = argparse.ArgumentParser(prog="unet-tfx")
    register(parser.add_subparsers())
    args = parser.parse_args(["ingest", *argv])
    return args.func(args)


def test_cli_ingests_and_passes_beam_args(tmp_path):
    images, masks, _ = _pairs(tmp_path, 3)
    out = tmp_path / "out"

    code = _cli(["--images", str(images), "--masks", str(masks), "--output", str(out),
                 "--eval-count", "1", "--beam-arg=--runner=DirectRunner", "--",
                 "--direct_num_workers=1"])

    assert code == 0
    assert [e["id"] for e in read_examples(out / "eval")] == ["2"]


def test_cli_bad_input_prints_error_and_returns_2(tmp_path, capsys):
    kwargs, message = _write_bad(tmp_path, "corrupt")
    out = tmp_path / "out"

    code = _cli(["--images", str(kwargs["images"]), "--masks", str(kwargs["masks"]),
                 "-o", str(out)])

    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("error: 1 bad example(s) of 3: nothing was written")
    assert err[1].strip().startswith(str(kwargs["images"] / "1.png") + ": cannot read it")
    assert len(err) == 2 and "Traceback" not in "\n".join(err)
    _assert_nothing_left(out)


def _many_bad(tmp_path, count=10):
    """`count` pairs, five of them bad in different ways: (images, masks, {id: (file, reason)})."""
    images, masks, pixels = _pairs(tmp_path, count)
    data = (images / "1.png").read_bytes()
    (images / "1.png").write_bytes(data[: len(data) // 2])
    _save(masks / "3.png", pixels["3"][1][:, :5])
    _save(masks / "5.png", (np.arange(48) % 4).astype(np.uint8).reshape(6, 8) * 60)
    _save(images / "7.png", np.stack([pixels["7"][0]] * 3, axis=-1))
    (images / "8.png").unlink()
    tifffile.imwrite(images / "8.tif", pixels["8"][0].astype(np.uint16) * 257)
    bad = {
        "1": (images / "1.png", r"cannot read it \(.*\): expected a valid PNG or TIFF image"),
        "3": (masks / "3.png", r"mask is 6x5 but its image is 6x8 \(height x width\): expected "
              "the same size"),
        "5": (masks / "5.png", r"mask has 4 levels \(0, 60, 120, 180\): expected at most two .*"),
        "7": (images / "7.png", r"image has 3 channel\(s\) \(RGB\): expected 1"),
        "8": (images / "8.tif", r"pixel format I;16 .*: expected an 8-bit image .*"),
    }
    return images, masks, bad


def test_one_run_lists_every_bad_pair_and_writes_nothing(tmp_path):
    images, masks, bad = _many_bad(tmp_path)
    out = tmp_path / "out"

    with pytest.raises(IngestError) as error:
        ingest(out, images=images, masks=masks, eval_count=2)

    message = str(error.value)
    assert message.splitlines()[0] == (
        "5 bad example(s) of 10: nothing was written (skip_bad, or --skip-bad, writes the other "
        "5 and lists the bad ones in rejected.csv):")
    assert [file for file, _ in error.value.problems] == [str(f) for f, _ in bad.values()]
    for (file, reason), (_, expected) in zip(error.value.problems, bad.values(), strict=True):
        assert re.fullmatch(expected, reason), reason
        assert f"\n  {file}: {reason}" in message
    assert "Traceback" not in message and "while running" not in message
    _assert_nothing_left(out)


def _rejected_rows(out):
    with open(out / "rejected.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_skip_bad_writes_the_good_ones_and_lists_the_bad_in_rejected_csv(tmp_path, capsys):
    images, masks, bad = _many_bad(tmp_path)
    out = tmp_path / "out"
    argv = ["--images", str(images), "--masks", str(masks), "-o", str(out), "--eval-count", "2"]

    assert _cli(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("error: 5 bad example(s) of 10") and len(err) == 6
    assert [line.strip().split(": ", 1)[0] for line in err[1:]] == [
        str(f) for f, _ in bad.values()]
    _assert_nothing_left(out)

    assert _cli([*argv, "--skip-bad"]) == 0

    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"skipped 5 bad example(s) of 10: listed in {out / 'rejected.csv'}")
    # The split was chosen over all 10 (eval: 4 and 9); the bad ones are left out of theirs.
    assert [e["id"] for e in read_examples(out / "eval")] == ["4", "9"]
    assert sorted((e["id"] for e in read_examples(out / "train")), key=natural_key) == [
        "0", "2", "6"]
    rows = _rejected_rows(out)
    assert [(r["id"], r["split"], r["file"]) for r in rows] == [
        (i, "train", str(f)) for i, (f, _) in bad.items()]
    for row, (_, expected) in zip(rows, bad.values(), strict=True):
        assert re.fullmatch(expected, row["reason"]), row
    manifest = json.loads((out / "ingest.json").read_text())
    assert (manifest["count"], manifest["rejected"]) == (5, 5)
    assert manifest["splits"]["train"]["ids"] == ["0", "2", "6"]


def test_skip_bad_still_fails_when_a_split_is_left_empty(tmp_path):
    images, masks, bad = _many_bad(tmp_path)
    out = tmp_path / "out"

    # eval_count 1 holds out id 9 (good); masks of 9 made bad: the eval split is left empty.
    _save(masks / "9.png", np.zeros((6, 7), np.uint8))
    with pytest.raises(IngestError, match=r"every example of the eval split is bad, so nothing "
                       r"was written: expected at least one good example per split") as error:
        ingest(out, images=images, masks=masks, eval_count=1, skip_bad=True)

    assert len(error.value.problems) == 6
    _assert_nothing_left(out)

