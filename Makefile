# All set-up happens here: `make run` and `make test` work on a fresh machine.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
export TF_USE_LEGACY_KERAS := 1
export TF_CPP_MIN_LOG_LEVEL := 2
# A Python 3.10 that really runs (pyenv shims on PATH may not), else pyenv's install.
PYTHON310 ?= $(shell for p in python3.10 /root/.pyenv/versions/3.10.*/bin/python3.10 /usr/bin/python3.10 /usr/local/bin/python3.10; do \
	"$$p" -c 'import sys; assert sys.version_info[:2] == (3, 10)' >/dev/null 2>&1 && { echo "$$p"; break; }; done)

.PHONY: all venv run test lint lock bench clean browser
all: venv

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.lock pyproject.toml
	@test -n "$(PYTHON310)" || { echo "No working Python 3.10 found: install one (e.g. 'pyenv install 3.10.13' or apt python3.10-venv), or pass PYTHON310=/path/to/python3.10" >&2; exit 1; }
	@echo "Creating $(VENV) with $(PYTHON310)"
	@test -x $(PY) || $(PYTHON310) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade "pip==24.3.1" "setuptools==75.6.0" wheel
	$(PY) -m pip install -q --no-deps -r requirements.lock
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	@$(PY) -m pip check || echo "pip check: see README 'Environment' for the known, harmless leftovers"
	@touch $@

run: venv
	$(VENV)/bin/unet-tfx run

test: venv browser
	$(VENV)/bin/pytest -q --durations=25 -n 2 --dist loadfile

# Headless Chromium renders the HTML report in the tests: Debian's package (as root, or sudo).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
browser:
	@command -v chromium >/dev/null || { export DEBIAN_FRONTEND=noninteractive; \
	  $(SUDO) apt-get install -y -q --no-install-recommends chromium || { \
	  $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q --no-install-recommends chromium; }; }

lint: venv
	$(VENV)/bin/ruff check unet_tfx tests bench
	$(VENV)/bin/hadolint Dockerfile

# The five benchmarks with targets (README "Benchmarks"); each prints its ratio last and writes
# bench/results/<name>.json and .png. bench_pipeline first: the others reuse its Transform output.
bench: venv
	$(PY) bench/bench_pipeline.py
	$(PY) bench/bench_trainer.py
	$(PY) bench/bench_serving.py
	$(PY) bench/bench_input.py
	$(PY) bench/bench_scale.py

lock:
	test -x .lockenv/bin/uv || { $(PYTHON310) -m venv .lockenv && .lockenv/bin/pip install -q uv; }
	.lockenv/bin/uv pip compile requirements.in --python-version 3.10 --python-platform x86_64-manylinux_2_28 -o requirements.lock

clean:
	rm -rf $(VENV) .lockenv build *.egg-info
