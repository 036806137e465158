"""Streaming segmentation metrics for Keras and TFMA (tf_keras.metrics.Metric subclasses).

The pixel metrics (Dice, IoU, accuracy) flatten y_true/y_pred and binarize predictions at
`threshold`, so they report hard values over all pixels seen (not a mean of per-batch values).
The region metrics (Rand score, variation of information) score the regions of each whole image
(the cells of two classes; the components of every class but 0 of K) with scikit-image and
report the mean over images (regions from `unet_tfx.regions`); `WatershedRandScore` scores the
cells `cell_regions` grows from the two-class probabilities. Every state is a sum, so TFMA can
merge them across batches and workers. TFMA reports each under its class name in snake case (e.g.
`membrane_dice`, `rand_score`).
"""

import numpy as np
import tensorflow as tf
import tf_keras as keras
from skimage.metrics import adapted_rand_error, variation_of_information

from unet_tfx.regions import SEED_THRESHOLD, cell_regions, class_regions


def _ratio(numerator, denominator):
    """numerator / denominator as the float32 result, 0 where the denominator is 0."""
    return tf.cast(tf.math.divide_no_nan(numerator, denominator), tf.float32)


class _SumsMetric(keras.metrics.Metric):
    """A metric whose states are float64 sums, all zeroed by `reset_state`."""

    def _sum(self, name: str):
        return self.add_weight(name, initializer="zeros", dtype=tf.float64)

    def reset_state(self):
        for variable in self.variables:
            variable.assign(tf.zeros_like(variable))


class _ThresholdMetric(_SumsMetric):
    """Two classes: the threshold, its config, and flat boolean truth/prediction."""

    def __init__(self, name=None, threshold: float = 0.5, **kwargs):
        super().__init__(name=name, **kwargs)
        self.threshold = threshold

    def _binarize(self, y_true, y_pred):
        truth = tf.reshape(tf.cast(y_true, tf.float32), [-1]) > 0.5
        pred = tf.reshape(tf.cast(y_pred, tf.float32), [-1]) > self.threshold
        return truth, pred

    def get_config(self):
        return {**super().get_config(), "threshold": self.threshold}


class _ClassDice(_ThresholdMetric):
    """Hard Dice of one class: label 1 (cell) when `positive`, else label 0 (membrane)."""

    positive = True

    def __init__(self, name=None, threshold: float = 0.5, **kwargs):
        super().__init__(name=name, threshold=threshold, **kwargs)
        self.intersection, self.total = self._sum("intersection"), self._sum("total")

    def update_state(self, y_true, y_pred, sample_weight=None):
        truth, pred = self._binarize(y_true, y_pred)
        if not self.positive:
            truth, pred = ~truth, ~pred
        truth, pred = tf.cast(truth, tf.float64), tf.cast(pred, tf.float64)
        self.intersection.assign_add(tf.reduce_sum(truth * pred))
        self.total.assign_add(tf.reduce_sum(truth) + tf.reduce_sum(pred))

    def result(self):
        return _ratio(2.0 * self.intersection, self.total)


class CellDice(_ClassDice):
    """Hard Dice of the cell class (label 1)."""

    positive = True


class MembraneDice(_ClassDice):
    """Hard Dice of the membrane class (label 0), the one that matters for EM segmentation."""

    positive = False


class CellIou(CellDice):
    """Hard intersection over union of the cell class."""

    def result(self):
        union = self.total - self.intersection
        return _ratio(self.intersection, union)


class MembraneIou(CellIou):
    """Hard intersection over union of the membrane class."""

    positive = False


class MeanDice(_ThresholdMetric):
    """Mean of the cell-class and membrane-class hard Dice."""

    def __init__(self, name=None, threshold: float = 0.5, **kwargs):
        super().__init__(name=name, threshold=threshold, **kwargs)
        self.cell = CellDice(threshold=threshold)
        self.membrane = MembraneDice(threshold=threshold)

    def update_state(self, y_true, y_pred, sample_weight=None):
        self.cell.update_state(y_true, y_pred)
        self.membrane.update_state(y_true, y_pred)

    def result(self):
        return 0.5 * (self.cell.result() + self.membrane.result())


class PixelAccuracy(_ThresholdMetric):
    """Share of pixels whose thresholded prediction equals the label."""

    def __init__(self, name=None, threshold: float = 0.5, **kwargs):
        super().__init__(name=name, threshold=threshold, **kwargs)
        self.correct, self.count = self._sum("correct"), self._sum("count")

    def update_state(self, y_true, y_pred, sample_weight=None):
        truth, pred = self._binarize(y_true, y_pred)
        self.correct.assign_add(tf.reduce_sum(tf.cast(tf.equal(truth, pred), tf.float64)))
        self.count.assign_add(tf.cast(tf.size(truth), tf.float64))

    def result(self):
        return _ratio(self.correct, self.count)


class _RegionScore(_ThresholdMetric):
    """Mean over images of `score(truth_regions, predicted_regions)`: the regions are the
    4-connected components of each class but 0 (`class_regions`), in the labels and in the
    prediction (two classes: the cell class where p(cell) > threshold; K >= 3: each pixel's
    argmax). A gap in a predicted membrane merges two cells."""

    def __init__(self, name=None, threshold: float = 0.5, num_classes: int = 2, **kwargs):
        super().__init__(name=name, threshold=threshold, **kwargs)
        self.num_classes = num_classes
        self.total, self.images = self._sum("total"), self._sum("images")

    @staticmethod
    def score(truth: np.ndarray, prediction: np.ndarray) -> float:
        raise NotImplementedError

    @staticmethod
    def _images(batch: np.ndarray) -> np.ndarray:
        """[N, H, W] of a two-class batch: Keras's [N, H, W, 1] or TFMA's squeezed [N, H, W]
        (one image: [H, W])."""
        values = batch[..., 0] if batch.ndim == 4 else batch
        return values.reshape((-1,) + values.shape[-2:])

    def _classes(self, batch: np.ndarray, threshold: float) -> np.ndarray:
        """[N, H, W] class indices from a two-class batch (`_images`) or K classes' [..., K]
        one-hot or probabilities."""
        if self.num_classes > 2:
            classes = batch.argmax(axis=-1)
            return classes.reshape((-1,) + classes.shape[-2:])
        return self._images(batch) > threshold

    def _predicted_regions(self, y_pred: np.ndarray) -> list[np.ndarray]:
        return [class_regions(classes) for classes in self._classes(y_pred, self.threshold)]

    def _scores(self, y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
        truth = [class_regions(classes) for classes in self._classes(y_true, 0.5)]
        return np.array([self.score(t, p) for t, p in
                         zip(truth, self._predicted_regions(y_pred), strict=True)], np.float64)

    def update_state(self, y_true, y_pred, sample_weight=None):
        """Images whose score is undefined (NaN) are left out of the mean."""
        scores = tf.numpy_function(self._scores, [tf.cast(y_true, tf.float32),
                                                  tf.cast(y_pred, tf.float32)], tf.float64)
        defined = tf.math.is_finite(scores)
        self.total.assign_add(tf.reduce_sum(tf.where(defined, scores, 0.0)))
        self.images.assign_add(tf.reduce_sum(tf.cast(defined, tf.float64)))

    def result(self):
        return _ratio(self.total, self.images)

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes}


class RandScore(_RegionScore):
    """1 - adapted Rand error of the regions (ISBI 2012's measure on the cells; higher is
    better).

    An image without regions in its labels has no score; a prediction without any scores 0
    (scikit-image answers NaN for both)."""

    @staticmethod
    def score(truth, prediction):
        if not truth.any():
            return float("nan")
        if not prediction.any():
            return 0.0
        return 1.0 - adapted_rand_error(truth, prediction)[0]


class VariationOfInformation(_RegionScore):
    """Variation of information between the regions, split + merge (lower is better)."""

    @staticmethod
    def score(truth, prediction):
        return float(np.sum(variation_of_information(truth, prediction)))


class WatershedRandScore(RandScore):
    """Two classes: `RandScore` of the cells `cell_regions` grows from p(cell), not of the
    mask's components."""

    def __init__(self, name=None, seed_threshold: float = SEED_THRESHOLD, **kwargs):
        super().__init__(name=name, **kwargs)
        self.seed_threshold = seed_threshold

    def _predicted_regions(self, y_pred):
        return [cell_regions(p_cell, self.seed_threshold) for p_cell in self._images(y_pred)]

    def get_config(self):
        return {**super().get_config(), "seed_threshold": self.seed_threshold}


class ClassDice(_SumsMetric):
    """K classes: hard Dice of class `index`, the prediction being each pixel's argmax. (Not
    `class_id`: TFMA reads a config key of that name as a sub-key and files the metric apart.)"""

    def __init__(self, index: int = 0, name=None, **kwargs):
        super().__init__(name=name or f"class_{index}_dice", **kwargs)
        self.index = index
        self.intersection, self.total = self._sum("intersection"), self._sum("total")

    def update_state(self, y_true, y_pred, sample_weight=None):
        truth = tf.cast(tf.equal(tf.argmax(y_true, axis=-1), self.index), tf.float64)
        pred = tf.cast(tf.equal(tf.argmax(y_pred, axis=-1), self.index), tf.float64)
        self.intersection.assign_add(tf.reduce_sum(truth * pred))
        self.total.assign_add(tf.reduce_sum(truth) + tf.reduce_sum(pred))

    def result(self):
        return _ratio(2.0 * self.intersection, self.total)

    def get_config(self):
        return {**super().get_config(), "index": self.index}


class ClassIou(ClassDice):
    """K classes: hard intersection over union of class `index`, the prediction being each
    pixel's argmax."""

    def __init__(self, index: int = 0, name=None, **kwargs):
        super().__init__(index, name=name or f"class_{index}_iou", **kwargs)

    def result(self):
        return _ratio(self.intersection, self.total - self.intersection)


class MeanClassDice(keras.metrics.Metric):
    """K classes: the mean over classes of their hard (argmax) Dice."""

    def __init__(self, num_classes: int = 3, name=None, **kwargs):
        super().__init__(name=name, **kwargs)
        self.num_classes = num_classes
        self.classes = [ClassDice(k) for k in range(num_classes)]

    def update_state(self, y_true, y_pred, sample_weight=None):
        for metric in self.classes:
            metric.update_state(y_true, y_pred)

    def result(self):
        return tf.add_n([metric.result() for metric in self.classes]) / self.num_classes

    def reset_state(self):
        for metric in self.classes:
            metric.reset_state()

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes}


class ClassAccuracy(_SumsMetric):
    """K classes: share of pixels whose argmax class is the label's."""

    def __init__(self, name=None, **kwargs):
        super().__init__(name=name, **kwargs)
        self.correct, self.count = self._sum("correct"), self._sum("count")

    def update_state(self, y_true, y_pred, sample_weight=None):
        equal = tf.equal(tf.argmax(y_true, axis=-1), tf.argmax(y_pred, axis=-1))
        self.correct.assign_add(tf.reduce_sum(tf.cast(equal, tf.float64)))
        self.count.assign_add(tf.cast(tf.size(equal), tf.float64))

    def result(self):
        return _ratio(self.correct, self.count)
