"""The records ingestion writes: tf.train.Examples of PNGs in GZIP TFRecord shards.

Features (names from `unet_tfx.features`): image (PNG bytes), mask (PNG bytes, {0, 255}; absent
for unlabeled images), height, width (int64) and id (bytes). Shards are named
data-SSSSS-of-NNNNN.tfrecord.gz.
"""

import glob
import io
import os

import numpy as np
import tensorflow as tf
from PIL import Image

from unet_tfx import features
from unet_tfx.ingest.decode import encode_png

SHARD_PREFIX = "data"
SHARD_TEMPLATE = "-SSSSS-of-NNNNN"
SHARD_SUFFIX = ".tfrecord.gz"


def make_example(example_id: str, image: np.ndarray, mask: np.ndarray | None) -> bytes:
    """A serialized tf.train.Example of `image` (and `mask`) as PNGs."""

    def bytes_feature(value: bytes) -> tf.train.Feature:
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))

    def int_feature(value: int) -> tf.train.Feature:
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))

    feature = {
        features.IMAGE: bytes_feature(encode_png(image)),
        features.HEIGHT: int_feature(image.shape[0]),
        features.WIDTH: int_feature(image.shape[1]),
        features.ID: bytes_feature(example_id.encode()),
    }
    if mask is not None:
        feature[features.MASK] = bytes_feature(encode_png(mask))
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def shard_paths(path_or_glob: str) -> list[str]:
    """The shards of a split folder, or the files a glob (or a single path) matches, sorted."""
    path_or_glob = os.fspath(path_or_glob)
    if os.path.isdir(path_or_glob):
        path_or_glob = os.path.join(path_or_glob, f"{SHARD_PREFIX}-*{SHARD_SUFFIX}")
    return sorted(glob.glob(path_or_glob))


def read_examples(path_or_glob) -> list[dict]:
    """Every example in a split folder, a glob or one shard, decoded, in file order.

    Each dict has image (and mask, if labeled) as uint8 arrays shaped like PIL decodes the PNG
    ([height, width] for one channel), height and width as int and id as str.
    """
    paths = shard_paths(path_or_glob)
    if not paths:
        raise FileNotFoundError(f"no TFRecord shards at {path_or_glob}")
    decoded = []
    for record in tf.data.TFRecordDataset(paths, compression_type="GZIP").as_numpy_iterator():
        feature = tf.train.Example.FromString(record).features.feature
        example = {
            features.HEIGHT: feature[features.HEIGHT].int64_list.value[0],
            features.WIDTH: feature[features.WIDTH].int64_list.value[0],
            features.ID: feature[features.ID].bytes_list.value[0].decode(),
        }
        for key in (features.IMAGE, features.MASK):
            if key in feature:
                png = feature[key].bytes_list.value[0]
                example[key] = np.asarray(Image.open(io.BytesIO(png)))
        decoded.append(example)
    return decoded
