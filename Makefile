# The README's two commands are `make demo` and `make test`; both do all the set-up first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: setup system-deps venv native bpf broker demo test lint unit bench clean

setup: system-deps venv native bpf broker

system-deps:
	bash scripts/system-deps.sh

venv: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[dev]'
	touch $@

# The C hot paths (setup.py), built next to their Python references; a no-op when up to date.
native: venv
	$(PY) setup.py -q build_ext --inplace

bpf:
	$(MAKE) -C bpf

broker: venv
	$(PY) -m devbroker fetch

# The whole pipeline on a simulated node, with a real broker; prints the service-pair table.
demo: setup
	$(PY) -m demo

# Lint, types, then every test (unit and integration: real kernel, real broker).
test: setup lint
	$(PY) -m pytest

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

unit: venv
	$(PY) -m pytest tests/unit

bench: setup
	$(PY) -m bench.pipeline

clean:
	-$(PY) -m devbroker stop
	$(MAKE) -C bpf clean
	find collector enricher processors -name '_*.so' -delete
