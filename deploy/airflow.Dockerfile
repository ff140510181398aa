# syntax=docker/dockerfile:1
# Airflow image of the full local stack (docker-compose.yaml): the official Airflow image plus this
# project's pinned dependencies and the project itself (the `include` packages and the `xac` CLI).
# Build context: the repository root (`docker compose build`, or
# `docker build -f deploy/airflow.Dockerfile .`); deploy/airflow.Dockerfile.dockerignore keeps
# .venv/ and .xac/ out of it.
#
# The base tag's Airflow version must equal the apache-airflow pin in requirements.txt
# (tests/deploy/test_compose.py checks it), so pip never up- or downgrades Airflow itself.
FROM apache/airflow:3.3.2-python3.11

# PyPI's Linux torch wheel depends on several GB of CUDA libraries; the project is tested with the
# CPU build, which the PyTorch index serves under the same public version (2.13.0+cpu satisfies
# the `torch==2.13.0` pin and constraint).
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

# The official image runs as `airflow` (uid 50000, gid 0) and installs packages for that user;
# pip must not run as root here (see the "Building the image" page of the Airflow docs).
USER airflow

COPY --chown=airflow:0 requirements.txt constraints.txt /opt/xac-build/

# 1. torch alone from the CPU index, without dependencies: its dependencies are resolved in step 2
#    under constraints.txt like every other package, and pip keeps the installed CPU build because
#    it already satisfies the pin.
# 2. everything else; naming apache-airflow==$AIRFLOW_VERSION (set by the base image) makes pip
#    fail instead of silently replacing the image's Airflow if the pins ever disagree.
# DL3013: torch is pinned, through $torch_pin read from requirements.txt, which hadolint cannot see.
# hadolint ignore=DL3013
RUN set -eux; \
    torch_pin="$(grep -E '^torch==' /opt/xac-build/requirements.txt)"; \
    pip install --no-cache-dir --no-deps --index-url "${TORCH_INDEX_URL}" "${torch_pin}"; \
    pip install --no-cache-dir \
        "apache-airflow==${AIRFLOW_VERSION}" \
        -r /opt/xac-build/requirements.txt \
        -c /opt/xac-build/constraints.txt

# The project, laid out as in the repository (AIRFLOW_HOME = repository root): include.paths
# derives REPO_ROOT and the configs folder from include/'s location, and the DAG factory finds
# include/configs/explainers next to its own folder; examples/ holds the samples (their models'
# code, Feast repository and suites). docker-compose.yaml bind-mounts ./dags, ./include,
# ./examples and ./plugins over these copies so edits apply without a rebuild; the copies make the
# image usable on its own (e.g. as the explainer pod's image).
COPY --chown=airflow:0 pyproject.toml /opt/airflow/pyproject.toml
COPY --chown=airflow:0 include /opt/airflow/include
COPY --chown=airflow:0 examples /opt/airflow/examples
COPY --chown=airflow:0 dags /opt/airflow/dags
COPY --chown=airflow:0 plugins /opt/airflow/plugins

# Editable, so `include` resolves to /opt/airflow/include (the bind mount when compose runs it)
# and the `xac` console script exists; --no-deps because step 2 installed every dependency.
# XAC_HOME (/opt/airflow/xac) is a named volume in compose: a fresh volume copies this folder's
# ownership, so the airflow user (and any AIRFLOW_UID in group 0) can write generated state there.
# The same for /opt/airflow/feature_repo, where the Celery variant's xac-samples writes the shared
# feature store's feature_store.yaml.
RUN set -eux; \
    pip install --no-cache-dir --no-deps -e /opt/airflow; \
    mkdir -p /opt/airflow/xac /opt/airflow/feature_repo; \
    chmod g+rwX /opt/airflow/xac /opt/airflow/feature_repo; \
    xac --help > /dev/null; \
    python -c "import include.configuration, include.orchestration.pipeline"

ENV XAC_HOME=/opt/airflow/xac \
    GX_ANALYTICS_ENABLED=false
