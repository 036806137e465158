"""Faults: a push that fails or is killed half-way, an unwritable or full serving base, a pipeline
killed between components, a Trainer killed mid-training. The goal each time: nothing is lost
and nothing half-made is served.

The serving base is what TF Serving polls: it loads every numeric folder and ignores other names.
The kill tests (marked e2e) run `unet-tfx run` on the `test` profile in a subprocess group and
SIGKILL the group at a deterministic point read from its log.

Tests run as root here, and root ignores permission bits: the 0o555 case drops to the `nobody`
user for the push (as a TF Serving deployment's non-root pusher would be); the cases that fail
for root too are a base under a regular file (cannot be created) and a full disk (simulated with
RLIMIT_FSIZE: the copy's writes fail with EFBIG, as they would with ENOSPC).
"""

import contextlib
import hashlib
import json
import os
import queue
import re
import resource
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import pytest
from tfx.dsl.io import fileio

from unet_tfx.components import pusher
from unet_tfx.components.pusher import PARTIAL_PREFIX, PushError, push_version
from unet_tfx.serving.local_model import served_versions

ROOT = Path(__file__).resolve().parent.parent
MODEL_FILES = ["saved_model.pb", "fingerprint.pb", "variables/variables.index",
               "variables/variables.data-00000-of-00001", "assets.extra/unet_tfx_training.json"]


def fake_model(folder: Path, seed: int, variables_bytes: int = 4096,
               extra_files: int = 0) -> str:
    """A folder laid out like a SavedModel; `seed` makes its fingerprint (and bytes) unique."""
    for name in MODEL_FILES:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        size = variables_bytes if "data-" in name else 64
        path.write_bytes(hashlib.sha256(f"{seed}{name}".encode()).digest() * (size // 32 + 1))
    for i in range(extra_files):
        (folder / "assets" / f"{i:03d}.bin").parent.mkdir(exist_ok=True)
        (folder / "assets" / f"{i:03d}.bin").write_bytes(os.urandom(variables_bytes))
    return str(folder)


def tree(folder) -> dict:
    """relative path → sha256 of every file under `folder`."""
    folder = Path(folder)
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def partials(base) -> list:
    return sorted(n for n in os.listdir(base) if n.startswith(PARTIAL_PREFIX))


@pytest.fixture
def served(tmp_path):
    """A model base serving one version (pushed like any other), and a new model to push."""
    base = str(tmp_path / "serving" / "unet_membrane")
    version, _ = push_version(fake_model(tmp_path / "a", seed=1), base, keep=3)
    new = fake_model(tmp_path / "b", seed=2)
    return base, version, new


def _assert_served_unchanged(base, version, before):
    assert served_versions(base) == [version]
    assert tree(os.path.join(base, str(version))) == before


# --- atomic push ------------------------------------------------------------------------------

def test_a_version_appears_only_complete_after_a_rename(served, monkeypatch):
    base, old, new = served
    seen, renames = [], []
    copy, rename = fileio.copy, pusher.tf.io.gfile.rename

    def watching_copy(src, dst, overwrite=False):
        seen.append((served_versions(base), dst))
        copy(src, dst, overwrite)

    def watching_rename(src, dst, overwrite=False):
        renames.append((src, dst, tree(src)))
        rename(src, dst, overwrite)

    monkeypatch.setattr(fileio, "copy", watching_copy)
    monkeypatch.setattr(pusher.tf.io.gfile, "rename", watching_rename)

    version, message = push_version(new, base, keep=3)

    # While the files were copied, TF Serving could see only the old version; every file went
    # into the non-numeric .partial-N folder, which became N in one rename once complete.
    partial = os.path.join(base, f"{PARTIAL_PREFIX}{version}")
    assert len(seen) == len(MODEL_FILES)
    assert all(versions == [old] and dst.startswith(partial + os.sep) for versions, dst in seen)
    assert [(src, dst) for src, dst, _ in renames] == [(partial, os.path.join(base, str(version)))]
    assert renames[0][2] == tree(new)  # complete before the rename
    assert served_versions(base) == [old, version] and partials(base) == []
    assert tree(os.path.join(base, str(version))) == tree(new)
    assert message == f"pushed version {version} to {os.path.join(base, str(version))}"


def test_a_partial_folder_a_killed_push_left_is_removed_by_the_next_push(served):
    base, old, new = served
    leftover = os.path.join(base, f"{PARTIAL_PREFIX}{old + 1}")
    shutil.copytree(new, leftover)  # a SIGKILL mid-copy leaves it; nothing else removes it
    version, _ = push_version(new, base, keep=3)
    assert partials(base) == [] and served_versions(base) == [old, version]


def test_a_push_failing_half_way_leaves_no_version_and_the_served_one(served, monkeypatch):
    base, old, new = served
    before = tree(os.path.join(base, str(old)))
    copy, copied = fileio.copy, []

    def failing_copy(src, dst, overwrite=False):
        if len(copied) == 2:
            raise OSError(28, "No space left on device", dst)
        copy(src, dst, overwrite)
        copied.append(dst)

    monkeypatch.setattr(fileio, "copy", failing_copy)

    with pytest.raises(PushError, match=rf"cannot push to {re.escape(base)}: .*No space left on "
                       rf"device.*; the served version \({old}\) is unchanged"):
        push_version(new, base, keep=1)

    assert len(copied) == 2
    _assert_served_unchanged(base, old, before)
    assert partials(base) == []  # the half-written copy was removed


@contextlib.contextmanager
def file_size_limit(limit: int):
    """Writes past `limit` bytes per file fail with EFBIG, root or not (a full disk's effect on
    the writer: a failed write() half-way through a file)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


def test_a_full_disk_fails_the_push_and_the_served_version_stays(served, tmp_path):
    base, old, _ = served
    before = tree(os.path.join(base, str(old)))
    big = fake_model(tmp_path / "big", seed=3, variables_bytes=1 << 20)

    with file_size_limit(256 * 1024), pytest.raises(
            PushError, match=rf"cannot push to .*File too large.*served version \({old}\) is "
            "unchanged"):
        push_version(big, base, keep=1)

    _assert_served_unchanged(base, old, before)
    assert partials(base) == []


@pytest.fixture
def shared_dir():
    """A folder the `nobody` user can read (pytest's tmp folders are root's, mode 0o700)."""
    folder = Path(tempfile.mkdtemp(prefix="unet_tfx_faults_"))
    folder.chmod(0o755)
    yield folder
    for path in [folder, *folder.rglob("*")]:
        if path.is_dir():
            path.chmod(0o755)
    shutil.rmtree(folder)


@contextlib.contextmanager
def as_user(uid: int):
    """Run the block with effective uid `uid` (root can switch back: its saved uid stays 0)."""
    if os.geteuid() != 0:
        yield
        return
    os.seteuid(uid)
    try:
        yield
    finally:
        os.seteuid(0)


NOBODY = 65534


def test_a_read_only_base_fails_the_push_with_a_clear_message(shared_dir):
    base = shared_dir / "serving" / "unet_membrane"
    old, _ = push_version(fake_model(shared_dir / "a", seed=1), str(base), keep=3)
    new = fake_model(shared_dir / "b", seed=2)
    for path in [shared_dir, *shared_dir.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    before = tree(base / str(old))
    base.chmod(0o555)

    with as_user(NOBODY), pytest.raises(
            PushError, match=rf"cannot push to {re.escape(str(base))}: .*Permission denied.*; "
            rf"the served version \({old}\) is unchanged"):
        push_version(new, str(base), keep=1)

    _assert_served_unchanged(str(base), old, before)
    assert partials(base) == []
    assert stat.S_IMODE(base.stat().st_mode) == 0o555


def test_a_base_that_cannot_be_created_fails_the_push_even_for_root(tmp_path):
    blocker = tmp_path / "serving"
    blocker.write_text("a regular file where the serving folder should be")
    base = str(blocker / "unet_membrane")

    with pytest.raises(PushError, match=rf"cannot push to {re.escape(base)}: .*; the served "
                       r"version \(none\) is unchanged"):
        push_version(fake_model(tmp_path / "m", seed=1), base, keep=3)

    assert blocker.read_text().startswith("a regular file")


def test_retention_keeps_the_newest_and_removes_old_ones_only_after_the_new_one_is_in(
        tmp_path, monkeypatch):
    base = str(tmp_path / "serving" / "m")
    pushed = [push_version(fake_model(tmp_path / f"m{i}", seed=i), base, keep=3)[0]
              for i in range(3)]
    assert served_versions(base) == pushed
    events = []
    rename, rmtree = pusher.tf.io.gfile.rename, pusher.tf.io.gfile.rmtree

    def watching_rename(src, dst, overwrite=False):
        events.append(("rename", os.path.basename(dst), served_versions(base)))
        rename(src, dst, overwrite)

    def watching_rmtree(path):
        events.append(("remove", os.path.basename(path), served_versions(base)))
        rmtree(path)

    monkeypatch.setattr(pusher.tf.io.gfile, "rename", watching_rename)
    monkeypatch.setattr(pusher.tf.io.gfile, "rmtree", watching_rmtree)

    newest, _ = push_version(fake_model(tmp_path / "m3", seed=3), base, keep=1)

    # The served version (pushed[-1]) went only after the new one was renamed into place, and
    # at every removal a complete version stayed that TF Serving could load.
    assert events == [("rename", str(newest), pushed)] + [
        ("remove", str(v), [*pushed[i:], newest]) for i, v in enumerate(pushed)]
    assert served_versions(base) == [newest] and partials(base) == []

    third, _ = push_version(fake_model(tmp_path / "m4", seed=4), base, keep=2)
    fourth, _ = push_version(fake_model(tmp_path / "m5", seed=5), base, keep=2)
    assert served_versions(base) == [third, fourth]


def test_an_identical_model_is_not_pushed_again(served, tmp_path):
    base, old, _ = served
    copy = shutil.copytree(os.path.join(base, str(old)), tmp_path / "same")

    version, message = push_version(str(copy), base, keep=3)

    assert version is None and message == f"identical to the served version {old}: nothing pushed"
    assert served_versions(base) == [old] and partials(base) == []


KILLED_PUSH = textwrap.dedent("""
    import sys, time
    from tfx.dsl.io import fileio
    from unet_tfx.components.pusher import push_version

    copy, count = fileio.copy, [0]

    def slow_copy(src, dst, overwrite=False):
        copy(src, dst, overwrite)
        count[0] += 1
        print(f"copied {count[0]}", flush=True)
        time.sleep(0.05)

    fileio.copy = slow_copy
    push_version(sys.argv[1], sys.argv[2], keep=1)
    print("push finished", flush=True)
""")


@pytest.mark.e2e  # a subprocess importing TensorFlow and TFX: 10-60 s
def test_a_push_killed_half_way_leaves_no_version_and_the_served_one(served, tmp_path):
    base, old, _ = served
    before = tree(os.path.join(base, str(old)))
    big = fake_model(tmp_path / "big", seed=4, variables_bytes=256 * 1024, extra_files=60)
    process = subprocess.Popen([sys.executable, "-c", KILLED_PUSH, big, base],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                               start_new_session=True, env=_env())
    try:
        for line in process.stdout:
            if line.strip() == "copied 20":
                os.killpg(process.pid, signal.SIGKILL)
                break
    finally:
        process.kill()
        process.wait()

    assert process.returncode == -signal.SIGKILL
    # What TF Serving sees: the old version only; the killed copy is under a name it ignores.
    _assert_served_unchanged(base, old, before)
    [left] = partials(base)
    assert 0 < len(tree(os.path.join(base, left))) < len(tree(big))
    # The next push goes through, and the model TF Serving then loads is complete.
    version, _ = push_version(big, base, keep=1)
    assert served_versions(base) == [version]
    assert tree(os.path.join(base, str(version))) == tree(big)


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    env.update(TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1", **extra)
    return env


# --- a pipeline killed after Transform, then a Trainer killed mid-training ----------------------

# `unet-tfx run` with the `test` profile changed to 2 epochs of 25 steps and a backup every 5
# steps (epoch-only backups would hold nothing before step 25). Deterministic points for an
# external SIGKILL: with UNET_TFX_PAUSE_AT_STEP=N the Trainer stops after logging step N (and
# after the backup of step N, an earlier callback); with UNET_TFX_PAUSE_AT_STEP=0 it stops as it
# starts, that is once Transform has finished and been recorded (its outputs are the Trainer's
# inputs). Either way it says so and waits to be killed. It also prints the step ProgressLogger
# starts counting from (the optimizer's iterations once BackupAndRestore has restored them).
HARNESS = textwrap.dedent("""
    import os, sys, time
    import unet_tfx
    from unet_tfx import cli, config
    from unet_tfx.trainer import plan, progress

    config.PROFILES["test"] = config.PROFILES["test"].replace(
        steps_per_epoch=25, backup_every_steps=5)
    pause_at = int(os.environ.get("UNET_TFX_PAUSE_AT_STEP", "-1"))
    read_plan = plan.read_plan

    def paused_read_plan(fn_args):  # run_fn's first call (TFX reloads run_fn's own module)
        if pause_at == 0:
            print("harness: paused as the Trainer starts", file=sys.stderr, flush=True)
            time.sleep(3600)
        return read_plan(fn_args)

    plan.read_plan = paused_read_plan
    logger = progress.ProgressLogger
    begin, batch_end = logger.on_train_begin, logger.on_train_batch_end

    def on_train_begin(self, logs=None):
        begin(self, logs)
        print(f"harness: training starts at step {self.step}", file=sys.stderr, flush=True)

    def on_train_batch_end(self, batch, logs=None):
        batch_end(self, batch, logs)
        if self.step == pause_at:
            print(f"harness: paused after step {self.step}", file=sys.stderr, flush=True)
            time.sleep(3600)

    progress.ProgressLogger.on_train_begin = on_train_begin
    progress.ProgressLogger.on_train_batch_end = on_train_batch_end
    sys.exit(cli.main(sys.argv[1:]))
""")
TRAIN_STEPS = 50
KILL_AT_STEP = 20
# One `unet-tfx run` of the test profile: about 2 minutes on 2 idle cores, with room for a
# loaded machine (the deadline only stops a hung run).
RUN_SECONDS = 600
UPSTREAM = ["ImportExampleGen", "StatisticsGen", "ConfiguredSchemaGen", "ExampleValidator",
            "AnomaliesGate", "Transform"]


class Run:
    """`unet-tfx run` in its own process group; its merged output read line by line."""

    def __init__(self, workdir: Path, name: str, **env):
        self.log = workdir / f"{name}.log"
        args = ["run", "--profile", "test", "--train-steps", str(TRAIN_STEPS),
                "--examples-dir", str(workdir / "examples"),
                "--pipeline-root", str(workdir / "tfx"), "--serving-dir", str(workdir / "serving")]
        self.process = subprocess.Popen(
            [sys.executable, "-c", HARNESS, *args], stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
            start_new_session=True, env=_env(**env), cwd=workdir)
        self.lines, self._queue = [], queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        with open(self.log, "w") as log:
            for line in self.process.stdout:
                log.write(line)
                log.flush()
                self.lines.append(line.rstrip("\n"))
                self._queue.put(line)
        self._queue.put(None)

    def wait_for(self, pattern: str, timeout: float = RUN_SECONDS) -> str:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._queue.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                break
            if re.search(pattern, line):
                return line
        self.kill()
        raise AssertionError(f"no line matching {pattern!r} in {timeout:.0f} s; the log: "
                             f"{self.log}\n" + "\n".join(self.lines[-30:]))

    def kill(self) -> None:
        """SIGKILL the whole process group (the run, Beam and TensorFlow threads, children)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def finish(self, timeout: float = RUN_SECONDS) -> int:
        try:
            return self.process.wait(timeout)
        finally:
            self.kill()


def _runs(workdir: Path) -> list:
    """Per pipeline run in ML Metadata, oldest first: {component: state}."""
    from ml_metadata.metadata_store import metadata_store
    from tfx import v1 as tfx

    from unet_tfx.pipeline.run_summary import pipeline_runs, summarize

    connection = tfx.orchestration.metadata.sqlite_metadata_connection_config(
        str(workdir / "tfx" / "metadata.sqlite"))
    store = metadata_store.MetadataStore(connection)
    return [{c.node: c.state for c in summarize(store, run).components}
            for run in pipeline_runs(store)]


@pytest.fixture(scope="module")
def killed_runs(tmp_path_factory):
    """Run 1 killed once Transform has finished (as the Trainer starts); run 2 (a re-run) killed
    at the Trainer's step KILL_AT_STEP; run 3 (a re-run) left to finish. Returns the folder, the
    runs and facts recorded between them.

    Transform's own "Component Transform is finished" line is not a usable signal: TFX's absl
    progress lines stop appearing once Transform has run in the process."""
    workdir = tmp_path_factory.mktemp("killed")
    facts = {}
    first = Run(workdir, "1-killed-after-transform", UNET_TFX_PAUSE_AT_STEP="0")
    first.wait_for(r"harness: paused as the Trainer starts")
    first.kill()
    facts["after_first"] = _runs(workdir)

    second = Run(workdir, "2-killed-in-training", UNET_TFX_PAUSE_AT_STEP=str(KILL_AT_STEP))
    second.wait_for(rf"harness: paused after step {KILL_AT_STEP}\b")
    second.kill()
    facts["after_second"] = _runs(workdir)
    facts["backups"] = _backup_steps(workdir)

    third = Run(workdir, "3-completes")
    facts["third_code"] = third.finish()
    facts["after_third"] = _runs(workdir)
    return workdir, (first, second, third), facts


def _backup_steps(workdir: Path) -> list:
    """The optimizer step saved in each BackupAndRestore checkpoint under the pipeline root."""
    import tensorflow as tf

    steps = []
    for index in sorted((workdir / "tfx" / "_trainer_backup").rglob("*.index")):
        reader = tf.train.load_checkpoint(str(index)[: -len(".index")])
        names = [n for n in reader.get_variable_to_shape_map() if "iter" in n.lower()]
        steps += [int(reader.get_tensor(n)) for n in names if "optimizer" in n.lower()]
    return steps


def _progress_steps(run: Run) -> list:
    """The steps ProgressLogger logged, from the CLI's log format only (once Transform has run
    in the process, each line may also appear in Python's default format)."""
    pattern = re.compile(r" unet_tfx\.trainer INFO step (\d+)/\d+ ")
    return [int(m.group(1)) for line in run.lines if (m := pattern.search(line))]


@pytest.mark.e2e
def test_a_pipeline_killed_after_transform_resumes_from_ml_metadata(killed_runs):
    workdir, (first, second, third), facts = killed_runs
    [killed] = facts["after_first"]
    assert all(killed.get(node) == "COMPLETE" for node in UPSTREAM), killed
    assert killed["Trainer"] == "RUNNING" and "Evaluator" not in killed
    # The re-runs reuse every finished component from ML Metadata: nothing is computed twice.
    for runs in (facts["after_second"], facts["after_third"]):
        assert {node: runs[-1].get(node) for node in UPSTREAM} == dict.fromkeys(UPSTREAM,
                                                                                "CACHED")
    assert facts["third_code"] == 0, "\n".join(third.lines[-30:])
    states = facts["after_third"][-1]
    assert states["Trainer"] == states["Evaluator"] == states["Pusher"] == "COMPLETE", states
    executed = [runs.get("Transform") for runs in facts["after_third"]]
    assert executed.count("COMPLETE") == 1, executed


@pytest.mark.e2e
def test_a_trainer_killed_mid_training_resumes_from_its_last_backup(killed_runs):
    workdir, (first, second, third), facts = killed_runs
    # Killed after step 20, mid-epoch 1 (25 steps): the backup holds step 20, not 0.
    assert _progress_steps(second)[-1] == KILL_AT_STEP
    assert facts["backups"] == [KILL_AT_STEP], facts["backups"]
    assert facts["after_second"][-1]["Trainer"] == "RUNNING"
    # The re-run starts at the saved step: its progress log begins at 30, not 10.
    assert f"harness: training starts at step {KILL_AT_STEP}" in third.lines
    assert _progress_steps(third) == [30, 40, TRAIN_STEPS], _progress_steps(third)
    assert facts["third_code"] == 0
    # The resumed run's curves number the epochs it trained: 1 (resumed mid-way) and 2.
    (history,) = (workdir / "tfx" / "Trainer").rglob("history.json")
    assert json.loads(history.read_text())["epoch"] == [1, 2]
    # Exactly one model exported and one version pushed; the backup is gone once trained.
    exported = list((workdir / "tfx" / "Trainer").rglob("saved_model.pb"))
    assert len(exported) == 1, exported
    model_base = workdir / "serving" / "unet_membrane"
    assert len(served_versions(str(model_base))) == 1 and partials(model_base) == []
    assert _backup_steps(workdir) == []
