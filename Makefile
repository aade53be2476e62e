# Two commands do everything:
#   make lab    create the environment if missing, install, prepare the offline assets, open JupyterLab
#   make test   the same set-up, then the unit tests and every notebook under nbval
#   make bench  figures that do not depend on the machine: fit vs a bare loop, cached features, ...
# PYTHON picks the interpreter for the new environment (Python 3.11).

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
SETUP_DONE := $(VENV)/.setup-done
PREPARED   := data/cache/.prepared

.PHONY: setup prepare lab test unit notebooks run-times bench assets clean-cache

setup: $(SETUP_DONE)

$(SETUP_DONE): requirements.txt requirements-assets.txt constraints.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install -r requirements.txt -c constraints.txt
	$(PY) -m pip install --no-deps -r requirements-assets.txt
	$(PY) -m pip install --no-deps -e .
	touch $@

prepare: $(PREPARED)

$(PREPARED): $(SETUP_DONE)
	$(PY) -m tlutils prepare
	touch $@

assets: setup
	$(PY) -m tlutils assets

lab: prepare
	$(VENV)/bin/jupyter lab notebooks/

test: prepare
	$(PY) -m pytest tests notebooks --nbval-lax --nbval-cell-timeout=900 -p tests.notebook_timing

unit: setup
	$(PY) -m pytest tests

notebooks: prepare
	$(PY) -m pytest notebooks --nbval-lax --nbval-cell-timeout=900 -p tests.notebook_timing

# Re-measure every notebook and update the committed time budgets (notebooks/run_times.json);
# make test records into data/run_times.json instead, so a test run leaves the tree clean.
run-times: prepare
	$(PY) -m pytest notebooks --nbval-lax --nbval-cell-timeout=900 -p tests.notebook_timing --run-times=notebooks/run_times.json

bench: prepare
	$(PY) benchmarks/bench.py

clean-cache:
	rm -rf data/cache
