"""The serving contract: the SavedModel's signatures.

- `serving_default`: encoded PNG/JPEG bytes [batch] → `probabilities` [batch, H, W, 1] (K
  classes: [batch, H, W, K]) at the input's own resolution (padded to a multiple of 2**depth
  inside, cropped back), and `mask_png_bytes` [batch], each image's mask (p > threshold, by
  default 0.5: 255 cell, else 0 membrane) as a PNG: the `_bytes` suffix makes TF Serving's
  REST API answer it base64-encoded.
  Requests outside `ServingLimits` are refused from the image headers, before anything is
  decoded, with INVALID_ARGUMENT naming the image, its size and the limit
  (`check_encoded_images`).
  Images with a (padded) side above `ServingLimits.tile_size` are segmented in overlapping
  tiles, Gaussian-blended (`unet_tfx.trainer.tiling`), so memory stays bounded.
- `serving_mask`: the same, answering `mask_png_bytes` alone (a REST answer of kilobytes).
- `serving_tta`: `serving_default` with test-time augmentation: the mean over the 8 flips and
  quarter turns of each image (8x the compute).
- `serving_examples`: serialized raw tf.Examples → `probabilities` (Evaluator, BulkInferrer).
- `transform_features`: serialized raw tf.Examples → Transform's outputs (TFMA labels).
  Both check each example's encoded image (and mask) the same way before Transform decodes it;
  their batches are the Evaluator's and BulkInferrer's, so batch size and bytes are not bounded.

All four normalize through the Transform graph, the single source of preprocessing. The limits
are also written to `assets.extra/serving_limits.json` in the SavedModel; the requests TF Serving
replays on load, to `assets.extra/tf_serving_warmup_requests` (`unet_tfx.serving.warmup`).
"""

import dataclasses
import json
import os

import tensorflow as tf
import tensorflow_transform as tft
import tf_keras as keras

from unet_tfx import features as F
from unet_tfx import imaging
from unet_tfx.config import ServingLimits, TrainingConfig
from unet_tfx.serving.warmup import write_warmup
from unet_tfx.trainer import tiling

PROBABILITIES = "probabilities"
MASK_PNG = "mask_png_bytes"
LIMITS_FILE = os.path.join("assets.extra", "serving_limits.json")
TTA_SIGNATURE = "serving_tta"
DEFAULT_LIMITS = ServingLimits()
DEFAULT_THRESHOLD = TrainingConfig.mask_threshold


def _pad_to_multiple(images: tf.Tensor, multiple: int) -> tf.Tensor:
    """Symmetric padding at the bottom and right to a multiple of `multiple`, for any size.

    Equal to tf.pad(mode="SYMMETRIC"), which refuses pads larger than the image (a 1-pixel side
    padded to 16); here the mirror repeats: index i reads i mod 2n, mirrored when >= n.
    """
    def mirrored(size):
        padded = size + (-size) % multiple
        index = tf.range(padded) % (2 * size)
        return tf.where(index < size, index, 2 * size - 1 - index)

    shape = tf.shape(images)
    return tf.gather(tf.gather(images, mirrored(shape[1]), axis=1), mirrored(shape[2]), axis=2)


def _message(template: str, *values) -> tf.Tensor:
    """`template.format(*values)` with TF ops, elementwise over vector values."""
    parts = template.split("{}")
    assert len(parts) == len(values) + 1, template
    pieces = [parts[0]]
    for value, part in zip(values, parts[1:], strict=True):
        if not isinstance(value, str) and value.dtype != tf.string:
            value = tf.strings.as_string(value)
        pieces += [value, part]
    return tf.strings.join(pieces)


def _refuse_unless(ok: tf.Tensor, messages: tf.Tensor) -> tf.Operation:
    """An assertion (INVALID_ARGUMENT) that `ok` holds everywhere, with the first failure's
    message: `messages` is a scalar or has one message per element of `ok`."""
    first = tf.argmin(tf.cast(tf.reshape(ok, [-1]), tf.int32))
    message = messages if messages.shape.rank == 0 else tf.gather(messages, first)
    return tf.debugging.Assert(tf.reduce_all(ok), [message])


def _after(checks: list, tensor: tf.Tensor) -> tf.Tensor:
    with tf.control_dependencies(checks):
        return tf.identity(tensor)


def check_encoded_images(images: tf.Tensor, limits: ServingLimits, *, whole_request: bool = True,
                         label: str = "image"):
    """(images, heights, widths): `images` [batch] of encoded bytes, passed on only once the
    request is within `limits`; the sizes are int64 [batch] from the headers.

    Checked in order, each before the next is computed, none decoding a pixel: the batch size
    and total bytes; the format (PNG or JPEG) and header of each image; sides of at least one
    pixel and at most `max_side`; at most `max_pixels` per image and per request; one size per
    request. The first failure raises InvalidArgumentError with the `imaging` module's message,
    naming "<label> <index>". `whole_request=False` checks each image alone (no batch size,
    bytes, or per-request pixels and size).
    """
    count = tf.size(images, out_type=tf.int64)
    total_bytes = tf.reduce_sum(tf.cast(tf.strings.length(images), tf.int64))
    if whole_request:
        images = _after([
            _refuse_unless((count >= 1) & (count <= limits.max_batch),
                           _message(imaging.BATCH_SIZE, count, str(limits.max_batch))),
            _refuse_unless(total_bytes <= limits.max_request_bytes,
                           _message(imaging.TOO_MANY_BYTES, "request", total_bytes,
                                    str(limits.max_request_bytes))),
        ], images)

    names = tf.strings.join([f"{label} ", tf.strings.as_string(tf.range(count))])
    # The first bytes of each image, zero-padded to a fixed length (substr from 0 never fails).
    head_bytes = imaging.PNG_HEADER_BYTES
    head = tf.strings.substr(tf.strings.join([tf.strings.substr(images, 0, head_bytes),
                                              "\0" * head_bytes]), 0, head_bytes)
    is_png = tf.equal(tf.strings.substr(head, 0, len(imaging.PNG_SIGNATURE)),
                      imaging.PNG_SIGNATURE)
    is_jpeg = tf.equal(tf.strings.substr(head, 0, len(imaging.JPEG_SIGNATURE)),
                       imaging.JPEG_SIGNATURE)
    png_header_ok = (tf.equal(tf.strings.substr(head, 8, len(imaging.PNG_IHDR)), imaging.PNG_IHDR)
                     & (tf.strings.length(images) >= head_bytes))
    images = _after([
        _refuse_unless(is_png | is_jpeg, _message(imaging.UNSUPPORTED, names)),
        _refuse_unless(~is_png | png_header_ok, _message(imaging.BAD_PNG, names)),
    ], images)

    # PNG: width, height as big-endian uint32 (read as int32, so values >= 2**31 wrap: unwrap).
    png_size = tf.cast(tf.io.decode_raw(tf.strings.substr(head, 16, 8), tf.int32,
                                        little_endian=False), tf.int64)
    png_size = tf.where(png_size < 0, png_size + 2**32, png_size)
    # JPEG: libjpeg reads the frame header (InvalidArgumentError when there is none).
    jpeg_shape = tf.map_fn(
        lambda args: tf.cond(args[1],
                             lambda: tf.image.extract_jpeg_shape(args[0], output_type=tf.int64),
                             lambda: tf.zeros([3], tf.int64)),
        (images, is_jpeg), fn_output_signature=tf.TensorSpec([3], tf.int64))
    heights = tf.where(is_png, png_size[:, 1], jpeg_shape[:, 0])
    widths = tf.where(is_png, png_size[:, 0], jpeg_shape[:, 1])
    components = jpeg_shape[:, 2]
    longest = tf.maximum(heights, widths)
    pixels = heights * widths  # int64: at most (2**32 - 1)**2 overflows, caught by max_side first
    images = _after([
        _refuse_unless(~is_jpeg | tf.equal(components, 1) | tf.equal(components, 3),
                       _message(imaging.JPEG_COMPONENTS, names, components)),
        _refuse_unless((heights >= 1) & (widths >= 1),
                       _message(imaging.EMPTY, names, heights, widths)),
    ], images)
    images = _after([
        _refuse_unless(longest <= limits.max_side,
                       _message(imaging.TOO_LONG, names, heights, widths, longest,
                                str(limits.max_side))),
    ], images)
    images = _after([
        _refuse_unless(pixels <= limits.max_pixels,
                       _message(imaging.TOO_MANY_PIXELS, names, heights, widths, pixels,
                                str(limits.max_pixels))),
    ], images)
    if not whole_request:
        return images, heights, widths
    images = _after([
        _refuse_unless(tf.equal(heights, heights[0]) & tf.equal(widths, widths[0]),
                       _message(imaging.MIXED_SIZES, names, heights, widths, heights[0],
                                widths[0])),
    ], images)
    images = _after([
        _refuse_unless(count * pixels[0] <= limits.max_pixels,
                       _message(imaging.BATCH_PIXELS, count, heights[0], widths[0],
                                count * pixels[0], str(limits.max_pixels))),
    ], images)
    return images, heights, widths


def _signature(name: str):
    """tf.function over one string vector, `name`. Autograph is off: these functions have no
    Python control flow on tensors, and converting Keras's layer code made tracing ~10x slower
    (48 s of an export's 150 s on 2 busy cores)."""
    return tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=name)],
                       autograph=False)


def mask_pngs(probabilities: tf.Tensor, threshold: float) -> tf.Tensor:
    """string [batch]: each map of `probabilities` [batch, H, W, 1] thresholded at `threshold` as
    an 8-bit greyscale PNG, 255 cell / 0 membrane (the labels' convention); for K classes
    ([batch, H, W, K]) each pixel's most probable class index 0..K-1."""
    if probabilities.shape[-1] == 1:
        masks = tf.cast(probabilities > threshold, tf.uint8) * 255
    else:
        masks = tf.cast(tf.argmax(probabilities, axis=-1), tf.uint8)[..., None]
    return tf.map_fn(tf.io.encode_png, masks, fn_output_signature=tf.TensorSpec([], tf.string))


def build_signatures(model: keras.Model, tf_transform_output: tft.TFTransformOutput,
                     channels: int, depth: int, limits: ServingLimits = DEFAULT_LIMITS,
                     threshold: float = DEFAULT_THRESHOLD) -> dict:
    """Concrete functions for the four signatures, with the Transform layer tracked on model;
    the masks are p(cell) > `threshold`."""
    multiple = 2**depth
    if limits.tile_size % multiple or limits.tile_overlap % multiple:
        raise ValueError(f"ServingLimits.tile_size ({limits.tile_size}) and tile_overlap "
                         f"({limits.tile_overlap}) must be multiples of 2**depth = {multiple}")
    model.tft_layer = tf_transform_output.transform_features_layer()
    raw_spec = tf_transform_output.raw_feature_spec()
    unlabeled_spec = {k: v for k, v in raw_spec.items() if k != F.MASK}

    def predict(images):
        return model(images, training=False)

    def predict_any_size(normalized):
        """Normalized images [batch, H, W, C] of any size → probabilities [batch, H, W, 1 or K]:
        padded to a multiple of 2**depth, whole or in tiles when a padded side is above
        tile_size, cropped back."""
        height, width = tf.shape(normalized)[1], tf.shape(normalized)[2]
        padded = _pad_to_multiple(normalized, multiple)
        large = tf.reduce_any(tf.shape(padded)[1:3] > limits.tile_size)
        probabilities = tf.cond(
            large,
            lambda: tiling.predict_tiled(predict, padded, limits.tile_size, limits.tile_overlap,
                                         limits.tile_batch, model.output_shape[-1]),
            lambda: predict(padded))
        return probabilities[:, :height, :width, :]

    def predict_dihedral(normalized):
        """Test-time augmentation: the mean of the probabilities of the 8 flips and quarter
        turns of each image, each turned back."""
        total = 0.0
        for flip in (False, True):
            flipped = tf.reverse(normalized, [2]) if flip else normalized
            for turns in range(4):
                p = tf.image.rot90(predict_any_size(tf.image.rot90(flipped, turns)),
                                   (4 - turns) % 4)
                total += tf.reverse(p, [2]) if flip else p
        return total / 8.0

    def segment(images, predictor=predict_any_size):
        """Encoded images → probabilities [batch, H, W, 1 or K]."""
        def decode(encoded):
            image = tf.io.decode_image(encoded, channels=channels, expand_animations=False)
            return tf.cast(image, tf.float32)

        images, _, _ = check_encoded_images(images, limits)
        decoded = tf.map_fn(decode, images,
                            fn_output_signature=tf.TensorSpec([None, None, channels], tf.float32))
        stats = model.tft_layer({F.HEIGHT: tf.zeros([1, 1], tf.int64)})
        return predictor(F.normalize(decoded, stats[F.IMAGE_MEAN_XF][0, 0],
                                     stats[F.IMAGE_STD_XF][0, 0]))

    @_signature("images")
    def serve_images(images):
        probabilities = segment(images)
        return {PROBABILITIES: probabilities, MASK_PNG: mask_pngs(probabilities, threshold)}

    @_signature("images")
    def serve_tta(images):
        probabilities = segment(images, predict_dihedral)
        return {PROBABILITIES: probabilities, MASK_PNG: mask_pngs(probabilities, threshold)}

    @_signature("images")
    def serve_masks(images):
        return {MASK_PNG: mask_pngs(segment(images), threshold)}

    def parse_checked(serialized, spec):
        """Parsed examples whose encoded images (and masks) passed the per-image checks."""
        features = tf.io.parse_example(serialized, spec)
        for key in (F.IMAGE, F.MASK):
            if key in features:
                encoded = features[key]
                checked, _, _ = check_encoded_images(tf.reshape(encoded, [-1]), limits,
                                                     whole_request=False, label=key)
                features[key] = tf.reshape(checked, tf.shape(encoded))
        return features

    @_signature("examples")
    def serve_examples(serialized):
        transformed = model.tft_layer(parse_checked(serialized, unlabeled_spec))
        return {PROBABILITIES: predict_any_size(transformed[F.IMAGE_XF])}

    @_signature("examples")
    def transform_features(serialized):
        return model.tft_layer(parse_checked(serialized, raw_spec))

    return {
        "serving_default": serve_images.get_concrete_function(),
        "serving_mask": serve_masks.get_concrete_function(),
        TTA_SIGNATURE: serve_tta.get_concrete_function(),
        "serving_examples": serve_examples.get_concrete_function(),
        "transform_features": transform_features.get_concrete_function(),
    }


def export_serving_model(model, tf_transform_output, directory: str, channels: int, depth: int,
                         limits: ServingLimits | dict = DEFAULT_LIMITS,
                         warmup_images: list[bytes] = (), threshold: float = DEFAULT_THRESHOLD):
    """Save `model` with the serving signatures as a TF Serving-loadable SavedModel, and its
    `limits` as `assets.extra/serving_limits.json` (TF Serving ignores it).

    `limits` may be a dict of ServingLimits fields (the Trainer's custom_config carries one);
    fields it leaves out keep their defaults. `warmup_images` (encoded, within `limits`; the
    Trainer passes eval images) become `assets.extra/tf_serving_warmup_requests`. The masks
    are p(cell) > `threshold`.
    """
    if isinstance(limits, dict):
        limits = ServingLimits(**limits)
    signatures = build_signatures(model, tf_transform_output, channels, depth, limits, threshold)
    # Serving, TFMA and warm starts use the signatures and the variables, not Keras's traces of
    # every layer's call: without them the quick profile's model saved in ~2 s, not ~7 s, and
    # loaded in 0.6 s, not 2.1 s (2 cores).
    model.save(directory, save_format="tf", signatures=signatures, include_optimizer=False,
               save_traces=False)
    path = os.path.join(directory, LIMITS_FILE)
    tf.io.gfile.makedirs(os.path.dirname(path))
    with tf.io.gfile.GFile(path, "w") as f:
        f.write(json.dumps(dataclasses.asdict(limits), indent=2) + "\n")
    if warmup_images:
        write_warmup(directory, list(warmup_images), limits)


def read_serving_limits(saved_model_dir: str) -> ServingLimits | None:
    """The limits a SavedModel was exported with; None for a model exported before they were."""
    path = os.path.join(saved_model_dir, LIMITS_FILE)
    if not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path) as f:
        return ServingLimits(**json.load(f))
