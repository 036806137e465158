"""What test-time augmentation buys: a trained model's `serving_tta` against its
`serving_default` on the eval images, in quality (membrane Dice, mean Dice, Rand score, per
image and overall) and in time per image, measured in one run.

Usage: python bench/bench_tta.py --model-dir out/serving/unet_membrane --examples out/examples/eval
(the model base's newest version, or one SavedModel folder).
"""

import argparse
import os
import time

import benchlib
import numpy as np
import tensorflow as tf

from unet_tfx.ingest import read_examples
from unet_tfx.ingest.decode import encode_png
from unet_tfx.serving.local_model import latest_version
from unet_tfx.trainer.export import PROBABILITIES, TTA_SIGNATURE
from unet_tfx.trainer.metrics import MeanDice, MembraneDice, RandScore

METRICS = {"membrane_dice": MembraneDice, "mean_dice": MeanDice, "rand_score": RandScore}


def evaluate(signature, examples: list[dict]) -> dict:
    """Pooled metrics over the images, each image's Rand score, and seconds per image."""
    metrics = {name: cls() for name, cls in METRICS.items()}
    per_image, seconds = [], 0.0
    for example in examples:
        started = time.perf_counter()
        probabilities = signature(images=tf.constant([encode_png(example["image"])]))[
            PROBABILITIES].numpy()
        seconds += time.perf_counter() - started
        truth = (example["mask"] > 0).astype(np.float32)[None, ..., None]
        for metric in metrics.values():
            metric.update_state(truth, probabilities)
        one = RandScore()
        one.update_state(truth, probabilities)
        per_image.append(float(one.result()))
    return {**{name: float(m.result()) for name, m in metrics.items()},
            "rand_per_image": per_image, "seconds_per_image": seconds / len(examples)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--examples", required=True, help="a split folder of ingested examples")
    args = parser.parse_args()
    model_dir = (args.model_dir if os.path.exists(os.path.join(args.model_dir, "saved_model.pb"))
                 else latest_version(args.model_dir))
    signatures = tf.saved_model.load(model_dir).signatures
    examples = read_examples(args.examples)
    results = {}
    for name in ("serving_default", TTA_SIGNATURE):  # a first call each, to build the graph
        signatures[name](images=tf.constant([encode_png(examples[0]["image"])]))
        results[name] = evaluate(signatures[name], examples)
        print(f"{name}: " + ", ".join(f"{k} {v:.4f}" for k, v in results[name].items()
                                      if k != "rand_per_image"))
    plain, tta = results["serving_default"], results[TTA_SIGNATURE]
    gains = {k: tta[k] - plain[k] for k in METRICS}
    cost = tta["seconds_per_image"] / plain["seconds_per_image"]
    benchlib.save_results("bench_tta", {"model": model_dir, "images": len(examples),
                                        "results": results, "gains": gains, "time_ratio": cost})
    plt = benchlib.pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.plot(plain["rand_per_image"], tta["rand_per_image"], "o")
    low = min(plain["rand_per_image"] + tta["rand_per_image"])
    ax.plot([low, 1], [low, 1], color="grey", linewidth=0.8)
    ax.set_xlabel("Rand score, serving_default")
    ax.set_ylabel("Rand score, serving_tta")
    ax.set_title(f"TTA per eval image: Rand {gains['rand_score']:+.3f}, {cost:.1f}x the time")
    benchlib.save_chart("bench_tta", fig)
    print("TTA - plain: " + ", ".join(f"{k} {v:+.4f}" for k, v in gains.items())
          + f"; time per image {cost:.2f}x")


if __name__ == "__main__":
    main()
