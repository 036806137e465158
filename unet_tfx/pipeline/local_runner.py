"""Run the pipeline on one machine: LocalDagRunner, SQLite MLMD, Beam's DirectRunner."""

import dataclasses
import logging
import os
import time

import tensorflow as tf
from tfx import v1 as tfx

from unet_tfx.config import ConfigError, PipelineConfig
from unet_tfx.dataset_spec import DEFAULT_DATASET, DatasetSpec, load_dataset
from unet_tfx.ingest.errors import IngestError
from unet_tfx.pipeline.pipeline import create_pipeline, model_base
from unet_tfx.pipeline.run_summary import RunSummary, summarize_run
from unet_tfx.serving.local_model import served_versions

log = logging.getLogger("unet_tfx.pipeline")


def direct_runner_args(workers: int) -> tuple:
    """DirectRunner options: 1 runs in this process, N > 1 (or 0: every core) in worker processes.

    In-process is the default: on the 30-image membrane set, starting worker processes costs
    more than it saves (bench/bench_pipeline.py measured 2.0x the time on 2 cores). TensorFlow
    inside Transform and the Evaluator uses every core either way.
    """
    if workers == 1:
        return ("--direct_running_mode=in_memory",)
    return ("--direct_running_mode=multi_processing", f"--direct_num_workers={workers}")


def metadata_path(config: PipelineConfig) -> str:
    return os.path.join(os.path.abspath(config.pipeline_root), "metadata.sqlite")


def check_local_root(config: PipelineConfig) -> None:
    """ConfigError for a remote pipeline root: a local run keeps its SQLite ML Metadata there."""
    if "://" in config.pipeline_root:
        raise ConfigError(f"--pipeline-root {config.pipeline_root}: a local run keeps ML Metadata "
                          "in SQLite under its pipeline root: expected a local folder (remote "
                          "roots are for `unet-tfx compile`)")


def ensure_examples(config: PipelineConfig, dataset: DatasetSpec | None = None) -> None:
    """Ingest `dataset` (default: the bundled membrane data, 24 train / 6 eval) if
    `examples_dir` has nothing yet."""
    if tf.io.gfile.exists(config.examples_dir):
        return
    if "://" in config.examples_dir:
        raise IngestError(f"{config.examples_dir}: no examples there: expected them ingested "
                          "(locally, then copied) before the run")
    from unet_tfx.ingest import ingest

    dataset = dataset or load_dataset(DEFAULT_DATASET)
    log.info("no examples at %s: ingesting the %s dataset", config.examples_dir, dataset.name)
    ingest(config.examples_dir, **dataset.ingest_args())


def run_local(config: PipelineConfig, beam_workers: int = 1,
              dataset: DatasetSpec | None = None) -> RunSummary:
    """Run (or re-run, reusing cached components) the pipeline and summarize what happened;
    `dataset` is ingested first if `config.examples_dir` does not exist."""
    check_local_root(config)
    ensure_examples(config, dataset)
    beam_args = direct_runner_args(beam_workers) + tuple(config.beam_args)
    config = dataclasses.replace(config, beam_args=beam_args)
    os.makedirs(config.pipeline_root, exist_ok=True)
    connection = tfx.orchestration.metadata.sqlite_metadata_connection_config(
        metadata_path(config))
    served = served_versions(model_base(config))
    pipeline = create_pipeline(config, metadata_connection_config=connection,
                               served_cache_key=str(served[-1] if served else 0))
    started = time.time()
    error = None
    try:
        tfx.orchestration.LocalDagRunner().run(pipeline)
    except Exception as exc:  # the summary says which component failed and why
        error = exc
    return summarize_run(connection, started, error)
