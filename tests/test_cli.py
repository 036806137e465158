"""The `unet-tfx` command line and the Kubeflow compilation."""

import logging
import subprocess
import sys

import pytest

from unet_tfx.config import PROFILES, load_profile


def test_help_lists_every_subcommand():
    out = subprocess.run([sys.executable, "-m", "unet_tfx.cli", "--help"], capture_output=True,
                         text=True, check=True).stdout
    for command in ("ingest", "run", "compile", "submit", "predict"):
        assert command in out


def test_profiles_scale_the_same_model():
    assert PROFILES["quick"].training.base_filters == 32  # the seed model
    assert PROFILES["test"].training.base_filters < 32
    assert load_profile("test", train_steps=9).training.train_steps == 9
    with pytest.raises(ValueError, match="quick"):
        load_profile("huge")


def test_tfx_info_chatter_is_reduced_to_component_progress():
    from unet_tfx.cli import _quiet_tfx_info

    def record(level, message):
        return logging.LogRecord("absl", level, __file__, 1, message, None, None)

    assert _quiet_tfx_info(record(logging.INFO, "Component Trainer is running."))
    assert _quiet_tfx_info(record(logging.INFO, "Component Pusher is finished."))
    assert not _quiet_tfx_info(record(logging.INFO, "udf_utils.get_fn {'train_args': ...}"))
    assert _quiet_tfx_info(record(logging.WARNING, "anything at all"))
