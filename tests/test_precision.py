"""Mixed precision: choosing the policy, training under it, and a float32 serving contract."""

import logging
import types

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from unet_tfx import features as F
from unet_tfx.config import BUNDLED_DATA, TrainingConfig, load_profile
from unet_tfx.trainer import precision, run_fn
from unet_tfx.trainer.export import export_serving_model
from unet_tfx.trainer.model import build_unet, compile_unet
from unet_tfx.trainer.precision import apply_precision, global_precision, resolve_precision

SIZE = 64  # the test profile's patches
# Serving probabilities of a mixed_bfloat16 model against a float32 model of the same weights.
# bfloat16 keeps 8 significant bits (~0.4% per rounding); measured 0.027 on this 512² image.
MAX_BF16_PROBABILITY_DELTA = 0.05


@pytest.fixture(autouse=True)
def float32_policy_after_each_test():
    yield
    apply_precision("float32")


def _cpuinfo(tmp_path, flags: str) -> str:
    path = tmp_path / "cpuinfo"
    path.write_text(f"processor\t: 0\nvmx flags\t: amx_bf16\nflags\t\t: fpu sse2 avx2 {flags}\n\n")
    return str(path)


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(precision, "_gpu_capabilities", lambda: [])


@pytest.mark.parametrize("flag", ["avx512_bf16", "amx_bf16"])
def test_auto_is_bfloat16_on_cpus_with_native_bfloat16(tmp_path, no_gpu, flag):
    policy, reason = resolve_precision("auto", _cpuinfo(tmp_path, f"avx512f {flag}"))
    assert policy == "mixed_bfloat16"
    assert flag in reason


def test_auto_is_float32_without_native_bfloat16(tmp_path, no_gpu):
    cpuinfo = _cpuinfo(tmp_path, "avx512f avx512_vnni")  # 'amx_bf16' under 'vmx flags' only
    assert not precision.cpu_has_native_bf16(cpuinfo)
    assert resolve_precision("auto", cpuinfo)[0] == "float32"
    assert resolve_precision("auto", str(tmp_path / "missing"))[0] == "float32"


def test_auto_follows_the_gpus_before_the_cpu(tmp_path, monkeypatch):
    cpuinfo = _cpuinfo(tmp_path, "avx512_bf16")
    monkeypatch.setattr(precision, "_gpu_capabilities", lambda: [("NVIDIA A100", (8, 0))])
    assert resolve_precision("auto", cpuinfo) == (
        "mixed_float16", "GPU compute capability >= 7.0: NVIDIA A100 (8.0)")
    monkeypatch.setattr(precision, "_gpu_capabilities", lambda: [("Tesla P100", (6, 0))])
    assert resolve_precision("auto", cpuinfo)[0] == "float32"


def test_explicit_precision_is_kept_and_unknown_ones_are_refused(tmp_path, no_gpu):
    cpuinfo = _cpuinfo(tmp_path, "")
    assert resolve_precision("mixed_float16", cpuinfo) == ("mixed_float16", "requested")
    policy, reason = resolve_precision("mixed_bfloat16", cpuinfo)
    assert policy == "mixed_bfloat16" and "emulated" in reason
    with pytest.raises(ValueError, match="mixed_bfloat16"):
        resolve_precision("bf16", cpuinfo)
    with pytest.raises(ValueError, match=r"TrainingConfig\.precision.*auto, float32"):
        TrainingConfig(precision="fp16")
    assert load_profile("test", precision="float32").training.precision == "float32"
    assert load_profile("test").training.precision == "auto"


def test_cli_passes_precision_to_the_training_config():
    from unet_tfx.cli import _config, build_parser

    args = build_parser().parse_args(["run", "--profile", "test", "--precision", "mixed_bfloat16"])
    assert _config(args).training.precision == "mixed_bfloat16"
    assert _config(build_parser().parse_args(["run"])).training.precision == "auto"


def test_run_fn_logs_the_policy_and_restores_float32_even_on_failure(monkeypatch, caplog):
    seen = {}

    def fail(fn_args, cfg, plan):
        seen["policy"] = keras.mixed_precision.global_policy().name
        raise RuntimeError("boom")

    monkeypatch.setattr(run_fn, "_train_and_export", fail)
    fn_args = types.SimpleNamespace(custom_config={"training": {"precision": "mixed_bfloat16"}},
                                    hyperparameters=None)
    with caplog.at_level(logging.INFO, "unet_tfx.trainer"), pytest.raises(RuntimeError):
        run_fn.run_fn(fn_args)
    assert seen["policy"] == "mixed_bfloat16"
    assert "precision: mixed_bfloat16 (requested" in caplog.text
    assert keras.mixed_precision.global_policy().name == "float32"


def _batch():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, SIZE, SIZE, 1)).astype("float32")
    return x, (x > 0.3).astype("float32")  # a pixel-wise rule the net learns fast


def _train(policy: str, steps: int = 6, **compile_args):
    """The test-profile model built under `policy`, and its losses on one fixed batch."""
    with global_precision(policy):
        keras.utils.set_random_seed(0)
        model = compile_unet(build_unet((None, None, 1), base_filters=4), learning_rate=3e-3,
                             **compile_args)
    # Eager steps: the same layers, casts and optimizer, without the ~20 s it takes to trace
    # Keras's train step cold on 2 cores. The export below runs the model in a graph.
    model.run_eagerly = True
    x, y = _batch()
    losses = [float(model.train_on_batch(x, y)[0]) for _ in range(steps)]
    return model, losses


@pytest.fixture(scope="module")
def bf16_model():
    return _train("mixed_bfloat16")


def test_mixed_bfloat16_trains_with_float32_variables_and_output(bf16_model):
    model, losses = bf16_model
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0], losses
    assert model.get_layer("down0_conv1").compute_dtype == "bfloat16"
    assert {v.dtype for v in model.weights} == {tf.float32}
    assert model.get_layer("probabilities").compute_dtype == "float32"
    assert model(_batch()[0]).dtype == tf.float32


def test_mixed_float16_trains_on_cpu_with_loss_scaling_and_ema():
    model, losses = _train("mixed_float16", ema_momentum=0.9)
    optimizer = model.optimizer
    assert isinstance(optimizer, keras.mixed_precision.LossScaleOptimizer)
    assert optimizer.use_ema and optimizer.ema_momentum == 0.9
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0], losses
    assert model(_batch()[0]).dtype == tf.float32
    # The average lives in the wrapped Adam; fit() ends by copying it into the model.
    variables = model.trainable_variables
    optimizer.finalize_variable_values(variables)
    averages = optimizer.inner_optimizer._model_variables_moving_average
    for variable, average in zip(variables, averages, strict=True):
        np.testing.assert_array_equal(variable.numpy(), average.numpy())


def test_exported_bfloat16_model_serves_float32_close_to_float32_weights(
        bf16_model, transform_output, tmp_path):
    model, _ = bf16_model
    directory = str(tmp_path / "serving")
    with global_precision("mixed_bfloat16"):  # as run_fn exports: inside the training policy
        export_serving_model(model, transform_output, directory, channels=1, depth=4)
    assert keras.mixed_precision.global_policy().name == "float32"

    encoded = (BUNDLED_DATA / "image" / "2.png").read_bytes()
    serve = tf.saved_model.load(directory).signatures["serving_default"]
    assert list(serve.structured_input_signature[1]) == ["images"]
    served = serve(images=tf.constant([encoded, encoded]))["probabilities"]
    assert served.dtype == tf.float32 and served.shape == (2, 512, 512, 1)

    reference = build_unet((None, None, 1), base_filters=4)  # float32 throughout
    reference.set_weights(model.get_weights())
    layer = transform_output.transform_features_layer()
    # As serve_images does it: in a graph, the statistics need no image (the rest is pruned).
    stats = tf.function(lambda: layer({F.HEIGHT: tf.zeros([1, 1], tf.int64)}))()
    image = tf.cast(tf.io.decode_png(encoded, channels=1), tf.float32)[None]
    expected = reference(F.normalize(image, stats[F.IMAGE_MEAN_XF][0, 0],
                                     stats[F.IMAGE_STD_XF][0, 0]))
    error = tf.abs(served[:1] - expected)
    delta = float(tf.reduce_max(error))
    flipped = float(tf.reduce_mean(tf.cast((served[:1] > 0.5) != (expected > 0.5), tf.float32)))
    print(f"bfloat16 vs float32 serving, 512² image: max |Δp| {delta:.4f}, "
          f"mean {float(tf.reduce_mean(error)):.5f}, {flipped:.4%} of pixels flip at 0.5")
    assert delta <= MAX_BF16_PROBABILITY_DELTA
