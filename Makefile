# The two commands the README gives: `make demo` and `make test`.
# Each creates .venv (torch from this machine's disk, the project with its dev extra) if missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Tests run in 2 processes, one thread each (2-core machines). The demo picks its own threads.
PYTEST_ARGS ?= -n 2 -q
TEST_THREADS ?= 1

.PHONY: demo test test-slow venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "torch>=2.3,<=2.14.1" "torchvision>=0.18,<=0.29.1"
	$(PY) -m pip install -q -e ".[dev,video]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/scaledet demo

test: $(STAMP)
	OMP_NUM_THREADS=$(TEST_THREADS) $(PY) -m pytest $(PYTEST_ARGS)

test-slow: $(STAMP)
	OMP_NUM_THREADS=$(TEST_THREADS) $(PY) -m pytest $(PYTEST_ARGS) -m slow

clean:
	rm -rf $(VENV) runs build *.egg-info
