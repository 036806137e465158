"""tf.data input from Transform's output: random augmented patches for training, whole images
for evaluation.

Both batch by the global batch, the per-replica batch size times the strategy's replicas, and
are sharded by element across workers under MultiWorkerMirroredStrategy (see `shard_by_data`).
"""

import tensorflow as tf
import tensorflow_transform as tft

from unet_tfx import features as F
from unet_tfx.config import TrainingConfig


def _files(patterns: list[str]) -> list[str]:
    files = sorted(f for pattern in patterns for f in tf.io.gfile.glob(pattern))
    if not files:
        raise FileNotFoundError(f"no transformed examples match {patterns}")
    return files


def image_mask_pairs(patterns: list[str], tf_transform_output: tft.TFTransformOutput):
    """Transformed examples → (image_xf, mask_xf) pairs of whole images."""
    spec = tf_transform_output.transformed_feature_spec()
    spec = {key: spec[key] for key in (F.IMAGE_XF, F.MASK_XF)}

    def parse(serialized):
        parsed = tf.io.parse_single_example(serialized, spec)
        return parsed[F.IMAGE_XF], parsed[F.MASK_XF]

    records = tf.data.TFRecordDataset(_files(patterns), compression_type="GZIP")
    return records.map(parse, num_parallel_calls=tf.data.AUTOTUNE)


def shard_by_data(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """Under MultiWorkerMirroredStrategy, each worker keeps its share of the elements (DATA).

    Transform writes one file per split, so the default FILE-then-DATA auto-sharding has no
    files to split between workers. Every worker builds the same seeded stream and keeps its
    part of each global batch.
    """
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.DATA)
    return dataset.with_options(options)


def _augment(image, mask, patch_size: int, flip: bool, seed: tf.Tensor):
    """A random patch_size² crop of image and mask together, plus flips and 90° turns."""
    both = tf.concat([image, mask], axis=-1)
    both = tf.image.stateless_random_crop(
        both, [patch_size, patch_size, tf.shape(both)[-1]], seed=seed)
    if flip:
        seeds = tf.random.experimental.stateless_split(seed, 3)
        both = tf.image.stateless_random_flip_left_right(both, seed=seeds[0])
        both = tf.image.stateless_random_flip_up_down(both, seed=seeds[1])
        turns = tf.random.stateless_uniform([], seeds[2], maxval=4, dtype=tf.int32)
        both = tf.image.rot90(both, k=turns)
    return both[..., :-1], both[..., -1:]


def training_dataset(patterns, tf_transform_output, cfg: TrainingConfig,
                     replicas: int = 1) -> tf.data.Dataset:
    """An endless stream of shuffled, augmented patch batches of `cfg.batch_size` per replica."""
    pairs = image_mask_pairs(patterns, tf_transform_output).cache().repeat()
    pairs = pairs.shuffle(64, seed=cfg.seed)
    seeds = tf.data.Dataset.random(seed=cfg.seed).batch(2)
    patches = tf.data.Dataset.zip((pairs, seeds)).map(
        lambda pair, seed: _augment(*pair, cfg.patch_size, cfg.augment, seed),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    batches = patches.batch(cfg.batch_size * replicas, drop_remainder=True)
    return shard_by_data(batches.prefetch(tf.data.AUTOTUNE))


def eval_dataset(patterns, tf_transform_output, cfg: TrainingConfig,
                 replicas: int = 1) -> tf.data.Dataset:
    """Whole images, each seen once per pass, `cfg.eval_batch_size` per replica."""
    pairs = image_mask_pairs(patterns, tf_transform_output).cache()
    return shard_by_data(pairs.batch(cfg.eval_batch_size * replicas).prefetch(tf.data.AUTOTUNE))
