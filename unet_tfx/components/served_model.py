"""The model TF Serving serves now, read from the serving base: the Evaluator's baseline, the
Trainer's warm start, and the training plan (is there new data to train on?).

TFX's latest-blessed-model Resolver queries ML Metadata, which open-source Kubeflow Pipelines
does not run (no `resolver` executors). Reading the highest numeric version under the serving
base works on every orchestrator, and compares each candidate with what clients really get.
"""

import json
import logging
import os

import tensorflow as tf
from tfx import v1 as tfx
from tfx.components.evaluator import executor as evaluator_executor
from tfx.types import standard_component_specs
from tfx.utils import io_utils, path_utils

from unet_tfx.serving.local_model import served_versions

log = logging.getLogger("unet_tfx.components")

VERSION_PROPERTY = "served_version"  # 0: nothing is served yet
SOURCE_PROPERTY = "served_from"
# Written by the Trainer into every exported model: what it was trained on.
TRAINING_RECORD = os.path.join("assets.extra", "unet_tfx_training.json")
PLAN_FILE = "plan.json"  # the Trainer reads the only file of its `hyperparameters` input


def read_training_record(saved_model_dir: str) -> dict:
    """The Trainer's record in an exported model ({} for models exported without one)."""
    path = os.path.join(saved_model_dir, TRAINING_RECORD)
    return json.loads(io_utils.read_string_file(path)) if tf.io.gfile.exists(path) else {}


def _spans(examples) -> list[int]:
    text = examples.get_string_custom_property("spans")
    return [int(s) for s in text.split(",")] if text else [examples.span or 0]


@tfx.dsl.components.component
def ServedModel(
    examples: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.Examples],
    model: tfx.dsl.components.OutputArtifact[tfx.types.standard_artifacts.Model],
    plan: tfx.dsl.components.OutputArtifact[tfx.types.standard_artifacts.HyperParameters],
    model_base: tfx.dsl.components.Parameter[str],
    warm_start: tfx.dsl.components.Parameter[int] = 1,
    force: tfx.dsl.components.Parameter[int] = 0,
    cache_key: tfx.dsl.components.Parameter[str] = "",
) -> None:
    """Copy the highest version under `model_base` into `model` (a snapshot: retention may
    delete the served folder while the Evaluator still reads it), and write the training plan
    the Trainer follows: train only when `examples` holds spans the served model was not trained
    on (or `force`), warm-starting from it when `warm_start`.

    `cache_key` changes when the served version does, so that an orchestrator that caches by
    parameters re-runs this step; orchestrators that cannot know it in advance disable caching
    for this step instead.
    """
    versions = served_versions(model_base)
    spans = _spans(examples)
    record, version = {}, versions[-1] if versions else 0
    model.set_int_custom_property(VERSION_PROPERTY, version)
    if version:
        source = os.path.join(model_base, str(version))
        snapshot = path_utils.serving_model_dir(model.uri)
        io_utils.copy_dir(source, snapshot)
        record = read_training_record(snapshot)
        model.set_string_custom_property(SOURCE_PROPERTY, source)
        log.info("served now: version %d from %s, trained on spans %s", version, source,
                 record.get("spans", "unknown"))
    else:
        log.info("nothing served under %s yet: the Evaluator runs without a baseline", model_base)
    new_data = not version or record.get("spans") != spans
    decision = {
        "spans": spans,
        "served_version": version,
        "served_spans": record.get("spans"),
        "train": bool(new_data or force),
        "warm_start": bool(version and warm_start),
        "reason": ("forced" if force and not new_data else
                   "new data" if new_data else
                   f"spans {spans} are what version {version} was trained on"),
    }
    io_utils.write_string_file(os.path.join(plan.uri, PLAN_FILE), json.dumps(decision))
    log.info("training plan: %s", decision)


def is_served(model) -> bool:
    return model.get_int_custom_property(VERSION_PROPERTY) > 0


class BaselineEvaluatorExecutor(evaluator_executor.Executor):
    """TFX's Evaluator, with an empty `ServedModel` snapshot treated as no baseline."""

    def Do(self, input_dict, output_dict, exec_properties):
        key = standard_component_specs.BASELINE_MODEL_KEY
        if input_dict.get(key) and not is_served(input_dict[key][0]):
            input_dict = {k: v for k, v in input_dict.items() if k != key}
        super().Do(input_dict, output_dict, exec_properties)
