"""`create_pipeline`: the TFX graph from examples to a pushed, blessed SavedModel.

ImportExampleGen → StatisticsGen, ImportSchemaGen → ExampleValidator → AnomaliesGate →
Transform → Trainer → (latest blessed model) → Evaluator → Pusher. Component code is referenced
by dotted path into the installed package, so Beam workers, the Evaluator and container images
import it the same way.
"""

import dataclasses
import os
from pathlib import Path

from google.protobuf import text_format
from tensorflow_metadata.proto.v0 import schema_pb2
from tfx import v1 as tfx

from unet_tfx.components.anomalies_gate import AnomaliesGate
from unet_tfx.components.evaluation import eval_config
from unet_tfx.config import PipelineConfig

SCHEMA_FILE = Path(__file__).with_name("schema.pbtxt")
PREPROCESSING_FN = "unet_tfx.components.transform.preprocessing_fn"
RUN_FN = "unet_tfx.trainer.run_fn.run_fn"


def check_schema_matches(config: PipelineConfig, schema_file: Path) -> None:
    """The schema's height/width domains must pin the size Transform decodes at."""
    schema = text_format.Parse(Path(schema_file).read_text(), schema_pb2.Schema())
    for feature in schema.feature:
        expected = {"height": config.image_height, "width": config.image_width}.get(feature.name)
        domain = feature.int_domain
        if expected is not None and (domain.min, domain.max) != (expected, expected):
            raise ValueError(
                f"{schema_file}: feature {feature.name!r} has int_domain {domain.min}..{domain.max}"
                f" but the pipeline config decodes images at {expected}; make them agree"
            )


def _example_gen(config: PipelineConfig):
    input_base = os.path.abspath(config.examples_dir)
    if config.split == "folders":
        return tfx.components.ImportExampleGen(
            input_base=input_base,
            input_config=tfx.proto.Input(splits=[
                tfx.proto.Input.Split(name="train", pattern="train/*.tfrecord.gz"),
                tfx.proto.Input.Split(name="eval", pattern="eval/*.tfrecord.gz"),
            ]),
        )
    if config.split == "hash":
        train, evaluation = config.hash_buckets
        return tfx.components.ImportExampleGen(
            input_base=input_base,
            input_config=tfx.proto.Input(
                splits=[tfx.proto.Input.Split(name="all", pattern="*.tfrecord.gz")]),
            output_config=tfx.proto.Output(split_config=tfx.proto.SplitConfig(splits=[
                tfx.proto.SplitConfig.Split(name="train", hash_buckets=train),
                tfx.proto.SplitConfig.Split(name="eval", hash_buckets=evaluation),
            ])),
        )
    raise ValueError(f"unknown split {config.split!r}: expected 'folders' or 'hash'")


def create_pipeline(
    config: PipelineConfig,
    schema_file: Path = SCHEMA_FILE,
    metadata_connection_config=None,
    enable_cache: bool = True,
) -> tfx.dsl.Pipeline:
    """The whole graph for `config`; `metadata_connection_config` None means the orchestrator's."""
    check_schema_matches(config, schema_file)
    pipeline_root = os.path.abspath(config.pipeline_root)
    image_config = {"image_height": config.image_height, "image_width": config.image_width,
                    "channels": config.channels}

    example_gen = _example_gen(config)
    statistics_gen = tfx.components.StatisticsGen(examples=example_gen.outputs["examples"])
    schema_gen = tfx.components.ImportSchemaGen(schema_file=str(schema_file))
    example_validator = tfx.components.ExampleValidator(
        statistics=statistics_gen.outputs["statistics"], schema=schema_gen.outputs["schema"])
    anomalies_gate = AnomaliesGate(anomalies=example_validator.outputs["anomalies"])
    transform = tfx.components.Transform(
        examples=example_gen.outputs["examples"],
        schema=schema_gen.outputs["schema"],
        preprocessing_fn=PREPROCESSING_FN,
        custom_config=image_config,
    )
    transform.add_upstream_node(anomalies_gate)
    trainer = tfx.components.Trainer(
        run_fn=RUN_FN,
        examples=transform.outputs["transformed_examples"],
        transform_graph=transform.outputs["transform_graph"],
        schema=schema_gen.outputs["schema"],
        train_args=tfx.proto.TrainArgs(num_steps=config.training.train_steps),
        eval_args=tfx.proto.EvalArgs(),
        custom_config={
            **image_config,
            "training": dataclasses.asdict(config.training),
            "backup_root": os.path.join(pipeline_root, "_trainer_backup"),
        },
    )
    model_resolver = tfx.dsl.Resolver(
        strategy_class=tfx.dsl.experimental.LatestBlessedModelStrategy,
        model=tfx.dsl.Channel(type=tfx.types.standard_artifacts.Model),
        model_blessing=tfx.dsl.Channel(type=tfx.types.standard_artifacts.ModelBlessing),
    ).with_id("latest_blessed_model_resolver")
    evaluator = tfx.components.Evaluator(
        examples=example_gen.outputs["examples"],
        model=trainer.outputs["model"],
        baseline_model=model_resolver.outputs["model"],
        example_splits=["eval"],
        eval_config=eval_config(config.min_membrane_dice, config.max_dice_drop),
    )
    pusher = tfx.components.Pusher(
        model=trainer.outputs["model"],
        model_blessing=evaluator.outputs["blessing"],
        push_destination=tfx.proto.PushDestination(
            filesystem=tfx.proto.PushDestination.Filesystem(
                base_directory=os.path.join(os.path.abspath(config.serving_dir),
                                            config.model_name))),
    )
    return tfx.dsl.Pipeline(
        pipeline_name=config.name,
        pipeline_root=pipeline_root,
        components=[example_gen, statistics_gen, schema_gen, example_validator, anomalies_gate,
                    transform, trainer, model_resolver, evaluator, pusher],
        enable_cache=enable_cache,
        metadata_connection_config=metadata_connection_config,
        beam_pipeline_args=list(config.beam_args),
    )
