"""TF Serving for the people who run it: compact mask answers, large images in tiles, warmup
requests in every export, the config files `unet-tfx serving-config` writes (parsed with TF
Serving's protos) and the Kubernetes manifests (validated offline against their schemas)."""

import dataclasses
import functools
import importlib
import io
import json
import re
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras
import yaml
from google.protobuf import text_format
from PIL import Image
from tensorflow_serving.config import model_server_config_pb2

from unet_tfx import cli
from unet_tfx.config import BUNDLED_DATA, ServingLimits
from unet_tfx.ingest.records import make_example
from unet_tfx.serving import deploy, warmup
from unet_tfx.trainer import tiling
from unet_tfx.trainer.export import MASK_PNG, PROBABILITIES, build_signatures, export_serving_model
from unet_tfx.trainer.model import build_unet

ROOT = Path(__file__).resolve().parent.parent
SIZE = 64  # conftest.transform_output analyzes 64² crops
EVAL_IDS = (4, 9)  # two images of the eval split
# The test profile's U-Net in small tiles, so 1024² is 100 tiles; images up to 4096².
TILED = ServingLimits(max_pixels=4096 * 4096, tile_size=128, tile_overlap=32, tile_batch=4)
WHOLE = dataclasses.replace(TILED, tile_size=4096)  # the same model, never tiled
# The masks' p(cell) threshold the model is exported with: not the default 0.5, so the tests
# see the export's threshold reach every mask (the untrained model answers ~0.5 everywhere).
THRESHOLD = 0.45
KUBERNETES_VERSION = "1.30.0"  # the manifests' schema check; kubernetes-validate has 1.25-1.37


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _decode(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)))


def _crop(path: Path, size: int = SIZE) -> np.ndarray:
    return np.asarray(Image.open(path).convert("L"))[:size, :size]


@functools.lru_cache(maxsize=2)
def mosaic(size: int) -> np.ndarray:
    """size² of membranes: the 30 unlabeled 512² test images side by side (and cut)."""
    images = [_crop(BUNDLED_DATA / "test" / f"{i}.png", 512) for i in range(30)]
    count = -(-size // 512)
    rows = [np.concatenate([images[(r * count + c) % 30] for c in range(count)], axis=1)
            for r in range(count)]
    return np.ascontiguousarray(np.concatenate(rows, axis=0)[:size, :size])


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(0)
    return build_unet((None, None, 1), base_filters=4)


@pytest.fixture(scope="module")
def eval_examples(tmp_path_factory):
    """The eval split as the Trainer gets it: GZIP TFRecords of raw examples (the ingestion's
    format) of two eval images; and their 8-bit pixels."""
    pixels = [_crop(BUNDLED_DATA / "image" / f"{i}.png") for i in EVAL_IDS]
    masks = [_crop(BUNDLED_DATA / "label" / f"{i}.png") for i in EVAL_IDS]
    path = str(tmp_path_factory.mktemp("raw") / "eval-00000-of-00001.gz")
    with tf.io.TFRecordWriter(path, options="GZIP") as writer:
        for index, (image, mask) in enumerate(zip(pixels, masks, strict=True)):
            writer.write(make_example(str(index), image, mask))
    return [path.replace("00000-of-00001", "*")], pixels


@pytest.fixture(scope="module")
def tiled_dir(model, transform_output, eval_examples, tmp_path_factory):
    """The model exported as the Trainer exports it: limits as a dict, eval images as warmup."""
    directory = str(tmp_path_factory.mktemp("served") / "1")
    export_serving_model(model, transform_output, directory, channels=1, depth=4,
                         limits=dataclasses.asdict(TILED),
                         warmup_images=warmup.eval_pngs(eval_examples[0]), threshold=THRESHOLD)
    return directory


@pytest.fixture(scope="module")
def signatures(tiled_dir):
    return tf.saved_model.load(tiled_dir).signatures


# --- compact answers -------------------------------------------------------------------------

def test_mask_png_bytes_is_the_thresholded_probabilities(signatures):
    """Whole (64²) and tiled (300x200) requests, a batch of two: each PNG decodes to the mask
    `probabilities > THRESHOLD` (255 cell, 0 membrane) at the image's size; `serving_mask`
    answers the same bytes alone."""
    for height, width in ((SIZE, SIZE), (300, 200)):
        images = [_png(mosaic(512)[:height, :width]), _png(mosaic(512)[-height:, -width:])]
        answer = signatures["serving_default"](images=tf.constant(images))
        probabilities, masks = answer[PROBABILITIES].numpy(), answer[MASK_PNG].numpy()
        assert probabilities.shape == (2, height, width, 1) and masks.shape == (2,)
        for p, png in zip(probabilities, masks, strict=True):
            mask = _decode(png)
            assert mask.shape == (height, width) and mask.dtype == np.uint8
            np.testing.assert_array_equal(mask, np.where(p[..., 0] > THRESHOLD, 255, 0))
            assert np.any((p[..., 0] > THRESHOLD) != (p[..., 0] > 0.5))  # a test that can fail
        alone = signatures["serving_mask"](images=tf.constant(images))
        assert list(alone) == [MASK_PNG]
        assert list(alone[MASK_PNG].numpy()) == list(masks)
        # The point of it: a few kilobytes instead of 4 bytes per pixel.
        assert max(map(len, masks)) < probabilities[0].nbytes / 10


def test_serving_tta_is_the_mean_over_flips_and_turns_turned_back(signatures):
    """On a non-square image: the mean of serving_default's answers for the 8 flipped and
    turned images, each turned back; and its mask is that mean thresholded."""
    image = mosaic(512)[:48, :80]
    answer = signatures["serving_tta"](images=tf.constant([_png(image)]))
    expected = np.zeros((48, 80, 1), np.float32)
    for flip in (False, True):
        for turns in range(4):
            variant = np.rot90(image[:, ::-1] if flip else image, turns)
            p = signatures["serving_default"](images=tf.constant([_png(
                np.ascontiguousarray(variant))]))[PROBABILITIES].numpy()[0]
            p = np.rot90(p, -turns)
            expected += p[:, ::-1] if flip else p
    tta = answer[PROBABILITIES].numpy()[0]
    np.testing.assert_allclose(tta, expected / 8, atol=1e-5)
    assert np.abs(tta - signatures["serving_default"](images=tf.constant([_png(image)]))[
        PROBABILITIES].numpy()[0]).max() > 1e-3  # it is not the plain answer
    np.testing.assert_array_equal(_decode(answer[MASK_PNG].numpy()[0]),
                                  np.where(tta[..., 0] > THRESHOLD, 255, 0))


# --- tiles ------------------------------------------------------------------------------------

def test_tile_origins_cover_the_image_on_the_pooling_grid():
    origins = tiling.tile_origins(tf.constant(1040), tf.constant(512), 384).numpy().tolist()
    assert origins == [0, 384, 528]  # the last one moved back to end at the edge
    assert tiling.tile_origins(tf.constant(256), tf.constant(256), 384).numpy().tolist() == [0]
    assert tiling.tile_count(4096, 4096, 512, 128) == 121
    assert tiling.tile_count(512, 512, 512, 128) == 1
    window = tiling.gaussian_window(tf.constant(8), tf.constant(6)).numpy()
    assert window.shape == (8, 6, 1) and window.max() <= 1 and window.min() > 0
    np.testing.assert_allclose(window, window[::-1, ::-1])


def test_blending_is_a_weighted_average_of_the_tiles(model):
    """A constant model gives that constant everywhere (every pixel is covered and the weights
    are normalized); the U-Net's tiled answer equals a NumPy blend of its tiles."""
    images = tf.random.stateless_normal([2, 160, 224, 1], seed=[1, 2])
    constant = tiling.predict_tiled(lambda t: tf.fill(tf.shape(t), 0.25), images, 64, 16, 3)
    np.testing.assert_allclose(constant, 0.25, rtol=1e-6)

    tiled = tiling.predict_tiled(lambda t: model(t, training=False), images, 64, 16, 3).numpy()
    sums, weights = np.zeros([2, 160, 224, 1]), np.zeros([2, 160, 224, 1])
    window = tiling.gaussian_window(tf.constant(64), tf.constant(64)).numpy()
    for n in range(2):
        for y in tiling.tile_origins(tf.constant(160), tf.constant(64), 48).numpy():
            for x in tiling.tile_origins(tf.constant(224), tf.constant(64), 48).numpy():
                tile = model(images[n:n + 1, y:y + 64, x:x + 64], training=False).numpy()[0]
                sums[n, y:y + 64, x:x + 64] += tile * window
                weights[n, y:y + 64, x:x + 64] += window
    np.testing.assert_allclose(tiled, sums / weights, atol=1e-5)


def test_tiles_off_the_pooling_grid_are_refused(model, transform_output):
    with pytest.raises(ValueError, match=r"tile_size \(100\) and tile_overlap \(32\) must be "
                       r"multiples of 2\*\*depth = 16"):
        build_signatures(model, transform_output, 1, 4, dataclasses.replace(TILED, tile_size=100))
    with pytest.raises(ValueError, match="tile_overlap .* must be below tile_size"):
        ServingLimits(tile_size=64, tile_overlap=64)


@pytest.mark.e2e
def test_tiled_answers_agree_with_whole_image_inference(model, transform_output, signatures,
                                                        tmp_path):
    """1024² in 128² tiles (100 of them) against the same model on the whole image."""
    export_serving_model(model, transform_output, str(tmp_path / "whole"), channels=1, depth=4,
                         limits=WHOLE)
    whole_sig = tf.saved_model.load(str(tmp_path / "whole")).signatures["serving_default"]
    image = tf.constant([_png(mosaic(1024))])
    whole = whole_sig(images=image)[PROBABILITIES].numpy()
    tiled = signatures["serving_default"](images=image)[PROBABILITIES].numpy()
    difference = np.abs(tiled - whole)
    differing = int(np.sum((tiled > 0.5) != (whole > 0.5)))
    print(f"1024², 100 tiles of 128² (overlap 32) vs whole: max |dp| {difference.max():.4f}, "
          f"mean {difference.mean():.1e}, mask differs at {differing} of {whole.size} pixels")
    assert tiled.shape == whole.shape == (1, 1024, 1024, 1)
    # The untrained model answers ~0.5 almost everywhere, so its mask flips on tiny
    # differences: the probabilities are what must agree.
    assert difference.max() < 0.1 and difference.mean() < 2e-3


MEASURE = textwrap.dedent("""
    import json, re, sys, time
    import numpy as np
    import unet_tfx  # noqa: F401
    import tensorflow as tf

    def resident_mb(field):  # VmRSS now, VmHWM the peak since the last reset
        status = open("/proc/self/status").read()
        return int(re.search(field + r":\\s+(\\d+) kB", status).group(1)) / 1024

    model_dir, image, small, threshold = sys.argv[1:5]
    serve = tf.saved_model.load(model_dir).signatures["serving_default"]
    serve(images=tf.constant([open(small, "rb").read()]))
    baseline = resident_mb("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:  # the high-water mark restarts from here
        f.write("5")
    started = time.monotonic()
    answer = serve(images=tf.constant([open(image, "rb").read()]))
    seconds = time.monotonic() - started
    peak = resident_mb("VmHWM")
    probabilities = answer["probabilities"].numpy()
    mask = tf.io.decode_png(answer["mask_png_bytes"][0]).numpy()[..., 0]
    print(json.dumps({"baseline_mb": baseline, "peak_growth_mb": peak - baseline,
                      "seconds": seconds, "shape": list(probabilities.shape),
                      "mask_bytes": len(answer["mask_png_bytes"].numpy()[0]),
                      "mask_ok": bool(np.array_equal(
                          mask, np.where(probabilities[0, ..., 0] > float(threshold), 255, 0)))}))
""")


@pytest.mark.e2e
def test_a_4096_image_round_trip_in_bounded_memory(tiled_dir, tmp_path):
    """A 4096² request through serving_default in a fresh process: answered, the mask matches,
    and the peak resident memory it adds stays far below the ~8.7 GB the whole-image U-Net
    would take at 4096² (the seed's ~520 bytes per pixel). The figures for the seed model are
    in the ServingLimits docstring."""
    (tmp_path / "big.png").write_bytes(_png(mosaic(4096)))
    (tmp_path / "small.png").write_bytes(_png(mosaic(512)[:SIZE, :SIZE]))
    (tmp_path / "measure.py").write_text(MEASURE)
    done = subprocess.run([sys.executable, str(tmp_path / "measure.py"), tiled_dir,
                           str(tmp_path / "big.png"), str(tmp_path / "small.png"), str(THRESHOLD)],
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"4096² in {report['seconds']:.1f} s, peak RSS +{report['peak_growth_mb']:.0f} MB over "
          f"{report['baseline_mb']:.0f} MB; mask PNG {report['mask_bytes']} bytes vs "
          f"{4096 * 4096 * 4} bytes of probabilities")
    assert report["shape"] == [1, 4096, 4096, 1] and report["mask_ok"]
    assert report["peak_growth_mb"] < 2000


# --- warmup -----------------------------------------------------------------------------------

def test_eval_pngs_are_the_ingested_images(eval_examples):
    patterns, pixels = eval_examples
    pngs = warmup.eval_pngs(patterns)
    assert [_decode(p).tolist() for p in pngs] == [p.tolist() for p in pixels]


def test_the_warmup_file_parses_and_replays(tiled_dir, eval_examples):
    """TF Serving reads assets.extra/tf_serving_warmup_requests as PredictionLogs and runs each
    request on load: one per eval image and one of both; each answers for its images."""
    logs = warmup.read_warmup(tiled_dir)
    requests = [log.predict_log.request for log in logs]
    assert [len(tf.make_ndarray(r.inputs["images"])) for r in requests] == [1, 1, 2]
    assert {r.model_spec.signature_name for r in requests} == {"serving_default"}
    sent = [[_decode(bytes(b)) for b in tf.make_ndarray(r.inputs["images"])] for r in requests]
    _, pixels = eval_examples
    np.testing.assert_array_equal(sent[2], pixels)
    for request, answer in zip(requests, warmup.replay(tiled_dir, logs), strict=True):
        count = len(tf.make_ndarray(request.inputs["images"]))
        assert answer[PROBABILITIES].shape == (count, SIZE, SIZE, 1)
        assert [_decode(m).shape for m in answer[MASK_PNG]] == [(SIZE, SIZE)] * count


def test_warmup_requests_the_model_would_refuse_are_left_out_with_a_warning(tmp_path, caplog):
    """TF Serving refuses to load a version whose warmup it refuses, and an export at the end of
    training must not fail on one: each such request is left out, and named in a warning."""
    small = ServingLimits(max_pixels=100 * 100, max_side=150)
    assert warmup.write_warmup(str(tmp_path), [_png(mosaic(512)[:120, :120])], small) is None
    assert not (tmp_path / warmup.WARMUP_FILE).exists()
    assert re.search(r"warmup request 0 image 0: 120x120 .* is 14400 pixels: expected at most "
                     r"10000", caplog.text)
    caplog.clear()
    path = warmup.write_warmup(str(tmp_path), [_png(mosaic(512)[:80, :80])] * 2, small)
    assert [len(tf.make_ndarray(log.predict_log.request.inputs["images"]))
            for log in warmup.read_warmup(str(tmp_path))] == [1, 1]
    assert path.endswith(warmup.WARMUP_FILE)
    assert "warmup request 2: request of 2 images" in caplog.text
    one_per_request = ServingLimits(max_batch=1)
    warmup.write_warmup(str(tmp_path), [_png(mosaic(512)[:64, :64])] * 2, one_per_request)
    assert len(warmup.read_warmup(str(tmp_path))) == 2


# --- serving-config ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tf_serving_protos(tmp_path_factory):
    """TF Serving's BatchingParameters and MonitoringConfig (vendored in tests/protos: the
    tensorflow-serving-api wheel does not ship them), compiled with grpcio-tools' protoc."""
    from grpc_tools import _protoc_compiler  # grpc_tools.protoc needs pkg_resources: not here

    out = tmp_path_factory.mktemp("protos")
    include = Path(importlib.import_module("grpc_tools").__file__).parent / "_proto"
    sources = sorted((ROOT / "tests" / "protos").glob("*.proto"))
    arguments = ["protoc", f"-I{ROOT / 'tests' / 'protos'}", f"-I{include}",
                 f"--python_out={out}", *map(str, sources)]
    assert _protoc_compiler.run_main([a.encode() for a in arguments]) == 0
    sys.path.insert(0, str(out))
    try:
        return (importlib.import_module("batching_parameters_pb2"),
                importlib.import_module("monitoring_config_pb2"))
    finally:
        sys.path.remove(str(out))


def _serving_config(argv: list[str]) -> int:
    return cli.main(["serving-config", *argv])


@pytest.fixture
def serving_dir(tmp_path):
    """A serving base with versions 1 and 2; version 2 was exported with max_batch 8."""
    base = tmp_path / "serving" / "unet_membrane"
    for version in (1, 2):
        (base / str(version) / "assets.extra").mkdir(parents=True)
    limits = dataclasses.replace(ServingLimits(), max_batch=8)
    (base / "2" / "assets.extra" / "serving_limits.json").write_text(
        json.dumps(dataclasses.asdict(limits)))
    return tmp_path / "serving"


def test_serving_config_files_parse_with_tf_servings_protos(serving_dir, tmp_path,
                                                            tf_serving_protos, capsys):
    batching_pb2, monitoring_pb2 = tf_serving_protos
    out = tmp_path / "config"
    assert _serving_config(["--serving-dir", str(serving_dir), "--output", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(deploy.FILES)  # no temporary files

    models = text_format.Parse((out / "models.config").read_text(),
                               model_server_config_pb2.ModelServerConfig())
    (config,) = models.model_config_list.config
    assert config.name == "unet_membrane" and config.model_platform == "tensorflow"
    assert config.base_path == str(serving_dir / "unet_membrane")
    assert config.model_version_policy.latest.num_versions == 1 and not config.version_labels

    batching = text_format.Parse((out / "batching.config").read_text(),
                                 batching_pb2.BatchingParameters())
    assert batching.max_batch_size.value == 8  # the newest version's max_batch
    assert batching.num_batch_threads.value == 2 and batching.batch_timeout_micros.value == 5000
    assert batching.max_enqueued_batches.value == 8
    monitoring = text_format.Parse((out / "monitoring.config").read_text(),
                                   monitoring_pb2.MonitoringConfig())
    assert monitoring.prometheus_config.enable
    assert monitoring.prometheus_config.path == "/monitoring/prometheus/metrics"

    command, docker = [line for line in (out / "command.txt").read_text().splitlines()
                       if not line.startswith("#")][:2]
    words = shlex.split(command)
    assert words[0] == "tensorflow_model_server"
    limits = ServingLimits()
    assert set(words[1:]) >= {
        "--port=8500", "--rest_api_port=8501", f"--model_config_file={out}/models.config",
        "--enable_batching", f"--batching_parameters_file={out}/batching.config",
        f"--monitoring_config_file={out}/monitoring.config", "--rest_api_num_threads=16",
        f"--grpc_channel_arguments=grpc.max_receive_message_length="
        f"{limits.max_request_bytes + 1024 * 1024}"}
    docker_words = shlex.split(docker)
    assert docker_words[:3] == ["docker", "run", "--rm"]
    assert f"{serving_dir / 'unet_membrane'}:{serving_dir / 'unet_membrane'}:ro" in docker_words
    assert docker_words[docker_words.index("--entrypoint") + 1:][2:] == words[1:]
    assert command in (out / "README.md").read_text()
    assert capsys.readouterr().out.splitlines()[-1] == command


def test_version_labels_name_versions_that_are_there(serving_dir, tmp_path, capsys):
    out = tmp_path / "config"
    assert _serving_config(["--serving-dir", str(serving_dir), "--output", str(out),
                            "--stable", "1", "--canary", "2"]) == 0
    text = (out / "models.config").read_text()
    assert "--allow_version_labels_for_unavailable_models" in text
    config = text_format.Parse(text, model_server_config_pb2.ModelServerConfig())
    config = config.model_config_list.config[0]
    assert list(config.model_version_policy.specific.versions) == [1, 2]
    assert dict(config.version_labels) == {"stable": 1, "canary": 2}

    assert _serving_config(["--serving-dir", str(serving_dir), "--output", str(out),
                            "--canary", "3"]) == 2
    assert "--canary 3: no version 3 under" in capsys.readouterr().err
    assert _serving_config(["--serving-dir", str(serving_dir), "--output", str(out),
                            "--stable", "2", "--canary", "3", "--allow-unavailable-labels"]) == 0
    assert "--allow_version_labels_for_unavailable_models" in (out / "command.txt").read_text()
    assert _serving_config(["--serving-dir", str(serving_dir), "--output", str(out),
                            "--stable", "2", "--canary", "2"]) == 2


# --- Kubernetes -------------------------------------------------------------------------------

def _manifests() -> dict:
    """(file, kind) → resource for every document under deploy/kubernetes."""
    resources = {}
    for path in sorted((ROOT / "deploy" / "kubernetes").glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            resources[path.name, document["kind"]] = document
    return resources


def test_kubernetes_manifests_validate_against_the_schemas():
    import kubernetes_validate

    resources = _manifests()
    assert {kind for _, kind in resources} == {"ConfigMap", "Deployment", "Service",
                                               "PersistentVolumeClaim", "PodDisruptionBudget"}
    for (name, kind), resource in resources.items():
        try:  # strict: unknown fields are errors too
            kubernetes_validate.validate(resource, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{name} ({kind}): {error}")


def test_the_manifests_serve_what_serving_config_writes(tmp_path, tf_serving_protos):
    """The ConfigMap holds what `serving-config --model-base-path /models/unet_membrane
    --config-path /config` writes, the Deployments start TF Serving with its flags, probe the
    REST port, and the GPU variant asks for a GPU."""
    files = deploy.write_serving_config(str(tmp_path / "serving"), "unet_membrane",
                                        str(tmp_path / "config"),
                                        model_base_path="/models/unet_membrane",
                                        config_path="/config")
    # Docker mounts this machine's folders where the server reads them.
    docker = files["command.txt"].splitlines()[3]
    assert f"-v {tmp_path / 'serving' / 'unet_membrane'}:/models/unet_membrane:ro" in docker
    assert f"-v {tmp_path / 'config'}:/config:ro" in docker
    resources = _manifests()
    (config_map,) = [r for (_, kind), r in resources.items() if kind == "ConfigMap"]
    for name in ("models.config", "batching.config", "monitoring.config"):
        assert config_map["data"][name] == files[name], name
    flags = deploy.server_flags("/config", ServingLimits())
    deployments = {name: r for (name, kind), r in resources.items() if kind == "Deployment"}
    assert set(deployments) == {"deployment.yaml", "deployment-gpu.yaml"}
    for name, deployment in deployments.items():
        pod = deployment["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert container["command"] == ["tensorflow_model_server"] and container["args"] == flags
        assert {p["containerPort"] for p in container["ports"]} == {8500, 8501}
        for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
            get = container[probe]["httpGet"]
            assert get["port"] == "http" and get["path"].startswith("/v1/models/unet_membrane")
        assert container["resources"]["requests"]["memory"]
        gpus = container["resources"]["limits"].get("nvidia.com/gpu")
        assert (gpus == 1) == (name == "deployment-gpu.yaml"), name
        assert container["image"].startswith(deploy.SERVING_IMAGE)
        mounts = {m["mountPath"] for m in container["volumeMounts"]}
        assert mounts == {"/config", "/models"}
    (service,) = [r for (_, kind), r in resources.items() if kind == "Service"]
    assert {p["port"] for p in service["spec"]["ports"]} == {8500, 8501}
