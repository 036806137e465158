"""Nothing loads pickles or evaluates input, nothing runs a shell, and the compiled pipeline specs
hold no credentials.

How it is checked: every Python file of the package and of bench/ is parsed (`ast`) and each call
is matched against the dangerous ones below; a plain-text grep backs the parse up for the names
that matter most, so that an alias or a call the parse does not recognise still shows. The
compiled specs of both targets are searched for key/token/password/secret-looking names and
values. Elsewhere: the image's final USER is non-root (tests/test_image.py::
test_the_image_runs_as_a_non_root_user); gRPC with TLS on loopback is the serving client's test.
"""

import ast
import json
import re
import textwrap
from pathlib import Path

import pytest
import yaml

from unet_tfx.cli import main

ROOT = Path(__file__).resolve().parent.parent
SCANNED = sorted([*(ROOT / "unet_tfx").rglob("*.py"), *(ROOT / "bench").rglob("*.py")])

# module.function calls that deserialize code or run a shell, whatever their arguments.
FORBIDDEN_CALLS = {
    ("pickle", "load"), ("pickle", "loads"), ("pickle", "Unpickler"),
    ("cPickle", "load"), ("cPickle", "loads"), ("dill", "load"), ("dill", "loads"),
    ("cloudpickle", "load"), ("cloudpickle", "loads"), ("marshal", "load"), ("marshal", "loads"),
    ("shelve", "open"), ("yaml", "unsafe_load"), ("yaml", "unsafe_load_all"),
    ("yaml", "full_load"), ("yaml", "full_load_all"), ("os", "system"), ("os", "popen"),
    ("torch", "load"), ("jsonpickle", "decode"),
}
FORBIDDEN_BUILTINS = {"eval", "exec", "compile", "__import__"}
SAFE_YAML_LOADERS = {"SafeLoader", "CSafeLoader", "BaseLoader", "CBaseLoader"}
# A plain-text backstop: these strings must not appear in code at all.
GREP = re.compile(r"\bpickle\.loads?\(|(?<![\w.])eval\(|(?<![\w.])exec\(|shell\s*=\s*True|"
                  r"yaml\.(unsafe_|full_)load|yaml\.load(_all)?\((?![^)\n]*Safe)|"
                  r"allow_pickle\s*=\s*True|os\.system\(")


def _dotted(node) -> tuple[str, ...]:
    """("a", "b", "c") for a.b.c, else ()."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return tuple(reversed(parts))
    return ()


def _keyword(call: ast.Call, name: str):
    return next((k.value for k in call.keywords if k.arg == name), None)


def _is_true(node) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def dangerous_calls(source: str) -> list[str]:
    """The dangerous calls in `source`, as "line: what"."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        what = None
        if len(name) == 1 and name[0] in FORBIDDEN_BUILTINS:
            what = f"{name[0]}()"
        elif name[-2:] in FORBIDDEN_CALLS:
            what = ".".join(name)
        elif name[-2:] in {("yaml", "load"), ("yaml", "load_all")}:
            loader = _keyword(node, "Loader") or (node.args[1] if len(node.args) > 1 else None)
            if loader is None or _dotted(loader)[-1:] not in {(n,) for n in SAFE_YAML_LOADERS}:
                what = f"{'.'.join(name)} without a safe Loader"
        elif name[:1] == ("subprocess",) or name[-1:] in {("Popen",), ("check_output",)}:
            if _is_true(_keyword(node, "shell")):
                what = f"{'.'.join(name)}(shell=True)"
        elif name[-1:] == ("load",) and name[:1] in {("np",), ("numpy",)}:
            if _is_true(_keyword(node, "allow_pickle")):
                what = f"{'.'.join(name)}(allow_pickle=True)"
        if what:
            found.append(f"{node.lineno}: {what}")
    return found


def test_the_scan_finds_what_it_looks_for():
    bad = textwrap.dedent("""
        import pickle, yaml, subprocess, numpy as np
        pickle.load(f)
        pickle.loads(b"")
        eval("1")
        exec("x = 1")
        yaml.load(text)
        yaml.load(text, Loader=yaml.Loader)
        yaml.unsafe_load(text)
        subprocess.run("ls", shell=True)
        np.load("a.npy", allow_pickle=True)
        """)
    assert len(dangerous_calls(bad)) == 9
    assert len(list(GREP.finditer(bad))) == 9
    good = textwrap.dedent("""
        import yaml, subprocess, json
        yaml.safe_load(text)
        yaml.load(text, Loader=yaml.SafeLoader)
        subprocess.run(["ls"], check=True)
        json.loads(text)
        model.evaluate(data)
        """)
    assert dangerous_calls(good) == [] and not GREP.search(good)


def test_no_code_loads_pickles_evaluates_input_or_runs_a_shell():
    assert len(SCANNED) > 30, "the scan found too few files: wrong folder?"
    found = {}
    for path in SCANNED:
        source = path.read_text(encoding="utf-8")
        hits = dangerous_calls(source) + [
            f"{source.count(chr(10), 0, m.start()) + 1}: text {m.group(0)!r}"
            for m in GREP.finditer(source)]
        if hits:
            found[str(path.relative_to(ROOT))] = hits
    assert found == {}


# Names and values that look like credentials. Key names are matched as whole words or
# snake/camel parts; values by the shapes of common secrets.
SECRET_KEY = re.compile(r"(?i)(^|[_\-.])(password|passwd|secret|token|api[_-]?key|access[_-]?key|"
                        r"private[_-]?key|credentials?|auth)([_\-.]|$)")
SECRET_VALUE = re.compile(
    r"AKIA[0-9A-Z]{16}"  # AWS access key id
    r"|AIza[0-9A-Za-z_\-]{35}"  # Google API key
    r"|ya29\.[0-9A-Za-z_\-]+"  # Google OAuth access token
    r"|-----BEGIN [A-Z ]*PRIVATE KEY-----"
    r"|\"type\":\s*\"service_account\""
    r"|gh[pousr]_[0-9A-Za-z]{36}"  # GitHub tokens
    r"|xox[abpr]-[0-9A-Za-z\-]+"  # Slack tokens
    r"|(?i:bearer\s+[0-9a-z\-._~+/]{20,})"
    r"|(?i:(password|passwd|secret|token|api_?key)\s*[=:]\s*\S{6,})"
)


def _keys_and_values(node, path=()):
    if isinstance(node, dict):
        for key, value in node.items():
            yield path + (str(key),), str(key)
            yield from _keys_and_values(value, path + (str(key),))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _keys_and_values(value, path + (str(i),))
    elif isinstance(node, str):
        yield path, node


@pytest.fixture(scope="module")
def compiled_specs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("specs")
    specs = {}
    for target in ("kubeflow", "vertex"):
        output = folder / f"{target}.spec"
        code = main(["compile", "--target", target, "--image", "registry.example/unet-tfx:1.0",
                     "--profile", "test", "--pipeline-root", "gs://acme/tfx",
                     "--examples-dir", "gs://acme/examples", "--serving-dir", "gs://acme/serving",
                     "--output", str(output)])
        assert code == 0
        specs[target] = output.read_text()
    return specs


@pytest.mark.parametrize("target", ["kubeflow", "vertex"])
def test_compiled_specs_hold_no_credentials(compiled_specs, target):
    text = compiled_specs[target]
    document = yaml.safe_load(text) if target == "kubeflow" else json.loads(text)
    # Values may hold JSON (TFX serializes exec properties); search them as text too.
    suspicious = [f"{'/'.join(path)}: {value[:80]!r}" for path, value in _keys_and_values(document)
                  if SECRET_VALUE.search(value)
                  or (path and path[-1] == value and SECRET_KEY.search(value))]
    suspicious += [m.group(0)[:40] for m in SECRET_VALUE.finditer(text)]
    assert suspicious == []
    # No environment variable of the compiling machine leaks into a container either.
    assert '"env"' not in text and "\nenv:" not in text and " env:" not in text


def test_the_credential_search_finds_planted_secrets():
    planted = {"deploymentSpec": {"executors": {"Trainer": {"container": {
        "args": ["--beam-arg=--api_key=abcdefgh1234"],
        "GOOGLE_APPLICATION_CREDENTIALS": "/secrets/sa.json",
        "key": "AKIA" + "A" * 16}}}}}
    hits = [path for path, value in _keys_and_values(planted)
            if SECRET_VALUE.search(value) or (path and path[-1] == value
                                              and SECRET_KEY.search(value))]
    assert len(hits) == 3, hits
