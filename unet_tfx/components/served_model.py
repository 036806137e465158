"""The Evaluator's baseline: the model TF Serving serves now, read from the serving base.

TFX's latest-blessed-model Resolver queries ML Metadata, which open-source Kubeflow Pipelines
does not run (no `resolver` executors). Reading the highest numeric version under the serving
base works on every orchestrator, and compares each candidate with what clients really get.
"""

import logging
import os

from tfx import v1 as tfx
from tfx.components.evaluator import executor as evaluator_executor
from tfx.types import standard_component_specs
from tfx.utils import io_utils, path_utils

from unet_tfx.serving.local_model import served_versions

log = logging.getLogger("unet_tfx.components")

VERSION_PROPERTY = "served_version"  # 0: nothing is served yet
SOURCE_PROPERTY = "served_from"


@tfx.dsl.components.component
def ServedModel(
    model: tfx.dsl.components.OutputArtifact[tfx.types.standard_artifacts.Model],
    model_base: tfx.dsl.components.Parameter[str],
    cache_key: tfx.dsl.components.Parameter[str] = "",
) -> None:
    """Copy the highest version under `model_base` into `model` (a snapshot: retention may
    delete the served folder while the Evaluator still reads it).

    `cache_key` changes when the served version does, so that an orchestrator that caches by
    parameters re-runs this step; orchestrators that cannot know it in advance disable caching
    for this step instead.
    """
    versions = served_versions(model_base)
    if not versions:
        log.info("nothing served under %s yet: the Evaluator runs without a baseline", model_base)
        model.set_int_custom_property(VERSION_PROPERTY, 0)
        return
    source = os.path.join(model_base, str(versions[-1]))
    io_utils.copy_dir(source, path_utils.serving_model_dir(model.uri))
    model.set_int_custom_property(VERSION_PROPERTY, versions[-1])
    model.set_string_custom_property(SOURCE_PROPERTY, source)
    log.info("baseline: version %d served from %s", versions[-1], source)


def is_served(model) -> bool:
    return model.get_int_custom_property(VERSION_PROPERTY) > 0


class BaselineEvaluatorExecutor(evaluator_executor.Executor):
    """TFX's Evaluator, with an empty `ServedModel` snapshot treated as no baseline."""

    def Do(self, input_dict, output_dict, exec_properties):
        key = standard_component_specs.BASELINE_MODEL_KEY
        if input_dict.get(key) and not is_served(input_dict[key][0]):
            input_dict = {k: v for k, v in input_dict.items() if k != key}
        super().Do(input_dict, output_dict, exec_properties)
