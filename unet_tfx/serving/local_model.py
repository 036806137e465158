"""Run the exported SavedModel in-process, through the same `serving_default` signature."""

import os

import numpy as np
import tensorflow as tf

from unet_tfx.trainer.export import PROBABILITIES


def latest_version(model_base: str) -> str:
    """The highest numeric version folder under a TF Serving model base (`<base>/<model>`)."""
    versions = [d for d in tf.io.gfile.listdir(model_base) if d.strip("/").isdigit()]
    if not versions:
        raise FileNotFoundError(f"{model_base}: no numeric version folders (TF Serving layout)")
    return os.path.join(model_base, max(versions, key=lambda d: int(d.strip("/"))).strip("/"))


class LocalModel:
    """Loads a SavedModel and segments encoded images like TF Serving would."""

    def __init__(self, saved_model_dir: str):
        self.model = tf.saved_model.load(saved_model_dir)
        self.serve = self.model.signatures["serving_default"]

    def segment(self, encoded_images: list[bytes]) -> np.ndarray:
        return self.serve(images=tf.constant(encoded_images))[PROBABILITIES].numpy()
