"""Shared fixtures: one `test`-profile pipeline run that several test modules inspect."""

import pytest

from unet_tfx.config import load_profile
from unet_tfx.pipeline.local_runner import run_local


@pytest.fixture(scope="session")
def pipeline_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("pipeline")


@pytest.fixture(scope="session")
def pipeline_config(pipeline_dir):
    return load_profile("test", examples_dir=str(pipeline_dir / "examples"),
                        pipeline_root=str(pipeline_dir / "tfx"),
                        serving_dir=str(pipeline_dir / "serving"))


@pytest.fixture(scope="session")
def first_run(pipeline_config):
    """The first run on a fresh pipeline root: ingests the bundled data, trains, pushes."""
    summary = run_local(pipeline_config)
    assert summary.succeeded, summary.error
    return summary
