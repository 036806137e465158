"""Benchmark 4, serving overhead: `serving_default` on PNG bytes ÷ the bare forward pass at 512².

Exports the seed U-Net (the `quick` profile's model; weights untrained, which does not change
the time) with the real serving signatures and the Transform graph of the bundled data (from
bench_pipeline.py's run, else a fresh test-profile run), loads the SavedModel as TF Serving
does, and times one request of one 512² PNG (decode, header checks, Transform's statistics,
padding, model, crop) against the in-memory model on the float tensor. Rounds alternate
between the two; the ratio is of the median call times. Target: <= 1.10.
Usage: python bench/bench_serving.py [--rounds 7] [--calls 6]
"""

import argparse
import shutil
import statistics
import time

import benchlib
import tensorflow as tf
import tensorflow_transform as tft

from unet_tfx.config import load_profile
from unet_tfx.trainer.export import export_serving_model
from unet_tfx.trainer.model import build_unet

TARGET = 1.10


def _time_calls(fn, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=6, help="calls per round and function")
    args = parser.parse_args()

    started = time.monotonic()
    transform = benchlib.pipeline_transform_output()
    cfg = load_profile("quick").training
    tf.keras.utils.set_random_seed(0)
    model = build_unet((None, None, 1), cfg.base_filters, cfg.depth)
    export_dir = benchlib.WORK / "serving" / "seed_unet"
    shutil.rmtree(export_dir, ignore_errors=True)
    export_serving_model(model, tft.TFTransformOutput(transform["transform_graph"]),
                         str(export_dir), channels=1, depth=cfg.depth)
    served = tf.saved_model.load(str(export_dir)).signatures["serving_default"]
    png = (benchlib.REPO / "data" / "membrane" / "test" / "0.png").read_bytes()
    request = tf.constant([png])
    pixels = tf.cast(tf.io.decode_png(png, channels=1), tf.float32)[None]
    bare = tf.function(lambda x: model(x, training=False))

    def serve():
        return served(images=request)["probabilities"].numpy()

    def forward():
        return bare(pixels).numpy()

    assert serve().shape == forward().shape == (1, 512, 512, 1)
    for fn in (serve, forward, serve, forward):  # warm-up: tracing, allocation
        fn()
    serving, bare_times = [], []
    for _ in range(args.rounds):
        serving.append(_time_calls(serve, args.calls))
        bare_times.append(_time_calls(forward, args.calls))
    serve_s, bare_s = statistics.median(serving), statistics.median(bare_times)
    ratio = serve_s / bare_s
    print(f"serving_default (1 PNG, 512²): {serve_s * 1000:.0f} ms; bare forward: "
          f"{bare_s * 1000:.0f} ms (medians of {args.rounds} rounds x {args.calls} calls)")
    benchlib.save_results("bench_serving", {
        "target": f"serving_default / bare forward at 512² <= {TARGET}",
        "ratio": ratio, "serving_ms": serve_s * 1000, "bare_ms": bare_s * 1000,
        "serving_rounds_ms": [t * 1000 for t in serving],
        "bare_rounds_ms": [t * 1000 for t in bare_times],
        "model_parameters": model.count_params(), "seconds": time.monotonic() - started,
    })
    plt = benchlib.pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.2))
    rounds = range(1, args.rounds + 1)
    ax.plot(rounds, [t * 1000 for t in serving], marker="o", label="serving_default (PNG bytes)")
    ax.plot(rounds, [t * 1000 for t in bare_times], marker="o", label="bare forward (tensor)")
    ax.set_xlabel("round")
    ax.set_ylabel("ms per 512² image")
    ax.set_ylim(bottom=0)
    ax.set_title(f"Serving overhead {ratio:.2f}x (target <= {TARGET:g}x)")
    ax.legend()
    benchlib.save_chart("bench_serving", fig)
    print(f"serving_default / bare forward, 512²: {ratio:.2f}x "
          f"{benchlib.verdict(ratio, TARGET, at_most=True)}")


if __name__ == "__main__":
    main()
