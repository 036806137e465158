"""Measurement behind a decision: how should the Trainer's input be stored?

A materializing Transform wrote float32 `image_xf` (z-scored) and `mask_xf` ({0, 1}): 2 MiB per
512² example once parsed. Two alternatives, normalizing in the input pipeline with Transform's
statistics instead (the pipeline now takes the second):
- "uint8 + statistics": Transform writes the decoded uint8 pixels (raw bytes features);
- "raw PNG, not materialized": Transform only analyzes (Transform(materialize=False)) and the
  Trainer reads the ingested PNG examples, decoding them in tf.data as the Transform graph does.
On the same synthetic pairs (bench/synth.py) this measures, per example: GZIP bytes on disk,
the time to serialize and compress it (Transform's write side), memory when cached, and the
streamed training input's patches/s (the quick profile's patches and batch, augmentation on),
each format read from one file of N examples.
Usage: python bench/bench_compact.py [--count 1000] [--distinct 32] [--seconds 15]
"""

import argparse
import dataclasses
import time
import zlib

import benchlib
import numpy as np
import synth
import tensorflow as tf

from unet_tfx import features as F
from unet_tfx.config import load_profile
from unet_tfx.ingest.records import make_example
from unet_tfx.trainer.dataset import _augment

RAW_IMAGE, RAW_MASK = "image_u8", "mask_u8"


def float_example(image, mask, mean: float, std: float) -> bytes:
    """A serialized example as a materializing Transform wrote it: z-scored float image, {0, 1}
    float mask, the statistics per example."""
    def floats(values):
        return tf.train.Feature(float_list=tf.train.FloatList(
            value=np.asarray(values, np.float32).ravel()))

    feature = {F.IMAGE_XF: floats((np.asarray(image, np.float32) - mean) / std),
               F.MASK_XF: floats(np.asarray(mask) > 0),
               F.IMAGE_MEAN_XF: floats([mean]), F.IMAGE_STD_XF: floats([std])}
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def float_dataset(path, cfg, size: int) -> tf.data.Dataset:
    """The streamed training input reading materialized float examples."""
    image = tf.io.FixedLenFeature([size, size, 1], tf.float32)
    spec = {F.IMAGE_XF: image, F.MASK_XF: image}

    def parse(serialized, seed):
        parsed = tf.io.parse_single_example(serialized, spec)
        return _augment(parsed[F.IMAGE_XF], parsed[F.MASK_XF], cfg, seed)

    return _streamed(path, parse, cfg)


def _streamed(path, parse, cfg) -> tf.data.Dataset:
    records = tf.data.TFRecordDataset(str(path), compression_type="GZIP",
                                      buffer_size=4 * 2**20).repeat().shuffle(128, seed=0)
    seeds = tf.data.Dataset.random(seed=0).batch(2)
    return (tf.data.Dataset.zip((records, seeds)).map(parse, num_parallel_calls=tf.data.AUTOTUNE)
            .batch(cfg.batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE))


def compact_example(image, mask, mean: float, std: float) -> bytes:
    def raw(values):
        return tf.train.Feature(bytes_list=tf.train.BytesList(
            value=[np.ascontiguousarray(values, np.uint8).tobytes()]))

    def floats(values):
        return tf.train.Feature(float_list=tf.train.FloatList(value=values))

    feature = {RAW_IMAGE: raw(image), RAW_MASK: raw(np.asarray(mask) > 0),
               F.IMAGE_MEAN_XF: floats([mean]), F.IMAGE_STD_XF: floats([std])}
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def write(path, serialized: list, count: int):
    with tf.io.TFRecordWriter(str(path), options="GZIP") as writer:
        for i in range(count):
            writer.write(serialized[i % len(serialized)])


def compact_dataset(path, cfg, size: int) -> tf.data.Dataset:
    """The streamed training input, reading the compact format and normalizing on the fly."""
    spec = {RAW_IMAGE: tf.io.FixedLenFeature([], tf.string),
            RAW_MASK: tf.io.FixedLenFeature([], tf.string),
            F.IMAGE_MEAN_XF: tf.io.FixedLenFeature([1], tf.float32),
            F.IMAGE_STD_XF: tf.io.FixedLenFeature([1], tf.float32)}

    def parse(serialized, seed):
        parsed = tf.io.parse_single_example(serialized, spec)
        image = tf.reshape(tf.io.decode_raw(parsed[RAW_IMAGE], tf.uint8), [size, size, 1])
        mask = tf.reshape(tf.io.decode_raw(parsed[RAW_MASK], tf.uint8), [size, size, 1])
        image = F.normalize(image, parsed[F.IMAGE_MEAN_XF][0], parsed[F.IMAGE_STD_XF][0])
        return _augment(image, tf.cast(mask, tf.float32), cfg, seed)

    return _streamed(path, parse, cfg)


def png_dataset(path, cfg, mean: float, std: float) -> tf.data.Dataset:
    """The streamed training input reading ingested PNG examples, decoding and normalizing."""
    spec = {F.IMAGE: tf.io.FixedLenFeature([], tf.string),
            F.MASK: tf.io.FixedLenFeature([], tf.string)}

    def parse(serialized, seed):
        parsed = tf.io.parse_single_example(serialized, spec)
        image = F.normalize(tf.io.decode_png(parsed[F.IMAGE], channels=1), mean, std)
        mask = F.binarize_mask(tf.io.decode_png(parsed[F.MASK], channels=1))
        return _augment(image, mask, cfg, seed)

    return _streamed(path, parse, cfg)


def rate(dataset, seconds: float, warmup: int = 5) -> float:
    iterator = iter(dataset)
    for _ in range(warmup):
        next(iterator)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        count += int(next(iterator)[0].shape[0])
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--distinct", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=15.0)
    args = parser.parse_args()
    started = time.monotonic()
    size = 512
    pairs = [synth.pair(0, i, size) for i in range(args.distinct)]
    pixels = np.stack([p[0] for p in pairs]).astype(np.float64)
    mean, std = float(pixels.mean()), float(pixels.std())
    cfg = dataclasses.replace(load_profile("quick").training, cache_budget_mb=0)  # streamed
    # name: (file stem, example writer, streamed input, bytes per example when cached)
    formats = {
        "float32 materialized": (
            "float", lambda im, m: float_example(im[..., None], m[..., None], mean, std),
            lambda path: float_dataset(path, cfg, size), 2 * size * size * 4),
        "uint8 + statistics": (
            "uint8", lambda im, m: compact_example(im, m, mean, std),
            lambda path: compact_dataset(path, cfg, size), 2 * size * size),
        "raw PNG, not materialized": (
            "png", lambda im, m: make_example("x", im, m),
            lambda path: png_dataset(path, cfg, mean, std), None),
    }
    folder = benchlib.WORK / "compact"
    folder.mkdir(parents=True, exist_ok=True)
    results = {}
    for name, (stem, make, dataset, memory) in formats.items():
        t0 = time.perf_counter()
        serialized = [make(image, mask) for image, mask in pairs]
        serialize_s = (time.perf_counter() - t0) / len(pairs)
        t0 = time.perf_counter()
        for record in serialized:
            zlib.compress(record)
        compress_s = (time.perf_counter() - t0) / len(pairs)
        path = folder / f"{stem}-{args.count}.gz"
        write(path, serialized, args.count)
        disk = path.stat().st_size / args.count
        results[name] = {
            "disk_bytes_per_example": disk,
            # Not materialized: Transform writes nothing (ingestion wrote these PNG examples).
            "write_ms_per_example": 0.0 if stem == "png" else (serialize_s + compress_s) * 1000,
            # cached as stored (PNG: the serialized example)
            "memory_bytes_per_example": memory or float(np.mean([len(r) for r in serialized])),
            "input_patches_per_s": rate(dataset(path), args.seconds),
        }
        r = results[name]
        print(f"{name:<27} disk {disk / 1e3:6.0f} kB/example, Transform write "
              f"{r['write_ms_per_example']:5.1f} ms/example, cached "
              f"{r['memory_bytes_per_example'] / 2**20:4.2f} MiB/example, streamed input "
              f"{r['input_patches_per_s']:6.1f} patches/s", flush=True)
    before = results["float32 materialized"]
    ratios = {name: {key: r[key] / before[key] for key in before}
              for name, r in results.items() if name != "float32 materialized"}
    benchlib.save_results("bench_compact", {
        "question": "store Transform's image compactly instead of float32?",
        "count": args.count, "distinct": args.distinct, "results": results,
        "over_materialized_float32": ratios, "seconds": time.monotonic() - started,
    })
    plt = benchlib.pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.4))
    keys = ["disk_bytes_per_example", "write_ms_per_example", "memory_bytes_per_example",
            "input_patches_per_s"]
    for offset, (name, ratio) in zip((-0.2, 0.2), ratios.items(), strict=True):
        ax.bar([i + offset for i in range(len(keys))], [ratio[k] for k in keys], 0.4, label=name)
    ax.set_xticks(range(len(keys)), ["disk", "Transform write", "cached memory",
                                     "input patches/s"])
    ax.axhline(1, color="grey", linestyle="--")
    ax.set_ylabel("relative to float32 materialized")
    ax.set_title("Compact transformed storage vs materialized float32")
    ax.legend(fontsize=8)
    benchlib.save_chart("bench_compact", fig)
    print("relative to float32: " + "; ".join(
        f"{name}: disk {r['disk_bytes_per_example']:.2f}x, write {r['write_ms_per_example']:.2f}x,"
        f" cached memory {r['memory_bytes_per_example']:.2f}x, streamed input "
        f"{r['input_patches_per_s']:.2f}x" for name, r in ratios.items()))


if __name__ == "__main__":
    main()
