"""Scale: the synthetic data generator (bench/synth.py) and the Trainer's bounded-memory input."""

import json
import logging
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from unet_tfx import features as F
from unet_tfx.config import TrainingConfig
from unet_tfx.ingest import read_examples
from unet_tfx.trainer.dataset import choose_input_mode, eval_dataset, training_dataset

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import synth  # noqa: E402


def test_synthetic_pairs_are_ingested_examples_with_membrane_like_statistics(tmp_path):
    out = tmp_path / "synth"
    synth.synthesize(out, 10, eval_share=0.2, seed=3, workers=1, progress=None)
    train, evals = read_examples(out / "train"), read_examples(out / "eval")
    assert [e[F.ID] for e in evals] == ["synth-000004", "synth-000009"]  # as ingestion picks
    assert len(train) == 8 and all(e[F.ID].startswith("synth-") for e in train)
    manifest = json.loads((out / synth.MANIFEST).read_text())
    assert manifest["count"] == 10 and manifest["splits"]["eval"]["count"] == 2
    for example in train + evals:
        assert example[F.IMAGE].shape == example[F.MASK].shape == (512, 512)
        assert example[F.IMAGE].dtype == np.uint8
        assert set(np.unique(example[F.MASK])) == {0, 255}
        assert (example[F.HEIGHT], example[F.WIDTH]) == (512, 512)
    # Deterministic per (seed, index), whatever wrote it.
    image, mask = synth.pair(3, 4)
    np.testing.assert_array_equal(evals[0][F.IMAGE], image)
    np.testing.assert_array_equal(evals[0][F.MASK], mask)

    stats = synth.pair_stats([e[F.IMAGE] for e in train + evals],
                             [e[F.MASK] for e in train + evals])
    # The bundled ISBI images: share 0.22, membrane 85 ± 33, cell 138 ± 40, noise 16.
    assert 0.17 <= stats["membrane_share"] <= 0.27
    assert 70 <= stats["membrane_mean"] <= 100 and 25 <= stats["membrane_std"] <= 42
    assert 125 <= stats["cell_mean"] <= 152 and 30 <= stats["cell_std"] <= 50
    assert 10 <= stats["noise"] <= 22
    for example in train + evals:
        assert 0.10 <= (example[F.MASK] == 0).mean() <= 0.35


def test_synth_refuses_an_existing_folder(tmp_path):
    assert synth.main(["--count", "2", "--out", str(tmp_path)]) == 2


class _Spec:
    """Stands in for tft.TFTransformOutput: a raw float feature `pixels` that its "Transform
    graph" passes through as both image_xf and mask_xf."""

    def __init__(self, size):
        self.size = size

    def transformed_feature_spec(self):
        image = tf.io.FixedLenFeature([self.size, self.size, 1], tf.float32)
        return {F.IMAGE_XF: image, F.MASK_XF: image,
                F.IMAGE_MEAN_XF: tf.io.FixedLenFeature([1], tf.float32)}

    def raw_feature_spec(self):
        return {"pixels": tf.io.FixedLenFeature([self.size, self.size, 1], tf.float32)}

    def transform_features_layer(self):
        return lambda raw: {F.IMAGE_XF: raw["pixels"], F.MASK_XF: raw["pixels"]}


def _example_files(folder: Path, count: int, size: int, files: int = 2) -> list[str]:
    """GZIP shards of examples whose transformed mask equals the image (any misalignment of
    the augmentation shows) and whose pixels encode the example number."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [str(folder / f"part-{i}.gz") for i in range(files)]
    writers = [tf.io.TFRecordWriter(p, options="GZIP") for p in paths]
    for i in range(count):
        pixels = (i * 10000 + np.arange(size * size, dtype=np.float32)).reshape(size, size, 1)
        floats = tf.train.Feature(float_list=tf.train.FloatList(value=pixels.ravel()))
        example = tf.train.Example(features=tf.train.Features(feature={"pixels": floats}))
        writers[i % files].write(example.SerializeToString())
    for writer in writers:
        writer.close()
    return [str(folder / "part-*.gz")]


def _has_cache(dataset) -> bool:
    return b"CacheDataset" in dataset._as_serialized_graph().numpy()


@pytest.mark.parametrize("budget_mb, cached", [(0.01, False), (64, True)])
def test_input_streams_beyond_the_cache_budget_and_caches_within_it(tmp_path, caplog, budget_mb,
                                                                    cached):
    size, count = 32, 12  # 12 examples x 8 KiB = 96 KiB parsed
    patterns = _example_files(tmp_path / "raw", count, size)
    cfg = TrainingConfig(patch_size=16, batch_size=4, eval_batch_size=5, augment=True,
                         cache_budget_mb=budget_mb)
    mode = choose_input_mode(patterns, _Spec(size), cfg.cache_budget_mb)
    assert mode.cache is cached and abs(mode.examples - count) <= 1  # estimated
    assert mode.example_bytes == 2 * size * size * 4

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="unet_tfx.trainer"):
        train = training_dataset(patterns, _Spec(size), cfg)
        evals = eval_dataset(patterns, _Spec(size), cfg)
    said = "cached in memory" if cached else "streamed from 2 file(s)"
    assert [r.getMessage().split(":")[0] for r in caplog.records if said in r.getMessage()] == [
        "training input", "eval input"]
    assert _has_cache(train) is cached and _has_cache(evals) is cached

    seen = set()
    for images, masks in train.take(2 * count):  # several passes over the data
        assert images.shape == masks.shape == (4, 16, 16, 1)
        np.testing.assert_array_equal(images, masks)  # cut and turned together
        seen.update(int(v) // 10000 for v in images.numpy()[:, 0, 0, 0])
    assert seen == set(range(count))  # every example reaches training

    batches = list(evals)
    assert [len(images) for images, _ in batches] == [5, 5, 2]  # each example once, whole
    assert batches[0][0].shape[1:] == (size, size, 1)
    whole = sorted(int(images[k, 0, 0, 0]) // 10000 for images, _ in batches
                   for k in range(len(images)))
    assert whole == list(range(count))


def test_the_training_seed_picks_the_patches(tmp_path):
    size = 32
    patterns = _example_files(tmp_path / "raw", 6, size)

    def first_batches(seed):
        cfg = TrainingConfig(patch_size=16, batch_size=4, augment=True, seed=seed)
        return np.stack([images for images, _ in training_dataset(patterns, _Spec(size),
                                                                  cfg).take(3)])

    np.testing.assert_array_equal(first_batches(7), first_batches(7))  # a run repeats
    assert not np.array_equal(first_batches(7), first_batches(8))
    with pytest.raises(ValueError, match=r"seed must be an integer in \[0, 2\*\*32\); got -1"):
        TrainingConfig(seed=-1)


def test_default_budget_caches_the_bundled_data_and_streams_thousands():
    budget = TrainingConfig().cache_budget_mb
    per_example = 2 * 512 * 512 * 4 / 2**20  # image_xf + mask_xf, float32, MiB
    assert 30 * per_example <= budget < 5000 * 0.8 * per_example
