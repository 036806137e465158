"""Submit a compiled pipeline to Kubeflow Pipelines 2 or Vertex AI Pipelines: `unet-tfx submit`.

The package is what `unet-tfx compile` writes: for `--target kubeflow` a bare PipelineSpec YAML
(its `defaultPipelineRoot` is compile's `--pipeline-root`), for `--target vertex` a PipelineJob JSON
(the spec under `pipelineSpec`, the root under `runtimeConfig.gcsOutputDirectory`). Vertex takes
both as they are. The KFP API server takes only a bare PipelineSpec, so for Kubeflow a PipelineJob
is unwrapped into a YAML spec and its pipeline root is passed with each run.
"""

import argparse
import datetime
import functools
import logging
import os
import sys
import tempfile
from typing import NamedTuple

from unet_tfx.config import TARGETS

DEFAULT_PIPELINE_NAME = "unet-membrane"
DEFAULT_EXPERIMENT = "unet-tfx"


class SubmitError(ValueError):
    """Bad input for a submission (a cron expression, a package); the message says what."""


def kfp_cron(schedule: str) -> str:
    """`schedule` as the 6-field cron expression the KFP scheduler reads."""
    fields = schedule.split()
    if len(fields) == 5:
        # KFP's ScheduledWorkflow controller parses cron with robfig/cron's optional seconds
        # field *first* ("0 0 3 * * 1" is Mondays at 03:00:00). A usual 5-field crontab line
        # would be read with every field shifted by one, so run it at second 0.
        return "0 " + " ".join(fields)
    if len(fields) == 6:
        return " ".join(fields)
    raise SubmitError(f"cron expression {schedule!r}: expected 5 fields (minute hour "
                      "day-of-month month day-of-week) or 6 with seconds first")


def vertex_cron(schedule: str) -> str:
    """`schedule` as Vertex AI's standard 5-field cron, optionally after `TZ=`/`CRON_TZ=`."""
    fields = schedule.split()
    zone = fields[:1] if fields and fields[0].startswith(("TZ=", "CRON_TZ=")) else []
    if len(fields) - len(zone) != 5:
        raise SubmitError(f"cron expression {schedule!r}: Vertex AI takes 5 fields (minute hour "
                          "day-of-month month day-of-week), optionally after TZ=Area/City")
    return " ".join(fields)


class _Package(NamedTuple):
    upload: str  # the PipelineSpec YAML to upload
    pipeline_root: str | None  # the PipelineJob's root, passed with each run
    has_root: bool  # the spec or the PipelineJob names a pipeline root
    parameters: dict  # the PipelineJob's parameter values
    name: str  # the pipeline's name (pipelineInfo), as `compile` named it after the dataset


def _kfp_package(package_path: str, workdir: str) -> _Package:
    """What to upload for `package_path`, a PipelineSpec (YAML or JSON) or a PipelineJob JSON.

    A .yaml/.yml spec is uploaded unchanged. Anything else is written out as a PipelineSpec YAML:
    older KFP API servers accept only .yaml/.zip/.tar.gz uploads, and none takes the PipelineJob
    wrapper.
    """
    import yaml

    with open(package_path, encoding="utf-8") as f:
        try:  # YAML 1.1 reads the JSON that TFX and json.dump write
            documents = [d for d in yaml.safe_load_all(f) if d is not None]
        except yaml.YAMLError as exc:
            raise SubmitError(f"{package_path}: neither YAML nor JSON: {exc}") from exc
    if not documents or not isinstance(documents[0], dict):
        raise SubmitError(f"{package_path}: not a KFP v2 pipeline spec")
    runtime = {}
    if "pipelineSpec" in documents[0]:  # a PipelineJob, as `compile --target vertex` writes
        runtime = documents[0].get("runtimeConfig") or {}
        documents = [documents[0]["pipelineSpec"]]
    spec = documents[0]
    if "pipelineInfo" not in spec or "root" not in spec:
        raise SubmitError(f"{package_path}: not a KFP v2 pipeline spec (no pipelineInfo/root)")
    upload = package_path
    if runtime or not package_path.endswith((".yaml", ".yml")):
        stem = os.path.splitext(os.path.basename(package_path))[0]
        upload = os.path.join(workdir, f"{stem}.yaml")
        with open(upload, "w", encoding="utf-8") as f:
            yaml.safe_dump_all(documents, f, sort_keys=False)
    root = runtime.get("gcsOutputDirectory")
    return _Package(upload, root, bool(root or spec.get("defaultPipelineRoot")),
                    dict(runtime.get("parameterValues") or {}),
                    spec["pipelineInfo"].get("name") or DEFAULT_PIPELINE_NAME)


def _read_package(package_path: str) -> _Package:
    """`_kfp_package` without keeping its upload file: the package's name and root."""
    with tempfile.TemporaryDirectory(prefix="unet-tfx-submit-") as workdir:
        return _kfp_package(package_path, workdir)


def _ui_url(host: str) -> str:
    host = host.rstrip("/")
    return host if host.startswith(("http://", "https://")) else "https://" + host


def submit_kubeflow(package_path: str, host: str, pipeline_name: str, *,
                    experiment: str = DEFAULT_EXPERIMENT, schedule: str | None = None,
                    namespace: str | None = None, run_name: str | None = None,
                    parameters: dict | None = None, pipeline_root: str | None = None,
                    service_account: str | None = None, client=None) -> dict:
    """Upload `package_path` to the KFP API at `host` and start a run, or a recurring run.

    The package becomes pipeline `pipeline_name`, or a new version of it (named after the
    pipeline and the UTC time) if a pipeline of that name exists. The run goes to experiment
    `experiment` (created if missing, in `namespace` on multi-user deployments). With
    `schedule` (cron, 5 or 6 fields) a recurring run starts instead: at most one run at a time,
    missed intervals not caught up. `pipeline_root` defaults to the one compiled into a
    PipelineJob JSON, else the server's default. `client`: a `kfp.Client` to use instead of
    connecting to `host`.

    Returns the ids: pipeline_id, pipeline_version_id, experiment_id and run_id or
    recurring_run_id, with the version name, the cron expression and the UI's url.
    """
    cron = kfp_cron(schedule) if schedule else None  # bad input fails before any upload
    if client is None:
        import kfp

        client = kfp.Client(host=host, namespace=namespace) if namespace else kfp.Client(host)
    now = datetime.datetime.now(datetime.timezone.utc)
    version_name = f"{pipeline_name}-{now:%Y%m%d-%H%M%S}-{now.microsecond // 1000:03d}"
    with tempfile.TemporaryDirectory(prefix="unet-tfx-submit-") as workdir:
        package = _kfp_package(package_path, workdir)
        pipeline_id = client.get_pipeline_id(pipeline_name)
        if pipeline_id is None:
            # Shared (not namespaced) pipeline: the one `get_pipeline_id` finds next time.
            pipeline = client.upload_pipeline(package.upload, pipeline_name=pipeline_name)
            pipeline_id = pipeline.pipeline_id
            # The server makes the first version itself; its id is only in the version list.
            versions = client.list_pipeline_versions(pipeline_id, page_size=1,
                                                     sort_by="created_at desc").pipeline_versions
            if not versions:
                raise SubmitError(f"the KFP API listed no version of new pipeline {pipeline_id}")
            version = versions[0]
        else:
            version = client.upload_pipeline_version(package.upload, version_name,
                                                     pipeline_id=pipeline_id)
    experiment_id = client.create_experiment(experiment, namespace=namespace).experiment_id
    common = dict(
        experiment_id=experiment_id,
        job_name=run_name or f"{pipeline_name} {now:%Y-%m-%d %H:%M:%S} UTC",
        params={**package.parameters, **(parameters or {})},
        pipeline_id=pipeline_id,
        version_id=version.pipeline_version_id,
        pipeline_root=pipeline_root or package.pipeline_root,
        service_account=service_account,
    )
    result = {"target": "kubeflow", "pipeline_id": pipeline_id,
              "pipeline_version_id": version.pipeline_version_id,
              "pipeline_version_name": version.display_name, "experiment_id": experiment_id}
    if cron is None:
        run = client.run_pipeline(**common)
        result["run_id"] = run.run_id
        result["url"] = f"{_ui_url(host)}/#/runs/details/{run.run_id}"
    else:
        recurring = client.create_recurring_run(cron_expression=cron, max_concurrency=1,
                                                no_catchup=True, enabled=True, **common)
        result["recurring_run_id"] = recurring.recurring_run_id
        result["cron"] = cron
        result["url"] = f"{_ui_url(host)}/#/recurringrun/details/{recurring.recurring_run_id}"
    return result


def _aiplatform():
    from google.cloud import aiplatform  # slow (~5 s): only when submitting to Vertex

    return aiplatform


def submit_vertex(package_path: str, *, project: str, region: str,
                  pipeline_root: str | None = None, schedule: str | None = None,
                  service_account: str | None = None, display_name: str | None = None,
                  parameters: dict | None = None) -> dict:
    """Submit `package_path` as a Vertex AI PipelineJob, or create a schedule for it.

    `pipeline_root` (gs://...) defaults to the one compiled into the package. With `schedule`
    (5-field cron, optionally after `TZ=Area/City`) a PipelineJobSchedule is created that runs
    at most one job at a time. Returns the job's (or schedule's) resource name and console URL.
    """
    cron = vertex_cron(schedule) if schedule else None
    aiplatform = _aiplatform()
    aiplatform.init(project=project, location=region)
    display_name = display_name or DEFAULT_PIPELINE_NAME
    job = aiplatform.PipelineJob(
        display_name=display_name,
        template_path=package_path,
        pipeline_root=pipeline_root,
        parameter_values=parameters,
        enable_caching=None,  # as compiled: TFX components are cached
    )
    console = "https://console.cloud.google.com/vertex-ai/locations"
    if cron is None:
        job.submit(service_account=service_account)
        return {"target": "vertex", "pipeline_job": job.resource_name,
                "url": f"{console}/{region}/pipelines/runs/{job.name}?project={project}"}
    schedule_resource = job.create_schedule(cron=cron, display_name=display_name,
                                            max_concurrent_run_count=1,
                                            service_account=service_account)
    return {"target": "vertex", "schedule": schedule_resource.resource_name, "cron": cron,
            "url": f"{console}/{region}/pipelines/schedules?project={project}"}


EXAMPLES = """\
examples:
  # Kubeflow Pipelines (e.g. after: kubectl -n kubeflow port-forward svc/ml-pipeline-ui 8080:80);
  # the spec's pipeline root is compile's --pipeline-root (--pipeline-root here overrides it)
  unet-tfx compile --target kubeflow --image REGISTRY/unet-tfx:TAG --profile full \\
      --pipeline-root gs://BUCKET/tfx --examples-dir gs://BUCKET/examples \\
      --serving-dir gs://BUCKET/serving --output unet.yaml
  unet-tfx submit --target kubeflow --host http://localhost:8080 --package unet.yaml \\
      --pipeline-root gs://BUCKET/tfx

  # every Monday at 03:00 in the KFP scheduler's time zone (UTC unless configured)
  unet-tfx submit --target kubeflow --host http://localhost:8080 --package unet.yaml \\
      --pipeline-root gs://BUCKET/tfx --schedule "0 3 * * 1"

  # Vertex AI Pipelines (the JSON carries its pipeline root); a schedule may start with TZ=
  unet-tfx compile --target vertex --image REGISTRY/unet-tfx:TAG ... --output unet.json
  unet-tfx submit --target vertex --project acme --region europe-west4 --package unet.json \\
      --service-account pipelines@acme.iam.gserviceaccount.com \\
      --schedule "TZ=Europe/Amsterdam 0 3 * * 1"
"""


def register(subparsers) -> argparse.ArgumentParser:
    """Add the `submit` subcommand to `subparsers`; it sets func (args -> exit code)."""
    parser = subparsers.add_parser(
        "submit",
        help="submit a compiled pipeline to Kubeflow Pipelines or Vertex AI, once or on a schedule",
        description="Upload a pipeline spec written by `unet-tfx compile` and start a run, or a\n"
        "recurring run with --schedule. On Kubeflow the spec becomes a pipeline named\n"
        "--pipeline-name, or a new version of it, and runs in --experiment.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--target", required=True, choices=TARGETS, help="where to run")
    parser.add_argument("--package", required=True, metavar="FILE",
                        help="pipeline spec compiled by `unet-tfx compile` (.yaml or .json)")
    parser.add_argument("--schedule", metavar="CRON",
                        help='run on a schedule instead of once, e.g. "0 3 * * 1" (Mondays 03:00); '
                        "at most one run at a time")
    parser.add_argument("--pipeline-root", metavar="URI",
                        help="where step outputs go (default: the package's, the gs:// root "
                        "given to `compile`; never the KFP server's own default, minio://, "
                        "which TFX cannot write to)")
    parser.add_argument("--service-account", metavar="NAME",
                        help="run as this Kubernetes (Kubeflow) or Google Cloud (Vertex) "
                        "service account")
    kubeflow = parser.add_argument_group("Kubeflow Pipelines")
    kubeflow.add_argument("--host", metavar="URL",
                          help="KFP API endpoint, e.g. http://localhost:8080 (required)")
    kubeflow.add_argument("--pipeline-name", metavar="NAME",
                          help="pipeline to create or add a version to (default: the package's "
                          "own name, e.g. unet-membrane); on Vertex, the job's display name")
    kubeflow.add_argument("--experiment", default=DEFAULT_EXPERIMENT, metavar="NAME",
                          help="experiment to run in, created if missing (default: %(default)s)")
    kubeflow.add_argument("--namespace", metavar="NS",
                          help="user namespace on multi-user deployments")
    vertex = parser.add_argument_group("Vertex AI")
    vertex.add_argument("--project", help="Google Cloud project (required)")
    vertex.add_argument("--region", help="Vertex AI region, e.g. us-central1 (required)")
    parser.set_defaults(func=functools.partial(run_command, parser=parser))
    return parser


def run_command(args: argparse.Namespace, parser: argparse.ArgumentParser | None = None) -> int:
    """Run `submit` for parsed arguments: 0 once submitted, 1 if the service refused or failed,
    2 (via `parser.error`) for bad input."""

    def error(message: str) -> int:
        if parser is not None:
            parser.error(message)  # exits 2
        print(f"error: {message}", file=sys.stderr)
        return 2

    if not os.path.isfile(args.package):
        return error(f"--package {args.package}: no such file (write one with `unet-tfx compile`)")
    try:
        if args.target == "kubeflow":
            if not args.host:
                return error("--target kubeflow needs --host, the KFP API endpoint (e.g. "
                             "http://localhost:8080 after `kubectl -n kubeflow port-forward "
                             "svc/ml-pipeline-ui 8080:80`)")
            if args.schedule:
                kfp_cron(args.schedule)
        else:
            missing = [flag for flag, value in (("--project", args.project),
                                                ("--region", args.region)) if not value]
            if missing:
                return error(f"--target vertex needs {' and '.join(missing)}")
            if args.schedule:
                vertex_cron(args.schedule)
    except SubmitError as exc:
        return error(f"--schedule: {exc}")

    try:
        package = _read_package(args.package)
        name = args.pipeline_name or package.name
        if args.target == "kubeflow":
            if not args.pipeline_root and not package.has_root:
                print(f"warning: {args.package} names no pipeline root and --pipeline-root is "
                      "not given: outputs go to the KFP server's default root (minio:// unless "
                      "the cluster sets another), which TFX cannot write to", file=sys.stderr)
            result = submit_kubeflow(
                args.package, args.host, name, experiment=args.experiment,
                schedule=args.schedule, namespace=args.namespace,
                pipeline_root=args.pipeline_root, service_account=args.service_account)
        else:
            result = submit_vertex(
                args.package, project=args.project, region=args.region,
                pipeline_root=args.pipeline_root, schedule=args.schedule,
                service_account=args.service_account, display_name=name)
    except SubmitError as exc:
        return error(str(exc))
    except Exception as exc:  # the service's or the network's refusal: say it (traceback at -v)
        logging.getLogger(__name__).debug("submit failed", exc_info=True)
        print(f"error: submitting to {args.target} failed: {type(exc).__name__}: {exc}",
              file=sys.stderr)
        return 1
    for key, value in result.items():
        print(f"{key}: {value}")
    return 0
