"""preprocessing_fn under TFT's Beam implementation, on real membrane images."""

import functools

import numpy as np
import pytest
import tensorflow_transform.beam as tft_beam
from tensorflow_transform.tf_metadata import dataset_metadata

from unet_tfx import features as F
from unet_tfx.components.schema import build_schema
from unet_tfx.components.transform import preprocessing_fn
from unet_tfx.config import BUNDLED_DATA

IMAGE_CONFIG = {"image_height": 512, "image_width": 512, "channels": 1}


def _raw_examples(ids):
    return [
        {
            F.IMAGE: [(BUNDLED_DATA / "image" / f"{i}.png").read_bytes()],
            F.MASK: [(BUNDLED_DATA / "label" / f"{i}.png").read_bytes()],
            F.HEIGHT: [512], F.WIDTH: [512], F.ID: [str(i).encode()],
        }
        for i in ids
    ]


@pytest.fixture(scope="module")
def transformed(tmp_path_factory):
    metadata = dataset_metadata.DatasetMetadata(build_schema(512, 512))
    with tft_beam.Context(temp_dir=str(tmp_path_factory.mktemp("tft"))):
        (data, _), _ = (_raw_examples([0, 7, 19]), metadata) | tft_beam.AnalyzeAndTransformDataset(
            functools.partial(preprocessing_fn, custom_config=IMAGE_CONFIG),
            output_record_batches=False)
    return data


def test_mask_is_exactly_zero_or_one(transformed):
    masks = np.stack([np.asarray(x[F.MASK_XF]) for x in transformed])
    assert masks.shape == (3, 512, 512, 1)
    assert set(np.unique(masks)) == {0.0, 1.0}
    assert 0.1 < 1 - masks.mean() < 0.4  # the membrane share of ISBI labels


def test_image_is_z_scored_over_the_dataset(transformed):
    images = np.stack([np.asarray(x[F.IMAGE_XF]) for x in transformed])
    assert images.shape == (3, 512, 512, 1)
    assert images.mean() == pytest.approx(0.0, abs=1e-3)
    assert images.std() == pytest.approx(1.0, abs=1e-3)


def test_statistics_travel_with_each_example(transformed):
    raw = np.stack([np.asarray(x[F.IMAGE_XF]) for x in transformed])
    mean = float(np.asarray(transformed[0][F.IMAGE_MEAN_XF]).ravel()[0])
    std = float(np.asarray(transformed[0][F.IMAGE_STD_XF]).ravel()[0])
    assert 50 < mean < 200 and std > 10  # 8-bit grey levels
    pixels = np.stack([raw * std + mean])
    assert pixels.min() >= -0.5 and pixels.max() <= 255.5
