"""Seed U-Net throughput on this machine: training img/s by batch size, inference img/s by size.

Prints absolute rates and ratios measured in this one run (machines are noisy: compare the
ratios, not a lone rate). Usage: python bench/bench_model.py [--base-filters 32] [--seconds 20]
"""

import argparse
import os
import time

import tensorflow as tf

import unet_tfx  # noqa: F401  (legacy Keras before TensorFlow)
from unet_tfx.trainer.model import build_unet, compile_unet


def _rate(step, images_per_step: int, seconds: float) -> float:
    step()  # warm-up: tracing and first allocation
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        step()
        count += 1
    return count * images_per_step / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--base-filters", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    tf.keras.utils.set_random_seed(0)
    model = compile_unet(build_unet((None, None, 1), args.base_filters))
    print(f"seed U-Net, {model.count_params():,} parameters, {os.cpu_count()} CPUs")

    train = {}
    for batch in (1, 2, 4):
        x = tf.random.normal([batch, 256, 256, 1])
        y = tf.cast(tf.random.uniform([batch, 256, 256, 1]) > 0.3, tf.float32)
        train[batch] = _rate(lambda x=x, y=y: model.train_on_batch(x, y), batch, args.seconds)
        print(f"train 256x256 batch {batch}: {train[batch]:.2f} img/s "
              f"({train[batch] / batch:.2f} steps/s)")
    infer = {}
    predict = tf.function(lambda x: model(x, training=False))
    for size in (256, 512):
        x = tf.random.normal([1, size, size, 1])
        infer[size] = _rate(lambda x=x: predict(x).numpy(), 1, args.seconds)
        print(f"infer {size}x{size}: {infer[size]:.2f} img/s")

    print("ratios (same run):")
    print(f"  training img/s, batch 2 vs batch 4: {train[2] / train[4]:.2f}x")
    print(f"  optimizer steps/s, batch 2 vs batch 4: {train[2] / 2 / (train[4] / 4):.2f}x")
    print(f"  inference time per pixel, 512² vs 256²: {infer[256] / 4 / infer[512]:.2f}x "
          "(1.00 = linear in pixels)")


if __name__ == "__main__":
    main()
