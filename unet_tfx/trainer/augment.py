"""Geometric and intensity augmentation of training patches, seeded, identical on image and mask.

- `random_warp`: one resampling of image and mask together through a small rotation and scaling
  plus the U-Net paper's elastic deformation (random displacements on a coarse grid, smoothly
  interpolated to every pixel); coordinates outside the patch are mirrored back into it. The
  image is sampled bilinearly, the mask by nearest neighbour (it stays {0, 1}).
- `random_intensity`: gamma, brightness and contrast of the (z-scored) image.
"""

import math

import tensorflow as tf


def _mirrored(coordinate: tf.Tensor, size: tf.Tensor) -> tf.Tensor:
    """Float coordinates folded into [0, size - 1] by mirroring at the borders."""
    period = 2.0 * (size - 1.0)
    folded = tf.math.floormod(coordinate, period)
    return tf.where(folded > size - 1.0, period - folded, folded)


def _bilinear(image: tf.Tensor, rows: tf.Tensor, cols: tf.Tensor) -> tf.Tensor:
    """image [H, W, C] sampled at float (rows, cols) [H, W]."""
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    r0, c0 = tf.floor(rows), tf.floor(cols)
    dr, dc = (rows - r0)[..., None], (cols - c0)[..., None]
    r0 = tf.clip_by_value(tf.cast(r0, tf.int32), 0, height - 1)
    c0 = tf.clip_by_value(tf.cast(c0, tf.int32), 0, width - 1)
    r1, c1 = tf.minimum(r0 + 1, height - 1), tf.minimum(c0 + 1, width - 1)

    def at(r, c):
        return tf.gather_nd(image, tf.stack([r, c], axis=-1))

    top = at(r0, c0) * (1 - dc) + at(r0, c1) * dc
    bottom = at(r1, c0) * (1 - dc) + at(r1, c1) * dc
    return top * (1 - dr) + bottom * dr


def random_warp(image: tf.Tensor, mask: tf.Tensor, seed: tf.Tensor, *, rotate_degrees: float,
                scale: float, elastic_sigma: float, elastic_grid: int = 3):
    """image [H, W, C] and mask [H, W, 1] resampled through one random rotation (uniform within
    ±rotate_degrees), scaling (within 1 ± scale) and elastic field (displacements with standard
    deviation elastic_sigma pixels on an elastic_grid² grid, bicubically interpolated)."""
    seeds = tf.random.experimental.stateless_split(seed, 3)
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    h, w = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
    angle = tf.random.stateless_uniform([], seeds[0], -1.0, 1.0) * rotate_degrees * math.pi / 180
    zoom = 1.0 + tf.random.stateless_uniform([], seeds[1], -scale, scale)
    rows, cols = tf.meshgrid(tf.range(h), tf.range(w), indexing="ij")
    y, x = rows - (h - 1) / 2, cols - (w - 1) / 2
    cos, sin = tf.cos(angle) / zoom, tf.sin(angle) / zoom
    source_rows = cos * y - sin * x + (h - 1) / 2
    source_cols = sin * y + cos * x + (w - 1) / 2
    if elastic_sigma > 0:
        coarse = tf.random.stateless_normal([1, elastic_grid, elastic_grid, 2], seeds[2],
                                            stddev=elastic_sigma)
        field = tf.image.resize(coarse, [height, width], method="bicubic")[0]
        source_rows += field[..., 0]
        source_cols += field[..., 1]
    source_rows, source_cols = _mirrored(source_rows, h), _mirrored(source_cols, w)
    warped = _bilinear(image, source_rows, source_cols)
    nearest = tf.stack([tf.cast(tf.round(source_rows), tf.int32),
                        tf.cast(tf.round(source_cols), tf.int32)], axis=-1)
    return warped, tf.gather_nd(mask, nearest)


def random_intensity(image: tf.Tensor, seed: tf.Tensor, *, brightness: float,
                     contrast: float, gamma: float = 0.0) -> tf.Tensor:
    """A z-scored image through a gamma curve of exponent within exp(±gamma) (on the patch's own
    range, which it keeps), then scaled by a contrast factor within 1 ± contrast and shifted by
    up to ±brightness standard deviations."""
    seeds = tf.random.experimental.stateless_split(seed, 2)
    if gamma:
        low, high = tf.reduce_min(image), tf.reduce_max(image)
        span = tf.maximum(high - low, 1e-6)
        exponent = tf.exp(tf.random.stateless_uniform(
            [], tf.random.experimental.stateless_fold_in(seed, 3), -gamma, gamma))
        image = ((image - low) / span) ** exponent * span + low
    shift = tf.random.stateless_uniform([], seeds[0], -brightness, brightness)
    factor = 1.0 + tf.random.stateless_uniform([], seeds[1], -contrast, contrast)
    return image * factor + shift
