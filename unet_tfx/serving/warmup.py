"""TF Serving warmup: `assets.extra/tf_serving_warmup_requests` in every exported model.

TF Serving replays these records (a TFRecord file of `PredictionLog`s) when it loads a version,
before the version is marked AVAILABLE, so the first real request does not pay for the
first run's allocations. The requests are `serving_default` calls on real eval images: the
encoded images of the Trainer's raw eval examples, as ingested.

A warmup request the model refuses makes TF Serving refuse to load the version, so each
request is checked against the model's `ServingLimits` before it is written, and one the limits
refuse is left out with a warning (an export at the end of a training run must not fail on it).
"""

import logging
import os

import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

from unet_tfx import features as F
from unet_tfx import imaging
from unet_tfx.config import ServingLimits

WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
WARMUP_IMAGES = 2  # eval images; one request each, plus one request of all of them
log = logging.getLogger("unet_tfx.serving")


def eval_pngs(patterns: list[str], count: int = WARMUP_IMAGES) -> list[bytes]:
    """The encoded images of the first `count` raw (GZIP) eval examples, as ingested."""
    files = sorted(f for pattern in patterns for f in tf.io.gfile.glob(pattern))
    records = tf.data.TFRecordDataset(files, compression_type="GZIP").take(count)
    spec = {F.IMAGE: tf.io.FixedLenFeature([], tf.string)}
    return [tf.io.parse_single_example(serialized, spec)[F.IMAGE].numpy()
            for serialized in records]


def warmup_requests(images: list[bytes], model_name: str = "",
                    signature: str = "serving_default") -> list[predict_pb2.PredictRequest]:
    """One request per image, then (for several images of one size) one request of them all:
    warmup then also runs the batched shape."""
    batches = [[image] for image in images]
    sizes = {(h.height, h.width) for h in map(imaging.image_header, images)}
    if len(images) > 1 and len(sizes) == 1:
        batches.append(list(images))
    requests = []
    for batch in batches:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = model_name
        request.model_spec.signature_name = signature
        request.inputs["images"].CopyFrom(tf.make_tensor_proto(batch, dtype=tf.string))
        requests.append(request)
    return requests


def _check_request(request: predict_pb2.PredictRequest, limits: ServingLimits, name: str) -> None:
    """ImageRefused (naming the request `name`) unless the model with `limits` answers it."""
    images = [bytes(b) for b in tf.make_ndarray(request.inputs["images"]).reshape(-1)]
    if not 1 <= len(images) <= limits.max_batch:
        raise imaging.ImageRefused(name + ": " + imaging.BATCH_SIZE.format(
            len(images), limits.max_batch))
    total = sum(map(len, images))
    if total > limits.max_request_bytes:
        raise imaging.ImageRefused(imaging.TOO_MANY_BYTES.format(name, total,
                                                                 limits.max_request_bytes))
    headers = [imaging.check_encoded_image(image, limits, f"{name} image {index}")
               for index, image in enumerate(images)]
    pixels = sum(h.height * h.width for h in headers)
    if pixels > limits.max_pixels:
        raise imaging.ImageRefused(name + ": " + imaging.BATCH_PIXELS.format(
            len(images), headers[0].height, headers[0].width, pixels, limits.max_pixels))


def answerable(requests: list[predict_pb2.PredictRequest],
               limits: ServingLimits) -> list[predict_pb2.PredictRequest]:
    """The requests the model with `limits` answers; each other one is logged as a warning."""
    kept = []
    for number, request in enumerate(requests):
        try:
            _check_request(request, limits, f"warmup request {number}")
        except imaging.ImageRefused as refused:
            log.warning("warmup: left out, the serving limits refuse it: %s", refused)
        else:
            kept.append(request)
    return kept


def write_warmup(saved_model_dir: str, images: list[bytes], limits: ServingLimits,
                 model_name: str = "") -> str | None:
    """Write `assets.extra/tf_serving_warmup_requests` for `images` into a SavedModel folder
    (via a temporary name, renamed when complete), the requests `limits` refuse left out;
    returns its path, or None when `limits` refuse every request (no file then)."""
    requests = answerable(warmup_requests(images, model_name), limits)
    if not requests:
        log.warning("warmup: no request within the serving limits; %s has no warmup file",
                    saved_model_dir)
        return None
    path = os.path.join(saved_model_dir, WARMUP_FILE)
    tf.io.gfile.makedirs(os.path.dirname(path))
    partial = f"{path}.partial"
    with tf.io.TFRecordWriter(partial) as writer:
        for request in requests:
            record = prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(record.SerializeToString())
    tf.io.gfile.rename(partial, path, overwrite=True)
    return path


def read_warmup(saved_model_dir: str) -> list[prediction_log_pb2.PredictionLog]:
    """The PredictionLog records of a SavedModel's warmup file ([] when it has none)."""
    path = os.path.join(saved_model_dir, WARMUP_FILE)
    if not tf.io.gfile.exists(path):
        return []
    return [prediction_log_pb2.PredictionLog.FromString(record.numpy())
            for record in tf.data.TFRecordDataset(path)]


def replay(saved_model_dir: str, logs=None) -> list[dict[str, np.ndarray]]:
    """Run each warmup request through the loaded SavedModel's signature, as TF Serving does
    on load; returns the outputs of each."""
    signatures = tf.saved_model.load(saved_model_dir).signatures
    results = []
    for log in read_warmup(saved_model_dir) if logs is None else logs:
        request = log.predict_log.request
        inputs = {key: tf.constant(tf.make_ndarray(proto))
                  for key, proto in request.inputs.items()}
        outputs = signatures[request.model_spec.signature_name or "serving_default"](**inputs)
        results.append({key: value.numpy() for key, value in outputs.items()})
    return results
