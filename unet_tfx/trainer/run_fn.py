"""The TFX Trainer's entry point: `run_fn` trains the U-Net and exports the serving model."""

import hashlib
import json
import logging
import math
import os

import tensorflow as tf
import tensorflow_transform as tft
import tf_keras as keras

from unet_tfx.config import TrainingConfig
from unet_tfx.files import write_atomically
from unet_tfx.serving.warmup import eval_pngs
from unet_tfx.trainer.dataset import eval_dataset, training_dataset
from unet_tfx.trainer.distribution import choose_strategy, is_chief, save_on_chief
from unet_tfx.trainer.export import export_serving_model
from unet_tfx.trainer.model import build_from_config, compile_from_config
from unet_tfx.trainer.plan import keep_served_model, read_plan, warm_start, write_training_record
from unet_tfx.trainer.precision import global_precision, resolve_precision
from unet_tfx.trainer.progress import ProgressLogger, plot_history

log = logging.getLogger("unet_tfx.trainer")


def backup_dir(fn_args, custom_config: dict) -> str:
    """A BackupAndRestore folder keyed by the inputs and config, stable across retries.

    A retried Trainer execution gets new output folders; keying the backup by what it trains on
    lets a killed run resume, and keeps a changed config from resuming someone else's weights.
    """
    key = json.dumps([fn_args.train_files, fn_args.eval_files, fn_args.transform_output,
                      custom_config], sort_keys=True)
    return os.path.join(custom_config["backup_root"], hashlib.sha256(key.encode()).hexdigest()[:16])


def run_fn(fn_args) -> None:
    """Train on Transform's output per `custom_config`, then export with the serving signatures.

    Under the mixed-precision policy `TrainingConfig.precision` resolves to on this machine.
    """
    cfg = TrainingConfig(**fn_args.custom_config["training"])
    plan = read_plan(fn_args)
    if keep_served_model(fn_args, plan):
        return
    policy, reason = resolve_precision(cfg.precision)
    log.info("precision: %s (%s)", policy, reason)
    # The policy is process-global (the local runner trains in-process): float32 again after.
    with global_precision(policy):
        _train_and_export(fn_args, cfg, plan)


def epoch_plan(train_steps: int, steps_per_epoch: int) -> tuple[int, int]:
    """(epochs, steps per epoch) for `train_steps`: Keras trains whole epochs (each ends with
    a pass over the eval images), so a count that is not a multiple of `steps_per_epoch` is
    rounded up to one, with a warning saying so."""
    steps_per_epoch = min(steps_per_epoch, train_steps)
    epochs = math.ceil(train_steps / steps_per_epoch)
    if epochs * steps_per_epoch != train_steps:
        log.warning("training %d steps: %d train steps rounded up to whole epochs of %d",
                    epochs * steps_per_epoch, train_steps, steps_per_epoch)
    return epochs, steps_per_epoch


def _train_and_export(fn_args, cfg: TrainingConfig, plan: dict) -> None:
    custom_config = fn_args.custom_config
    channels = custom_config["channels"]
    # First: MultiWorkerMirroredStrategy must set up before TensorFlow's runtime starts.
    strategy = choose_strategy()
    replicas = strategy.num_replicas_in_sync
    keras.utils.set_random_seed(cfg.seed)
    tf_transform_output = tft.TFTransformOutput(fn_args.transform_output)
    epochs, steps_per_epoch = epoch_plan(fn_args.train_steps, cfg.steps_per_epoch)

    with strategy.scope():
        model = build_from_config(cfg, channels, custom_config.get("num_classes", 2))
        started_from = warm_start(model, fn_args, plan)  # before the optimizer exists
        compile_from_config(model, cfg, steps=epochs * steps_per_epoch)
    log.info("training %s parameters for %d steps (%d epochs of %d), patches %d², batch %d "
             "(%d per replica x %d replicas)", f"{model.count_params():,}",
             epochs * steps_per_epoch, epochs, steps_per_epoch, cfg.patch_size,
             cfg.batch_size * replicas, cfg.batch_size, replicas)
    chief = is_chief()  # only the chief writes logs, curves, history and the model
    history = model.fit(
        training_dataset(fn_args.train_files, tf_transform_output, cfg, replicas),
        steps_per_epoch=steps_per_epoch,
        epochs=epochs,
        validation_data=eval_dataset(fn_args.eval_files, tf_transform_output, cfg, replicas),
        validation_steps=fn_args.eval_steps or None,
        callbacks=[
            *([keras.callbacks.TensorBoard(log_dir=fn_args.model_run_dir, update_freq="epoch")]
              if chief else []),
            keras.callbacks.BackupAndRestore(backup_dir(fn_args, custom_config),
                                             save_freq=cfg.backup_every_steps or "epoch"),
            ProgressLogger(epochs * steps_per_epoch, cfg.batch_size * replicas),
        ],
        verbose=0,
    )
    if chief:
        tf.io.gfile.makedirs(fn_args.model_run_dir)
        # Epochs numbered from 1; a run resumed from a backup records only those it trained.
        record = {**history.history, "epoch": [epoch + 1 for epoch in history.epoch]}
        plot_history(record, os.path.join(fn_args.model_run_dir, "training_curves.png"))
        write_atomically(os.path.join(fn_args.model_run_dir, "history.json"),
                         json.dumps(record, indent=1))
    # Every worker saves (Keras's multi-worker rule); only the chief's copy is kept.
    save_on_chief(lambda directory: export_serving_model(
        model, tf_transform_output, directory, channels, cfg.depth,
        limits=custom_config["serving_limits"],
        warmup_images=eval_pngs(fn_args.eval_files),  # TF Serving's warmup
        threshold=cfg.mask_threshold),
        fn_args.serving_model_dir, strategy)
    if chief:
        write_training_record(fn_args.serving_model_dir, plan, started_from,
                              fn_args.custom_config["training"])
