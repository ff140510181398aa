# Explainability-as-Code on Airflow — the two commands a new user needs: `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

export XAC_HOME ?= $(CURDIR)/.xac
export AIRFLOW_HOME ?= $(XAC_HOME)/airflow
export AIRFLOW__CORE__DAGS_FOLDER ?= $(CURDIR)/dags
export AIRFLOW__CORE__LOAD_EXAMPLES ?= False
export AIRFLOW__CORE__UNIT_TEST_MODE ?= False
export GX_ANALYTICS_ENABLED ?= false
export PYTHONDONTWRITEBYTECODE ?= 1

.PHONY: help venv samples demo test lint bench s3 s3-stop airflow airflow-down clean

help:
	@echo "make demo   - set up .venv, sample data and models, run every sample DAG, verify the bundles"
	@echo "make test   - set up .venv and run the whole test suite"
	@echo "make lint   - ruff"
	@echo "make bench  - benchmarks (bench/)"
	@echo "make s3     - start the loopback S3 server in the background (S3_PORT=N to choose; stop: make s3-stop)"
	@echo "make airflow - real Airflow (api-server, scheduler, dag-processor, triggerer) on 127.0.0.1:8080; Ctrl-C stops"

# The venv is rebuilt only when the pins change (idempotent).
$(STAMP): requirements.txt constraints.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt -c constraints.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -e .
	@touch $@

venv: $(STAMP)

# focus-validator needs numpy<2: it gets a venv of its own, used by the FinOps tests.
FOCUS_VENV := $(VENV)/focus-validator
$(FOCUS_VENV)/.installed: requirements-focus.txt | $(STAMP)
	@test -x $(FOCUS_VENV)/bin/python || $(PYTHON) -m venv $(FOCUS_VENV)
	$(FOCUS_VENV)/bin/pip install --quiet --disable-pip-version-check -r requirements-focus.txt
	@touch $@

# A real Open Inference Protocol server (MLServer, scikit-learn runtime) for the endpoint-model tests:
# its own venv, since its fastapi/starlette pins conflict with Airflow's.
MLSERVER_VENV := $(VENV)/mlserver
$(MLSERVER_VENV)/.installed: requirements-mlserver.txt | $(STAMP)
	@test -x $(MLSERVER_VENV)/bin/python || $(PYTHON) -m venv $(MLSERVER_VENV)
	$(MLSERVER_VENV)/bin/pip install --quiet --disable-pip-version-check -r requirements-mlserver.txt
	@touch $@

samples: venv
	$(VENV)/bin/xac samples prepare

demo: venv
	$(PY) scripts/demo.py

test: venv $(FOCUS_VENV)/.installed $(MLSERVER_VENV)/.installed
	scripts/run_tests.sh

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# Each script records its figures in bench/results/; one that misses a target exits 1, and the
# leading "-" lets the others still run.
bench: venv
	-$(PY) bench/bench_dag_parse.py
	-$(PY) bench/bench_provenance.py
	-$(PY) bench/bench_demo.py
	-$(PY) bench/bench_kernel_shap.py
	-$(PY) bench/bench_integrated_gradients.py
	-$(PY) bench/bench_cost.py
	-$(PY) bench/bench_podspec.py
	-$(PY) bench/bench_bundle.py
	-$(PY) bench/bench_estimate.py
	-$(PY) bench/bench_model_sources.py

s3: venv
	$(PY) -m include.embedded.s3_server start $(if $(S3_PORT),--port $(S3_PORT))

s3-stop: venv
	$(PY) -m include.embedded.s3_server stop

airflow: venv
	$(PY) scripts/airflow_stack.py up

airflow-down: venv
	$(PY) scripts/airflow_stack.py down

clean:
	rm -rf $(XAC_HOME)
