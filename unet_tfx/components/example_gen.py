"""ImportExampleGen that resolves spans inside its executor, so it works on every orchestrator.

TFX resolves `{SPAN}` in ExampleGen's driver, which open-source Kubeflow never runs, and a
rolling window of spans needs a resolver, which it does not run either. This executor looks at
`input_base` when it runs:

- span layout (`unet-tfx ingest --span N`): `span-1/`, `span-2/`, ... each with `train/` and
  `eval/`. The train split reads the newest `window` spans; the eval split reads the trusted
  eval set: `eval_examples` if configured, else the oldest span's eval split, so that new data
  cannot grade itself.
- flat layout (`train/`, `eval/` directly under `input_base`): span 0, as before.

The span(s) read are recorded on the output artifact (`span`, and `spans` as "1,2").
"""

import os

import apache_beam as beam
import tensorflow as tf
from google.protobuf import json_format, struct_pb2
from tfx.components.example_gen.import_example_gen import executor as import_executor
from tfx.proto import example_gen_pb2
from tfx.types import standard_component_specs as specs
from tfx.utils import proto_utils

from unet_tfx.ingest.spans import list_spans, span_dir

RECORDS = "*.tfrecord.gz"
PATTERN_SEPARATOR = ";"  # between the absolute patterns of one split


def trusted_eval(input_base: str, eval_examples: str = "") -> str:
    """The folder of the eval examples every model is judged on: `eval_examples`, else the
    oldest data's eval split: the flat layout's eval/ (span 0, also beside spans ingested
    later), else the oldest span's."""
    if eval_examples:
        return eval_examples
    flat = os.path.join(input_base, "eval")
    spans = list_spans(input_base)
    return os.path.join(span_dir(input_base, spans[0]), "eval") if spans and not \
        tf.io.gfile.isdir(flat) else flat


def resolve_inputs(input_base: str, window: int = 1, eval_examples: str = "") -> dict:
    """What one execution reads: {"spans": [...], "train": [patterns], "eval": [patterns]}."""
    spans = list_spans(input_base)
    if not spans:
        train = [os.path.join(input_base, "train", RECORDS)]
        chosen = [0]
    else:
        chosen = spans[-max(window, 1):]
        train = [os.path.join(span_dir(input_base, s), "train", RECORDS) for s in chosen]
    evaluation = [os.path.join(trusted_eval(input_base, eval_examples), RECORDS)]
    for split, patterns in (("train", train), ("eval", evaluation)):
        if not any(tf.io.gfile.glob(p) for p in patterns):
            where = (f"eval_examples {eval_examples}: expected the {RECORDS} shards of "
                     "`unet-tfx ingest`" if split == "eval" and eval_examples else
                     f"input_base {input_base}: expected span-N/{split}/ or {split}/ folders "
                     "as `unet-tfx ingest` writes them")
            raise FileNotFoundError(f"{split} split: no examples match {patterns} ({where})")
    return {"spans": chosen, "train": train, "eval": evaluation}


def custom_config(window: int, eval_examples: str) -> example_gen_pb2.CustomConfig:
    """The executor's settings, as the CustomConfig proto ExampleGen carries."""
    settings = struct_pb2.Struct()
    settings.update({"window": window, "eval_examples": eval_examples})
    config = example_gen_pb2.CustomConfig()
    config.custom_config.Pack(settings)
    return config


def _settings(exec_properties: dict) -> dict:
    config = example_gen_pb2.CustomConfig()
    proto_utils.json_to_proto(exec_properties.get(specs.CUSTOM_CONFIG_KEY) or "{}", config)
    settings = struct_pb2.Struct()
    if config.HasField("custom_config"):
        config.custom_config.Unpack(settings)
    return json_format.MessageToDict(settings)


@beam.ptransform_fn
def _read_records(pipeline, exec_properties, split_pattern):
    """Every TFRecord file of the `;`-separated absolute patterns, as tf.train.Examples."""
    reads = [pipeline | f"Read[{i}]" >> beam.io.ReadFromTFRecord(file_pattern=pattern)
             for i, pattern in enumerate(split_pattern.split(PATTERN_SEPARATOR))]
    return (reads | "Flatten" >> beam.Flatten()
            | "ToTFExample" >> beam.Map(tf.train.Example.FromString))


class SpanImportExecutor(import_executor.Executor):
    """ImportExampleGen's executor, reading the spans `resolve_inputs` picks."""

    def GetInputSourceToExamplePTransform(self) -> beam.PTransform:
        return _read_records

    def Do(self, input_dict, output_dict, exec_properties):
        settings = _settings(exec_properties)
        resolved = resolve_inputs(exec_properties[specs.INPUT_BASE_KEY],
                                  int(settings.get("window", 1)),
                                  settings.get("eval_examples", ""))
        input_config = example_gen_pb2.Input(splits=[
            example_gen_pb2.Input.Split(name=name, pattern=PATTERN_SEPARATOR.join(resolved[name]))
            for name in ("train", "eval")])
        exec_properties = {**exec_properties,
                           specs.INPUT_CONFIG_KEY: proto_utils.proto_to_json(input_config),
                           specs.OUTPUT_CONFIG_KEY: proto_utils.proto_to_json(
                               example_gen_pb2.Output())}
        super().Do(input_dict, output_dict, exec_properties)
        for examples in output_dict[specs.EXAMPLES_KEY]:
            examples.span = resolved["spans"][-1]
            examples.set_string_custom_property("spans", ",".join(map(str, resolved["spans"])))
