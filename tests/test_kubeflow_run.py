"""Conformance run: the compiled `kubeflow` spec (test profile), executed task by task as the
open-source KFP backend would (`unet_tfx.pipeline.kfp_local`), each task's own container
command in a subprocess, with the package installed as the image installs it (non-editable) and
run from a folder outside the checkout. Two runs: span 1, then span 2, which the executor finds
by itself (no driver runs), warm-starting from the model the first run pushed and judged
against it."""

import glob
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import json_format

from unet_tfx.components.served_model import read_training_record
from unet_tfx.config import BUNDLED_DATA, load_profile
from unet_tfx.ingest import ingest
from unet_tfx.pipeline import kfp_local
from unet_tfx.pipeline.kubeflow import compile_pipeline
from unet_tfx.pipeline.run_summary import eval_metrics
from unet_tfx.serving.local_model import LocalModel, served_versions

pytestmark = pytest.mark.e2e
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TASKS = {"ImportExampleGen", "StatisticsGen", "ConfiguredSchemaGen", "ExampleValidator",
         "AnomaliesGate", "Transform", "Trainer", "ServedModel", "Evaluator", "Pusher"}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """What a cluster would provide: the image's Python environment and shared storage."""
    root = tmp_path_factory.mktemp("kfp")
    image = root / "image"  # the package exactly as the Dockerfile installs it
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                    "--no-build-isolation", "--target", str(image), REPO], check=True)
    env = {**os.environ, "PYTHONPATH": str(image), "TF_USE_LEGACY_KERAS": "1",
           "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]}
    workdir = root / "work"
    workdir.mkdir()
    _ingest_span(root / "examples")
    config = load_profile("test", examples_dir=str(root / "examples"),
                          pipeline_root=str(root / "root"), serving_dir=str(root / "serving"))
    spec_path = compile_pipeline(config, "registry.example/unet-tfx:test",
                                 str(root / "pipeline.yaml"), "kubeflow")
    return {"root": root, "image": image, "env": env, "workdir": workdir, "config": config,
            "spec": kfp_local.load_spec(spec_path)}


def _ingest_span(examples):
    ingest(str(examples), images=str(BUNDLED_DATA / "image"), masks=str(BUNDLED_DATA / "label"),
           eval_count=6, span="next")


def _run(cluster, run_id):
    return kfp_local.run_spec(cluster["spec"], cluster["config"].pipeline_root, run_id,
                              workdir=str(cluster["workdir"]), env=cluster["env"])


def _model_base(cluster):
    config = cluster["config"]
    return os.path.join(config.serving_dir, config.model_name)


def _custom(artifact, name):
    return json_format.MessageToDict(artifact.metadata).get(name)


@pytest.fixture(scope="module")
def first_run(cluster):
    return _run(cluster, "run-1")


@pytest.fixture(scope="module")
def second_run(cluster, first_run):
    _ingest_span(cluster["config"].examples_dir)  # new data arrives between the runs
    return _run(cluster, "run-2")


def test_tasks_import_the_installed_package_not_the_checkout(cluster):
    out = subprocess.run([sys.executable, "-c", "import unet_tfx; print(unet_tfx.__file__)"],
                         cwd=cluster["workdir"], env=cluster["env"], capture_output=True,
                         text=True, check=True).stdout
    assert out.startswith(str(cluster["image"]))


def test_first_run_completes_every_task_and_pushes_a_model_that_answers(cluster, first_run):
    assert {n: r.state for n, r in first_run.items()} == {n: "COMPLETE" for n in TASKS}
    assert _custom(first_run["ServedModel"].outputs["model"][0], "served_version") == 0
    assert _custom(first_run["Evaluator"].outputs["blessing"][0], "blessed") == 1
    versions = served_versions(_model_base(cluster))
    assert len(versions) == 1
    model = LocalModel(os.path.join(_model_base(cluster), str(versions[0])))
    out = model.segment([(BUNDLED_DATA / "test" / "0.png").read_bytes()])
    assert out.shape == (1, 512, 512, 1) and out.dtype == np.float32
    assert 0.0 <= out.min() and out.max() <= 1.0


def _count(run, split):
    examples = run["ImportExampleGen"].outputs["examples"][0].uri
    files = glob.glob(os.path.join(examples, f"Split-{split}", "*"))
    return sum(1 for _ in tf.data.TFRecordDataset(files, compression_type="GZIP"))


def test_second_run_reads_the_new_span_and_is_judged_against_the_served_model(
        cluster, first_run, second_run):
    states = {n: r.state for n, r in second_run.items()}
    # KFP's cache rule: a task with constant inputs is reused ...
    assert states["ConfiguredSchemaGen"] == "CACHED"
    # ... but ExampleGen and ServedModel read what the spec does not name, and always run.
    assert states["ImportExampleGen"] == states["ServedModel"] == "COMPLETE"
    examples = [run["ImportExampleGen"].outputs["examples"][0] for run in (first_run, second_run)]
    assert [_custom(e, "spans") for e in examples] == ["1", "2"]
    assert _count(second_run, "train") == 24 and _count(second_run, "eval") == 6  # one span
    first_version, *later = served_versions(_model_base(cluster))
    assert _custom(second_run["ServedModel"].outputs["model"][0], "served_version") == \
        first_version
    metrics, diffs = eval_metrics(second_run["Evaluator"].outputs["evaluation"][0].uri)
    assert "membrane_dice" in metrics and "membrane_dice" in diffs  # compared with the baseline
    trained = second_run["Trainer"].outputs["model"][0].uri
    record = read_training_record(os.path.join(trained, "Format-Serving"))
    assert record["spans"] == [2] and record["warm_started_from"] == first_version
