"""Bounded serving: hostile or oversize requests are refused from the image headers, before any
pixel is decoded, with INVALID_ARGUMENT naming the size and the limit; the same rules refuse
them in ingestion and in `unet-tfx predict`."""

import dataclasses
import functools
import io
import json
import struct
import subprocess
import sys
import textwrap
import time
import zlib

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras
from PIL import Image

from unet_tfx import features as F
from unet_tfx import imaging
from unet_tfx.cli import main
from unet_tfx.config import BUNDLED_DATA, ServingLimits
from unet_tfx.ingest import IngestError, ingest
from unet_tfx.serving import command
from unet_tfx.trainer.export import (
    LIMITS_FILE,
    _pad_to_multiple,
    check_encoded_images,
    export_serving_model,
    read_serving_limits,
)
from unet_tfx.trainer.model import build_unet

# Small limits for speed: an image at the limit is 100x150, a request at the limit 4 of 50x75.
LIMITS = ServingLimits(max_pixels=100 * 150, max_side=150, max_batch=4,
                       max_request_bytes=2 * 1024 * 1024)
MAX_SECONDS = 1.0  # per hostile request
MAX_RSS_GROWTH_MB = 300  # of the serving process, over all hostile requests
SIZE = 64  # Transform analyzes 64² crops


# --- encoded images, honest and hostile ------------------------------------------------------

def _encode(pixels, fmt: str = "PNG", **options) -> bytes:
    """`pixels` (an array or a PIL image) encoded as `fmt`."""
    buffer = io.BytesIO()
    image = pixels if isinstance(pixels, Image.Image) else Image.fromarray(pixels)
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _grey(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width), dtype=np.uint8)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_declaring(height: int, width: int, rows: int = 1, bit_depth: int = 8) -> bytes:
    """A greyscale PNG whose IHDR declares height x width but whose data holds `rows` rows of
    zeros (rows=height: an honest image). A few hundred bytes whatever it declares."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, 0, 0, 0, 0)
    row = b"\0" * (1 + min(width, 1 << 20) * bit_depth // 8)  # filter byte + pixels
    idat = zlib.compress(row * rows, 9)
    return imaging.PNG_SIGNATURE + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + \
        _chunk(b"IEND", b"")


def jpeg_declaring(height: int, width: int) -> bytes:
    """A 16² JPEG whose frame header is rewritten to declare height x width."""
    data = bytearray(_encode(np.zeros((16, 16), np.uint8), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


SIDE = r"has a side of {} pixels: expected at most {} \(see max_side\)"
LIBJPEG = r"Invalid JPEG data|jpeg::Uncompress failed"
INVALID_PNG = r"Invalid PNG data|Failed to initialize decoder|Invalid PNG"


@functools.lru_cache(maxsize=1)
def hostile_requests() -> dict:
    """name → (encoded images of one request, what the refusal must say)."""
    png = _encode(_grey(100, 150))
    jpeg = _encode(_grey(100, 150), "JPEG")
    zeros = np.zeros((8192, 8192), np.uint8)
    requests = {
        # Decompression bombs: tiny requests declaring huge images.
        "PNG 8192² of zeros (64 KB)": ([_encode(zeros)],
                                       r"image 0: 8192x8192 .*" + SIDE.format(8192, 150)),
        "JPEG 8192² of zeros": ([_encode(zeros, "JPEG")], SIDE.format(8192, 150)),
        "PNG declaring 30000²": ([png_declaring(30000, 30000)], SIDE.format(30000, 150)),
        "JPEG declaring 30000²": ([jpeg_declaring(30000, 30000)], SIDE.format(30000, 150)),
        "PNG 65536x1": ([png_declaring(65536, 1, rows=65536)],
                        r"65536x1 .*" + SIDE.format(65536, 150)),
        "PNG 1x65536": ([png_declaring(1, 65536)], r"1x65536 .*" + SIDE.format(65536, 150)),
        "JPEG declaring 65500x1": ([jpeg_declaring(65500, 1)], SIDE.format(65500, 150)),
        # Above libjpeg's 65500 pixels per side: libjpeg refuses to read the header.
        "JPEG declaring 65535x1": ([jpeg_declaring(65535, 1)], LIBJPEG),
        "PNG declaring 2**32-1 square": ([png_declaring(2**32 - 1, 2**32 - 1)],
                                         SIDE.format(2**32 - 1, 150)),
        "PNG 150² (sides allowed, pixels not)": (
            [png_declaring(150, 150, rows=150)],
            r"image 0: 150x150 \(height x width\) is 22500 pixels: expected at most 15000 "
            r"\(see max_pixels\)"),
        # Corrupt, truncated and lying bytes.
        "zero-width PNG": ([png_declaring(5, 0)], r"image 0: 5x0 .*at least 1 pixel per side"),
        "zero-height JPEG": ([jpeg_declaring(0, 16)], r"0x16 .*at least 1 pixel|" + LIBJPEG),
        "PNG cut inside its header": ([png[:20]], r"image 0: truncated or corrupt PNG header"),
        "PNG with the header only": ([png[:33]], INVALID_PNG),
        "PNG cut in half": ([png[:len(png) // 2]], INVALID_PNG),
        "PNG declaring more rows than it holds": ([png_declaring(100, 150, rows=3)],
                                                  INVALID_PNG),
        "JPEG cut inside its header": ([jpeg[:10]], LIBJPEG),
        "JPEG cut in half": ([jpeg[:len(jpeg) // 2]], LIBJPEG),
        "garbage": ([b"this is not an image, just some bytes" * 3],
                    r"image 0: not a PNG or JPEG image .*expected PNG or JPEG"),
        "empty bytes": ([b""], r"image 0: not a PNG or JPEG image"),
        "GIF": ([_encode(_grey(10, 10), "GIF")], r"image 0: not a PNG or JPEG image"),
        "CMYK JPEG": ([_cmyk_jpeg()], r"JPEG with 4 colour components: expected 1 .* or 3"),
        # Requests too large as a whole.
        "5 images": ([_encode(_grey(8, 8))] * 5, r"request of 5 images: expected 1 to 4 "
                     r"\(see max_batch\)"),
        "no image": ([], r"request of 0 images: expected 1 to 4"),
        "2 images at the pixel limit": (
            [png] * 2, r"request of 2 images of 100x150 \(height x width\) is 30000 pixels: "
            r"expected at most 15000 \(see max_pixels\)"),
        "images of two sizes": ([_encode(_grey(8, 8)), _encode(_grey(8, 9))],
                                r"image 1: 8x9 \(height x width\) but image 0 is 8x8"),
        "3 MB": ([imaging.PNG_SIGNATURE + bytes(3 << 20)],
                 r"request: 3145736 bytes: expected at most 2097152 \(see max_request_bytes\)"),
    }
    return requests


def _cmyk_jpeg() -> bytes:
    rgb = np.stack([_grey(10, 10, seed) for seed in range(3)], axis=-1)
    return _encode(Image.fromarray(rgb).convert("CMYK"), "JPEG")


# --- the Python rules -------------------------------------------------------------------------

def test_limits_are_positive_integers():
    assert ServingLimits().max_pixels == 4096 * 4096
    with pytest.raises(ValueError, match="ServingLimits.max_side must be a positive integer"):
        ServingLimits(max_side=0)
    with pytest.raises(ValueError, match="max_batch"):
        ServingLimits(max_batch=2.5)


def test_headers_give_format_and_size_without_decoding():
    assert imaging.image_header(_encode(_grey(20, 30))) == imaging.ImageHeader("PNG", 20, 30, 1)
    rgb = np.zeros((20, 30, 3), np.uint8)
    assert imaging.image_header(_encode(rgb)).channels == 3
    assert imaging.image_header(_encode(_grey(20, 30), "JPEG", progressive=True)) == \
        imaging.ImageHeader("JPEG", 20, 30, 1)
    assert imaging.image_header(_cmyk_jpeg()).channels == 4
    assert imaging.image_header(png_declaring(30000, 40000)) == \
        imaging.ImageHeader("PNG", 30000, 40000, 1)
    assert imaging.image_header(jpeg_declaring(65535, 1)) == \
        imaging.ImageHeader("JPEG", 65535, 1, 1)


def _python_verdict(images: list[bytes]) -> str:
    try:
        imaging.check_encoded_image(images[0], LIMITS, "image 0")
    except imaging.ImageRefused as exc:
        return str(exc)
    return "accepted"


@functools.lru_cache(maxsize=2)
def _graph_check(limits: ServingLimits):
    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def check(images):
        _, heights, widths = check_encoded_images(images, limits)
        return heights, widths
    return check


def _graph_verdict(images: list[bytes], limits: ServingLimits = LIMITS) -> str:
    try:
        _graph_check(limits)(tf.constant(images, tf.string))
    except tf.errors.InvalidArgumentError as exc:
        text = exc.message
        return text.split("assertion failed: [", 1)[1].split("]\n", 1)[0] \
            if "assertion failed" in text else "refused by the decoder: " + text
    return "accepted"


@pytest.mark.parametrize("name", [n for n, (images, _) in hostile_requests().items()
                                  if len(images) == 1])
def test_the_graph_and_python_checks_agree(name):
    """One image: the Python check refuses exactly what the graph's header check refuses, in
    the same words; what only a decoder sees (libjpeg reading a corrupt JPEG header in the
    graph, data missing after a valid header) the Python check may pass."""
    images, _ = hostile_requests()[name]
    python, graph = _python_verdict(images), _graph_verdict(images)
    if not graph.startswith("refused by the decoder"):
        # Python names the image where the graph names the request: one image per request.
        assert python == graph.replace("request:", "image 0:")


def test_the_default_limits_refuse_the_bombs_in_the_graph():
    defaults = ServingLimits()
    for name in ("PNG 8192² of zeros (64 KB)", "PNG declaring 30000²", "JPEG declaring 30000²",
                 "PNG 65536x1", "PNG 1x65536", "JPEG 8192² of zeros"):
        images, _ = hostile_requests()[name]
        verdict = _graph_verdict(images, defaults)
        assert "expected at most 4096 (see max_side)" in verdict, (name, verdict)
    at_limit = [png_declaring(4096, 4096), png_declaring(4096, 1024)]
    for image in at_limit:
        assert _graph_verdict([image], defaults) == "accepted"
        imaging.check_encoded_image(image, defaults, "x")
    assert _graph_verdict([png_declaring(4096, 2048)] * 2, defaults) == "accepted"
    assert "25165824 pixels: expected at most 16777216" in _graph_verdict(
        [png_declaring(4096, 2048)] * 3, defaults)
    assert _graph_verdict([png_declaring(512, 512)] * 16, defaults) == "accepted"
    assert "request of 17 images" in _graph_verdict([png_declaring(8, 8)] * 17, defaults)


def test_padding_mirrors_like_tf_pad_and_handles_one_pixel_sides():
    image = tf.random.uniform([2, 20, 35, 1])
    expected = tf.pad(image, [[0, 0], [0, 12], [0, 13], [0, 0]], mode="SYMMETRIC")
    np.testing.assert_array_equal(_pad_to_multiple(image, 16), expected)
    np.testing.assert_array_equal(_pad_to_multiple(image[:, :16, :32], 16), image[:, :16, :32])
    one = tf.constant([[[[7.0]]]])
    np.testing.assert_array_equal(_pad_to_multiple(one, 16), tf.fill([1, 16, 16, 1], 7.0))
    strip = tf.reshape(tf.range(3, dtype=tf.float32), [1, 1, 3, 1])
    padded = _pad_to_multiple(strip, 16)
    assert padded.shape == (1, 16, 16, 1)
    np.testing.assert_array_equal(padded[0, 5, :, 0], [0, 1, 2, 2, 1, 0] * 2 + [0, 1, 2, 2])


# --- the exported model, in-process ------------------------------------------------------------

@pytest.fixture(scope="module")
def model_dir(transform_output, tmp_path_factory):
    """The test profile's U-Net (base filters 4) exported with LIMITS, given as the Trainer's
    custom_config gives them: a dict."""
    keras.utils.set_random_seed(0)
    directory = str(tmp_path_factory.mktemp("served") / "1")
    export_serving_model(build_unet((None, None, 1), base_filters=4), transform_output, directory,
                         channels=1, depth=4, limits=dataclasses.asdict(LIMITS))
    return directory


@pytest.fixture(scope="module")
def serve(model_dir):
    signature = tf.saved_model.load(model_dir).signatures["serving_default"]
    signature(images=tf.constant([_encode(_grey(16, 16))]))  # the first call initializes
    return lambda images: signature(images=tf.constant(images, tf.string))["probabilities"]


@pytest.mark.e2e
def test_limits_are_written_into_the_saved_model(model_dir):
    with open(f"{model_dir}/{LIMITS_FILE}") as f:
        assert json.load(f) == dataclasses.asdict(LIMITS)
    assert read_serving_limits(model_dir) == LIMITS
    assert read_serving_limits(str(BUNDLED_DATA)) is None


@pytest.mark.e2e
@pytest.mark.parametrize("name", list(hostile_requests()))
def test_hostile_requests_are_refused_fast_with_the_size_and_limit(serve, name):
    images, message = hostile_requests()[name]
    started = time.monotonic()
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        serve(images)
    assert time.monotonic() - started < MAX_SECONDS


@pytest.mark.e2e
def test_requests_at_the_limits_are_answered(serve):
    at_limit = _encode(_grey(100, 150))  # max_pixels and max_side at once
    assert serve([at_limit]).shape == (1, 100, 150, 1)
    assert serve([_encode(_grey(50, 75, seed)) for seed in range(4)]).shape == (4, 50, 75, 1)
    assert serve([_encode(_grey(1, 150))]).shape == (1, 1, 150, 1)
    assert serve([_encode(_grey(150, 1))]).shape == (1, 150, 1, 1)
    probabilities = serve([at_limit]).numpy()
    assert np.all((probabilities >= 0) & (probabilities <= 1))


@pytest.mark.e2e
def test_every_png_and_jpeg_flavour_gets_the_mask_of_its_grey_pixels(serve):
    grey = _grey(40, 56)
    expected = serve([_encode(grey)]).numpy()
    same_pixels = {
        "16-bit PNG": _encode(grey.astype(np.uint16) * 257),  # decoded to the 8-bit values
        "palette PNG": _encode(Image.fromarray(grey).convert("P")),
        "RGB PNG": _encode(np.stack([grey] * 3, axis=-1)),
        "grey + alpha PNG": _encode(np.stack([grey, np.full_like(grey, 255)], axis=-1)),
        "interlaced PNG": _interlaced_png(grey),
    }
    for name, encoded in same_pixels.items():
        np.testing.assert_allclose(serve([encoded]), expected, atol=1e-6, err_msg=name)
    jpegs = {"JPEG": _encode(grey, "JPEG", quality=95),
             "progressive JPEG": _encode(grey, "JPEG", quality=95, progressive=True),
             "RGB JPEG": _encode(np.stack([grey] * 3, -1), "JPEG", quality=95)}
    for name, encoded in jpegs.items():
        served = serve([encoded]).numpy()
        assert served.shape == expected.shape, name
        assert np.mean(np.abs(served - expected)) < 0.05, name  # lossy, close
    # One pixel is mirrored to the 16² the U-Net needs: a constant image.
    one = serve([_encode(np.full((1, 1), 77, np.uint8))]).numpy()
    constant = serve([_encode(np.full((16, 16), 77, np.uint8))]).numpy()
    np.testing.assert_allclose(one[0, 0, 0], constant[0, 0, 0], atol=1e-6)


def _example(image: bytes, mask: bytes) -> bytes:
    def feature(value):
        if isinstance(value, bytes):
            return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))

    return tf.train.Example(features=tf.train.Features(feature={
        F.IMAGE: feature(image), F.MASK: feature(mask), F.HEIGHT: feature(SIZE),
        F.WIDTH: feature(SIZE), F.ID: feature(b"0")})).SerializeToString()


@pytest.mark.e2e
def test_the_example_signatures_check_each_encoded_image_before_transform(model_dir):
    signatures = tf.saved_model.load(model_dir).signatures
    serve, transform = signatures["serving_examples"], signatures["transform_features"]
    image, mask = _encode(_grey(SIZE, SIZE)), _encode(np.zeros((SIZE, SIZE), np.uint8))
    good = _example(image, mask)
    assert serve(examples=tf.constant([good] * 6))["probabilities"].shape == (6, SIZE, SIZE, 1)
    assert transform(examples=tf.constant([good]))[F.MASK_XF].shape == (1, SIZE, SIZE, 1)
    refusals = [
        (serve, _example(png_declaring(30000, 30000), mask), r"image 0: 30000x30000 .*max_side"),
        (transform, _example(image, png_declaring(65536, 1, rows=65536)),
         r"mask 0: 65536x1 .*max_side"),
        (serve, _example(b"garbage", mask), r"image 0: not a PNG or JPEG image"),
    ]
    for signature, example, message in refusals:
        started = time.monotonic()
        with pytest.raises(tf.errors.InvalidArgumentError, match=message):
            signature(examples=tf.constant([good, example][::-1]))
        assert time.monotonic() - started < MAX_SECONDS


def _interlaced_png(grey: np.ndarray) -> bytes:
    """Adam7-interlaced (PIL cannot write them): rows of each pass, filter byte 0."""
    passes = [(0, 0, 8, 8), (0, 4, 8, 8), (4, 0, 8, 4), (0, 2, 4, 4), (2, 0, 4, 2), (0, 1, 2, 2),
              (1, 0, 2, 1)]
    raw = b"".join(b"\0" + grey[row, x0::dx].tobytes()
                   for y0, x0, dy, dx in passes if grey[y0::dy, x0::dx].size
                   for row in range(y0, grey.shape[0], dy))
    height, width = grey.shape
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 1)
    return imaging.PNG_SIGNATURE + _chunk(b"IHDR", ihdr) + \
        _chunk(b"IDAT", zlib.compress(raw)) + _chunk(b"IEND", b"")


MEASURE = textwrap.dedent("""
    import json, re, sys, time
    import unet_tfx  # noqa: F401
    import tensorflow as tf

    def resident_mb(field):  # VmRSS now, VmHWM the peak since the last reset
        status = open("/proc/self/status").read()
        return int(re.search(field + r":\\s+(\\d+) kB", status).group(1)) / 1024

    def reset_peak():  # Linux >= 4.0: the high-water mark restarts from the current RSS
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")

    model_dir, requests = sys.argv[1], json.load(open(sys.argv[2]))
    serve = tf.saved_model.load(model_dir).signatures["serving_default"]
    serve(images=tf.constant([open(requests.pop("warm-up")[0], "rb").read()]))
    baseline = resident_mb("VmRSS")
    results = {}
    for name, paths in requests.items():
        images = tf.constant([open(p, "rb").read() for p in paths], tf.string)
        reset_peak()
        before, started = resident_mb("VmRSS"), time.monotonic()
        try:
            serve(images=images)
            outcome = "answered"
        except tf.errors.InvalidArgumentError:
            outcome = "INVALID_ARGUMENT"
        results[name] = {"outcome": outcome, "seconds": time.monotonic() - started,
                         "peak_growth_mb": resident_mb("VmHWM") - before}
    print(json.dumps({"baseline_mb": baseline, "growth_mb": resident_mb("VmRSS") - baseline,
                      "requests": results}))
""")


@pytest.mark.e2e
def test_hostile_requests_cost_the_serving_process_no_memory(model_dir, tmp_path):
    """In a fresh process that loads the SavedModel: every hostile request fails fast, and the
    process's peak resident memory during each (VmHWM, reset before each) stays within a few
    hundred MB of its resident memory before it."""
    requests = {"warm-up": [_encode(_grey(16, 16))]}
    requests.update({name: images for name, (images, _) in hostile_requests().items()})
    paths = {}
    for number, (name, images) in enumerate(requests.items()):
        paths[name] = []
        for index, encoded in enumerate(images):
            path = tmp_path / f"{number}-{index}.bin"
            path.write_bytes(encoded)
            paths[name].append(str(path))
    (tmp_path / "requests.json").write_text(json.dumps(paths))
    (tmp_path / "measure.py").write_text(MEASURE)
    done = subprocess.run([sys.executable, str(tmp_path / "measure.py"), model_dir,
                           str(tmp_path / "requests.json")], capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    for name, result in report["requests"].items():
        print(f"{name}: {result['outcome']} in {result['seconds'] * 1000:.1f} ms, "
              f"peak RSS {result['peak_growth_mb']:+.1f} MB")
    print(f"loaded model: {report['baseline_mb']:.0f} MB resident; after all hostile requests "
          f"{report['growth_mb']:+.1f} MB")
    results = report["requests"].values()
    assert {r["outcome"] for r in results} == {"INVALID_ARGUMENT"}
    assert max(r["seconds"] for r in results) < MAX_SECONDS
    assert max(r["peak_growth_mb"] for r in results) < MAX_RSS_GROWTH_MB
    assert report["growth_mb"] < MAX_RSS_GROWTH_MB


# --- ingestion and `unet-tfx predict` ---------------------------------------------------------

def test_ingestion_refuses_a_declared_bomb_before_decoding_naming_the_file(tmp_path):
    for folder in ("images", "masks"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "0.png").write_bytes(_encode(_grey(6, 8)))
    (tmp_path / "masks" / "0.png").write_bytes(_encode(np.zeros((6, 8), np.uint8)))
    (tmp_path / "images" / "1.png").write_bytes(png_declaring(30000, 30000))
    (tmp_path / "masks" / "1.png").write_bytes(_encode(np.zeros((6, 8), np.uint8)))

    started = time.monotonic()
    with pytest.raises(IngestError, match=r"images/1\.png: 30000x30000 \(height x width\) is "
                       r"900000000 pixels: expected at most 16777216 \(see max_pixels\)"):
        ingest(tmp_path / "out", images=tmp_path / "images", masks=tmp_path / "masks")
    assert time.monotonic() - started < 30
    assert not (tmp_path / "out").exists()


@pytest.fixture
def never_sent(monkeypatch):
    def segmenter(args):
        raise AssertionError("an image was sent to the model")
    monkeypatch.setattr(command, "_segmenter", segmenter)


def test_predict_refuses_an_oversize_image_before_sending(tmp_path, capsys, never_sent):
    good, bomb = tmp_path / "good.png", tmp_path / "bomb.png"
    good.write_bytes(_encode(_grey(64, 64)))
    bomb.write_bytes(png_declaring(30000, 30000))
    code = main(["predict", str(good), str(bomb), "--server", "127.0.0.1:1",
                 "--output", str(tmp_path / "out")])
    assert code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error == (f"error: {bomb}: 30000x30000 (height x width) has a side of 30000 pixels: "
                     "expected at most 4096 (see max_side)")


def test_predict_uses_the_limits_the_model_was_exported_with(tmp_path, capsys, never_sent):
    model_base = tmp_path / "serving" / "unet_membrane"
    (model_base / "3" / "assets.extra").mkdir(parents=True)
    (model_base / "3" / "saved_model.pb").write_bytes(b"")
    (model_base / "3" / LIMITS_FILE).write_text(json.dumps(dataclasses.asdict(LIMITS)))
    image = tmp_path / "a.jpg"
    image.write_bytes(_encode(_grey(150, 150), "JPEG"))
    garbage = tmp_path / "b.png"
    garbage.write_bytes(b"GIF89a" + bytes(100))

    assert main(["predict", str(image), "--model-dir", str(model_base)]) == 2
    assert capsys.readouterr().err.strip().endswith(
        f"{image}: 150x150 (height x width) is 22500 pixels: expected at most 15000 "
        "(see max_pixels)")
    assert main(["predict", str(garbage), "--model-dir", str(model_base)]) == 2
    assert "b.png: not a PNG or JPEG image" in capsys.readouterr().err
