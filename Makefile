# The two commands: `make demo` (set up + train the tiny model on built-in data) and `make test`.
# `make lint` checks the one style of the tree (ruff, configured in pyproject.toml); `make format` applies it.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
WORKDIR ?= workdirs/shapes_tiny
CONFIG ?= configs/shapes_tiny.py
PYTEST_ARGS ?=

.PHONY: demo test lint format venv test-venv bench clean

$(VENV)/.installed: requirements.txt requirements-nodeps.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -r requirements-nodeps.txt
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed requirements-test.txt
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-test.txt
	touch $@

venv: $(VENV)/.installed
test-venv: $(VENV)/.installed-test

demo: $(VENV)/.installed
	$(PY) -m vlp_jax.train --config $(CONFIG) --workdir $(WORKDIR)

# Two pytest workers, one test file each at a time (module fixtures stay in one process): CI has 2 cores.
test: $(VENV)/.installed-test
	$(PY) -m pytest -q -n 2 --dist loadfile $(PYTEST_ARGS)

lint: $(VENV)/.installed-test
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(VENV)/.installed-test
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: $(VENV)/.installed
	$(PY) benchmarks/throughput.py

clean:
	rm -rf workdirs
