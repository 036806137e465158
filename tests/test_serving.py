"""Using the pushed model: gRPC client (against an in-process PredictionService), local
inference and the `predict` command's pictures."""

from concurrent import futures
from pathlib import Path

import grpc
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from unet_tfx.cli import main
from unet_tfx.config import BUNDLED_DATA
from unet_tfx.regions import cell_regions
from unet_tfx.serving.client import SegmentationClient, ServingError
from unet_tfx.serving.local_model import LocalModel, latest_version

pytestmark = pytest.mark.e2e
MEMBRANE_PNG = BUNDLED_DATA / "test" / "0.png"


class ModelServer(prediction_service_pb2_grpc.PredictionServiceServicer):
    """PredictionService/Predict as TF Serving answers it, backed by the SavedModel."""

    def __init__(self, name, saved_model_dir):
        self.name, self.model = name, tf.saved_model.load(saved_model_dir)
        self.requests = []

    def Predict(self, request, context):
        self.requests.append(request)
        if request.model_spec.name != self.name:
            context.abort(grpc.StatusCode.NOT_FOUND,
                          f"Servable not found: {request.model_spec.name}")
        signature = self.model.signatures[request.model_spec.signature_name or "serving_default"]
        inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
        response = predict_pb2.PredictResponse()
        for key, value in signature(**{k: tf.constant(v) for k, v in inputs.items()}).items():
            response.outputs[key].CopyFrom(tf.make_tensor_proto(value.numpy()))
        return response


@pytest.fixture(scope="module")
def server(first_run, pipeline_config):
    servicer = ModelServer(pipeline_config.model_name, first_run.pushed_to)
    grpc_server = grpc.server(futures.ThreadPoolExecutor(max_workers=2), options=[
        ("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)])
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(servicer, grpc_server)
    port = grpc_server.add_insecure_port("127.0.0.1:0")
    grpc_server.start()
    yield servicer, f"127.0.0.1:{port}"
    grpc_server.stop(grace=None)


def test_grpc_client_gets_the_models_probabilities(server, first_run, pipeline_config):
    servicer, address = server
    client = SegmentationClient(address, pipeline_config.model_name, deadline=120)
    png = MEMBRANE_PNG.read_bytes()
    remote = client.segment([png], probabilities=True)[0].probabilities[None]
    client.close()
    assert remote.shape == (1, 512, 512, 1)
    np.testing.assert_allclose(remote, LocalModel(first_run.pushed_to).segment([png]), atol=1e-6)
    sent = servicer.requests[-1]
    assert sent.model_spec.signature_name == "serving_default"
    assert list(sent.inputs) == ["images"]


def test_grpc_client_surfaces_an_unknown_model(server):
    _, address = server
    client = SegmentationClient(address, "no_such_model", deadline=30)
    with pytest.raises(ServingError) as error:
        client.segment([MEMBRANE_PNG.read_bytes()])
    assert (error.value.code, error.value.attempts) == ("NOT_FOUND", 1)


def test_latest_version_picks_the_highest_number(tmp_path):
    for version in ("9", "10", "tmp"):
        (tmp_path / version).mkdir()
    assert latest_version(str(tmp_path)).endswith("/10")
    with pytest.raises(FileNotFoundError, match="no numeric version"):
        latest_version(str(tmp_path / "tmp"))


def test_predict_command_writes_masks_overlays_and_a_contact_sheet(first_run, pipeline_config,
                                                                   tmp_path, capsys):
    model_base = f"{pipeline_config.serving_dir}/{pipeline_config.model_name}"
    images = [str(BUNDLED_DATA / "test" / f"{i}.png") for i in (0, 1)]
    # The test profile's brief training is never sure of a cell at the default seed threshold.
    assert main(["predict", *images, "--model-dir", model_base, "--output", str(tmp_path),
                 "--cells", "--cell-seed-threshold", "0.5"]) == 0
    assert f"wrote 2 masks, overlays and cells to {tmp_path}" in capsys.readouterr().out
    for stem in ("0", "1"):
        mask = np.asarray(Image.open(tmp_path / f"{stem}_mask.png"))
        assert mask.shape == (512, 512) and set(np.unique(mask)) <= {0, 255}
        overlay = np.asarray(Image.open(tmp_path / f"{stem}_overlay.png"))
        assert overlay.shape == (512, 512, 3)
        # The cells, as the Evaluator's watershed_rand_score grows them from the same answer.
        cells = np.asarray(Image.open(tmp_path / f"{stem}_cells.png"))
        answer = LocalModel(latest_version(model_base)).segment([Path(images[int(stem)])
                                                                 .read_bytes()])[0]
        np.testing.assert_array_equal(cells, cell_regions(answer[..., 0], 0.5))
        assert cells.max() > 1  # several cells
    for wrong in (["--cells", "--masks-only"], ["--cells", "--cell-seed-threshold", "1.5"]):
        assert main(["predict", images[0], "--model-dir", model_base, *wrong,
                     "--output", str(tmp_path / "none")]) == 2
    assert Image.open(tmp_path / "predictions.png").size == (3 * 256, 2 * 256)
    assert not list(tmp_path.glob("*.partial"))  # no temporary files left


def test_eval_picture_shows_every_eval_example(first_run, pipeline_config, tmp_path):
    from unet_tfx.serving.eval_pictures import eval_predictions, write_eval_predictions

    path = tmp_path / "eval.png"
    shown = write_eval_predictions(
        eval_predictions(first_run.pushed_to, f"{pipeline_config.examples_dir}/eval"), str(path))
    assert shown == 6
    assert Image.open(path).size == (4 * 256, 6 * 256)
