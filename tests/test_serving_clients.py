"""The serving clients (gRPC `SegmentationClient`, REST `RestSegmentationClient`, in-process
`LocalSegmentationClient`) and `unet-tfx predict`, over real gRPC and HTTP on 127.0.0.1.

TF Serving's binary is not installable here, so the servers are TEST DOUBLES of TF Serving:
`TfServingDouble` implements PredictionService (Predict, GetModelMetadata) and ModelService
(GetModelStatus) with TF Serving's own protos, `TfServingRestDouble` its REST predict, status
and metadata endpoints, both answering with SavedModels the pipeline's export code wrote
(`export_serving_model` on a small U-Net and a real TFTransformOutput) and refusing as TF
Serving does (unknown model or version NOT_FOUND / 404, unknown label INVALID_ARGUMENT / 400,
the graph's refusals with their status). Where `tensorflow_model_server` is on PATH, one test
runs the real server instead.
"""

import base64
import datetime
import functools
import http.server
import io
import ipaddress
import json
import re
import shutil
import socket
import ssl
import subprocess
import threading
import time
from concurrent import futures

import grpc
import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras
from google.protobuf import json_format
from PIL import Image
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from unet_tfx import imaging
from unet_tfx.cli import main
from unet_tfx.config import BUNDLED_DATA, ServingLimits
from unet_tfx.serving import client as client_module
from unet_tfx.serving.client import (
    MASK_PNG_BYTES,
    PROBABILITIES,
    LocalSegmentationClient,
    RetryPolicy,
    SegmentationClient,
    ServingError,
    message_limits,
    plan_calls,
)
from unet_tfx.serving.rest_client import RestSegmentationClient
from unet_tfx.trainer import export
from unet_tfx.trainer.model import build_unet

MODEL = "unet_membrane"
FAST = RetryPolicy(attempts=4, initial_backoff=0.05, max_backoff=0.4, budget=5.0)
# Tiled inference keeps a 4096² request's memory bounded: the served model takes one then.
SERVED_LIMITS = ServingLimits()


# --- images ------------------------------------------------------------------------------------

def _png(height: int, width: int, seed: int = 0, fmt: str = "PNG") -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


@functools.cache
def _membrane(side: int = 512, index: int = 0) -> bytes:
    """A bundled test image, tiled and cropped to side²."""
    grey = np.asarray(Image.open(BUNDLED_DATA / "test" / f"{index}.png").convert("L"))
    reps = -(-side // grey.shape[0])
    buffer = io.BytesIO()
    Image.fromarray(np.tile(grey, (reps, reps))[:side, :side]).save(buffer, format="PNG")
    return buffer.getvalue()


# --- the exported models -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def model_base(transform_output, tmp_path_factory):
    """A TF Serving model base with versions 1 and 2. Version 1: the test profile's U-Net (base
    filters 4, random weights) exported by the pipeline's export code with the default
    ServingLimits but 4096² pixels per request when the export tiles large images
    (`SERVED_LIMITS`), and the shared small Transform graph (conftest). Version 2: the same graph
    with other weights, as a retrain makes it: the output layer's kernel and bias negated, so
    p(cell) becomes 1 - p; written with SaveV2 over a copy, which spares a second export."""
    base = tmp_path_factory.mktemp("serving") / MODEL
    keras.utils.set_random_seed(0)
    export.export_serving_model(build_unet((None, None, 1), base_filters=4), transform_output,
                                str(base / "1"), channels=1, depth=4, limits=SERVED_LIMITS)
    shutil.copytree(base / "1", base / "2")
    reader = tf.train.load_checkpoint(str(base / "1" / "variables" / "variables"))
    names, tensors = [], []
    for name, shape in sorted(reader.get_variable_to_shape_map().items()):
        value = reader.get_tensor(name)
        if shape in ([1], [1, 1, 4, 1]):  # the 1x1 output convolution's bias and kernel
            value = -value
        names.append(name)
        tensors.append(tf.constant(value))
    assert sum(s in ([1], [1, 1, 4, 1]) for s in reader.get_variable_to_shape_map().values()) == 2
    for stale in (base / "2" / "variables").iterdir():
        stale.unlink()
    tf.raw_ops.SaveV2(prefix=str(base / "2" / "variables" / "variables"), tensor_names=names,
                      shape_and_slices=[""] * len(names), tensors=tensors)
    return base


def _outputs_of(saved_model_dir) -> set:
    return set(_signature_defs(str(saved_model_dir))["serving_default"].outputs)


@pytest.fixture(scope="module")
def mask_model_dir(model_base):
    """Version 1, whose serving_default has `mask_png_bytes` beside `probabilities`."""
    assert _outputs_of(model_base / "1") == {PROBABILITIES, MASK_PNG_BYTES}
    return model_base / "1"


@functools.cache
def _signature_defs(saved_model_dir: str) -> dict:
    """The SignatureDefs in saved_model.pb: what TF Serving's GetModelMetadata reports."""
    with open(f"{saved_model_dir}/saved_model.pb", "rb") as f:
        saved_model = saved_model_pb2.SavedModel.FromString(f.read())
    return dict(saved_model.meta_graphs[0].signature_def)


# --- the test doubles of TF Serving ------------------------------------------------------------

class Refusal(Exception):
    """A status TF Serving would answer with: `code` is the gRPC status name."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code, self.message = code, message


def _code_name(number: int) -> str:
    return next(c.name for c in grpc.StatusCode if c.value[0] == number)


class ServedModelsDouble:
    """What a TEST DOUBLE of TF Serving serves: versions of one model (SavedModel folders) and
    version labels, resolved and refused as TF Serving's ServerCore does, plus faults to
    inject: `delay` (seconds each Predict takes first), `faults` (status names the next Predicts
    fail with, in turn), `before_predict(number)` (run at the start of each Predict)."""

    def __init__(self, name: str, versions: dict, labels: dict | None = None):
        self.name, self.labels = name, dict(labels or {})
        self.dirs = {v: str(d) for v, d in versions.items()}
        self.models = {v: tf.saved_model.load(d) for v, d in self.dirs.items()}
        self.delay, self.faults, self.before_predict = 0.0, [], None
        self.predicts = []  # per Predict received: (version, image sizes, outputs asked)
        self.last_outputs = {}  # what the last Predict answered
        self.lock = threading.Lock()

    def resolve(self, name: str, version: int | None, label: str | None) -> int:
        if name != self.name:
            raise Refusal("NOT_FOUND", f"Servable not found for request: Latest({name})")
        if label:
            if label not in self.labels:
                raise Refusal("INVALID_ARGUMENT",
                              f"Unrecognized servable version label: {label}")
            return self.labels[label]
        if version is not None:
            if version not in self.dirs:
                raise Refusal("NOT_FOUND", f"Servable not found for request: "
                              f"Specific({name}, {version})")
            return version
        return max(self.dirs)

    def signature_defs(self, version: int) -> dict:
        return _signature_defs(self.dirs[version])

    def predict(self, name, version, label, signature_name, inputs: dict, output_filter,
                is_active=lambda: True) -> tuple[int, dict]:
        with self.lock:
            number = len(self.predicts) + 1
            self.predicts.append(None)
            fault = self.faults.pop(0) if self.faults else None
        if self.before_predict is not None:
            self.before_predict(number)
        if fault:
            raise Refusal(fault, f"injected {fault}")
        deadline = time.monotonic() + self.delay
        while time.monotonic() < deadline and is_active():
            time.sleep(0.01)
        served = self.resolve(name, version, label)
        signature_name = signature_name or "serving_default"
        definition = self.signature_defs(served).get(signature_name)
        if definition is None:
            raise Refusal("INVALID_ARGUMENT", f'Serving signature name: "{signature_name}" not '
                          "found in signature def")
        if set(inputs) != set(definition.inputs):
            raise Refusal("INVALID_ARGUMENT", f"Expected inputs {sorted(definition.inputs)}, "
                          f"got {sorted(inputs)}")
        for output in output_filter:
            if output not in definition.outputs:
                raise Refusal("INVALID_ARGUMENT",
                              f"output tensor alias not found in signature: {output}")
        wanted = list(output_filter) or list(definition.outputs)
        function = self.models[served].signatures[signature_name]
        sizes = []
        for encoded in inputs.get("images", []):
            try:
                header = imaging.image_header(bytes(encoded))
                sizes.append((header.height, header.width))
            except imaging.ImageRefused:
                sizes.append(None)
        try:
            result = function(**{k: tf.constant(v) for k, v in inputs.items()})
        except tf.errors.OpError as error:
            raise Refusal(_code_name(error.error_code), error.message) from error
        outputs = {k: result[k].numpy() for k in wanted}
        with self.lock:
            self.predicts[number - 1] = (served, sizes, tuple(wanted))
            self.last_outputs = outputs
        return served, outputs


class TfServingDouble(prediction_service_pb2_grpc.PredictionServiceServicer,
                      model_service_pb2_grpc.ModelServiceServicer):
    """A TEST DOUBLE of TF Serving's gRPC API on 127.0.0.1: PredictionService/Predict and
    GetModelMetadata, ModelService/GetModelStatus, with TF Serving's protos, for the models of a
    `ServedModelsDouble`. `server_credentials` serve TLS. `restart(down)` stops it (in-flight
    calls fail UNAVAILABLE, as when TF Serving is killed) and starts it again on the same port
    `down` seconds later."""

    def __init__(self, models: ServedModelsDouble, server_credentials=None):
        self.models, self.credentials = models, server_credentials
        self.server, self.port = None, 0
        self.stopped = threading.Event()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> "TfServingDouble":
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), options=[
            ("grpc.max_send_message_length", 256 << 20),
            ("grpc.max_receive_message_length", 256 << 20)])
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(self, server)
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(self, server)
        where = f"127.0.0.1:{self.port}"
        self.port = (server.add_secure_port(where, self.credentials) if self.credentials
                     else server.add_insecure_port(where))
        server.start()
        self.server = server
        self.stopped.clear()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop(grace=None)
            self.server = None
        self.stopped.set()

    def restart(self, down: float) -> None:
        self.stop()
        time.sleep(down)
        self.start()

    def _abort(self, context, refusal: Refusal):
        context.abort(grpc.StatusCode[refusal.code], refusal.message)

    @staticmethod
    def _spec(spec) -> tuple:
        return (spec.name, spec.version.value if spec.HasField("version") else None,
                spec.version_label or None)

    def Predict(self, request, context):
        inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
        try:
            version, outputs = self.models.predict(
                *self._spec(request.model_spec), request.model_spec.signature_name, inputs,
                list(request.output_filter), context.is_active)
        except Refusal as refusal:
            self._abort(context, refusal)
        response = predict_pb2.PredictResponse()
        response.model_spec.name = request.model_spec.name
        response.model_spec.version.value = version
        response.model_spec.signature_name = request.model_spec.signature_name or \
            "serving_default"
        for key, value in outputs.items():
            response.outputs[key].CopyFrom(tf.make_tensor_proto(value))
        return response

    def GetModelMetadata(self, request, context):
        if list(request.metadata_field) != ["signature_def"]:
            self._abort(context, Refusal("INVALID_ARGUMENT", "Metadata field(s) "
                                         f"{list(request.metadata_field)}: expected signature_def"))
        try:
            version = self.models.resolve(*self._spec(request.model_spec))
        except Refusal as refusal:
            self._abort(context, refusal)
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        for name, definition in self.models.signature_defs(version).items():
            signature_map.signature_def[name].CopyFrom(definition)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = request.model_spec.name
        response.model_spec.version.value = version
        response.metadata["signature_def"].Pack(signature_map)
        return response

    def GetModelStatus(self, request, context):
        name, version, label = self._spec(request.model_spec)
        try:
            served = self.models.resolve(name, version, label)
        except Refusal as refusal:
            self._abort(context, refusal)
        versions = [served] if version or label else sorted(self.models.dirs)
        response = get_model_status_pb2.GetModelStatusResponse()
        for number in versions:
            status = response.model_version_status.add()
            status.version = number
            status.state = get_model_status_pb2.ModelVersionStatus.AVAILABLE
        return response


# TF Serving's HTTP status for each gRPC status (http_server.cc, ToHTTPStatusCode).
HTTP_STATUS = {"INVALID_ARGUMENT": 400, "FAILED_PRECONDITION": 400, "OUT_OF_RANGE": 400,
               "NOT_FOUND": 404, "RESOURCE_EXHAUSTED": 429, "UNAVAILABLE": 503,
               "DEADLINE_EXCEEDED": 504, "UNIMPLEMENTED": 501, "CANCELLED": 499}
REST_PATH = re.compile(r"/v1/models/([^/:]+)(?:/versions/(\d+)|/labels/([^/:]+))?"
                       r"(:predict|/metadata)?", re.IGNORECASE)


def _json_floats(values: np.ndarray) -> str:
    """A float array as TF Serving's JSON writes it: nested lists, up to 9 significant digits
    (float32's round-trip precision)."""
    text = list(map("{:.9g}".format, values.ravel().tolist()))
    for size in reversed(values.shape):
        text = ["[" + ",".join(text[i:i + size]) + "]" for i in range(0, len(text), size)]
    return text[0]


def _json_value(name: str, value) -> str:
    if isinstance(value, np.ndarray) and value.dtype.kind == "f":
        return _json_floats(value)
    if isinstance(value, bytes | np.bytes_):
        if name.endswith("_bytes"):
            return json.dumps({"b64": base64.b64encode(value).decode()})
        return json.dumps(value.decode(errors="replace"))
    return json.dumps(value.tolist() if isinstance(value, np.ndarray) else value)


class TfServingRestDouble:
    """A TEST DOUBLE of TF Serving's REST API on 127.0.0.1, for the models of a
    `ServedModelsDouble`: POST /v1/models/NAME[/versions/N|/labels/L]:predict in the row
    (`instances`) and columnar (`inputs`) forms with base64 `{"b64": ...}` bytes, GET of the
    status and /metadata; errors as {"error": ...} with TF Serving's HTTP statuses.
    `http_errors` are (status, body) answers to send first, in turn, to any request."""

    def __init__(self, models: ServedModelsDouble, tls_context: ssl.SSLContext | None = None):
        self.models, self.tls_context = models, tls_context
        self.http_errors, self.server, self.port = [], None, 0

    @property
    def url(self) -> str:
        return f"{'https' if self.tls_context else 'http'}://127.0.0.1:{self.port}"

    def start(self) -> "TfServingRestDouble":
        double = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                double.answer(self, None)

            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                double.answer(self, self.rfile.read(length))

        server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        if self.tls_context:
            server.socket = self.tls_context.wrap_socket(server.socket, server_side=True)
        self.port = server.server_address[1]
        threading.Thread(target=server.serve_forever, daemon=True).start()
        self.server = server
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def answer(self, handler, body: bytes | None) -> None:
        try:
            if self.http_errors:
                status, text = self.http_errors.pop(0)
            else:
                status, text = 200, self._answer(handler.path, body)
        except Refusal as refusal:
            status = HTTP_STATUS.get(refusal.code, 500)
            text = json.dumps({"error": refusal.message})
        data = text.encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    def _answer(self, path: str, body: bytes | None) -> str:
        match = REST_PATH.fullmatch(path)
        if not match or (body is None) == (match.group(4) == ":predict"):
            raise Refusal("INVALID_ARGUMENT", f"Malformed request: {path}")
        name, version, label, action = match.groups()
        version = int(version) if version else None
        if action == ":predict":
            return self._predict(name, version, label, json.loads(body))
        served = self.models.resolve(name, version, label)
        if action == "/metadata":
            signature_map = get_model_metadata_pb2.SignatureDefMap()
            for key, definition in self.models.signature_defs(served).items():
                signature_map.signature_def[key].CopyFrom(definition)
            return json.dumps({
                "model_spec": {"name": name, "signature_name": "", "version": str(served)},
                "metadata": {"signature_def": json_format.MessageToDict(
                    signature_map, preserving_proto_field_name=True)}})
        versions = [served] if version or label else sorted(self.models.dirs)
        return json.dumps({"model_version_status": [
            {"version": str(v), "state": "AVAILABLE",
             "status": {"error_code": "OK", "error_message": ""}} for v in versions]})

    def _predict(self, name, version, label, request: dict) -> str:
        def decode(value):
            if isinstance(value, dict) and set(value) == {"b64"}:
                return base64.b64decode(value["b64"])
            if isinstance(value, str):
                return value.encode()
            raise Refusal("INVALID_ARGUMENT", f"JSON Value: {str(value)[:80]} is not of "
                          "expected type: DT_STRING")

        row = "instances" in request
        if row == ("inputs" in request):
            raise Refusal("INVALID_ARGUMENT", "Missing 'inputs' or 'instances' key")
        if row:
            values = request["instances"]
            values = [v["images"] if isinstance(v, dict) and "images" in v else v
                      for v in values]
        else:
            values = request["inputs"]
            values = values["images"] if isinstance(values, dict) and "images" in values \
                else values
        images = np.array([decode(v) for v in values], dtype=object)
        _, outputs = self.models.predict(name, version, label,
                                         request.get("signature_name", ""), {"images": images},
                                         [])
        names = sorted(outputs)
        if row:
            items = []
            for i in range(len(images)):
                if len(names) == 1:
                    items.append(_json_value(names[0], outputs[names[0]][i]))
                else:
                    items.append("{" + ",".join(f"{json.dumps(n)}:"
                                                f"{_json_value(n, outputs[n][i])}"
                                                for n in names) + "}")
            return '{"predictions":[' + ",".join(items) + "]}"

        def column(n):
            values = outputs[n]
            if values.dtype.kind == "f":
                return _json_floats(values)
            return "[" + ",".join(_json_value(n, v) for v in values) + "]"

        if len(names) == 1:
            return '{"outputs":' + column(names[0]) + "}"
        return '{"outputs":{' + ",".join(f"{json.dumps(n)}:{column(n)}" for n in names) + "}}"


# --- fixtures: doubles, in-process references, certificates ------------------------------------

@pytest.fixture(scope="module")
def served(model_base):
    return ServedModelsDouble(MODEL, {1: model_base / "1", 2: model_base / "2"},
                              {"stable": 1, "canary": 2})


@pytest.fixture
def models(served):
    """The module's served models, without faults or records left by another test."""
    served.delay, served.faults, served.before_predict = 0.0, [], None
    served.predicts.clear()
    return served


@pytest.fixture
def grpc_double(models):
    double = TfServingDouble(models).start()
    yield double
    double.stop()


@pytest.fixture
def rest_double(models):
    double = TfServingRestDouble(models).start()
    yield double
    double.stop()


@pytest.fixture(scope="module")
def in_process(model_base):
    """Version → the in-process client of that SavedModel: the reference answers."""
    return {v: LocalSegmentationClient(str(model_base / str(v)), model_name=MODEL)
            for v in (1, 2)}


def _expected(in_process, version: int, images, max_batch=None):
    """The in-process answer, in the same calls (batch composition) as the remote client's."""
    local = in_process[version]
    local.max_batch = max_batch
    return local.segment(images, probabilities=True)


def _assert_same(results, expected, probabilities=True):
    assert len(results) == len(expected)
    for got, want in zip(results, expected, strict=True):
        np.testing.assert_array_equal(got.mask, want.mask)
        if probabilities:
            np.testing.assert_allclose(got.probabilities, want.probabilities, atol=1e-6)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def certificates(tmp_path_factory):
    """A self-signed CA made here, a server certificate it signs for 127.0.0.1 and localhost,
    and a client certificate: PEM files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def name(text):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])

    def certificate(subject, key, issuer, issuer_key, ca=False, names=()):
        builder = (x509.CertificateBuilder().subject_name(name(subject)).issuer_name(name(issuer))
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(list(names)),
                                            critical=False)
        return builder.sign(issuer_key, hashes.SHA256())

    folder = tmp_path_factory.mktemp("tls")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    files = {"ca.pem": certificate("unet-tfx test CA", ca_key, "unet-tfx test CA", ca_key,
                                   ca=True)}
    for who, names in (("server", [x509.DNSName("localhost"),
                                   x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                       ("client", [x509.DNSName("unet-tfx-client")])):
        key = ec.generate_private_key(ec.SECP256R1())
        files[f"{who}.pem"] = certificate(who, key, "unet-tfx test CA", ca_key, names=names)
        (folder / f"{who}.key").write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
    for file, cert in files.items():
        (folder / file).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return {path.name: path for path in folder.iterdir()}


def _png_declaring(height: int, width: int) -> bytes:
    """Only a PNG header declaring height x width."""
    import struct
    import zlib

    ihdr = b"IHDR" + struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return imaging.PNG_SIGNATURE + struct.pack(">I", 13) + ihdr + \
        struct.pack(">I", zlib.crc32(ihdr)) + b"\0" * 16


# --- without a server --------------------------------------------------------------------------

def test_output_names_and_message_limits_follow_the_export_and_the_limits():
    assert PROBABILITIES == export.PROBABILITIES
    assert MASK_PNG_BYTES == export.MASK_PNG
    assert client_module.MODEL_THRESHOLD == export.DEFAULT_THRESHOLD
    send, receive = message_limits(ServingLimits())
    assert send >= ServingLimits().max_request_bytes
    assert 4096 * 4096 * 4 < receive < 2 * 4096 * 4096 * 4  # a 4096² float answer, not 4 MiB
    _, receive_2048 = message_limits(ServingLimits(max_pixels=2048 * 2048))
    assert 2048 * 2048 * 4 < receive_2048 < 2 * 2048 * 2048 * 4


def test_retry_policy_backs_off_exponentially_within_bounds():
    policy = RetryPolicy(jitter=0)
    assert [policy.backoff(n) for n in range(1, 8)] == [0.25, 0.5, 1, 2, 4, 5, 5]
    assert all(0.8 * 0.25 <= RetryPolicy().backoff(1) <= 0.25 for _ in range(20))
    with pytest.raises(ValueError, match="attempts"):
        RetryPolicy(attempts=0)


def test_calls_are_planned_by_size_within_the_limits_after_checking_every_header():
    a, b = _png(64, 64), _png(48, 80)
    images = [a, b, a, a, b, a, a]
    calls = plan_calls(images, ServingLimits(), max_batch=4)
    assert [(c.indices, c.height, c.width) for c in calls] == [
        ((0, 2, 3, 5), 64, 64), ((6,), 64, 64), ((1, 4), 48, 80)]
    two_per_call = ServingLimits(max_pixels=2 * 64 * 64, max_side=64)
    assert [c.indices for c in plan_calls([a] * 5, two_per_call)] == [(0, 1), (2, 3), (4,)]
    by_bytes = ServingLimits(max_request_bytes=2 * len(a))
    assert [c.indices for c in plan_calls([a] * 3, by_bytes)] == [(0, 1), (2,)]
    with pytest.raises(ValueError, match="no images to segment: the batch is empty"):
        plan_calls([], ServingLimits())
    with pytest.raises(imaging.ImageRefused,
                       match=r"^notes.txt: not a PNG or JPEG image \(unsupported format"):
        plan_calls([a, b"just some text"], ServingLimits(), names=["a.png", "notes.txt"])
    with pytest.raises(imaging.ImageRefused, match=r"^image 1: 30000x30000 \(height x width\) "
                       r"has a side of 30000 pixels: expected at most 4096"):
        plan_calls([a, _png_declaring(30000, 30000)], ServingLimits())
    with pytest.raises(TypeError, match="image 0: expected the encoded PNG/JPEG bytes, got str"):
        plan_calls(["0.png"], ServingLimits())


# --- gRPC ----------------------------------------------------------------------------------------

def test_grpc_masks_equal_an_in_process_call_with_status_and_metadata(grpc_double, models,
                                                                     in_process):
    with SegmentationClient(grpc_double.address, MODEL, retry=FAST) as client:
        assert [(s.version, s.state, s.error_code) for s in client.status()] == [
            (1, "AVAILABLE", "OK"), (2, "AVAILABLE", "OK")]
        metadata = client.metadata()
        assert metadata.version == 2
        assert metadata.signatures["serving_default"]["inputs"] == {"images": "DT_STRING"}
        assert metadata.signatures["serving_default"]["outputs"][PROBABILITIES] == "DT_FLOAT"
        assert set(metadata.signatures) >= {"serving_examples", "transform_features"}
        images = [_membrane(512, 0), _membrane(512, 1), _png(64, 64), _png(64, 64, seed=3)]
        results = client.segment(images, probabilities=True)
        _assert_same(results, _expected(in_process, 2, images))
        masks_only = client.segment(images[:2])
    assert all(r.probabilities is None for r in masks_only)
    _assert_same(masks_only, results[:2], probabilities=False)
    assert results[0].mask.dtype == np.uint8 and set(np.unique(results[0].mask)) <= {0, 255}
    assert results[0].probabilities.shape == (512, 512, 1)
    assert [p[1] for p in models.predicts] == [[(512, 512)] * 2, [(64, 64)] * 2, [(512, 512)] * 2]


def test_grpc_version_and_label_routing(grpc_double, models, in_process):
    images = [_png(64, 64, seed) for seed in range(3)]
    expected = {v: _expected(in_process, v, images) for v in (1, 2)}
    np.testing.assert_allclose(expected[2][0].probabilities, 1 - expected[1][0].probabilities,
                               atol=1e-6)
    for choice, version in (({}, 2), ({"version": 1}, 1), ({"version": 2}, 2),
                            ({"label": "stable"}, 1), ({"label": "canary"}, 2)):
        models.predicts.clear()
        with SegmentationClient(grpc_double.address, MODEL, retry=FAST, **choice) as client:
            _assert_same(client.segment(images, probabilities=True), expected[version])
            assert client.metadata().version == version
            assert [s.version for s in client.status()] == ([version] if choice else [1, 2])
        assert [p[0] for p in models.predicts] == [version], choice
    for choice, code, message in (
            ({"label": "beta"}, "INVALID_ARGUMENT", "Unrecognized servable version label: beta"),
            ({"version": 7}, "NOT_FOUND", r"Specific\(unet_membrane, 7\)")):
        with SegmentationClient(grpc_double.address, MODEL, retry=FAST, **choice) as client, \
                pytest.raises(ServingError, match=message) as error:
            client.segment(images)
        assert (error.value.code, error.value.attempts) == (code, 1)
    with SegmentationClient(grpc_double.address, "no_such_model", retry=FAST) as client, \
            pytest.raises(ServingError, match=r"NOT_FOUND \(1 attempt in .*Latest\(no_such_model"):
        client.segment(images)
    with pytest.raises(ValueError, match="a model version or a version label, not both"):
        SegmentationClient(grpc_double.address, MODEL, version=1, label="stable")


def test_grpc_bad_input_is_refused_before_sending_and_mixed_sizes_are_split(
        grpc_double, models, in_process):
    client = SegmentationClient(grpc_double.address, MODEL, retry=FAST)
    with pytest.raises(ValueError, match="the batch is empty"):
        client.segment([])
    with pytest.raises(imaging.ImageRefused, match=r"^b\.txt: not a PNG or JPEG image"):
        client.segment([_png(64, 64), b"not an image"], names=["a.png", "b.txt"])
    with pytest.raises(imaging.ImageRefused, match=r"^huge\.png: 30000x30000 .*max_side"):
        client.segment([_png(64, 64), _png_declaring(30000, 30000)], names=["a", "huge.png"])
    assert models.predicts == []  # nothing was sent
    mixed = [_png(64, 64), _png(48, 80), _png(64, 64, 1), _png(32, 32, 2, fmt="JPEG")]
    _assert_same(client.segment(mixed, probabilities=True), _expected(in_process, 2, mixed))
    assert [p[1] for p in models.predicts] == [[(64, 64)] * 2, [(48, 80)], [(32, 32)]]
    # A header that passes but data that does not decode: the server's INVALID_ARGUMENT, once.
    truncated = _png(64, 64)[:60]
    with pytest.raises(ServingError, match=r"INVALID_ARGUMENT \(1 attempt") as error:
        client.segment([truncated])
    assert len(models.predicts) == 4
    print(f"server-side refusal: {error.value}"[:300])
    client.close()


class PredictOnlyDouble(TfServingDouble):
    """A TEST DOUBLE of TF Serving (or of a proxy in front of it) without GetModelMetadata."""

    def GetModelMetadata(self, request, context):
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "Method not implemented!")


def test_grpc_without_the_metadata_api_the_probabilities_are_asked_for(models, in_process):
    double = PredictOnlyDouble(models).start()
    images = [_png(64, 64)]
    try:
        with SegmentationClient(double.address, MODEL, retry=FAST) as client:
            assert client.outputs() == (PROBABILITIES,)
            _assert_same(client.segment(images, probabilities=True),
                         _expected(in_process, 2, images))
            assert client.stats["attempts"] == 1  # UNIMPLEMENTED is not retried
    finally:
        double.stop()
    assert [p[2] for p in models.predicts] == [(PROBABILITIES,)]


def test_grpc_server_restarted_mid_batch_is_retried_and_the_batch_completes(
        grpc_double, models, in_process):
    """The double is stopped while the third of six calls is in flight (that call fails
    UNAVAILABLE, as when TF Serving is killed) and started again on the same port 0.5 s later."""
    def before_predict(number):
        if number == 3:
            threading.Thread(target=grpc_double.restart, args=(0.5,)).start()
            grpc_double.stopped.wait(5)

    models.before_predict = before_predict
    images = [_png(64, 64, seed) for seed in range(6)]
    retry = RetryPolicy(attempts=8, initial_backoff=0.1, max_backoff=0.5, budget=10)
    started = time.monotonic()
    with SegmentationClient(grpc_double.address, MODEL, retry=retry, max_batch=1) as client:
        results = client.segment(images, probabilities=True)
        seconds = time.monotonic() - started
        stats = dict(client.stats)
    _assert_same(results, _expected(in_process, 2, images, max_batch=1))
    print(f"gRPC restart mid-batch: 6 calls, {stats['attempts']} attempts, {seconds:.2f} s")
    assert stats["calls"] == 6 and stats["attempts"] > 6
    assert seconds < 5


def test_grpc_server_gone_fails_clearly_after_the_retry_budget_in_bounded_time():
    address = f"127.0.0.1:{_closed_port()}"
    for retry, attempts in ((FAST, 4),
                            (RetryPolicy(attempts=100, initial_backoff=0.1, max_backoff=0.5,
                                         budget=2.0), None),
                            # The default: no cap on attempts, the budget alone ends the retries.
                            (RetryPolicy(initial_backoff=0.02, max_backoff=0.05, budget=1.0),
                             None)):
        started = time.monotonic()
        with SegmentationClient(address, MODEL, retry=retry) as client, \
                pytest.raises(ServingError, match=rf"^GetModelMetadata on {address} model "
                              r"unet_membrane: UNAVAILABLE \(\d+ attempts in .* s\): failed to "
                              "connect") as error:
            client.segment([_png(64, 64)])
        seconds = time.monotonic() - started
        print(f"gRPC server gone: {error.value.attempts} attempts, {seconds:.2f} s "
              f"(budget {retry.budget} s)")
        assert error.value.code == "UNAVAILABLE"
        if attempts:
            assert error.value.attempts == attempts
        else:
            assert retry.budget / 2 < seconds < retry.budget + 1
            assert error.value.attempts < 100
        if retry.attempts is None:  # more tries than the old cap of 8
            assert error.value.attempts > 8


def test_grpc_retries_only_unavailable_and_resource_exhausted(grpc_double, models):
    with SegmentationClient(grpc_double.address, MODEL, retry=FAST) as client:
        client.outputs()  # discovered before the faults
        models.faults = ["RESOURCE_EXHAUSTED", "UNAVAILABLE"]
        assert client.segment([_png(64, 64)])[0].mask.shape == (64, 64)
        assert client.stats["attempts"] == 3
        for code in ("INVALID_ARGUMENT", "NOT_FOUND", "FAILED_PRECONDITION", "INTERNAL"):
            models.faults = [code]
            with pytest.raises(ServingError, match=f"{code} \\(1 attempt in") as error:
                client.segment([_png(64, 64)])
            assert error.value.attempts == 1
        models.faults = ["RESOURCE_EXHAUSTED"] * 10
        with pytest.raises(ServingError, match=r"RESOURCE_EXHAUSTED \(4 attempts in"):
            client.segment([_png(64, 64)])


def test_grpc_deadline_exceeded_is_surfaced_not_retried(grpc_double, models):
    with SegmentationClient(grpc_double.address, MODEL, retry=FAST, deadline=0.3) as client:
        client.outputs()
        models.delay = 3.0
        started = time.monotonic()
        with pytest.raises(ServingError, match=r"DEADLINE_EXCEEDED \(1 attempt in .*: no answer "
                           r"within the 0.3 s deadline") as error:
            client.segment([_png(64, 64)])
        seconds = time.monotonic() - started
    print(f"gRPC deadline 0.3 s against a server taking 3 s: {error.value.code} after "
          f"{seconds:.2f} s, {error.value.attempts} attempt")
    assert seconds < 1.5


def test_grpc_tls_and_mutual_tls_with_a_self_signed_ca(models, certificates, in_process):
    key, cert, ca = (certificates[n].read_bytes() for n in ("server.key", "server.pem", "ca.pem"))
    images = [_png(64, 64)]
    expected = _expected(in_process, 2, images)
    tls = TfServingDouble(models, grpc.ssl_server_credentials([(key, cert)])).start()
    mutual = TfServingDouble(models, grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=ca, require_client_auth=True)).start()
    client_files = {"tls_cert": certificates["client.pem"], "tls_key": certificates["client.key"]}
    try:
        with SegmentationClient(tls.address, MODEL, tls_ca=certificates["ca.pem"],
                                retry=FAST) as client:
            _assert_same(client.segment(images, probabilities=True), expected)
        with SegmentationClient(mutual.address, MODEL, tls_ca=certificates["ca.pem"],
                                retry=FAST, **client_files) as client:
            _assert_same(client.segment(images, probabilities=True), expected)
        quick = RetryPolicy(attempts=2, initial_backoff=0.05)
        refused = {"plaintext to a TLS server": dict(target=tls.address),
                   "a CA that did not sign it": dict(target=tls.address, tls=True),
                   "no client certificate": dict(target=mutual.address,
                                                 tls_ca=certificates["ca.pem"])}
        for case, options in refused.items():
            with SegmentationClient(model_name=MODEL, retry=quick, **options) as client, \
                    pytest.raises(ServingError, match="UNAVAILABLE") as error:
                client.segment(images)
            print(f"gRPC TLS, {case}: {str(error.value)[:200]}")
    finally:
        tls.stop()
        mutual.stop()
    with pytest.raises(ValueError, match="both a client certificate and its key"):
        SegmentationClient(tls.address, MODEL, tls_cert=certificates["client.pem"])


@pytest.mark.e2e
def test_grpc_2048_round_trip(grpc_double, in_process):
    """A 2048² answer is 16 MiB of floats, beyond gRPC's default 4 MiB message limit."""
    image = [_membrane(2048)]
    with SegmentationClient(grpc_double.address, MODEL, retry=FAST) as client:
        started = time.monotonic()
        result = client.segment(image, probabilities=True)
        seconds = time.monotonic() - started
        received = client.stats["response_bytes"]
    _assert_same(result, _expected(in_process, 2, image))
    print(f"2048² over gRPC: {seconds:.2f} s, {received / 2**20:.1f} MiB answer")
    assert received > 4 << 20


@pytest.mark.e2e
def test_grpc_4096_round_trip(grpc_double, models):
    """With tiling, a 4096² image: the client told the model's limits, the PNG mask back, equal
    to what the server computed (the in-process equality is shown up to 2048²)."""
    image = [_membrane(4096)]
    with SegmentationClient(grpc_double.address, MODEL, retry=FAST, deadline=600,
                            limits=SERVED_LIMITS) as client:
        started = time.monotonic()
        result = client.segment(image)
        seconds = time.monotonic() - started
        received = client.stats["response_bytes"]
    smaller = ServingLimits(max_pixels=2048 * 2048)  # a model exported with a lower limit
    with pytest.raises(imaging.ImageRefused, match="4096x4096 .* expected at most 4194304"):
        SegmentationClient(grpc_double.address, MODEL, limits=smaller).segment(image)
    print(f"4096² over gRPC: {seconds:.2f} s, {received / 1024:.0f} KiB answer (PNG mask)")
    assert result[0].mask.shape == (4096, 4096)
    sent = models.last_outputs
    np.testing.assert_array_equal(result[0].mask,
                                  np.asarray(Image.open(io.BytesIO(sent[MASK_PNG_BYTES][0]))))


# --- the compact mask output ---------------------------------------------------------------------

def test_the_mask_travels_as_a_png_when_the_signature_has_one(mask_model_dir, grpc_double,
                                                              rest_double, models, in_process):
    """Discovered from the model's metadata: over gRPC the client asks (output_filter) for the
    PNG mask only, and for the float probabilities only when they are wanted; over REST, which
    answers every output, it calls the mask-only signature when only masks are wanted."""
    image = [_membrane(512)]
    expected = _expected(in_process, 1, image)
    sizes = {}

    def answer_size(client, wanted):
        before = client.stats["response_bytes"]
        _assert_same(client.segment(image, probabilities=wanted), expected, probabilities=wanted)
        return client.stats["response_bytes"] - before

    with SegmentationClient(grpc_double.address, MODEL, version=1, retry=FAST) as client:
        assert set(client.outputs()) >= {MASK_PNG_BYTES, PROBABILITIES}
        for wanted in (False, True):
            sizes[f"gRPC, probabilities={wanted}"] = answer_size(client, wanted)
        assert [p[2] for p in models.predicts] == [(MASK_PNG_BYTES,),
                                                   (MASK_PNG_BYTES, PROBABILITIES)]
        models.predicts.clear()
        lower = client.segment(image, threshold=0.3)[0].mask  # thresholded here
        assert [p[2] for p in models.predicts] == [(PROBABILITIES,)]
        np.testing.assert_array_equal(
            lower, np.where(expected[0].probabilities[..., 0] > 0.3, 255, 0))
    models.predicts.clear()
    with RestSegmentationClient(rest_double.url, MODEL, version=1, retry=FAST) as client:
        for wanted in (False, True):
            sizes[f"REST, probabilities={wanted}"] = answer_size(client, wanted)
    masks_only, both = (set(p[2]) for p in models.predicts)
    assert masks_only == {MASK_PNG_BYTES} and both >= {MASK_PNG_BYTES, PROBABILITIES}
    print("512² answer sizes: " + ", ".join(f"{k} {v / 1024:.1f} KiB" for k, v in sizes.items()))
    assert sizes["gRPC, probabilities=False"] < sizes["gRPC, probabilities=True"] / 10
    assert sizes["REST, probabilities=False"] < sizes["REST, probabilities=True"] / 10


# --- REST ----------------------------------------------------------------------------------------

def test_rest_client_against_the_http_double(rest_double, models, in_process):
    images = [_png(64, 64), _png(64, 64, 2), _png(48, 80, 1, fmt="JPEG")]
    expected = {v: _expected(in_process, v, images) for v in (1, 2)}
    for choice, version in (({}, 2), ({"label": "stable"}, 1), ({"label": "canary"}, 2),
                            ({"version": 1}, 1), ({"columnar": True, "label": "stable"}, 1)):
        models.predicts.clear()
        with RestSegmentationClient(rest_double.url, MODEL, retry=FAST, **choice) as client:
            results = client.segment(images, probabilities=True)
            assert client.metadata().version == version
            assert [s.version for s in client.status()] == (
                [version] if "label" in choice or "version" in choice else [1, 2])
        _assert_same(results, expected[version])
        assert [p[0] for p in models.predicts] == [version] * 2, choice
    client = RestSegmentationClient(rest_double.url, MODEL, retry=FAST)
    client.outputs()
    # 503 and 429 are retried; 400 and 404 are not.
    rest_double.http_errors = [(503, '{"error": "loading"}'), (429, '{"error": "queue full"}')]
    _assert_same(client.segment(images[2:], probabilities=True), expected[2][2:])
    assert client.stats["attempts"] == 3
    for status, code in ((400, "INVALID_ARGUMENT"), (404, "NOT_FOUND")):
        rest_double.http_errors = [(status, '{"error": "no"}')]
        with pytest.raises(ServingError, match=rf"{code} \(1 attempt in .* s\): HTTP {status}: "
                           "no$"):
            client.segment(images[1:2])
    with RestSegmentationClient(rest_double.url, MODEL, label="beta", retry=FAST) as labelled, \
            pytest.raises(ServingError, match=r"INVALID_ARGUMENT \(1 attempt.*HTTP 400: "
                          "Unrecognized servable version label: beta"):
        labelled.segment(images[1:2])
    # A decoder's refusal, from the graph, as TF Serving's 400.
    with pytest.raises(ServingError, match=r"INVALID_ARGUMENT \(1 attempt.*HTTP 400"):
        client.segment([_png(64, 64)[:60]])
    with pytest.raises(imaging.ImageRefused, match="image 0: not a PNG or JPEG"):
        client.segment([b"GIF89a"])
    with pytest.raises(ValueError, match="empty"):
        client.segment([])


def test_rest_faults_restart_gone_and_deadline(rest_double, models, in_process):
    images = [_png(64, 64, seed) for seed in range(4)]
    expected = _expected(in_process, 2, images, max_batch=1)

    def restart_after_the_second_call(call):
        if call.indices == (1,):
            rest_double.stop()
            threading.Timer(0.5, rest_double.start).start()

    retry = RetryPolicy(attempts=8, initial_backoff=0.1, max_backoff=0.5, budget=10)
    started = time.monotonic()
    with RestSegmentationClient(rest_double.url, MODEL, retry=retry, max_batch=1) as client:
        results = client.segment(images, probabilities=True, on_call=restart_after_the_second_call)
        print(f"REST restart mid-batch: 4 calls, {client.stats['attempts']} attempts, "
              f"{time.monotonic() - started:.2f} s")
        assert client.stats["attempts"] > 4
    _assert_same(results, expected)

    gone = f"http://127.0.0.1:{_closed_port()}"
    started = time.monotonic()
    with RestSegmentationClient(gone, MODEL, retry=FAST) as client, \
            pytest.raises(ServingError, match=r"UNAVAILABLE \(4 attempts in .* s\): cannot "
                          "connect: .*Connection refused"):
        client.segment(images)
    print(f"REST server gone: 4 attempts, {time.monotonic() - started:.2f} s")
    assert time.monotonic() - started < FAST.budget + 1

    with RestSegmentationClient(rest_double.url, MODEL, retry=FAST, deadline=0.3) as client:
        client.outputs()
        models.delay = 2.0
        started = time.monotonic()
        with pytest.raises(ServingError, match=r"DEADLINE_EXCEEDED \(1 attempt in .*0.3 s "
                           "deadline"):
            client.segment(images[:1])
        print(f"REST deadline 0.3 s: {time.monotonic() - started:.2f} s")
        assert time.monotonic() - started < 1.5


def test_rest_over_tls_and_mutual_tls(models, certificates, in_process):
    def context(mutual: bool) -> ssl.SSLContext:
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(certificates["server.pem"], certificates["server.key"])
        if mutual:
            tls.verify_mode = ssl.CERT_REQUIRED
            tls.load_verify_locations(certificates["ca.pem"])
        return tls

    images = [_png(64, 64)]
    expected = _expected(in_process, 2, images)
    servers = [TfServingRestDouble(models, context(m)).start() for m in (False, True)]
    try:
        with RestSegmentationClient(servers[0].url, MODEL, tls_ca=certificates["ca.pem"],
                                    retry=FAST) as client:
            _assert_same(client.segment(images, probabilities=True), expected)
        with RestSegmentationClient(servers[1].url, MODEL, tls_ca=certificates["ca.pem"],
                                    tls_cert=certificates["client.pem"],
                                    tls_key=certificates["client.key"], retry=FAST) as client:
            _assert_same(client.segment(images, probabilities=True), expected)
        for url, options in ((servers[0].url, {}),
                             (servers[1].url, {"tls_ca": certificates["ca.pem"]})):
            with RestSegmentationClient(url, MODEL, retry=FAST, **options) as client, \
                    pytest.raises(ServingError) as error:
                client.segment(images)
            print(f"REST TLS refused: {str(error.value)[:200]}")
    finally:
        for server in servers:
            server.stop()


# --- unet-tfx predict -------------------------------------------------------------------------

@pytest.fixture
def image_tree(tmp_path):
    """in/a/0.png (512²), in/a/b/1.jpg (64x96), in/2.PNG, in/notes.txt; and x.png beside."""
    folder = tmp_path / "in"
    (folder / "a" / "b").mkdir(parents=True)
    (folder / "a" / "0.png").write_bytes(_membrane(512))
    (folder / "a" / "b" / "1.jpg").write_bytes(_png(64, 96, 1, fmt="JPEG"))
    (folder / "2.PNG").write_bytes(_png(64, 64, 2))
    (folder / "notes.txt").write_text("not an image, not picked up from a folder")
    (tmp_path / "x.png").write_bytes(_png(64, 64, 3))
    # The order `predict` reads them in: each folder's files found recursively and sorted.
    inputs = {"2": folder / "2.PNG", "a/0": folder / "a" / "0.png",
              "a/b/1": folder / "a" / "b" / "1.jpg", "x": tmp_path / "x.png"}
    return folder, tmp_path / "x.png", inputs


def _check_outputs(output, inputs, in_process, version, overlays=True):
    for stem, path in inputs.items():
        mask = np.asarray(Image.open(output / f"{stem}_mask.png"))
        expected = in_process[version].segment([path.read_bytes()])[0].mask
        assert (mask != expected).mean() < 1e-3, stem  # batch composition may differ
        assert (output / f"{stem}_overlay.png").exists() == overlays
    assert not list(output.rglob("*.tmp"))


@pytest.mark.e2e
def test_predict_command_over_grpc_rest_and_in_process(grpc_double, rest_double, model_base,
                                                       image_tree, in_process, tmp_path, caplog):
    folder, single, inputs = image_tree
    caplog.set_level("INFO", logger="unet_tfx.serving")
    out = tmp_path / "grpc"
    assert main(["predict", str(folder), str(single), "--server", grpc_double.address,
                 "--output", str(out), "--progress-every", "2"]) == 0
    _check_outputs(out, inputs, in_process, 2)
    assert Image.open(out / "predictions.png").size == (3 * 256, 4 * 256)
    progress = [r.getMessage() for r in caplog.records if "img/s" in r.getMessage()]
    assert [line.split()[0] for line in progress] == ["2/4", "4/4"], progress
    assert "ETA" in progress[0]

    out = tmp_path / "rest"
    assert main(["predict", str(folder), str(single), "--rest", rest_double.url, "--label",
                 "stable", "--masks-only", "--output", str(out)]) == 0
    _check_outputs(out, inputs, in_process, 1, overlays=False)

    out = tmp_path / "local"
    assert main(["predict", str(folder), str(single), "--model-dir", str(model_base),
                 "--output", str(out)]) == 0
    _check_outputs(out, inputs, in_process, 2)


def test_predict_command_refuses_clearly(tmp_path, capsys, image_tree, monkeypatch):
    folder, single, _ = image_tree
    (tmp_path / "empty").mkdir()
    cases = [
        (["predict", str(tmp_path / "empty"), "--server", "127.0.0.1:1"], 2,
         f"error: {tmp_path / 'empty'}: no PNG or JPEG files in this folder"),
        (["predict", str(tmp_path / "missing.png"), "--server", "127.0.0.1:1"], 2,
         f"error: {tmp_path / 'missing.png'}: no such file or folder"),
        (["predict", str(folder / "notes.txt"), "--server", "127.0.0.1:1"], 2,
         f"error: {folder / 'notes.txt'}: not a PNG or JPEG image"),
        (["predict", str(single), str(tmp_path / "in" / ".." / "x.png"), "--server",
          "127.0.0.1:1"], 2, "error: x_mask.png would be written for both"),
        (["predict", str(single), "--model-dir", str(tmp_path), "--tls-ca", "ca.pem"], 2,
         "error: --tls-ca, --tls-cert and --tls-key are for --server or --rest"),
        (["predict", str(single), "--model-dir", str(tmp_path / "empty")], 2,
         f"error: {tmp_path / 'empty'}: no numeric version folders"),
    ]
    for argv, code, message in cases:
        assert main(argv) == code, argv
        assert capsys.readouterr().err.strip().splitlines()[-1].startswith(message), argv
    # The server gone: a clear error after the retry budget, in bounded time.
    started = time.monotonic()
    assert main(["predict", str(single), "--server", f"127.0.0.1:{_closed_port()}",
                 "--retry-budget", "1", "--output", str(tmp_path / "out")]) == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert re.match(r"error: GetModelMetadata on 127.0.0.1:\d+ model unet_membrane: UNAVAILABLE "
                    r"\(\d+ attempts in \d\.\d\d s\): failed to connect", error), error
    assert time.monotonic() - started < 3


# --- the real TF Serving, where it is installed ---------------------------------------------------

@pytest.mark.e2e
@pytest.mark.skipif(shutil.which("tensorflow_model_server") is None,
                    reason="tensorflow_model_server is not on PATH (TF Serving's binary is not "
                    "installable here); the test doubles stand in for it")
def test_against_the_real_tensorflow_model_server(model_base, in_process, tmp_path):
    grpc_port, rest_port = _closed_port(), _closed_port()
    config = tmp_path / "models.config"
    config.write_text(f"""model_config_list {{ config {{
  name: "{MODEL}" base_path: "{model_base}" model_platform: "tensorflow"
  model_version_policy {{ all {{}} }}
  version_labels {{ key: "stable" value: 1 }} version_labels {{ key: "canary" value: 2 }}
}} }}
""")
    server = subprocess.Popen(["tensorflow_model_server", f"--port={grpc_port}",
                               f"--rest_api_port={rest_port}", f"--model_config_file={config}"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    images = [_membrane(512), _png(64, 64)]
    try:
        waiting = RetryPolicy(attempts=60, initial_backoff=0.5, max_backoff=1, budget=60)
        with SegmentationClient(f"127.0.0.1:{grpc_port}", MODEL, retry=waiting) as client:
            deadline = time.monotonic() + 60
            while not all(s.state == "AVAILABLE" for s in client.status()) or \
                    len(client.status()) < 2:
                assert time.monotonic() < deadline, "the model did not load within 60 s"
                time.sleep(0.5)
        for label, version in (("stable", 1), ("canary", 2)):
            expected = _expected(in_process, version, images)
            with SegmentationClient(f"127.0.0.1:{grpc_port}", MODEL, label=label) as client:
                _assert_same(client.segment(images, probabilities=True), expected)
            with RestSegmentationClient(f"http://127.0.0.1:{rest_port}", MODEL,
                                        label=label) as client:
                _assert_same(client.segment(images, probabilities=True), expected)
    finally:
        server.terminate()
        server.wait(30)


# --- latency -------------------------------------------------------------------------------------

@pytest.mark.e2e
def test_latency_per_512_image_in_process_grpc_and_rest(grpc_double, rest_double, in_process):
    image, repeats = [_membrane(512)], 3
    clients = {"in-process": in_process[2],
               "gRPC": SegmentationClient(grpc_double.address, MODEL),
               "REST": RestSegmentationClient(rest_double.url, MODEL)}
    timings = {}
    for wanted in (True, False):
        for name, client in clients.items():
            client.segment(image, probabilities=wanted)  # warm: discovery, first call
            before = client.stats["response_bytes"]
            seconds = []
            for _ in range(repeats):
                started = time.perf_counter()
                client.segment(image, probabilities=wanted)
                seconds.append(time.perf_counter() - started)
            timings[name, wanted] = float(np.median(seconds))
            size = (client.stats["response_bytes"] - before) / repeats
            print(f"{name}, probabilities={wanted}: {timings[name, wanted] * 1000:.1f} ms per "
                  f"512² image (median of {repeats}), answer {size / 1024:.1f} KiB")
    for client in clients.values():
        client.close()
    assert timings["gRPC", True] < timings["in-process", True] + 0.25
