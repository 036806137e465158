"""The whole TFX graph on LocalDagRunner with the `test` profile (a few minutes on 2 cores)."""

import glob
import os

import numpy as np
import pytest
import tensorflow as tf
from ml_metadata.metadata_store import metadata_store
from tfx import v1 as tfx

from unet_tfx.config import BUNDLED_DATA, load_profile
from unet_tfx.ingest import ingest
from unet_tfx.pipeline.local_runner import metadata_path, run_local

pytestmark = pytest.mark.e2e

GRAPH = ["ImportExampleGen", "StatisticsGen", "ConfiguredSchemaGen", "ExampleValidator",
         "AnomaliesGate", "Transform", "Trainer", "ServedModel", "Evaluator", "Pusher"]


@pytest.fixture(scope="module")
def config(pipeline_config):
    return pipeline_config


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("drift")


@pytest.fixture(scope="module")
def second_run(config, first_run):
    return run_local(config)


@pytest.fixture(scope="module")
def unreachable_run(config, second_run):
    return run_local(config.replace(min_membrane_dice=0.999))


def _versions(config):
    return sorted(os.listdir(os.path.join(config.serving_dir, config.model_name)))


def test_first_run_executes_every_component(first_run, config):
    assert {c.node: c.state for c in first_run.components} == {n: "COMPLETE" for n in GRAPH}
    store = metadata_store.MetadataStore(
        tfx.orchestration.metadata.sqlite_metadata_connection_config(metadata_path(config)))
    assert len(store.get_executions()) == len(GRAPH)


def test_first_run_ingested_the_bundled_data_24_6(first_run, config):
    for split, count in (("train", 24), ("eval", 6)):
        files = glob.glob(os.path.join(config.examples_dir, split, "*.tfrecord.gz"))
        records = tf.data.TFRecordDataset(files, compression_type="GZIP")
        assert sum(1 for _ in records) == count


def test_first_run_is_blessed_and_pushed(first_run, config):
    assert first_run.blessed is True
    assert set(first_run.metrics) >= {"membrane_dice", "cell_dice", "mean_dice", "pixel_accuracy",
                                      "membrane_iou", "cell_iou", "rand_score",
                                      "variation_of_information", "watershed_rand_score"}
    assert first_run.metrics["variation_of_information"] >= 0.0  # nats, unbounded above
    assert all(0.0 <= v <= 1.0 for k, v in first_run.metrics.items()
               if k != "variation_of_information")
    assert first_run.pushed_to.startswith(os.path.join(config.serving_dir, config.model_name))
    assert _versions(config) == [os.path.basename(first_run.pushed_to)]


def test_pushed_model_segments_a_raw_membrane_png(first_run):
    model = tf.saved_model.load(first_run.pushed_to)
    png = (BUNDLED_DATA / "test" / "0.png").read_bytes()
    probabilities = model.signatures["serving_default"](images=tf.constant([png]))
    out = probabilities["probabilities"].numpy()
    assert out.shape == (1, 512, 512, 1)
    assert out.min() >= 0.0 and out.max() <= 1.0 and out.std() > 0


def test_pushed_model_pads_and_crops_other_sizes(first_run):
    model = tf.saved_model.load(first_run.pushed_to)
    png = tf.io.encode_png(tf.cast(tf.random.uniform([100, 130, 1], 0, 255), tf.uint8))
    out = model.signatures["serving_default"](images=tf.stack([png, png]))["probabilities"]
    assert out.shape == (2, 100, 130, 1)
    np.testing.assert_allclose(out[0], out[1])


def test_second_run_reuses_unchanged_components_and_pushes_nothing(second_run, first_run,
                                                                  config):
    assert second_run.succeeded, second_run.error
    states = {c.node: c.state for c in second_run.components}
    for node in ("ImportExampleGen", "StatisticsGen", "ExampleValidator", "Transform"):
        assert states[node] == "CACHED", states
    # The served model (the first run's) is now the baseline: the Evaluator compares against it;
    # the data is what it was trained on, so the Trainer keeps it and nothing new is pushed.
    assert states["Evaluator"] == "COMPLETE"
    assert second_run.metrics["membrane_dice"] == pytest.approx(
        first_run.metrics["membrane_dice"], abs=1e-6)
    assert second_run.baseline_compared
    assert second_run.pushed_to is None
    assert _versions(config) == [os.path.basename(first_run.pushed_to)]


def test_unreachable_threshold_blesses_nothing_and_pushes_nothing(unreachable_run, config,
                                                                  second_run):
    versions_before = _versions(config)
    assert unreachable_run.succeeded, unreachable_run.error
    assert unreachable_run.blessed is False
    assert unreachable_run.pushed_to is None
    assert _versions(config) == versions_before


def _drifted_run(workdir, name, **ingest_args):
    examples = workdir / name / "examples"
    ingest(str(examples), eval_count=1, **ingest_args)
    config = load_profile("test", examples_dir=str(examples),
                          pipeline_root=str(workdir / name / "tfx"),
                          serving_dir=str(workdir / name / "serving"))
    return run_local(config)


def _assert_stopped_at_validation(summary, expected):
    assert not summary.succeeded
    states = {c.node: c.state for c in summary.components}
    assert states["ExampleValidator"] == "COMPLETE"
    assert "Transform" not in states and "Trainer" not in states
    assert expected in str(summary.error)


def _write_pngs(folder, count, size):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        pixels = rng.integers(0, 256, (size, size, 1), dtype=np.uint8)
        (folder / f"{i}.png").write_bytes(tf.io.encode_png(pixels).numpy())


def test_examples_without_masks_stop_before_transform(workdir):
    images = workdir / "nomask_src"
    _write_pngs(images, 3, 512)
    summary = _drifted_run(workdir, "nomask", images=str(images))
    _assert_stopped_at_validation(summary, "mask")


def test_examples_of_the_wrong_size_stop_before_transform(workdir):
    images, masks = workdir / "small_src" / "image", workdir / "small_src" / "mask"
    _write_pngs(images, 3, 256)
    masks.mkdir()
    for i in range(3):
        (masks / f"{i}.png").write_bytes(
            tf.io.encode_png(tf.fill([256, 256, 1], tf.constant(255, tf.uint8))).numpy())
    summary = _drifted_run(workdir, "small", images=str(images), masks=str(masks))
    _assert_stopped_at_validation(summary, "height")
