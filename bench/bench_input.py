"""Benchmark 2, the Trainer's input: patches/s of its real tf.data pipeline alone, reading the
raw ingested examples through the Transform graph (augmentation on), against the rate the model
consumes them in training.

Target: input ÷ model >= 3 at the `quick` profile with N = 5,000 512² examples (one GZIP file of
raw examples: 64 synthetic pairs from bench/synth.py, the file concatenated up to N; ~0.7 GB,
reused across runs), transformed by the Transform graph of bench_pipeline.py's run. At that size
the input streams (N x 2 MiB > the 2,048 MiB cache budget). Also measured, for the record: the
cached input on the first 400 examples, and the `test` profile (64² patches, 4-filter model)
that benchmark 1 trains, whose model is far faster.
Usage: python bench/bench_input.py [--count 5000] [--seconds 20]
"""

import argparse
import time

import benchlib
import tensorflow as tf
import tensorflow_transform as tft

from unet_tfx.config import load_profile
from unet_tfx.trainer.dataset import choose_input_mode, training_dataset
from unet_tfx.trainer.model import build_from_config, compile_from_config
from unet_tfx.trainer.precision import global_precision, resolve_precision

TARGET = 3.0


def input_rate(files, spec, cfg, seconds: float, warmup_batches: int = 5) -> float:
    """Patches/s from `training_dataset` alone, after `warmup_batches` (buffers filled)."""
    iterator = iter(training_dataset([str(f) for f in files], spec, cfg))
    for _ in range(warmup_batches):  # the first fills the shuffle buffer
        next(iterator)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        images, masks = next(iterator)
        count += int(images.shape[0])
    return count / (time.perf_counter() - start)


def model_rate(cfg, seconds: float) -> float:
    """Patches/s the model trains on (train_on_batch on a fixed batch), as run_fn compiles it."""
    policy, _ = resolve_precision(cfg.precision)
    with global_precision(policy):
        tf.keras.utils.set_random_seed(cfg.seed)
        model = compile_from_config(build_from_config(cfg), cfg)
        x = tf.random.normal([cfg.batch_size, cfg.patch_size, cfg.patch_size, 1])
        y = tf.cast(tf.random.uniform(x.shape) > 0.22, tf.float32)
        for _ in range(3):
            model.train_on_batch(x, y)
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            model.train_on_batch(x, y)
            count += cfg.batch_size
        return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=5000, help="examples")
    parser.add_argument("--seconds", type=float, default=20.0, help="per measurement")
    args = parser.parse_args()

    started = time.monotonic()
    path = benchlib.synthetic_examples_file(
        benchlib.WORK / "input" / f"examples-{args.count}.gz", args.count)
    small = benchlib.synthetic_examples_file(benchlib.WORK / "input" / "examples-400.gz", 400)
    print(f"data: {path} ({path.stat().st_size / 1e9:.2f} GB) ready in "
          f"{time.monotonic() - started:.0f} s")
    # The Transform graph of the bundled data (512² grey), applied to the synthetic examples.
    spec = tft.TFTransformOutput(benchlib.pipeline_transform_output()["transform_graph"])
    quick = load_profile("quick").training
    test = load_profile("test").training
    results = {}
    for profile, cfg in (("quick", quick), ("test", test)):
        mode = choose_input_mode([str(path)], spec, cfg.cache_budget_mb)
        results[profile] = {
            "patch_size": cfg.patch_size, "batch_size": cfg.batch_size,
            "base_filters": cfg.base_filters, "mode": mode.name, "mode_reason": mode.reason,
            "input_patches_per_s": input_rate([path], spec, cfg, args.seconds),
            "model_patches_per_s": model_rate(cfg, args.seconds),
        }
        r = results[profile]
        r["ratio"] = r["input_patches_per_s"] / r["model_patches_per_s"]
        print(f"{profile}: input {r['input_patches_per_s']:.1f} patches/s ({mode.name}), model "
              f"{r['model_patches_per_s']:.1f} patches/s: {r['ratio']:.1f}x")
    cached_mode = choose_input_mode([str(small)], spec, quick.cache_budget_mb)
    cached = input_rate([small], spec, quick, args.seconds,  # after one pass fills the cache
                        warmup_batches=400 // quick.batch_size + 5)
    results["quick_cached_400"] = {"mode": cached_mode.name, "input_patches_per_s": cached}
    print(f"quick, 400 examples ({cached_mode.name}): input {cached:.1f} patches/s "
          f"({cached / results['quick']['input_patches_per_s']:.2f}x the streamed input)")

    ratio = results["quick"]["ratio"]
    benchlib.save_results("bench_input", {
        "target": f"input / model >= {TARGET} at the quick profile, N = {args.count}",
        "count": args.count, "ratio": ratio, "results": results,
        "seconds": time.monotonic() - started,
    })
    plt = benchlib.pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 3.4))
    labels, inputs, models = [], [], []
    for profile in ("quick", "test"):
        labels.append(f"{profile} ({results[profile]['patch_size']}², batch "
                      f"{results[profile]['batch_size']})")
        inputs.append(results[profile]["input_patches_per_s"])
        models.append(results[profile]["model_patches_per_s"])
    positions = range(len(labels))
    ax.bar([p - 0.2 for p in positions], inputs, 0.4, label=f"input, N={args.count} (streamed)")
    ax.bar([p + 0.2 for p in positions], models, 0.4, label="model training")
    ax.set_xticks(list(positions), labels)
    ax.set_ylabel("patches / s")
    ax.set_yscale("log")
    ax.set_title(f"Trainer input vs model: quick {ratio:.1f}x (target >= {TARGET:g}x)")
    ax.legend()
    benchlib.save_chart("bench_input", fig)
    print(f"Trainer input / model training, quick profile, N={args.count}: {ratio:.2f}x "
          f"{benchlib.verdict(ratio, TARGET, at_most=False)}")


if __name__ == "__main__":
    main()
