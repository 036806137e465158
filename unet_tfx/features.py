"""Feature names and the image/mask tensor logic shared by Transform, Trainer and serving.

Raw tf.Examples (written by `unet_tfx.ingest`) carry PNG bytes; Transform turns them into the
`*_xf` tensors the model trains and evaluates on.
"""

import tensorflow as tf

IMAGE = "image"
MASK = "mask"
HEIGHT = "height"
WIDTH = "width"
ID = "id"

IMAGE_XF = "image_xf"
MASK_XF = "mask_xf"
# The training split's pixel mean and standard deviation, emitted per example so that serving
# can normalize images of any size with the very constants Transform computed.
IMAGE_MEAN_XF = "image_mean_xf"
IMAGE_STD_XF = "image_std_xf"


def decode_pngs(encoded: tf.Tensor, height: int, width: int, channels: int) -> tf.Tensor:
    """A batch of PNG strings (any shape, one per example) → uint8 [batch, height, width, channels].

    The fixed shape is checked: an image of another size fails with the shapes in the message.
    """

    def decode(png):
        return tf.ensure_shape(tf.io.decode_png(png, channels=channels), [height, width, channels])

    return tf.map_fn(
        decode, tf.reshape(encoded, [-1]),
        fn_output_signature=tf.TensorSpec([height, width, channels], tf.uint8),
    )


def normalize(image: tf.Tensor, mean: tf.Tensor, std: tf.Tensor) -> tf.Tensor:
    """Z-score pixel values with the training split's statistics."""
    return (tf.cast(image, tf.float32) - mean) / tf.maximum(std, 1e-6)


def binarize_mask(mask: tf.Tensor) -> tf.Tensor:
    """Mask levels → float {0, 1}: 0 (membrane) stays 0, any other level (cell) becomes 1."""
    return tf.cast(mask > 0, tf.float32)


def one_hot_mask(mask: tf.Tensor, num_classes: int) -> tf.Tensor:
    """Class-index masks [..., 1] (K-class ingestion) → float one-hot [..., num_classes]."""
    return tf.one_hot(tf.cast(mask[..., 0], tf.int32), num_classes, dtype=tf.float32)
