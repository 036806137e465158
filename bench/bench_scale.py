"""Benchmark 1, the whole pipeline at scale: `unet-tfx run --profile test` on N synthetic 512²
pairs (bench/synth.py), wall time per image and peak resident memory of the whole process tree.

Each N runs in a child process, from scratch (fresh pipeline root), with enough training steps
to read every training example once (ceil(train / batch) steps) in 2 epochs, as the test
profile has: the Trainer's per-epoch validation reads the whole eval split, so a fixed
steps_per_epoch would make its cost grow as N² (see the report). The parent polls the resident
memory of the child and all its descendants (Beam workers included) every 0.5 s and splits the
peak by component from the run's "Component X is running/finished" lines. A run whose tree
passes --max-rss-gb is killed (the machine is protected; the result says so).
Targets: time per image at the largest N <= 1.2 x at the smallest; peak < 10 GB at every N.
Usage: python bench/bench_scale.py [--counts 500 5000] [--beam-workers 1] [--max-rss-gb 16]
"""

import argparse
import json
import logging
import math
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import benchlib
import synth

TIME_TARGET = 1.2
MEMORY_TARGET_GB = 10.0
EVAL_SHARE = 0.2
COMPONENT_LINE = re.compile(r"Component (\S+) is (running|finished)")


# ----------------------------------------------------------------------------- child
def child(spec_path: str) -> int:
    """Run the pipeline as `unet-tfx run` does; write the summary and component events."""
    from unet_tfx.config import load_profile
    from unet_tfx.pipeline.local_runner import run_local

    spec = json.loads(Path(spec_path).read_text())
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s "
                        "%(message)s", datefmt="%H:%M:%S", force=True)  # over absl's handler
    logging.getLogger("absl").addFilter(  # of TFX's INFO chatter, the component lines only
        lambda r: r.levelno > logging.INFO or bool(COMPONENT_LINE.match(r.getMessage())))
    events = []

    class Recorder(logging.Handler):
        def emit(self, record):
            found = COMPONENT_LINE.match(record.getMessage())
            if found:
                events.append((record.created, found.group(1), found.group(2)))

    logging.getLogger().addHandler(Recorder())
    if not spec.get("transform_statistics", True):  # a measurement: Transform without TFDV
        import functools

        from tfx import v1 as tfx

        tfx.components.Transform = functools.partial(tfx.components.Transform,
                                                     disable_statistics=True)
    config = load_profile("test", examples_dir=spec["examples_dir"],
                          pipeline_root=spec["pipeline_root"], serving_dir=spec["serving_dir"],
                          train_steps=spec["train_steps"],
                          steps_per_epoch=spec["steps_per_epoch"])
    started = time.time()
    summary = run_local(config, beam_workers=spec["beam_workers"])
    try:
        events += _execution_spans(config)
    except Exception as error:  # noqa: BLE001  (the log lines remain)
        logging.warning("no execution spans from ML Metadata: %s", error)
    result = {
        "succeeded": summary.succeeded, "error": None if summary.error is None
        else str(summary.error)[:2000], "started": started, "wall_seconds": time.time() - started,
        "components": [{"node": c.node, "state": c.state, "seconds": c.seconds}
                       for c in summary.components],
        "metrics": summary.metrics, "blessed": summary.blessed, "pushed_to": summary.pushed_to,
        "events": events,
    }
    Path(spec["result"]).write_text(json.dumps(result, indent=1, default=str))
    print(summary.format())
    return 0 if summary.succeeded else 1


def _execution_spans(config) -> list:
    """(time, node, running|finished) of every execution of the newest run, from ML Metadata:
    libraries imported during the run may silence the log lines, the metadata stays."""
    from ml_metadata.metadata_store import metadata_store
    from tfx import v1 as tfx

    from unet_tfx.pipeline.local_runner import metadata_path
    from unet_tfx.pipeline.run_summary import _node_name, pipeline_runs

    store = metadata_store.MetadataStore(
        tfx.orchestration.metadata.sqlite_metadata_connection_config(metadata_path(config)))
    run = pipeline_runs(store)[-1]
    node_type = store.get_context_type("node")
    spans = []
    for execution in store.get_executions_by_context(run.id):
        node = _node_name(store, execution.id, node_type.id)
        spans.append((execution.create_time_since_epoch / 1e3, node, "running"))
        spans.append((execution.last_update_time_since_epoch / 1e3, node, "finished"))
    return spans


# ----------------------------------------------------------------------------- parent
def _folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def examples_for(count: int, seed: int = 0) -> tuple[Path, dict]:
    """The synthetic examples folder for `count`, written unless already there."""
    folder = benchlib.WORK / "scale" / f"synth-{count}"
    manifest = folder / synth.MANIFEST
    if manifest.exists() and json.loads(manifest.read_text())["count"] == count:
        return folder, {"reused": True}
    started = time.monotonic()
    synth.synthesize(folder, count, eval_share=EVAL_SHARE, seed=seed, overwrite=True)
    return folder, {"reused": False, "seconds": time.monotonic() - started}


def run_one(count: int, beam_workers: int, max_rss: int, train_steps: int = 0,
            transform_statistics: bool = True) -> dict:
    examples, synthesis = examples_for(count)
    manifest = json.loads((examples / synth.MANIFEST).read_text())
    train = manifest["splits"]["train"]["count"]
    batch = 2  # the test profile's
    steps = train_steps or math.ceil(train / batch)
    suffix = "" if transform_statistics else "-nostats"
    workdir = benchlib.WORK / "scale" / f"run-{count}-w{beam_workers}{suffix}"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    spec = {"examples_dir": str(examples), "pipeline_root": str(workdir / "tfx"),
            "serving_dir": str(workdir / "serving"), "train_steps": steps,
            "steps_per_epoch": math.ceil(steps / 2), "beam_workers": beam_workers,
            "transform_statistics": transform_statistics, "result": str(workdir / "result.json")}
    (workdir / "spec.json").write_text(json.dumps(spec))
    print(f"N={count}: {train} train / {manifest['splits']['eval']['count']} eval, {steps} "
          f"steps, Beam workers {beam_workers}; log: {workdir / 'log.txt'}", flush=True)
    started = time.time()
    with open(workdir / "log.txt", "w") as log:
        command = [sys.executable, __file__, "--child", str(workdir / "spec.json")]
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        with benchlib.TreeMemory(process.pid, limit_bytes=max_rss) as memory:
            returncode = process.wait()
    wall = time.time() - started
    result = json.loads(Path(spec["result"]).read_text()) if Path(spec["result"]).exists() else {}
    components = _component_memory(result.get("events", []), memory, started, wall)
    run = {
        "count": count, "train": train, "eval": manifest["splits"]["eval"]["count"],
        "train_steps": steps, "beam_workers": beam_workers, "returncode": returncode,
        "transform_statistics": transform_statistics,
        "succeeded": bool(result.get("succeeded")) and memory.killed is None,
        "error": result.get("error"), "killed_at_bytes": memory.killed,
        "wall_seconds": wall, "seconds_per_image": wall / count,
        "peak_rss_bytes": memory.peak, "components": components,
        "component_seconds": {c["node"]: c["seconds"] for c in result.get("components", [])},
        "metrics": result.get("metrics"), "synthesis": synthesis,
        "examples_bytes": _folder_bytes(examples),
        "rss_timeline": [(round(t - started, 1), rss) for t, rss in memory.samples[::4]],
    }
    status = "ok" if run["succeeded"] else (
        f"KILLED at {memory.killed / benchlib.GIB:.1f} GiB" if memory.killed else "FAILED")
    print(f"N={count}: {status}, {wall:.0f} s = {wall / count:.3f} s/image, peak "
          f"{memory.peak / benchlib.GIB:.2f} GiB", flush=True)
    for c in components:
        print(f"  {c['node']:<28}{c['seconds']:>8.1f} s{c['peak_rss_bytes'] / benchlib.GIB:>8.2f}"
              " GiB peak", flush=True)
    return run


def _component_memory(events: list, memory, started: float, wall: float) -> list:
    """Seconds and peak tree RSS per component, from its running/finished lines."""
    spans: dict[str, list] = {}
    for created, node, state in events:  # log lines first, then ML Metadata's (which win)
        span = spans.setdefault(node, [created, None])
        if state == "running":
            span[0] = created
        else:
            span[1] = created
    return [{"node": node, "seconds": (end or started + wall) - begin,
             "peak_rss_bytes": memory.peak_between(begin, end or started + wall)}
            for node, (begin, end) in spans.items()]


def chart(runs: list, ratio, path_name: str = "bench_scale") -> None:
    plt = benchlib.pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8))
    labels = [f"N={r['count']}" for r in runs]
    left.bar(labels, [r["seconds_per_image"] for r in runs], color="tab:blue")
    left.set_ylabel("wall s / image (whole run)")
    title = "time per image" + (f": {ratio:.2f}x (target <= {TIME_TARGET})" if ratio else "")
    left.set_title(title)
    for r in runs:
        times = [t for t, _ in r["rss_timeline"]]
        right.plot(times, [rss / benchlib.GIB for _, rss in r["rss_timeline"]],
                   label=f"N={r['count']} (peak {r['peak_rss_bytes'] / benchlib.GIB:.1f} GiB)")
    right.axhline(MEMORY_TARGET_GB * 1e9 / benchlib.GIB, color="red", linestyle="--",
                  label=f"{MEMORY_TARGET_GB:g} GB target")
    right.set_xlabel("seconds")
    right.set_ylabel("process tree RSS, GiB")
    right.set_title("resident memory of the whole run")
    right.legend(fontsize=8)
    benchlib.save_chart(path_name, fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--counts", type=int, nargs="+", default=[500, 5000])
    parser.add_argument("--beam-workers", type=int, default=1,
                        help="as unet-tfx run --beam-workers (1: in-process)")
    parser.add_argument("--max-rss-gb", type=float, default=16.0,
                        help="kill a run whose process tree passes this (GB)")
    parser.add_argument("--name", default="bench_scale", help="results/chart file name")
    measure = parser.add_argument_group("measurements, not the benchmark")
    measure.add_argument("--train-steps", type=int, default=0,
                         help="instead of one pass over the training examples")
    measure.add_argument("--no-transform-statistics", dest="transform_statistics",
                         action="store_false", help="Transform(disable_statistics=True)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child)

    started = time.monotonic()
    runs = [run_one(count, args.beam_workers, int(args.max_rss_gb * 1e9), args.train_steps,
                    args.transform_statistics)
            for count in sorted(args.counts)]
    ok = [r for r in runs if r["succeeded"]]
    small, large = runs[0], runs[-1]
    ratio = (large["seconds_per_image"] / small["seconds_per_image"]
             if len(runs) > 1 and small["succeeded"] and large["succeeded"] else None)
    peak = max(r["peak_rss_bytes"] for r in runs)
    benchlib.save_results(args.name, {
        "target": f"time per image at the largest N <= {TIME_TARGET} x at the smallest; "
                  f"peak RSS < {MEMORY_TARGET_GB} GB",
        "time_ratio": ratio, "peak_rss_bytes": peak, "runs": runs,
        "seconds": time.monotonic() - started,
    })
    chart(runs, ratio, args.name)
    memory_ratio = peak / (MEMORY_TARGET_GB * 1e9)
    failed = [r["count"] for r in runs if not r["succeeded"]]
    time_part = (f"time per image N={large['count']} / N={small['count']}: {ratio:.2f}x "
                 f"{benchlib.verdict(ratio, TIME_TARGET, at_most=True)}" if ratio is not None
                 else f"time ratio not measured (runs: {', '.join(str(r['count']) for r in runs)}"
                 f"{'; failed: ' + ', '.join(map(str, failed)) if failed else ''})")
    print(f"{time_part}; peak RSS {peak / 1e9:.1f} GB = {memory_ratio:.2f}x the "
          f"{MEMORY_TARGET_GB:g} GB target {benchlib.verdict(memory_ratio, 1.0, at_most=True)}")
    return 0 if len(ok) == len(runs) else 1


if __name__ == "__main__":
    sys.exit(main())
