"""`unet-tfx compile` for each target and profile: specs that parse with kfp's protos, hold no
path of the compiling machine, carry URIs unchanged, and ask for the configured resources."""

import json
import os
import tempfile
from pathlib import Path

import pytest
import yaml
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2

from unet_tfx.cli import main
from unet_tfx.config import PROFILES
from unet_tfx.pipeline import kfp_local

IMAGE = "registry.example/acme/unet-tfx:1.0"
LOCATIONS = ["--pipeline-root", "gs://acme/tfx", "--examples-dir", "gs://acme/examples",
             "--serving-dir", "gs://acme/serving"]
BEAM_ARG = "--runner=DataflowRunner"
TASKS = {"ImportExampleGen", "StatisticsGen", "ConfiguredSchemaGen", "ExampleValidator",
         "AnomaliesGate", "Transform", "Trainer", "ServedModel", "Evaluator", "Pusher"}
BEAM_TASKS = {"ImportExampleGen", "StatisticsGen", "Transform", "Evaluator"}
REPO = Path(__file__).resolve().parent.parent


def _compile(tmp_path, target, profile, *extra):
    output = tmp_path / f"{target}-{profile}.spec"
    code = main(["compile", "--target", target, "--image", IMAGE, "--profile", profile,
                 *LOCATIONS, "--output", str(output), f"--beam-arg={BEAM_ARG}", *extra])
    assert code == 0
    return output


def _strings(node):
    if isinstance(node, dict):
        for key, value in node.items():
            yield key
            yield from _strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _strings(value)
    elif isinstance(node, str):
        yield node


def _document(path, target):
    text = path.read_text()
    return yaml.safe_load(text) if target == "kubeflow" else json.loads(text)


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """Every target x profile, compiled once from the checkout (the compiling machine)."""
    folder = tmp_path_factory.mktemp("compiled")
    return {(target, profile): _compile(folder, target, profile)
            for target in ("kubeflow", "vertex") for profile in PROFILES}


@pytest.mark.parametrize("target", ["kubeflow", "vertex"])
@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_no_path_of_the_compiling_machine_and_uris_unchanged(compiled, target, profile):
    strings = list(_strings(_document(compiled[target, profile], target)))
    machine = {str(REPO), os.getcwd(), tempfile.gettempdir(), os.path.expanduser("~"),
               "/tmp/", "/home/"}
    leaks = [(m, s[:120]) for s in strings for m in machine if m in s]
    assert not leaks
    assert not [s for s in strings if "gs:/" in s.replace("gs://", "")]  # no mangled URI
    text = "\n".join(strings)
    for uri in ("gs://acme/examples", "gs://acme/serving/unet_membrane",
                "gs://acme/tfx/_trainer_backup"):
        assert uri in text


def test_kubeflow_spec_is_a_schema_2_1_pipeline_spec_the_oss_backend_runs(compiled):
    path = compiled["kubeflow", "full"]
    spec = kfp_local.load_spec(str(path))  # strict: unknown fields fail
    assert spec.schema_version == "2.1.0"
    assert kfp_local.check_spec(spec, "kubeflow") == []
    assert set(spec.root.dag.tasks) == TASKS
    assert "pipelineSpec" not in yaml.safe_load(path.read_text())  # a bare PipelineSpec
    assert spec.default_pipeline_root == "gs://acme/tfx"


def test_vertex_spec_is_a_pipeline_job(compiled):
    job = json_format.Parse(compiled["vertex", "full"].read_text(),
                            pipeline_spec_pb2.PipelineJob())
    assert job.runtime_config.gcs_output_directory == "gs://acme/tfx"
    spec = kfp_local.load_spec(str(compiled["vertex", "full"]))
    assert set(spec.root.dag.tasks) == TASKS
    assert kfp_local.check_spec(spec, "vertex") == []


@pytest.mark.parametrize("target,gpu", [("kubeflow", "nvidia.com/gpu"), ("vertex", "NVIDIA_L4")])
def test_every_container_runs_the_image_with_its_resources_and_beam_args(compiled, target, gpu):
    spec = kfp_local.load_spec(str(compiled[target, "full"]))
    executors = kfp_local._executors(spec)
    for name, task in spec.root.dag.tasks.items():
        container = executors[spec.components[task.component_ref.name].executor_label].container
        assert container.image == IMAGE, name
        if name in BEAM_TASKS:  # (TFX passes the pipeline's Beam args to every task)
            assert BEAM_ARG in container.args, name
        resources = container.resources
        if name == "Trainer":
            assert (resources.accelerator.type, resources.accelerator.count) == (gpu, 1)
            assert (resources.cpu_limit, resources.memory_limit) == (8, 32)
        elif name in BEAM_TASKS:
            assert (resources.cpu_limit, resources.memory_limit) == (4, 16)
            assert not resources.accelerator.type
        else:
            assert not resources.ByteSize(), name


def test_steps_that_read_unnamed_data_are_never_cached(compiled):
    for target in ("kubeflow", "vertex"):
        spec = kfp_local.load_spec(str(compiled[target, "test"]))
        cached = {n for n, t in spec.root.dag.tasks.items() if t.caching_options.enable_cache}
        assert cached == TASKS - {"ImportExampleGen", "ServedModel"}


def test_resource_flags_reach_the_trainer(tmp_path):
    path = _compile(tmp_path, "kubeflow", "test", "--trainer-gpus", "2", "--trainer-cpus", "3",
                    "--trainer-memory-gb", "12")
    spec = kfp_local.load_spec(str(path))
    task = spec.root.dag.tasks["Trainer"]
    container = kfp_local._executors(spec)[
        spec.components[task.component_ref.name].executor_label].container
    assert container.resources.accelerator.count == 2
    assert (container.resources.cpu_limit, container.resources.memory_limit) == (3, 12)


@pytest.mark.parametrize("flag,value,expected", [
    ("--pipeline-root", "minio://mlpipeline/v2/artifacts", "minio://"),
    ("--serving-dir", "s3://bucket/serving", "MinIO/S3"),
    ("--examples-dir", "relative/examples", "absolute path"),
    ("--eval-examples", "out/trusted-eval", "absolute path"),
    ("--eval-examples", "minio://bucket/eval", "MinIO/S3"),
])
def test_unusable_locations_are_refused_at_compile_time(tmp_path, capsys, flag, value, expected):
    args = dict(zip(LOCATIONS[::2], LOCATIONS[1::2], strict=True)) | {flag: value}
    output = tmp_path / "spec.yaml"
    code = main(["compile", "--image", IMAGE, "--profile", "test", "--output", str(output),
                 *[x for pair in args.items() for x in pair]])
    assert code == 2
    error = capsys.readouterr().err
    assert flag in error and value in error and expected in error
    assert not output.exists()


def test_vertex_training_flags_without_vertex_training_are_refused(tmp_path, capsys):
    args = [x for pair in zip(LOCATIONS[::2], LOCATIONS[1::2], strict=True) for x in pair]
    output = tmp_path / "job.json"
    assert main(["compile", "--image", IMAGE, "--target", "vertex", "--vertex-workers", "2",
                 "--project", "p", "--output", str(output), *args]) == 2
    assert ("--project, --vertex-workers: settings of the Vertex AI custom job: expected "
            "--target vertex --trainer vertex-training") in capsys.readouterr().err
    assert not output.exists()


def _edit(spec, change):
    document = json_format.MessageToDict(spec)
    change(document)
    return json_format.ParseDict(document, pipeline_spec_pb2.PipelineSpec())


def test_check_spec_refuses_what_only_vertex_runs(compiled):
    spec = kfp_local.load_spec(str(compiled["kubeflow", "test"]))

    def add_resolver(document):
        label = document["components"]["ServedModel"]["executorLabel"]
        document["deploymentSpec"]["executors"][label] = {"resolver": {"outputArtifactQueries": {
            "model": {"filter": 'schema_title="tfx.Model"'}}}}

    assert any("resolver executors are not run" in p
               for p in kfp_local.check_spec(_edit(spec, add_resolver), "kubeflow"))
    old = _edit(spec, lambda d: d.update(schemaVersion="2.0.0"))
    assert any("schemaVersion" in p for p in kfp_local.check_spec(old, "kubeflow"))

    def add_driver(document):
        label = document["components"]["ImportExampleGen"]["executorLabel"]
        document["deploymentSpec"]["executors"][label]["container"]["lifecycle"] = {
            "preCacheCheck": {"command": ["python", "-m", "driver"], "args": ["{{$}}"]}}

    assert any("preCacheCheck" in p
               for p in kfp_local.check_spec(_edit(spec, add_driver), "kubeflow"))


def test_check_spec_finds_broken_references_and_free_form_mistakes(compiled):
    spec = kfp_local.load_spec(str(compiled["kubeflow", "test"]))

    def break_reference(document):
        inputs = document["root"]["dag"]["tasks"]["Trainer"]["inputs"]["artifacts"]
        inputs["examples"]["taskOutputArtifact"]["producerTask"] = "NoSuchTask"

    def misspell_deployment(document):
        for executor in document["deploymentSpec"]["executors"].values():
            executor["container"]["imagee"] = executor["container"].pop("image")

    assert any("unknown task 'NoSuchTask'" in p
               for p in kfp_local.check_spec(_edit(spec, break_reference), "kubeflow"))
    assert any("deploymentSpec" in p
               for p in kfp_local.check_spec(_edit(spec, misspell_deployment), "kubeflow"))


def test_vertex_training_runs_the_trainer_as_a_custom_job_with_worker_pools(tmp_path):
    path = _compile(tmp_path, "vertex", "full", "--trainer", "vertex-training", "--project",
                    "acme", "--region", "europe-west4", "--vertex-workers", "2")
    spec = kfp_local.load_spec(str(path))
    task = spec.root.dag.tasks["Trainer"]
    container = kfp_local._executors(spec)[
        spec.components[task.component_ref.name].executor_label].container
    assert "tfx.extensions.google_cloud_ai_platform.trainer.executor" in " ".join(container.args)
    custom = json.loads(task.inputs.parameters["custom_config"].runtime_value.constant
                        .string_value)
    assert custom["ai_platform_enable_vertex"] is True
    assert custom["ai_platform_vertex_region"] == "europe-west4"
    args = custom["ai_platform_training_args"]
    assert args["project"] == "acme"
    pools = args["job_spec"]["worker_pool_specs"]
    assert [p["replica_count"] for p in pools] == [1, 2]  # the chief, then 2 workers
    for pool in pools:
        assert pool["container_spec"]["image_uri"] == IMAGE
        assert pool["machine_spec"]["accelerator_type"] == "NVIDIA_L4"
        assert pool["machine_spec"]["accelerator_count"] == 1
    assert custom["training"]["batch_size"] == PROFILES["full"].training.batch_size


def test_vertex_training_needs_the_vertex_target_and_a_project(tmp_path, capsys):
    for extra, expected in ((["--target", "kubeflow"], "--target vertex"),
                            (["--target", "vertex"], "--project")):
        code = main(["compile", "--image", IMAGE, "--profile", "test", *LOCATIONS,
                     "--output", str(tmp_path / "spec"), "--trainer", "vertex-training", *extra])
        assert code == 2
        assert expected in capsys.readouterr().err
