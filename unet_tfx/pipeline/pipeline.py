"""`create_pipeline`: the TFX graph from examples to a pushed, blessed SavedModel.

ImportExampleGen → StatisticsGen, ConfiguredSchemaGen → ExampleValidator → AnomaliesGate →
Transform → Trainer → Evaluator (against ServedModel, the version served now) → Pusher.
Component code is referenced by dotted path into the installed package, so Beam workers, the
Evaluator and container images import it the same way. Paths may be local or remote URIs.
"""

import dataclasses
import os

from tfx import v1 as tfx
from tfx.components import FileBasedExampleGen
from tfx.dsl.components.base import executor_spec

from unet_tfx.components.anomalies_gate import AnomaliesGate
from unet_tfx.components.evaluation import eval_config
from unet_tfx.components.example_gen import SpanImportExecutor
from unet_tfx.components.example_gen import custom_config as example_gen_config
from unet_tfx.components.pusher import ServingPusher
from unet_tfx.components.schema import ConfiguredSchemaGen
from unet_tfx.components.served_model import BaselineEvaluatorExecutor, ServedModel
from unet_tfx.config import PipelineConfig, resolve_uri
from unet_tfx.ingest.spans import list_spans

PREPROCESSING_FN = "unet_tfx.components.transform.preprocessing_fn"
RUN_FN = "unet_tfx.trainer.run_fn.run_fn"


def model_base(config: PipelineConfig) -> str:
    """`<serving_dir>/<model_name>`: the folder TF Serving's --model_base_path points at."""
    return os.path.join(resolve_uri(config.serving_dir), config.model_name)


def _example_gen(config: PipelineConfig):
    input_base = resolve_uri(config.examples_dir)
    if config.split == "folders":
        # The executor picks the spans when it runs; these patterns only let TFX's local driver
        # fingerprint every file that may be read (a new span means a new fingerprint).
        spans = "span-*/" if "://" not in input_base and list_spans(input_base) else ""
        return FileBasedExampleGen(
            input_base=input_base,
            input_config=tfx.proto.Input(splits=[
                tfx.proto.Input.Split(name=split, pattern=f"{spans}{split}/*.tfrecord.gz")
                for split in ("train", "eval")]),
            custom_config=example_gen_config(config.span_window,
                                             resolve_uri(config.eval_examples)
                                             if config.eval_examples else ""),
            custom_executor_spec=executor_spec.BeamExecutorSpec(SpanImportExecutor),
        ).with_id("ImportExampleGen")
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
    metadata_connection_config=None,
    enable_cache: bool = True,
    served_cache_key: str = "",
    vertex_training: dict | None = None,
) -> tfx.dsl.Pipeline:
    """The whole graph for `config`; `metadata_connection_config` None means the orchestrator's.

    `served_cache_key` names the version served now, where the caller knows it (local runs), so
    that a cached ServedModel step is reused only while the served version is the same. With
    `vertex_training` (the extension's custom_config keys), the Trainer runs as a Vertex AI
    custom job through TFX's google_cloud_ai_platform Trainer.
    """
    pipeline_root = resolve_uri(config.pipeline_root)
    image_config = {"image_height": config.image_height, "image_width": config.image_width,
                    "channels": config.channels, "num_classes": config.num_classes}

    example_gen = _example_gen(config)
    statistics_gen = tfx.components.StatisticsGen(examples=example_gen.outputs["examples"])
    schema_gen = ConfiguredSchemaGen(image_height=config.image_height,
                                     image_width=config.image_width)
    example_validator = tfx.components.ExampleValidator(
        statistics=statistics_gen.outputs["statistics"], schema=schema_gen.outputs["schema"])
    anomalies_gate = AnomaliesGate(anomalies=example_validator.outputs["anomalies"])
    # Transform analyzes only: the Trainer applies its graph to the raw examples in tf.data
    # (unet_tfx/trainer/dataset.py). Materialized float32 output and its statistics held every
    # transformed example in the local Beam runner's memory (11 GB and growing at 5,000 512²
    # examples); StatisticsGen already describes the raw data.
    transform = tfx.components.Transform(
        examples=example_gen.outputs["examples"],
        schema=schema_gen.outputs["schema"],
        preprocessing_fn=PREPROCESSING_FN,
        custom_config=image_config,
        materialize=False,
        disable_statistics=True,
    )
    transform.add_upstream_node(anomalies_gate)
    served_model = ServedModel(examples=example_gen.outputs["examples"],
                               model_base=model_base(config), warm_start=int(config.warm_start),
                               force=int(config.force), cache_key=served_cache_key)
    trainer_class = (tfx.extensions.google_cloud_ai_platform.Trainer if vertex_training
                     else tfx.components.Trainer)
    trainer = trainer_class(
        run_fn=RUN_FN,
        examples=example_gen.outputs["examples"],
        transform_graph=transform.outputs["transform_graph"],
        schema=schema_gen.outputs["schema"],
        base_model=served_model.outputs["model"],
        hyperparameters=served_model.outputs["plan"],
        train_args=tfx.proto.TrainArgs(num_steps=config.training.train_steps),
        eval_args=tfx.proto.EvalArgs(),
        custom_config={
            **image_config,
            "training": dataclasses.asdict(config.training),
            "serving_limits": dataclasses.asdict(config.serving_limits),
            "backup_root": os.path.join(pipeline_root, "_trainer_backup"),
            **(vertex_training or {}),
        },
    ).with_id("Trainer")
    evaluator = tfx.components.Evaluator(
        examples=example_gen.outputs["examples"],
        model=trainer.outputs["model"],
        baseline_model=served_model.outputs["model"],
        example_splits=["eval"],
        eval_config=eval_config(config.min_membrane_dice, config.max_dice_drop,
                                config.num_classes, config.training.mask_threshold,
                                config.training.cell_seed_threshold),
    )
    evaluator.executor_spec = executor_spec.BeamExecutorSpec(BaselineEvaluatorExecutor)
    pusher = ServingPusher(model=trainer.outputs["model"],
                           model_blessing=evaluator.outputs["blessing"],
                           model_base=model_base(config), keep_versions=config.keep_versions
                           ).with_id("Pusher")
    return tfx.dsl.Pipeline(
        pipeline_name=config.name,
        pipeline_root=pipeline_root,
        components=[example_gen, statistics_gen, schema_gen, example_validator, anomalies_gate,
                    served_model, transform, trainer, evaluator, pusher],
        enable_cache=enable_cache,
        metadata_connection_config=metadata_connection_config,
        beam_pipeline_args=list(config.beam_args),
    )
