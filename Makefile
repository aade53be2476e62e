# Two commands do everything:
#   make lab    create the environment if missing, install, prepare the offline assets, open JupyterLab
#   make test   the same set-up, then the unit tests and every notebook under nbval, in TEST_JOBS parallel workers
#   make bench  figures that do not depend on the machine: fit vs a bare loop, cached features, ...
#   make student  student copies of the notebooks (solutions replaced by stubs) in build/student/
#   make site   the course as a static web site in build/site/, from the committed notebooks (nothing executed)
# PYTHON picks the interpreter for the new environment (Python 3.11).
# TORCH=cpu (make lab TORCH=cpu, Linux, best on a new .venv) installs the CPU-only builds of the pinned torch,
# torchvision and torchaudio from PyTorch's CPU wheel index: about 3 GB instead of about 9 GB.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
SETUP_DONE := $(VENV)/.setup-done
PREPARED   := data/cache/.prepared
TORCH      ?=
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
TORCH_SET  := $(shell grep -E '^torch(vision|audio)?==' requirements.txt | cut -d' ' -f1)
LAB_DIR    ?= notebooks/
# make test: pytest workers (pytest-xdist, a notebook or test file each at a time; 0 = one process) and the
# torch threads of each (OMP_NUM_THREADS, also read by the notebooks' kernels). Two one-thread workers finish a
# 2-core run sooner than one two-thread process: the cores stay busy through imports, kernel starts, plotting
# and Python-bound steps. The default splits the cores over the workers.
TEST_JOBS    ?= 2
TEST_THREADS ?= $(shell $(PYTHON) -c "import os; print(max(1, (os.cpu_count() or 2) // max(1, $(TEST_JOBS))))")
PARALLEL     := $(if $(filter-out 0,$(TEST_JOBS)),-n $(TEST_JOBS) --dist loadfile --no-loadscope-reorder)
NBVAL        := --nbval-lax --nbval-cell-timeout=900 -p tests.notebook_timing
LAB_FLAGS  ?=

.PHONY: setup prepare lab test unit notebooks run-times bench assets clean-cache student site

setup: $(SETUP_DONE)

$(SETUP_DONE): requirements.txt requirements-assets.txt requirements-site.txt constraints.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
ifeq ($(TORCH),cpu)
	$(PY) -m pip install --no-deps --index-url $(TORCH_CPU_INDEX) $(addsuffix +cpu,$(TORCH_SET))
endif
	$(PY) -m pip install -r requirements.txt -c constraints.txt
	$(PY) -m pip install -r requirements-site.txt -c constraints.txt
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
	$(VENV)/bin/jupyter lab $(LAB_FLAGS) $(LAB_DIR)

test: prepare
	OMP_NUM_THREADS=$(TEST_THREADS) $(PY) -m pytest tests notebooks $(PARALLEL) $(NBVAL)

unit: setup
	$(PY) -m pytest tests

notebooks: prepare
	OMP_NUM_THREADS=$(TEST_THREADS) $(PY) -m pytest notebooks $(PARALLEL) $(NBVAL)

# Re-measure every notebook and update the committed time budgets (notebooks/run_times.json);
# make test records into data/run_times.json instead, so a test run leaves the tree clean. One process with all
# the cores, so each time is what a learner running that notebook alone waits.
run-times: prepare
	$(PY) -m pytest notebooks $(NBVAL) --run-times=notebooks/run_times.json

bench: prepare
	$(PY) benchmarks/bench.py

student: setup
	$(PY) -m tlutils student build/student

site: setup
	$(PY) -m tlutils site build/site

clean-cache:
	rm -rf data/cache
