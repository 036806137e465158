"""The serving contract: the SavedModel's signatures.

- `serving_default`: encoded PNG/JPEG bytes [batch] → `probabilities` [batch, H, W, 1] at the
  input's own resolution (padded to a multiple of 2**depth inside, cropped back).
- `serving_examples`: serialized raw tf.Examples → `probabilities` (Evaluator, BulkInferrer).
- `transform_features`: serialized raw tf.Examples → Transform's outputs (TFMA labels).

All three normalize through the Transform graph, the single source of preprocessing.
"""

import tensorflow as tf
import tensorflow_transform as tft
import tf_keras as keras

from unet_tfx import features as F

PROBABILITIES = "probabilities"


def _pad_to_multiple(images: tf.Tensor, multiple: int) -> tf.Tensor:
    shape = tf.shape(images)
    pad_h, pad_w = (-shape[1]) % multiple, (-shape[2]) % multiple
    return tf.pad(images, [[0, 0], [0, pad_h], [0, pad_w], [0, 0]], mode="SYMMETRIC")


def build_signatures(model: keras.Model, tf_transform_output: tft.TFTransformOutput,
                     channels: int, depth: int) -> dict:
    """Concrete functions for the three signatures, with the Transform layer tracked on model."""
    model.tft_layer = tf_transform_output.transform_features_layer()
    raw_spec = tf_transform_output.raw_feature_spec()
    unlabeled_spec = {k: v for k, v in raw_spec.items() if k != F.MASK}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="images")])
    def serve_images(images):
        def decode(encoded):
            image = tf.io.decode_image(encoded, channels=channels, expand_animations=False)
            return tf.cast(image, tf.float32)

        decoded = tf.map_fn(decode, images,
                            fn_output_signature=tf.TensorSpec([None, None, channels], tf.float32))
        stats = model.tft_layer({F.HEIGHT: tf.zeros([1, 1], tf.int64)})
        normalized = F.normalize(decoded, stats[F.IMAGE_MEAN_XF][0, 0], stats[F.IMAGE_STD_XF][0, 0])
        height, width = tf.shape(decoded)[1], tf.shape(decoded)[2]
        probabilities = model(_pad_to_multiple(normalized, 2**depth), training=False)
        return {PROBABILITIES: probabilities[:, :height, :width, :]}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def serve_examples(serialized):
        transformed = model.tft_layer(tf.io.parse_example(serialized, unlabeled_spec))
        return {PROBABILITIES: model(transformed[F.IMAGE_XF], training=False)}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def transform_features(serialized):
        return model.tft_layer(tf.io.parse_example(serialized, raw_spec))

    return {
        "serving_default": serve_images.get_concrete_function(),
        "serving_examples": serve_examples.get_concrete_function(),
        "transform_features": transform_features.get_concrete_function(),
    }


def export_serving_model(model, tf_transform_output, directory: str, channels: int, depth: int):
    """Save `model` with the serving signatures as a TF Serving-loadable SavedModel."""
    signatures = build_signatures(model, tf_transform_output, channels, depth)
    model.save(directory, save_format="tf", signatures=signatures, include_optimizer=False)
