"""Soft Dice coefficient and the Dice losses the trainer can use."""

import tensorflow as tf


def dice_coef(y_true, y_pred, smooth: float = 1.0):
    """Soft Dice of the positive (cell) class over the whole batch, as in the seed."""
    y_true = tf.reshape(tf.cast(y_true, tf.float32), [-1])
    y_pred = tf.reshape(tf.cast(y_pred, tf.float32), [-1])
    intersection = tf.reduce_sum(y_true * y_pred)
    return (2.0 * intersection + smooth) / (tf.reduce_sum(y_true) + tf.reduce_sum(y_pred) + smooth)


def dice_loss(y_true, y_pred):
    """The seed's loss: 1 - soft Dice of the cell class alone."""
    return 1.0 - dice_coef(y_true, y_pred)


def two_class_dice_loss(y_true, y_pred):
    """Mean of the cell-class and membrane-class Dice losses.

    The membrane (label 0) is the minority class; the single-class loss can sit on the trivial
    all-cell answer, this one cannot.
    """
    y_true = tf.cast(y_true, tf.float32)
    y_pred = tf.cast(y_pred, tf.float32)
    return 1.0 - 0.5 * (dice_coef(y_true, y_pred) + dice_coef(1.0 - y_true, 1.0 - y_pred))


def multiclass_dice_loss(y_true, y_pred, smooth: float = 1.0):
    """K classes: 1 - the mean over classes of each class's soft Dice over the whole batch
    (y_true one-hot, y_pred softmax, both [..., K]). For K = 2 it is `two_class_dice_loss`."""
    y_true = tf.cast(y_true, tf.float32)
    y_pred = tf.cast(y_pred, tf.float32)
    axes = tf.range(tf.rank(y_true) - 1)
    intersection = tf.reduce_sum(y_true * y_pred, axis=axes)
    totals = tf.reduce_sum(y_true, axis=axes) + tf.reduce_sum(y_pred, axis=axes)
    return 1.0 - tf.reduce_mean((2.0 * intersection + smooth) / (totals + smooth))


def two_class_dice_bce_loss(y_true, y_pred):
    """`two_class_dice_loss` plus the pixels' mean binary cross-entropy."""
    y_true = tf.cast(y_true, tf.float32)
    y_pred = tf.cast(y_pred, tf.float32)
    bce = tf.reduce_mean(tf.keras.losses.binary_crossentropy(y_true, y_pred))
    return two_class_dice_loss(y_true, y_pred) + bce


LOSSES = {"dice": dice_loss, "dice2": two_class_dice_loss, "dice2_bce": two_class_dice_bce_loss}
