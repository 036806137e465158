"""Run the pipeline on one machine: LocalDagRunner, SQLite MLMD, Beam's DirectRunner."""

import dataclasses
import logging
import os
import time

from tfx import v1 as tfx

from unet_tfx.config import BUNDLED_DATA, PipelineConfig
from unet_tfx.pipeline.pipeline import create_pipeline
from unet_tfx.pipeline.run_summary import RunSummary, summarize_run

log = logging.getLogger("unet_tfx.pipeline")

# DirectRunner on every core of this machine.
LOCAL_BEAM_ARGS = ("--direct_running_mode=multi_processing", "--direct_num_workers=0")
BUNDLED_EVAL_COUNT = 6


def metadata_path(config: PipelineConfig) -> str:
    return os.path.join(os.path.abspath(config.pipeline_root), "metadata.sqlite")


def ensure_examples(config: PipelineConfig) -> None:
    """Ingest the bundled membrane data (24 train / 6 eval) if `examples_dir` has nothing yet."""
    if os.path.exists(config.examples_dir):
        return
    from unet_tfx.ingest import ingest

    log.info("no examples at %s: ingesting the bundled data from %s", config.examples_dir,
             BUNDLED_DATA)
    ingest(config.examples_dir, images=str(BUNDLED_DATA / "image"),
           masks=str(BUNDLED_DATA / "label"), eval_count=BUNDLED_EVAL_COUNT)


def run_local(config: PipelineConfig) -> RunSummary:
    """Run (or re-run, reusing cached components) the pipeline and summarize what happened."""
    ensure_examples(config)
    config = dataclasses.replace(config, beam_args=LOCAL_BEAM_ARGS + tuple(config.beam_args))
    os.makedirs(config.pipeline_root, exist_ok=True)
    connection = tfx.orchestration.metadata.sqlite_metadata_connection_config(
        metadata_path(config))
    pipeline = create_pipeline(config, metadata_connection_config=connection)
    started = time.time()
    error = None
    try:
        tfx.orchestration.LocalDagRunner().run(pipeline)
    except Exception as exc:  # the summary says which component failed and why
        error = exc
    return summarize_run(config, connection, started, error)
