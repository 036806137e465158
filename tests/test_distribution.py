"""Training on several workers and GPUs: strategy choice, chief rules, saving, the XLA switch, and
two real workers training together over loopback.

Run as a script (`python tests/test_distribution.py OUTPUT_DIR`), this file is one worker of that
two-worker test: the package's own choose_strategy / is_chief / save_on_chief under TF_CONFIG.
"""

import json
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from unet_tfx.config import TrainingConfig, load_profile
from unet_tfx.trainer import distribution
from unet_tfx.trainer.distribution import (
    choose_strategy,
    is_chief,
    resolve_jit_compile,
    save_on_chief,
    strategy_plan,
)

SIZE, BATCH_PER_REPLICA, STEPS = 64, 2, 3  # the test profile's patches and batch


def _tf_config(cluster: dict, task_type: str, index: int) -> str:
    return json.dumps({"cluster": cluster, "task": {"type": task_type, "index": index}})


TWO_WORKERS = {"worker": ["10.0.0.1:2222", "10.0.0.2:2222"]}
CHIEF_AND_WORKER = {"chief": ["10.0.0.1:2222"], "worker": ["10.0.0.2:2222"]}


@pytest.mark.parametrize("tf_config, chief, workers", [
    (None, True, 1),
    ("", True, 1),
    (_tf_config({"worker": ["10.0.0.1:2222"]}, "worker", 0), True, 1),
    (_tf_config(TWO_WORKERS, "worker", 0), True, 2),
    (_tf_config(TWO_WORKERS, "worker", 1), False, 2),
    (_tf_config(CHIEF_AND_WORKER, "chief", 0), True, 2),
    (_tf_config(CHIEF_AND_WORKER, "worker", 0), False, 2),  # worker 0 is not chief beside a chief
    (_tf_config({**CHIEF_AND_WORKER, "worker": ["b:1", "c:1"], "evaluator": ["d:1"]},
                "evaluator", 0), False, 3),
    (_tf_config({"chief": ["10.0.0.1:2222"], "evaluator": ["d:1"]}, "chief", 0), True, 1),
])
def test_chief_and_strategy_follow_tf_config(monkeypatch, tf_config, chief, workers):
    if tf_config is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", tf_config)
    monkeypatch.setattr(distribution, "_local_gpus", lambda: 0)
    assert is_chief() is chief
    assert distribution.training_workers() == workers
    name, reason = strategy_plan()
    if workers > 1:  # not created here: it would start a gRPC server in the test process
        assert name == "MultiWorkerMirroredStrategy"
        assert f"TF_CONFIG names {workers} workers" in reason
        assert ("(chief)" if chief else "(not chief)") in reason
    else:
        assert (name, reason) == ("default", "one worker, CPU")


def test_single_worker_strategies(monkeypatch, caplog):
    monkeypatch.setenv("TF_CONFIG", _tf_config({"worker": ["10.0.0.1:2222"]}, "worker", 0))
    monkeypatch.setattr(distribution, "_local_gpus", lambda: 1)
    with caplog.at_level(logging.INFO, "unet_tfx.trainer"):
        strategy = choose_strategy()
    assert strategy is tf.distribute.get_strategy() and not tf.distribute.has_strategy()
    assert strategy.num_replicas_in_sync == 1
    assert "distribution: default (one worker, 1 GPU)" in caplog.text

    monkeypatch.delenv("TF_CONFIG")
    monkeypatch.setattr(distribution, "_local_gpus", lambda: 2)
    with caplog.at_level(logging.INFO, "unet_tfx.trainer"):
        strategy = choose_strategy()  # on this CPU-only machine it mirrors over the CPU
    assert isinstance(strategy, tf.distribute.MirroredStrategy)
    assert "distribution: MirroredStrategy (one worker, 2 GPUs)" in caplog.text


def test_bad_tf_config_is_named(monkeypatch):
    monkeypatch.setenv("TF_CONFIG", "{cluster: ")
    with pytest.raises(ValueError, match="TF_CONFIG is not valid JSON"):
        is_chief()


def test_non_chief_saves_to_a_temporary_folder_and_deletes_it(monkeypatch, tmp_path):
    monkeypatch.setattr(distribution.tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    saved = []

    def save(directory):
        saved.append(directory)
        Path(directory).mkdir(exist_ok=True)  # as model.save does
        Path(directory, "saved_model.pb").write_text("x")

    monkeypatch.setenv("TF_CONFIG", _tf_config(TWO_WORKERS, "worker", 1))
    assert save_on_chief(save, str(tmp_path / "model")) is None
    assert saved[0].startswith(str(tmp_path / "tmp"))
    assert not (tmp_path / "model").exists() and not any((tmp_path / "tmp").iterdir())

    monkeypatch.setenv("TF_CONFIG", _tf_config(TWO_WORKERS, "worker", 0))
    assert save_on_chief(save, str(tmp_path / "model")) == str(tmp_path / "model")
    assert (tmp_path / "model" / "saved_model.pb").exists()


def test_jit_compile_auto_is_off_on_this_cpu_and_on_with_a_gpu(monkeypatch):
    from unet_tfx.trainer.model import build_unet, compile_unet

    assert not tf.config.list_physical_devices("GPU")
    enabled, reason = resolve_jit_compile("auto")
    assert not enabled and "no GPU" in reason
    model = build_unet((None, None, 1), base_filters=4)
    assert compile_unet(model, jit_compile="auto").jit_compile is False
    assert compile_unet(model, jit_compile="on").jit_compile is True
    assert resolve_jit_compile("off") == (False, "requested")
    monkeypatch.setattr(distribution, "_local_gpus", lambda: 1)
    assert resolve_jit_compile("auto") == (True, "1 GPU")
    with pytest.raises(ValueError, match="jit_compile must be one of auto, on, off"):
        resolve_jit_compile("xla")
    with pytest.raises(ValueError, match=r"TrainingConfig\.jit_compile.*auto, on, off.*'true'"):
        TrainingConfig(jit_compile="true")
    assert load_profile("full").training.jit_compile == "auto"


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@pytest.mark.e2e
def test_two_workers_train_the_same_weights_and_only_the_chief_keeps_a_model(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    chief_port, worker_port = _free_ports(2)
    cluster = {"chief": [f"127.0.0.1:{chief_port}"], "worker": [f"127.0.0.1:{worker_port}"]}
    workers = {}
    start = time.monotonic()
    for task_type in ("chief", "worker"):
        temp = tmp_path / f"tmp_{task_type}"
        temp.mkdir()
        env = {**os.environ, "TF_CONFIG": _tf_config(cluster, task_type, 0),
               "TMPDIR": str(temp), "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2",
               "CUDA_VISIBLE_DEVICES": ""}
        log = open(tmp_path / f"{task_type}.log", "w")  # noqa: SIM115 (closed below)
        workers[task_type] = (subprocess.Popen(
            [sys.executable, __file__, str(out)], env=env, stdout=log, stderr=subprocess.STDOUT,
            cwd=Path(__file__).resolve().parent.parent), log, temp)
    try:
        codes = {name: proc.wait(timeout=300) for name, (proc, _, _) in workers.items()}
    finally:
        for proc, log, _ in workers.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()
    print(f"two workers: {time.monotonic() - start:.1f} s")
    logs = {name: (tmp_path / f"{name}.log").read_text()[-3000:] for name in workers}
    assert codes == {"chief": 0, "worker": 0}, logs

    reports = {name: json.loads((out / f"report_{name}.json").read_text()) for name in workers}
    assert reports["chief"]["chief"] and not reports["worker"]["chief"]
    for report in reports.values():
        assert report["multi_worker"]
        assert report["replicas"] == 2
        assert np.all(np.isfinite(report["loss"] + report["val_loss"]))
    assert reports["chief"]["val_loss"] == reports["worker"]["val_loss"]
    # Each worker trains on its own half of every global batch of 2 x 2 images.
    assert len(reports["chief"]["rows"]) == len(reports["worker"]["rows"]) == BATCH_PER_REPLICA
    assert sorted(reports["chief"]["rows"] + reports["worker"]["rows"]) == [0, 1, 2, 3]
    chief_weights = np.load(out / "weights_chief.npz")
    worker_weights = np.load(out / "weights_worker.npz")
    assert chief_weights.files == worker_weights.files and len(chief_weights.files) > 0
    for key in chief_weights.files:
        np.testing.assert_array_equal(chief_weights[key], worker_weights[key])

    # One SavedModel, at the final location; nothing left of the non-chief's copy.
    assert sorted(p.name for p in out.iterdir()) == [
        "model", "report_chief.json", "report_worker.json", "weights_chief.npz",
        "weights_worker.npz"]
    assert [str(p.relative_to(tmp_path)) for p in tmp_path.rglob("saved_model.pb")] == [
        "out/model/saved_model.pb"]
    for _, _, temp in workers.values():
        assert not any(temp.iterdir()), list(temp.iterdir())
    assert tf.saved_model.contains_saved_model(str(out / "model"))


def _worker(out: Path) -> None:
    """One worker: the test-size U-Net trained for a few steps under choose_strategy()."""
    import tf_keras as keras

    from unet_tfx.trainer.dataset import shard_by_data
    from unet_tfx.trainer.model import build_unet, compile_unet

    logging.basicConfig(level=logging.INFO, format="%(relativeCreated)7.0f ms %(message)s")
    strategy = choose_strategy()  # first, before any tensor exists
    replicas = strategy.num_replicas_in_sync
    task = json.loads(os.environ["TF_CONFIG"])["task"]["type"]
    keras.utils.set_random_seed(0)
    with strategy.scope():
        model = compile_unet(build_unet((None, None, 1), base_filters=4, depth=4),
                             learning_rate=3e-3, jit_compile="auto")
    # Eager steps, as in test_precision: the same strategy, all-reduces and sharding without the
    # ~60 s it takes two processes on 2 cores to trace Keras's distributed train step cold.
    model.run_eagerly = True
    rng = np.random.default_rng(0)  # the same data on every worker; each keeps its share
    x = rng.normal(size=(8, SIZE, SIZE, 1)).astype("float32")
    y = (x > 0.3).astype("float32")
    global_batch = BATCH_PER_REPLICA * replicas
    train = tf.data.Dataset.from_tensor_slices((x, y)).repeat().batch(global_batch,
                                                                     drop_remainder=True)
    # Which of the global batch's images this worker's replica gets (DATA sharding: its share).
    first = next(iter(strategy.experimental_distribute_dataset(shard_by_data(train))))[0]
    local = strategy.experimental_local_results(first)[0].numpy()
    rows = [int(np.argmin(np.abs(x - image).sum(axis=(1, 2, 3)))) for image in local]
    # 6 eval images: the last global batch is partial (2 of 4), as the eval split's can be. (5
    # would leave one worker an empty batch, which oneDNN's eager Conv2D mishandles on some CPUs.)
    evaluation = tf.data.Dataset.from_tensor_slices((x[:6], y[:6])).batch(global_batch)
    history = model.fit(shard_by_data(train), steps_per_epoch=STEPS, epochs=1, verbose=0,
                        validation_data=shard_by_data(evaluation))
    logging.info("trained")
    np.savez(out / f"weights_{task}.npz", *model.get_weights())
    # Without each layer's traced call functions: saving them takes ~40 s here.
    save_on_chief(lambda directory: model.save(directory, save_format="tf",
                                               include_optimizer=False, save_traces=False),
                  str(out / "model"), strategy)
    logging.info("saved")
    (out / f"report_{task}.json").write_text(json.dumps({
        "chief": is_chief(), "replicas": replicas, "rows": rows,
        "multi_worker": isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy),
        "loss": history.history["loss"], "val_loss": history.history["val_loss"]}))


if __name__ == "__main__":
    import unet_tfx  # noqa: F401  (legacy Keras before TensorFlow; set by the test's env too)

    _worker(Path(sys.argv[1]))
