"""Clients of the served U-Net: segment PNG/JPEG images on TF Serving over gRPC
(`SegmentationClient`), over REST (`unet_tfx.serving.rest_client.RestSegmentationClient`), or
in-process from a SavedModel (`LocalSegmentationClient`), with one interface and one behaviour:

- Every image is checked from its header against `ServingLimits` (`unet_tfx.imaging`, the rules
  the exported signature applies) before anything is sent; a refusal names the image.
- Images are grouped by size (one request holds one size) and each group is cut into calls
  within the limits' max_batch, max_pixels and max_request_bytes; results come back in the
  caller's order, one `Segmentation` per image.
- A call is retried on UNAVAILABLE and RESOURCE_EXHAUSTED (REST: 503, 429, a refused or dropped
  connection) with exponential backoff, within `RetryPolicy`'s attempts and time budget. Every
  other status (INVALID_ARGUMENT, NOT_FOUND, DEADLINE_EXCEEDED, ...) raises `ServingError` at once.
- The signature's outputs are discovered once from the model's metadata (GetModelMetadata): when
  it has `mask_png_bytes` the mask travels as a PNG (kilobytes where the float map of a 512²
  image is 1 MiB) and the float probabilities only when asked for; otherwise the mask is the
  probabilities above 0.5 (the models' default threshold), computed here.

grpc is imported here; TF Serving's protos, which import TensorFlow (~9 s), only when a
`SegmentationClient` is made, so the REST client runs without TensorFlow.
"""

import dataclasses
import functools
import io
import itertools
import logging
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import grpc
import numpy as np

from unet_tfx.config import ServingLimits, TrainingConfig
from unet_tfx.imaging import check_encoded_image

log = logging.getLogger("unet_tfx.serving")

IMAGES = "images"  # serving_default's input: encoded PNG/JPEG bytes [batch]
PROBABILITIES = "probabilities"  # float32 [batch, H, W, 1], p(cell); = trainer.export.PROBABILITIES
MASK_PNG_BYTES = "mask_png_bytes"  # string [batch]: PNG of the binary mask, 0 membrane / 255 cell
DEFAULT_SIGNATURE = "serving_default"
# A signature without a mask output: the mask is p(cell) > the models' default threshold, 0.5.
MODEL_THRESHOLD = TrainingConfig.mask_threshold
RETRYABLE = frozenset({"UNAVAILABLE", "RESOURCE_EXHAUSTED"})
MIB = 1 << 20


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """Retries of one call on RETRYABLE statuses: none starting later than `budget` seconds
    after the first try began, and (when `attempts` is set) at most `attempts` tries, the first
    included; the wait before retry n (from 1) is min(max_backoff, initial_backoff *
    multiplier**(n-1)), shortened by up to `jitter` of itself at random so that clients
    retrying together spread out. A call therefore ends within budget + deadline seconds. The
    defaults wait 0.25, 0.5, 1, 2, 4, then every 5 s for up to 30 s: long enough for a TF
    Serving restart that reloads and warms up the model."""

    attempts: int | None = None
    initial_backoff: float = 0.25
    multiplier: float = 2.0
    max_backoff: float = 5.0
    budget: float = 30.0
    jitter: float = 0.2

    def __post_init__(self):
        if self.attempts is not None and self.attempts < 1:
            raise ValueError(f"RetryPolicy.attempts must be at least 1; got {self.attempts}")
        if min(self.initial_backoff, self.max_backoff, self.budget) < 0 or self.multiplier < 1 \
                or not 0 <= self.jitter < 1:
            raise ValueError(f"RetryPolicy: negative time, multiplier < 1 or jitter outside "
                             f"[0, 1): {self}")

    def backoff(self, retry: int) -> float:
        """Seconds to wait before retry number `retry` (1 for the first retry)."""
        delay = min(self.max_backoff, self.initial_backoff * self.multiplier ** (retry - 1))
        return delay * (1 - self.jitter * random.random())


class ServingError(RuntimeError):
    """A call the server refused or did not answer. `code` is the gRPC status name; REST
    statuses are mapped to it as TF Serving maps them (400 INVALID_ARGUMENT, 404 NOT_FOUND,
    429 RESOURCE_EXHAUSTED, 503 UNAVAILABLE, 504 DEADLINE_EXCEEDED, ...). `attempts` and
    `seconds` are what the call cost, retries included."""

    def __init__(self, code: str, details: str, *, where: str = "", attempts: int = 1,
                 seconds: float = 0.0):
        self.code, self.details, self.where = code, details, where
        self.attempts, self.seconds = attempts, seconds
        tries = f"{attempts} attempt{'s' if attempts > 1 else ''} in {seconds:.2f} s"
        super().__init__(f"{where}: {code} ({tries}): {details}" if where else
                         f"{code} ({tries}): {details}")

    def after(self, attempts: int, seconds: float, where: str) -> "ServingError":
        return ServingError(self.code, self.details, where=where, attempts=attempts,
                            seconds=seconds)


@dataclasses.dataclass
class Segmentation:
    """One image's answer."""

    mask: np.ndarray  # uint8 [H, W]: 0 membrane, 255 cell (the labels' convention)
    probabilities: np.ndarray | None = None  # float32 [H, W, 1], p(cell); when asked for


@dataclasses.dataclass(frozen=True)
class Call:
    """The images of one request: positions in the caller's list, all of one size."""

    indices: tuple[int, ...]
    height: int
    width: int


@dataclasses.dataclass(frozen=True)
class VersionStatus:
    """One version's state as ModelService/GetModelStatus reports it."""

    version: int
    state: str  # START, LOADING, AVAILABLE, UNLOADING, END
    error_code: str = "OK"
    error_message: str = ""


@dataclasses.dataclass(frozen=True)
class ModelMetadata:
    """GetModelMetadata's answer: the version that answered and each signature's inputs and
    outputs, name → dtype ("DT_STRING", "DT_FLOAT", ...)."""

    version: int
    signatures: dict  # name → {"inputs": {name: dtype}, "outputs": {name: dtype}}


def plan_calls(images: Sequence[bytes], limits: ServingLimits,
               names: Sequence[str] | None = None, max_batch: int | None = None) -> list[Call]:
    """The calls that segment `images`: each image checked from its header against `limits`
    (ImageRefused naming it otherwise, before anything is sent), grouped by size in order of
    first appearance, each group cut into calls of at most `max_batch` (and the limits'
    max_batch) images, max_pixels pixels and max_request_bytes bytes."""
    if len(images) == 0:
        raise ValueError("no images to segment: the batch is empty")
    names = list(names) if names is not None else [f"image {i}" for i in range(len(images))]
    if len(names) != len(images):
        raise ValueError(f"{len(names)} names for {len(images)} images")
    groups: dict[tuple[int, int], list[int]] = {}
    for index, data in enumerate(images):
        if not isinstance(data, bytes | bytearray | memoryview):
            raise TypeError(f"{names[index]}: expected the encoded PNG/JPEG bytes, got "
                            f"{type(data).__name__}")
        header = check_encoded_image(bytes(data), limits, names[index])
        groups.setdefault((header.height, header.width), []).append(index)
    per_call = min(max_batch or limits.max_batch, limits.max_batch)
    calls = []
    for (height, width), indices in groups.items():
        current, size = [], 0
        for index in indices:
            full = (len(current) == per_call
                    or (len(current) + 1) * height * width > limits.max_pixels
                    or size + len(images[index]) > limits.max_request_bytes)
            if current and full:
                calls.append(Call(tuple(current), height, width))
                current, size = [], 0
            current.append(index)
            size += len(images[index])
        calls.append(Call(tuple(current), height, width))
    return calls


def message_limits(limits: ServingLimits) -> tuple[int, int]:
    """(send, receive) bytes of the largest gRPC messages a client of a model with `limits`
    exchanges: a request's encoded images (max_request_bytes), and an answer's float
    probabilities (4 bytes per pixel, max_pixels per request) with PNG masks (at most a byte
    per pixel and per row, plus framing, per image); 1 MiB each for the proto's own framing."""
    send = limits.max_request_bytes + MIB
    receive = 5 * limits.max_pixels + limits.max_batch * (limits.max_side + 4096) + MIB
    return send, receive


def decode_mask_png(data: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)).convert("L"))


def _read(credential) -> bytes | None:
    """PEM bytes as given, or read from a path."""
    if credential is None or isinstance(credential, bytes):
        return credential
    return Path(credential).read_bytes()


class BaseSegmentationClient:
    """What every transport shares: planning, retries, output discovery, masks. A transport
    implements `_predict`, `_metadata` and `_status`, raising ServingError."""

    def __init__(self, model_name: str = "unet_membrane", *, version: int | None = None,
                 label: str | None = None, signature: str = DEFAULT_SIGNATURE,
                 deadline: float = 60.0, retry: RetryPolicy = RetryPolicy(),
                 limits: ServingLimits | None = None, max_batch: int | None = None):
        if version is not None and label is not None:
            raise ValueError("choose a model version or a version label, not both")
        if deadline <= 0:
            raise ValueError(f"the deadline must be positive; got {deadline}")
        self.model_name, self.version, self.label = model_name, version, label
        self.signature, self.deadline, self.retry = signature, deadline, retry
        self.limits = limits or ServingLimits()
        self.max_batch = max_batch
        self.stats = {"calls": 0, "attempts": 0, "response_bytes": 0}
        self._signatures: dict | None = None  # from the model's metadata, asked once

    # --- what a transport provides -------------------------------------------------------------

    target = ""

    def _predict(self, images: list[bytes], outputs: tuple[str, ...], signature: str) -> dict:
        """{output: [batch] values} of `signature` for `images`: probabilities as float32
        [batch, H, W, 1], mask PNGs as a list of bytes. One attempt, ServingError on failure."""
        raise NotImplementedError

    def _metadata(self) -> ModelMetadata:
        raise NotImplementedError

    def _status(self) -> list[VersionStatus]:
        raise NotImplementedError

    # --- the interface ---------------------------------------------------------------------------

    def describe(self) -> str:
        which = (f" version {self.version}" if self.version is not None else
                 f" label {self.label}" if self.label is not None else "")
        return f"{self.target} model {self.model_name}{which}".strip()

    def status(self) -> list[VersionStatus]:
        """The state of the model's versions (of the chosen version or label only, if any)."""
        return self._retrying("GetModelStatus", self._status)

    def metadata(self) -> ModelMetadata:
        """The signatures of the version that answers (the chosen one, else the latest)."""
        return self._retrying("GetModelMetadata", self._metadata)

    def signatures(self) -> dict:
        """The model's signatures (name → {"inputs": ..., "outputs": ...}), from its metadata,
        asked once. A server without the metadata API (UNIMPLEMENTED) is assumed to have the
        `serving_default` contract before `mask_png_bytes`: images → probabilities."""
        if self._signatures is None:
            try:
                signatures = self.metadata().signatures
            except ServingError as error:
                if error.code != "UNIMPLEMENTED":
                    raise
                log.info("%s: no model metadata (%s); assuming %s only", self.describe(),
                         error.details, PROBABILITIES)
                signatures = {self.signature: {"inputs": {IMAGES: "DT_STRING"},
                                               "outputs": {PROBABILITIES: "DT_FLOAT"}}}
            if self.signature not in signatures:
                raise ValueError(f"{self.describe()} has no signature {self.signature!r}; it has "
                                 f"{', '.join(sorted(signatures)) or 'none'}")
            inputs, outputs = (signatures[self.signature][k] for k in ("inputs", "outputs"))
            if list(inputs) != [IMAGES] or not {PROBABILITIES, MASK_PNG_BYTES} & set(outputs):
                raise ValueError(
                    f"{self.describe()} signature {self.signature!r} takes {sorted(inputs)} and "
                    f"gives {sorted(outputs)}: expected {IMAGES!r} → {PROBABILITIES!r} and/or "
                    f"{MASK_PNG_BYTES!r} (the serving contract in the README)")
            self._signatures = signatures
        return self._signatures

    def outputs(self) -> tuple[str, ...]:
        """The outputs of the client's signature."""
        return tuple(sorted(self.signatures()[self.signature]["outputs"]))

    def _signature_for(self, wanted: tuple[str, ...]) -> str:
        """The signature a call asking for `wanted` goes to: the client's own (gRPC filters
        its outputs); the REST client overrides this."""
        return self.signature

    def segment(self, images: Sequence[bytes], *, probabilities: bool = False,
                names: Sequence[str] | None = None, threshold: float | None = None,
                on_call: Callable[[Call], None] | None = None) -> list[Segmentation]:
        """One Segmentation per encoded PNG/JPEG image, in order. `probabilities=True` also
        returns p(cell). `threshold=None` keeps the model's mask (the server's PNG when the
        signature has one, else p > MODEL_THRESHOLD); a number thresholds the probabilities
        here. `names` name the images in errors (default "image <i>"); `on_call(call)` runs
        after each call."""
        calls = plan_calls(images, self.limits, names, self.max_batch)
        available = self.outputs()
        server_mask = MASK_PNG_BYTES in available and threshold is None
        wanted = ((MASK_PNG_BYTES,) if server_mask else ()) + \
            ((PROBABILITIES,) if probabilities or not server_mask else ())
        if PROBABILITIES in wanted and PROBABILITIES not in available:
            raise ValueError(f"{self.describe()} signature {self.signature!r} gives no "
                             f"{PROBABILITIES!r} (only {', '.join(available)})")
        signature = self._signature_for(wanted)
        results: list[Segmentation | None] = [None] * len(images)
        for call in calls:
            batch = [bytes(images[i]) for i in call.indices]
            answer = self._retrying("Predict", self._predict, batch, wanted, signature)
            for position, index in enumerate(call.indices):
                p = answer[PROBABILITIES][position] if PROBABILITIES in answer else None
                if server_mask:
                    mask = decode_mask_png(answer[MASK_PNG_BYTES][position])
                elif p.shape[-1] > 1:  # K classes: each pixel's most probable class
                    mask = np.argmax(p, axis=-1).astype(np.uint8)
                else:
                    mask = np.where(p[..., 0] > (threshold if threshold is not None
                                                 else MODEL_THRESHOLD), 255, 0).astype(np.uint8)
                if mask.shape != (call.height, call.width):
                    raise ServingError("INTERNAL", f"a {mask.shape[0]}x{mask.shape[1]} mask for a "
                                       f"{call.height}x{call.width} image", where=self.describe())
                results[index] = Segmentation(mask, p if probabilities else None)
            if on_call is not None:
                on_call(call)
        return results

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    # --- retries ---------------------------------------------------------------------------------

    def _retrying(self, what: str, attempt_once, *args):
        started = time.monotonic()
        predict = what == "Predict"
        self.stats["calls"] += predict
        for attempt in itertools.count(1):
            self.stats["attempts"] += predict
            try:
                return attempt_once(*args)
            except ServingError as error:
                elapsed = time.monotonic() - started
                wait = self.retry.backoff(attempt)
                out_of_attempts = self.retry.attempts is not None and attempt >= self.retry.attempts
                if (error.code not in RETRYABLE or out_of_attempts
                        or elapsed + wait > self.retry.budget):
                    raise error.after(attempt, elapsed, f"{what} on {self.describe()}") \
                        from error.__cause__
                log.warning("%s on %s: %s (attempt %d%s): retrying in %.2f s: %s", what,
                            self.describe(), error.code, attempt,
                            f" of {self.retry.attempts}" if self.retry.attempts else "", wait,
                            error.details)
                time.sleep(wait)
        raise AssertionError("unreachable")


@functools.lru_cache(maxsize=1)
def _grpc_apis():
    """TF Serving's gRPC stubs and protos (importing them imports TensorFlow)."""
    import tensorflow as tf
    from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
    from tensorflow_serving.apis import (
        get_model_metadata_pb2,
        get_model_status_pb2,
        model_service_pb2_grpc,
        predict_pb2,
        prediction_service_pb2_grpc,
    )

    return dict(tf=tf, tensor_pb2=tensor_pb2, tensor_shape_pb2=tensor_shape_pb2,
                types_pb2=types_pb2, get_model_metadata_pb2=get_model_metadata_pb2,
                get_model_status_pb2=get_model_status_pb2,
                model_service_pb2_grpc=model_service_pb2_grpc, predict_pb2=predict_pb2,
                prediction_service_pb2_grpc=prediction_service_pb2_grpc)


class SegmentationClient(BaseSegmentationClient):
    """TF Serving over gRPC: PredictionService (Predict, GetModelMetadata) and ModelService
    (GetModelStatus) at `target` (host:port).

    TLS: `tls_ca` (PEM path or bytes) checks the server's certificate (None with `tls=True`:
    the system's roots); `tls_cert` and `tls_key` add a client certificate (mutual TLS);
    `tls_server_name` overrides the name the certificate must carry. The channel's message-size
    limits come from `limits` (`message_limits`), since gRPC's default 4 MiB would refuse a
    2048² answer; reconnection backoff is capped at the retry policy's, so a restarted server is
    reached by the next retry.
    """

    def __init__(self, target: str, model_name: str = "unet_membrane", *, tls: bool = False,
                 tls_ca=None, tls_cert=None, tls_key=None, tls_server_name: str | None = None,
                 **options):
        super().__init__(model_name, **options)
        if (tls_cert is None) != (tls_key is None):
            raise ValueError("mutual TLS needs both a client certificate and its key")
        self.apis = _grpc_apis()
        self.target = target
        send, receive = message_limits(self.limits)
        reconnect_ms = int(max(self.retry.initial_backoff, 0.05) * 1000)
        channel_options = [
            ("grpc.max_send_message_length", send),
            ("grpc.max_receive_message_length", receive),
            ("grpc.initial_reconnect_backoff_ms", reconnect_ms),
            ("grpc.min_reconnect_backoff_ms", reconnect_ms),
            ("grpc.max_reconnect_backoff_ms", int(self.retry.max_backoff * 1000)),
        ]
        if tls_server_name:
            channel_options.append(("grpc.ssl_target_name_override", tls_server_name))
        if tls or tls_ca is not None or tls_cert is not None:
            credentials = grpc.ssl_channel_credentials(
                root_certificates=_read(tls_ca), private_key=_read(tls_key),
                certificate_chain=_read(tls_cert))
            self.channel = grpc.secure_channel(target, credentials, options=channel_options)
        else:
            self.channel = grpc.insecure_channel(target, options=channel_options)
        self.predictions = self.apis["prediction_service_pb2_grpc"].PredictionServiceStub(
            self.channel)
        self.models = self.apis["model_service_pb2_grpc"].ModelServiceStub(self.channel)

    def _model_spec(self, spec) -> None:
        spec.name = self.model_name
        if self.version is not None:
            spec.version.value = self.version
        elif self.label is not None:
            spec.version_label = self.label

    def _rpc(self, method, request):
        try:
            return method(request, timeout=self.deadline)
        except grpc.RpcError as error:
            code, details = error.code().name, error.details() or ""
            if code == "DEADLINE_EXCEEDED":
                details = f"no answer within the {self.deadline:g} s deadline ({details})"
            raise ServingError(code, details) from error

    def request(self, images: list[bytes], outputs: Sequence[str] = (),
                signature: str | None = None):
        """The PredictRequest for `images` (DT_STRING [batch]), asking for `outputs`."""
        apis = self.apis
        request = apis["predict_pb2"].PredictRequest()
        self._model_spec(request.model_spec)
        request.model_spec.signature_name = signature or self.signature
        tensor = apis["tensor_pb2"].TensorProto(
            dtype=apis["types_pb2"].DT_STRING, string_val=images,
            tensor_shape=apis["tensor_shape_pb2"].TensorShapeProto(
                dim=[apis["tensor_shape_pb2"].TensorShapeProto.Dim(size=len(images))]))
        request.inputs[IMAGES].CopyFrom(tensor)
        request.output_filter.extend(outputs)
        return request

    def _predict(self, images, outputs, signature):
        response = self._rpc(self.predictions.Predict, self.request(images, outputs, signature))
        self.stats["response_bytes"] += response.ByteSize()
        answer = {}
        for name in outputs:
            if name not in response.outputs:
                raise ServingError("INTERNAL", f"the answer has no output {name!r}")
            tensor = response.outputs[name]
            answer[name] = (list(tensor.string_val) if name == MASK_PNG_BYTES
                            else self.apis["tf"].make_ndarray(tensor))
        return answer

    def _metadata(self):
        apis = self.apis
        request = apis["get_model_metadata_pb2"].GetModelMetadataRequest()
        self._model_spec(request.model_spec)
        request.metadata_field.append("signature_def")
        response = self._rpc(self.predictions.GetModelMetadata, request)
        signature_map = apis["get_model_metadata_pb2"].SignatureDefMap()
        response.metadata["signature_def"].Unpack(signature_map)
        dtype = apis["types_pb2"].DataType.Name
        signatures = {
            name: {"inputs": {k: dtype(v.dtype) for k, v in definition.inputs.items()},
                   "outputs": {k: dtype(v.dtype) for k, v in definition.outputs.items()}}
            for name, definition in signature_map.signature_def.items()}
        return ModelMetadata(response.model_spec.version.value, signatures)

    def _status(self):
        apis = self.apis
        request = apis["get_model_status_pb2"].GetModelStatusRequest()
        self._model_spec(request.model_spec)
        response = self._rpc(self.models.GetModelStatus, request)
        state = apis["get_model_status_pb2"].ModelVersionStatus.State.Name
        return [VersionStatus(s.version, state(s.state), _code_name(s.status.error_code),
                              s.status.error_message)
                for s in response.model_version_status]

    def close(self) -> None:
        self.channel.close()


def _code_name(number: int) -> str:
    """gRPC status name of a numeric code (TF's error codes are gRPC's)."""
    for code in grpc.StatusCode:
        if code.value[0] == number:
            return code.name
    return str(number)


class LocalSegmentationClient(BaseSegmentationClient):
    """The same interface on a SavedModel run in-process (`unet-tfx predict --model-dir`): its
    signature is called directly, so no retries and no transport; the checks and splitting into
    calls are the same, with the limits the model was exported with unless `limits` is given."""

    def __init__(self, saved_model_dir: str, **options):
        import tensorflow as tf

        from unet_tfx.trainer.export import read_serving_limits

        if options.get("limits") is None:
            options["limits"] = read_serving_limits(saved_model_dir)
        super().__init__(**options)
        self.tf, self.target = tf, saved_model_dir
        self.model = tf.saved_model.load(saved_model_dir)

    def _predict(self, images, outputs, signature):
        tf = self.tf
        try:
            answer = self.model.signatures[signature](**{IMAGES: tf.constant(images, tf.string)})
        except tf.errors.OpError as error:
            raise ServingError(_code_name(error.error_code), error.message) from error
        return {name: ([bytes(v) for v in answer[name].numpy()] if name == MASK_PNG_BYTES
                       else answer[name].numpy()) for name in outputs}

    def _metadata(self):
        from tensorflow.core.framework import types_pb2

        def dtypes(specs):
            return {k: types_pb2.DataType.Name(v.dtype.as_datatype_enum)
                    for k, v in specs.items()}

        signatures = {}
        for name, function in self.model.signatures.items():
            signatures[name] = {"inputs": dtypes(function.structured_input_signature[1]),
                                "outputs": dtypes(function.structured_outputs)}
        return ModelMetadata(0, signatures)

    def _status(self):
        return [VersionStatus(0, "AVAILABLE")]
