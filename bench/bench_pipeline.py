"""Benchmark 5, pipeline overhead: every component but the Trainer on the bundled data, timed in
fresh runs under both DirectRunner modes, against the target.

Target: all components but the Trainer under 60 s together on the membrane data, in the local
default mode (in-process). Runs the pipeline from scratch with Beam's multi-processing
DirectRunner (all cores) and with the in-process one, then prints per-component seconds and the
ratios, writes bench/results/bench_pipeline.{json,png}. The in-process run's Transform output
is what bench_trainer.py and bench_serving.py reuse.
Usage: python bench/bench_pipeline.py [--profile test] [--workdir bench_out/pipeline]
"""

import argparse
import shutil
import time

import benchlib

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
    parser.add_argument("--workdir", default=str(benchlib.WORK / "pipeline"))
    args = parser.parse_args()
    started = time.monotonic()
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
        print(f"{mode}: all but the Trainer {seconds:.1f} s = "
              f"{seconds / TARGET_NON_TRAINER_SECONDS:.2f} x the "
              f"{TARGET_NON_TRAINER_SECONDS:.0f} s target; wall {summary.wall_seconds:.0f} s")
    multi, single = (non_trainer_seconds(results[m]) for m in MODES)
    print(f"multi_processing / in_memory, all but the Trainer: {multi / single:.2f}")
    benchlib.save_results("bench_pipeline", {
        "target": f"all components but the Trainer <= {TARGET_NON_TRAINER_SECONDS:g} s "
                  "(in-process DirectRunner, the local default)",
        "profile": args.profile, "ratio": single / TARGET_NON_TRAINER_SECONDS,
        "multi_over_in_memory": multi / single, "seconds": time.monotonic() - started,
        "modes": {mode: {"non_trainer_seconds": non_trainer_seconds(summary),
                         "wall_seconds": summary.wall_seconds,
                         "components": {c.node: c.seconds for c in summary.components}}
                  for mode, summary in results.items()},
    })
    plt = benchlib.pyplot()
    fig, ax = plt.subplots(figsize=(8, 3.6))
    nodes = [c.node for c in results["in_memory"].components if c.node != "Trainer"]
    for offset, (mode, summary) in zip((-0.2, 0.2), results.items(), strict=True):
        seconds = {c.node: c.seconds for c in summary.components}
        ax.bar([i + offset for i in range(len(nodes))], [seconds.get(n, 0) for n in nodes], 0.4,
               label=f"{mode}: {non_trainer_seconds(summary):.0f} s in all")
    ax.set_xticks(range(len(nodes)), nodes, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("seconds")
    ax.set_title(f"Components but the Trainer, bundled data (target {TARGET_NON_TRAINER_SECONDS:g}"
                 " s in all)")
    ax.legend()
    benchlib.save_chart("bench_pipeline", fig)
    ratio = single / TARGET_NON_TRAINER_SECONDS
    print(f"all components but the Trainer, in-process (default): {single:.1f} s = {ratio:.2f}x "
          f"the {TARGET_NON_TRAINER_SECONDS:g} s target "
          f"{benchlib.verdict(ratio, 1.0, at_most=True)}")


if __name__ == "__main__":
    main()
