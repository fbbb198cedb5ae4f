# Everything installs into the repository: .venv for Python, node_modules for the CDK CLI.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
CDK := node_modules/.bin/cdk
PYTEST_ARGS ?=
MYPY_TESTS := $(VENV)/bin/mypy --config-file tests/mypy.ini

export JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION := 1
export PATH := $(CURDIR)/$(VENV)/bin:$(CURDIR)/node_modules/.bin:$(PATH)

.PHONY: install lint test test-fast bench demo clean

install: $(INSTALLED) $(CDK)

$(INSTALLED): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

$(CDK): package.json
	npm install --no-package-lock --no-audit --no-fund --loglevel=error
	touch $@

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(MYPY_TESTS) tests/unit tests/harness tests/conftest.py tests/demo.py tests/seed_example.py
	$(MYPY_TESTS) tests/integration
	$(MYPY_TESTS) tests/e2e

test: lint
	$(PY) -m pytest $(PYTEST_ARGS)

# The suite without the tests that install packages from the registry.
test-fast: install
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

bench: install
	$(PY) -m bench

demo: install
	$(PY) tests/demo.py

clean:
	rm -rf $(VENV) node_modules cdk.out .pytest_cache .mypy_cache .ruff_cache
