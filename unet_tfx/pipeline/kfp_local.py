"""Check a compiled KFP spec, and run it on this machine task by task as a KFP backend would.

`check_spec` is the static half: strict proto parsing of the spec and of its free-form
`deploymentSpec`, references between tasks, the schema version and the executor kinds the
target supports. `run_spec` is the dynamic half, a conformance run without a cluster: for each
task in topological order it builds the ExecutorInput from the spec and the upstream tasks'
output artifacts, resolves the container's command and args with kfp's own `kfp.local`
placeholder code, runs that command as a subprocess and reads the task's ExecutorOutput back.
For the `kubeflow` target it does what the open-source backend does: no resolver executors, no
`preCacheCheck` driver, parameters only from `runtimeValue.constant`, and KFP's cache rule (a
task with caching on whose parameters, input artifacts, command and image match an earlier run
is skipped and its earlier outputs reused).
"""

import dataclasses
import hashlib
import json
import logging
import os
import subprocess
import time
from concurrent import futures
from graphlib import TopologicalSorter

import yaml
from google.protobuf import json_format
from kfp.local import executor_input_utils, executor_output_utils, placeholder_utils
from kfp.pipeline_spec import pipeline_spec_pb2 as pb

from unet_tfx.files import write_atomically

log = logging.getLogger("unet_tfx.pipeline")

# Executor kinds each backend runs (`resolver`: ML Metadata queries, Vertex only).
SUPPORTED_EXECUTORS = {"kubeflow": {"container", "importer"},
                       "vertex": {"container", "importer", "resolver"}}
SCHEMA_VERSIONS = {"kubeflow": {"2.1.0"}, "vertex": {"2.0.0", "2.1.0"}}
CACHE_FILE = "kfp_local_cache.json"


def load_spec(path: str) -> pb.PipelineSpec:
    """The PipelineSpec in a KFP YAML file or a Vertex PipelineJob JSON, parsed strictly."""
    with open(path, encoding="utf-8") as f:
        document = yaml.safe_load(f)  # JSON is YAML too
    document = document.get("pipelineSpec", document)
    return json_format.ParseDict(document, pb.PipelineSpec())


def _executors(spec: pb.PipelineSpec) -> dict:
    """deploymentSpec (a free-form Struct in the spec) as strictly parsed ExecutorSpecs."""
    deployment = json_format.MessageToDict(spec.deployment_spec)
    return {label: json_format.ParseDict(body, pb.PipelineDeploymentConfig.ExecutorSpec())
            for label, body in deployment.get("executors", {}).items()}


def check_spec(spec: pb.PipelineSpec, target: str) -> list[str]:
    """Everything in `spec` that `target`'s backend would refuse or not run; empty if none."""
    problems = []
    if spec.schema_version not in SCHEMA_VERSIONS[target]:
        problems.append(f"schemaVersion {spec.schema_version!r}: {target} takes "
                        f"{sorted(SCHEMA_VERSIONS[target])}")
    try:
        executors = _executors(spec)
    except json_format.ParseError as error:
        return problems + [f"deploymentSpec: {error}"]
    tasks = spec.root.dag.tasks
    for name, task in tasks.items():
        component = spec.components.get(task.component_ref.name)
        if component is None:
            problems.append(f"{name}: component {task.component_ref.name!r} is not defined")
            continue
        executor = executors.get(component.executor_label)
        if executor is None:
            problems.append(f"{name}: executor {component.executor_label!r} is not defined")
            continue
        kind = executor.WhichOneof("spec")
        if kind not in SUPPORTED_EXECUTORS[target]:
            problems.append(f"{name}: {kind} executors are not run by {target}")
        if target == "kubeflow" and executor.container.HasField("lifecycle"):
            problems.append(f"{name}: a preCacheCheck driver, which {target} never runs")
        problems += _check_task_inputs(name, task, component, tasks, spec, target)
        problems += [f"{name}: depends on unknown task {d!r}"
                     for d in task.dependent_tasks if d not in tasks]
    return problems


def _check_task_inputs(name, task, component, tasks, spec, target) -> list[str]:
    problems = []
    for key in component.input_definitions.parameters:
        parameter = task.inputs.parameters.get(key)
        if parameter is None:
            continue  # an optional parameter left to its default
        if target == "kubeflow" and not parameter.runtime_value.HasField("constant"):
            problems.append(f"{name}.{key}: parameter is not a runtimeValue.constant")
    for key, artifact in task.inputs.artifacts.items():
        producer = artifact.task_output_artifact.producer_task
        if producer not in tasks:
            problems.append(f"{name}.{key}: produced by unknown task {producer!r}")
            continue
        outputs = spec.components[tasks[producer].component_ref.name].output_definitions
        if artifact.task_output_artifact.output_artifact_key not in outputs.artifacts:
            problems.append(f"{name}.{key}: {producer} has no output "
                            f"{artifact.task_output_artifact.output_artifact_key!r}")
    return problems


@dataclasses.dataclass
class TaskRun:
    state: str  # COMPLETE or CACHED
    seconds: float
    outputs: dict  # output key -> [RuntimeArtifact]


def _task_graph(spec: pb.PipelineSpec) -> dict[str, set]:
    """Each task and the tasks it waits for: its dependencies and its artifacts' producers."""
    return {name: set(task.dependent_tasks) | {
        a.task_output_artifact.producer_task for a in task.inputs.artifacts.values()}
        for name, task in spec.root.dag.tasks.items()}


def _executor_input(spec, name, task, component, runs, task_root) -> pb.ExecutorInput:
    executor_input = pb.ExecutorInput()
    inputs = executor_input.inputs
    for key, parameter in task.inputs.parameters.items():
        inputs.parameter_values[key].CopyFrom(parameter.runtime_value.constant)
    for key, artifact in task.inputs.artifacts.items():
        ref = artifact.task_output_artifact
        produced = runs[ref.producer_task].outputs[ref.output_artifact_key]
        inputs.artifacts[key].artifacts.extend(produced)
    for key, definition in component.output_definitions.artifacts.items():
        artifacts = executor_input_utils.make_artifact_list(key, definition.artifact_type,
                                                            task_root)
        artifacts.artifacts[0].name = f"{task_root}/{key}"  # unique, as a backend's names are
        executor_input.outputs.artifacts[key].CopyFrom(artifacts)
    executor_input.outputs.output_file = os.path.join(task_root, "executor_output.json")
    return executor_input


def _cache_key(executor_input: pb.ExecutorInput, container) -> str:
    """KFP's cache key: the task's inputs, its command and args before resolution, its image."""
    inputs = json_format.MessageToDict(executor_input.inputs)
    for artifact_list in inputs.get("artifacts", {}).values():
        for artifact in artifact_list["artifacts"]:
            artifact.pop("name", None)
    body = json.dumps([inputs, list(container.command), list(container.args), container.image],
                      sort_keys=True)
    return hashlib.sha256(body.encode()).hexdigest()


class TaskFailed(RuntimeError):
    """A task's command exited non-zero; the message ends with the tail of its log."""


def run_spec(spec: pb.PipelineSpec, pipeline_root: str, run_id: str, *, workdir: str,
             env: dict | None = None, target: str = "kubeflow",
             parallelism: int = 2) -> dict[str, TaskRun]:
    """Run every task of `spec` as `target`'s backend would, up to `parallelism` at once (tasks
    whose inputs are ready run concurrently, as on a cluster); outputs go under
    `pipeline_root/run_id/`. Raises TaskFailed on the first failing task, ValueError on a spec
    the target refuses."""
    problems = check_spec(spec, target)
    if problems:
        raise ValueError("the spec does not conform:\n  " + "\n  ".join(problems))
    executors = _executors(spec)
    cache_path = os.path.join(pipeline_root, CACHE_FILE)
    cache = {}
    if os.path.exists(cache_path):
        with open(cache_path) as f:
            cache = json.load(f)
    runs: dict[str, TaskRun] = {}

    def start(name: str) -> tuple[str, str, dict]:
        """Run (or reuse from the cache) one task whose upstream tasks have all finished."""
        task = spec.root.dag.tasks[name]
        component = spec.components[task.component_ref.name]
        container = executors[component.executor_label].container
        task_root = os.path.join(pipeline_root, run_id, name)
        executor_input = _executor_input(spec, name, task, component, runs, task_root)
        key = _cache_key(executor_input, container)
        if task.caching_options.enable_cache and key in cache:
            return "CACHED", key, {k: [json_format.ParseDict(a, pb.RuntimeArtifact()) for a in v]
                                   for k, v in cache[key].items()}
        return "COMPLETE", key, _run_task(name, container, executor_input, component, spec,
                                          pipeline_root, run_id, task_root, workdir, env)

    order = TopologicalSorter(_task_graph(spec))
    order.prepare()
    with futures.ThreadPoolExecutor(max_workers=parallelism) as pool:
        running = {}
        while order.is_active():
            for name in order.get_ready():
                running[pool.submit(start, name)] = (name, time.monotonic())
            done, _ = futures.wait(running, return_when=futures.FIRST_COMPLETED)
            for future in done:
                name, started = running.pop(future)
                state, key, outputs = future.result()  # a failed task stops the run here
                runs[name] = TaskRun(state, time.monotonic() - started, outputs)
                log.info("%s: %s in %.1f s", name, state, runs[name].seconds)
                cache[key] = {k: [json_format.MessageToDict(a) for a in v]
                              for k, v in outputs.items()}
                order.done(name)
    write_atomically(cache_path, json.dumps(cache))
    return runs


def _run_task(name, container, executor_input, component, spec, pipeline_root, run_id,
              task_root, workdir, env) -> dict:
    os.makedirs(task_root, exist_ok=True)
    command = placeholder_utils.replace_placeholders(
        full_command=list(container.command) + list(container.args),
        executor_input_dict=executor_input_utils.executor_input_to_dict(executor_input, component),
        pipeline_resource_name=f"{spec.pipeline_info.name}-{run_id}",
        task_resource_name=name,
        pipeline_root=pipeline_root,
    )
    log_path = os.path.join(task_root, "task.log")
    with open(log_path, "w") as log_file:
        code = subprocess.run(command, cwd=workdir, env=env, stdout=log_file,
                              stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL).returncode
    if code != 0:
        with open(log_path, errors="replace") as f:
            tail = "".join(f.readlines()[-40:])
        raise TaskFailed(f"task {name} exited {code}; the end of {log_path}:\n{tail}")
    written = executor_output_utils.load_executor_output(executor_input.outputs.output_file)
    outputs = {}
    for key, artifacts in executor_input.outputs.artifacts.items():
        produced = written.artifacts.get(key)
        outputs[key] = list(produced.artifacts) if produced and produced.artifacts else list(
            artifacts.artifacts)
        for artifact, declared in zip(outputs[key], artifacts.artifacts, strict=False):
            artifact.type.CopyFrom(declared.type)  # the launcher keeps the declared type
            artifact.name = artifact.name or declared.name
    return outputs
