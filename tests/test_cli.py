"""The `unet-tfx` command line and the Kubeflow compilation."""

import json
import logging
import subprocess
import sys

import pytest

from unet_tfx.cli import main
from unet_tfx.config import PROFILES, load_profile


def test_help_lists_every_subcommand():
    out = subprocess.run([sys.executable, "-m", "unet_tfx.cli", "--help"], capture_output=True,
                         text=True, check=True).stdout
    for command in ("ingest", "run", "compile", "predict"):
        assert command in out


def test_profiles_scale_the_same_model():
    assert PROFILES["quick"].training.base_filters == 32  # the seed model
    assert PROFILES["test"].training.base_filters < 32
    assert load_profile("test", train_steps=9).training.train_steps == 9
    with pytest.raises(ValueError, match="quick"):
        load_profile("huge")


def test_compile_writes_a_kubeflow_v2_spec(tmp_path):
    output = tmp_path / "pipeline.json"
    code = main(["compile", "--image", "gcr.io/acme/unet-tfx:1.0", "--profile", "test",
                 "--pipeline-root", "gs://acme/tfx", "--examples-dir", "gs://acme/examples",
                 "--serving-dir", "gs://acme/serving", "--output", str(output),
                 "--beam-arg=--runner=DataflowRunner"])
    assert code == 0
    spec = json.loads(output.read_text())
    pipeline_spec = spec.get("pipelineSpec", spec)
    tasks = pipeline_spec["root"]["dag"]["tasks"]
    for node in ("ImportExampleGen", "ExampleValidator", "AnomaliesGate", "Transform", "Trainer",
                 "Evaluator", "Pusher"):
        assert node in tasks, sorted(tasks)
    text = output.read_text()
    assert "gcr.io/acme/unet-tfx:1.0" in text
    assert "--runner=DataflowRunner" in text
    assert "unet_tfx.trainer.run_fn.run_fn" in text


def test_tfx_info_chatter_is_reduced_to_component_progress():
    from unet_tfx.cli import _quiet_tfx_info

    def record(level, message):
        return logging.LogRecord("absl", level, __file__, 1, message, None, None)

    assert _quiet_tfx_info(record(logging.INFO, "Component Trainer is running."))
    assert _quiet_tfx_info(record(logging.INFO, "Component Pusher is finished."))
    assert not _quiet_tfx_info(record(logging.INFO, "udf_utils.get_fn {'train_args': ...}"))
    assert _quiet_tfx_info(record(logging.WARNING, "anything at all"))
