"""Compile the same pipeline for Kubeflow Pipelines / Vertex AI Pipelines (KFP v2 IR).

Components run in the project's container image; Beam components run on whatever runner the
Beam args name (e.g. `--runner=DataflowRunner --project=... --region=... --temp_location=gs://...`);
the Trainer uses a TF distribution strategy over the worker's GPUs.
"""

import os

from tfx import v1 as tfx

from unet_tfx.config import PipelineConfig
from unet_tfx.pipeline.pipeline import create_pipeline


def compile_kubeflow(config: PipelineConfig, image: str, output_file: str) -> str:
    """Write the KFP v2 pipeline spec (JSON) for `config` with every step in `image`."""
    runner = tfx.orchestration.experimental.KubeflowV2DagRunner(
        config=tfx.orchestration.experimental.KubeflowV2DagRunnerConfig(default_image=image),
        output_dir=os.path.dirname(os.path.abspath(output_file)),
        output_filename=os.path.basename(output_file),
    )
    runner.run(create_pipeline(config))
    return output_file
