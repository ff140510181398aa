"""Git-synced deploys, tested with real local Git repositories.

Both ways a merge becomes a deploy:

1. **GitDagBundle** (apache-airflow-providers-git): a real Airflow stack (scripts/airflow_stack.py) whose
   only DAG bundle is a GitDagBundle on a local repository. Committing a new ExplainerConfiguration makes
   a new DAG appear; committing a change makes the next run record the new commit (Airflow's
   ``bundle_version``) in its compliance bundle; committing a broken config makes the
   ``xac-invalid-<file>`` DAG show the error while the other DAGs keep parsing.
2. **Helm chart git-sync**: ``deploy/helm/values.yaml`` validates against the chart's values schema
   (the vendored subset in data/, see its README), and the DAG folder works from git-sync's on-disk layout
   (``<root>/repo`` → a worktree per commit, swapped atomically, ``include/`` on PYTHONPATH from the
   checkout), parsed by Airflow's DagBag as the DAG processor does.
   2b. Both Helm variants, ``values.yaml`` (CeleryExecutor) and ``values.yaml`` +
   ``values-kubernetes-executor.yaml`` merged as Helm merges them, validate against that schema (and use
   no top-level key it does not cover), set up their executor (broker, result backend, workers without a
   volume of their own), get every connection the tasks read from a Kubernetes Secret, and are shared
   deployments: XAC_DEPLOYMENT=shared, explainer pods on the cluster, task logs in S3, no shared XAC_HOME.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from types import ModuleType
from typing import Any

import jsonschema
import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
DATA = Path(__file__).resolve().parent / "data"
VALUES = REPO_ROOT / "deploy" / "helm" / "values.yaml"
CHART_SCHEMA = DATA / "airflow-chart-values.schema.subset.json"
SAMPLE = REPO_ROOT / "include" / "configs" / "explainers" / "diagnosis-risk-kernelshap.yaml"
NEW_DAG = "diagnosis-risk-kernelshap-git"

GIT_ENV = {
    "GIT_AUTHOR_NAME": "xac-test",
    "GIT_AUTHOR_EMAIL": "xac-test@example.com",
    "GIT_COMMITTER_NAME": "xac-test",
    "GIT_COMMITTER_EMAIL": "xac-test@example.com",
    "GIT_CONFIG_NOSYSTEM": "1",
}


# --------------------------------------------------------------------------- helpers


def git(cwd: Path, *args: str) -> str:
    env = {**os.environ, **GIT_ENV, "HOME": str(cwd)}  # no user/global config leaks in
    done = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"git {' '.join(args)} failed:\n{done.stderr}"
    return done.stdout.strip()


def make_project_repo(work: Path) -> Path:
    """A Git repository with this project's deployable layout: dags/ and include/ (code + configs)."""
    work.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(REPO_ROOT / "dags", work / "dags", ignore=ignore)
    shutil.copytree(REPO_ROOT / "include", work / "include", ignore=ignore)
    git(work, "init", "-q", "-b", "main")
    git(work, "add", "-A")
    git(work, "commit", "-q", "-m", "initial: the project's DAG file, code and configs")
    return work


def new_config_text(name: str, num_samples: int) -> str:
    """The sample tabular config under another name and bundle prefix (a new model's explainer)."""
    data = yaml.safe_load(SAMPLE.read_text())
    data["metadata"]["name"] = name
    data["spec"]["explainerConfig"]["numSamples"] = num_samples
    data["spec"]["storage"]["path"] = f"{name}/{{model_version}}/{{inference_id}}.json"
    return yaml.safe_dump(data, sort_keys=False)


def commit_file(work: Path, relative: str, text: str, message: str) -> str:
    target = work / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)
    git(work, "add", relative)
    git(work, "commit", "-q", "-m", message)
    return git(work, "rev-parse", "HEAD")


BROKEN = """\
apiVersion: ai.apexlogic.com/v1alpha1
kind: ExplainerConfiguration
metadata:
  name: broken-explainer
  namespace: ai-clinical
spec:
  modelName: diagnosis-risk-tabular
  explainerType: SHAP
  explainerConfig:
    method: KernelSHAP
    numSamples: 0
  storage:
    type: s3
    bucket: xac-explanations
    path: "broken/{model_version}/{inference_id}.json"
"""


# --------------------------------------------------------------------------- 2. Helm chart + git-sync


def test_vendored_chart_schema_is_unmodified() -> None:
    readme = (DATA / "README.md").read_text()
    digest = hashlib.sha256(CHART_SCHEMA.read_bytes()).hexdigest()
    assert digest in readme, (
        f"{CHART_SCHEMA.name} changed: record its new sha256 ({digest}) in data/README.md"
    )


def _chart_validator() -> jsonschema.Draft7Validator:
    schema = json.loads(CHART_SCHEMA.read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def test_helm_values_validate_against_the_chart_schema() -> None:
    values = yaml.safe_load(VALUES.read_text())
    errors = sorted(_chart_validator().iter_errors(values), key=lambda e: list(e.absolute_path))
    assert not errors, [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in errors]
    # The schema must be able to fail: a misspelt key and a wrong type are refused.
    typo = yaml.safe_load(VALUES.read_text())
    typo["dags"]["gitSync"]["subpath"] = typo["dags"]["gitSync"].pop("subPath")
    assert any("subpath" in e.message for e in _chart_validator().iter_errors(typo))
    wrong = yaml.safe_load(VALUES.read_text())
    wrong["dags"]["gitSync"]["depth"] = "1"
    assert list(_chart_validator().iter_errors(wrong))


def test_helm_values_agree_with_the_repository() -> None:
    values = yaml.safe_load(VALUES.read_text())
    sync = values["dags"]["gitSync"]
    assert sync["enabled"] is True and values["dags"]["persistence"]["enabled"] is False
    # The DAG folder inside the checkout holds the DAG file; include/ sits beside it.
    assert (REPO_ROOT / sync["subPath"] / "explainer_dags.py").is_file()
    assert (REPO_ROOT / sync["subPath"]).parent / "include" == REPO_ROOT / "include"
    # `env` is outside the vendored subset: check its Kubernetes EnvVar shape here.
    env = values["env"]
    assert all(set(item) <= {"name", "value", "valueFrom"} and isinstance(item["name"], str) for item in env)
    mount = values["dags"].get("mountPath") or "/opt/airflow/dags"
    assert {"name": "PYTHONPATH", "value": f"{mount}/repo"} in env
    pin = next(
        line.split("==", 1)[1].strip()
        for line in (REPO_ROOT / "requirements.txt").read_text().splitlines()
        if line.startswith("apache-airflow==")
    )
    assert values["airflowVersion"] == pin and values["defaultAirflowTag"].startswith(pin)


_PARSE = r"""
import json, sys
import include
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder=sys.argv[1])
print(json.dumps({
    "include": include.__file__,
    "dags": {i: {"description": d.description, "doc_md": d.doc_md} for i, d in bag.dags.items()},
    "import_errors": {str(k): v for k, v in bag.import_errors.items()},
}))
"""


def parse_dag_folder(folder: Path, pythonpath: Path) -> dict[str, Any]:
    """Parse ``folder`` with Airflow's DagBag in a fresh interpreter, as the DAG processor's workers do."""
    env = {k: v for k, v in os.environ.items() if k != "XAC_CONFIGS_DIR"}
    env["PYTHONPATH"] = str(pythonpath)
    done = subprocess.run(
        [sys.executable, "-c", _PARSE, str(folder)],
        env=env,
        # Not the repository: `python -c` puts the working directory first on sys.path.
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


class GitSyncSimulator:
    """git-sync v4's on-disk protocol: a clone in ``root/.git``, one worktree per synced commit in
    ``root/.worktrees/<sha>``, and the ``root/<link>`` symlink replaced atomically (rename over it)."""

    def __init__(self, origin: Path, root: Path, link: str = "repo") -> None:
        self.origin, self.root, self.link = origin, root, root / link
        root.mkdir(parents=True)
        git(root, "init", "-q")
        git(root, "remote", "add", "origin", str(origin))

    def sync(self) -> str:
        git(self.root, "fetch", "-q", "--depth", "1", "origin", "main")
        sha = git(self.root, "rev-parse", "FETCH_HEAD")
        worktree = self.root / ".worktrees" / sha
        if not worktree.exists():
            git(self.root, "worktree", "add", "-q", "--detach", str(worktree), sha)
        tmp = self.root / f".{self.link.name}.tmp"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(Path(".worktrees") / sha)
        os.replace(tmp, self.link)  # atomic: a reader sees the old or the new checkout, never a mix
        return sha


def test_dag_folder_works_from_the_git_sync_layout(tmp_path: Path) -> None:
    values = yaml.safe_load(VALUES.read_text())
    sub_path = values["dags"]["gitSync"]["subPath"]
    origin = make_project_repo(tmp_path / "origin")
    sync = GitSyncSimulator(origin, tmp_path / "airflow-home" / "dags")
    dags_folder = sync.link / sub_path  # what the chart sets as [core] dags_folder
    first = sync.sync()

    parsed = parse_dag_folder(dags_folder, pythonpath=sync.link)
    assert not parsed["import_errors"], parsed["import_errors"]
    # include/ is imported from the synced checkout (PYTHONPATH), not from the image's copy.
    assert Path(parsed["include"]).resolve().is_relative_to((sync.root / ".worktrees" / first).resolve())
    before = set(parsed["dags"])
    assert {"diagnosis-risk-kernelshap", "image-classifier-shap-explainer"} <= before

    # A merge adding a config: after the next sync a new DAG appears.
    commit_file(
        origin, f"include/configs/explainers/{NEW_DAG}.yaml", new_config_text(NEW_DAG, 200), "add a config"
    )
    second = sync.sync()
    assert second != first and os.readlink(sync.link) == f".worktrees/{second}"
    parsed = parse_dag_folder(dags_folder, pythonpath=sync.link)
    assert set(parsed["dags"]) == before | {NEW_DAG}, parsed["import_errors"]

    # A merge with a broken config: its error is a visible DAG, every other DAG still parses.
    commit_file(origin, "include/configs/explainers/broken-explainer.yaml", BROKEN, "a broken config")
    sync.sync()
    parsed = parse_dag_folder(dags_folder, pythonpath=sync.link)
    assert not parsed["import_errors"], parsed["import_errors"]
    assert set(parsed["dags"]) == before | {NEW_DAG, "xac-invalid-broken-explainer"}
    invalid = parsed["dags"]["xac-invalid-broken-explainer"]
    assert invalid["description"].startswith("INVALID CONFIG broken-explainer.yaml")
    assert "spec.explainerConfig.numSamples" in invalid["doc_md"]


# --------------------------------------------------------------------------- 2b. Helm: a shared deployment
#
# values.yaml deploys on the CeleryExecutor; values-kubernetes-executor.yaml overrides what differs for
# the KubernetesExecutor (`-f values.yaml -f values-kubernetes-executor.yaml`). Both variants are held
# to what a deployment whose tasks run on several machines needs. Each check returns problems and is
# fed broken copies below, as in test_compose.py.

VALUES_K8S = REPO_ROOT / "deploy" / "helm" / "values-kubernetes-executor.yaml"
CONNECTION_SECRET_KEY = "connection"  # the key each connection Secret holds


def helm_merge(base: Any, override: Any) -> Any:
    """Helm's merge of values files: mappings merged key by key, the later file wins, null removes a key."""
    if not isinstance(base, dict) or not isinstance(override, dict):
        return override
    merged = dict(base)
    for key, value in override.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = helm_merge(merged.get(key), value)
    return merged


def load_values(*paths: Path) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for path in paths:
        values = helm_merge(values, yaml.safe_load(path.read_text()) or {})
    return values


def variants() -> dict[str, dict[str, Any]]:
    return {"celery": load_values(VALUES), "kubernetes": load_values(VALUES, VALUES_K8S)}


def product_connection_ids() -> set[str]:
    """Every Airflow connection the tasks read: the ``*_CONN_ID`` constants of
    include.adapters.connections."""
    from include.adapters import connections

    return {
        value
        for name, value in vars(connections).items()
        if name.endswith("_CONN_ID") and isinstance(value, str)
    }


def chart_schema_problems(values: dict[str, Any]) -> list[str]:
    """The chart's own validation (values.schema.json, vendored subset), plus: every top-level key is
    one the subset covers. The chart's root accepts unknown keys silently, so a misspelt `worker:`
    would deploy the defaults; here it is refused (vendor the key's schema to use a new one)."""
    errors = sorted(_chart_validator().iter_errors(values), key=lambda e: list(e.absolute_path))
    problems = [f"{'.'.join(map(str, e.absolute_path)) or '(top level)'}: {e.message}" for e in errors]
    covered = json.loads(CHART_SCHEMA.read_text())["properties"]
    problems += [f"{key}: not a key of the vendored chart schema" for key in values if key not in covered]
    return problems


def env_values(values: dict[str, Any]) -> dict[str, str]:
    return {item["name"]: item.get("value", "") for item in values.get("env") or []}


def secret_envs(values: dict[str, Any]) -> dict[str, dict[str, str]]:
    return {item["envName"]: item for item in values.get("secret") or []}


def helm_connection_problems(values: dict[str, Any], conn_ids: set[str]) -> list[str]:
    """Every connection the tasks read reaches every Airflow container as AIRFLOW_CONN_<ID> from a
    Kubernetes Secret (the `secret` list), never as a value written into the values file."""
    problems = []
    env, secrets = env_values(values), secret_envs(values)
    for conn_id in sorted(conn_ids):
        name = f"AIRFLOW_CONN_{conn_id.upper()}"
        if name in env:
            problems.append(f"{name} is a plain `env` value: connections carry secrets, use `secret`")
        entry = secrets.get(name)
        if entry is None:
            problems.append(f"connection {conn_id}: no `secret` entry with envName {name}")
        elif not entry.get("secretName") or entry.get("secretKey") != CONNECTION_SECRET_KEY:
            problems.append(
                f"connection {conn_id}: {name} must name a Secret and its key {CONNECTION_SECRET_KEY!r}"
            )
    for name in set(env) & set(secrets):
        problems.append(f"{name} is set both in `env` and in `secret`")
    return problems


def helm_executor_problems(values: dict[str, Any]) -> list[str]:
    """Celery: explicit executor, 2+ workers without a volume of their own, the chart's Redis as broker,
    the metadata PostgreSQL (external, from a Secret) as result backend. KubernetesExecutor: no Celery."""
    executor = values.get("executor")
    data = values.get("data") or {}
    redis = values.get("redis") or {}
    workers = values.get("workers") or {}
    problems = []
    if not data.get("metadataSecretName"):
        problems.append("data.metadataSecretName: the metadata DB must come from a Secret")
    if (values.get("postgresql") or {}).get("enabled", True):
        problems.append("postgresql.enabled: the chart's demo PostgreSQL is on (use an external database)")
    if executor == "CeleryExecutor":
        if workers.get("replicas", 1) < 2:
            problems.append("workers.replicas: a shared deployment runs at least 2 workers")
        if (workers.get("persistence") or {}).get("enabled", True):
            problems.append("workers.persistence.enabled: workers keep nothing on a volume of their own")
        if not redis.get("enabled", True):
            problems.append("redis.enabled: the CeleryExecutor needs the broker")
        if not data.get("brokerUrlSecretName"):
            problems.append("data.brokerUrlSecretName: the broker URL must come from a Secret")
        if redis.get("passwordSecretName") is None:
            problems.append("redis.passwordSecretName: a generated Redis password changes on upgrade")
        if not data.get("resultBackendSecretName"):
            problems.append("data.resultBackendSecretName: the result backend must be set (the metadata DB)")
    elif executor == "KubernetesExecutor":
        if redis.get("enabled", True):
            problems.append("redis.enabled: the KubernetesExecutor has no broker")
        for key in ("brokerUrlSecretName", "resultBackendSecretName"):
            if data.get(key):
                problems.append(f"data.{key}: no Celery, no such Secret")
    else:
        problems.append(f"executor {executor!r}: expected CeleryExecutor or KubernetesExecutor")
    return problems


def helm_shared_problems(values: dict[str, Any]) -> list[str]:
    """A shared deployment: said explicitly (task pods run with LocalExecutor in their environment),
    explainer pods on the cluster, task logs in S3, no shared XAC_HOME."""
    from include.k8s import ClusterProfileError, load_cluster_profile

    env = env_values(values)
    problems = []
    if env.get("XAC_DEPLOYMENT") != "shared":
        problems.append("env XAC_DEPLOYMENT is not shared")
    if env.get("XAC_EXPLAIN_BACKEND") != "kubernetes":
        problems.append("env XAC_EXPLAIN_BACKEND is not kubernetes")
    try:
        profile = load_cluster_profile(env.get("XAC_CLUSTER_PROFILE", "default")).profile
    except ClusterProfileError as exc:  # the profile's own errors, with file and field
        problems.append(f"env XAC_CLUSTER_PROFILE: {exc}")
    else:
        conn = f"AIRFLOW_CONN_{(profile.spec.kubernetesConnId or 'kubernetes_default').upper()}"
        if conn not in env and conn not in secret_envs(values):
            problems.append(f"{conn}: the explainer pods' cluster connection is not provided")
    logging = (values.get("config") or {}).get("logging") or {}
    if str(logging.get("remote_logging", "")).lower() != "true":
        problems.append("config.logging.remote_logging is off: a task's log would stay on its worker")
    if not str(logging.get("remote_base_log_folder", "")).startswith("s3://"):
        problems.append("config.logging.remote_base_log_folder is not an s3:// folder")
    log_conn = logging.get("remote_log_conn_id", "")
    if f"AIRFLOW_CONN_{str(log_conn).upper()}" not in secret_envs(values):
        problems.append(f"config.logging.remote_log_conn_id {log_conn!r} is not a connection from a Secret")
    if (values.get("logs") or {}).get("persistence", {}).get("enabled"):
        problems.append("logs.persistence.enabled: task logs go to S3, not to a shared volume")
    shared = [
        values.get("dags", {}).get("mountPath") or "/opt/airflow/dags",
        "/opt/airflow/logs",
    ]
    xac_home = env.get("XAC_HOME")
    if xac_home and any(PurePosixPath(xac_home).is_relative_to(folder) for folder in shared):
        problems.append(f"env XAC_HOME {xac_home} is on a volume the pods share")
    return problems


@pytest.mark.parametrize("variant", ["celery", "kubernetes"])
def test_helm_variant_validates_against_the_chart_schema(variant: str) -> None:
    assert chart_schema_problems(variants()[variant]) == []


@pytest.mark.parametrize("variant", ["celery", "kubernetes"])
def test_helm_variant_provides_every_connection_the_tasks_read(variant: str) -> None:
    conn_ids = product_connection_ids()
    assert {"aws_default", "xac_signing", "xac_provenance_salt", "xac_keyring", "xac_cost_store"} <= conn_ids
    assert helm_connection_problems(variants()[variant], conn_ids) == []


@pytest.mark.parametrize("variant", ["celery", "kubernetes"])
def test_helm_variant_sets_up_its_executor(variant: str) -> None:
    values = variants()[variant]
    assert values["executor"] == {"celery": "CeleryExecutor", "kubernetes": "KubernetesExecutor"}[variant]
    assert helm_executor_problems(values) == []


@pytest.mark.parametrize("variant", ["celery", "kubernetes"])
def test_helm_variant_is_a_shared_deployment(variant: str) -> None:
    assert helm_shared_problems(variants()[variant]) == []


def test_kubernetes_executor_file_only_overrides_what_differs() -> None:
    celery, kubernetes = variants()["celery"], variants()["kubernetes"]
    # git-sync, the image, env and the connection Secrets come from values.yaml unchanged.
    for key in ("dags", "env", "secret", "defaultAirflowRepository", "defaultAirflowTag", "config"):
        assert kubernetes[key] == celery[key], key
    assert set(yaml.safe_load(VALUES_K8S.read_text())) <= {
        "executor",
        "redis",
        "data",
        "podTemplate",
        "workers",
    }


# --------------------------------------------------------------------------- 2b. the checks can fail


def _changed(values: dict[str, Any], change: Any) -> dict[str, Any]:
    broken = copy.deepcopy(values)
    change(broken)
    return broken


def test_helm_merge_follows_helm_rules() -> None:
    base = {"a": {"b": 1, "c": 2}, "d": [1, 2], "e": "x"}
    assert helm_merge(base, {"a": {"b": 3, "c": None}, "d": [3], "f": None}) == {
        "a": {"b": 3},
        "d": [3],
        "e": "x",
    }


def test_chart_schema_check_rejects_typos_and_uncovered_keys() -> None:
    celery = variants()["celery"]
    assert any(
        "worker: not a key" in p
        for p in chart_schema_problems(_changed(celery, lambda v: v.update(worker={})))
    )
    typo = _changed(celery, lambda v: v["workers"].update(replica=2))
    assert any(p.startswith("workers:") and "replica" in p for p in chart_schema_problems(typo))
    wrong_type = _changed(celery, lambda v: v["workers"].update(replicas="2"))
    assert any(p.startswith("workers.replicas") for p in chart_schema_problems(wrong_type))
    no_key = _changed(celery, lambda v: v["secret"].append({"envName": "X"}))
    assert any("secretName" in p for p in chart_schema_problems(no_key))
    bad_executor = _changed(celery, lambda v: v.update(executor="celery"))
    assert any(p.startswith("executor") for p in chart_schema_problems(bad_executor))
    value_from = _changed(celery, lambda v: v["env"].append({"name": "X", "valueFrom": {}}))
    assert any(p.startswith("env.") for p in chart_schema_problems(value_from))


def test_helm_connection_check_names_what_is_missing() -> None:
    celery, conn_ids = variants()["celery"], product_connection_ids()
    for conn_id in sorted(conn_ids):
        name = f"AIRFLOW_CONN_{conn_id.upper()}"
        dropped = _changed(
            celery, lambda v, n=name: v.update(secret=[s for s in v["secret"] if s["envName"] != n])
        )
        assert f"connection {conn_id}: no `secret` entry with envName {name}" in helm_connection_problems(
            dropped, conn_ids
        )
    assert any("xac_new" in p for p in helm_connection_problems(celery, {*conn_ids, "xac_new"}))
    plain = _changed(celery, lambda v: v["env"].append({"name": "AIRFLOW_CONN_XAC_SIGNING", "value": "{}"}))
    assert any("plain `env` value" in p for p in helm_connection_problems(plain, conn_ids))
    keyless = _changed(celery, lambda v: v["secret"][0].pop("secretKey"))
    assert any("its key" in p for p in helm_connection_problems(keyless, conn_ids))


def test_helm_executor_check_rejects_a_half_configured_executor() -> None:
    celery, kubernetes = variants()["celery"], variants()["kubernetes"]

    def problems(values: dict[str, Any], change: Any) -> list[str]:
        return helm_executor_problems(_changed(values, change))

    assert any("workers.replicas" in p for p in problems(celery, lambda v: v["workers"].update(replicas=1)))
    assert any("persistence" in p for p in problems(celery, lambda v: v["workers"].pop("persistence")))
    assert any("redis.enabled" in p for p in problems(celery, lambda v: v["redis"].update(enabled=False)))
    assert any(
        "brokerUrlSecretName" in p for p in problems(celery, lambda v: v["data"].pop("brokerUrlSecretName"))
    )
    assert any(
        "resultBackend" in p for p in problems(celery, lambda v: v["data"].pop("resultBackendSecretName"))
    )
    assert any(
        "passwordSecretName" in p for p in problems(celery, lambda v: v["redis"].pop("passwordSecretName"))
    )
    assert any(
        "metadataSecretName" in p for p in problems(celery, lambda v: v["data"].pop("metadataSecretName"))
    )
    assert any("postgresql" in p for p in problems(celery, lambda v: v.pop("postgresql")))
    assert any("no broker" in p for p in problems(kubernetes, lambda v: v["redis"].update(enabled=True)))
    assert any(
        "no Celery" in p for p in problems(kubernetes, lambda v: v["data"].update(brokerUrlSecretName="x"))
    )
    assert any("expected" in p for p in problems(celery, lambda v: v.update(executor="LocalExecutor")))


def test_helm_shared_check_rejects_local_state_and_embedded_mode() -> None:
    celery = variants()["celery"]

    def set_env(name: str, value: str | None) -> dict[str, Any]:
        def change(values: dict[str, Any]) -> None:
            values["env"] = [e for e in values["env"] if e["name"] != name]
            if value is not None:
                values["env"].append({"name": name, "value": value})

        return _changed(celery, change)

    assert "env XAC_DEPLOYMENT is not shared" in helm_shared_problems(set_env("XAC_DEPLOYMENT", None))
    assert "env XAC_EXPLAIN_BACKEND is not kubernetes" in helm_shared_problems(
        set_env("XAC_EXPLAIN_BACKEND", "local")
    )
    assert any(
        "no cluster profile" in p for p in helm_shared_problems(set_env("XAC_CLUSTER_PROFILE", "nope"))
    )
    assert any(
        "cluster connection" in p
        for p in helm_shared_problems(set_env("AIRFLOW_CONN_KUBERNETES_DEFAULT", None))
    )
    assert any(
        "is on a volume" in p for p in helm_shared_problems(set_env("XAC_HOME", "/opt/airflow/logs/xac"))
    )
    assert helm_shared_problems(set_env("XAC_HOME", "/tmp/xac")) == []
    logs_off = _changed(celery, lambda v: v["config"]["logging"].update(remote_logging="False"))
    assert any("remote_logging is off" in p for p in helm_shared_problems(logs_off))
    local_folder = _changed(celery, lambda v: v["config"]["logging"].update(remote_base_log_folder="/logs"))
    assert any("s3://" in p for p in helm_shared_problems(local_folder))
    other_conn = _changed(celery, lambda v: v["config"]["logging"].update(remote_log_conn_id="s3_logs"))
    assert any("'s3_logs'" in p for p in helm_shared_problems(other_conn))
    log_volume = _changed(celery, lambda v: v["logs"]["persistence"].update(enabled=True))
    assert any("logs.persistence" in p for p in helm_shared_problems(log_volume))


# --------------------------------------------------------------------------- 1. GitDagBundle


def _load_stack_module() -> ModuleType:
    path = REPO_ROOT / "scripts" / "airflow_stack.py"
    spec = importlib.util.spec_from_file_location("xac_airflow_stack_git", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def s3_for_stack() -> Iterator[str]:
    from include.embedded import s3_server

    with s3_server.environment() as server:
        yield server.endpoint_url


def _wait_for(predicate: Any, timeout: float, what: str, stack: Any) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if stack.dead_components():
            pytest.fail(f"components died: {stack.dead_components()}\n{stack.log_tail('dag-processor')}")
        time.sleep(1.0)
    pytest.fail(f"timed out waiting for {what}\n{stack.log_tail('dag-processor', 30)}")


@pytest.mark.integration
@pytest.mark.slow
def test_git_dag_bundle_deploys_commits(tmp_path: Path, s3_for_stack: str) -> None:
    from examples.prepare import prepare_samples
    from include.compliance import download_bundle, list_bundles
    from include.storage import s3_client

    for _ in prepare_samples():
        pass
    stack_module = _load_stack_module()
    origin = make_project_repo(tmp_path / "origin")
    first = git(origin, "rev-parse", "HEAD")
    bundles = [
        {
            "name": "xac-git",
            "classpath": "airflow.providers.git.bundles.git.GitDagBundle",
            "kwargs": {
                "repo_url": str(origin),
                "tracking_ref": "main",
                "subdir": "dags",
                "refresh_interval": 3,
            },
        }
    ]
    extra_env = {
        "AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST": json.dumps(bundles),
        "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "3",
        "AIRFLOW__DAG_PROCESSOR__BUNDLE_REFRESH_CHECK_INTERVAL": "2",
        # Airflow keeps bundle clones under <tmp>/airflow/dag_bundles/<name> by default, shared by every
        # run on the machine: an earlier test run's clone of another origin would be reused.
        "AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_STORAGE_PATH": str(tmp_path / "dag_bundles"),
    }
    stack = stack_module.start(home=tmp_path / "stack", extra_env=extra_env, timeout=240.0)
    roots = {p.pid for p in stack.processes.values()}
    try:

        def dag_ids() -> set[str]:
            listed = stack.api("GET", "/api/v2/dags", params={"limit": 100}).json()["dags"]
            return {d["dag_id"] for d in listed}

        before = dag_ids()
        assert "diagnosis-risk-kernelshap" in before

        # 1. Commit a new ExplainerConfiguration: the DAG processor picks it up from the bundle.
        added = commit_file(
            origin, f"include/configs/explainers/{NEW_DAG}.yaml", new_config_text(NEW_DAG, 200), "add"
        )
        _wait_for(lambda: NEW_DAG in dag_ids(), 120, f"{NEW_DAG} to appear", stack)
        # The processor can record the version it refreshed from while it already reads the new
        # checkout (seen once: the DAG first listed at the previous commit); the next parse settles it.
        _wait_for(
            lambda: stack.api("GET", f"/api/v2/dags/{NEW_DAG}").json().get("bundle_version") == added,
            60,
            f"{NEW_DAG} at the commit that added it",
            stack,
        )
        dag = stack.api("GET", f"/api/v2/dags/{NEW_DAG}").json()
        assert dag["bundle_name"] == "xac-git" and dag["bundle_version"] == added, dag

        # 2. Commit a change to it; the next run records that commit in its bundle.
        changed = commit_file(
            origin, f"include/configs/explainers/{NEW_DAG}.yaml", new_config_text(NEW_DAG, 300), "change"
        )
        _wait_for(
            lambda: stack.api("GET", f"/api/v2/dags/{NEW_DAG}").json().get("bundle_version") == changed,
            120,
            "the change to be parsed",
            stack,
        )
        assert stack.api("PATCH", f"/api/v2/dags/{NEW_DAG}", json={"is_paused": False}).status_code == 200
        response = stack.api(
            "POST",
            f"/api/v2/dags/{NEW_DAG}/dagRuns",
            json={"logical_date": None, "conf": {"inference_ids": ["P100003", "P100042"]}},
        )
        assert response.status_code == 200, response.text
        run_id = response.json()["dag_run_id"]
        run = _wait_for(
            lambda: (
                (r := stack.api("GET", f"/api/v2/dags/{NEW_DAG}/dagRuns/{run_id}").json())["state"]
                in ("success", "failed")
                and r
            ),
            300,
            "the run to finish",
            stack,
        )
        assert run["state"] == "success", stack.log_tail("scheduler", 40)
        assert run["bundle_version"] == changed
        client = s3_client()
        mine = [
            b for b in list_bundles(client, "xac-explanations", prefix=f"{NEW_DAG}/") if b.run_id == run_id
        ]
        assert len(mine) == 1
        local = download_bundle(client, mine[0].uri, tmp_path / "bundle")
        manifest = json.loads((local / "manifest.json").read_text())
        assert manifest["run"]["identity"]["bundle_version"] == changed
        assert manifest["run"]["params"]["numSamples"] == 300  # the committed change, not the first version

        # 3. Commit a broken config: the error becomes a visible DAG; the other DAGs keep parsing.
        broken = commit_file(origin, "include/configs/explainers/broken-explainer.yaml", BROKEN, "broken")
        _wait_for(lambda: "xac-invalid-broken-explainer" in dag_ids(), 120, "the invalid-config DAG", stack)
        invalid = stack.api("GET", "/api/v2/dags/xac-invalid-broken-explainer/details").json()
        assert "spec.explainerConfig.numSamples" in invalid["doc_md"]
        assert stack.api("GET", "/api/v2/importErrors").json()["total_entries"] == 0
        for dag_id in before | {NEW_DAG}:
            dag = stack.api("GET", f"/api/v2/dags/{dag_id}").json()
            assert dag["is_stale"] is False and dag["bundle_version"] == broken, dag
        assert first != added != changed != broken
    finally:
        stack_module.stop(stack)
    assert stack_module.stack_processes(stack.stack_id, roots) == {}
