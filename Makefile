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

.PHONY: install demo serve deploy test test-unit lint format bench lock clean

install: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.lock
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)

demo: $(STAMP)  ## sandbox Cliniko -> sync -> DuckDB, then print what was synced
	$(VENV)/bin/relay demo

serve: $(STAMP)  ## Prefect server + UI on 127.0.0.1:4200, sandbox Cliniko, the demo clinic ticking (Ctrl-C stops)
	$(VENV)/bin/relay serve

# Every deployment in prefect.yaml onto the 'local' process pool (needs PREFECT_API_URL; docs/scaling.md).
deploy: $(STAMP)
	$(VENV)/bin/prefect work-pool inspect local >/dev/null 2>&1 || $(VENV)/bin/prefect work-pool create local --type process
	$(VENV)/bin/prefect --no-prompt deploy --all

test: $(STAMP)  ## the whole suite: unit, integration (real HTTP), Prefect server tests
	$(PY) -m pytest

test-unit: $(STAMP)
	$(PY) -m pytest tests/unit

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: $(STAMP)  ## benchmarks; each prints its figures
	$(PY) -m bench $(BENCH)

# Re-resolve the lock from pyproject.toml (needs the package registry).
lock:
	rm -rf .lock-venv
	$(PYTHON) -m venv .lock-venv
	.lock-venv/bin/pip install --quiet --disable-pip-version-check -e '.[dev]'
	.lock-venv/bin/pip freeze --exclude-editable --disable-pip-version-check | grep -v "^clinic-relay" > requirements.lock && .lock-venv/bin/pip freeze --all | grep "^setuptools==" >> requirements.lock
	rm -rf .lock-venv

clean:
	rm -rf $(VENV) .prefect data outbox .pytest_cache .ruff_cache
