"""tf.data input: random augmented patches for training, whole images for evaluation, from the
raw ingested examples (ExampleGen's output) through the Transform graph.

Transform only analyzes (`materialize=False`): writing its float32 output would hold every
transformed example in the local Beam runner's memory (measured: 11 GB and growing at 5,000
512² examples) and take 1.7x the ingested shards on disk. The input parses the raw examples
(PNG bytes) and applies `transform_features_layer()` in parallel map calls, so training, the
Evaluator and serving still share the one Transform graph.

Each input is cached in memory when its estimated size fits `TrainingConfig.cache_budget_mb`
(the bundled 30 images: 60 MiB), and otherwise streamed from the transformed shards: files
interleaved, a bounded shuffle buffer, parsing and augmentation in parallel, prefetch, so
memory stays bounded whatever the number of examples (`choose_input_mode` logs which and why).

Both batch by the global batch, the per-replica batch size times the strategy's replicas, and
are sharded by element across workers under MultiWorkerMirroredStrategy (see `shard_by_data`).
"""

import dataclasses
import logging
import zlib

import numpy as np
import tensorflow as tf
import tensorflow_transform as tft

from unet_tfx import features as F
from unet_tfx.config import TrainingConfig
from unet_tfx.trainer import augment

log = logging.getLogger("unet_tfx.trainer")

MIB = 1024 * 1024
# Whole images shuffled before patches are cut, when cached (as before streaming existed).
CACHED_SHUFFLE_BUFFER = 64
# Streaming: serialized examples waiting in the shuffle buffer, at most 1/8 of the cache budget,
# within [STREAM_SHUFFLE_MIN, STREAM_SHUFFLE_MAX]: 128 x 2 MiB at 512² by default.
STREAM_SHUFFLE_MAX = 128
STREAM_SHUFFLE_MIN = 16
# Files read at once when streaming (Transform on one machine writes one per split).
STREAM_CYCLE = 4
# Records read and compressed to estimate the files' example count.
SAMPLED_RECORDS = 4
# Raw examples parsed and transformed per map call.
TRANSFORM_BATCH = 4


def _files(patterns: list[str]) -> list[str]:
    files = sorted(f for pattern in patterns for f in tf.io.gfile.glob(pattern))
    if not files:
        raise FileNotFoundError(f"no examples match {patterns}")
    return files


def _pair_spec(tf_transform_output: tft.TFTransformOutput) -> dict:
    spec = tf_transform_output.transformed_feature_spec()
    return {key: spec[key] for key in (F.IMAGE_XF, F.MASK_XF)}


def transformer(tf_transform_output: tft.TFTransformOutput):
    """A function of serialized raw examples [k] → (image_xf [k, H, W, C], mask_xf [k, H, W, 1])
    through the Transform graph."""
    layer = tf_transform_output.transform_features_layer()
    raw_spec = tf_transform_output.raw_feature_spec()

    def transform(serialized):
        transformed = layer(tf.io.parse_example(serialized, raw_spec))
        return transformed[F.IMAGE_XF], transformed[F.MASK_XF]

    return transform


def _transformed(records: tf.data.Dataset, transform) -> tf.data.Dataset:
    """Serialized raw examples → (image_xf, mask_xf) pairs, TRANSFORM_BATCH per map call."""
    return records.batch(TRANSFORM_BATCH).map(
        transform, num_parallel_calls=tf.data.AUTOTUNE).unbatch()


def image_mask_pairs(patterns: list[str], tf_transform_output: tft.TFTransformOutput):
    """Raw examples → (image_xf, mask_xf) pairs of whole images, in file order."""
    records = tf.data.TFRecordDataset(_files(patterns), compression_type="GZIP")
    return _transformed(records, transformer(tf_transform_output))


@dataclasses.dataclass(frozen=True)
class InputMode:
    """How one input reads its data: cached in memory or streamed, and why."""

    cache: bool
    files: tuple
    examples: int  # estimated
    example_bytes: int  # one parsed (image_xf, mask_xf) pair in memory
    budget_bytes: int
    reason: str

    @property
    def name(self) -> str:
        return "memory" if self.cache else "stream"

    @property
    def shuffle_buffer(self) -> int:
        """Whole examples in the training input's shuffle buffer."""
        if self.cache:
            return CACHED_SHUFFLE_BUFFER
        fits = self.budget_bytes // (8 * max(self.example_bytes, 1))
        return int(min(STREAM_SHUFFLE_MAX, max(STREAM_SHUFFLE_MIN, fits)))


def _spec_bytes(spec: dict) -> int:
    """Bytes of one parsed example of fixed-length features."""
    return sum(int(np.prod(feature.shape)) * feature.dtype.size for feature in spec.values())


def _mib(size: float) -> str:
    return f"{size / MIB:,.0f} MiB" if size >= 10 * MIB else f"{size / MIB:.2g} MiB"


def estimate_examples(files: list[str]) -> int:
    """The files' example count, from their size and a few records, without reading them all.

    Compresses the first SAMPLED_RECORDS records as the GZIP writers do (zlib's default level);
    the count is the files' total size over the mean compressed record. Transform's output on
    the bundled and the synthetic data: exact to within a few percent.
    """
    total = sum(tf.io.gfile.stat(f).length for f in files)
    sample = list(tf.data.TFRecordDataset(files[:1], compression_type="GZIP")
                  .take(SAMPLED_RECORDS).as_numpy_iterator())
    if not sample:
        return 0
    compressed = sum(len(zlib.compress(record)) + 16 for record in sample) / len(sample)
    return max(1, round(total / compressed))


def choose_input_mode(patterns, tf_transform_output: tft.TFTransformOutput, budget_mb: float,
                      what: str = "input") -> InputMode:
    """Cache when the parsed examples (estimated count x bytes per example) fit `budget_mb`."""
    files = _files(patterns)
    example_bytes = _spec_bytes(_pair_spec(tf_transform_output))
    examples = estimate_examples(files)
    size, budget = examples * example_bytes, int(budget_mb * MIB)
    cache = size <= budget
    reason = (f"~{examples:,} examples x {_mib(example_bytes)} = {_mib(size)} "
              f"{'<=' if cache else '>'} cache_budget_mb {budget_mb:,g}")
    mode = InputMode(cache, tuple(files), examples, example_bytes, budget, reason)
    if cache:
        log.info("%s: cached in memory (%s)", what, reason)
    else:
        log.info("%s: streamed from %d file(s), shuffle buffer %d examples (%s)", what,
                 len(files), mode.shuffle_buffer, reason)
    return mode


def _streamed_records(files: tuple, seed: int | None, repeat: bool) -> tf.data.Dataset:
    """Serialized records of `files`, interleaved; their order reshuffled each pass if seeded."""
    names = tf.data.Dataset.from_tensor_slices(list(files))
    if seed is not None and len(files) > 1:
        names = names.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        names = names.repeat()
    return names.interleave(
        lambda name: tf.data.TFRecordDataset(name, compression_type="GZIP", buffer_size=4 * MIB),
        cycle_length=min(len(files), STREAM_CYCLE), block_length=1,
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


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


def _random_crop(image, mask, size: int, seed: tf.Tensor):
    """The same random size² window of image and mask: the crop and offsets that
    `tf.image.stateless_random_crop` takes from their concatenation, without copying the whole
    image into that concatenation first (at 64² patches of 512² images, 64x the patch)."""
    shape = tf.shape(image)
    limit = tf.stack([shape[0] - size + 1, shape[1] - size + 1, 1])
    tf.debugging.assert_positive(limit, f"images smaller than the {size}² patches")
    offset = tf.random.stateless_uniform([3], seed, maxval=tf.int32.max, dtype=tf.int32) % limit
    return (tf.slice(image, offset, [size, size, -1]), tf.slice(mask, offset, [size, size, -1]))


def _augment(image, mask, cfg: TrainingConfig, seed: tf.Tensor):
    """A random cfg.patch_size² crop of image and mask together; with cfg.augment, flips and
    90° turns, then the warps and intensity changes the config switches on (`augment.py`)."""
    channels = image.shape[-1]  # the image's (the mask, 1 or K one-hot, follows them)
    image, mask = _random_crop(image, mask, cfg.patch_size, seed)
    if not cfg.augment:
        return image, mask
    both = tf.concat([image, mask], axis=-1)
    seeds = tf.random.experimental.stateless_split(seed, 3)
    both = tf.image.stateless_random_flip_left_right(both, seed=seeds[0])
    both = tf.image.stateless_random_flip_up_down(both, seed=seeds[1])
    turns = tf.random.stateless_uniform([], seeds[2], maxval=4, dtype=tf.int32)
    both = tf.image.rot90(both, k=turns)
    image, mask = both[..., :channels], both[..., channels:]
    if cfg.rotate_degrees or cfg.scale or cfg.elastic_sigma:
        image, mask = augment.random_warp(image, mask, tf.random.experimental.stateless_fold_in(
            seed, 1), rotate_degrees=cfg.rotate_degrees, scale=cfg.scale,
            elastic_sigma=cfg.elastic_sigma)
    if cfg.brightness or cfg.contrast or cfg.gamma:
        image = augment.random_intensity(image, tf.random.experimental.stateless_fold_in(seed, 2),
                                         brightness=cfg.brightness, contrast=cfg.contrast,
                                         gamma=cfg.gamma)
    return image, mask


def _image_size(tf_transform_output: tft.TFTransformOutput) -> tuple[int, int]:
    height, width = _pair_spec(tf_transform_output)[F.IMAGE_XF].shape[:2]
    return height, width


def _fitting(side: int, multiple: int, what: str) -> int:
    """The largest multiple of `multiple` (the U-Net's 2**depth) up to `side`."""
    if side < multiple:
        raise ValueError(f"{what}: images of side {side} are smaller than the U-Net's "
                         f"2**depth = {multiple}: expected at least {multiple} pixels")
    return side - side % multiple


def patch_size(cfg: TrainingConfig, tf_transform_output: tft.TFTransformOutput) -> int:
    """`cfg.patch_size`, or the largest patch the images hold when they are smaller."""
    side = min(_image_size(tf_transform_output))
    size = min(cfg.patch_size, _fitting(side, 2**cfg.depth, "training patches"))
    if size != cfg.patch_size:
        log.info("patches of %d² (patch_size %d does not fit the %dx%d images)", size,
                 cfg.patch_size, *_image_size(tf_transform_output))
    return size


def training_dataset(patterns, tf_transform_output, cfg: TrainingConfig,
                     replicas: int = 1) -> tf.data.Dataset:
    """An endless stream of shuffled, augmented patch batches of `cfg.batch_size` per replica.

    Cached: whole images transformed once, kept in memory, repeated and shuffled. Streamed:
    records interleaved over the files (file order reshuffled each pass), shuffled in a bounded
    buffer, then transformed and cut in parallel maps.
    """
    mode = choose_input_mode(patterns, tf_transform_output, cfg.cache_budget_mb, "training input")
    cfg = dataclasses.replace(cfg, patch_size=patch_size(cfg, tf_transform_output))
    seeds = tf.data.Dataset.random(seed=cfg.seed).batch(2)
    if mode.cache:
        pairs = image_mask_pairs(patterns, tf_transform_output).cache().repeat()
        pairs = pairs.shuffle(mode.shuffle_buffer, seed=cfg.seed)
        patches = tf.data.Dataset.zip((pairs, seeds)).map(
            lambda pair, seed: _augment(*pair, cfg, seed),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    else:
        records = _streamed_records(mode.files, cfg.seed, repeat=True)
        records = records.shuffle(mode.shuffle_buffer, seed=cfg.seed)
        pairs = _transformed(records, transformer(tf_transform_output))
        patches = tf.data.Dataset.zip((pairs, seeds)).map(
            lambda pair, seed: _augment(*pair, cfg, seed),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    batches = patches.batch(cfg.batch_size * replicas, drop_remainder=True)
    return shard_by_data(batches.prefetch(tf.data.AUTOTUNE))


def eval_dataset(patterns, tf_transform_output, cfg: TrainingConfig,
                 replicas: int = 1) -> tf.data.Dataset:
    """Whole images, each seen once per pass, `cfg.eval_batch_size` per replica; cached in
    memory or streamed, as `choose_input_mode` decides. Sides that are not a multiple of the
    U-Net's 2**depth are cropped to one (the Evaluator scores whole images through the serving
    signature, which pads)."""
    mode = choose_input_mode(patterns, tf_transform_output, cfg.cache_budget_mb, "eval input")
    if mode.cache:
        pairs = image_mask_pairs(patterns, tf_transform_output).cache()
    else:
        pairs = _transformed(_streamed_records(mode.files, None, repeat=False),
                             transformer(tf_transform_output))
    height, width = _image_size(tf_transform_output)
    crop = [_fitting(side, 2**cfg.depth, "validation") for side in (height, width)]
    if crop != [height, width]:
        pairs = pairs.map(lambda image, mask: (image[:crop[0], :crop[1]],
                                               mask[:crop[0], :crop[1]]))
    return shard_by_data(pairs.batch(cfg.eval_batch_size * replicas).prefetch(tf.data.AUTOTUNE))
