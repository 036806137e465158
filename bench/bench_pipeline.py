"""Time every component of fresh pipeline runs under two DirectRunner modes, against the target.

Target: all components but the Trainer under 60 s together on the membrane data. Runs the
pipeline from scratch with Beam's multi-processing DirectRunner (all cores) and with the
in-process one (the local default), then prints per-component seconds and the ratios.
Usage: python bench/bench_pipeline.py [--profile test] [--workdir bench_out/pipeline]
"""

import argparse
import shutil

import unet_tfx  # noqa: F401  (legacy Keras before TensorFlow)
from unet_tfx.config import load_profile
from unet_tfx.pipeline.local_runner import run_local

TARGET_NON_TRAINER_SECONDS = 60.0
# DirectRunner worker processes: 0 = every core (multi-processing), 1 = in-process (the default).
MODES = {"multi_processing": 0, "in_memory": 1}


def non_trainer_seconds(summary) -> float:
    return sum(c.seconds for c in summary.components if c.node != "Trainer")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--profile", default="test")
    parser.add_argument("--workdir", default="bench_out/pipeline")
    args = parser.parse_args()
    results = {}
    for mode, workers in MODES.items():
        workdir = f"{args.workdir}/{mode}"
        shutil.rmtree(workdir, ignore_errors=True)
        config = load_profile(args.profile, examples_dir=f"{workdir}/examples",
                              pipeline_root=f"{workdir}/tfx", serving_dir=f"{workdir}/serving")
        summary = run_local(config, beam_workers=workers)
        if not summary.succeeded:
            raise SystemExit(f"{mode}: {summary.error}")
        results[mode] = summary
    print(f"\n{'component':<32}" + "".join(f"{mode:>18}" for mode in results))
    for component in results["multi_processing"].components:
        row = [next(c.seconds for c in s.components if c.node == component.node)
               for s in results.values()]
        print(f"{component.node:<32}" + "".join(f"{seconds:>17.1f}s" for seconds in row))
    for mode, summary in results.items():
        seconds = non_trainer_seconds(summary)
        ratio = seconds / TARGET_NON_TRAINER_SECONDS
        print(f"{mode}: all but the Trainer {seconds:.1f} s = {ratio:.2f} x the "
              f"{TARGET_NON_TRAINER_SECONDS:.0f} s target (<= 1.00 meets it); "
              f"wall {summary.wall_seconds:.0f} s")
    multi, single = (non_trainer_seconds(results[m]) for m in MODES)
    print(f"multi_processing / in_memory, all but the Trainer: {multi / single:.2f}")


if __name__ == "__main__":
    main()
