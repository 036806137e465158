"""Seconds to trace the quick profile's train step, with and without AutoGraph converting
Keras 2's own code (`tf_keras`; unet_tfx/trainer/autograph.py).

Each measurement runs in a fresh process (AutoGraph caches what it converted), the two modes in
alternating order. The last line is the ratio of the mean times.
Usage: python bench/bench_trace.py [--rounds 2]
"""

import argparse
import json
import subprocess
import sys
import time

import benchlib

MODES = ("tf_keras converted", "tf_keras left alone")


def trace_seconds(convert_tf_keras: bool) -> float:
    """Build and compile the quick profile's U-Net, then trace its train step once."""
    import tensorflow as tf
    from tensorflow.python.autograph.core import config

    from unet_tfx.config import load_profile
    from unet_tfx.trainer.autograph import tf_keras_rules
    from unet_tfx.trainer.model import build_from_config, compile_from_config
    from unet_tfx.trainer.precision import global_precision, resolve_precision

    if convert_tf_keras:  # as TensorFlow 2.16 does without the rule
        config.CONVERSION_RULES = tuple(rule for rule in config.CONVERSION_RULES
                                        if rule not in tf_keras_rules())
    cfg = load_profile("quick").training
    with global_precision(resolve_precision(cfg.precision)[0]):
        model = compile_from_config(build_from_config(cfg), cfg, steps=cfg.train_steps)
        shape = [cfg.batch_size, cfg.patch_size, cfg.patch_size, 1]
        batch = (tf.zeros(shape), tf.ones(shape))
        started = time.perf_counter()
        tf.function(model.train_step).get_concrete_function(batch)
        return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2,
                        help="measurements of each mode, in alternating order")
    parser.add_argument("--child", choices=("convert", "leave"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(trace_seconds(args.child == "convert")))
        return

    per_round = {mode: [] for mode in MODES}
    for round_ in range(args.rounds):
        for mode in (MODES if round_ % 2 == 0 else MODES[::-1]):
            child = "convert" if mode == MODES[0] else "leave"
            out = subprocess.run([sys.executable, __file__, "--child", child], check=True,
                                 capture_output=True, text=True).stdout
            per_round[mode].append(json.loads(out.splitlines()[-1]))
            print(f"round {round_ + 1}: {mode}: {per_round[mode][-1]:.1f} s")
    seconds = {mode: sum(values) / len(values) for mode, values in per_round.items()}
    ratio = seconds[MODES[1]] / seconds[MODES[0]]
    benchlib.save_results("bench_trace", {"seconds": seconds, "seconds_per_round": per_round,
                                          "ratio": ratio, "rounds": args.rounds})
    print(f"tracing the train step: {seconds[MODES[0]]:.1f} s with tf_keras converted, "
          f"{seconds[MODES[1]]:.1f} s left alone: {ratio:.2f}x the time")


if __name__ == "__main__":
    main()
