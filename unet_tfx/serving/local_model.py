"""Run the exported SavedModel in-process, through the same `serving_default` signature."""

import os

import numpy as np
import tensorflow as tf

from unet_tfx.trainer.export import PROBABILITIES


def served_versions(model_base: str) -> list[int]:
    """The numeric version folders under a TF Serving model base (`<base>/<model>`), ascending;
    none when the base does not exist. TF Serving ignores every other name."""
    if not tf.io.gfile.isdir(model_base):
        return []
    names = (d.strip("/") for d in tf.io.gfile.listdir(model_base))
    return sorted(int(d) for d in names if d.isdigit())


def latest_version(model_base: str) -> str:
    """The highest numeric version folder under a TF Serving model base (`<base>/<model>`)."""
    versions = served_versions(model_base)
    if not versions:
        raise FileNotFoundError(f"{model_base}: no numeric version folders (TF Serving layout)")
    return os.path.join(model_base, str(versions[-1]))


class LocalModel:
    """Loads a SavedModel and segments encoded images like TF Serving would."""

    def __init__(self, saved_model_dir: str):
        self.model = tf.saved_model.load(saved_model_dir)
        self.serve = self.model.signatures["serving_default"]

    def segment(self, encoded_images: list[bytes]) -> np.ndarray:
        return self.serve(images=tf.constant(encoded_images))[PROBABILITIES].numpy()
