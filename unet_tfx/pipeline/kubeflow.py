"""Compile the pipeline for Kubeflow Pipelines 2 (`kubeflow`) or Vertex AI Pipelines (`vertex`).

- `kubeflow`: a bare PipelineSpec in YAML, schema 2.1.0: what the open-source KFP 2 API server
  accepts. Its backend runs container and importer executors only, never TFX's `preCacheCheck`
  driver, so the spec holds neither resolvers nor driver hooks (ExampleGen's executor resolves
  spans itself, on both targets).
- `vertex`: the PipelineJob JSON that Vertex AI Pipelines submits.

Every task runs in the given image. Steps that read what the spec does not name (new files under
`input_base`, the version served now) are never cached: KFP's cache key is a task's parameters,
command and image. Resources (CPU, memory, GPUs) come from the config.
"""

import json
import os

import yaml
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2
from tfx import v1 as tfx

from unet_tfx.config import TARGETS, PipelineConfig, resolve_uri
from unet_tfx.files import write_atomically
from unet_tfx.pipeline.pipeline import create_pipeline

SUFFIXES = {"kubeflow": ".yaml", "vertex": ".json"}
UNCACHED_TASKS = ("ImportExampleGen", "ServedModel")
TRAINER_BACKENDS = ("pipeline", "vertex-training")
BEAM_TASKS = ("ImportExampleGen", "StatisticsGen", "Transform", "Evaluator")
TRAINER_TASK = "Trainer"
# Open-source KFP schedules GPUs as the Kubernetes extended resource; Vertex names the model.
KUBEFLOW_GPU = "nvidia.com/gpu"
# TFX reads and writes through TensorFlow's filesystems: local, gs:// (built in) and hdfs://.
UNSUPPORTED_SCHEMES = ("minio://", "s3://")
ResourceSpec = pipeline_spec_pb2.PipelineDeploymentConfig.PipelineContainerSpec.ResourceSpec


def check_locations(config: PipelineConfig) -> None:
    """Refuse paths no pipeline task can use: MinIO/S3 (no TensorFlow filesystem for them in the
    image) and relative paths (they would name the compiling machine's working folder)."""
    for field in ("examples_dir", "pipeline_root", "serving_dir", "eval_examples"):
        value = getattr(config, field)
        if not value:  # eval_examples is optional
            continue
        flag = "--" + field.replace("_", "-")
        if value.startswith(UNSUPPORTED_SCHEMES):
            raise ValueError(
                f"{flag} {value}: TFX reads and writes through TensorFlow's filesystems, which "
                "cannot reach MinIO/S3 in this image (KFP's default minio:// root does not work "
                "with TFX): use gs://... or an absolute path on a volume mounted in every task")
        if "://" not in value and not os.path.isabs(value):
            raise ValueError(
                f"{flag} {value}: a compiled pipeline runs on other machines: give a URI "
                "(gs://...) or an absolute path on a volume mounted in every task")


def resource_spec(config: PipelineConfig, task: str, target: str) -> ResourceSpec | None:
    """CPU (cores), memory (GiB) and GPUs for `task`, or None for the cluster's defaults."""
    if task == TRAINER_TASK:
        spec = ResourceSpec(cpu_limit=config.trainer_cpus, memory_limit=config.trainer_memory_gb)
        if config.trainer_gpus:
            spec.accelerator.type = (KUBEFLOW_GPU if target == "kubeflow"
                                     else config.trainer_gpu_type)
            spec.accelerator.count = config.trainer_gpus
    elif task in BEAM_TASKS:
        spec = ResourceSpec(cpu_limit=config.beam_cpus, memory_limit=config.beam_memory_gb)
    else:
        return None
    return spec if spec.ByteSize() else None


def _apply_target_rules(spec: dict, config: PipelineConfig, target: str) -> None:
    """Caching off where the key cannot see new data, resources per task, and no ExampleGen
    driver hook: no open-source KFP backend component runs it, and the span-aware executor
    resolves spans itself on every target."""
    tasks = spec["root"]["dag"]["tasks"]
    for name in UNCACHED_TASKS:
        tasks[name]["cachingOptions"] = {"enableCache": False}
    executors = spec["deploymentSpec"]["executors"]
    for name, task in tasks.items():
        container = executors[spec["components"][task["componentRef"]["name"]]["executorLabel"]][
            "container"]
        resources = resource_spec(config, name, target)
        if resources is not None:
            container["resources"] = json_format.MessageToDict(resources)
        container.pop("lifecycle", None)


def vertex_training_config(config: PipelineConfig, image: str, project: str,
                           region: str) -> dict:
    """custom_config for TFX's google_cloud_ai_platform Trainer: a Vertex AI custom job whose
    worker pools (a chief, and `vertex_workers` more) come from the config. Several replicas
    give the Trainer a TF_CONFIG, so it trains with MultiWorkerMirroredStrategy."""
    if not (project and region):
        raise ValueError("--trainer vertex-training needs --project and --region")
    machine = {"machine_type": config.vertex_machine_type}
    if config.trainer_gpus:
        machine.update(accelerator_type=config.trainer_gpu_type,
                       accelerator_count=config.trainer_gpus)
    pools = [{"machine_spec": machine, "replica_count": count, "container_spec": {
        "image_uri": image}} for count in (1, config.vertex_workers) if count]
    ext = tfx.extensions.google_cloud_ai_platform
    return {ext.ENABLE_VERTEX_KEY: True, ext.VERTEX_REGION_KEY: region,
            ext.TRAINING_ARGS_KEY: {"project": project,
                                    "job_spec": {"worker_pool_specs": pools}}}


def compile_pipeline(config: PipelineConfig, image: str, output_file: str,
                     target: str = "kubeflow", trainer: str = "pipeline", project: str = "",
                     region: str = "") -> str:
    """Write the pipeline for `target` to `output_file` (atomically) with every task in `image`;
    `trainer="vertex-training"` (vertex only) trains in a Vertex AI custom job instead."""
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}: expected one of {TARGETS}")
    if trainer not in TRAINER_BACKENDS:
        raise ValueError(f"unknown trainer {trainer!r}: expected one of {TRAINER_BACKENDS}")
    if trainer == "vertex-training" and target != "vertex":
        raise ValueError("--trainer vertex-training runs the Trainer as a Vertex AI custom job: "
                         "it needs --target vertex")
    check_locations(config)
    pipeline = create_pipeline(config, vertex_training=vertex_training_config(
        config, image, project, region) if trainer == "vertex-training" else None)
    runner = tfx.orchestration.experimental.KubeflowV2DagRunner(
        config=tfx.orchestration.experimental.KubeflowV2DagRunnerConfig(
            default_image=image, use_pipeline_spec_2_1=True))
    job = runner.run(pipeline, write_out=False)
    _apply_target_rules(job["pipelineSpec"], config, target)
    if target == "kubeflow":  # the root the KFP backend writes task outputs under
        job["pipelineSpec"]["defaultPipelineRoot"] = resolve_uri(config.pipeline_root)
    if target == "kubeflow":
        text = yaml.safe_dump(job["pipelineSpec"], sort_keys=True)
    else:
        text = json.dumps(job, indent=1, sort_keys=True)
    directory = os.path.dirname(os.path.abspath(output_file))
    os.makedirs(directory, exist_ok=True)
    write_atomically(output_file, text)
    return output_file
