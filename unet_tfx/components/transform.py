"""Transform's preprocessing_fn: decode, binarize (or one-hot) the mask, z-score the image."""

import tensorflow as tf
import tensorflow_transform as tft

from unet_tfx import features as F


def preprocessing_fn(inputs: dict, custom_config: dict) -> dict:
    """Raw PNG examples → `image_xf` (z-scored float), `mask_xf` ({0,1}) and the statistics.

    `custom_config` gives `image_height`, `image_width` and `channels`: TFT needs every
    non-batch dimension known, so images are decoded at that fixed size. With `num_classes`
    K >= 3 the masks hold class indices and `mask_xf` is one-hot [..., K].
    """
    height, width = custom_config["image_height"], custom_config["image_width"]
    channels = custom_config["channels"]
    num_classes = custom_config.get("num_classes", 2)
    mask = F.decode_pngs(inputs[F.MASK], height, width, 1)
    image = tf.cast(F.decode_pngs(inputs[F.IMAGE], height, width, channels), tf.float32)
    mean = tft.mean(image)
    std = tf.sqrt(tft.var(image))
    per_example = tf.zeros_like(tf.cast(inputs[F.HEIGHT], tf.float32))
    return {
        F.IMAGE_XF: F.normalize(image, mean, std),
        F.MASK_XF: (F.binarize_mask(mask) if num_classes == 2
                    else F.one_hot_mask(mask, num_classes)),
        F.IMAGE_MEAN_XF: per_example + mean,
        F.IMAGE_STD_XF: per_example + std,
    }

