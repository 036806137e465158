"""Read and check one image or mask (a PNG/TIFF file or one page of a stack); encode PNGs.

Size, pixel format and channels are checked from the header, before any pixel is decoded.
"""

import contextlib
import io
import struct

import numpy as np
from PIL import Image

from unet_tfx.imaging import ImageRefused, check_image_size
from unet_tfx.ingest.errors import IngestError

DEFAULT_MAX_PIXELS = 4096 * 4096
# Ingestion enforces its own `max_pixels` limit, so PIL's decompression-bomb check is off.
Image.MAX_IMAGE_PIXELS = None

# 8-bit PIL modes and their channel counts; masks may also be bilevel ("1") or palette indices.
CHANNELS = {"L": 1, "LA": 2, "RGB": 3, "RGBA": 4}
MASK_MODES = ("L", "1", "P")
TIFF_SAMPLE_FORMAT = 339  # 1 unsigned integer, 2 signed, 3 floating point


def read_image(path: str, page: int | None, *, channels: int, max_pixels: int) -> np.ndarray:
    """uint8 pixels, [height, width] for one channel, else [height, width, channels]."""
    name = describe(path, page)
    with _reading(name), _open(path, page, name) as img:
        _check_pixels(img, name, max_pixels)
        if img.mode not in CHANNELS or not _is_8_bit(img):
            raise IngestError(f"{name}: pixel format {_format(img)}: expected an 8-bit image "
                              "(grayscale or RGB, with or without alpha)")
        if CHANNELS[img.mode] != channels:
            raise IngestError(f"{name}: image has {CHANNELS[img.mode]} channel(s) ({img.mode}): "
                              f"expected {channels}")
        return np.asarray(img)


def read_mask(path: str, page: int | None, *, size: tuple[int, int] | None, max_pixels: int,
              mask_values: tuple = ()) -> np.ndarray:
    """uint8 [height, width] mask of the image `size` (None: any size). Two classes (no
    `mask_values`): 0 stays 0, >0 becomes 255. K classes (`mask_values`, K >= 3 mask levels
    in class order): the class index 0..K-1 of each pixel; a level outside `mask_values` is
    refused."""
    name = describe(path, page)
    with _reading(name), _open(path, page, name) as img:
        _check_pixels(img, name, max_pixels)
        if size is not None and (img.height, img.width) != tuple(size):
            raise IngestError(f"{name}: mask is {img.height}x{img.width} but its image is "
                              f"{size[0]}x{size[1]} (height x width): expected the same size")
        if img.mode in CHANNELS and img.mode not in MASK_MODES:
            raise IngestError(f"{name}: mask has {CHANNELS[img.mode]} channels ({img.mode}): "
                              "expected 1")
        if img.mode not in MASK_MODES or not _is_8_bit(img):
            raise IngestError(f"{name}: pixel format {_format(img)}: expected an 8-bit "
                              "single-channel mask")
        mask = np.asarray(img.convert("L") if img.mode == "1" or _grey_palette(img) else img)
    levels = np.flatnonzero(np.bincount(mask.ravel(), minlength=256))
    if mask_values:
        if unexpected := sorted(set(levels.tolist()) - set(mask_values)):
            shown = ", ".join(map(str, unexpected[:8])) + (", ..." if len(unexpected) > 8 else "")
            raise IngestError(f"{name}: mask has level(s) {shown} outside the dataset's classes: "
                              f"expected only {', '.join(map(str, mask_values))}")
        lookup = np.zeros(256, np.uint8)
        lookup[list(mask_values)] = np.arange(len(mask_values), dtype=np.uint8)
        return lookup[mask]
    if levels.size > 2:
        shown = ", ".join(map(str, levels[:8])) + (", ..." if levels.size > 8 else "")
        raise IngestError(f"{name}: mask has {levels.size} levels ({shown}): expected at most two "
                          "(0 for background, one other value for foreground), or a dataset "
                          "file listing the classes' mask values")
    if levels.size == 2 and levels[0] != 0:
        raise IngestError(f"{name}: mask levels {levels[0]} and {levels[1]}: expected 0 for "
                          "background and one other value for foreground")
    return np.where(mask > 0, 255, 0).astype(np.uint8)


def _grey_palette(img: Image.Image) -> bool:
    """True for a palette ("P") image whose used colours are all grey: its levels are what it
    shows (editors often put white at index 0), not its indices (class-index masks, e.g. VOC's,
    have coloured palettes and stay indices)."""
    if img.mode != "P":
        return False
    palette = np.array(img.getpalette() or [], np.int32)
    palette = palette[:palette.size // 3 * 3].reshape(-1, 3)
    used = np.unique(np.asarray(img))
    return bool(used.max() < len(palette)) and bool(
        (palette[used] == palette[used][:, :1]).all())


def encode_png(pixels: np.ndarray) -> bytes:
    """Lossless PNG of uint8 [height, width] or [height, width, channels] pixels."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def describe(path: str, page: int | None) -> str:
    """How messages name a file, or one page of a stack."""
    return path if page is None else f"{path} page {page}"


# What PIL raises for files it cannot parse. Besides the documented ones, tests/test_fuzz.py
# found TypeError ("Missing dimensions": a TIFF whose size tags are cut); the others are what
# PIL's Python parsers raise on malformed structures (struct.error, IndexError, KeyError, ...).
UNREADABLE = (OSError, SyntaxError, ValueError, EOFError, TypeError, IndexError, KeyError,
              struct.error, ZeroDivisionError, OverflowError)


@contextlib.contextmanager
def _reading(name: str):
    """Turns PIL's errors for unreadable or corrupt files into an IngestError naming the file."""
    try:
        yield
    except IngestError:
        raise
    except UNREADABLE as exc:
        raise IngestError(f"{name}: cannot read it ({exc}): expected a valid PNG or TIFF image") \
            from None


@contextlib.contextmanager
def _open(path: str, page: int | None, name: str):
    """The image at `page` of `path` (a single-image file when `page` is None), header only."""
    with Image.open(path) as img:
        frames = getattr(img, "n_frames", 1)
        if page is None and frames > 1:
            raise IngestError(f"{name}: file has {frames} pages: expected a single image "
                              "(pass multi-page TIFFs as a stack)")
        if page is not None:
            img.seek(page)
        yield img


def _rawmode(img: Image.Image) -> str:
    """How the file stores the pixels ("RGB;16B"): PIL reads 16-bit RGB as 8-bit "RGB" mode."""
    args = img.tile[0].args if img.tile else ""
    return str(args[0] if isinstance(args, tuple) else args)


def _sample_formats(img: Image.Image) -> tuple:
    """A TIFF's SampleFormat per channel (1 unsigned, 2 signed, 3 floating point); (1,) for
    other files."""
    formats = getattr(img, "tag_v2", {}).get(TIFF_SAMPLE_FORMAT, 1)
    return formats if isinstance(formats, tuple) else (formats,)


def _is_8_bit(img: Image.Image) -> bool:
    """Unsigned 8-bit samples (a TIFF's SampleFormat 2, signed, opens as "L" too)."""
    return "16" not in _rawmode(img) and all(f == 1 for f in _sample_formats(img))


def _format(img: Image.Image) -> str:
    if img.mode == "P":
        return "P (a palette image; convert it to grayscale or RGB)"
    kind = {2: ", signed samples", 3: ", floating-point samples"}.get(_sample_formats(img)[0], "")
    return f"{img.mode} (stored as {_rawmode(img)}{kind})"


def _check_pixels(img: Image.Image, name: str, max_pixels: int) -> None:
    """The size rules serving applies too (`unet_tfx.imaging`), on the size PIL read from the
    header: a decompression bomb is refused before any pixel is decoded."""
    try:
        check_image_size(img.height, img.width, name=name, max_pixels=max_pixels)
    except ImageRefused as exc:
        raise IngestError(str(exc)) from None
