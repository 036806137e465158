"""Segmenting images larger than the training tiles: overlapping tiles, Gaussian-blended.

`predict_tiled` runs the model on `tile_size`² tiles of the (padded) image, `tile_batch` tiles
per call, in a `tf.while_loop` that runs one call at a time, and adds each tile's probabilities
weighted by a Gaussian window (sigma = tile / 8 per axis, as nnU-Net does) into two full-size
sums, p·w and w; the answer is their ratio. Peak memory is then the model on `tile_batch` tiles
plus a few float32 copies of the image (input, the two sums, the answer): it grows with the
image by ~30 bytes per pixel instead of the whole-image U-Net's ~520.

Tile origins are multiples of the model's 2**depth (the stride, `tile_size - overlap`, is one),
so each tile sees the pooling grid the whole image does: inside a tile, away from its borders,
the U-Net computes what it computes on the whole image; near a tile border its zero padding
differs, and the window gives those pixels little weight where a neighbouring tile's centre
covers them. The last tile of a row or column is moved back to end at the image's edge.
"""

import tensorflow as tf

SIGMA_SCALE = 1 / 8  # the window's standard deviation, per axis, as a fraction of the tile side


def tile_origins(length: tf.Tensor, tile: tf.Tensor, stride: int) -> tf.Tensor:
    """Start offsets (int32) of tiles of `tile` pixels every `stride` covering `length` pixels;
    the last one ends at `length` (so it overlaps its neighbour by more than the others)."""
    count = 1 + (tf.maximum(length - tile, 0) + stride - 1) // stride
    return tf.minimum(tf.range(count) * stride, length - tile)


def gaussian_window(height: tf.Tensor, width: tf.Tensor) -> tf.Tensor:
    """float32 [height, width, 1]: a separable Gaussian, 1 at the centre."""
    def axis(size):
        size = tf.cast(size, tf.float32)
        offset = tf.range(size) - (size - 1) / 2
        return tf.exp(-0.5 * tf.square(offset / (size * SIGMA_SCALE)))

    return axis(height)[:, None, None] * axis(width)[None, :, None]


def tile_count(height: int, width: int, tile_size: int, overlap: int) -> int:
    """How many tiles `predict_tiled` runs for one image of height x width (already padded)."""
    stride = tile_size - overlap

    def along(length):
        return 1 + max(length - tile_size, 0) // stride + bool(max(length - tile_size, 0) % stride)

    return along(height) * along(width)


def predict_tiled(predict, images: tf.Tensor, tile_size: int, overlap: int,
                  tile_batch: int, outputs: int = 1) -> tf.Tensor:
    """`predict` (tiles [k, h, w, C] → probabilities [k, h, w, outputs]) over overlapping tiles
    of `images` [N, H, W, C], blended: float32 [N, H, W, outputs].

    H and W must be multiples of the model's 2**depth, and `tile_size` and `overlap` too; a side
    shorter than `tile_size` is one tile of that side. Tiles of all N images are batched
    together, `tile_batch` per call of `predict`.
    """
    if not 0 <= overlap < tile_size:
        raise ValueError(f"tile overlap {overlap} must be at least 0 and below the tile size "
                         f"{tile_size}")
    shape = tf.shape(images)
    count, height, width = shape[0], shape[1], shape[2]
    tile_h, tile_w = tf.minimum(tile_size, height), tf.minimum(tile_size, width)
    stride = tile_size - overlap
    grid = tf.meshgrid(tf.range(count), tile_origins(height, tile_h, stride),
                       tile_origins(width, tile_w, stride), indexing="ij")
    origins = tf.reshape(tf.stack(grid, axis=-1), [-1, 3])  # (image, row, column) per tile
    window = gaussian_window(tile_h, tile_w)
    rows, columns = tf.range(tile_h), tf.range(tile_w)

    def body(start, sums):
        batch = origins[start:start + tile_batch]
        size = tf.shape(batch)[0]
        pixels = [size, tile_h, tile_w]
        index = tf.stack([
            tf.broadcast_to(batch[:, 0, None, None], pixels),
            tf.broadcast_to(batch[:, 1, None, None] + rows[None, :, None], pixels),
            tf.broadcast_to(batch[:, 2, None, None] + columns[None, None, :], pixels),
        ], axis=-1)  # [size, tile_h, tile_w, 3]
        probabilities = tf.cast(predict(tf.gather_nd(images, index)), tf.float32)
        weights = tf.broadcast_to(window, [size, tile_h, tile_w, 1])
        update = tf.concat([probabilities * weights, weights], axis=-1)
        return start + tile_batch, tf.tensor_scatter_nd_add(sums, index, update)

    sums = tf.zeros(tf.concat([shape[:3], [outputs + 1]], axis=0), tf.float32)
    # One call at a time: iterations overlapping would hold several tile batches' activations.
    _, sums = tf.while_loop(lambda start, _: start < tf.shape(origins)[0], body, (0, sums),
                            parallel_iterations=1)
    return sums[..., :outputs] / sums[..., outputs:]
