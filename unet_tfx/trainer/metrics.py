"""Streaming segmentation metrics for Keras and TFMA (tf_keras.metrics.Metric subclasses).

They flatten y_true/y_pred and binarize predictions at `threshold`, so they report hard Dice over
all pixels seen. TFMA reports each under its class name in snake case (e.g. `membrane_dice`).
"""

import tensorflow as tf
import tf_keras as keras


class _ClassDice(keras.metrics.Metric):
    """Hard Dice of one class, accumulated over all batches (not a mean of per-batch values)."""

    positive = 1.0

    def __init__(self, name=None, threshold: float = 0.5, **kwargs):
        super().__init__(name=name, **kwargs)
        self.threshold = threshold
        self.intersection = self.add_weight("intersection", initializer="zeros", dtype=tf.float64)
        self.total = self.add_weight("total", initializer="zeros", dtype=tf.float64)

    def _class_masks(self, y_true, y_pred):
        truth = tf.reshape(tf.cast(y_true, tf.float32), [-1]) > 0.5
        pred = tf.reshape(tf.cast(y_pred, tf.float32), [-1]) > self.threshold
        if self.positive == 0.0:
            truth, pred = ~truth, ~pred
        return tf.cast(truth, tf.float64), tf.cast(pred, tf.float64)

    def update_state(self, y_true, y_pred, sample_weight=None):
        truth, pred = self._class_masks(y_true, y_pred)
        self.intersection.assign_add(tf.reduce_sum(truth * pred))
        self.total.assign_add(tf.reduce_sum(truth) + tf.reduce_sum(pred))

    def result(self):
        return tf.cast(tf.math.divide_no_nan(2.0 * self.intersection, self.total), tf.float32)

    def reset_state(self):
        self.intersection.assign(0.0)
        self.total.assign(0.0)

    def get_config(self):
        return {**super().get_config(), "threshold": self.threshold}


class CellDice(_ClassDice):
    """Hard Dice of the cell class (label 1)."""

    positive = 1.0


class MembraneDice(_ClassDice):
    """Hard Dice of the membrane class (label 0), the one that matters for EM segmentation."""

    positive = 0.0


class MeanDice(keras.metrics.Metric):
    """Mean of the cell-class and membrane-class hard Dice."""

    def __init__(self, name=None, threshold: float = 0.5, **kwargs):
        super().__init__(name=name, **kwargs)
        self.threshold = threshold
        self.cell = CellDice(threshold=threshold)
        self.membrane = MembraneDice(threshold=threshold)

    def update_state(self, y_true, y_pred, sample_weight=None):
        self.cell.update_state(y_true, y_pred)
        self.membrane.update_state(y_true, y_pred)

    def result(self):
        return 0.5 * (self.cell.result() + self.membrane.result())

    def reset_state(self):
        self.cell.reset_state()
        self.membrane.reset_state()

    def get_config(self):
        return {**super().get_config(), "threshold": self.threshold}


class PixelAccuracy(keras.metrics.Metric):
    """Share of pixels whose thresholded prediction equals the label."""

    def __init__(self, name=None, threshold: float = 0.5, **kwargs):
        super().__init__(name=name, **kwargs)
        self.threshold = threshold
        self.correct = self.add_weight("correct", initializer="zeros", dtype=tf.float64)
        self.count = self.add_weight("count", initializer="zeros", dtype=tf.float64)

    def update_state(self, y_true, y_pred, sample_weight=None):
        truth = tf.reshape(tf.cast(y_true, tf.float32), [-1]) > 0.5
        pred = tf.reshape(tf.cast(y_pred, tf.float32), [-1]) > self.threshold
        self.correct.assign_add(tf.reduce_sum(tf.cast(tf.equal(truth, pred), tf.float64)))
        self.count.assign_add(tf.cast(tf.size(truth), tf.float64))

    def result(self):
        return tf.cast(tf.math.divide_no_nan(self.correct, self.count), tf.float32)

    def reset_state(self):
        self.correct.assign(0.0)
        self.count.assign(0.0)

    def get_config(self):
        return {**super().get_config(), "threshold": self.threshold}
