"""The Trainer's pieces that the pipeline run does not pin down: input patches and backups."""

import types

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras
from tensorflow.python.autograph.impl import conversion

from unet_tfx.config import TrainingConfig
from unet_tfx.trainer.augment import random_intensity
from unet_tfx.trainer.autograph import leave_tf_keras_unconverted, tf_keras_rules
from unet_tfx.trainer.dataset import _augment, _random_crop
from unet_tfx.trainer.run_fn import backup_dir, epoch_plan


def _fn_args(train_files):
    return types.SimpleNamespace(train_files=train_files, eval_files=["/e/*"],
                                 transform_output="/t")


def test_autograph_leaves_keras_2s_code_alone_and_still_converts_ours():
    # Converting tf_keras made tracing the quick profile's train step take 22-26 s, not 4.4 s.
    assert conversion.is_allowlisted(keras.Model.train_step)
    assert conversion.is_allowlisted(keras.layers.BatchNormalization.call)
    assert not conversion.is_allowlisted(random_intensity)
    leave_tf_keras_unconverted()  # again: the rule is there once
    assert len(tf_keras_rules()) == 1


def test_backup_folder_is_stable_for_a_retry_and_new_for_a_changed_config():
    config = {"backup_root": "/root/backup", "training": {"train_steps": 700}}
    first = backup_dir(_fn_args(["/x/*"]), config)
    assert first == backup_dir(_fn_args(["/x/*"]), dict(config))
    assert first.startswith("/root/backup/")
    assert first != backup_dir(_fn_args(["/y/*"]), config)
    assert first != backup_dir(_fn_args(["/x/*"]), {**config, "training": {"train_steps": 5}})


def test_patches_cut_image_and_mask_together():
    image = tf.reshape(tf.range(64 * 64, dtype=tf.float32), [64, 64, 1])
    mask = image  # the same pixels: any misalignment between the two would show
    cfg = TrainingConfig(patch_size=16, augment=True)
    for seed in range(5):
        patch, patch_mask = _augment(image, mask, cfg, tf.constant([seed, 7], tf.int64))
        assert patch.shape == (16, 16, 1) and patch_mask.shape == (16, 16, 1)
        np.testing.assert_array_equal(patch, patch_mask)


def test_crops_are_the_windows_stateless_random_crop_takes_from_image_and_mask_together():
    rng = np.random.default_rng(0)
    image = tf.constant(rng.random((48, 40, 3)), tf.float32)
    mask = tf.constant(rng.random((48, 40, 2)) > 0.5, tf.float32)
    for seed in range(6):
        seed = tf.constant([seed, 11], tf.int64)
        patch, patch_mask = _random_crop(image, mask, 16, seed)
        both = tf.image.stateless_random_crop(tf.concat([image, mask], -1), [16, 16, 5], seed)
        np.testing.assert_array_equal(tf.concat([patch, patch_mask], -1), both)


def _blobs(size: int = 64) -> tf.Tensor:
    """[size, size, 1] float {0, 1}: a few discs, so that a misaligned warp shows."""
    rows, cols = np.mgrid[:size, :size]
    blobs = np.zeros((size, size), np.float32)
    for r, c, radius in ((16, 20, 9), (40, 44, 12), (50, 12, 6)):
        blobs[(rows - r) ** 2 + (cols - c) ** 2 < radius**2] = 1
    return tf.constant(blobs[..., None])


def test_warps_move_image_and_mask_together_and_keep_the_mask_binary():
    blobs = _blobs()
    cfg = TrainingConfig(patch_size=64, augment=True, rotate_degrees=20, scale=0.15,
                         elastic_sigma=4)
    plain = TrainingConfig(patch_size=64, augment=True)
    moved = 0
    for seed in range(4):
        seed = tf.constant([seed, 3], tf.int64)
        image, mask = _augment(blobs, blobs, cfg, seed)
        assert set(np.unique(mask.numpy())) <= {0.0, 1.0}
        # The image is sampled bilinearly, the mask by nearest neighbour: they differ only
        # along the discs' edges.
        assert np.mean((image.numpy() > 0.5) == (mask.numpy() > 0.5)) > 0.97
        np.testing.assert_array_equal(image, _augment(blobs, blobs, cfg, seed)[0])  # seeded
        moved += np.mean(mask.numpy() != _augment(blobs, blobs, plain, seed)[1].numpy())
    assert moved / 4 > 0.02  # the warp really moves pixels


def test_intensity_changes_the_image_only():
    blobs = _blobs()
    cfg = TrainingConfig(patch_size=64, augment=True, brightness=0.5, contrast=0.3)
    plain = TrainingConfig(patch_size=64, augment=True)
    seed = tf.constant([1, 2], tf.int64)
    image, mask = _augment(blobs, blobs, cfg, seed)
    plain_image, plain_mask = _augment(blobs, blobs, plain, seed)
    np.testing.assert_array_equal(mask, plain_mask)
    assert np.abs(image - plain_image).max() > 0.01


def test_gamma_bends_the_middle_tones_and_keeps_the_range():
    ramp = tf.reshape(tf.linspace(-2.0, 3.0, 64 * 64), [64, 64, 1])
    changed = 0.0
    for seed in range(4):
        image = random_intensity(ramp, tf.constant([seed, 5], tf.int64), brightness=0.0,
                                 contrast=0.0, gamma=0.5).numpy()
        assert image.min() == pytest.approx(-2.0, abs=1e-5)
        assert image.max() == pytest.approx(3.0, abs=1e-5)
        assert np.all(np.diff(image.ravel()) >= -1e-5)  # still monotonic: a curve, no noise
        changed += np.abs(image - ramp.numpy()).max()
    assert changed / 4 > 0.1


def test_train_steps_become_whole_epochs_and_a_rounding_is_said(caplog):
    assert epoch_plan(1500, 150) == (10, 150)
    assert epoch_plan(100, 150) == (1, 100)  # not one epoch of 150
    assert "rounded" not in caplog.text
    assert epoch_plan(1000, 150) == (7, 150)
    assert "training 1050 steps: 1000 train steps rounded up to whole epochs of 150" in caplog.text
