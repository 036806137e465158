"""Fuzzing ingestion's per-file reader and the image-header check with hypothesis.

Random bytes, valid PNG/TIFF files mutated byte by byte (with and without their PNG checksums
repaired, so the parser sees the lying values), arbitrary PNG headers, declared decompression
bombs, odd sizes (1x1, 1xN, Nx1), every pixel format and channel count, masks of any values.
The property everywhere: a clear IngestError naming the file and what was expected, or a correct
array; never another exception, never a hang (each call is bounded by a timer), and never a
decode of a file whose header is over the limit. Examples are derandomized (the same on every
run and in CI) and bounded so that the whole module takes well under 30 s.
"""

import contextlib
import io
import signal
import struct
import zlib
from datetime import timedelta
from unittest import mock

import numpy as np
import pytest
import tensorflow as tf
import tifffile
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageFile

from unet_tfx import imaging
from unet_tfx.config import ServingLimits
from unet_tfx.ingest import decode, records
from unet_tfx.ingest.errors import IngestError

# PIL warns about the corrupt TIFF tags it skips; that is expected here.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
FUZZ = settings(max_examples=120, deadline=timedelta(seconds=2), derandomize=True,
                database=None, suppress_health_check=[HealthCheck.too_slow])
QUICK = settings(FUZZ, max_examples=60)
CALL_SECONDS = 5  # one read of one tiny file: far more than it ever needs
MAX_PIXELS = 64 * 64
MODES = ["L", "LA", "RGB", "RGBA", "P", "1", "I;16", "I", "F", "CMYK"]
TIFF_COMPRESSIONS = [None, "tiff_lzw", "tiff_deflate", "packbits", "tiff_adobe_deflate"]

PNG_SIGNATURE = imaging.PNG_SIGNATURE
TIFF_SIGNATURES = [b"II*\x00", b"MM\x00*"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


class Hang(Exception):
    pass


@contextlib.contextmanager
def bounded(seconds: float = CALL_SECONDS):
    """Raise Hang in the block if it runs longer than `seconds` (a decoder stuck in a loop)."""
    def alarm(signum, frame):
        raise Hang(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _write(folder, data: bytes, suffix: str) -> str:
    path = folder / f"input{suffix}"
    path.write_bytes(data)
    return str(path)


def _clear_error(error: IngestError, path: str) -> None:
    """An IngestError as users see it: names the file, says what was expected, no traceback."""
    message = str(error)
    assert message.startswith(path), message
    assert "expected" in message, message
    assert "Traceback" not in message and "\n" not in message, message


def read(call, path: str):
    """The array `call` returns, or the IngestError it raises (checked to be clear)."""
    with bounded():
        try:
            result = call()
        except IngestError as error:
            _clear_error(error, path)
            return error
    assert isinstance(result, np.ndarray) and result.dtype == np.uint8, result
    return result


def read_image(path: str, channels: int = 1, max_pixels: int = MAX_PIXELS):
    return read(lambda: decode.read_image(path, None, channels=channels, max_pixels=max_pixels),
                path)


def read_mask(path: str, size, max_pixels: int = MAX_PIXELS):
    return read(lambda: decode.read_mask(path, None, size=size, max_pixels=max_pixels), path)


def header(data: bytes):
    """imaging's header check: an ImageHeader or ImageRefused, nothing else."""
    limits = ServingLimits(max_pixels=MAX_PIXELS, max_side=256)
    with bounded():
        try:
            return imaging.check_encoded_image(data, limits, "image 0")
        except imaging.ImageRefused as refused:
            assert str(refused).startswith("image 0: ") and "expected" in str(refused)
            return refused


def _assert_correct(array, header_of_file: Image.Image | None, channels: int | None = None):
    """An array returned for a file: the size its header declares, the channels asked for."""
    if header_of_file is not None:
        assert array.shape[:2] == (header_of_file.height, header_of_file.width)
    if channels is not None:
        assert array.shape[2:] == (() if channels == 1 else (channels,))


def _header_of(path: str) -> Image.Image | None:
    try:
        with Image.open(path) as img:
            return img
    except Exception:
        return None


# --- building valid files ---------------------------------------------------------------------

def encode(pixels: np.ndarray, mode: str, fmt: str, compression=None) -> bytes:
    """`pixels` ([h, w] or [h, w, c] uint8) saved in PIL `mode` as PNG or TIFF."""
    image = Image.fromarray(pixels)
    if mode == "I;16":
        image = Image.fromarray(pixels[..., 0].astype(np.uint16) * 257 if pixels.ndim == 3
                                else pixels.astype(np.uint16) * 257)
    elif mode != image.mode:
        image = image.convert(mode)
    buffer = io.BytesIO()
    options = {"compression": compression} if fmt == "TIFF" and compression else {}
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


@st.composite
def images(draw, max_side: int = 12):
    """(pixels, mode, format, encoded bytes) of a small valid image of any size >= 1x1."""
    height = draw(st.integers(1, max_side))
    width = draw(st.integers(1, max_side))
    mode = draw(st.sampled_from(MODES))
    fmt = draw(st.sampled_from(["PNG", "TIFF"]))
    if mode in ("CMYK",) and fmt == "PNG":
        fmt = "TIFF"  # PNG has no CMYK
    if mode == "F" and fmt == "PNG":
        mode = "I"
    compression = draw(st.sampled_from(TIFF_COMPRESSIONS)) if fmt == "TIFF" else None
    channels = {"LA": 2, "RGB": 3, "RGBA": 4, "CMYK": 4}.get(mode, 1)
    shape = (height, width) if channels == 1 else (height, width, 3 if mode == "CMYK" else channels)
    seed = draw(st.integers(0, 2**16))
    pixels = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
    if mode == "CMYK":
        pixels = pixels[..., :3]
    return pixels, mode, fmt, encode(pixels, mode, fmt, compression)


def _fix_png_checksums(data: bytes) -> bytes:
    """`data` with the CRC of every complete PNG chunk recomputed (the parser then reads the
    mutated values instead of stopping at a checksum)."""
    if not data.startswith(PNG_SIGNATURE):
        return data
    out, position = bytearray(data), len(PNG_SIGNATURE)
    while position + 12 <= len(out):
        length = int.from_bytes(out[position:position + 4], "big")
        end = position + 8 + length
        if end + 4 > len(out):
            break
        out[end:end + 4] = struct.pack(">I", zlib.crc32(bytes(out[position + 4:end])))
        position = end + 4
    return bytes(out)


mutations = st.lists(st.one_of(
    st.tuples(st.just("set"), st.integers(0, 10**6), st.integers(0, 255)),
    st.tuples(st.just("truncate"), st.integers(0, 10**6)),
    st.tuples(st.just("insert"), st.integers(0, 10**6), st.binary(min_size=1, max_size=16)),
    st.tuples(st.just("delete"), st.integers(0, 10**6), st.integers(1, 16)),
    st.tuples(st.just("word"), st.integers(0, 10**6),
              st.sampled_from([0, 1, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF])),
), min_size=1, max_size=4)


def mutate(data: bytes, operations) -> bytes:
    out = bytearray(data)
    for operation in operations:
        position = operation[1] % (len(out) + 1)
        if operation[0] == "set" and out:
            out[min(position, len(out) - 1)] = operation[2]
        elif operation[0] == "truncate":
            del out[position:]
        elif operation[0] == "insert":
            out[position:position] = operation[2]
        elif operation[0] == "delete":
            del out[position:position + operation[2]]
        elif operation[0] == "word":  # a big-endian 32-bit field (PNG sizes, TIFF offsets)
            out[position:position + 4] = operation[2].to_bytes(4, "big")
    return bytes(out)


# --- random and mutated bytes -----------------------------------------------------------------

@FUZZ
@given(data=st.one_of(
    st.binary(max_size=512),
    st.builds(lambda tail: PNG_SIGNATURE + tail, st.binary(max_size=512)),
    st.builds(lambda sig, tail: sig + tail, st.sampled_from(TIFF_SIGNATURES),
              st.binary(max_size=512)),
), suffix=st.sampled_from([".png", ".tif"]))
@example(data=b"", suffix=".png")
@example(data=PNG_SIGNATURE, suffix=".png")
@example(data=b"II*\x00\x08\x00\x00\x00", suffix=".tif")
def test_random_bytes_are_refused_clearly(folder, data, suffix):
    path = _write(folder, data, suffix)
    result = read_image(path)
    if isinstance(result, np.ndarray):  # random bytes that happen to be an image
        _assert_correct(result, _header_of(path), channels=1)
    assert isinstance(read_mask(path, (4, 4)), IngestError | np.ndarray)
    header(data)


@FUZZ
@given(image=images(), operations=mutations, repair=st.booleans())
def test_mutated_png_and_tiff_are_refused_or_read_whole(folder, image, operations, repair):
    pixels, mode, fmt, data = image
    data = mutate(data, operations)
    if repair:
        data = _fix_png_checksums(data)
    path = _write(folder, data, ".png" if fmt == "PNG" else ".tif")
    declared = _header_of(path)
    for channels in (1, 3):
        result = read_image(path, channels=channels)
        if isinstance(result, np.ndarray):
            _assert_correct(result, declared, channels=channels)
    size = (declared.height, declared.width) if declared else pixels.shape[:2]
    mask = read_mask(path, size)
    if isinstance(mask, np.ndarray):
        _assert_correct(mask, declared, channels=1)
        assert set(np.unique(mask)) <= {0, 255}
    if fmt == "PNG":
        found = header(data)
        if isinstance(found, imaging.ImageHeader) and declared is not None:
            assert (found.height, found.width) == (declared.height, declared.width)


@FUZZ
@given(width=st.integers(0, 2**32 - 1), height=st.integers(0, 2**32 - 1),
       bit_depth=st.sampled_from([0, 1, 2, 4, 8, 16, 3, 255]),
       colour=st.sampled_from([0, 2, 3, 4, 6, 1, 5, 7, 255]),
       compression=st.integers(0, 1), filter_method=st.integers(0, 1),
       interlace=st.integers(0, 2))
@example(width=1, height=1, bit_depth=8, colour=0, compression=0, filter_method=0, interlace=0)
@example(width=0, height=5, bit_depth=8, colour=0, compression=0, filter_method=0, interlace=0)
@example(width=2**31, height=2**31, bit_depth=16, colour=6, compression=0, filter_method=0,
         interlace=1)
def test_any_png_header_is_refused_or_read_whole(folder, width, height, bit_depth, colour,
                                                 compression, filter_method, interlace):
    """Every IHDR field, checksums valid: the data is one row of zeros for an 8-bit grey image,
    so most headers lie about it."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour, compression, filter_method,
                       interlace)
    idat = zlib.compress(b"\0" * (1 + min(width, 64)))
    data = PNG_SIGNATURE + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")
    path = _write(folder, data, ".png")
    with no_decoding_above(MAX_PIXELS):
        result = read_image(path)
        mask = read_mask(path, (height, width))
    for array in (result, mask):
        if isinstance(array, np.ndarray):
            assert array.shape[:2] == (height, width) and height * width <= MAX_PIXELS
    found = header(data)
    if isinstance(found, imaging.ImageHeader):
        assert (found.height, found.width) == (height, width)


# --- decompression bombs ----------------------------------------------------------------------

def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_declaring(height: int, width: int) -> bytes:
    """A few hundred bytes of 8-bit grey PNG declaring height x width (one row of data)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * (1 + min(width, 1 << 16)), 9)
    return PNG_SIGNATURE + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def tiff_declaring(height: int, width: int, big_endian: bool = False) -> bytes:
    """An uncompressed 8-bit grey TIFF declaring height x width, holding one byte of pixels."""
    order = ">" if big_endian else "<"
    tags = [(256, 4, width), (257, 4, height), (258, 3, 8), (259, 3, 1), (262, 3, 1),
            (273, 4, None), (277, 3, 1), (278, 4, height), (279, 4, 1)]
    data_offset = 8 + 2 + 12 * len(tags) + 4
    entries = b""
    for tag, kind, value in tags:
        value = data_offset if value is None else value
        field = struct.pack(order + ("HH" if kind == 3 else "I"), *(
            (value, 0) if kind == 3 else (value,)))
        entries += struct.pack(order + "HHI", tag, kind, 1) + field
    signature = b"MM\x00*" if big_endian else b"II*\x00"
    return (signature + struct.pack(order + "I", 8) + struct.pack(order + "H", len(tags)) +
            entries + struct.pack(order + "I", 0) + b"\0")


@contextlib.contextmanager
def no_decoding_above(max_pixels: int):
    """Fail if PIL decodes the pixels of any image larger than `max_pixels`."""
    load = ImageFile.ImageFile.load

    def guarded(self):
        assert self.width * self.height <= max_pixels, \
            f"decoded a {self.height}x{self.width} image: the header check came too late"
        return load(self)

    with mock.patch.object(ImageFile.ImageFile, "load", guarded):
        yield


@FUZZ
@given(height=st.integers(1, 2**32 - 1), width=st.integers(1, 2**32 - 1),
       fmt=st.sampled_from(["PNG", "TIFF", "TIFF big-endian"]))
@example(height=1, width=MAX_PIXELS + 1, fmt="PNG")
@example(height=2**32 - 1, width=2**32 - 1, fmt="TIFF")
@example(height=30000, width=30000, fmt="TIFF big-endian")
def test_declared_bombs_are_refused_before_decoding(folder, height, width, fmt):
    if height * width <= MAX_PIXELS:
        height = MAX_PIXELS // width + 1
    data = png_declaring(height, width) if fmt == "PNG" else tiff_declaring(
        height, width, big_endian=fmt.endswith("big-endian"))
    path = _write(folder, data, ".png" if fmt == "PNG" else ".tif")
    with no_decoding_above(MAX_PIXELS):
        result = read_image(path)
        mask = read_mask(path, (height, width))
    for error in (result, mask):
        assert isinstance(error, IngestError)
        # The size check when PIL can read the header; PIL's own refusal for what it cannot.
        assert (f"{height}x{width} (height x width) is {height * width} pixels: expected at "
                f"most {MAX_PIXELS}" in str(error)) or "cannot read it" in str(error), error
    if fmt == "PNG":
        assert isinstance(header(data), imaging.ImageRefused)


def test_a_real_bomb_is_refused_from_its_header_in_milliseconds(folder):
    """A real PNG of 8192² zeros: 64 KB on disk, 64 MB once decoded."""
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((8192, 8192), np.uint8)).save(buffer, format="PNG")
    path = _write(folder, buffer.getvalue(), ".png")
    with no_decoding_above(MAX_PIXELS), bounded(1.0):
        error = read_image(path)
    assert isinstance(error, IngestError) and "8192x8192" in str(error)


# --- odd sizes, channels and mask values on valid files ---------------------------------------

SIDES = st.one_of(st.just(1), st.integers(1, 40))


@FUZZ
@given(height=SIDES, width=SIDES, channels=st.integers(1, 4), expected=st.integers(1, 4),
       fmt=st.sampled_from(["PNG", "TIFF"]), seed=st.integers(0, 2**16))
@example(height=1, width=1, channels=1, expected=1, fmt="PNG", seed=0)
@example(height=1, width=40, channels=1, expected=1, fmt="TIFF", seed=0)
@example(height=40, width=1, channels=3, expected=3, fmt="PNG", seed=0)
def test_valid_images_of_odd_sizes_and_channels_round_trip_exactly(
        folder, height, width, channels, expected, fmt, seed):
    shape = (height, width) if channels == 1 else (height, width, channels)
    pixels = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
    buffer = io.BytesIO()
    if fmt == "TIFF":
        tifffile.imwrite(buffer, pixels, photometric="minisblack" if channels <= 2 else "rgb",
                         extrasamples=[] if channels in (1, 3) else ["unassalpha"])
    else:
        Image.fromarray(pixels).save(buffer, format="PNG")
    path = _write(folder, buffer.getvalue(), ".png" if fmt == "PNG" else ".tif")

    result = read_image(path, channels=expected)

    modes = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}
    if channels != expected:
        assert isinstance(result, IngestError)
        assert (f"image has {channels} channel(s) ({modes[channels]}): expected {expected}"
                in str(result)) or "pixel format" in str(result), result
        return
    if isinstance(result, IngestError):  # PIL reads 2-channel TIFFs as 16-bit: refused clearly
        assert fmt == "TIFF" and channels == 2 and "pixel format" in str(result), result
        return
    np.testing.assert_array_equal(result, pixels)
    # ... and the tf.Example built from it decodes to the same pixels.
    example = tf.train.Example.FromString(records.make_example("x", result, None))
    feature = example.features.feature
    assert (feature["height"].int64_list.value[0], feature["width"].int64_list.value[0]) == (
        height, width)
    decoded = np.asarray(Image.open(io.BytesIO(feature["image"].bytes_list.value[0])))
    np.testing.assert_array_equal(decoded, pixels)


@FUZZ
@given(height=SIDES, width=SIDES, values=st.lists(st.integers(0, 255), min_size=1, max_size=5,
                                                   unique=True),
       mode=st.sampled_from(["L", "P", "1", "LA", "RGB", "RGBA", "I;16"]),
       size_off=st.sampled_from([(0, 0), (0, 0), (0, 0), (1, 0), (0, -1)]),
       seed=st.integers(0, 2**16))
@example(height=1, width=1, values=[7], mode="L", size_off=(0, 0), seed=0)
@example(height=1, width=9, values=[0, 1], mode="1", size_off=(0, 0), seed=0)
@example(height=3, width=3, values=[0, 100, 200], mode="P", size_off=(0, 0), seed=0)
def test_masks_of_any_values_modes_and_sizes(folder, height, width, values, mode, size_off,
                                            seed):
    rng = np.random.default_rng(seed)
    mask = rng.choice(np.array(values, np.uint8), (height, width))
    if mode == "1":
        mask = np.where(mask > 0, 255, 0).astype(np.uint8)
    if mode in ("LA", "RGB", "RGBA"):
        data = encode(np.stack([mask] * len(mode), axis=-1), mode, "PNG")
    elif mode == "P":
        image = Image.fromarray(mask, "L").convert("P")  # palette indices = grey values
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        data = buffer.getvalue()
    else:
        data = encode(mask, mode, "PNG")
    path = _write(folder, data, ".png")
    size = (height + size_off[0], width + size_off[1])

    result = read_mask(path, size)

    stored = np.asarray(Image.open(path)) if mode != "1" else mask
    levels = np.unique(stored) if mode in ("L", "P", "1") else None
    if size != (height, width):
        assert isinstance(result, IngestError)
        assert f"mask is {height}x{width} but its image is {size[0]}x{size[1]}" in str(result)
    elif mode in ("LA", "RGB", "RGBA"):
        assert isinstance(result, IngestError)
        assert f"mask has {len(mode)} channels ({mode}): expected 1" in str(result)
    elif mode == "I;16":
        assert isinstance(result, IngestError) and "pixel format" in str(result)
    elif levels.size > 2:
        assert isinstance(result, IngestError)
        assert f"mask has {levels.size} levels" in str(result) and "at most two" in str(result)
    elif levels.size == 2 and levels[0] != 0:
        assert isinstance(result, IngestError)
        assert "expected 0 for background and one other value" in str(result)
    else:
        assert isinstance(result, np.ndarray) and result.shape == (height, width)
        np.testing.assert_array_equal(result, np.where(stored > 0, 255, 0))


# --- a whole ingestion of fuzzed files: all or nothing, or exactly the good ones ---------------

def _pair_bytes(seed: int) -> tuple[bytes, bytes]:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (6, 8), dtype=np.uint8)
    mask = rng.integers(0, 2, (6, 8), dtype=np.uint8) * 255
    return encode(image, "L", "PNG"), encode(mask, "L", "PNG")


@settings(FUZZ, max_examples=1, deadline=None)
@given(damage=st.lists(st.tuples(st.sampled_from(["image", "mask", None]), mutations),
                       min_size=3, max_size=3))
@example(damage=[(None, []), ("mask", [("truncate", 60)]), ("image", [("insert", 0, b"x")])])
def test_a_folder_of_fuzzed_files_is_written_whole_or_exactly_its_good_examples(
        tmp_path_factory, damage):
    """Pair 0 is intact; pairs 1-3 may have a mutated image or mask. The per-file reader (fuzzed
    above) is the oracle for which pairs are bad."""
    from unet_tfx.ingest import ingest, read_examples

    root = tmp_path_factory.mktemp("fuzzed_folder")
    (root / "images").mkdir()
    (root / "masks").mkdir()
    bad = {}
    for i, (which, operations) in enumerate([(None, [])] + damage):
        image, mask = _pair_bytes(i)
        if which == "image":
            image = mutate(image, operations)
        elif which == "mask":
            mask = mutate(mask, operations)
        paths = _write_pair(root, str(i), image, mask)
        with bounded():
            try:
                size = decode.read_image(paths[0], None, channels=1,
                                         max_pixels=MAX_PIXELS).shape[:2]
                decode.read_mask(paths[1], None, size=size, max_pixels=MAX_PIXELS)
            except IngestError as error:
                bad[str(i)] = str(error)
    sources = {"images": root / "images", "masks": root / "masks", "max_pixels": MAX_PIXELS}

    if bad:
        with pytest.raises(IngestError) as error:
            ingest(root / "all", **sources)
        assert sorted(f"{file}: {reason}" for file, reason in error.value.problems) == sorted(
            bad.values())
        assert not (root / "all").exists()
    else:
        ingest(root / "all", **sources)
        assert sorted(e["id"] for e in read_examples(root / "all")) == ["0", "1", "2", "3"]

    summary = ingest(root / "good", skip_bad=True, **sources)
    written = {e["id"] for e in read_examples(root / "good")}
    assert written == {"0", "1", "2", "3"} - set(bad)
    assert summary.count == len(written) and summary.rejected == len(bad)
    rejected = (root / "good" / "rejected.csv").read_text().splitlines()[1:]
    assert sorted(line.split(",", 1)[0] for line in rejected) == sorted(bad)


def _write_pair(root, stem: str, image: bytes, mask: bytes) -> tuple[str, str]:
    paths = (root / "images" / f"{stem}.png", root / "masks" / f"{stem}.png")
    paths[0].write_bytes(image)
    paths[1].write_bytes(mask)
    return str(paths[0]), str(paths[1])
