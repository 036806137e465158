"""Benchmark 3, Trainer overhead: `run_fn`'s training img/s ÷ bare Keras `fit` on in-memory
tensors, same model (the seed U-Net, as the `quick` profile compiles it: its loss, Adam, EMA),
same batch and patch size (the quick profile's), same run.

`run_fn` runs as TFX calls it, on the Transform output of the bundled data (bench_pipeline.py's
run, else a fresh test-profile run): its input (tf.data from the transformed shards),
callbacks (TensorBoard, BackupAndRestore, progress) and export, once with the input cached in
memory (the default at this size) and once streamed (`cache_budget_mb=0`, the mode of large
data). The bare baseline fits patches cut beforehand from the same images. Rates are steady
state: steps after the first 3, without the time between epochs (validation, checkpoints).
The three are measured in `--rounds` rounds, the order reversed each round (bare, cached,
streamed, then streamed, cached, bare), and each rate is the mean over rounds: this machine's
speed drifts by 10-15% within minutes, which a single pass in fixed order reads as overhead.
Target: >= 0.95 for both.
Usage: python bench/bench_trainer.py [--steps 60] [--rounds 2]
"""

import argparse
import dataclasses
import shutil
import time
import types

import benchlib
import numpy as np
import tensorflow as tf
import tensorflow_transform as tft
import tf_keras as keras

import unet_tfx.trainer.run_fn as run_fn_module
from unet_tfx.config import ServingLimits, load_profile
from unet_tfx.trainer.dataset import _augment, image_mask_pairs
from unet_tfx.trainer.model import build_from_config, compile_from_config
from unet_tfx.trainer.precision import global_precision, resolve_precision
from unet_tfx.trainer.progress import ProgressLogger

TARGET = 0.95
TIMERS = []


class TimedProgress(ProgressLogger):
    """run_fn's progress callback, also recording when each step ends (bench only)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.ends, self.epoch_starts = [], []
        TIMERS.append(self)

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch_starts.append(len(self.ends))

    def on_train_batch_end(self, batch, logs=None):
        self.ends.append(time.perf_counter())
        super().on_train_batch_end(batch, logs)


def run_fn_rate(transform: dict, cfg, workdir) -> float:
    """Steady training img/s of one run_fn call."""
    shutil.rmtree(workdir, ignore_errors=True)
    fn_args = types.SimpleNamespace(
        train_files=transform["train"], eval_files=transform["eval"],
        transform_output=transform["transform_graph"],
        serving_model_dir=str(workdir / "serving_model"), model_run_dir=str(workdir / "logs"),
        train_steps=cfg.train_steps, eval_steps=None, hyperparameters=None, base_model=None,
        custom_config={"image_height": 512, "image_width": 512, "channels": 1,
                       "training": dataclasses.asdict(cfg),
                       "serving_limits": dataclasses.asdict(ServingLimits()),
                       "backup_root": str(workdir / "backup")})
    run_fn_module.ProgressLogger = TimedProgress
    try:
        run_fn_module.run_fn(fn_args)
    finally:
        run_fn_module.ProgressLogger = ProgressLogger
    timer = TIMERS[-1]
    return benchlib.steady_rate(timer.ends, timer.epoch_starts, cfg.batch_size)


def bare_fit_rate(transform: dict, cfg) -> float:
    """Steady img/s of model.fit on in-memory patch tensors cut from the same images."""
    tft_output = tft.TFTransformOutput(transform["transform_graph"])
    images = list(image_mask_pairs(transform["train"], tft_output).as_numpy_iterator())
    count = cfg.train_steps * cfg.batch_size
    patches = [_augment(*images[i % len(images)], cfg, tf.constant([cfg.seed, i], tf.int64))
               for i in range(count)]
    x = np.stack([p[0].numpy() for p in patches])
    y = np.stack([p[1].numpy() for p in patches])
    policy, _ = resolve_precision(cfg.precision)
    with global_precision(policy):
        keras.utils.set_random_seed(cfg.seed)
        model = compile_from_config(build_from_config(cfg), cfg)
        timer = benchlib.step_timer()
        model.fit(x, y, batch_size=cfg.batch_size, epochs=1, shuffle=True, verbose=0,
                  callbacks=[timer])
    return timer.steady_rate(cfg.batch_size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=60, help="training steps per measurement")
    parser.add_argument("--rounds", type=int, default=2,
                        help="measurements of each mode, in alternating order")
    args = parser.parse_args()

    started = time.monotonic()
    transform = benchlib.pipeline_transform_output()
    cfg = dataclasses.replace(load_profile("quick").training, train_steps=args.steps,
                              steps_per_epoch=args.steps)
    workdir = benchlib.WORK / "trainer"
    measure = {
        "bare_fit": lambda: bare_fit_rate(transform, cfg),
        "run_fn_cached": lambda: run_fn_rate(transform, cfg, workdir / "cached"),
        "run_fn_streamed": lambda: run_fn_rate(
            transform, dataclasses.replace(cfg, cache_budget_mb=0), workdir / "streamed"),
    }
    per_round = {mode: [] for mode in measure}
    for round_ in range(args.rounds):
        for mode in (list(measure) if round_ % 2 == 0 else list(measure)[::-1]):
            per_round[mode].append(measure[mode]())
            print(f"round {round_ + 1}: {mode} {per_round[mode][-1]:.2f} img/s")
    rates = {mode: float(np.mean(values)) for mode, values in per_round.items()}
    ratios = {mode: rates[mode] / rates["bare_fit"] for mode in ("run_fn_cached",
                                                                  "run_fn_streamed")}
    ratio = min(ratios.values())
    benchlib.save_results("bench_trainer", {
        "target": f"run_fn training img/s / bare fit >= {TARGET} (cached and streamed)",
        "ratio": ratio, "ratios": ratios, "img_per_s": rates, "img_per_s_per_round": per_round,
        "rounds": args.rounds, "steps": args.steps,
        "batch_size": cfg.batch_size, "patch_size": cfg.patch_size,
        "seconds": time.monotonic() - started,
    })
    plt = benchlib.pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.bar(list(rates), list(rates.values()), color=["grey", "tab:blue", "tab:orange"])
    ax.set_ylabel(f"training img/s ({cfg.patch_size}², batch {cfg.batch_size})")
    ax.set_title(f"run_fn / bare fit: cached {ratios['run_fn_cached']:.2f}x, streamed "
                 f"{ratios['run_fn_streamed']:.2f}x (target >= {TARGET:g})")
    benchlib.save_chart("bench_trainer", fig)
    print(f"run_fn / bare fit training img/s: cached {ratios['run_fn_cached']:.2f}x, streamed "
          f"{ratios['run_fn_streamed']:.2f}x; lower {ratio:.2f}x "
          f"{benchlib.verdict(ratio, TARGET, at_most=False)}")


if __name__ == "__main__":
    main()
