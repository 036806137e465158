"""`unet-tfx serving-config`: the files `tensorflow_model_server` is started with, and the line.

Writes to `--output`, each file atomically (a temporary name, then a rename):

- `models.config`: ModelServerConfig text (base path, version policy, `stable`/`canary` labels);
- `batching.config`: BatchingParameters text for `--enable_batching`;
- `monitoring.config`: MonitoringConfig text (Prometheus metrics on the REST port);
- `command.txt`: the `tensorflow_model_server` line and the `docker run tensorflow/serving` lines
  (CPU and GPU) that use them; `README.md`: what each file and flag is for.

The limits come from the newest version under the serving base (`assets.extra/
serving_limits.json`), else `ServingLimits()`: gRPC accepts requests of `max_request_bytes` plus
1 MiB of envelope, and a batch holds at most `max_batch` images, the most one request may hold.
"""

import argparse
import os
import shlex
import sys
from pathlib import Path

from unet_tfx.config import ServingLimits
from unet_tfx.files import write_atomically

GRPC_PORT, REST_PORT = 8500, 8501
SERVING_IMAGE = "tensorflow/serving:2.16.1"  # the release of the tensorflow-serving-api we pin
PROMETHEUS_PATH = "/monitoring/prometheus/metrics"
ENVELOPE_BYTES = 1024 * 1024  # a PredictRequest's fields and tensor headers around the images
FILES = ("models.config", "batching.config", "monitoring.config", "command.txt", "README.md")
# REST's default timeout, 30 s, cuts off large images on CPU: a 4096² image (121 tiles) took
# 461 s on 2 busy CPU cores for the seed model (see ServingLimits).
REST_TIMEOUT_MS = 600_000
LABELS = ("stable", "canary")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "serving-config",
        help="write TF Serving's model, batching and monitoring configs and its command line",
        description="Write models.config, batching.config, monitoring.config, command.txt (the "
        "tensorflow_model_server and docker run lines) and README.md to --output, for serving "
        "the versions the Pusher writes under --serving-dir/--model-name.",
        epilog="examples:\n"
        "  unet-tfx serving-config --serving-dir out/serving --output out/serving-config\n"
        "  unet-tfx serving-config --serving-dir out/serving --output out/serving-config \\\n"
        "      --stable 1732000000 --canary 1732086400",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--serving-dir", required=True,
                        help="the Pusher's serving base: versions are in "
                        "<serving-dir>/<model-name>")
    parser.add_argument("--model-name", default="unet_membrane", help="default: unet_membrane")
    parser.add_argument("-o", "--output", required=True, help="folder for the files")
    parser.add_argument("--model-base-path", help="the model base as the server sees it (e.g. "
                        "/models/unet_membrane in a container, or gs://...); default: "
                        "<serving-dir>/<model-name>, absolute")
    parser.add_argument("--config-path", help="--output as the server sees it (e.g. /config "
                        "where a Kubernetes ConfigMap is mounted); default: --output, absolute")
    versions = parser.add_argument_group("versions (default: serve the newest 1)")
    versions.add_argument("--versions", type=int, default=1, metavar="N",
                          help="serve the newest N versions (without labels)")
    versions.add_argument("--stable", type=int, metavar="VERSION",
                          help="label VERSION `stable` and serve it")
    versions.add_argument("--canary", type=int, metavar="VERSION",
                          help="label VERSION `canary` and serve it")
    versions.add_argument("--allow-unavailable-labels", action="store_true",
                          help="allow labels on versions not (yet) under the serving base; adds "
                          "--allow_version_labels_for_unavailable_models to the command")
    batching = parser.add_argument_group("batching")
    batching.add_argument("--no-batching", dest="batching", action="store_false",
                          help="leave batching off (no --enable_batching)")
    batching.add_argument("--batch-timeout-micros", type=int, default=5000,
                          help="how long a partial batch waits for more requests (default: 5000)")
    batching.add_argument("--num-batch-threads", type=int, default=2,
                          help="batches run at once: bounds memory to this many requests' peaks "
                          "(default: 2)")
    batching.add_argument("--max-enqueued-batches", type=int, default=8,
                          help="batches that may wait; beyond them requests are refused "
                          "(default: 8)")
    parser.set_defaults(func=run_command)


def _limits(model_base: str) -> ServingLimits:
    """The limits of the newest version under `model_base`, else the defaults."""
    from unet_tfx.serving.local_model import served_versions
    from unet_tfx.trainer.export import read_serving_limits

    versions = served_versions(model_base)
    if versions:
        return read_serving_limits(os.path.join(model_base, str(versions[-1]))) or ServingLimits()
    return ServingLimits()


def _quote(text: str) -> str:
    """A text-format string literal."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def models_config(model_name: str, base_path: str, versions: int = 1, labels: dict | None = None,
                  ) -> str:
    """ModelServerConfig text: the newest `versions` versions, or, with `labels` (label →
    version), exactly the labelled versions."""
    labels = {k: v for k, v in (labels or {}).items() if v is not None}
    lines = [
        "# tensorflow_model_server --model_config_file (ModelServerConfig, text format).",
        "# Written by `unet-tfx serving-config`; TF Serving re-reads it every",
        "# --model_config_file_poll_wait_seconds, so a label can move without a restart.",
    ]
    if labels:
        lines += [
            "# TF Serving refuses a label on a version it has not loaded yet (the config is",
            "# rejected) unless started with --allow_version_labels_for_unavailable_models:",
            "# add the version first, wait for it to be AVAILABLE, then label it.",
        ]
    lines += ["model_config_list {", "  config {", f"    name: {_quote(model_name)}",
              f"    base_path: {_quote(base_path)}", '    model_platform: "tensorflow"',
              "    model_version_policy {"]
    if labels:
        specific = " ".join(f"versions: {v}" for v in sorted(set(labels.values())))
        lines.append(f"      specific {{ {specific} }}")
    else:
        lines.append(f"      latest {{ num_versions: {versions} }}")
    lines.append("    }")
    for label in LABELS:
        if label in labels:
            lines.append(f"    version_labels {{ key: {_quote(label)} value: {labels[label]} }}")
    lines += ["  }", "}"]
    return "\n".join(lines) + "\n"


def batching_config(limits: ServingLimits, timeout_micros: int = 5000, threads: int = 2,
                    enqueued: int = 8) -> str:
    """BatchingParameters text: batches of at most `limits.max_batch` images, as one request."""
    return "\n".join([
        "# tensorflow_model_server --batching_parameters_file (BatchingParameters, text format).",
        "# Written by `unet-tfx serving-config`. Concurrent requests of one signature are",
        "# merged into one run of at most max_batch_size images (= ServingLimits.max_batch), and",
        "# the model's in-graph checks then apply to the merged run: its images must share one",
        "# size and stay within max_pixels together. num_batch_threads runs bound memory to that",
        "# many requests at once; max_enqueued_batches bounds the queue behind them.",
        f"max_batch_size {{ value: {limits.max_batch} }}",
        f"batch_timeout_micros {{ value: {timeout_micros} }}",
        f"max_enqueued_batches {{ value: {enqueued} }}",
        f"num_batch_threads {{ value: {threads} }}",
    ]) + "\n"


def monitoring_config() -> str:
    return "\n".join([
        "# tensorflow_model_server --monitoring_config_file (MonitoringConfig, text format):",
        f"# Prometheus metrics at http://HOST:{REST_PORT}{PROMETHEUS_PATH}.",
        "prometheus_config {",
        "  enable: true",
        f"  path: {_quote(PROMETHEUS_PATH)}",
        "}",
    ]) + "\n"


def server_flags(config_path: str, limits: ServingLimits, batching: bool = True,
                 allow_unavailable_labels: bool = False) -> list[str]:
    """tensorflow_model_server's flags for the files in `config_path` (as the server sees it)."""
    flags = [
        f"--port={GRPC_PORT}",
        f"--rest_api_port={REST_PORT}",
        f"--model_config_file={config_path}/models.config",
        "--model_config_file_poll_wait_seconds=60",
    ]
    if batching:
        flags += ["--enable_batching", f"--batching_parameters_file={config_path}/batching.config"]
    flags += [
        f"--monitoring_config_file={config_path}/monitoring.config",
        "--grpc_channel_arguments=grpc.max_receive_message_length="
        f"{limits.max_request_bytes + ENVELOPE_BYTES}",
        # Batching's advice: about twice max_batch_size threads send work, so batches fill.
        f"--rest_api_num_threads={2 * limits.max_batch}",
        f"--rest_api_timeout_in_ms={REST_TIMEOUT_MS}",
    ]
    if allow_unavailable_labels:
        flags.append("--allow_version_labels_for_unavailable_models")
    return flags


def docker_command(flags: list[str], config_path: str, model_base: str, host_config: str,
                   host_base: str, gpu: bool = False) -> str:
    """`docker run` of TF Serving's image with `flags`: this machine's config folder
    `host_config` and local model base `host_base` are mounted where the server reads them,
    `config_path` and `model_base` (a remote model base is read directly)."""
    mounts = [] if "://" in model_base or "://" in host_base else [
        "-v", f"{host_base}:{model_base}:ro"]
    mounts += ["-v", f"{host_config}:{config_path}:ro"]
    image = SERVING_IMAGE + ("-gpu" if gpu else "")
    words = ["docker", "run", "--rm", *(["--gpus", "all"] if gpu else []),
             "-p", f"{GRPC_PORT}:{GRPC_PORT}", "-p", f"{REST_PORT}:{REST_PORT}", *mounts,
             "--entrypoint", "tensorflow_model_server", image, *flags]
    return shlex.join(words)


def _readme(model_name: str, model_base: str, command: str, docker: str, docker_gpu: str,
            limits: ServingLimits) -> str:
    return f"""# Serving {model_name} with TensorFlow Serving

Written by `unet-tfx serving-config`. Versions: `{model_base}/<version>`, as the Pusher writes
them (each with its warmup requests in `assets.extra/tf_serving_warmup_requests`, replayed on
load before the version is AVAILABLE).

On a machine with `tensorflow_model_server`:

    {command}

With Docker (CPU; GPU with the `-gpu` image and `--gpus all`):

    {docker}
    {docker_gpu}

- gRPC on {GRPC_PORT} (PredictionService, ModelService), REST on {REST_PORT}:
  `POST /v1/models/{model_name}:predict`, `GET /v1/models/{model_name}` (status),
  Prometheus metrics at `{PROMETHEUS_PATH}`.
- `serving_default` answers `probabilities` (float [batch, H, W, 1]) and `mask_png_bytes` (the
  mask as PNG, 0 membrane / 255 cell; base64 in REST answers); `serving_mask` answers the mask
  alone (a REST answer of kilobytes instead of ~3 bytes of JSON per pixel).
- Requests: at most {limits.max_batch} images of one size, {limits.max_pixels} pixels in all,
  sides up to {limits.max_side}, {limits.max_request_bytes} bytes (gRPC accepts that plus 1 MiB);
  larger ones are refused with INVALID_ARGUMENT before decoding. Images larger than
  {limits.tile_size}² are segmented in overlapping tiles inside the model.
- With batching, concurrent requests are merged into one run of at most
  {limits.max_batch} images; the checks then apply to the merged run, so concurrent requests
  of different sizes, or whose pixels add up past the limit, can be refused. Send one size, or
  start without `--enable_batching` (`unet-tfx serving-config --no-batching`).
- Canary: `--stable V1 --canary V2` serves exactly those versions under the labels; clients
  pick one with `model_spec.version_label` (gRPC) or `/v1/models/{model_name}/labels/canary`.
  TF Serving refuses a label on a version it has not loaded unless started with
  `--allow_version_labels_for_unavailable_models`. Edit and rewrite models.config to promote:
  the server re-reads it every 60 s.
"""


def write_serving_config(serving_dir: str, model_name: str, output: str,
                         model_base_path: str | None = None, config_path: str | None = None,
                         versions: int = 1, stable: int | None = None,
                         canary: int | None = None, allow_unavailable_labels: bool = False,
                         batching: bool = True, batch_timeout_micros: int = 5000,
                         num_batch_threads: int = 2, max_enqueued_batches: int = 8) -> dict:
    """Write the files; returns {file name: text}. ValueError for a label on a version that is
    not under the serving base (unless `allow_unavailable_labels`), or bad numbers."""
    from unet_tfx.config import resolve_uri
    from unet_tfx.serving.local_model import served_versions

    local_base = os.path.join(resolve_uri(serving_dir), model_name)
    model_base = model_base_path or local_base
    config_path = (config_path or os.path.abspath(output)).rstrip("/")
    if versions < 1:
        raise ValueError(f"--versions must be at least 1; got {versions}")
    for name, value in (("batch-timeout-micros", batch_timeout_micros),
                        ("num-batch-threads", num_batch_threads),
                        ("max-enqueued-batches", max_enqueued_batches)):
        if value < (0 if name == "batch-timeout-micros" else 1):
            raise ValueError(f"--{name}: {value} is out of range")
    labels = {"stable": stable, "canary": canary}
    if stable is not None and stable == canary:
        raise ValueError(f"--stable and --canary name the same version {stable}")
    present = served_versions(local_base)
    for label, version in labels.items():
        if version is not None and version not in present and not allow_unavailable_labels:
            raise ValueError(
                f"--{label} {version}: no version {version} under {local_base} (versions: "
                f"{', '.join(map(str, present)) or 'none'}); TF Serving refuses a label on a "
                "version it has not loaded unless --allow_version_labels_for_unavailable_models "
                "(--allow-unavailable-labels)")
    limits = _limits(local_base)
    flags = server_flags(config_path, limits, batching, allow_unavailable_labels)
    command = shlex.join(["tensorflow_model_server", *flags])
    mounted = (config_path, model_base, os.path.abspath(output), local_base)
    docker = docker_command(flags, *mounted)
    docker_gpu = docker_command(flags, *mounted, gpu=True)
    files = {
        "models.config": models_config(model_name, model_base, versions, labels),
        "batching.config": batching_config(limits, batch_timeout_micros, num_batch_threads,
                                           max_enqueued_batches),
        "monitoring.config": monitoring_config(),
        "command.txt": "\n".join([
            "# tensorflow_model_server on this machine:", command,
            "# Docker, CPU:", docker, "# Docker, GPU (NVIDIA Container Toolkit):", docker_gpu,
        ]) + "\n",
        "README.md": _readme(model_name, model_base, command, docker, docker_gpu, limits),
    }
    if not batching:
        files.pop("batching.config")
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        write_atomically(out / name, text)
    return files


def run_command(args) -> int:
    try:
        files = write_serving_config(
            args.serving_dir, args.model_name, args.output, args.model_base_path,
            args.config_path, args.versions, args.stable, args.canary,
            args.allow_unavailable_labels, args.batching, args.batch_timeout_micros,
            args.num_batch_threads, args.max_enqueued_batches)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {', '.join(files)} to {args.output}")
    print(files["command.txt"].splitlines()[1])
    return 0
