"""Shared fixtures: root logging restored after each test, one `test`-profile pipeline run that
several test modules inspect, and a small real Transform graph for export tests."""

import functools
import logging

import pytest
import tensorflow as tf
import tensorflow_transform as tft
import tensorflow_transform.beam as tft_beam
from tensorflow_transform.tf_metadata import dataset_metadata, metadata_io

from unet_tfx import features as F
from unet_tfx.components.schema import build_schema
from unet_tfx.components.transform import preprocessing_fn
from unet_tfx.config import BUNDLED_DATA, load_profile
from unet_tfx.pipeline.local_runner import run_local


@pytest.fixture(autouse=True)
def _restore_root_logging():
    """Each test starts with the root logger's handlers and level as they were: a handler that
    `unet-tfx` (console.setup, log_to_file) or Beam added inside one test would otherwise write
    to that test's captured, since closed, stderr."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in [h for h in root.handlers if h not in handlers]:
        root.removeHandler(handler)
        handler.close()
    root.setLevel(level)


@pytest.fixture(scope="session")
def pipeline_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("pipeline")


@pytest.fixture(scope="session")
def pipeline_config(pipeline_dir):
    return load_profile("test", examples_dir=str(pipeline_dir / "examples"),
                        pipeline_root=str(pipeline_dir / "tfx"),
                        serving_dir=str(pipeline_dir / "serving"))


@pytest.fixture(scope="session")
def first_run(pipeline_config):
    """The first run on a fresh pipeline root: ingests the bundled data, trains, pushes."""
    summary = run_local(pipeline_config)
    assert summary.succeeded, summary.error
    return summary


@pytest.fixture(scope="session")
def transform_output(tmp_path_factory):
    """A real Transform graph, analyzed over two 64² crops of membrane images."""
    size = 64

    def png(path):
        return tf.io.encode_png(tf.io.decode_png(path.read_bytes(), channels=1)[:size, :size]
                                ).numpy()

    raw = [{F.IMAGE: [png(BUNDLED_DATA / "image" / f"{i}.png")],
            F.MASK: [png(BUNDLED_DATA / "label" / f"{i}.png")],
            F.HEIGHT: [size], F.WIDTH: [size], F.ID: [str(i).encode()]} for i in (0, 1)]
    metadata = dataset_metadata.DatasetMetadata(build_schema(size, size))
    directory = str(tmp_path_factory.mktemp("transform_output"))
    config = {"image_height": size, "image_width": size, "channels": 1}
    with tft_beam.Context(temp_dir=str(tmp_path_factory.mktemp("tft_tmp"))):
        transform_fn = (raw, metadata) | tft_beam.AnalyzeDataset(
            functools.partial(preprocessing_fn, custom_config=config))
        _ = transform_fn | tft_beam.WriteTransformFn(directory)
    metadata_io.write_metadata(metadata, f"{directory}/{tft.TFTransformOutput.RAW_METADATA_DIR}")
    return tft.TFTransformOutput(directory)
