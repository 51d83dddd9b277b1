# One obvious command per job. Everything installs from requirements.lock into .venv.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

# Quiet, offline Prefect (see README "Prefect settings"); a run never reaches for the internet.
export PREFECT_HOME ?= $(CURDIR)/.prefect
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export DO_NOT_TRACK ?= 1
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 60

.PHONY: install demo serve deploy test test-unit lint format bench machines lock clean

install: $(STAMP)

# The install takes 3-4 minutes on a small machine: each step says what it is doing.
$(STAMP): requirements.lock pyproject.toml
	@echo "[1/3] Creating the virtualenv in $(VENV)"
	$(PYTHON) -m venv $(VENV)
	@echo "[2/3] Installing $$(grep -c '==' requirements.lock) pinned packages from requirements.lock (3-4 minutes; Prefect is the big one)"
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.lock
	@echo "[3/3] Installing clinic-relay itself (the relay command)"
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)
	@echo "Installed: $(VENV)/bin/relay"

demo: $(STAMP)  ## sandbox Cliniko -> sync -> DuckDB, then print what was synced
	@echo "Starting the demo: the sandbox Cliniko, a sync into DuckDB, then what came in"
	$(VENV)/bin/relay demo

serve: $(STAMP)  ## Prefect server + UI on 127.0.0.1:4200, sandbox Cliniko, the demo clinic ticking (Ctrl-C stops)
	$(VENV)/bin/relay serve

# Every clinic's deployments, generated from clinics/ (needs PREFECT_API_URL; docs/scaling.md).
# The demo only when asked: make deploy DEPLOY_ARGS=--demo
deploy: $(STAMP)
	$(VENV)/bin/relay deploy $(DEPLOY_ARGS)

# Every core at once (each test has its own files, ports and sandboxes). Each Prefect-server test
# module runs whole on one worker, against that worker's own server (tests/conftest.py), beside
# the rest; listed first, they start first.
# Two workers a core: the suite mostly waits (servers, subprocesses, kills), and at one a core the
# two cores were busy less than half the run.
TEST_WORKERS ?= $(shell $(PYTHON) -c "import os; print(2 * (os.cpu_count() or 1))")
test: $(STAMP)  ## the whole suite: unit, integration (real HTTP), Prefect server tests
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadgroup --durations=25 tests/flows tests/unit tests/sandbox tests/integration

test-unit: $(STAMP)
	$(PY) -m pytest tests/unit

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: $(STAMP)  ## benchmarks; each prints its figures
	$(PY) -m bench $(BENCH)

# Two machines against one Prefect server (PostgreSQL when initdb is found; PG=1 insists, PG=0
# forces SQLite): the home rule, a misrouted tick, a killed machine, a move, no duplicates.
# Prints the figures and appends them to bench/results/machines.jsonl (docs/scaling.md).
machines: $(STAMP)
	$(PY) scripts/machines.py $(if $(filter 1,$(PG)),--postgres,$(if $(filter 0,$(PG)),--sqlite,))

# Re-resolve the lock from pyproject.toml (needs the package registry).
lock:
	rm -rf .lock-venv
	$(PYTHON) -m venv .lock-venv
	.lock-venv/bin/pip install --quiet --disable-pip-version-check -e '.[dev]'
	.lock-venv/bin/pip freeze --exclude-editable --disable-pip-version-check | grep -v "^clinic-relay" > requirements.lock && .lock-venv/bin/pip freeze --all | grep "^setuptools==" >> requirements.lock
	rm -rf .lock-venv

clean:
	rm -rf $(VENV) .prefect data outbox .pytest_cache .ruff_cache
