"""A TF Serving gRPC client for the `serving_default` contract: PNG/JPEG bytes → probabilities."""

import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from unet_tfx.trainer.export import PROBABILITIES

# A 512x512 float map is 1 MiB; room for a batch of them.
MAX_MESSAGE_BYTES = 256 * 1024 * 1024


class ServingClient:
    """Calls PredictionService/Predict on `target` (host:port) for `model_name`."""

    def __init__(self, target: str, model_name: str, timeout: float = 60.0,
                 signature: str = "serving_default", version: int | None = None):
        options = [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                   ("grpc.max_send_message_length", MAX_MESSAGE_BYTES)]
        self.channel = grpc.insecure_channel(target, options=options)
        self.stub = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self.model_name, self.signature, self.version = model_name, signature, version
        self.timeout = timeout

    def request(self, encoded_images: list[bytes]) -> predict_pb2.PredictRequest:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = self.model_name
        request.model_spec.signature_name = self.signature
        if self.version is not None:
            request.model_spec.version.value = self.version
        request.inputs["images"].CopyFrom(tf.make_tensor_proto(encoded_images, dtype=tf.string))
        return request

    def segment(self, encoded_images: list[bytes]) -> np.ndarray:
        """Probabilities [batch, H, W, 1] for a batch of same-sized encoded images."""
        response = self.stub.Predict(self.request(encoded_images), timeout=self.timeout)
        return tf.make_ndarray(response.outputs[PROBABILITIES])

    def close(self) -> None:
        self.channel.close()
