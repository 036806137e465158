"""Image size rules, checked from the encoded header before any pixel is decoded.

The one place for them: ingestion (`unet_tfx.ingest.decode`) and `unet-tfx predict` call
`check_image_size` / `check_encoded_image` here; the serving signatures
(`unet_tfx.trainer.export.check_encoded_images`) apply the same `ServingLimits` with TF ops and
fill the same message templates, so a refusal reads the same wherever it happens.

Headers: PNG, the IHDR chunk (8-byte signature, chunk length 13, "IHDR", then width and height
as big-endian uint32 at bytes 16..24); JPEG, the first start-of-frame marker (what libjpeg and
`tf.image.extract_jpeg_shape` read). Every other format is refused.
"""

import dataclasses

from unet_tfx.config import ServingLimits

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_IHDR = b"\x00\x00\x00\x0dIHDR"  # chunk length 13, then the type, at byte 8
PNG_HEADER_BYTES = 33  # signature, IHDR chunk (length, type, 13 bytes of data, CRC)
JPEG_SIGNATURE = b"\xff\xd8\xff"  # start of image, then the first marker
FORMATS = "PNG or JPEG"

# str.format templates ("{}" only); the serving graph fills the same ones with TF ops.
UNSUPPORTED = "{}: not a " + FORMATS + " image (unsupported format, or empty): expected " + FORMATS
BAD_PNG = ("{}: truncated or corrupt PNG header (no IHDR chunk at byte 8): expected a valid PNG")
BAD_JPEG = ("{}: truncated or corrupt JPEG header (no frame header before the image data): "
            "expected a valid JPEG")
JPEG_COMPONENTS = ("{}: JPEG with {} colour components: expected 1 (greyscale) or 3 (colour); "
                   "CMYK is not supported")
EMPTY = "{}: {}x{} (height x width): expected at least 1 pixel per side"
TOO_LONG = ("{}: {}x{} (height x width) has a side of {} pixels: expected at most {} "
            "(see max_side)")
TOO_MANY_PIXELS = "{}: {}x{} (height x width) is {} pixels: expected at most {} (see max_pixels)"
TOO_MANY_BYTES = "{}: {} bytes: expected at most {} (see max_request_bytes)"
BATCH_SIZE = "request of {} images: expected 1 to {} (see max_batch)"
BATCH_PIXELS = ("request of {} images of {}x{} (height x width) is {} pixels: expected at most {} "
                "(see max_pixels)")
MIXED_SIZES = ("{}: {}x{} (height x width) but image 0 is {}x{}: expected images of one size "
               "per request")

# JPEG start-of-frame markers: C0..CF but DHT (C4), JPG (C8) and DAC (CC).
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# Markers without a length: TEM, RST0..7, SOI.
_STANDALONE_MARKERS = frozenset([0x01, *range(0xD0, 0xD9)])
# PNG colour type → channels.
_PNG_CHANNELS = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}


class ImageRefused(ValueError):
    """An image or request outside the limits, or not a readable image header; names both."""


@dataclasses.dataclass(frozen=True)
class ImageHeader:
    format: str  # "PNG" or "JPEG"
    height: int
    width: int
    channels: int  # PNG: by colour type (palette: 3); JPEG: colour components


def image_header(data: bytes, name: str = "image") -> ImageHeader:
    """Format and size of encoded PNG/JPEG `data`, from its header only; ImageRefused otherwise."""
    if data.startswith(PNG_SIGNATURE):
        if len(data) < PNG_HEADER_BYTES or data[8:16] != PNG_IHDR:
            raise ImageRefused(BAD_PNG.format(name))
        width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
        return ImageHeader("PNG", height, width, _PNG_CHANNELS.get(data[25], 0))
    if data.startswith(JPEG_SIGNATURE):
        height, width, components = _jpeg_frame(data, name)
        return ImageHeader("JPEG", height, width, components)
    raise ImageRefused(UNSUPPORTED.format(name))


def check_image_size(height: int, width: int, *, name: str, max_pixels: int,
                     max_side: int | None = None) -> None:
    """ImageRefused naming `name`, the size and the limit, unless 1 <= sides and within limits."""
    if height < 1 or width < 1:
        raise ImageRefused(EMPTY.format(name, height, width))
    if max_side is not None and max(height, width) > max_side:
        raise ImageRefused(TOO_LONG.format(name, height, width, max(height, width), max_side))
    if height * width > max_pixels:
        raise ImageRefused(TOO_MANY_PIXELS.format(name, height, width, height * width,
                                                  max_pixels))


def check_encoded_image(data: bytes, limits: ServingLimits, name: str) -> ImageHeader:
    """The header of `data` if one request of it is within `limits`; ImageRefused otherwise."""
    if len(data) > limits.max_request_bytes:
        raise ImageRefused(TOO_MANY_BYTES.format(name, len(data), limits.max_request_bytes))
    header = image_header(data, name)
    if header.format == "JPEG" and header.channels not in (1, 3):
        raise ImageRefused(JPEG_COMPONENTS.format(name, header.channels))
    check_image_size(header.height, header.width, name=name, max_pixels=limits.max_pixels,
                     max_side=limits.max_side)
    return header


def _jpeg_frame(data: bytes, name: str) -> tuple[int, int, int]:
    """(height, width, components) of the first start-of-frame segment."""
    position = 2
    while True:
        if position >= len(data) or data[position] != 0xFF:
            raise ImageRefused(BAD_JPEG.format(name))
        while position < len(data) and data[position] == 0xFF:  # fill bytes
            position += 1
        if position >= len(data):
            raise ImageRefused(BAD_JPEG.format(name))
        marker = data[position]
        position += 1
        if marker in _STANDALONE_MARKERS:
            continue
        if marker in (0xD9, 0xDA):  # end of image, start of scan: no frame header before
            raise ImageRefused(BAD_JPEG.format(name))
        length = int.from_bytes(data[position:position + 2], "big")
        if length < 2 or position + length > len(data):
            raise ImageRefused(BAD_JPEG.format(name))
        if marker in _SOF_MARKERS:
            if length < 8:
                raise ImageRefused(BAD_JPEG.format(name))
            segment = data[position + 2:position + length]  # precision, height, width, count
            return (int.from_bytes(segment[1:3], "big"), int.from_bytes(segment[3:5], "big"),
                    segment[5])
        position += length
