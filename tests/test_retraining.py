"""Scheduled retraining on the local runner (test-size model): spans, training only on new data,
warm start from the served model, a trusted eval set, and pushing only what changes what is
served."""

import glob
import json
import os

import numpy as np
import pytest
from PIL import Image

from unet_tfx.cli import main
from unet_tfx.components.example_gen import resolve_inputs, trusted_eval
from unet_tfx.components.served_model import read_training_record
from unet_tfx.config import BUNDLED_DATA, load_profile
from unet_tfx.ingest import IngestError, ingest
from unet_tfx.pipeline.history import read_history
from unet_tfx.pipeline.local_runner import metadata_path, run_local
from unet_tfx.pipeline.report import write_report
from unet_tfx.serving.local_model import served_versions

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("retraining")
    # Enough steps that the served model is a real baseline (inverted labels must show).
    config = load_profile("test", examples_dir=str(root / "examples"),
                          pipeline_root=str(root / "tfx"), serving_dir=str(root / "serving"),
                          train_steps=60, steps_per_epoch=10)
    return root, config


def _ingest_span(config, masks=str(BUNDLED_DATA / "label")):
    ingest(config.examples_dir, images=str(BUNDLED_DATA / "image"), masks=masks, eval_count=6,
           span="next")


def _versions(config):
    return served_versions(os.path.join(config.serving_dir, config.model_name))


def _history_json(config, run_index):
    """history.json of the Trainer execution of the `run_index`-th Trainer run (0-based)."""
    files = sorted(glob.glob(os.path.join(config.pipeline_root, "Trainer", "model_run", "*",
                                          "history.json")), key=lambda f: int(f.split("/")[-2]))
    with open(files[run_index]) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def span1(setup):
    _, config = setup
    _ingest_span(config)
    return run_local(config)


@pytest.fixture(scope="module")
def rerun(setup, span1):
    return run_local(setup[1])


@pytest.fixture(scope="module")
def span2(setup, rerun):
    _, config = setup
    _ingest_span(config)  # the same pairs again: "the same data" for the warm-start comparison
    return run_local(config)


@pytest.fixture(scope="module")
def inverted(setup, span2):
    root, config = setup
    masks = root / "inverted"
    masks.mkdir()
    for label in sorted((BUNDLED_DATA / "label").glob("*.png")):
        pixels = np.asarray(Image.open(label).convert("L"))
        Image.fromarray(np.where(pixels > 0, 0, 255).astype(np.uint8)).save(masks / label.name)
    _ingest_span(config, masks=str(masks))
    return run_local(config)


def test_span_1_is_read_trained_and_pushed(span1, setup):
    _, config = setup
    assert span1.succeeded, span1.error
    assert span1.spans == [1]
    assert span1.blessed and span1.pushed_to
    assert _versions(config) == [int(os.path.basename(span1.pushed_to))]
    assert read_training_record(span1.pushed_to)["spans"] == [1]


def test_the_report_of_a_span_run_shows_the_trusted_eval_images(span1, setup, tmp_path):
    """Only span-N/ folders: the page shows the oldest span's eval images, which the Evaluator
    scored (there is no flat eval/ folder)."""
    _, config = setup
    assert len(write_report(span1, config, str(tmp_path / "report.html"))) == 6
    assert "<h2>Eval images</h2>" in (tmp_path / "report.html").read_text()


def test_an_empty_eval_examples_folder_is_named_as_such(setup, span1, tmp_path):
    _, config = setup
    with pytest.raises(FileNotFoundError, match=rf"eval_examples {tmp_path}: expected the "
                       r"\*\.tfrecord\.gz shards"):
        resolve_inputs(config.examples_dir, eval_examples=str(tmp_path))


def test_the_flat_layouts_eval_split_stays_the_trusted_one_beside_later_spans(tmp_path):
    """make run's flat train/ and eval/ are span 0: a span ingested after them must not become
    the set every model is judged on (new data would grade itself)."""
    for folder in ("span-1/eval", "span-2/eval"):
        (tmp_path / folder).mkdir(parents=True)
    assert trusted_eval(str(tmp_path)) == str(tmp_path / "span-1" / "eval")
    (tmp_path / "eval").mkdir()
    assert trusted_eval(str(tmp_path)) == str(tmp_path / "eval")
    assert trusted_eval(str(tmp_path), "gs://b/trusted") == "gs://b/trusted"


def test_a_rerun_on_the_same_span_trains_nothing_and_pushes_nothing(rerun, span1, setup):
    _, config = setup
    assert rerun.succeeded, rerun.error
    assert rerun.pushed_to is None
    assert _versions(config) == [int(os.path.basename(span1.pushed_to))]
    assert len(glob.glob(os.path.join(config.pipeline_root, "Trainer", "model_run", "*",
                                      "history.json"))) == 1  # no second training


def test_an_existing_span_is_refused(setup, span1):
    _, config = setup
    with pytest.raises(IngestError, match="already exists"):
        ingest(config.examples_dir, images=str(BUNDLED_DATA / "image"),
               masks=str(BUNDLED_DATA / "label"), span=1)


def test_span_2_warm_starts_from_the_served_model_and_is_judged_against_it(span2, span1, setup):
    _, config = setup
    assert span2.succeeded, span2.error
    assert span2.spans == [2]
    assert span2.baseline_diffs  # scored against the served model (version A)
    assert span2.blessed and span2.pushed_to
    record = read_training_record(span2.pushed_to)
    assert record["spans"] == [2]
    assert record["warm_started_from"] == int(os.path.basename(span1.pushed_to))
    # Warm start shows in the first epoch: its loss is below the cold start's on the same data.
    assert _history_json(config, 1)["loss"][0] < _history_json(config, 0)["loss"][0]
    assert len(_versions(config)) == 2


def test_inverted_labels_are_not_blessed_and_the_served_model_stays(inverted, span2, setup):
    _, config = setup
    assert inverted.succeeded, inverted.error
    assert inverted.spans == [3]
    assert inverted.blessed is False
    assert inverted.pushed_to is None
    assert _versions(config)[-1] == int(os.path.basename(span2.pushed_to))


def test_history_lists_every_run_and_plots_the_gated_metric(inverted, setup, capsys):
    _, config = setup
    runs = read_history(metadata_path(config))
    assert [r.spans for r in runs] == [[1], [1], [2], [3]]
    assert [bool(r.pushed_to) for r in runs] == [True, False, True, False]
    assert main(["history", "--pipeline-root", config.pipeline_root]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") >= 6 and "NO" in out
    assert Image.open(os.path.join(config.pipeline_root, "history.png")).size[0] > 200
