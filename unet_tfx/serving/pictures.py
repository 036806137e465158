"""Pictures a person looks at: predicted membranes over the image, side by side with the truth."""

import io

import numpy as np
from PIL import Image
from skimage.color import label2rgb
from skimage.segmentation import find_boundaries

from unet_tfx.files import write_atomically
from unet_tfx.ingest.decode import encode_png


def decode_grey(encoded: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(encoded)).convert("L"))


def binary_mask(probabilities: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """The labels' convention: 0 membrane, 255 cell; for K classes ([H, W, K]) the most
    probable class index."""
    if probabilities.shape[-1] > 1:
        return np.argmax(probabilities, axis=-1).astype(np.uint8)
    return np.where(probabilities[..., 0] > threshold, 255, 0).astype(np.uint8)


def visible(mask: np.ndarray, num_classes: int) -> np.ndarray:
    """A mask to look at: two classes as they are (0/255), K class indices spread over 0-255."""
    return mask if num_classes <= 2 else (mask.astype(np.int32) * 255 // (num_classes - 1)
                                          ).astype(np.uint8)


def overlay(image: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """RGB: the image (grey [H, W] or [H, W, 1], or RGB) with the probability of class 0 (the
    membrane: 1 - p(cell); K classes: p(class 0)) painted red."""
    membrane = (1.0 - probabilities[..., 0] if probabilities.shape[-1] == 1
                else probabilities[..., 0])
    if image.ndim == 3 and image.shape[-1] == 3:
        rgb = image.astype(np.float32)
    else:
        rgb = np.repeat(image.reshape(image.shape[:2])[..., None].astype(np.float32), 3, axis=-1)
    rgb[..., 0] = rgb[..., 0] * (1 - membrane) + 255 * membrane
    rgb[..., 1:] *= (1 - 0.6 * membrane)[..., None]
    return rgb.clip(0, 255).astype(np.uint8)


def cell_picture(cells: np.ndarray) -> np.ndarray:
    """RGB: each cell of a label image (`regions.cell_regions`) in a colour of its own, the
    borders between cells black."""
    rgb = label2rgb(cells, bg_label=0)
    rgb[find_boundaries(cells)] = 0
    return (rgb * 255).round().astype(np.uint8)


def contact_sheet(rows: list[list[np.ndarray]], cell: int = 256) -> np.ndarray:
    """Rows of pictures (grey or RGB) as one RGB grid, each scaled to fit cell² pixels."""
    width = max(len(r) for r in rows)
    sheet = Image.new("RGB", (width * cell, len(rows) * cell), "white")
    for y, row in enumerate(rows):
        for x, picture in enumerate(row):
            tile = Image.fromarray(picture.reshape(picture.shape[:2]) if picture.ndim == 3
                                   and picture.shape[-1] == 1 else picture).convert("RGB")
            scale = cell / max(tile.size)
            tile = tile.resize((round(tile.width * scale), round(tile.height * scale)))
            sheet.paste(tile, (x * cell, y * cell))
    return np.asarray(sheet)


def save_png(path, picture: np.ndarray) -> None:
    """Write `picture` as a PNG at `path` via a temporary file, so no half-written file is seen."""
    write_atomically(path, encode_png(picture))
