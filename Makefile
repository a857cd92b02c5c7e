# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-unit test-integration lint format clean

$(STAMP): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first and pinned: it resolves to the local CPU wheel, never the CUDA build.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -r requirements.txt
	# The library itself, editable, so Ray workers import `pipeline` from any working directory.
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

demo: $(STAMP)
	$(PY) jobs/demo.py

# -v names each test as it runs and --durations lists the slow ones, so a CI log shows where the
# time went. Each test stops at 15 min (pyproject.toml); --session-timeout starts no new test after
# 50 min, so even several hung tests end inside CI's 90 min with their stacks printed.
test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest -v -rfE --durations=15 --session-timeout=3000 tests/unit tests/integration
	# Its own process: the local cluster starts a Ray head, and two local Rays must not overlap.
	$(PY) -m pytest -v -rfE --session-timeout=1500 tests/cluster

test-unit: $(STAMP)
	$(PY) -m pytest -q tests/unit

test-integration: $(STAMP)
	$(PY) -m pytest -q tests/integration
	$(PY) -m pytest -q tests/cluster

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: $(STAMP)
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
