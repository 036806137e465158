"""The Trainer's side of retraining: follow ServedModel's plan (train or not, warm start or not)
and record in every exported model what it was trained on."""

import json
import logging
import os
import time

import tensorflow as tf
import tf_keras as keras
from tfx.utils import io_utils

from unet_tfx.components.served_model import TRAINING_RECORD, read_training_record
from unet_tfx.trainer.distribution import is_chief

log = logging.getLogger("unet_tfx.trainer")


def read_plan(fn_args) -> dict:
    """ServedModel's plan (the Trainer's `hyperparameters`); without one: train from scratch."""
    return fn_args.hyperparameters or {"train": True, "warm_start": False, "spans": None}


def keep_served_model(fn_args, plan: dict, wait_seconds: float = 600) -> bool:
    """When the plan says there is nothing new to train on, export the served model unchanged
    (the Pusher then pushes nothing: it equals what is served) and return True. The chief
    copies it; other workers wait for the copy (TFX checks the export on every worker)."""
    if plan.get("train", True):
        return False
    log.info("nothing to train: %s; the served model is exported unchanged", plan["reason"])
    warn_of_changed_settings(fn_args.base_model, fn_args.custom_config["training"])
    if is_chief():
        partial = f"{fn_args.serving_model_dir.rstrip('/')}.partial"
        io_utils.copy_dir(fn_args.base_model, partial)
        tf.io.gfile.rename(partial, fn_args.serving_model_dir, overwrite=True)
        return True
    deadline = time.monotonic() + wait_seconds
    while not tf.io.gfile.exists(fn_args.serving_model_dir):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{fn_args.serving_model_dir}: the chief's copy of the served "
                               f"model did not appear within {wait_seconds:.0f} s")
        time.sleep(5)
    return True


def warn_of_changed_settings(served_model_dir: str, training: dict) -> None:
    """Warn which of this run's training settings differ from those the served
    model was trained and exported with (its training record): kept unchanged, it does not
    follow them, e.g. a new mask threshold, until --force retrains."""
    served = read_training_record(served_model_dir).get("training", {})
    changed = [f"{key} {served[key]!r} -> {value!r}" for key, value in training.items()
               if key in served and served[key] != value]
    if changed:
        log.warning("the served model keeps the settings it was trained with (%s): pass --force "
                    "to train one with this run's", ", ".join(changed))


def warm_start(model: keras.Model, fn_args, plan: dict) -> int | None:
    """Load the served model's weights into `model` (built, not yet compiled) when the plan says
    so; returns the version started from, or None (a fresh start) when there is none or its
    shape differs."""
    if not plan.get("warm_start") or not fn_args.base_model:
        return None
    checkpoint = os.path.join(fn_args.base_model, "variables", "variables")
    fresh = model.get_weights()  # a failed load may have restored some weights already
    try:
        # Every weight of `model` must be restored; the export's extras (Transform layer,
        # signatures' metrics) are not part of it.
        model.load_weights(checkpoint).assert_existing_objects_matched().expect_partial()
    except (ValueError, AssertionError, tf.errors.OpError) as error:
        model.set_weights(fresh)
        log.warning("warm start from version %s impossible, training from scratch: %s",
                    plan.get("served_version"), str(error).splitlines()[0])
        return None
    log.info("warm start from the served version %s", plan.get("served_version"))
    return plan.get("served_version")


def write_training_record(export_dir: str, plan: dict, warm_started_from: int | None,
                          training: dict) -> None:
    """`assets.extra/unet_tfx_training.json` in the export: spans, warm start, settings."""
    record = {"spans": plan.get("spans"), "warm_started_from": warm_started_from,
              "training": training}
    io_utils.write_string_file(os.path.join(export_dir, TRAINING_RECORD), json.dumps(record))
