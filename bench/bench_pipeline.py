"""Time every component of one fresh pipeline run and compare with the issue's target.

Target: all components but the Trainer under 60 s together on the membrane data. Prints the
per-component seconds, their share of the run, and the ratio to the target.
Usage: python bench/bench_pipeline.py [--profile test] [--workdir bench_out/pipeline]
"""

import argparse
import shutil

import unet_tfx  # noqa: F401  (legacy Keras before TensorFlow)
from unet_tfx.config import load_profile
from unet_tfx.pipeline.local_runner import run_local

TARGET_NON_TRAINER_SECONDS = 60.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--profile", default="test")
    parser.add_argument("--workdir", default="bench_out/pipeline")
    args = parser.parse_args()
    shutil.rmtree(args.workdir, ignore_errors=True)
    config = load_profile(args.profile, examples_dir=f"{args.workdir}/examples",
                          pipeline_root=f"{args.workdir}/tfx",
                          serving_dir=f"{args.workdir}/serving")
    summary = run_local(config)
    print(summary.format())
    if not summary.succeeded:
        raise SystemExit(1)
    total = sum(c.seconds for c in summary.components)
    non_trainer = total - sum(c.seconds for c in summary.components if c.node == "Trainer")
    print(f"components total {total:.1f} s, all but the Trainer {non_trainer:.1f} s")
    print(f"ratio to the {TARGET_NON_TRAINER_SECONDS:.0f} s target: "
          f"{non_trainer / TARGET_NON_TRAINER_SECONDS:.2f} (≤ 1.00 meets it)")
    print(f"runner overhead beyond components: {summary.wall_seconds - total:.1f} s")


if __name__ == "__main__":
    main()
