"""`unet-tfx submit`: what the real kfp 2.5 client sends to a (test double of the) KFP API server,
and how the Vertex AI PipelineJob is built (with a test double of `aiplatform`)."""

import argparse
import ast
import email.parser
import email.policy
import importlib.util
import json
import os
import socket
import threading
import types
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import kfp
import kfp.client
import pytest
import yaml

from unet_tfx.pipeline import submit
from unet_tfx.pipeline.submit import (
    SubmitError,
    kfp_cron,
    register,
    submit_kubeflow,
    submit_vertex,
    vertex_cron,
)

API = "/apis/v2beta1"


class KfpApiDouble:
    """TEST DOUBLE of the Kubeflow Pipelines API server (v2beta1 REST), on 127.0.0.1.

    Implements just what the kfp 2.5 client calls for `submit_kubeflow`: healthz, pipeline
    list (display_name filter) / upload / upload_version, pipeline version list, experiment
    list (filter) / create, run create, recurring run create. Keeps pipelines, versions and
    experiments in memory, answers with JSON shaped like the server's, and records every request
    in `requests` as {method, path, query, json, files} (files: field -> (filename, bytes)).
    """

    def __init__(self):
        self.requests = []
        self.pipelines = {}  # id -> {"pipeline_id", "display_name"}
        self.versions = {}  # pipeline id -> [version dicts, oldest first]
        self.experiments = {}  # id -> experiment dict
        self._lock = threading.Lock()
        double = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                double._handle(self, "GET")

            def do_POST(self):
                double._handle(self, "POST")

            def log_message(self, *args):  # keep pytest's output clean
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.host = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,),
                                        daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._server.shutdown()
        self._server.server_close()

    def calls(self, method, path):
        return [r for r in self.requests if r["method"] == method and r["path"] == path]

    # --- request handling -------------------------------------------------------------------

    def _handle(self, handler, method):
        url = urlsplit(handler.path)
        query = {key: values[0] for key, values in parse_qs(url.query).items()}
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else b""
        content_type = handler.headers.get("Content-Type", "")
        record = {"method": method, "path": url.path, "query": query, "json": None, "files": {}}
        if content_type.startswith("multipart/form-data"):
            record["files"] = _multipart_files(content_type, body)
        elif body:
            record["json"] = json.loads(body)
        with self._lock:
            self.requests.append(record)
            try:
                status, answer = self._route(method, url.path, query, record)
            except Exception as exc:  # answer like a failing server instead of hanging up
                status, answer = 500, {"error": f"{type(exc).__name__}: {exc}", "code": 13}
        payload = json.dumps(answer).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(payload)))
        handler.end_headers()
        handler.wfile.write(payload)

    def _route(self, method, path, query, record):
        body = record["json"] or {}
        if (method, path) == ("GET", f"{API}/healthz"):
            return 200, {"multi_user": False}
        if (method, path) == ("GET", f"{API}/pipelines"):
            name = _filter_name(query)
            found = [p for p in self.pipelines.values() if name in (None, p["display_name"])]
            return 200, {"pipelines": found, "total_size": len(found)} if found else {}
        if (method, path) == ("POST", f"{API}/pipelines/upload"):
            pipeline = {"pipeline_id": _new_id(), "display_name": query["name"]}
            self.pipelines[pipeline["pipeline_id"]] = pipeline
            # Like the server: the upload also makes the first version, named like the pipeline.
            self._add_version(pipeline["pipeline_id"], query["name"])
            return 200, pipeline
        if (method, path) == ("POST", f"{API}/pipelines/upload_version"):
            if query.get("pipelineid") not in self.pipelines:
                return 404, {"error": "pipeline not found", "code": 5}
            return 200, self._add_version(query["pipelineid"], query["name"])
        if method == "GET" and path.startswith(f"{API}/pipelines/") and path.endswith("/versions"):
            versions = self.versions.get(path.split("/")[-2], [])
            if query.get("sort_by", "").endswith(" desc"):
                versions = versions[::-1]
            versions = versions[:int(query.get("page_size", 10))]
            return 200, {"pipeline_versions": versions, "total_size": len(versions)}
        if (method, path) == ("GET", f"{API}/experiments"):
            name = _filter_name(query)
            found = [e for e in self.experiments.values() if name in (None, e["display_name"])]
            return 200, {"experiments": found, "total_size": len(found)} if found else {}
        if (method, path) == ("POST", f"{API}/experiments"):
            experiment = {**body, "experiment_id": _new_id(), "storage_state": "AVAILABLE"}
            self.experiments[experiment["experiment_id"]] = experiment
            return 200, experiment
        if (method, path) == ("POST", f"{API}/runs"):
            return 200, {**body, "run_id": _new_id(), "state": "PENDING"}
        if (method, path) == ("POST", f"{API}/recurringruns"):
            return 200, {**body, "recurring_run_id": _new_id(), "status": "ENABLED"}
        return 404, {"error": f"the double does not implement {method} {path}", "code": 5}

    def _add_version(self, pipeline_id, name):
        version = {"pipeline_id": pipeline_id, "pipeline_version_id": _new_id(),
                   "display_name": name}
        self.versions.setdefault(pipeline_id, []).append(version)
        return version


def _new_id():
    return str(uuid.uuid4())


def _filter_name(query):
    """The display_name an EQUALS filter asks for (None: no filter)."""
    if "filter" not in query:
        return None
    (predicate,) = json.loads(query["filter"])["predicates"]
    # The kfp client sends the enum's number (EQUALS = 1), which the server's protojson accepts.
    assert predicate["key"] == "display_name" and predicate["operation"] in (1, "EQUALS")
    return predicate["stringValue"]


def _multipart_files(content_type, body):
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + body)
    return {part.get_param("name", header="content-disposition"):
            (part.get_filename(), part.get_payload(decode=True))
            for part in message.iter_parts()}


# --- fixtures ---------------------------------------------------------------------------------


@kfp.dsl.component(base_image="python:3.10")
def echo(message: str) -> str:
    return message


@kfp.dsl.pipeline(name="tiny-submit-test")
def tiny_pipeline(message: str = "hello"):
    echo(message=message)


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    """A real KFP v2 PipelineSpec YAML, compiled by the kfp compiler (no network)."""
    path = tmp_path_factory.mktemp("package") / "tiny.yaml"
    kfp.compiler.Compiler().compile(tiny_pipeline, str(path))
    return path


@pytest.fixture
def kfp_api(monkeypatch, tmp_path):
    # Keep the client off this machine's KFP context file and endpoint variables.
    monkeypatch.setattr(kfp.client.Client, "_LOCAL_KFP_CONTEXT", str(tmp_path / "context.json"))
    for variable in ("KF_PIPELINES_ENDPOINT", "KF_PIPELINES_UI_ENDPOINT",
                     "KF_PIPELINES_IAP_OAUTH2_CLIENT_ID", "KF_PIPELINES_APP_OAUTH2_CLIENT_ID",
                     "KF_PIPELINES_APP_OAUTH2_CLIENT_SECRET"):
        monkeypatch.delenv(variable, raising=False)
    with KfpApiDouble() as double:
        yield double


# --- Kubeflow Pipelines ------------------------------------------------------------------------


def test_first_submit_uploads_the_package_as_a_pipeline_and_runs_it(kfp_api, package):
    result = submit_kubeflow(str(package), kfp_api.host, "unet-membrane",
                             parameters={"message": "hi"})

    (upload,) = kfp_api.calls("POST", f"{API}/pipelines/upload")
    assert upload["query"]["name"] == "unet-membrane"
    filename, content = upload["files"]["uploadfile"]
    assert filename == "tiny.yaml"
    assert content == package.read_bytes()
    assert not kfp_api.calls("POST", f"{API}/pipelines/upload_version")

    (created,) = kfp_api.calls("POST", f"{API}/experiments")
    assert created["json"]["display_name"] == "unet-tfx"

    (run,) = kfp_api.calls("POST", f"{API}/runs")
    (pipeline_id,) = kfp_api.pipelines
    (version,) = kfp_api.versions[pipeline_id]
    assert run["json"]["pipeline_version_reference"] == {
        "pipeline_id": pipeline_id, "pipeline_version_id": version["pipeline_version_id"]}
    (experiment_id,) = kfp_api.experiments
    assert run["json"]["experiment_id"] == experiment_id
    assert run["json"]["runtime_config"]["parameters"] == {"message": "hi"}
    assert "pipeline_spec" not in run["json"]  # the run references the upload, no inline spec

    assert result["pipeline_id"] == pipeline_id
    assert result["pipeline_version_id"] == version["pipeline_version_id"]
    assert result["experiment_id"] == experiment_id
    assert result["url"] == f"{kfp_api.host}/#/runs/details/{result['run_id']}"


def test_second_submit_adds_a_version_and_reuses_the_experiment(kfp_api, package):
    first = submit_kubeflow(str(package), kfp_api.host, "unet-membrane")
    second = submit_kubeflow(str(package), kfp_api.host, "unet-membrane")

    assert len(kfp_api.calls("POST", f"{API}/pipelines/upload")) == 1
    (upload_version,) = kfp_api.calls("POST", f"{API}/pipelines/upload_version")
    assert upload_version["query"]["pipelineid"] == first["pipeline_id"]
    assert upload_version["query"]["name"].startswith("unet-membrane-")
    assert upload_version["files"]["uploadfile"][1] == package.read_bytes()
    assert len(kfp_api.calls("POST", f"{API}/experiments")) == 1  # found by name the 2nd time

    assert second["pipeline_id"] == first["pipeline_id"]
    assert second["pipeline_version_id"] != first["pipeline_version_id"]
    assert second["experiment_id"] == first["experiment_id"]
    last_run = kfp_api.calls("POST", f"{API}/runs")[-1]["json"]
    assert last_run["pipeline_version_reference"]["pipeline_version_id"] == \
        second["pipeline_version_id"]


def test_schedule_creates_a_recurring_run_with_a_seconds_field(kfp_api, package):
    result = submit_kubeflow(str(package), kfp_api.host, "unet-membrane", experiment="nightly",
                             schedule="0 3 * * 1")

    assert not kfp_api.calls("POST", f"{API}/runs")
    (request,) = kfp_api.calls("POST", f"{API}/recurringruns")
    body = request["json"]
    assert body["trigger"] == {"cron_schedule": {"cron": "0 0 3 * * 1"}}
    assert int(body["max_concurrency"]) == 1
    assert body["mode"] == "ENABLE"
    assert body["no_catchup"] is True
    assert body["pipeline_version_reference"]["pipeline_id"] == result["pipeline_id"]
    assert body["experiment_id"] == result["experiment_id"]
    assert kfp_api.experiments[result["experiment_id"]]["display_name"] == "nightly"
    assert result["cron"] == "0 0 3 * * 1"
    assert result["recurring_run_id"]


def test_a_tfx_pipeline_job_json_is_unwrapped_to_its_spec(kfp_api, package, tmp_path):
    """`unet-tfx compile --output x.json` writes TFX's PipelineJob: the server wants the spec."""
    spec = yaml.safe_load(package.read_text())
    job = tmp_path / "unet_tfx_pipeline.json"
    job.write_text(json.dumps({"displayName": "unet", "pipelineSpec": spec,
                               "runtimeConfig": {"gcsOutputDirectory": "gs://acme/tfx"}}))

    submit_kubeflow(str(job), kfp_api.host, "unet-membrane")

    filename, content = kfp_api.calls("POST", f"{API}/pipelines/upload")[0]["files"]["uploadfile"]
    assert filename == "unet_tfx_pipeline.yaml"
    assert yaml.safe_load(content) == spec
    run = kfp_api.calls("POST", f"{API}/runs")[0]["json"]
    assert run["runtime_config"]["pipeline_root"] == "gs://acme/tfx"


def test_a_spec_in_a_json_file_is_uploaded_as_yaml(kfp_api, package, tmp_path):
    """Older KFP servers take only .yaml uploads; a bare spec keeps its contents."""
    spec = yaml.safe_load(package.read_text())
    bare = tmp_path / "spec.json"
    bare.write_text(json.dumps(spec))

    submit_kubeflow(str(bare), kfp_api.host, "unet-membrane", pipeline_root="gs://acme/root")

    filename, content = kfp_api.calls("POST", f"{API}/pipelines/upload")[0]["files"]["uploadfile"]
    assert (filename, yaml.safe_load(content)) == ("spec.yaml", spec)
    run = kfp_api.calls("POST", f"{API}/runs")[0]["json"]
    assert run["runtime_config"]["pipeline_root"] == "gs://acme/root"


def test_cron_expressions():
    assert kfp_cron("0 3 * * 1") == "0 0 3 * * 1"
    assert kfp_cron("30 0 3 * * 1") == "30 0 3 * * 1"
    assert vertex_cron("TZ=Europe/Amsterdam 0 3 * * 1") == "TZ=Europe/Amsterdam 0 3 * * 1"
    for bad in ("0 3 * *", "@daily"):
        with pytest.raises(SubmitError, match="5 fields"):
            kfp_cron(bad)
    with pytest.raises(SubmitError, match="5 fields"):
        vertex_cron("0 0 3 * * 1")


# --- the command line --------------------------------------------------------------------------


def _parse(argv):
    parser = argparse.ArgumentParser(prog="unet-tfx")
    register(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["submit", *argv])


def test_cli_submits_to_kubeflow_and_prints_the_run(kfp_api, package, capsys):
    args = _parse(["--target", "kubeflow", "--package", str(package), "--host", kfp_api.host,
                   "--experiment", "cli"])
    assert args.func(args) == 0

    captured = capsys.readouterr()
    assert "names no pipeline root" in captured.err  # a bare spec, no --pipeline-root
    out = captured.out
    (run_id,) = [line.split(": ", 1)[1] for line in out.splitlines() if line.startswith("run_id:")]
    assert f"url: {kfp_api.host}/#/runs/details/{run_id}" in out
    assert kfp_api.calls("POST", f"{API}/runs")
    (experiment,) = kfp_api.experiments.values()
    assert experiment["display_name"] == "cli"
    # Without --pipeline-name the pipeline is the package's own (compile names it after the
    # dataset), not always unet-membrane.
    (upload,) = kfp_api.calls("POST", f"{API}/pipelines/upload")
    assert upload["query"]["name"] == "tiny-submit-test"


@pytest.mark.parametrize("argv, message", [
    (["--target", "kubeflow"], "--target kubeflow needs --host"),
    (["--target", "vertex", "--project", "acme"], "--target vertex needs --region"),
    (["--target", "vertex"], "needs --project and --region"),
    (["--target", "kubeflow", "--host", "http://127.0.0.1:9", "--schedule", "daily"], "--schedule"),
])
def test_cli_rejects_incomplete_arguments(package, capsys, argv, message):
    args = _parse([*argv, "--package", str(package)])
    with pytest.raises(SystemExit) as exit_info:
        args.func(args)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_cli_passes_the_pipeline_root_and_rejects_a_non_pipeline(kfp_api, package, tmp_path,
                                                                  capsys):
    args = _parse(["--target", "kubeflow", "--package", str(package), "--host", kfp_api.host,
                   "--pipeline-root", "gs://acme/tfx", "--schedule", "0 3 * * 1"])
    assert args.func(args) == 0
    assert "names no pipeline root" not in capsys.readouterr().err
    (request,) = kfp_api.calls("POST", f"{API}/recurringruns")
    assert request["json"]["runtime_config"]["pipeline_root"] == "gs://acme/tfx"

    other = tmp_path / "other.yaml"
    other.write_text("just: a mapping\n")
    args = _parse(["--target", "kubeflow", "--package", str(other), "--host", kfp_api.host])
    with pytest.raises(SystemExit) as exit_info:
        args.func(args)
    assert exit_info.value.code == 2
    assert "not a KFP v2 pipeline spec" in capsys.readouterr().err


def test_cli_reports_an_unreachable_server(package, capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(kfp.client.Client, "_LOCAL_KFP_CONTEXT", str(tmp_path / "context.json"))
    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        host = f"http://127.0.0.1:{closed.getsockname()[1]}"
    args = _parse(["--target", "kubeflow", "--package", str(package), "--host", host])
    assert args.func(args) == 1
    assert "error: submitting to kubeflow failed" in capsys.readouterr().err


def test_cli_rejects_a_missing_package(tmp_path, capsys):
    args = _parse(["--target", "kubeflow", "--host", "http://127.0.0.1:9",
                   "--package", str(tmp_path / "nope.yaml")])
    with pytest.raises(SystemExit) as exit_info:
        args.func(args)
    assert exit_info.value.code == 2
    assert "no such file" in capsys.readouterr().err


# --- Vertex AI (no network here: the aiplatform module is replaced by a test double) -----------


class AiplatformDouble:
    """TEST DOUBLE of the `google.cloud.aiplatform` module: records init, the PipelineJob it is
    asked to build and what is done with it; nothing reaches Google."""

    def __init__(self):
        self.calls = []
        double = self

        class PipelineJobDouble:
            """Test double of aiplatform.PipelineJob."""

            name = "1234"
            resource_name = "projects/acme/locations/europe-west4/pipelineJobs/1234"

            def __init__(self, **kwargs):
                double.calls.append(("PipelineJob", kwargs))

            def submit(self, **kwargs):
                double.calls.append(("submit", kwargs))

            def create_schedule(self, **kwargs):
                double.calls.append(("create_schedule", kwargs))
                return types.SimpleNamespace(
                    resource_name="projects/acme/locations/europe-west4/schedules/99")

        self.PipelineJob = PipelineJobDouble

    def init(self, **kwargs):
        self.calls.append(("init", kwargs))


def _installed_aiplatform_parameters():
    """Parameter names of the installed aiplatform's init, PipelineJob.__init__, submit and
    create_schedule, read from its source (importing aiplatform takes ~5-9 s)."""
    spec = importlib.util.find_spec("google.cloud.aiplatform")
    folder = os.path.dirname(spec.origin)
    wanted = {("initializer.py", "_Config", "init"): "init",
              ("pipeline_jobs.py", "PipelineJob", "__init__"): "PipelineJob",
              ("pipeline_jobs.py", "PipelineJob", "submit"): "submit",
              ("pipeline_jobs.py", "PipelineJob", "create_schedule"): "create_schedule"}
    found = {}
    for (filename, class_name, method), call in wanted.items():
        with open(os.path.join(folder, filename)) as f:
            tree = ast.parse(f.read())
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and node.name == class_name:
                for item in node.body:
                    if isinstance(item, ast.FunctionDef) and item.name == method:
                        found[call] = {a.arg for a in item.args.args + item.args.kwonlyargs}
    assert set(found) == set(wanted.values())
    return found


@pytest.fixture
def aiplatform(monkeypatch):
    double = AiplatformDouble()
    monkeypatch.setattr(submit, "_aiplatform", lambda: double)
    return double


def test_vertex_builds_and_submits_the_pipeline_job(aiplatform, package):
    result = submit_vertex(str(package), project="acme", region="europe-west4",
                           pipeline_root="gs://acme/tfx", service_account="sa@acme.iam",
                           parameters={"message": "hi"})

    assert aiplatform.calls == [
        ("init", {"project": "acme", "location": "europe-west4"}),
        ("PipelineJob", {"display_name": "unet-membrane", "template_path": str(package),
                         "pipeline_root": "gs://acme/tfx", "parameter_values": {"message": "hi"},
                         "enable_caching": None}),
        ("submit", {"service_account": "sa@acme.iam"}),
    ]
    assert result["pipeline_job"].endswith("/pipelineJobs/1234")
    # The keyword names used are the installed google-cloud-aiplatform's.
    parameters = _installed_aiplatform_parameters()
    for call, kwargs in aiplatform.calls:
        assert set(kwargs) <= parameters[call], call


def test_vertex_schedule_creates_a_pipeline_job_schedule(aiplatform, package):
    result = submit_vertex(str(package), project="acme", region="europe-west4",
                           schedule="0 3 * * 1", display_name="weekly")

    call, kwargs = aiplatform.calls[-1]
    assert call == "create_schedule"
    assert kwargs == {"cron": "0 3 * * 1", "display_name": "weekly",
                      "max_concurrent_run_count": 1, "service_account": None}
    assert not [c for c, _ in aiplatform.calls if c == "submit"]
    assert result["schedule"].endswith("/schedules/99")
    assert set(kwargs) <= _installed_aiplatform_parameters()["create_schedule"]


def test_cli_submits_to_vertex(aiplatform, package, capsys):
    args = _parse(["--target", "vertex", "--package", str(package), "--project", "acme",
                   "--region", "europe-west4", "--pipeline-root", "gs://acme/tfx"])
    assert args.func(args) == 0
    assert "pipeline_job: projects/acme/locations/europe-west4/pipelineJobs/1234" in \
        capsys.readouterr().out
    assert aiplatform.calls[1][1]["pipeline_root"] == "gs://acme/tfx"
