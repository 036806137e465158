"""What the benchmarks share: results (JSON + one PNG chart each under bench/results/), the
closing ratio line, process-tree memory polling, step timing, and synthetic examples in the
ingestion's format.

Benchmarks import this from their own folder (`python bench/bench_x.py` puts bench/ first on
sys.path).
"""

import glob
import json
import os
import platform
import threading
import time
from pathlib import Path

import unet_tfx  # noqa: F401  (legacy Keras before TensorFlow)

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
RESULTS = Path(os.environ.get("UNET_TFX_BENCH_RESULTS", BENCH_DIR / "results"))
WORK = Path(os.environ.get("UNET_TFX_BENCH_WORK", REPO / "bench_out"))
GIB = 1024**3
MIB = 1024**2


# ----------------------------------------------------------------------------- results
def machine() -> dict:
    import psutil

    return {"cpus": os.cpu_count(), "memory_gib": round(psutil.virtual_memory().total / GIB, 1),
            "python": platform.python_version(), "node": platform.node(),
            "load_average_1m_at_end": round(os.getloadavg()[0], 2)}


def save_results(name: str, data: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    record = {"benchmark": name, "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
              "machine": machine(), **data}
    path.write_text(json.dumps(record, indent=2, default=str) + "\n")
    print(f"results: {path}")
    return path


def save_chart(name: str, fig) -> Path:
    import matplotlib.pyplot as plt

    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.png"
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    print(f"chart: {path}")
    return path


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def verdict(ratio: float, target: float, at_most: bool) -> str:
    met = ratio <= target if at_most else ratio >= target
    return f"(target {'<=' if at_most else '>='} {target:g}: {'met' if met else 'NOT met'})"


# ----------------------------------------------------------------------------- memory
class TreeMemory:
    """Polls the resident memory of a process and all its descendants in a thread.

    `samples` holds (time.time(), bytes) pairs. RSS is summed over the processes, so pages
    shared by forked workers count once per process: an upper bound. `limit_bytes` > 0 kills
    the whole tree once it is exceeded (`killed` then says at how much).
    """

    def __init__(self, pid: int, interval: float = 0.5, limit_bytes: int = 0):
        import psutil

        self.root = psutil.Process(pid)
        self.interval, self.limit = interval, limit_bytes
        self.samples: list[tuple[float, int]] = []
        self.killed: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def tree_rss(self) -> int:
        import psutil

        total = 0
        try:
            processes = [self.root, *self.root.children(recursive=True)]
        except psutil.Error:
            return 0
        for process in processes:
            try:
                total += process.memory_info().rss
            except psutil.Error:
                pass
        return total

    def _poll(self):
        while not self._stop.is_set():
            rss = self.tree_rss()
            self.samples.append((time.time(), rss))
            if self.limit and rss > self.limit and self.killed is None:
                self.killed = rss
                self._kill_tree()
            self._stop.wait(self.interval)

    def _kill_tree(self):
        import psutil

        try:
            processes = [*self.root.children(recursive=True), self.root]
        except psutil.Error:
            return
        for process in processes:
            try:
                process.kill()
            except psutil.Error:
                pass

    @property
    def peak(self) -> int:
        return max((rss for _, rss in self.samples), default=0)

    def peak_between(self, start: float, end: float) -> int:
        return max((rss for t, rss in self.samples if start <= t <= end), default=0)


# ----------------------------------------------------------------------------- step timing
def steady_rate(ends: list, epoch_starts: list, images_per_step: int, warmup: int = 3) -> float:
    """Images/s from the times training steps ended, after the first `warmup` steps and leaving
    out the time between epochs (validation, checkpoints): each step counts the gap since the
    previous step's end."""
    boundaries = set(epoch_starts)
    gaps = [ends[i] - ends[i - 1] for i in range(warmup + 1, len(ends)) if i not in boundaries]
    if not gaps:
        raise ValueError("too few steps timed")
    return images_per_step * len(gaps) / sum(gaps)


def step_timer():
    """A Keras callback recording when each training step ends (and where epochs begin)."""
    import tf_keras as keras

    class StepTimer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.ends: list[float] = []
            self.epoch_starts: list[int] = []  # index into `ends` of each epoch's first step

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch_starts.append(len(self.ends))

        def on_train_batch_end(self, batch, logs=None):
            self.ends.append(time.perf_counter())

        def steady_rate(self, images_per_step: int, warmup: int = 3) -> float:
            return steady_rate(self.ends, self.epoch_starts, images_per_step, warmup)

    return StepTimer()


# ----------------------------------------------------------------------------- test data
def pipeline_transform_output(workdir=None) -> dict:
    """A real Transform output on the bundled data: the newest one under `workdir` (what
    bench_pipeline.py's in-process run leaves), else a fresh `test`-profile pipeline run there.

    Returns {"transform_graph": dir, "train": [pattern], "eval": [pattern]}.
    """
    workdir = Path(workdir or WORK / "pipeline" / "in_memory")
    found = _newest_transform(workdir / "tfx")
    if found is None:
        from unet_tfx.config import load_profile
        from unet_tfx.pipeline.local_runner import run_local

        print(f"no Transform output under {workdir}: running the test-profile pipeline there")
        config = load_profile("test", examples_dir=str(workdir / "examples"),
                              pipeline_root=str(workdir / "tfx"),
                              serving_dir=str(workdir / "serving"))
        summary = run_local(config)
        if not summary.succeeded:
            raise SystemExit(f"pipeline failed: {summary.error}")
        found = _newest_transform(workdir / "tfx")
    return found


def _newest_transform(root: Path) -> dict | None:
    """The newest Transform graph and the raw examples the Trainer read with it (ExampleGen's)."""
    graphs = sorted(glob.glob(str(root / "Transform" / "transform_graph" / "*")),
                    key=os.path.getmtime)
    examples = sorted(glob.glob(str(root / "ImportExampleGen" / "examples" / "*")),
                      key=os.path.getmtime)
    graphs = [g for g in graphs if (Path(g) / "transform_fn").is_dir()]
    examples = [e for e in examples if (Path(e) / "Split-train").is_dir()]
    if not graphs or not examples:
        return None
    return {"transform_graph": graphs[-1],
            "train": [str(Path(examples[-1]) / "Split-train" / "*")],
            "eval": [str(Path(examples[-1]) / "Split-eval" / "*")]}


def synthetic_examples_file(path: Path, count: int, distinct: int = 64, seed: int = 0,
                            size: int = 512) -> Path:
    """One GZIP TFRecord file of `count` raw examples as ingestion writes them (PNG image and
    mask): `distinct` synthetic pairs (bench/synth.py) written once, the file then concatenated
    with itself (GZIP members read back to back) up to `count`. Reused if it exists."""
    import synth
    import tensorflow as tf

    from unet_tfx.ingest.records import make_example

    path = Path(path)
    marker = path.with_suffix(".json")
    wanted = {"count": count, "distinct": distinct, "seed": seed, "size": size}
    if path.exists() and marker.exists() and json.loads(marker.read_text()) == wanted:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    distinct = min(distinct, count)
    pairs = [synth.pair(seed, i, size) for i in range(distinct)]
    unit = path.with_name(path.name + ".unit")
    with tf.io.TFRecordWriter(str(unit), options="GZIP") as writer:
        for image, mask in pairs:
            writer.write(make_example("synth", image, mask))
    block = unit.read_bytes()
    copies, rest = divmod(count, distinct)
    with open(path, "wb") as out:
        for _ in range(copies):
            out.write(block)
    if rest:  # the first `rest` pairs once more
        with tf.io.TFRecordWriter(str(unit), options="GZIP") as writer:
            for image, mask in pairs[:rest]:
                writer.write(make_example("synth", image, mask))
        with open(path, "ab") as out:
            out.write(unit.read_bytes())
    unit.unlink()
    marker.write_text(json.dumps(wanted))
    return path
