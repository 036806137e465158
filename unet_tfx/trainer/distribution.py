"""Training on several GPUs and workers: the tf.distribute strategy, who is chief, saving under
the chief rules, and the XLA switch.

- Several workers: `TF_CONFIG` (set by Vertex AI worker pools and Kubeflow's training operators)
  names more than one `chief`/`worker` task → MultiWorkerMirroredStrategy, synchronous
  data-parallel training with gradients all-reduced across all replicas of all workers.
- One worker with several GPUs → MirroredStrategy over them.
- Otherwise the default strategy (one device).

Every worker runs the whole run_fn; TFX does not choose who writes. The chief (task `chief`, or
`worker` 0 when the cluster has no chief) writes the SavedModel, TensorBoard logs, training curves
and history. Keras's multi-worker saving needs every worker to call `model.save` (it may run
collective ops), so the others save to a temporary folder and delete it: `save_on_chief`.
"""

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable

import tensorflow as tf

from unet_tfx.config import JIT_COMPILE_MODES

log = logging.getLogger("unet_tfx.trainer")

# The tasks that train under MultiWorkerMirroredStrategy (`ps` and `evaluator` do not).
TRAINING_JOBS = ("chief", "worker")


def tf_config() -> dict:
    """The parsed `TF_CONFIG` environment variable ({} when unset or empty)."""
    text = os.environ.get("TF_CONFIG", "").strip()
    if not text:
        return {}
    try:
        config = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"TF_CONFIG is not valid JSON ({e}): {text[:200]!r}") from None
    if not isinstance(config, dict):
        raise ValueError(f"TF_CONFIG must be a JSON object; got {text[:200]!r}")
    return config


def _cluster_and_task(config: dict) -> tuple[dict, str | None, int]:
    task = config.get("task") or {}
    return config.get("cluster") or {}, task.get("type"), int(task.get("index", 0))


def training_workers(config: dict | None = None) -> int:
    """How many `chief` and `worker` tasks the cluster in TF_CONFIG has (1 without one)."""
    cluster, _, _ = _cluster_and_task(tf_config() if config is None else config)
    return sum(len(cluster.get(job) or ()) for job in TRAINING_JOBS) or 1


def is_chief(config: dict | None = None) -> bool:
    """True for the task that writes outputs: no cluster in TF_CONFIG, task `chief`, or `worker`
    index 0 when the cluster has no chief (TensorFlow's own rule)."""
    cluster, task_type, task_index = _cluster_and_task(tf_config() if config is None else config)
    if not cluster or task_type is None:
        return True
    if task_type == "chief":
        return True
    return task_type == "worker" and task_index == 0 and not cluster.get("chief")


def _local_gpus() -> int:
    # Physical devices: listing them does not start TensorFlow's runtime, which must not have
    # started before MultiWorkerMirroredStrategy configures its collective ops.
    return len(tf.config.list_physical_devices("GPU"))


def strategy_plan(config: dict | None = None) -> tuple[str, str]:
    """(strategy class name, why) for this process, without creating the strategy."""
    config = tf_config() if config is None else config
    gpus = _local_gpus()
    devices = f"{gpus} GPU{'s' if gpus != 1 else ''}" if gpus else "CPU"
    workers = training_workers(config)
    if workers > 1:
        _, task_type, task_index = _cluster_and_task(config)
        role = "chief" if is_chief(config) else "not chief"
        return ("MultiWorkerMirroredStrategy",
                f"TF_CONFIG names {workers} workers; this is {task_type} {task_index} ({role}), "
                f"{devices} here")
    if gpus > 1:
        return "MirroredStrategy", f"one worker, {devices}"
    return "default", f"one worker, {devices}"


def choose_strategy() -> tf.distribute.Strategy:
    """MultiWorkerMirroredStrategy, MirroredStrategy or the default strategy (see the module doc).

    Call it before anything creates a tensor: MultiWorkerMirroredStrategy can only configure
    TensorFlow's collective ops before the runtime starts.
    """
    name, reason = strategy_plan()
    log.info("distribution: %s (%s)", name, reason)
    if name == "MultiWorkerMirroredStrategy":
        return tf.distribute.MultiWorkerMirroredStrategy()  # reads TF_CONFIG itself
    if name == "MirroredStrategy":
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def barrier(strategy: tf.distribute.Strategy) -> None:
    """Under MultiWorkerMirroredStrategy, wait until every worker has reached this point."""
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return

    def all_reduce():
        context = tf.distribute.get_replica_context()
        return context.all_reduce(tf.distribute.ReduceOp.SUM, tf.constant(1.0))

    tf.function(lambda: strategy.run(all_reduce))()


def save_on_chief(save: Callable[[str], object], directory: str,
                  strategy: tf.distribute.Strategy | None = None) -> str | None:
    """`save(folder)` on every worker: into `directory` on the chief, into a temporary folder
    elsewhere, deleted right after. Returns `directory` on the chief, else None.

    With `strategy`, every worker then waits for the others, so none returns before the chief's
    model is complete (TFX's Trainer checks that the model folder exists on every worker).
    """
    if is_chief():
        save(directory)
        written = directory
    else:
        temporary = tempfile.mkdtemp(prefix="unet_tfx_worker_save_")
        try:
            save(temporary)
        finally:
            shutil.rmtree(temporary, ignore_errors=True)
        written = None
    if strategy is not None:
        barrier(strategy)
    return written


def resolve_jit_compile(setting: str = "auto") -> tuple[bool, str]:
    """(XLA on or off, why) for `setting`, one of `config.JIT_COMPILE_MODES`."""
    if setting not in JIT_COMPILE_MODES:
        raise ValueError(f"jit_compile must be one of {', '.join(JIT_COMPILE_MODES)}; "
                         f"got {setting!r}")
    if setting != "auto":
        return setting == "on", "requested"
    gpus = _local_gpus()
    if gpus:
        return True, f"{gpus} GPU{'s' if gpus != 1 else ''}"
    return False, "no GPU: XLA's CPU backend bypasses oneDNN (0.57x float32 training measured)"
