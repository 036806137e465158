"""The Trainer's pieces that the pipeline run does not pin down: input patches and backups."""

import types

import numpy as np
import tensorflow as tf

from unet_tfx.trainer.dataset import _augment
from unet_tfx.trainer.run_fn import backup_dir


def _fn_args(train_files):
    return types.SimpleNamespace(train_files=train_files, eval_files=["/e/*"],
                                 transform_output="/t")


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
    for seed in range(5):
        patch, patch_mask = _augment(image, mask, 16, True, tf.constant([seed, 7], tf.int64))
        assert patch.shape == (16, 16, 1) and patch_mask.shape == (16, 16, 1)
        np.testing.assert_array_equal(patch, patch_mask)
