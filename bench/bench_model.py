"""Seed U-Net throughput on this machine: training img/s by batch size, inference img/s by size,
and each mixed precision this hardware runs natively against float32.

Prints absolute rates and ratios measured in this one run (machines are noisy: compare the
ratios, not a lone rate). mixed_bfloat16 is measured only on CPUs with native bfloat16
(avx512_bf16 / amx_bf16), mixed_float16 only on GPUs of compute capability >= 7.0: emulated,
they are slower than float32 and say nothing. The last line is the mixed-precision speed-up.
Usage: python bench/bench_model.py [--base-filters 32] [--seconds 15]
"""

import argparse
import os
import time

import tensorflow as tf

import unet_tfx  # noqa: F401  (legacy Keras before TensorFlow)
from unet_tfx.trainer.model import build_unet, compile_unet
from unet_tfx.trainer.precision import (
    NATIVE_BF16_FLAGS,
    cpu_has_native_bf16,
    global_precision,
    gpu_supports_float16,
    resolve_precision,
)


def _rate(step, images_per_step: int, seconds: float) -> float:
    step()  # warm-up: tracing and first allocation
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        step()
        count += 1
    return count * images_per_step / (time.perf_counter() - start)


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
    except OSError:
        names = []
    return names[0] if names else "unknown CPU"


def _train_rate(model, batch: int, seconds: float) -> float:
    x = tf.random.normal([batch, 256, 256, 1])
    y = tf.cast(tf.random.uniform([batch, 256, 256, 1]) > 0.3, tf.float32)
    return _rate(lambda: model.train_on_batch(x, y), batch, seconds)


def _infer_rate(predict, size: int, seconds: float) -> float:
    x = tf.random.normal([1, size, size, 1])
    return _rate(lambda: predict(x).numpy(), 1, seconds)


def _model(policy: str, base_filters: int):
    with global_precision(policy):  # float32 again afterwards
        tf.keras.utils.set_random_seed(0)
        model = compile_unet(build_unet((None, None, 1), base_filters))
    return model, tf.function(lambda x: model(x, training=False))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-filters", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=15.0, help="per measurement")
    args = parser.parse_args()

    model, predict = _model("float32", args.base_filters)
    print(f"seed U-Net, {model.count_params():,} parameters, {os.cpu_count()} CPUs "
          f"({_cpu_name()})")
    policy, reason = resolve_precision("auto")
    print(f"precision auto → {policy} ({reason})")
    print("float32:")
    train = {}
    for batch in (1, 2, 4):
        train[batch] = _train_rate(model, batch, args.seconds)
        print(f"  train 256x256 batch {batch}: {train[batch]:.2f} img/s "
              f"({train[batch] / batch:.2f} steps/s)")
    infer = {}
    for size in (256, 512):
        infer[size] = _infer_rate(predict, size, args.seconds)
        print(f"  infer {size}x{size}: {infer[size]:.2f} img/s")
    del model, predict

    mixed = {}
    candidates = {
        "mixed_bfloat16": (cpu_has_native_bf16(), "the CPU has no native bfloat16 "
                           f"({' / '.join(NATIVE_BF16_FLAGS)}); emulated, it is slower than "
                           "float32 and says nothing"),
        "mixed_float16": (gpu_supports_float16(), "no GPU of compute capability >= 7.0"),
    }
    for policy, (native, why_not) in candidates.items():
        if not native:
            print(f"{policy}: skipped, {why_not}")
            continue
        model, predict = _model(policy, args.base_filters)
        mixed[policy] = (_train_rate(model, 2, args.seconds),
                         _infer_rate(predict, 512, args.seconds))
        print(f"{policy}:")
        print(f"  train 256x256 batch 2: {mixed[policy][0]:.2f} img/s "
              f"({mixed[policy][0] / train[2]:.2f}x float32)")
        print(f"  infer 512x512: {mixed[policy][1]:.2f} img/s "
              f"({mixed[policy][1] / infer[512]:.2f}x float32)")
        del model, predict

    print("ratios (same run):")
    print(f"  training img/s, batch 2 vs batch 4: {train[2] / train[4]:.2f}x")
    print(f"  optimizer steps/s, batch 2 vs batch 4: {train[2] / 2 / (train[4] / 4):.2f}x")
    print(f"  inference time per pixel, 512² vs 256²: {infer[256] / 4 / infer[512]:.2f}x "
          "(1.00 = linear in pixels)")
    if mixed:
        print("  mixed precision vs float32 (train 256² batch 2, infer 512² batch 1): " + "; ".join(
            f"{policy} {t / train[2]:.2f}x, {i / infer[512]:.2f}x"
            for policy, (t, i) in mixed.items()))
    else:
        print("  mixed precision vs float32: none runs natively here, float32 only (1.00x)")


if __name__ == "__main__":
    main()
